"""`gateway roster import`: a district's roster files (OneRoster 1.1 CSV, or Passback's plain CSV) into users,
enrollments and LMS identities, set-based: existing rows are read by key in chunks, new and changed rows written
in bulk, all in one unit of work with its audit row. Re-importing the same files changes nothing. The mapping
decisions are in docs/roster-import.md."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.orm import Session

from gateway.crypto import SecretBox
from gateway.models import AuditEntry, District, Enrollment, Grade, LmsConnection, LmsIdentity, User, new_id, utcnow
from gateway.services.directory import identity_issuer
from gateway.services.errors import Conflict, InvalidInput, NotFound
from gateway.services.lms import connection_settings, get_connection
from gateway.services.roster_files import (
    CourseIdSource,
    EnrollmentRecord,
    Format,
    Outcome,
    SisIdSource,
    UserRecord,
    read_roster,
)
from gateway.services.routing import release_awaiting_launch, route_waiting_grades
from gateway.services.unit_of_work import UnitOfWork

T = TypeVar("T")
# Keys per IN (…) list and rows per bulk statement: well under SQLite's and PostgreSQL's parameter limits.
CHUNK = 500
# Rows written from which a PostgreSQL import refreshes the tables' statistics after its commit.
ANALYZE_AFTER = 1000
STATUSES = ("created", "updated", "unchanged", "deleted", "skipped", "error")
Progress = Callable[[int, int], None]  # (rows done, rows in all)


def import_roster(
    uow: UnitOfWork,
    box: SecretBox,
    district_ref: str,
    path: Path,
    *,
    lms_ref: str | None = None,
    fmt: Format | None = None,
    sis_id: SisIdSource = "sourcedId",
    course_id: CourseIdSource = "sourcedId",
    dry_run: bool = False,
    operator: str,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Import PATH into the district (by id or name). A file that cannot be used as a whole raises (nothing
    changes); a bad row is reported and the others go on. With `dry_run` the same report, then a rollback."""
    with uow:
        roster = read_roster(path, fmt, sis_id=sis_id, course_id=course_id)
        session = uow.session
        district = find_district(session, district_ref)
        connection = _connection(session, district.id, lms_ref, needed=bool(roster.enrollments))
        issuer = identity_issuer(connection, connection_settings(box, connection)) if connection else None
        work = _Import(session, district.id, connection, issuer, roster.rows, progress)
        work.advance(len(roster.outcomes))
        outcomes = [*roster.outcomes, *work.users(roster.users), *work.enrollments(roster.enrollments)]
        routed = 0 if dry_run else work.route(uow)
        outcomes.sort(key=lambda o: (_FILE_ORDER.get(o.file, 9), o.file, o.line, o.kind != "user"))
        report = _report(district, connection, roster.format, path, dry_run, operator, outcomes, routed)
        if dry_run:
            return report  # leaving the unit uncommitted rolls everything back
        session.add(
            AuditEntry(
                district_id=district.id,
                staff_id=None,
                staff_email=f"cli:{operator}"[:320],
                action="imported a roster",
                target=path.resolve().name[:200],
                details={
                    "format": roster.format,
                    "lms": connection.name if connection else None,
                    "summary": report["summary"],
                    "deliveriesCreated": routed,
                },
            )
        )
        if session.get_bind().dialect.name == "postgresql" and work.written >= ANALYZE_AFTER:
            uow.on_commit(lambda: _analyze(session, work.tables_written))
        uow.commit()
    return report


def _analyze(session: Session, tables: set[str]) -> None:
    """Refresh the planner's statistics of the tables a large import grew: until autovacuum does (up to a minute
    or more), PostgreSQL plans lookups by key as if the district were empty, and a re-import's chunked reads
    fall back to scanning the district's rows once per key."""
    for table in sorted(tables):
        session.execute(text(f"ANALYZE {table}"))  # a fixed table name of ours, not input
    session.commit()


def find_district(session: Session, ref: str) -> District:
    """A district by id, else by its exact name (which must then name one district)."""
    district = session.get(District, ref)
    if district is not None:
        return district
    named = list(session.scalars(select(District).where(District.name == ref).limit(2)))
    if len(named) > 1:
        raise Conflict(
            f"several districts are named {ref!r}: give the district's id",
            fields={"district": ["Names more than one district; give its id."]},
        )
    if not named:
        raise NotFound(f"no district {ref!r}", fields={"district": ["No district with this id or name."]})
    return named[0]


