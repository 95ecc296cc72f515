"""What the staff dashboard shows: delivery counts, failing deliveries, the audit log. Always one district.

Every list is paginated and every count is one grouped query over an indexed range, so a page costs about
the same on a district with 100,000 grades as on one with 1,000 (`python -m bench.dashboard_load`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import permutations
from typing import Any

from sqlalchemy import and_, case, exists, func, or_, select
from sqlalchemy.orm import Session

from adapters import REGISTRY
from adapters.lti13_ags import SCOPE_LINEITEM, SCOPE_LINEITEM_READONLY, SCOPE_NRPS, SCOPE_RESULT_READONLY, SCOPE_SCORE
from gateway.crypto import SecretBox, SecretUndecryptable
from gateway.models import (
    App,
    Assignment,
    AuditEntry,
    CachedAccessToken,
    Delivery,
    DeliveryStatus,
    DistrictApp,
    Grade,
    GradeRevision,
    LmsConnection,
    Placement,
    SandboxGradebookEntry,
    User,
    utcnow,
)
from gateway.services.errors import InvalidInput, NotFound
from gateway.services.lms import connection_settings
from gateway.services.token_cache import _hash as cache_key_hash

SHOWN_STATUSES = ("delivered", "pending", "delivering", "retrying", "awaiting_launch", "failed", "unroutable")
UNDELIVERED = (
    DeliveryStatus.PENDING,
    DeliveryStatus.DELIVERING,
    DeliveryStatus.RETRYING,
    DeliveryStatus.AWAITING_LAUNCH,
    DeliveryStatus.FAILED,
    DeliveryStatus.UNROUTABLE,
)
PAGE_SIZE = 50
STUDENT_PAGE_SIZE = 100
GRADEBOOK_PAGE_SIZE = 100
# The drill-down lists an app's assignments on one page; catalogs are far smaller than this.
MAX_ASSIGNMENTS = 1000
CSV_CHUNK = 1000
CSV_MAX_ROWS = 1_000_000
# The scopes Passback's LTI 1.3 adapter asks platforms for; a cached token is kept per subset it used.
LTI13_SCOPES = (SCOPE_LINEITEM, SCOPE_LINEITEM_READONLY, SCOPE_RESULT_READONLY, SCOPE_SCORE, SCOPE_NRPS)


def _zeroes() -> dict[str, int]:
    return dict.fromkeys(SHOWN_STATUSES, 0)


def _add(counts: dict[str, int], status: str, count: int) -> None:
    if status in counts:
        counts[status] += int(count)


# --- overview --------------------------------------------------------------------------------------------------


@dataclass
class Overview:
    day: dict[str, int]
    week: dict[str, int]
    by_connection: list[tuple[str, dict[str, int]]]
    by_app: list[tuple[str, dict[str, int]]]
    oldest_undelivered: timedelta | None
    daily: list[tuple[str, int, int]] = field(default_factory=list)


def overview(session: Session, district_id: str, *, now: datetime | None = None) -> Overview:
    """Score deliveries of the last 24 hours and 7 days by status; all deliveries of the 7 days by connection,
    by app and per day; and how long the oldest undelivered grade has waited. One grouped scan of the week's
    deliveries (index on district and creation time) and one indexed minimum."""
    now = now or utcnow()
    week_ago = now - timedelta(days=7)
    day_ago = now - timedelta(days=1)
    day_starts = [(now - timedelta(days=back)).replace(hour=0, minute=0, second=0, microsecond=0) for back in range(7)]
    # Which of the 7 calendar days (0 = six days ago … 6 = today) a delivery was created on; -1 before them.
    day_index = case(
        *[(Delivery.created_at >= start, 6 - back) for back, start in enumerate(day_starts)],
        else_=-1,
    )
    recent = case((Delivery.created_at >= day_ago, 1), else_=0)
    in_week = (Delivery.district_id == district_id, Delivery.created_at >= week_ago)
    rows = session.execute(
        select(
            Delivery.placement_id,
            Delivery.lms_connection_id,
            Delivery.status,
            Delivery.operation,
            day_index,
            recent,
            func.count(),
        )
        .where(*in_week)
        .group_by(
            Delivery.placement_id, Delivery.lms_connection_id, Delivery.status, Delivery.operation, day_index, recent
        )
    ).all()
    day, week = _zeroes(), _zeroes()
    per_connection: dict[str, dict[str, int]] = {}
    per_app: dict[str, dict[str, int]] = {}
    per_day = [[0, 0] for _ in range(7)]
    # The app of a delivery comes from its placement (the district's placements, read once); only deliveries
    # without one (unroutable) are joined to their grades for it, below.
    placement_apps = _placement_apps(session, district_id)
    for placement_id, connection_id, status, operation, index, in_last_day, count in rows:
        if operation == "replace":
            _add(week, status, count)
            if in_last_day:
                _add(day, status, count)
        if connection_id is not None:
            _add(per_connection.setdefault(connection_id, _zeroes()), status, count)
        if placement_id is not None and placement_id in placement_apps:
            _add(per_app.setdefault(placement_apps[placement_id], _zeroes()), status, count)
        if index >= 0 and status == DeliveryStatus.DELIVERED:
            per_day[index][0] += int(count)
        elif index >= 0 and status in (DeliveryStatus.FAILED, DeliveryStatus.RETRYING):
            per_day[index][1] += int(count)
    for app_id, status, count in session.execute(
        select(Grade.app_id, Delivery.status, func.count())
        .join(Grade, Grade.id == Delivery.grade_id)
        .where(*in_week, Delivery.placement_id.is_(None))
        .group_by(Grade.app_id, Delivery.status)
    ):
        _add(per_app.setdefault(app_id, _zeroes()), status, count)
    connection_names = _names(session, LmsConnection, list(per_connection))
    app_names = _names(session, App, list(per_app))
    # Grouped by status on the (district, status, …) index: only waiting rows are read, never delivered ones.
    waiting = session.execute(
        select(Delivery.status, func.min(Delivery.created_at))
        .where(Delivery.district_id == district_id, Delivery.status.in_(UNDELIVERED))
        .group_by(Delivery.status)
    ).all()
    oldest = min((created for _, created in waiting if created is not None), default=None)
    return Overview(
        day=day,
        week=week,
        by_connection=sorted((connection_names[k], v) for k, v in per_connection.items()),
        by_app=sorted((app_names[k], v) for k, v in per_app.items()),
        oldest_undelivered=(now - oldest) if oldest else None,
        daily=[
            (start.strftime("%a %d"), good, bad)
            for start, (good, bad) in zip(reversed(day_starts), per_day, strict=True)
        ],
    )


def _placement_apps(session: Session, district_id: str) -> dict[str, str]:
    """Placement id → app id, for every placement of the district (one row per course and assignment)."""
    return {
        placement_id: app_id
        for placement_id, app_id in session.execute(
            select(Placement.id, Assignment.app_id)
            .join(Assignment, Assignment.id == Placement.assignment_id)
            .where(Placement.district_id == district_id)
        )
    }


def _names(session: Session, model: Any, ids: list[str]) -> dict[str, str]:
    if not ids:
        return {}
    return {key: name for key, name in session.execute(select(model.id, model.name).where(model.id.in_(ids)))}


# --- delivery lists, one delivery, CSV ------------------------------------------------------------------------


def _delivery_rows(district_id: str, status: str | None) -> Any:
    query = (
        select(Delivery, Grade, User, Assignment, LmsConnection.name, Placement.course_id)
        .join(Grade, Grade.id == Delivery.grade_id)
        .join(User, User.id == Grade.user_id)
        .join(Assignment, Assignment.id == Grade.assignment_id)
        .outerjoin(LmsConnection, LmsConnection.id == Delivery.lms_connection_id)
        .outerjoin(Placement, Placement.id == Delivery.placement_id)
        .where(Delivery.district_id == district_id)
    )
    if status:
        return query.where(Delivery.status == status)
    return query.where(Delivery.status != DeliveryStatus.SUPERSEDED)


def _delivery_item(row: Sequence[Any]) -> dict[str, Any]:
    delivery, grade, user, assignment, connection, course = row
    return {
        "delivery": delivery,
        "grade": grade,
        "student": user.name or user.id,
        "assignment": assignment.name,
        "assignment_id": assignment.external_id,
        "connection": connection or "—",
        "course": course or "—",
    }


Cursor = tuple[datetime, str]


def cursor_text(cursor: Cursor) -> str:
    """A list position for a URL: the delivery's updated_at and id."""
    return f"{cursor[0].isoformat()}_{cursor[1]}"


