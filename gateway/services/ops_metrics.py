"""What /metrics reads from the database at scrape time: the outbox's unfinished and failed deliveries, grouped by
district, connection and status, with the age of the oldest in each group. One grouped query over the statuses'
index range (delivered and superseded rows, the bulk of the table, are never read)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select

from gateway.db import Database
from gateway.metrics import OutboxRow
from gateway.models import Delivery
from schemas.statuses import DeliveryStatus

# Counted by status and connection; `WAITING` are those whose oldest age is reported (due or in flight: a grade
# awaiting a launch or a route waits for a person, not for delivery).
COUNTED = (
    DeliveryStatus.PENDING,
    DeliveryStatus.DELIVERING,
    DeliveryStatus.RETRYING,
    DeliveryStatus.AWAITING_LAUNCH,
    DeliveryStatus.UNROUTABLE,
    DeliveryStatus.FAILED,
)
WAITING = (DeliveryStatus.PENDING, DeliveryStatus.DELIVERING, DeliveryStatus.RETRYING)


def outbox_rows(database: Database, *, now: datetime) -> list[OutboxRow]:
    with database.transaction() as session:
        rows = session.execute(
            select(
                Delivery.district_id,
                Delivery.lms_connection_id,
                Delivery.status,
                func.count(),
                func.min(Delivery.created_at),
            )
            .where(Delivery.status.in_([str(s) for s in COUNTED]))
            .group_by(Delivery.district_id, Delivery.lms_connection_id, Delivery.status)
        ).all()
    return [
        OutboxRow(
            district_id=district_id,
            connection_id=connection_id,
            status=str(status),
            count=int(count),
            oldest_age=max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0,
        )
        for district_id, connection_id, status, count, oldest in rows
    ]
