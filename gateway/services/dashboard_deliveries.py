"""The dashboard's delivery list (keyset pages), one delivery's detail, and the list as CSV.

Every list is paginated on an index, so the thousandth page costs what the first does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from gateway.models import (
    App,
    Assignment,
    Delivery,
    DeliveryStatus,
    Grade,
    GradeRevision,
    LmsConnection,
    Placement,
    User,
)
from gateway.services.delivery_fixes import FIXABLE, DeliveryFix, fix_for
from gateway.services.errors import NotFound

PAGE_SIZE = 50
CSV_CHUNK = 1000
CSV_MAX_ROWS = 1_000_000


@dataclass(frozen=True)
class ListFilter:
    """What the delivery list shows: one status (None: all but superseded), one cause (adapters/causes.py) and
    one LMS connection (None: any)."""

    status: str | None = None
    cause: str | None = None
    connection_id: str | None = None


def _filtered(query: Any, which: ListFilter) -> Any:
    # A cause narrows on the (district, error_cause, lms_connection_id, status) index; the rows it finds (the
    # district's problems of that kind) are then sorted, a bounded set.
    if which.cause:
        query = query.where(Delivery.error_cause == which.cause)
    if which.connection_id:
        query = query.where(Delivery.lms_connection_id == which.connection_id)
    if which.status:
        return query.where(Delivery.status == which.status)
    return query.where(Delivery.status != DeliveryStatus.SUPERSEDED)


def _delivery_rows(district_id: str, which: ListFilter) -> Any:
    query = (
        select(Delivery, Grade, User, Assignment, LmsConnection.name, Placement.course_id)
        .join(Grade, Grade.id == Delivery.grade_id)
        .join(User, User.id == Grade.user_id)
        .join(Assignment, Assignment.id == Grade.assignment_id)
        .outerjoin(LmsConnection, LmsConnection.id == Delivery.lms_connection_id)
        .outerjoin(Placement, Placement.id == Delivery.placement_id)
        .where(Delivery.district_id == district_id)
    )
    return _filtered(query, which)


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
    cause: str | None = None,
    connection_id: str | None = None,
) -> DeliveryPage:
    """One page of deliveries, newest first, with the grade, student, assignment and the LMS's own error: the
    newest, or those just older than `before`, or just newer than `after`. Keyset paging on the (district,
    status, updated_at) or (district, updated_at) index, so the thousandth page costs what the first does."""
    query = _delivery_rows(district_id, ListFilter(status, cause, connection_id))
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
    cause: str | None = None,
    connection_id: str | None = None,
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
            Delivery.error_cause,
        )
        .join(Grade, Grade.id == Delivery.grade_id)
        .join(User, User.id == Grade.user_id)
        .join(Assignment, Assignment.id == Grade.assignment_id)
        .outerjoin(LmsConnection, LmsConnection.id == Delivery.lms_connection_id)
        .outerjoin(Placement, Placement.id == Delivery.placement_id)
        .where(Delivery.district_id == district_id)
    )
    query = _filtered(query, ListFilter(status, cause, connection_id))
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
        chunk, after = csv_chunk(session, district_id, status=status, after=after)
        rows.extend(chunk)
        if after is None:
            break
    return rows[: CSV_MAX_ROWS + 1]
