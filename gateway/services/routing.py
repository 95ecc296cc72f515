"""Which LMS destinations a grade goes to, and the outbox rows that carry it there."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any, Protocol, cast

from sqlalchemy import Table, and_, bindparam, delete, exists, or_, select, update
from sqlalchemy.orm import Session, aliased

from adapters import REGISTRY, causes
from gateway.models import (
    SUPERSEDABLE,
    Delivery,
    DeliveryStatus,
    Enrollment,
    Grade,
    GradeRevision,
    LaunchDestination,
    LmsConnection,
    LmsIdentity,
    Placement,
    new_id,
    utcnow,
)
from gateway.services.webhook_events import GRADE_DELETED, REPLACED_BY_NEWER, emit
from schemas.webhooks import WebhookEvent


class GradeKey(Protocol):
    """What routing reads of a grade: a stored Grade or the intake path's GradeRecord."""

    @property
    def id(self) -> str: ...

    @property
    def district_id(self) -> str: ...

    @property
    def assignment_id(self) -> str: ...

    @property
    def user_id(self) -> str: ...


@dataclass(frozen=True)
class Route:
    """One destination of a grade: a placement and its connection, as the status views show it."""

    placement_id: str
    lms_connection_id: str
    course_id: str
    section_id: str | None
    connection_name: str
    adapter: str
    # Whether this LMS already has a name for the student (an LTI `sub`); adapters that address students by
    # it wait for a launch or a roster sync otherwise.
    has_identity: bool = True
    # Whether this student launched this link (LTI 1.1 learns the student's sourcedid only then).
    has_launch_data: bool = True

    @property
    def waits_for_launch(self) -> bool:
        return waiting_for(self.adapter, self.has_identity, self.has_launch_data) is not None


WAITS_FOR_IDENTITY = "lms_identity"
WAITS_FOR_LAUNCH = "launch"


def waiting_for(adapter_name: str, has_identity: bool, has_launch_data: bool) -> str | None:
    """What a grade sent through this adapter to a student waits for: WAITS_FOR_IDENTITY (the LMS's id for the
    student, which their launch or a roster sync supplies), WAITS_FOR_LAUNCH (the student's own launch of the
    link), or None: it can be sent now. `has_identity` and `has_launch_data` are ROUTE_FLAGS' answers."""
    adapter = REGISTRY.get(adapter_name)
    if adapter is None:
        return None
    if adapter.needs_lms_identity and not has_identity:
        return WAITS_FOR_IDENTITY
    if adapter.needs_launch_data and not has_launch_data:
        return WAITS_FOR_LAUNCH
    return None


def route_flags(user_id: Any) -> tuple[Any, Any]:
    """Whether the placement's LMS has a name for the user, and whether the user launched the placement's link:
    `user_id` is a bind parameter, or a column when many users' routes are read at once."""
    return (
        exists()
        .where(LmsIdentity.user_id == user_id, LmsIdentity.lms_connection_id == Placement.lms_connection_id)
        .label("has_identity"),
        exists()
        .where(LaunchDestination.user_id == user_id, LaunchDestination.placement_id == Placement.id)
        .label("has_launch_data"),
    )


ROUTE_COLUMNS = (
    Placement.id,
    Placement.lms_connection_id,
    Placement.course_id,
    Placement.section_id,
    LmsConnection.name,
    LmsConnection.adapter,
    *route_flags(bindparam("user_id")),
)
LAUNCHED_ANOTHER_LINK = "not sent: the student opened another link of this assignment, and their grade goes there"
AWAITING_LAUNCH_REASON = (
    "waiting for the student to open the link once in the LMS (or a roster sync), so that the LMS's id for "
    "them is known"
)


def enrolled(user_id: Any) -> Any:
    """The condition that the user is enrolled in the placement's course on the placement's LMS."""
    return exists().where(
        Enrollment.lms_connection_id == Placement.lms_connection_id,
        Enrollment.course_id == Placement.course_id,
        Enrollment.user_id == user_id,
    )


_SIBLING = aliased(Placement)


def launched_sibling(user_id: Any) -> Any:
    """The condition that the user launched some link of the placement's assignment in its course."""
    return exists().where(
        LaunchDestination.user_id == user_id,
        LaunchDestination.placement_id == _SIBLING.id,
        _SIBLING.lms_connection_id == Placement.lms_connection_id,
        _SIBLING.course_id == Placement.course_id,
        _SIBLING.assignment_id == Placement.assignment_id,
    )


_OTHER_LAUNCH = aliased(LaunchDestination)


