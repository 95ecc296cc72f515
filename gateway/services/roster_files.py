"""Reading roster files into plain records: OneRoster 1.1 CSV (a directory or a .zip of users.csv, classes.csv,
enrollments.csv, …) and Passback's one-file CSV. Pure: no database. What each row means for Passback's tables is
decided by `gateway.services.roster_import`; the mapping is explained in docs/roster-import.md."""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gateway.services.errors import InvalidInput

Format = Literal["oneroster", "csv"]
SisIdSource = Literal["sourcedId", "identifier"]
CourseIdSource = Literal["sourcedId", "classCode"]

FORMATS: tuple[Format, ...] = ("oneroster", "csv")
SIS_ID_SOURCES: tuple[SisIdSource, ...] = ("sourcedId", "identifier")
COURSE_ID_SOURCES: tuple[CourseIdSource, ...] = ("sourcedId", "classCode")

# A zip member larger than this is refused before it is inflated (a district's users.csv is a few MiB).
MAX_MEMBER_BYTES = 512 * 1024 * 1024
# Column widths of the tables the values go to (gateway/models/district.py).
MAX_SIS_ID, MAX_EMAIL, MAX_NAME, MAX_COURSE_ID, MAX_LMS_USER_ID = 255, 320, 200, 255, 255
# OneRoster roles Passback has no role for: such rows are skipped, not errors.
OTHER_ONEROSTER_ROLES = frozenset({"administrator", "aide", "guardian", "parent", "proctor", "relative"})
ROLES = ("student", "teacher")


class RosterFileInvalid(InvalidInput):
    """A file cannot be read as a whole (missing, not UTF-8, a required column absent): nothing is imported."""

    code = "roster_file_invalid"


@dataclass(frozen=True)
class Outcome:
    """One line of the import's report."""

    file: str
    line: int
    kind: str  # user, enrollment, class
    key: str
    status: str  # created, updated, unchanged, deleted, skipped, error
    reason: str = ""
    changes: tuple[str, ...] = ()


@dataclass(frozen=True)
class UserRecord:
    file: str
    line: int
    ref: str  # how enrollments name the user: OneRoster's sourcedId, the plain CSV's sis_id
    sis_id: str
    name: str
    email: str | None
    role: str
    lms_user_id: str | None = None


@dataclass(frozen=True)
class EnrollmentRecord:
    file: str
    line: int
    key: str  # for the report
    user_ref: str
    user_in_file: bool  # False: a OneRoster delta naming a user already in Passback by sisID
    course_id: str
    role: str
    delete: bool = False  # status tobedeleted (of the enrollment or its class)


@dataclass
class ParsedRoster:
    format: Format
    users: list[UserRecord] = field(default_factory=list)
    enrollments: list[EnrollmentRecord] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)  # rows refused or skipped while reading

    @property
    def rows(self) -> int:
        return len(self.users) + len(self.enrollments) + len(self.outcomes)


def detect_format(path: Path) -> Format:
    return "oneroster" if path.is_dir() or path.suffix.lower() == ".zip" else "csv"


def read_roster(
    path: Path,
    fmt: Format | None = None,
    *,
    sis_id: SisIdSource = "sourcedId",
    course_id: CourseIdSource = "sourcedId",
) -> ParsedRoster:
    """Read PATH; RosterFileInvalid when a file as a whole is unusable, else every row as a record or an outcome."""
    fmt = fmt or detect_format(path)
    if fmt == "csv":
        if not path.is_file():
            raise RosterFileInvalid(f"{path} is not a file", fields={"path": ["A CSV file is required."]})
        return _read_plain(path.name, _decode(path.name, path.read_bytes()))
    return _read_oneroster(_oneroster_files(path), sis_id=sis_id, course_id=course_id)


# --- files and rows ------------------------------------------------------------------------------------------