def parse_cursor(text: str | None) -> Cursor | None:
    """The position cursor_text wrote, or None for anything else (the list then starts at its newest)."""
    if not text or len(text) > 100 or "_" not in text:
        return None
    moment, delivery_id = text.rsplit("_", 1)
    try:
        return datetime.fromisoformat(moment), delivery_id
    except ValueError:
        return None


def _older_than(cursor: Cursor) -> Any:
    # The `<=` bounds the index range; the OR then only drops the rows already seen at that instant.
    updated_at, delivery_id = cursor
    return and_(Delivery.updated_at <= updated_at, or_(Delivery.updated_at < updated_at, Delivery.id < delivery_id))


def _newer_than(cursor: Cursor) -> Any:
    updated_at, delivery_id = cursor
    return and_(Delivery.updated_at >= updated_at, or_(Delivery.updated_at > updated_at, Delivery.id > delivery_id))


@dataclass
class DeliveryPage:
    items: list[dict[str, Any]]
    # Where the next older and newer pages start (None: there is none).
    older: Cursor | None
    newer: Cursor | None


def deliveries(
    session: Session,
    district_id: str,
    *,
    status: str | None = None,
    before: Cursor | None = None,
    after: Cursor | None = None,
) -> DeliveryPage:
    """One page of deliveries, newest first, with the grade, student, assignment and the LMS's own error: the
    newest, or those just older than `before`, or just newer than `after`. Keyset paging on the (district,
    status, updated_at) or (district, updated_at) index, so the thousandth page costs what the first does."""
    query = _delivery_rows(district_id, status)
    if after is not None:
        rows = session.execute(
            query.where(_newer_than(after)).order_by(Delivery.updated_at.asc(), Delivery.id.asc()).limit(PAGE_SIZE + 1)
        ).all()
        more_newer = len(rows) > PAGE_SIZE
        items = [_delivery_item(row) for row in reversed(rows[:PAGE_SIZE])]
        return DeliveryPage(
            items,
            older=_cursor_of(items[-1]) if items else None,
            newer=_cursor_of(items[0]) if items and more_newer else None,
        )
    if before is not None:
        query = query.where(_older_than(before))
    rows = session.execute(query.order_by(Delivery.updated_at.desc(), Delivery.id.desc()).limit(PAGE_SIZE + 1)).all()
    items = [_delivery_item(row) for row in rows[:PAGE_SIZE]]
    return DeliveryPage(
        items,
        older=_cursor_of(items[-1]) if len(rows) > PAGE_SIZE else None,
        newer=_cursor_of(items[0]) if items and before is not None else None,
    )