def _connection(session: Session, district_id: str, lms_ref: str | None, *, needed: bool) -> LmsConnection | None:
    """The connection enrollments go to: the one named, else the district's only one."""
    if lms_ref is not None:
        return get_connection(session, district_id, lms_ref)
    found = list(session.scalars(select(LmsConnection).where(LmsConnection.district_id == district_id).limit(2)))
    if len(found) > 1 and needed:
        raise InvalidInput(
            "the district has several LMS connections: name the one to enroll into with --lms",
            fields={"lms": ["Required when the district has several LMS connections."]},
        )
    return found[0] if len(found) == 1 else None


_FILE_ORDER = {"users.csv": 0, "classes.csv": 1, "enrollments.csv": 2}


def _chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class _Known:
    """An existing user's columns the import compares."""

    id: str
    sis_id: str | None
    email: str | None
    name: str
    role: str


class _Import:
    def __init__(
        self,
        session: Session,
        district_id: str,
        connection: LmsConnection | None,
        issuer: str | None,
        total: int,
        progress: Progress | None,
    ) -> None:
        self.session = session
        self.district_id = district_id
        self.connection = connection
        self.issuer = issuer
        self.total = total
        self.done = 0
        self.progress = progress
        self.now = utcnow()
        self.user_ids: dict[str, str] = {}  # a record's ref: the Passback user id it became
        self.refused: dict[str, Outcome] = {}  # a record's ref: why its user was not imported
        self.enrolled: set[str] = set()  # users given a new enrollment
        self.identified: set[str] = set()  # users given a new LMS identity
        self.written = 0  # rows inserted, updated or deleted
        self.tables_written: set[str] = set()

    def _write(self, model: type[User | Enrollment | LmsIdentity], rows: list[dict[str, Any]], *, new: bool) -> None:
        """An ORM bulk INSERT (`new`), or UPDATE by primary key, in chunks."""
        statement = insert(model) if new else update(model)
        for start in range(0, len(rows), CHUNK):
            self.session.execute(statement, rows[start : start + CHUNK])
        if rows:
            self.written += len(rows)
            self.tables_written.add(model.__tablename__)

    def advance(self, rows: int) -> None:
        self.done += rows
        if self.progress is not None:
            self.progress(self.done, self.total)

    def tick(self) -> None:
        """One more row done: progress is told every CHUNK rows."""
        self.done += 1
        if self.progress is not None and self.done % CHUNK == 0:
            self.progress(self.done, self.total)

    # --- users ---

    def _users_by_sis_id(self, sis_ids: Sequence[str]) -> dict[str, list[_Known]]:
        found: dict[str, list[_Known]] = defaultdict(list)
        for chunk in _chunks(sorted(set(sis_ids))):
            query = select(User.id, User.sis_id, User.email, User.name, User.role).where(
                User.district_id == self.district_id, User.sis_id.in_(chunk)
            )
            for row in self.session.execute(query):
                found[row.sis_id].append(_Known(row.id, row.sis_id, row.email, row.name, row.role))
        return found

    def users(self, records: list[UserRecord]) -> list[Outcome]:
        """Match each record to a user by SIS id (else adopt the one user of that email without a SIS id, as a
        launch creates them), then create, update or leave it."""
        existing = self._users_by_sis_id([r.sis_id for r in records])
        by_email: dict[str, list[_Known]] = defaultdict(list)
        emails = sorted({r.email for r in records if r.email and r.sis_id not in existing})
        for chunk in _chunks(emails):
            query = select(User.id, User.sis_id, User.email, User.name, User.role).where(
                User.district_id == self.district_id, User.sis_id.is_(None), User.email.in_(chunk)
            )
            for row in self.session.execute(query):
                by_email[row.email].append(_Known(row.id, row.sis_id, row.email, row.name, row.role))
        subjects = self._identities([r.lms_user_id for r in records if r.lms_user_id])
        outcomes: list[Outcome] = []
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        identities: list[dict[str, Any]] = []
        adopted: set[str] = set()
        for record in records:
            self.tick()

            def outcome(
                status: str, reason: str = "", changes: tuple[str, ...] = (), r: UserRecord = record
            ) -> Outcome:
                return Outcome(r.file, r.line, "user", r.ref, status, reason, changes)

            matches = existing.get(record.sis_id, [])
            if len(matches) > 1:
                refused = outcome(
                    "error",
                    f"sisID: {len(matches)} users of this district have SIS id {record.sis_id!r}; fix that first",
                )
                self.refused[record.ref] = refused
                outcomes.append(refused)
                continue
            current = matches[0] if matches else None
            if current is None and record.email:
                candidates = [k for k in by_email.get(record.email, []) if k.id not in adopted]
                if len(candidates) == 1:
                    current = candidates[0]
                    adopted.add(current.id)
            user_id = current.id if current else new_id()
            new_identity = False
            if record.lms_user_id:
                problem = self._identity_problem(record.lms_user_id, user_id, subjects)
                if problem:
                    self.refused[record.ref] = outcome("error", problem)
                    outcomes.append(self.refused[record.ref])
                    continue
                new_identity = record.lms_user_id not in subjects
                if new_identity:
                    subjects[record.lms_user_id] = user_id
                    identities.append(self._identity_row(user_id, record.lms_user_id))
            self.user_ids[record.ref] = user_id
            if current is None:
                inserts.append(
                    {
                        "id": user_id,
                        "district_id": self.district_id,
                        "sis_id": record.sis_id,
                        "email": record.email,
                        "name": record.name,
                        "role": record.role,
                        "created_at": self.now,
                        "updated_at": self.now,
                    }
                )
                outcomes.append(outcome("created"))
                continue
            # An empty cell keeps what Passback knows (a launch may have supplied a name or an email).
            wanted = {
                "sisID": record.sis_id,
                "email": record.email or current.email,
                "name": record.name or current.name,
                "role": record.role,
            }
            have = {"sisID": current.sis_id, "email": current.email, "name": current.name, "role": current.role}
            changes = tuple(k for k in wanted if wanted[k] != have[k]) + (("lmsUserID",) if new_identity else ())
            if not changes:
                outcomes.append(outcome("unchanged"))
                continue
            if set(changes) - {"lmsUserID"}:
                updates.append(
                    {
                        "id": current.id,
                        "sis_id": wanted["sisID"],
                        "email": wanted["email"],
                        "name": wanted["name"],
                        "role": wanted["role"],
                        "updated_at": self.now,
                    }
                )
            outcomes.append(outcome("updated", f"{', '.join(changes)} changed", changes))
        self._write(User, inserts, new=True)
        self._write(User, updates, new=False)
        self._write(LmsIdentity, identities, new=True)
        self.identified.update(row["user_id"] for row in identities)
        self.advance(0)
        return outcomes

    def _identities(self, subjects: Sequence[str]) -> dict[str, str]:
        """The users the connection already knows by these LMS ids."""
        if not subjects or self.issuer is None:
            return {}
        found: dict[str, str] = {}
        for chunk in _chunks(sorted(set(subjects))):
            query = select(LmsIdentity.subject, LmsIdentity.user_id).where(
                LmsIdentity.district_id == self.district_id,
                LmsIdentity.issuer == self.issuer,
                LmsIdentity.subject.in_(chunk),
            )
            found.update({row.subject: row.user_id for row in self.session.execute(query)})
        return found

    def _identity_problem(self, subject: str, user_id: str, subjects: dict[str, str]) -> str | None:
        if self.connection is None:
            return "lms_user_id: needs an LMS connection; the district has none (or name one with --lms)"
        owner = subjects.get(subject)
        if owner is not None and owner != user_id:
            return f"lms_user_id: {subject!r} is already linked to another user of this district"
        return None

    def _identity_row(self, user_id: str, subject: str) -> dict[str, Any]:
        assert self.connection is not None and self.issuer is not None
        return {
            "id": new_id(),
            "district_id": self.district_id,
            "user_id": user_id,
            "lms_connection_id": self.connection.id,
            "issuer": self.issuer,
            "subject": subject,
            "created_at": self.now,
        }

    # --- enrollments ---

    def enrollments(self, records: list[EnrollmentRecord]) -> list[Outcome]:
        if not records:
            return []
        if self.connection is None:
            self.advance(len(records))
            reason = "no LMS connection in this district to enroll into (add one, or name one with --lms)"
            return [Outcome(r.file, r.line, "enrollment", r.key, "skipped", reason) for r in records]
        connection_id = self.connection.id
        outside = self._users_by_sis_id([r.user_ref for r in records if not r.user_in_file])
        existing: dict[tuple[str, str], tuple[str, str]] = {}  # (course, user): (enrollment id, role)
        for chunk in _chunks(sorted({r.course_id for r in records})):
            query = select(Enrollment.id, Enrollment.course_id, Enrollment.user_id, Enrollment.role).where(
                Enrollment.lms_connection_id == connection_id, Enrollment.course_id.in_(chunk)
            )
            existing.update({(row.course_id, row.user_id): (row.id, row.role) for row in self.session.execute(query)})
        outcomes: list[Outcome] = []
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        deletes: list[str] = []
        for record in records:
            self.tick()

            def outcome(
                status: str, reason: str = "", changes: tuple[str, ...] = (), r: EnrollmentRecord = record
            ) -> Outcome:
                return Outcome(r.file, r.line, "enrollment", r.key, status, reason, changes)

            user_id = self._enrollment_user(record, outside)
            if not isinstance(user_id, str):
                outcomes.append(user_id)
                continue
            found = existing.get((record.course_id, user_id))
            if record.delete:
                if found is None:
                    outcomes.append(outcome("unchanged", "status tobedeleted: not enrolled"))
                else:
                    deletes.append(found[0])
                    del existing[record.course_id, user_id]
                    outcomes.append(outcome("deleted", "status tobedeleted"))
            elif found is None:
                inserts.append(
                    {
                        "id": new_id(),
                        "district_id": self.district_id,
                        "lms_connection_id": connection_id,
                        "course_id": record.course_id,
                        "user_id": user_id,
                        "role": record.role,
                        "source": "import",
                        "created_at": self.now,
                        "updated_at": self.now,
                    }
                )
                existing[record.course_id, user_id] = (inserts[-1]["id"], record.role)
                self.enrolled.add(user_id)
                outcomes.append(outcome("created"))
            elif found[1] != record.role:
                updates.append({"id": found[0], "role": record.role, "updated_at": self.now})
                outcomes.append(outcome("updated", "role changed", ("role",)))
            else:
                outcomes.append(outcome("unchanged"))
        for ids in _chunks(deletes):
            self.session.execute(delete(Enrollment).where(Enrollment.id.in_(ids)))
        self.written += len(deletes)
        self._write(Enrollment, inserts, new=True)
        self._write(Enrollment, updates, new=False)
        self.advance(0)
        return outcomes

    def _enrollment_user(self, record: EnrollmentRecord, outside: dict[str, list[_Known]]) -> str | Outcome:
        column = "userSourcedId" if record.file == "enrollments.csv" else "sis_id"

        def refuse(status: str, reason: str) -> Outcome:
            return Outcome(record.file, record.line, "enrollment", record.key, status, f"{column}: {reason}")

        if record.user_in_file:
            if record.user_ref in self.user_ids:
                return self.user_ids[record.user_ref]
            first = self.refused[record.user_ref]
            return refuse("skipped", f"the user's row ({first.file} line {first.line}) was refused")
        matches = outside.get(record.user_ref, [])
        if len(matches) > 1:
            return refuse("error", f"{len(matches)} users of this district have SIS id {record.user_ref!r}")
        if not matches:
            return refuse("error", f"no user {record.user_ref!r} in users.csv, nor in Passback by SIS id")
        return matches[0].id

    # --- grades that waited for these users ---

    def route(self, uow: UnitOfWork) -> int:
        """Grades already posted for newly enrolled or newly identified users go out now: only users who have
        grades are visited, found with one query per chunk, so a first import of a fresh roster costs nothing."""
        touched = sorted(self.enrolled | self.identified)
        graded: set[str] = set()
        for chunk in _chunks(touched):
            query = select(Grade.user_id).where(Grade.district_id == self.district_id, Grade.user_id.in_(chunk))
            graded.update(self.session.scalars(query.distinct()))
        routed = 0
        for user_id in sorted(graded):
            if user_id in self.identified and self.connection is not None:
                released = release_awaiting_launch(self.session, user_id, self.connection.id)
                uow.nudge_if(released, {self.connection.id})
            routed += uow.nudge_if(route_waiting_grades(self.session, self.district_id, user_id=user_id))
        return routed


def _report(
    district: District,
    connection: LmsConnection | None,
    fmt: Format,
    path: Path,
    dry_run: bool,
    operator: str,
    outcomes: list[Outcome],
    routed: int,
) -> dict[str, Any]:
    summary: dict[str, dict[str, int]] = {
        kind: dict.fromkeys(STATUSES, 0) for kind in ("users", "enrollments", "classes", "rows")
    }
    for o in outcomes:
        summary[{"user": "users", "enrollment": "enrollments", "class": "classes"}.get(o.kind, "rows")][o.status] += 1
    return {
        "district": {"id": district.id, "name": district.name},
        "lms": {"id": connection.id, "name": connection.name} if connection else None,
        "format": fmt,
        "path": str(path),
        "dryRun": dry_run,
        "operator": operator,
        "summary": summary,
        "errors": sum(s["error"] for s in summary.values()),
        "deliveriesCreated": routed,
        "rows": [
            {
                "file": o.file,
                "line": o.line,
                "kind": o.kind,
                "key": o.key,
                "status": o.status,
                "reason": o.reason,
                "changes": list(o.changes),
            }
            for o in outcomes
        ],
    }