def launched_here(user_id: Any) -> Any:
    """The condition that the user launched the placement's link. A launch row whose link is unknown (recorded
    before each link was its own placement) counts only until the user launches another link of the assignment
    in the course: then that launch says where their grades go."""
    return exists().where(
        LaunchDestination.user_id == user_id,
        LaunchDestination.placement_id == Placement.id,
        or_(
            LaunchDestination.link_unknown.is_(False),
            ~exists()
            .where(
                _OTHER_LAUNCH.user_id == user_id,
                _OTHER_LAUNCH.placement_id == _SIBLING.id,
                _SIBLING.id != Placement.id,
                _SIBLING.lms_connection_id == Placement.lms_connection_id,
                _SIBLING.course_id == Placement.course_id,
                _SIBLING.assignment_id == Placement.assignment_id,
            )
            # Two levels down: the outer query's placement, not a new one.
            .correlate(Placement),
        ),
    )


def receives(user_id: Any) -> Any:
    """The condition that the placement is one of the user's destinations. Each link of an assignment in a
    course is its own placement: a student's grade goes to the links of it they launched; a student who
    launched none of them (enrolled by a roster or by hand) gets it at every one, and an LMS's refusal at one
    link (a student not in that section) is that link's delivery alone."""
    return and_(enrolled(user_id), or_(launched_here(user_id), ~launched_sibling(user_id)))


_DESTINATIONS = (
    select(*ROUTE_COLUMNS)
    .join(LmsConnection, LmsConnection.id == Placement.lms_connection_id)
    .where(
        Placement.district_id == bindparam("district_id"),
        Placement.assignment_id == bindparam("assignment_id"),
        receives(bindparam("user_id")),
    )
    .order_by(Placement.created_at, Placement.id)
)
_SUPERSEDE = (
    update(Delivery)
    .where(Delivery.grade_id == bindparam("of_grade_id"), Delivery.status.in_(SUPERSEDABLE))
    .values(
        status=DeliveryStatus.SUPERSEDED,
        error_cause=causes.SUPERSEDED,
        superseded_by=bindparam("new_revision_id"),
        next_attempt_at=None,
        updated_at=bindparam("superseded_at"),
    )
    .returning(Delivery.id)
    .execution_options(synchronize_session=False)
)


def destinations_for(session: Session, grade: GradeKey) -> list[Route]:
    """Placements of the grade's assignment in courses where the user is enrolled, in this district."""
    params = {"district_id": grade.district_id, "assignment_id": grade.assignment_id, "user_id": grade.user_id}
    # The pending grade and revision need not be flushed for this read: one flush at commit writes everything.
    with session.no_autoflush:
        rows = session.execute(_DESTINATIONS, params).all()
    return [Route(*row) for row in rows]


def _unroutable_reason(session: Session, grade: GradeKey) -> str:
    placed = session.scalar(
        select(Placement.id).where(
            Placement.district_id == grade.district_id, Placement.assignment_id == grade.assignment_id
        )
    )
    if placed is None:
        return "the assignment is not placed in any LMS course of this district yet"
    return "the student is not enrolled in any LMS course where this assignment is placed"


def route_revision(
    session: Session,
    grade: GradeKey,
    revision_id: str,
    *,
    first_revision: bool = False,
    routes: list[Route] | None = None,
    now: datetime | None = None,
    listening: bool = True,
) -> list[tuple[Any, Route | None]]:
    """Write the outbox rows for a new revision, superseding undelivered rows of older revisions, and the
    webhook events of what it superseded or could not route.

    `routes` may be given when the caller already read them in this transaction; `now` is the unit of work's
    clock (the caller's); `listening=False` says the caller knows no webhook endpoint listens (no event is looked
    for). Returns each new delivery with its route (None for the `unroutable` placeholder).
    """
    now = now or utcnow()
    if not first_revision:
        superseded = session.execute(
            _SUPERSEDE, {"of_grade_id": grade.id, "new_revision_id": revision_id, "superseded_at": now}
        ).scalars()
        if listening:
            emit(session, WebhookEvent.SUPERSEDED, list(superseded), now=now, reason=REPLACED_BY_NEWER)
    if routes is None:
        routes = destinations_for(session, grade)
    if routes:
        rows = [_delivery_row(grade, revision_id, route, now) for route in routes]
        created: list[tuple[Any, Route | None]] = list(zip(rows, routes, strict=True))
    else:
        placeholder = _delivery_row(grade, revision_id, None, now)
        placeholder.update(
            status=DeliveryStatus.UNROUTABLE,
            last_error=_unroutable_reason(session, grade),
            error_cause=causes.UNROUTABLE,
        )
        rows, created = [placeholder], [(placeholder, None)]
    session.execute(_INSERT_DELIVERY, rows)
    if listening:
        _emit_waiting(session, rows, now)
    return [(SimpleNamespace(**row), route) for row, route in created]