def _cursor_of(item: dict[str, Any]) -> Cursor:
    return item["delivery"].updated_at, item["delivery"].id


def csv_chunk(
    session: Session,
    district_id: str,
    *,
    status: str | None = None,
    after: Cursor | None = None,
    limit: int = CSV_CHUNK,
) -> tuple[list[list[str]], Cursor | None]:
    """Up to `limit` CSV rows (CSV_COLUMNS) of the delivery list, in its order (newest first), after the cursor
    `after`, and the cursor of the next chunk (None after the last). Keyset paging on the list's index, so the
    last chunk of a district costs what the first does; plain columns, no ORM objects."""
    query = (
        select(
            Delivery.id,
            Delivery.status,
            Delivery.operation,
            User.name,
            User.id,
            Assignment.external_id,
            Assignment.name,
            Grade.score_given,
            Grade.score_maximum,
            Grade.updated_at,
            LmsConnection.name,
            Placement.course_id,
            Delivery.attempts,
            Delivery.delivered_at,
            Delivery.last_error,
            Delivery.updated_at,
        )
        .join(Grade, Grade.id == Delivery.grade_id)
        .join(User, User.id == Grade.user_id)
        .join(Assignment, Assignment.id == Grade.assignment_id)
        .outerjoin(LmsConnection, LmsConnection.id == Delivery.lms_connection_id)
        .outerjoin(Placement, Placement.id == Delivery.placement_id)
        .where(Delivery.district_id == district_id)
    )
    query = query.where(Delivery.status == status) if status else query.where(Delivery.status != "superseded")
    if after is not None:
        query = query.where(_older_than(after))
    rows = session.execute(query.order_by(Delivery.updated_at.desc(), Delivery.id.desc()).limit(limit)).all()
    result = []
    for row in rows:
        cells = [
            row[0],
            row[1],
            row[2],
            row[3] or row[4],
            row[5],
            row[6],
            f"{row[7]:g}",
            f"{row[8]:g}",
            row[9].isoformat() + "Z",
            row[10] or "—",
            row[11] or "—",
            str(row[12]),
            row[13].isoformat() + "Z" if row[13] else "",
            row[14] or "",
        ]
        # Names come from LMSs and apps, errors from LMSs: every text cell is defused.
        result.append([_csv_safe(str(cell)) for cell in cells])
    cursor = (rows[-1][15], rows[-1][0]) if len(rows) == limit else None
    return result, cursor


