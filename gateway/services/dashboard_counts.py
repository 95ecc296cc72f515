"""Delivery counts by status, as every dashboard page shows them. Always one district.

Every count is one grouped query over an indexed range, so a page costs about the same on a district with
100,000 grades as on one with 1,000 (`python -m bench.dashboard_load`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gateway.models import Assignment, Delivery, Grade, Placement
from schemas.statuses import DeliveryStatus

SHOWN_STATUSES: tuple[DeliveryStatus, ...] = (
    DeliveryStatus.DELIVERED,
    DeliveryStatus.PENDING,
    DeliveryStatus.DELIVERING,
    DeliveryStatus.RETRYING,
    DeliveryStatus.AWAITING_LAUNCH,
    DeliveryStatus.FAILED,
    DeliveryStatus.UNROUTABLE,
    DeliveryStatus.RESOLVED,
)


def zero_counts() -> dict[str, int]:
    return dict.fromkeys(SHOWN_STATUSES, 0)


def add_count(counts: dict[str, int], status: str, count: int) -> None:
    if status in counts:
        counts[status] += int(count)


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


def sum_by(rows: Iterable[Tally], key: Callable[[Tally], str | None]) -> dict[str, dict[str, int]]:
    result: dict[str, dict[str, int]] = {}
    for row in rows:
        value = key(row)
        if value is not None:
            add_count(result.setdefault(value, zero_counts()), row.status, row.count)
    return result
