"""Which LMS destinations a grade goes to, and the outbox rows that carry it there."""

from __future__ import annotations

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from gateway.models import (
    SUPERSEDABLE,
    Delivery,
    DeliveryStatus,
    Enrollment,
    Grade,
    GradeRevision,
    Placement,
    utcnow,
)


def destinations_for(session: Session, grade: Grade) -> list[Placement]:
    """Placements of the grade's assignment in courses where the user is enrolled, in this district."""
    return list(
        session.scalars(
            select(Placement)
            .where(
                Placement.district_id == grade.district_id,
                Placement.assignment_id == grade.assignment_id,
                exists().where(
                    Enrollment.lms_connection_id == Placement.lms_connection_id,
                    Enrollment.course_id == Placement.course_id,
                    Enrollment.user_id == grade.user_id,
                ),
            )
            .order_by(Placement.created_at, Placement.id)
        )
    )


def _unroutable_reason(session: Session, grade: Grade) -> str:
    placed = session.scalar(
        select(Placement.id).where(
            Placement.district_id == grade.district_id, Placement.assignment_id == grade.assignment_id
        )
    )
    if placed is None:
        return "the assignment is not placed in any LMS course of this district yet"
    return "the student is not enrolled in any LMS course where this assignment is placed"


def route_revision(session: Session, grade: Grade, revision: GradeRevision) -> list[Delivery]:
    """Write the outbox rows for a new revision, superseding undelivered rows of older revisions."""
    now = utcnow()
    older = session.scalars(
        select(Delivery).where(
            Delivery.grade_id == grade.id,
            Delivery.revision_id != revision.id,
            Delivery.status.in_(SUPERSEDABLE),
        )
    ).all()
    for delivery in older:
        delivery.status = DeliveryStatus.SUPERSEDED
        delivery.superseded_by = revision.id
        delivery.next_attempt_at = None
        delivery.updated_at = now
    placements = destinations_for(session, grade)
    created: list[Delivery] = []
    if not placements:
        created.append(
            Delivery(
                district_id=grade.district_id,
                grade_id=grade.id,
                revision_id=revision.id,
                status=DeliveryStatus.UNROUTABLE,
                next_attempt_at=None,
                last_error=_unroutable_reason(session, grade),
                created_at=now,
                updated_at=now,
            )
        )
    for placement in placements:
        created.append(_pending_delivery(grade, revision.id, placement, now))
    session.add_all(created)
    return created


def _pending_delivery(grade: Grade, revision_id: str, placement: Placement, now: object) -> Delivery:
    return Delivery(
        district_id=grade.district_id,
        grade_id=grade.id,
        revision_id=revision_id,
        placement_id=placement.id,
        lms_connection_id=placement.lms_connection_id,
        status=DeliveryStatus.PENDING,
        next_attempt_at=now,
        created_at=now,
        updated_at=now,
    )


def route_waiting_grades(
    session: Session, district_id: str, *, assignment_id: str | None = None, user_id: str | None = None
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
    now = utcnow()
    created = 0
    for grade in session.scalars(query):
        revision_id = session.scalar(
            select(GradeRevision.id).where(GradeRevision.grade_id == grade.id, GradeRevision.revision == grade.revision)
        )
        if revision_id is None:
            continue
        current = session.scalars(select(Delivery).where(Delivery.revision_id == revision_id)).all()
        reached = {d.placement_id for d in current if d.placement_id is not None}
        new = [p for p in destinations_for(session, grade) if p.id not in reached]
        if not new:
            continue
        for delivery in current:
            if delivery.status == DeliveryStatus.UNROUTABLE:
                delivery.status = DeliveryStatus.SUPERSEDED
                delivery.updated_at = now
        session.add_all(_pending_delivery(grade, revision_id, p, now) for p in new)
        created += len(new)
    return created