@dataclass
class DeliveryDetail:
    delivery: Delivery
    grade: Grade
    revision: GradeRevision | None
    student: User
    assignment: Assignment
    app_name: str
    connection: LmsConnection | None
    placement: Placement | None
    # The other deliveries of the same grade (earlier revisions, other placements), newest first.
    history: list[Delivery]


def delivery_detail(session: Session, district_id: str, delivery_id: str) -> DeliveryDetail:
    """One delivery of this district with its grade, the revision it carries and the LMS's own answer;
    NotFound for any other district's delivery."""
    row = session.execute(
        select(Delivery, Grade, User, Assignment, App.name)
        .join(Grade, Grade.id == Delivery.grade_id)
        .join(User, User.id == Grade.user_id)
        .join(Assignment, Assignment.id == Grade.assignment_id)
        .join(App, App.id == Grade.app_id)
        .where(Delivery.id == delivery_id, Delivery.district_id == district_id)
    ).first()
    if row is None:
        raise NotFound("no such delivery in this district")
    delivery, grade, student, assignment, app_name = row
    history = session.scalars(
        select(Delivery)
        # By the grade alone (its index): the grade is this district's, so are its deliveries.
        .where(Delivery.grade_id == grade.id, Delivery.id != delivery.id)
        .order_by(Delivery.created_at.desc(), Delivery.id.desc())
        .limit(20)
    ).all()
    return DeliveryDetail(
        delivery=delivery,
        grade=grade,
        revision=session.get(GradeRevision, delivery.revision_id),
        student=student,
        assignment=assignment,
        app_name=app_name,
        connection=session.get(LmsConnection, delivery.lms_connection_id) if delivery.lms_connection_id else None,
        placement=session.get(Placement, delivery.placement_id) if delivery.placement_id else None,
        history=list(history),
    )


CSV_COLUMNS = [
    "delivery_id",
    "status",
    "operation",
    "student",
    "assignment_id",
    "assignment",
    "score_given",
    "score_maximum",
    "posted_at",
    "lms_connection",
    "course",
    "attempts",
    "delivered_at",
    "last_error",
]


# OWASP's CSV injection list: a spreadsheet reads a cell starting with one of these as a formula.
CSV_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _csv_safe(text: str) -> str:
    # Names come from LMSs and apps, errors from LMSs: untrusted text must not run in a spreadsheet.
    return "'" + text if text.startswith(CSV_FORMULA_STARTS) else text


def deliveries_csv_rows(session: Session, district_id: str, *, status: str | None = None) -> list[list[str]]:
    """The whole delivery list as CSV rows (header first), the same filter as the page, up to CSV_MAX_ROWS.
    The dashboard streams the same chunks (csv_chunk) instead of building this list."""
    rows = [CSV_COLUMNS]
    after: Cursor | None = None
    while len(rows) <= CSV_MAX_ROWS:
        chunk, after = csv_chunk(session, district_id, status=status, after=after)
        rows.extend(chunk)
        if after is None:
            break
    return rows[: CSV_MAX_ROWS + 1]


def audit_log(session: Session, district_id: str, *, limit: int = 200) -> list[AuditEntry]:
    return list(
        session.scalars(
            select(AuditEntry)
            .where(AuditEntry.district_id == district_id)
            .order_by(AuditEntry.created_at.desc())
            .limit(limit)
        )
    )


# --- LMS connections --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigValue:
    """A value an admin enters on the LMS side; `copy` is False for what is not shown (secrets)."""

    label: str
    value: str
    copy: bool = True