def _emit_waiting(session: Session, rows: list[dict[str, Any]], now: datetime) -> None:
    """The events of new deliveries that cannot go out yet (a grade that goes out as usual costs nothing here)."""
    for status, event in (
        (DeliveryStatus.AWAITING_LAUNCH, WebhookEvent.AWAITING_LAUNCH),
        (DeliveryStatus.UNROUTABLE, WebhookEvent.UNROUTABLE),
    ):
        emit(session, event, [row["id"] for row in rows if row["status"] == status], now=now)


_DELIVERY_COLUMNS = [c.name for c in Delivery.__table__.columns]
_INSERT_DELIVERY = cast(Table, Delivery.__table__).insert()


def _delivery_row(grade: GradeKey, revision_id: str, route: Route | None, now: datetime) -> dict[str, Any]:
    """Every column of a new delivery row (executemany wants the same keys in each)."""
    row: dict[str, Any] = dict.fromkeys(_DELIVERY_COLUMNS)
    row.update(
        id=new_id(),
        district_id=grade.district_id,
        grade_id=grade.id,
        revision_id=revision_id,
        placement_id=route.placement_id if route else None,
        lms_connection_id=route.lms_connection_id if route else None,
        operation="replace",
        status=DeliveryStatus.PENDING,
        attempts=0,
        next_attempt_at=now if route else None,
        created_at=now,
        updated_at=now,
    )
    if route is not None and route.waits_for_launch:
        row.update(
            status=DeliveryStatus.AWAITING_LAUNCH,
            next_attempt_at=None,
            last_error=AWAITING_LAUNCH_REASON,
            error_cause=causes.AWAITING_LAUNCH,
        )
    return row


def route_waiting_grades(
    session: Session,
    district_id: str,
    *,
    assignment_id: str | None = None,
    user_id: str | None = None,
    now: datetime | None = None,
) -> int:
    """After a placement or enrollment appears: send current grades to destinations they have not reached.

    Returns the number of deliveries created. An `unroutable` placeholder is superseded once a real
    destination exists.
    """
    query = select(Grade).where(Grade.district_id == district_id)
    if assignment_id is not None:
        query = query.where(Grade.assignment_id == assignment_id)
    if user_id is not None:
        query = query.where(Grade.user_id == user_id)
    now = now or utcnow()
    created = 0
    for grade in session.scalars(query):
        revision_id = session.scalar(
            select(GradeRevision.id).where(GradeRevision.grade_id == grade.id, GradeRevision.revision == grade.revision)
        )
        if revision_id is None:
            continue
        current = session.scalars(select(Delivery).where(Delivery.revision_id == revision_id)).all()
        # A row retired because the student launched another link does not count: launching this one later
        # (a retake) makes it a destination again.
        reached = {d.placement_id for d in current if d.placement_id and d.last_error != LAUNCHED_ANOTHER_LINK}
        new = [r for r in destinations_for(session, grade) if r.placement_id not in reached]
        if not new:
            continue
        for delivery in current:
            if delivery.status == DeliveryStatus.UNROUTABLE:
                delivery.status = DeliveryStatus.SUPERSEDED
                delivery.updated_at = now
        rows = [_delivery_row(grade, revision_id, r, now) for r in new]
        session.execute(_INSERT_DELIVERY, rows)
        _emit_waiting(session, rows, now)
        created += len(new)
    return created


