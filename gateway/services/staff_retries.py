"""Staff sending failed deliveries again after a fix, with a fresh count of attempts."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from gateway.models import Delivery, DeliveryStatus, Grade, GradeRevision, utcnow
from gateway.services.errors import Conflict, NotFound
from gateway.services.outbox import newer_revision_id


def retry_delivery(session: Session, district_id: str, delivery_id: str, *, now: datetime | None = None) -> Delivery:
    """Send a failed delivery again now, with a fresh count of attempts (staff action after a fix)."""
    now = now or utcnow()
    delivery = session.scalar(
        select(Delivery).where(Delivery.id == delivery_id, Delivery.district_id == district_id).with_for_update()
    )
    if delivery is None:
        raise NotFound(f"no delivery {delivery_id!r}")
    if delivery.status not in (DeliveryStatus.FAILED, DeliveryStatus.RETRYING, DeliveryStatus.RESOLVED):
        raise Conflict(f"only failed, retrying or resolved deliveries can be retried; this one is {delivery.status}")
    if newer_revision_id(session, delivery) is not None:
        raise Conflict("a newer grade replaced this one; its own delivery carries the current score")
    delivery.status = DeliveryStatus.PENDING
    delivery.attempts = 0
    delivery.next_attempt_at = now
    delivery.updated_at = now
    return delivery


def retry_failed(
    session: Session,
    district_id: str,
    *,
    lms_connection_id: str | None = None,
    assignment_id: str | None = None,
    now: datetime | None = None,
) -> int:
    """After a fix: send every failed delivery of a connection or an assignment again, with fresh attempts.
    Deliveries that a newer grade replaced are left alone (the newer one carries the score)."""
    now = now or utcnow()
    current = (
        select(GradeRevision.id)
        .join(Grade, (Grade.id == GradeRevision.grade_id) & (Grade.revision == GradeRevision.revision))
        .where(Grade.district_id == district_id)
    )
    conditions = [
        Delivery.district_id == district_id,
        Delivery.status == DeliveryStatus.FAILED,
        Delivery.revision_id.in_(current),
    ]
    if lms_connection_id is not None:
        conditions.append(Delivery.lms_connection_id == lms_connection_id)
    if assignment_id is not None:
        conditions.append(Delivery.grade_id.in_(select(Grade.id).where(Grade.assignment_id == assignment_id)))
    result = session.execute(
        update(Delivery)
        .where(*conditions)
        .values(status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def resolve_delivery(session: Session, district_id: str, delivery_id: str, *, now: datetime | None = None) -> Delivery:
    """Mark a failed delivery as handled outside Passback: it is kept, with the LMS's words, and is no longer
    counted as failed (a retry takes it up again)."""
    now = now or utcnow()
    delivery = session.scalar(
        select(Delivery).where(Delivery.id == delivery_id, Delivery.district_id == district_id).with_for_update()
    )
    if delivery is None:
        raise NotFound(f"no delivery {delivery_id!r}")
    if delivery.status != DeliveryStatus.FAILED:
        raise Conflict(f"only failed deliveries can be marked resolved; this one is {delivery.status}")
    delivery.status = DeliveryStatus.RESOLVED
    delivery.next_attempt_at = None
    delivery.updated_at = now
    return delivery