@dataclass(frozen=True)
class CachedTokenState:
    """That Passback holds an LMS access token, for which scopes and until when; never the token."""

    scopes: tuple[str, ...]
    expires_at: datetime
    expired: bool


@dataclass
class ConnectionView:
    connection: LmsConnection
    counts: dict[str, int]
    # What an admin enters on the LMS side, without secrets.
    configuration: list[ConfigValue]
    # What Passback was told about the platform (issuer, client id …): to compare with the LMS's own page.
    registration: list[tuple[str, str]] = field(default_factory=list)
    # LTI 1.3 only: the cached access tokens (None for other adapters).
    tokens: list[CachedTokenState] | None = None
    # Schoology REST: placements (catalog assignment → section and Schoology assignment) are mapped here.
    maps_assignments: bool = False
    # Why the connection's settings cannot be shown or used: they cannot be decrypted with the configured keys.
    secret_problem: str | None = None


def connections(session: Session, box: SecretBox, district_id: str, public_url: str) -> list[ConnectionView]:
    """The district's LMS connections with their health, delivery counts, cached access tokens (LTI 1.3) and
    LMS-side configuration. Secrets are never part of it."""
    base = public_url.rstrip("/")
    counts = _sum_by(tallies(session, district_id), lambda t: t.connection_id)
    result = []
    for connection in session.scalars(
        select(LmsConnection).where(LmsConnection.district_id == district_id).order_by(LmsConnection.name)
    ):
        view = ConnectionView(connection, counts.get(connection.id, _zeroes()), [])
        try:
            settings = connection_settings(box, connection)
        except SecretUndecryptable as exc:
            view.secret_problem = exc.message
            result.append(view)
            continue
        if connection.adapter == "lti13":
            view.configuration = [
                ConfigValue("Tool configuration JSON URL (Canvas: Paste JSON)", f"{base}/lti/config/{connection.id}"),
                ConfigValue("OIDC login / initiation URL", f"{base}/lti/login"),
                ConfigValue("Target link URI / launch / redirect URI", f"{base}/lti/launch"),
                ConfigValue("Deep linking URL", f"{base}/lti/launch"),
                ConfigValue("Public keyset (JWKS) URL", f"{base}/lti/jwks"),
            ]
            view.registration = [
                ("Platform", str(settings.get("platform", ""))),
                ("Issuer", str(settings.get("issuer", ""))),
                ("Client ID", str(settings.get("client_id", ""))),
                ("Deployment IDs", ", ".join(settings.get("deployment_ids") or [])),
            ]
            view.tokens = cached_tokens(session, settings)
        elif connection.adapter == "lti11":
            view.configuration = [
                ConfigValue("Launch URL", f"{base}/lti11/launch"),
                ConfigValue("Consumer key", str(settings.get("consumer_key", ""))),
                ConfigValue("Shared secret", "set when the connection was added; never shown", copy=False),
            ]
        elif connection.adapter == "sandbox":
            view.configuration = [ConfigValue("Sandbox gradebook", str(settings.get("base_url", "")) + "/gradebook")]
        elif connection.adapter == "schoology":
            # Nothing to enter on Schoology's side: the key was made there. What Passback uses, to compare.
            view.registration = [
                ("API base URL", str(settings.get("base_url", ""))),
                ("Consumer key", str(settings.get("consumer_key", ""))),
                ("Students found by", str(settings.get("roster_match", "uid"))),
            ]
            view.maps_assignments = True
        result.append(view)
    return result


@dataclass(frozen=True)
class MappingRow:
    """One placement of a catalog assignment in an LMS section, for the mapping page."""

    app_name: str
    assignment_id: str
    assignment_name: str
    section_id: str | None
    lms_assignment_id: str | None


