"""`gateway retry`: send failed deliveries again after a fix, or retrying ones now, chosen by delivery, grade,
assignment, connection or the whole district. The rule is the dashboard's (staff_retries.retry_delivery: a fresh
count of attempts, a delivery a newer grade replaced is left alone), the audit actions are the dashboard's, and
each batch wakes delivery for its connections once committed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.models import Assignment, Delivery, DeliveryStatus, Grade, GradeRevision
from gateway.services.admin_audit import Operator, find_app, find_connection, find_district, record
from gateway.services.errors import Conflict, InvalidInput, NotFound, ServiceError
from gateway.services.outbox import newer_revision_id
from gateway.services.staff_retries import retry_delivery
from gateway.services.unit_of_work import UnitOfWork

BATCH = 200
MAX_LISTED = 1000
STATUSES = {
    "failed": (DeliveryStatus.FAILED,),
    "retrying": (DeliveryStatus.RETRYING,),
    "any": (DeliveryStatus.FAILED, DeliveryStatus.RETRYING),
}

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class RetrySelection:
    """Which deliveries: one delivery, or the district's narrowed by grade, assignment (of `app` when two apps share
    the id) and connection together; `status` is failed (default), retrying ("retry now") or any."""

    delivery: str | None = None
    grade: str | None = None
    assignment: str | None = None
    app: str | None = None
    lms: str | None = None
    status: str | None = None

    def describe(self) -> str:
        parts = [
            f"{name} {value}"
            for name, value in (
                ("delivery", self.delivery),
                ("grade", self.grade),
                ("assignment", self.assignment),
                ("lms", self.lms),
            )
            if value
        ]
        return ", ".join(parts) or "the whole district"


def _plan(session: Session, district_id: str, selection: RetrySelection) -> list[str]:
    """The ids of the deliveries the selection names that retry_delivery would accept, oldest first."""
    if selection.app and not selection.assignment:
        raise InvalidInput("--app narrows --assignment: give both", fields={"assignment": ["Required with app."]})
    status = selection.status or ("any" if selection.delivery else "failed")
    if status not in STATUSES:
        raise InvalidInput(f"status must be one of {sorted(STATUSES)}", fields={"status": ["Unknown status."]})
    if selection.delivery and (selection.grade or selection.assignment or selection.lms):
        raise InvalidInput(
            "--delivery names one delivery: leave out --grade, --assignment and --lms",
            fields={"delivery": ["Not with grade, assignment or lms."]},
        )
    if selection.delivery:
        delivery = session.scalar(
            select(Delivery).where(Delivery.id == selection.delivery, Delivery.district_id == district_id)
        )
        if delivery is None:
            raise NotFound(
                f"no delivery {selection.delivery!r} in this district", fields={"delivery": ["No such delivery."]}
            )
        if delivery.status not in STATUSES[status]:
            raise Conflict(
                f"only {' or '.join(STATUSES[status])} deliveries can be retried; this one is {delivery.status}",
                fields={"delivery": [f"Is {delivery.status}."]},
            )
        if newer_revision_id(session, delivery) is not None:
            raise Conflict(
                "a newer grade replaced this one; its own delivery carries the current score",
                fields={"delivery": ["Replaced by a newer grade."]},
            )
        return [delivery.id]
    current = (
        select(GradeRevision.id)
        .join(Grade, (Grade.id == GradeRevision.grade_id) & (Grade.revision == GradeRevision.revision))
        .where(Grade.district_id == district_id)
    )
    query = select(Delivery.id).where(
        Delivery.district_id == district_id,
        Delivery.status.in_(STATUSES[status]),
        Delivery.revision_id.in_(current),
    )
    if selection.grade:
        if (
            session.scalar(select(Grade.id).where(Grade.id == selection.grade, Grade.district_id == district_id))
            is None
        ):
            raise NotFound(f"no grade {selection.grade!r} in this district", fields={"grade": ["No such grade."]})
        query = query.where(Delivery.grade_id == selection.grade)
    if selection.assignment:
        assignments = select(Assignment.id).where(Assignment.external_id == selection.assignment)
        if selection.app:
            assignments = assignments.where(Assignment.app_id == find_app(session, selection.app).id)
        if not list(session.scalars(assignments.limit(1))):
            raise NotFound(f"no assignment {selection.assignment!r}", fields={"assignment": ["No such assignment."]})
        graded = select(Grade.id).where(Grade.district_id == district_id, Grade.assignment_id.in_(assignments))
        query = query.where(Delivery.grade_id.in_(graded))
    if selection.lms:
        query = query.where(Delivery.lms_connection_id == find_connection(session, district_id, selection.lms).id)
    return list(session.scalars(query.order_by(Delivery.created_at, Delivery.id)))


def retry_deliveries(
    make_uow: Callable[[], UnitOfWork],
    operator: Operator,
    district_ref: str,
    selection: RetrySelection,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Retry what `selection` names, in batches of one unit of work each (audited, delivery woken after each
    commit); with `dry_run`, only say which deliveries would be retried. A delivery that changed since it was
    chosen (delivered meanwhile, replaced by a newer grade) is skipped and reported with the reason."""
    with make_uow() as uow:
        district = find_district(uow.session, district_ref)
        district_id = district.id
        ids = _plan(uow.session, district_id, selection)
        uow.commit()
    answer: dict[str, Any] = {
        "dry_run": dry_run,
        "district": district_id,
        "selection": selection.describe(),
        "selected": len(ids),
        "deliveries": ids[:MAX_LISTED],
        "truncated": len(ids) > MAX_LISTED,
        "retried": 0,
        "skipped": [],
    }
    if dry_run or not ids:
        return answer
    action = (
        "retried delivery"
        if selection.delivery
        else ("retried failed deliveries" if (selection.status or "failed") == "failed" else "retried deliveries")
    )
    for start in range(0, len(ids), BATCH):
        batch = ids[start : start + BATCH]
        retried, skipped = _retry_batch(make_uow(), operator, district_id, batch, action, selection)
        answer["retried"] += retried
        answer["skipped"].extend(skipped)
        if progress is not None:
            progress(start + len(batch), len(ids))
    return answer


def _retry_batch(
    uow: UnitOfWork,
    operator: Operator,
    district_id: str,
    ids: Sequence[str],
    action: str,
    selection: RetrySelection,
) -> tuple[int, list[dict[str, str]]]:
    with uow:
        connections: set[str | None] = set()
        skipped: list[dict[str, str]] = []
        for delivery_id in ids:
            try:
                delivery = retry_delivery(uow.session, district_id, delivery_id)
            except ServiceError as exc:  # changed since it was chosen: raised before anything was written
                skipped.append({"id": delivery_id, "reason": exc.message})
                continue
            connections.add(delivery.lms_connection_id)
        retried = len(ids) - len(skipped)
        if retried:
            target = ids[0] if selection.delivery else selection.describe()
            details: dict[str, Any] = {} if selection.delivery else {"count": retried}
            record(uow.session, district_id, operator, action, target, **details)
            uow.nudge(connections)
        uow.commit()
        return retried, skipped