def release_awaiting_launch(
    session: Session,
    user_id: str,
    lms_connection_id: str,
    *,
    placement_id: str | None = None,
    now: datetime | None = None,
) -> int:
    """The LMS's id for this student (or, with `placement_id`, their launch of that link) is now known:
    send what waited for it."""
    now = now or utcnow()
    conditions = [
        Delivery.lms_connection_id == lms_connection_id,
        Delivery.status == DeliveryStatus.AWAITING_LAUNCH,
        Delivery.grade_id.in_(select(Grade.id).where(Grade.user_id == user_id)),
    ]
    if placement_id is not None:
        conditions.append(Delivery.placement_id == placement_id)
    # Release only what can now be sent: a delivery that also needs this student's launch of its link (LTI
    # 1.1's sourcedid) keeps waiting for it, instead of failing at once.
    needs_launch = [name for name, a in REGISTRY.items() if a.needs_launch_data]
    needs_identity = [name for name, a in REGISTRY.items() if a.needs_lms_identity]
    conditions += [
        or_(
            Delivery.lms_connection_id.not_in(select(LmsConnection.id).where(LmsConnection.adapter.in_(needs_launch))),
            exists().where(
                LaunchDestination.placement_id == Delivery.placement_id, LaunchDestination.user_id == user_id
            ),
        ),
        or_(
            Delivery.lms_connection_id.not_in(
                select(LmsConnection.id).where(LmsConnection.adapter.in_(needs_identity))
            ),
            exists().where(LmsIdentity.user_id == user_id, LmsIdentity.lms_connection_id == lms_connection_id),
        ),
    ]
    result = session.execute(
        update(Delivery)
        .where(*conditions)
        .values(status=DeliveryStatus.PENDING, next_attempt_at=now, last_error=None, error_cause=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def retire_unlaunched_links(session: Session, user_id: str, launched: Placement, *, now: datetime | None = None) -> int:
    """The student launched this link: their launches of unknown link at sibling placements are forgotten, and
    what has not started going to sibling links they never launched (waiting for a launch, pending or retrying;
    not one a worker holds) will not go there (grades go to the links a student launched). Returns the
    number of deliveries retired."""
    same_assignment = (
        Placement.lms_connection_id == launched.lms_connection_id,
        Placement.course_id == launched.course_id,
        Placement.assignment_id == launched.assignment_id,
        Placement.id != launched.id,
    )
    session.execute(
        delete(LaunchDestination)
        .where(
            LaunchDestination.user_id == user_id,
            LaunchDestination.link_unknown.is_(True),
            LaunchDestination.placement_id.in_(select(Placement.id).where(*same_assignment)),
        )
        .execution_options(synchronize_session=False)
    )
    siblings = select(Placement.id).where(
        *same_assignment,
        ~exists().where(LaunchDestination.placement_id == Placement.id, LaunchDestination.user_id == user_id),
    )
    now = now or utcnow()
    retired = session.execute(
        update(Delivery)
        .where(
            Delivery.placement_id.in_(siblings),
            Delivery.grade_id.in_(select(Grade.id).where(Grade.user_id == user_id)),
            # A worker's claim makes a row `delivering`, which finishes on its own; sent ones stay as sent.
            Delivery.status.in_((DeliveryStatus.AWAITING_LAUNCH, DeliveryStatus.PENDING, DeliveryStatus.RETRYING)),
        )
        .values(
            status=DeliveryStatus.SUPERSEDED,
            last_error=LAUNCHED_ANOTHER_LINK,
            error_cause=causes.SUPERSEDED,
            next_attempt_at=None,
            updated_at=now,
        )
        .returning(Delivery.id)
        .execution_options(synchronize_session=False)
    ).scalars()
    ids = list(retired)
    emit(session, WebhookEvent.SUPERSEDED, ids, now=now)
    return len(ids)


def schedule_deletions(session: Session, grade: Grade, now: datetime) -> int:
    """Supersede the grade's undelivered sends and queue a delete to each placement that got (or was sending)
    it, where the adapter can delete. Returns the number of deletes queued."""
    revision_id = session.scalar(
        select(GradeRevision.id).where(GradeRevision.grade_id == grade.id, GradeRevision.revision == grade.revision)
    )
    superseded = session.execute(
        _SUPERSEDE, {"of_grade_id": grade.id, "new_revision_id": revision_id, "superseded_at": now}
    ).scalars()
    emit(session, WebhookEvent.SUPERSEDED, list(superseded), now=now, reason=GRADE_DELETED)
    reached = session.execute(
        select(Placement.id, Placement.lms_connection_id, LmsConnection.adapter)
        .join(Delivery, Delivery.placement_id == Placement.id)
        .join(LmsConnection, LmsConnection.id == Placement.lms_connection_id)
        .where(
            Delivery.grade_id == grade.id,
            Delivery.operation == "replace",
            Delivery.status.in_((DeliveryStatus.DELIVERED, DeliveryStatus.DELIVERING)),
        )
        .distinct()
    ).all()
    rows = []
    for placement_id, connection_id, adapter in reached:
        adapter_cls = REGISTRY.get(adapter)
        if adapter_cls is None or not adapter_cls.supports_delete:
            continue
        row = _delivery_row(grade, str(revision_id), None, now)
        row.update(
            operation="delete",
            placement_id=placement_id,
            lms_connection_id=connection_id,
            status=DeliveryStatus.PENDING,
            next_attempt_at=now,
        )
        rows.append(row)
    if rows:
        session.execute(_INSERT_DELIVERY, rows)
    return len(rows)
