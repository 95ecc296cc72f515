"""The dashboard's overview (deliveries of the last day and week, the oldest waiting grade, the problems by
cause) and its audit log."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from gateway.models import (
    App,
    Assignment,
    AuditEntry,
    Delivery,
    DeliveryStatus,
    Grade,
    LmsConnection,
    Placement,
    utcnow,
)
from gateway.services.dashboard_counts import add_count, zero_counts
from gateway.services.dashboard_problems import Problem, problems
from gateway.services.local_time import district_zone, local_midnight_utc, to_local
from gateway.services.webhooks import failing_count

UNDELIVERED = (
    DeliveryStatus.PENDING,
    DeliveryStatus.DELIVERING,
    DeliveryStatus.RETRYING,
    DeliveryStatus.AWAITING_LAUNCH,
    DeliveryStatus.FAILED,
    DeliveryStatus.UNROUTABLE,
)


@dataclass
class Overview:
    day: dict[str, int]
    week: dict[str, int]
    # (id, name, counts by status), by name: each row links to its connection or app.
    by_connection: list[tuple[str, str, dict[str, int]]]
    by_app: list[tuple[str, str, dict[str, int]]]
    oldest_undelivered: timedelta | None
    # (day, delivered, failed or retrying, not sent: unroutable or awaiting a launch)
    daily: list[tuple[str, int, int, int]] = field(default_factory=list)
    # Apps' webhook endpoints given up on after a day of failures (staff may disable them).
    failing_webhooks: int = 0
    # The district's day the 7 days began on: the rows' links open the delivery list from that day.
    week_since: date | None = None
    # Deliveries not in a gradebook, grouped by cause and connection (all time, not only the week).
    problems: list[Problem] = field(default_factory=list)


def overview(session: Session, district_id: str, *, now: datetime | None = None) -> Overview:
    """Score deliveries of the last 24 hours and 7 days by status; all deliveries of the 7 days by connection,
    by app and per day; and how long the oldest undelivered grade has waited. One grouped scan of the week's
    deliveries (index on district and creation time) and one indexed minimum."""
    now = now or utcnow()
    week_ago = now - timedelta(days=7)
    day_ago = now - timedelta(days=1)
    # The district's calendar days, in its own time zone (stored times are UTC).
    zone = district_zone(session, district_id)
    day_starts = [local_midnight_utc(now, zone, back) for back in range(7)]
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
    day, week = zero_counts(), zero_counts()
    per_connection: dict[str, dict[str, int]] = {}
    per_app: dict[str, dict[str, int]] = {}
    per_day = [[0, 0, 0] for _ in range(7)]
    # The app of a delivery comes from its placement (the district's placements, read once); only deliveries
    # without one (unroutable) are joined to their grades for it, below.
    placement_apps = _placement_apps(session, district_id)
    for placement_id, connection_id, status, operation, index, in_last_day, count in rows:
        if operation == "replace":
            add_count(week, status, count)
            if in_last_day:
                add_count(day, status, count)
        if connection_id is not None:
            add_count(per_connection.setdefault(connection_id, zero_counts()), status, count)
        if placement_id is not None and placement_id in placement_apps:
            add_count(per_app.setdefault(placement_apps[placement_id], zero_counts()), status, count)
        if index >= 0 and status == DeliveryStatus.DELIVERED:
            per_day[index][0] += int(count)
        elif index >= 0 and status in (DeliveryStatus.FAILED, DeliveryStatus.RETRYING):
            per_day[index][1] += int(count)
        elif index >= 0 and status in (DeliveryStatus.UNROUTABLE, DeliveryStatus.AWAITING_LAUNCH):
            per_day[index][2] += int(count)
    for app_id, status, count in session.execute(
        select(Grade.app_id, Delivery.status, func.count())
        .join(Grade, Grade.id == Delivery.grade_id)
        .where(*in_week, Delivery.placement_id.is_(None))
        .group_by(Grade.app_id, Delivery.status)
    ):
        add_count(per_app.setdefault(app_id, zero_counts()), status, count)
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
        by_connection=sorted(((k, connection_names[k], v) for k, v in per_connection.items()), key=_by_name),
        by_app=sorted(((k, app_names[k], v) for k, v in per_app.items()), key=_by_name),
        oldest_undelivered=(now - oldest) if oldest else None,
        daily=[
            (to_local(start, zone).strftime("%a %d"), good, bad, stuck)
            for start, (good, bad, stuck) in zip(reversed(day_starts), per_day, strict=True)
        ],
        failing_webhooks=failing_count(session, district_id),
        problems=problems(session, district_id),
    )


def _by_name(row: tuple[str, str, dict[str, int]]) -> tuple[str, str]:
    return row[1], row[0]


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


def audit_log(session: Session, district_id: str, *, limit: int = 200) -> list[AuditEntry]:
    return list(
        session.scalars(
            select(AuditEntry)
            .where(AuditEntry.district_id == district_id)
            .order_by(AuditEntry.created_at.desc())
            .limit(limit)
        )
    )
