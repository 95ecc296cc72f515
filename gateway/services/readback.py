"""Reading back what each LMS holds for a grade (LTI 1.1 readResult, the sandbox's score), for the API and staff;
a value other than the one delivered is reported to the app's webhooks as grade.lms_changed."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters.base import DeliveryError
from gateway.clock import Clock
from gateway.crypto import SecretBox
from gateway.db import Database
from gateway.models import Delivery, DeliveryStatus, Grade, GradeRevision, LmsConnection, WebhookMessage
from gateway.services.adapter_factory import AdapterFactory
from gateway.services.auth import Principal
from gateway.services.delivery_work import work_for
from gateway.services.grades import get_grade
from gateway.services.webhook_events import emit
from schemas.webhooks import WebhookEvent

# LMSs keep scores as points rounded to two decimals (Canvas, Moodle): within this of what was sent is the same.
SAME_VALUE = 0.001
LMS_CHANGED_REASON = "the LMS holds another value than the one Passback delivered (changed there, e.g. by a teacher)"


def read_back(
    db: Database, box: SecretBox, adapters: AdapterFactory, clock: Clock, principal: Principal, grade_id: str
) -> list[dict[str, Any]]:
    """For each delivered destination of the grade's current revision: the value the LMS holds now (a
    fraction; None for no grade), or why it cannot be read. The LMS calls happen outside any transaction; a
    value that differs from the delivered one is written as a grade.lms_changed event afterwards."""
    with db.transaction() as session:
        grade = get_grade(session, principal, grade_id)
        rows = session.execute(
            select(Delivery.id, LmsConnection.name, LmsConnection.adapter, GradeRevision.fraction)
            .join(GradeRevision, GradeRevision.id == Delivery.revision_id)
            .join(Grade, (Grade.id == GradeRevision.grade_id) & (Grade.revision == GradeRevision.revision))
            .join(LmsConnection, LmsConnection.id == Delivery.lms_connection_id)
            .where(
                Delivery.grade_id == grade.id,
                Delivery.operation == "replace",
                Delivery.status == DeliveryStatus.DELIVERED,
            )
            .order_by(Delivery.created_at)
        ).all()
        works = [
            (delivery_id, name, adapter, work_for(session, box, delivery_id)) for delivery_id, name, adapter, _ in rows
        ]
        delivered = {row.id: row.fraction for row in rows}
    answers = []
    changed: dict[str, float | None] = {}
    for delivery_id, name, adapter_kind, work in works:
        answer: dict[str, Any] = {"delivery_id": delivery_id, "lms_connection": name, "value": None, "error": None}
        adapter_cls = adapters.adapter_class(adapter_kind)
        if work is not None and work.settings_problem:
            answer["error"] = work.settings_problem
        elif work is None or adapter_cls is None or not adapter_cls.supports_read:
            answer["error"] = f"the {adapter_kind} adapter cannot read grades back"
        else:
            try:
                adapter = adapters.build(adapter_kind, work.settings, connection_id=work.lms_connection_id)
                answer["value"] = value = adapter.read_result(work.destination)
            except DeliveryError as exc:
                answer["error"] = exc.message
            else:
                if value is None or abs(value - delivered[delivery_id]) > SAME_VALUE:
                    changed[delivery_id] = value
        answers.append(answer)
    if changed:
        with db.transaction() as session:
            report_changes(session, changed, clock)
    return answers


def report_changes(session: Session, values: dict[str, float | None], clock: Clock) -> int:
    """Write grade.lms_changed for each delivery whose LMS was read to hold `values[id]`, unless that value
    was the last one reported for it (reading again is not a new change) or the delivery is no longer the
    delivered one. Returns how many messages were written."""
    still_delivered = set(
        session.scalars(select(Delivery.id).where(Delivery.id.in_(values), Delivery.status == DeliveryStatus.DELIVERED))
    )
    fresh = {
        delivery_id: value
        for delivery_id, value in values.items()
        if delivery_id in still_delivered and _last_reported(session, delivery_id) != (value,)
    }
    return emit(
        session, WebhookEvent.LMS_CHANGED, list(fresh), now=clock.now(), reason=LMS_CHANGED_REASON, lms_values=fresh
    )


def _last_reported(session: Session, delivery_id: str) -> tuple[float | None] | None:
    """The LMS value the newest grade.lms_changed message of this delivery reported, if any (a 1-tuple, so
    that a reported "no grade" differs from nothing reported)."""
    body = session.scalar(
        select(WebhookMessage.body)
        .where(WebhookMessage.delivery_id == delivery_id, WebhookMessage.event == WebhookEvent.LMS_CHANGED.value)
        .order_by(WebhookMessage.seq.desc())
        .limit(1)
    )
    if body is None:
        return None
    value = json.loads(body)["data"].get("lmsValue")
    return (None if value is None else float(value),)