def _decode(name: str, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")  # drops a byte order mark, as Excel and many SIS exports write one
    except UnicodeDecodeError as exc:
        raise RosterFileInvalid(
            f"{name} is not UTF-8 (byte {exc.start})", fields={name: ["Must be UTF-8 text."]}
        ) from None


def _oneroster_files(path: Path) -> dict[str, str]:
    """The text of each .csv file of a OneRoster directory or zip, by lower-case file name."""
    files: dict[str, str] = {}
    if path.is_dir():
        for member in sorted(path.iterdir()):
            if member.is_file() and member.suffix.lower() == ".csv":
                files[member.name.lower()] = _decode(member.name, member.read_bytes())
        return files
    if not path.is_file():
        raise RosterFileInvalid(f"{path} does not exist", fields={"path": ["No such file or directory."]})
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                name = info.filename.rsplit("/", 1)[-1].lower()
                if info.is_dir() or not name.endswith(".csv") or info.filename.startswith("__MACOSX/"):
                    continue
                if name in files:
                    raise RosterFileInvalid(
                        f"{path.name} holds two {name} files", fields={name: ["Must appear once in the zip."]}
                    )
                if info.file_size > MAX_MEMBER_BYTES:
                    raise RosterFileInvalid(
                        f"{name} is larger than {MAX_MEMBER_BYTES // 2**20} MiB", fields={name: ["Too large."]}
                    )
                files[name] = _decode(name, archive.read(info))
    except zipfile.BadZipFile:
        raise RosterFileInvalid(f"{path.name} is not a zip file", fields={"path": ["Not a zip file."]}) from None
    return files


@dataclass(frozen=True)
class _Class:
    line: int
    course_id: str
    deleted: bool


@dataclass(frozen=True)
class _Row:
    line: int
    values: dict[str, str]  # by the lower-case column name, stripped


class _Table:
    """One CSV file: its header checked against the required columns (names compared case-insensitively,
    unknown columns ignored), then its rows with their first physical line number."""

    def __init__(self, name: str, text: str, required: Sequence[str]) -> None:
        self.name = name
        self._reader = csv.reader(io.StringIO(text, newline=""))
        try:
            header = next(self._reader, None)
        except csv.Error as exc:
            raise RosterFileInvalid(f"{name}: {exc}", fields={name: [f"Not CSV: {exc}."]}) from None
        if header is None:
            raise RosterFileInvalid(f"{name} is empty", fields={name: ["A header row is required."]})
        self.columns = [c.strip().lower() for c in header]
        missing = [c for c in required if c.lower() not in self.columns]
        if missing:
            raise RosterFileInvalid(
                f"{name} has no column {', '.join(missing)}",
                fields={name: [f"Missing required column {c!r}." for c in missing]},
            )

    def has(self, column: str) -> bool:
        return column.lower() in self.columns

    def rows(self) -> Iterator[_Row | Outcome]:
        """Each row, or an error outcome for a row whose field count differs from the header's (an unquoted
        comma would otherwise shift every column after it)."""
        last = self._reader.line_num
        while True:
            try:
                cells = next(self._reader, None)
            except csv.Error as exc:
                raise RosterFileInvalid(
                    f"{self.name} line {self._reader.line_num}: {exc}", fields={self.name: [f"Not CSV: {exc}."]}
                ) from None
            if cells is None:
                return
            line, last = last + 1, self._reader.line_num
            if not any(c.strip() for c in cells):
                continue  # blank lines, as trailing CRLFs leave
            if len(cells) != len(self.columns):
                yield Outcome(
                    self.name,
                    line,
                    "row",
                    cells[0].strip(),
                    "error",
                    f"row has {len(cells)} fields, the header {len(self.columns)} (an unquoted comma?)",
                )
                continue
            yield _Row(line, {c: v.strip() for c, v in zip(self.columns, cells, strict=True)})


def _too_long(values: dict[str, str], limits: dict[str, int]) -> str | None:
    for column, limit in limits.items():
        if len(values.get(column.lower(), "")) > limit:
            return f"{column}: longer than {limit} characters"
    return None


def _bad_email(email: str, column: str) -> str | None:
    if email and ("@" not in email or any(ch.isspace() for ch in email)):
        return f"{column}: {email!r} is not an email address"
    return None


# --- OneRoster 1.1 ------------------------------------------------------------------------------------------


def _manifest_absent(files: dict[str, str]) -> set[str]:
    """The files manifest.csv declares absent (`file.classes,absent`): they need not be there."""
    text = files.get("manifest.csv")
    if text is None:
        return set()
    absent = set()
    for cells in csv.reader(io.StringIO(text, newline="")):
        if len(cells) >= 2 and cells[0].strip().startswith("file.") and cells[1].strip().lower() == "absent":
            absent.add(cells[0].strip()[len("file.") :].lower() + ".csv")
    return absent


def _status(values: dict[str, str]) -> str:
    return values.get("status", "").lower() or "active"


def _read_oneroster(files: dict[str, str], *, sis_id: SisIdSource, course_id: CourseIdSource) -> ParsedRoster:
    absent = _manifest_absent(files)
    for name in ("users.csv", "classes.csv", "enrollments.csv"):
        if name not in files and name not in absent:
            raise RosterFileInvalid(f"no {name} in the OneRoster files", fields={name: ["Required."]})
    user_columns = ["sourcedId", "role", "givenName", "familyName"] + (["identifier"] if sis_id == "identifier" else [])
    class_columns = ["sourcedId"] + (["classCode"] if course_id == "classCode" else [])
    # Every header is checked before any row is read: a missing column changes nothing.
    tables = {
        "users.csv": _Table("users.csv", files.get("users.csv", ""), user_columns) if "users.csv" in files else None,
        "classes.csv": _Table("classes.csv", files["classes.csv"], class_columns) if "classes.csv" in files else None,
        "enrollments.csv": (
            _Table("enrollments.csv", files["enrollments.csv"], ["classSourcedId", "userSourcedId", "role"])
            if "enrollments.csv" in files
            else None
        ),
    }
    roster = ParsedRoster("oneroster")
    # What each sourcedId became: a record's line, or the outcome that refused or skipped it.
    users: dict[str, UserRecord | Outcome] = {}
    sis_ids: dict[str, int] = {}
    if tables["users.csv"] is not None:
        for row in tables["users.csv"].rows():
            if isinstance(row, Outcome):
                roster.outcomes.append(row)
                continue
            result = _oneroster_user(row, sis_id, users, sis_ids)
            if isinstance(result, UserRecord):
                roster.users.append(result)
                sis_ids[result.sis_id] = result.line
            else:
                roster.outcomes.append(result)
            ref = row.values["sourcedid"]
            if ref and ref not in users:
                users[ref] = result
    classes: dict[str, _Class | Outcome] = {}
    if tables["classes.csv"] is not None:
        for row in tables["classes.csv"].rows():
            if isinstance(row, Outcome):
                roster.outcomes.append(row)
                continue
            klass = _oneroster_class(row, course_id, classes)
            ref = row.values["sourcedid"]
            if isinstance(klass, Outcome):
                roster.outcomes.append(klass)
            if ref and ref not in classes:
                classes[ref] = klass
    if tables["enrollments.csv"] is not None:
        seen: dict[tuple[str, str], int] = {}
        for row in tables["enrollments.csv"].rows():
            if isinstance(row, Outcome):
                roster.outcomes.append(row)
                continue
            enrollment = _oneroster_enrollment(row, users, classes, seen, sis_id)
            if isinstance(enrollment, EnrollmentRecord):
                roster.enrollments.append(enrollment)
                seen[(enrollment.user_ref, enrollment.course_id)] = enrollment.line
            else:
                roster.outcomes.append(enrollment)
    return roster


def _oneroster_user(
    row: _Row, sis_id: SisIdSource, users: dict[str, UserRecord | Outcome], sis_ids: dict[str, int]
) -> UserRecord | Outcome:
    v = row.values
    ref = v["sourcedid"]

    def outcome(status: str, reason: str) -> Outcome:
        return Outcome("users.csv", row.line, "user", ref, status, reason)

    if not ref:
        return outcome("error", "sourcedId: required")
    if ref in users:
        return outcome("error", f"sourcedId: {ref!r} repeats line {_line_of(users[ref])}")
    role = v["role"].lower()
    status = _status(v)
    if status not in ("active", "tobedeleted", "inactive"):
        return outcome("error", f"status: {v['status']!r} is not active or tobedeleted")
    if status != "active":
        return outcome("skipped", f"status: {status}; an import never deletes users (their grades refer to them)")
    if role in OTHER_ONEROSTER_ROLES:
        return outcome("skipped", f"role: {role!r} is not imported; only student and teacher are")
    if role not in ROLES:
        return outcome("error", f"role: {v['role']!r} is not a OneRoster role")
    key = v["identifier"] if sis_id == "identifier" else ref
    if not key:
        return outcome("error", "identifier: required, as the SIS id is taken from it (--sis-id identifier)")
    if key in sis_ids:
        return outcome("error", f"identifier: {key!r} repeats line {sis_ids[key]}")
    email = v.get("email", "")
    name = " ".join(part for part in (v["givenname"], v["familyname"]) if part)
    problem = _bad_email(email, "email") or _too_long(
        {"sourcedid": key, "email": email, "name": name},
        {"sourcedId" if sis_id == "sourcedId" else "identifier": MAX_SIS_ID, "email": MAX_EMAIL},
    )
    if problem is None and len(name) > MAX_NAME:
        problem = f"givenName, familyName: longer than {MAX_NAME} characters together"
    if problem:
        return outcome("error", problem)
    return UserRecord("users.csv", row.line, ref, key, name, email or None, role)


def _oneroster_class(row: _Row, course_id: CourseIdSource, classes: dict[str, _Class | Outcome]) -> _Class | Outcome:
    v = row.values
    ref = v["sourcedid"]

    def error(reason: str) -> Outcome:
        return Outcome("classes.csv", row.line, "class", ref, "error", reason)

    if not ref:
        return error("sourcedId: required")
    if ref in classes:
        return error(f"sourcedId: {ref!r} repeats line {_line_of(classes[ref])}")
    status = _status(v)
    if status not in ("active", "tobedeleted", "inactive"):
        return error(f"status: {v['status']!r} is not active or tobedeleted")
    course = v["classcode"] if course_id == "classCode" else ref
    if not course:
        return error("classCode: required, as the LMS course id is taken from it (--course-id classCode)")
    if len(course) > MAX_COURSE_ID:
        return error(f"{course_id}: longer than {MAX_COURSE_ID} characters")
    return _Class(row.line, course, status != "active")


def _oneroster_enrollment(
    row: _Row,
    users: dict[str, UserRecord | Outcome],
    classes: dict[str, _Class | Outcome],
    seen: dict[tuple[str, str], int],
    sis_id: SisIdSource,
) -> EnrollmentRecord | Outcome:
    v = row.values
    user_ref, class_ref = v["usersourcedid"], v["classsourcedid"]
    key = v.get("sourcedid") or f"{user_ref}@{class_ref}"

    def outcome(status: str, reason: str) -> Outcome:
        return Outcome("enrollments.csv", row.line, "enrollment", key, status, reason)

    if not class_ref:
        return outcome("error", "classSourcedId: required")
    if not user_ref:
        return outcome("error", "userSourcedId: required")
    status = _status(v)
    if status not in ("active", "tobedeleted", "inactive"):
        return outcome("error", f"status: {v['status']!r} is not active or tobedeleted")
    role = v["role"].lower()
    if role in OTHER_ONEROSTER_ROLES:
        return outcome("skipped", f"role: {role!r} is not imported; only student and teacher are")
    if role not in ROLES:
        return outcome("error", f"role: {v['role']!r} is not a OneRoster role")
    klass = classes.get(class_ref)
    if klass is None:
        return outcome("error", f"classSourcedId: no class {class_ref!r} in classes.csv")
    if isinstance(klass, Outcome):
        return outcome("skipped", f"classSourcedId: the class's row (classes.csv line {klass.line}) was refused")
    course, class_deleted = klass.course_id, klass.deleted
    user = users.get(user_ref)
    if isinstance(user, Outcome):
        return outcome(
            "skipped", f"userSourcedId: the user's row (users.csv line {user.line}) was {_refused(user.status)}"
        )
    if user is None and sis_id == "identifier":
        return outcome("error", f"userSourcedId: no user {user_ref!r} in users.csv")
    if (user_ref, course) in seen:
        return outcome(
            "skipped", f"userSourcedId, classSourcedId: the same enrollment as line {seen[user_ref, course]}"
        )
    return EnrollmentRecord(
        "enrollments.csv",
        row.line,
        key,
        user_ref,
        user is not None,
        course,
        role,
        delete=status != "active" or class_deleted,
    )


def _line_of(found: UserRecord | Outcome | _Class) -> int:
    return found.line


def _refused(status: str) -> str:
    return "skipped" if status == "skipped" else "refused"


# --- Passback's plain CSV --------------------------------------------------------------------------------------

PLAIN_COLUMNS = ("sis_id", "email", "name", "role", "course")


def _read_plain(name: str, text: str) -> ParsedRoster:
    """One row per (user, course): sis_id,email,name,role,course[,lms_user_id]. A user on several rows must
    carry the same details on each; an empty course adds the user only."""
    table = _Table(name, text, PLAIN_COLUMNS)
    has_lms_id = table.has("lms_user_id")
    roster = ParsedRoster("csv")
    users: dict[str, UserRecord] = {}
    refused: dict[str, Outcome] = {}
    seen: dict[tuple[str, str], int] = {}
    for row in table.rows():
        if isinstance(row, Outcome):
            roster.outcomes.append(row)
            continue
        v = row.values
        sis_id, course, role = v["sis_id"], v["course"], v["role"].lower()

        def outcome(kind: str, status: str, reason: str, key: str = sis_id, line: int = row.line) -> Outcome:
            return Outcome(name, line, kind, key, status, reason)

        if not sis_id:
            roster.outcomes.append(outcome("user", "error", "sis_id: required"))
            continue
        if sis_id in refused:
            first = refused[sis_id]
            reason = f"sis_id: the user's first row (line {first.line}) was {_refused(first.status)}"
            roster.outcomes.append(outcome("enrollment", "skipped", reason, f"{sis_id}@{course}"))
            continue
        lms_user_id = v.get("lms_user_id", "") if has_lms_id else ""
        problem = (
            (f"role: {v['role']!r} is not student or teacher" if role not in ROLES else None)
            or _bad_email(v["email"], "email")
            or _too_long(
                v,
                {
                    "sis_id": MAX_SIS_ID,
                    "email": MAX_EMAIL,
                    "name": MAX_NAME,
                    "course": MAX_COURSE_ID,
                    "lms_user_id": MAX_LMS_USER_ID,
                },
            )
        )
        record = UserRecord(name, row.line, sis_id, sis_id, v["name"], v["email"] or None, role, lms_user_id or None)
        known = users.get(sis_id)
        if problem is None and known is not None:
            differs = [
                column
                for column, a, b in (
                    ("email", known.email, record.email),
                    ("name", known.name, record.name),
                    ("role", known.role, record.role),
                    ("lms_user_id", known.lms_user_id, record.lms_user_id),
                )
                if a != b
            ]
            if differs:
                problem = f"{', '.join(differs)}: differs from line {known.line} for the same sis_id"
        if problem:
            if known is None:
                refused[sis_id] = outcome("user", "error", problem)
                roster.outcomes.append(refused[sis_id])
            else:
                roster.outcomes.append(outcome("enrollment", "error", problem, f"{sis_id}@{course}"))
            continue
        if known is None:
            users[sis_id] = record
            roster.users.append(record)
        if not course:
            continue
        if (sis_id, course) in seen:
            reason = f"sis_id, course: the same enrollment as line {seen[sis_id, course]}"
            roster.outcomes.append(outcome("enrollment", "skipped", reason, f"{sis_id}@{course}"))
            continue
        seen[sis_id, course] = row.line
        roster.enrollments.append(EnrollmentRecord(name, row.line, f"{sis_id}@{course}", sis_id, True, course, role))
    return roster
