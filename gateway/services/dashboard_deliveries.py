"""The dashboard's delivery list (keyset pages), one delivery's detail, and the list as CSV.

Every list is paginated on an index, so the thousandth page costs what the first does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import date, datetime, timedelta
from typing import Any

from marshmallow import ValidationError
from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from adapters import causes
from gateway.models import (
    App,
    Assignment,
    Delivery,
    DeliveryStatus,
    DistrictApp,
    Grade,
    GradeRevision,
    LmsConnection,
    Placement,
    User,
)
from gateway.services.delivery_fixes import FIXABLE, DeliveryFix, fix_for
from gateway.services.errors import InvalidInput, NotFound
from gateway.services.local_time import day_start_utc, district_zone
from schemas.dashboard import DeliveryFilterSchema

_filter_schema = DeliveryFilterSchema()
_FILTER_FIELDS = tuple(_filter_schema.fields)
PAGE_SIZE = 50
CSV_CHUNK = 1000
CSV_MAX_ROWS = 1_000_000


# A filtered list counts its rows up to this many ("more than 10,000"): the count stays a bounded scan.
COUNT_LIMIT = 10_000


@dataclass(frozen=True)
class DeliveryFilter:
    """What a delivery list is narrowed to (None: not narrowed), from the page's query string."""

    status: str | None = None
    connection: str | None = None
    app: str | None = None
    assignment: str | None = None
    course: str | None = None
    student: str | None = None
    since: date | None = None
    until: date | None = None
    # A cause of the catalogue (adapters/causes.py), as the overview's Problems rows link to.
    cause: str | None = None

    def query_args(self, *leaving_out: str) -> dict[str, str]:
        """The filter as query-string values (links, hidden inputs of the bulk form), but `leaving_out`."""
        return {
            f.name: str(getattr(self, f.name))
            for f in fields(self)
            if getattr(self, f.name) is not None and f.name not in leaving_out
        }

    @property
    def narrowed(self) -> bool:
        """Narrowed by more than its status."""
        return any(getattr(self, f.name) is not None for f in fields(self) if f.name != "status")


def parse_filter(args: Mapping[str, str]) -> DeliveryFilter:
    """A list's filter from its query string (empty fields ignored); InvalidInput naming a bad field."""
    given = {k: v.strip() for k, v in args.items() if k in _FILTER_FIELDS and v.strip()}
    try:
        loaded = _filter_schema.load(given)
    except ValidationError as exc:
        raise InvalidInput("the filter was not understood", fields=exc.normalized_messages()) from exc
    if loaded.get("cause") is not None and loaded["cause"] not in causes.CATALOGUE:
        raise InvalidInput("the filter was not understood", fields={"cause": ["Not a cause of the catalogue."]})
    return DeliveryFilter(**{k: loaded.get(k) for k in _FILTER_FIELDS})