def connection_mappings(
    session: Session, district_id: str, connection_id: str
) -> tuple[LmsConnection, list[App], list[MappingRow]]:
    """A connection of this district, the apps authorized in the district, and the connection's placements
    (catalog assignment → section and LMS assignment); NotFound for another district's connection."""
    connection = session.scalar(
        select(LmsConnection).where(LmsConnection.id == connection_id, LmsConnection.district_id == district_id)
    )
    if connection is None:
        raise NotFound("no such LMS connection in this district")
    apps = [app for app, _ in app_rows(session, district_id)]
    rows = session.execute(
        select(App.name, Assignment.external_id, Assignment.name, Placement.section_id, Placement.destination)
        .join(Assignment, Assignment.id == Placement.assignment_id)
        .join(App, App.id == Assignment.app_id)
        .where(Placement.lms_connection_id == connection.id, Placement.district_id == district_id)
        .order_by(App.name, Assignment.name, Placement.section_id)
        .limit(MAX_ASSIGNMENTS)
    ).all()
    mappings = [
        MappingRow(app_name, external_id, name, section, (destination or {}).get("assignment_id"))
        for app_name, external_id, name, section, destination in rows
    ]
    return connection, apps, mappings


def parse_mapping_lines(text: str) -> list[dict[str, str]]:
    """`assignmentID, section, LMS assignment id` per line (commas or tabs, as pasted from a spreadsheet);
    blank lines and lines starting with # are skipped. InvalidInput names the first bad line."""
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = [part.strip() for part in line.replace("\t", ",").split(",")]
        if len(parts) != 3 or not all(parts) or any(len(part) > 255 for part in parts):
            raise InvalidInput(
                f"line {number}: expected three values of at most 255 characters, assignmentID, section and "
                "Schoology assignment id",
                fields={"mappings": [f"Line {number} is {raw.strip()!r}."]},
            )
        entries.append({"assignmentID": parts[0], "section": parts[1], "lmsAssignmentID": parts[2]})
    if not entries:
        raise InvalidInput("no mappings given", fields={"mappings": ["Enter at least one line."]})
    if len(entries) > 1000:
        raise InvalidInput("at most 1,000 mappings at once", fields={"mappings": ["Split the list."]})
    return entries


def cached_tokens(session: Session, settings: dict[str, Any], *, now: datetime | None = None) -> list[CachedTokenState]:
    """The access tokens the LTI 1.3 adapter has cached for this registration, by scope set; the cache is
    keyed by a hash of the adapter's key, so the candidates (every ordering of every subset of the scopes it
    asks for) are hashed and looked up. Only presence and expiry are read, never the token."""
    now = now or utcnow()
    try:
        adapter: Any = REGISTRY["lti13"].from_settings(settings, None)  # type: ignore[arg-type]
        # The adapter's own cache key, so the two never drift apart.
        token_key = adapter._token_key
    except (KeyError, AttributeError, TypeError):
        return []
    candidates: dict[str, tuple[str, ...]] = {}
    for size in range(1, len(LTI13_SCOPES) + 1):
        for scopes in permutations(LTI13_SCOPES, size):
            candidates[cache_key_hash(token_key(list(scopes)))] = scopes
    rows = session.execute(
        select(CachedAccessToken.key_hash, CachedAccessToken.expires_at).where(
            CachedAccessToken.key_hash.in_(list(candidates))
        )
    ).all()
    return sorted(
        (CachedTokenState(candidates[key_hash], expires_at, expires_at <= now) for key_hash, expires_at in rows),
        key=lambda state: state.expires_at,
        reverse=True,
    )


def set_paused(session: Session, district_id: str, connection_id: str, paused: bool | None) -> LmsConnection:
    """Pause or resume delivery to one connection (None: just find it, in this district); grades keep being
    accepted and wait in the outbox."""
    connection = session.scalar(
        select(LmsConnection).where(LmsConnection.id == connection_id, LmsConnection.district_id == district_id)
    )
    if connection is None:
        raise NotFound("no such LMS connection in this district")
    if paused is not None:
        connection.paused = paused
    return connection


# --- the sandbox LMS's gradebook --------------------------------------------------------------------------------


@dataclass
class SandboxPage:
    connections: list[tuple[str, str]]
    connection_id: str | None
    entries: list[tuple[SandboxGradebookEntry, str]]
    more: bool


