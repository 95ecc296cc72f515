"""Webhook events, written into the webhook outbox in the transaction of the change they report (the outbox
pattern): a delivery marked delivered, failed, retrying, awaiting a launch, unroutable or superseded, and for
each enabled endpoint of the grade's app in its district that subscribed to that event, one message whose body
is fixed now. So an event is never lost once its change is committed, and never sent for one rolled back.

Every caller passes the ids of the deliveries it just changed; with no endpoint listening, the cost is one
indexed query per call (none on the intake path for a grade that goes out as usual)."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any, cast

from sqlalchemy import BindParameter, Table, bindparam, select
from sqlalchemy.orm import Session

from gateway.models import (
    Assignment,
    Delivery,
    Grade,
    GradeRevision,
    LmsConnection,
    Placement,
    WebhookEndpoint,
    WebhookMessage,
    WebhookSubscription,
    new_id,
)
from schemas.statuses import DeliveryStatus
from schemas.webhooks import WebhookEvent, WebhookEventSchema

# Reasons for what Passback decided itself (the LMS's own answers come from the delivery's last error).
REPLACED_BY_NEWER = "not sent: a newer revision of the grade replaced it before it reached the LMS"
GRADE_DELETED = "not sent: the grade was deleted before it reached the LMS"
# Where a session counts the messages it wrote (the worker wakes its webhook sender when there are some).
EMITTED_KEY = "passback.webhook_messages"

_event_body = WebhookEventSchema()
_MESSAGES = cast(Table, WebhookMessage.__table__)
_MESSAGE_COLUMNS = [c.name for c in _MESSAGES.columns if c.name != "seq"]
_DELIVERY_IDS: BindParameter[str] = bindparam("delivery_ids", expanding=True)
# The enabled endpoints that subscribed to the event in the districts of the changed deliveries: the cheap first
# question (with none, emit costs this one query). Driven by the deliveries' primary key, as is the next read:
# a join from the endpoints to the grades of their app would scan every grade of the app per endpoint whenever the
# planner's statistics are stale (a burst of new grades), seconds per call at 30,000 grades.
_LISTENING = (
    select(WebhookEndpoint.id, WebhookEndpoint.district_id, WebhookEndpoint.app_id)
    .join(
        WebhookSubscription,
        (WebhookSubscription.endpoint_id == WebhookEndpoint.id) & (WebhookSubscription.event == bindparam("event")),
    )
    .where(
        WebhookEndpoint.disabled.is_(False),
        WebhookEndpoint.district_id.in_(select(Delivery.district_id).where(Delivery.id.in_(_DELIVERY_IDS))),
    )
    .order_by(WebhookEndpoint.id)
)
# What each changed delivery's event body needs, read in the same transaction, by the deliveries' primary key.
_CHANGED = (
    select(
        Delivery.id.label("delivery_id"),
        Delivery.district_id,
        Delivery.grade_id,
        Delivery.operation,
        Delivery.status,
        Delivery.last_error,
        Delivery.lms_status,
        Delivery.placement_id,
        Delivery.lms_connection_id,
        GradeRevision.revision,
        GradeRevision.student_key,
        GradeRevision.fraction,
        Grade.user_id,
        Grade.app_id,
        Assignment.external_id.label("assignment_external_id"),
        LmsConnection.name.label("lms_connection_name"),
        Placement.course_id,
        Placement.section_id,
    )
    .select_from(Delivery)
    .join(GradeRevision, GradeRevision.id == Delivery.revision_id)
    .join(Grade, Grade.id == Delivery.grade_id)
    .join(Assignment, Assignment.id == Grade.assignment_id)
    .outerjoin(Placement, Placement.id == Delivery.placement_id)
    .outerjoin(LmsConnection, LmsConnection.id == Delivery.lms_connection_id)
    .where(Delivery.id.in_(_DELIVERY_IDS))
    # Messages are numbered in this order: a grade's events reach an endpoint in the order they were written.
    .order_by(Delivery.created_at, Delivery.id)
)


def emit(
    session: Session,
    event: WebhookEvent,
    delivery_ids: Collection[str],
    *,
    now: datetime,
    reason: str | None = None,
    lms_values: Mapping[str, float | None] | None = None,
) -> int:
    """Write `event` for each of these deliveries (as they stand now, in this transaction) to every endpoint
    that listens for it. `reason` replaces the delivery's last error as the event's reason (what Passback
    decided, e.g. a newer revision replaced it); `lms_values` (grade.lms_changed) is what each delivery's LMS
    was read to hold. Returns how many messages were written."""
    if not delivery_ids:
        return 0
    params = {"event": event.value, "delivery_ids": list(delivery_ids)}
    listening: dict[tuple[str, str], list[str]] = {}
    for endpoint_id, district_id, app_id in session.execute(_LISTENING, params):
        listening.setdefault((district_id, app_id), []).append(endpoint_id)
    if not listening:
        return 0
    messages = []
    for row in session.execute(_CHANGED, params):
        endpoints = listening.get((row.district_id, row.app_id), [])
        if endpoints:
            # One body per delivery, whatever the number of endpoints that hear it.
            body = _body(event, row, now, reason, lms_values)
            messages += [_message(event, endpoint_id, row, now, body) for endpoint_id in endpoints]
    if not messages:
        return 0
    session.execute(_MESSAGES.insert(), messages)
    session.info[EMITTED_KEY] = emitted(session) + len(messages)
    return len(messages)


def emitted(session: Session) -> int:
    """How many webhook messages this session has written (since it began)."""
    return int(session.info.get(EMITTED_KEY, 0))


def _body(
    event: WebhookEvent, row: Any, now: datetime, reason: str | None, lms_values: Mapping[str, float | None] | None
) -> str:
    data: dict[str, Any] = {
        "grade_id": row.grade_id,
        "revision": row.revision,
        "assignment_external_id": row.assignment_external_id,
        "user_id": row.user_id,
        # Revisions stored before keys were recorded were all posted by userID.
        "student_key": row.student_key or {"userID": row.user_id},
        "destination": {
            "delivery_id": row.delivery_id,
            "operation": row.operation,
            "lms_connection_id": row.lms_connection_id,
            "lms_connection_name": row.lms_connection_name,
            "placement_id": row.placement_id,
            "course_id": row.course_id,
            "section_id": row.section_id,
        },
        "status": row.status,
        "reason": None if row.status == DeliveryStatus.DELIVERED else (reason or row.last_error),
        "lms_status": row.lms_status,
    }
    if event is WebhookEvent.LMS_CHANGED and lms_values is not None:
        data["delivered_value"] = row.fraction
        data["lms_value"] = lms_values.get(row.delivery_id)
        data["reason"] = reason
    return json.dumps(
        _event_body.dump({"type": event.value, "timestamp": now, "data": data}),
        separators=(",", ":"),
        ensure_ascii=False,
    )


def _message(event: WebhookEvent, endpoint_id: str, row: Any, now: datetime, body: str) -> dict[str, Any]:
    message: dict[str, Any] = dict.fromkeys(_MESSAGE_COLUMNS)
    message.update(
        id=new_id(),
        district_id=row.district_id,
        endpoint_id=endpoint_id,
        event=event.value,
        grade_id=row.grade_id,
        delivery_id=row.delivery_id,
        body=body,
        status=DeliveryStatus.PENDING,
        attempts=0,
        next_attempt_at=now,
        created_at=now,
        updated_at=now,
    )
    return message