def _like(text: str) -> str:
    """`text` anywhere, with LIKE's own wildcards taken literally."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _delivery_rows(
    district_id: str, status: str | None, narrowed: DeliveryFilter | None = None, zone: str = "UTC"
) -> Any:
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
        query = query.where(Delivery.status == status)
    else:
        query = query.where(Delivery.status != DeliveryStatus.SUPERSEDED)
    if narrowed is None:
        return query
    f = narrowed
    if f.cause:
        # On the (district, error_cause, lms_connection_id, status) index: the district's problems of that kind.
        query = query.where(Delivery.error_cause == f.cause)
    if f.connection:
        query = query.where(Delivery.lms_connection_id == f.connection)
    if f.app:
        query = query.where(Grade.app_id == f.app)
    if f.assignment:
        query = query.where(or_(Assignment.external_id == f.assignment, Assignment.id == f.assignment))
    if f.course:
        query = query.where(Placement.course_id == f.course)
    if f.student:
        pattern = _like(f.student.lower())
        query = query.where(
            or_(
                func.lower(User.name).like(pattern, escape="\\"),
                func.lower(User.email).like(pattern, escape="\\"),
                User.sis_id == f.student,
            )
        )
    if f.since:
        query = query.where(Delivery.updated_at >= day_start_utc(f.since, zone))
    if f.until:
        query = query.where(Delivery.updated_at < day_start_utc(f.until + timedelta(days=1), zone))
    return query


def count_deliveries(session: Session, district_id: str, narrowed: DeliveryFilter, zone: str) -> int:
    """How many deliveries the filter matches, counted up to COUNT_LIMIT + 1."""
    ids = _delivery_rows(district_id, narrowed.status, narrowed, zone).with_only_columns(Delivery.id)
    return int(session.scalar(select(func.count()).select_from(ids.limit(COUNT_LIMIT + 1).subquery())) or 0)


def matching_ids(
    session: Session, district_id: str, narrowed: DeliveryFilter, zone: str, statuses: Sequence[str], limit: int
) -> list[str]:
    """The ids of up to `limit` matching deliveries in one of `statuses`, oldest change first."""
    query = _delivery_rows(district_id, None, narrowed, zone).where(Delivery.status.in_(statuses))
    if narrowed.status:
        query = query.where(Delivery.status == narrowed.status)
    rows = session.scalars(
        query.with_only_columns(Delivery.id).order_by(Delivery.updated_at.asc(), Delivery.id.asc()).limit(limit)
    )
    return list(rows)


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
    narrowed: DeliveryFilter | None = None,
    zone: str = "UTC",
) -> DeliveryPage:
    """One page of deliveries, newest first, with the grade, student, assignment and the LMS's own error: the
    newest, or those just older than `before`, or just newer than `after`. Keyset paging on the (district,
    status, updated_at) or (district, updated_at) index, so the thousandth page costs what the first does."""
    query = _delivery_rows(district_id, status, narrowed, zone)
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


def filtered_page(
    session: Session,
    district_id: str,
    narrowed: DeliveryFilter,
    *,
    before: Cursor | None = None,
    after: Cursor | None = None,
) -> tuple[DeliveryPage, int]:
    """A page of the filtered list (times in the district's zone) and how many deliveries match in all."""
    zone = district_zone(session, district_id)
    page = deliveries(
        session, district_id, status=narrowed.status, before=before, after=after, narrowed=narrowed, zone=zone
    )
    return page, count_deliveries(session, district_id, narrowed, zone)


def filter_choices(session: Session, district_id: str) -> dict[str, list[tuple[str, str]]]:
    """The district's connections and apps, (id, name) by name, for the filter's menus."""
    connections = session.execute(
        select(LmsConnection.id, LmsConnection.name)
        .where(LmsConnection.district_id == district_id)
        .order_by(LmsConnection.name)
    ).all()
    apps = session.execute(
        select(App.id, App.name)
        .join(DistrictApp, DistrictApp.app_id == App.id)
        .where(DistrictApp.district_id == district_id)
        .distinct()
        .order_by(App.name)
    ).all()
    return {"connections": [(r[0], r[1]) for r in connections], "apps": [(r[0], r[1]) for r in apps]}


def _cursor_of(item: dict[str, Any]) -> Cursor:
    return item["delivery"].updated_at, item["delivery"].id


def csv_chunk(
    session: Session,
    district_id: str,
    narrowed: DeliveryFilter | None = None,
    *,
    after: Cursor | None = None,
    limit: int = CSV_CHUNK,
) -> tuple[list[list[str]], Cursor | None]:
    """Up to `limit` CSV rows (CSV_COLUMNS) of the filtered delivery list, in its order (newest first), after the
    cursor `after`, and the cursor of the next chunk (None after the last). Keyset paging on the list's index, so
    the last chunk of a district costs what the first does; plain columns, no ORM objects."""
    narrowed = narrowed or DeliveryFilter()
    zone = district_zone(session, district_id)
    query = _delivery_rows(district_id, narrowed.status, narrowed, zone).with_only_columns(
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
        Delivery.error_cause,
    )
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
            row[16] or "",
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
    # For a delivery that waits (unroutable, awaiting a launch): what explains it and what fixes it.
    fix: DeliveryFix | None = None


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
        fix=fix_for(session, district_id, delivery.id) if delivery.status in FIXABLE else None,
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
    # The catalogued cause's code (adapters/causes.py), then the LMS's own words.
    "cause",
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
        chunk, after = csv_chunk(session, district_id, DeliveryFilter(status=status), after=after)
        rows.extend(chunk)
        if after is None:
            break
    return rows[: CSV_MAX_ROWS + 1]