def sandbox_gradebook(
    session: Session, district_id: str, *, connection_id: str | None = None, page: int = 1
) -> SandboxPage:
    """One sandbox connection's gradebook (the first by name unless one is asked for), a page at a time in
    the order of its unique index (course, item, student), with the students' names where Passback knows them.
    NotFound for a connection that is not one of this district's sandboxes."""
    sandboxes = [
        (cid, name)
        for cid, name in session.execute(
            select(LmsConnection.id, LmsConnection.name)
            .where(LmsConnection.district_id == district_id, LmsConnection.adapter == "sandbox")
            .order_by(LmsConnection.name)
        )
    ]
    if connection_id is None:
        connection_id = sandboxes[0][0] if sandboxes else None
    elif connection_id not in {cid for cid, _ in sandboxes}:
        raise NotFound("no such sandbox connection in this district")
    if connection_id is None:
        return SandboxPage([], None, [], False)
    rows = session.execute(
        select(SandboxGradebookEntry, User.name)
        .outerjoin(User, (User.id == SandboxGradebookEntry.student_id) & (User.district_id == district_id))
        .where(SandboxGradebookEntry.gradebook == connection_id)
        .order_by(SandboxGradebookEntry.course_id, SandboxGradebookEntry.item_id, SandboxGradebookEntry.student_id)
        .offset((page - 1) * GRADEBOOK_PAGE_SIZE)
        .limit(GRADEBOOK_PAGE_SIZE + 1)
    ).all()
    entries = [(entry, name or entry.student_id) for entry, name in rows[:GRADEBOOK_PAGE_SIZE]]
    return SandboxPage(sandboxes, connection_id, entries, len(rows) > GRADEBOOK_PAGE_SIZE)


# --- drill-down: app → assignment → placement → student -------------------------------------------------------


@dataclass(frozen=True)
class Tally:
    """How many score deliveries of one placement (or, without one, of one assignment and connection) have
    one status."""

    app_id: str
    assignment_id: str
    connection_id: str | None
    placement_id: str | None
    status: str
    count: int


def tallies(session: Session, district_id: str, *, placement_ids: list[str] | None = None) -> list[Tally]:
    """Score deliveries (not deletions) of the district counted by placement and status, each placement
    labelled with its assignment, app and connection. The count is one scan of the covering index
    (district, placement, status, operation), never a join per delivery; only deliveries without a placement
    (unroutable ones) are joined to their grades, and they are a seek on the same index."""
    counted = select(Delivery.placement_id, Delivery.status, func.count()).where(
        Delivery.district_id == district_id, Delivery.operation == "replace", Delivery.placement_id.is_not(None)
    )
    if placement_ids is not None:
        counted = counted.where(Delivery.placement_id.in_(placement_ids))
    by_placement = session.execute(counted.group_by(Delivery.placement_id, Delivery.status)).all()
    labels = {
        placement_id: (app_id, assignment_id, connection_id)
        for placement_id, assignment_id, connection_id, app_id in session.execute(
            select(Placement.id, Placement.assignment_id, Placement.lms_connection_id, Assignment.app_id)
            .join(Assignment, Assignment.id == Placement.assignment_id)
            .where(Placement.district_id == district_id)
        )
    }
    result = [
        Tally(*labels[placement_id], placement_id, status, int(count))
        for placement_id, status, count in by_placement
        if placement_id in labels
    ]
    if placement_ids is None:
        for app_id, assignment_id, connection_id, status, count in session.execute(
            select(Grade.app_id, Grade.assignment_id, Delivery.lms_connection_id, Delivery.status, func.count())
            .join(Grade, Grade.id == Delivery.grade_id)
            .where(
                Delivery.district_id == district_id, Delivery.placement_id.is_(None), Delivery.operation == "replace"
            )
            .group_by(Grade.app_id, Grade.assignment_id, Delivery.lms_connection_id, Delivery.status)
        ):
            result.append(Tally(app_id, assignment_id, connection_id, None, status, int(count)))
    return result


def _sum_by(rows: Iterable[Tally], key: Callable[[Tally], str | None]) -> dict[str, dict[str, int]]:
    result: dict[str, dict[str, int]] = {}
    for row in rows:
        value = key(row)
        if value is not None:
            _add(result.setdefault(value, _zeroes()), row.status, row.count)
    return result


def _authorized_app(session: Session, district_id: str, app_id: str) -> App | None:
    return session.scalar(
        select(App)
        .join(DistrictApp, DistrictApp.app_id == App.id)
        .where(App.id == app_id, DistrictApp.district_id == district_id)
    )


