"""What the staff dashboard shows: delivery counts, failing deliveries, the audit log. Always one district."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
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
    User,
    utcnow,
)

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


@dataclass
class Overview:
    day: dict[str, int]
    week: dict[str, int]
    by_connection: list[tuple[str, dict[str, int]]]
    by_app: list[tuple[str, dict[str, int]]]
    oldest_undelivered: timedelta | None
    daily: list[tuple[str, int, int]] = field(default_factory=list)


def _counts(session: Session, district_id: str, since: datetime) -> dict[str, int]:
    rows = session.execute(
        select(Delivery.status, func.count())
        .where(Delivery.district_id == district_id, Delivery.created_at >= since, Delivery.operation == "replace")
        .group_by(Delivery.status)
    ).all()
    found = dict(rows)
    return {status: int(found.get(status, 0)) for status in SHOWN_STATUSES}


def overview(session: Session, district_id: str, *, now: datetime | None = None) -> Overview:
    """Deliveries of the last 24 hours and 7 days by status, by connection and by app (7 days), per day, and
    how long the oldest undelivered grade has waited. Every count is an indexed, grouped query."""
    now = now or utcnow()
    week_ago = now - timedelta(days=7)
    by_connection: dict[str, dict[str, int]] = {}
    for name, status, count in session.execute(
        select(LmsConnection.name, Delivery.status, func.count())
        .join(LmsConnection, LmsConnection.id == Delivery.lms_connection_id)
        .where(Delivery.district_id == district_id, Delivery.created_at >= week_ago)
        .group_by(LmsConnection.name, Delivery.status)
    ):
        by_connection.setdefault(name, dict.fromkeys(SHOWN_STATUSES, 0))[status] = int(count)
    by_app: dict[str, dict[str, int]] = {}
    for name, status, count in session.execute(
        select(App.name, Delivery.status, func.count())
        .join(Grade, Grade.id == Delivery.grade_id)
        .join(App, App.id == Grade.app_id)
        .where(Delivery.district_id == district_id, Delivery.created_at >= week_ago)
        .group_by(App.name, Delivery.status)
    ):
        by_app.setdefault(name, dict.fromkeys(SHOWN_STATUSES, 0))[status] = int(count)
    oldest = session.scalar(
        select(func.min(Delivery.created_at)).where(
            Delivery.district_id == district_id, Delivery.status.in_(UNDELIVERED)
        )
    )
    daily = []
    for days_back in range(6, -1, -1):
        start = (now - timedelta(days=days_back)).replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=1)
        counts = dict(
            session.execute(
                select(Delivery.status, func.count())
                .where(Delivery.district_id == district_id, Delivery.created_at >= start, Delivery.created_at < end)
                .group_by(Delivery.status)
            ).all()
        )
        daily.append(
            (
                start.strftime("%a %d"),
                int(counts.get("delivered", 0)),
                sum(int(v) for k, v in counts.items() if k in ("failed", "retrying")),
            )
        )
    return Overview(
        day=_counts(session, district_id, now - timedelta(days=1)),
        week=_counts(session, district_id, week_ago),
        by_connection=sorted(by_connection.items()),
        by_app=sorted(by_app.items()),
        oldest_undelivered=(now - oldest) if oldest else None,
        daily=daily,
    )


def deliveries(
    session: Session, district_id: str, *, status: str | None = None, page: int = 1
) -> tuple[list[dict[str, Any]], bool]:
    """One page of deliveries, newest first, with the grade, student, assignment and the LMS's own error."""
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
    rows = session.execute(
        query.order_by(Delivery.updated_at.desc(), Delivery.id).offset((page - 1) * PAGE_SIZE).limit(PAGE_SIZE + 1)
    ).all()
    items = [
        {
            "delivery": delivery,
            "grade": grade,
            "student": user.name or user.id,
            "assignment": assignment.name,
            "assignment_id": assignment.external_id,
            "connection": connection or "—",
            "course": course or "—",
        }
        for delivery, grade, user, assignment, connection, course in rows[:PAGE_SIZE]
    ]
    return items, len(rows) > PAGE_SIZE


def audit_log(session: Session, district_id: str, *, limit: int = 200) -> list[AuditEntry]:
    return list(
        session.scalars(
            select(AuditEntry)
            .where(AuditEntry.district_id == district_id)
            .order_by(AuditEntry.created_at.desc())
            .limit(limit)
        )
    )