def app_rows(session: Session, district_id: str) -> list[tuple[App, dict[str, int]]]:
    """The apps authorized in the district, with their deliveries by status."""
    apps = session.scalars(
        select(App)
        .join(DistrictApp, DistrictApp.app_id == App.id)
        .where(DistrictApp.district_id == district_id)
        .order_by(App.name)
    ).all()
    counts = _sum_by(tallies(session, district_id), lambda t: t.app_id)
    return [(app, counts.get(app.id, _zeroes())) for app in apps]


def assignment_rows(session: Session, district_id: str, app_id: str) -> tuple[App, list[tuple[Assignment, dict]]]:
    """An authorized app's assignments with their deliveries in this district; NotFound for any other app."""
    app = _authorized_app(session, district_id, app_id)
    if app is None:
        raise NotFound("no such app in this district")
    assignments = session.scalars(
        select(Assignment).where(Assignment.app_id == app.id).order_by(Assignment.name).limit(MAX_ASSIGNMENTS)
    ).all()
    counts = _sum_by(tallies(session, district_id), lambda t: t.assignment_id if t.app_id == app.id else None)
    return app, [(a, counts.get(a.id, _zeroes())) for a in assignments]


def district_assignment(session: Session, district_id: str, assignment_id: str) -> tuple[App, Assignment]:
    """An assignment of an app authorized in this district, with its app; NotFound for any other."""
    found = session.execute(
        select(App, Assignment)
        .join(Assignment, Assignment.app_id == App.id)
        .where(
            Assignment.id == assignment_id,
            exists().where(DistrictApp.app_id == App.id, DistrictApp.district_id == district_id),
        )
    ).first()
    if found is None:
        raise NotFound("no such assignment in this district")
    return found[0], found[1]


def placement_rows(
    session: Session, district_id: str, assignment_id: str
) -> tuple[App, Assignment, list[tuple[Placement, str, dict[str, int]]]]:
    """Where an assignment is placed in this district's LMSs (each LMS link its own row), with each
    placement's deliveries."""
    app, assignment = district_assignment(session, district_id, assignment_id)
    placements = session.execute(
        select(Placement, LmsConnection.name)
        .join(LmsConnection, LmsConnection.id == Placement.lms_connection_id)
        .where(Placement.district_id == district_id, Placement.assignment_id == assignment.id)
        .order_by(LmsConnection.name, Placement.course_id, Placement.created_at, Placement.id)
    ).all()
    counted = tallies(session, district_id, placement_ids=[placement.id for placement, _ in placements])
    counts = _sum_by(counted, lambda t: t.placement_id)
    return app, assignment, [(p, name, counts.get(p.id, _zeroes())) for p, name in placements]


@dataclass
class StudentPage:
    placement: Placement
    assignment: Assignment
    app_name: str
    connection_name: str
    rows: list[tuple[User, Grade, Delivery]]
    more: bool


def student_rows(session: Session, district_id: str, placement_id: str, *, page: int = 1) -> StudentPage:
    """Each student's current grade at one placement and the delivery that carries it there, a page at a time
    by name; found from the placement's deliveries (index on district and placement), not from the grades."""
    found = session.execute(
        select(Placement, Assignment, App.name, LmsConnection.name)
        .join(Assignment, Assignment.id == Placement.assignment_id)
        .join(App, App.id == Assignment.app_id)
        .join(LmsConnection, LmsConnection.id == Placement.lms_connection_id)
        .where(Placement.id == placement_id, Placement.district_id == district_id)
    ).first()
    if found is None:
        raise NotFound("no such placement in this district")
    placement, assignment, app_name, connection_name = found
    rows = session.execute(
        select(User, Grade, Delivery)
        .select_from(Delivery)
        .join(GradeRevision, GradeRevision.id == Delivery.revision_id)
        .join(Grade, and_(Grade.id == GradeRevision.grade_id, Grade.revision == GradeRevision.revision))
        .join(User, User.id == Grade.user_id)
        .where(Delivery.district_id == district_id, Delivery.placement_id == placement.id)
        .order_by(User.name, User.id, Delivery.created_at, Delivery.id)
        .offset((page - 1) * STUDENT_PAGE_SIZE)
        .limit(STUDENT_PAGE_SIZE + 1)
    ).all()
    return StudentPage(
        placement,
        assignment,
        app_name,
        connection_name,
        [(user, grade, delivery) for user, grade, delivery in rows[:STUDENT_PAGE_SIZE]],
        len(rows) > STUDENT_PAGE_SIZE,
    )
