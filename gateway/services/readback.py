"""Reading back what each LMS holds for a grade (LTI 1.1 readResult, the sandbox's score), for the API and staff."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from adapters.base import DeliveryError
from gateway.crypto import SecretBox
from gateway.db import Database
from gateway.models import Delivery, DeliveryStatus, Grade, GradeRevision, LmsConnection
from gateway.services.adapter_factory import AdapterFactory
from gateway.services.auth import Principal
from gateway.services.delivery_work import work_for
from gateway.services.grades import get_grade


def read_back(
    db: Database, box: SecretBox, adapters: AdapterFactory, principal: Principal, grade_id: str
) -> list[dict[str, Any]]:
    """For each delivered destination of the grade's current revision: the value the LMS holds now (a
    fraction; None for no grade), or why it cannot be read. The LMS calls happen outside any transaction."""
    with db.transaction() as session:
        grade = get_grade(session, principal, grade_id)
        rows = session.execute(
            select(Delivery.id, LmsConnection.name, LmsConnection.adapter)
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
            (delivery_id, name, adapter, work_for(session, box, delivery_id)) for delivery_id, name, adapter in rows
        ]
    answers = []
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
                answer["value"] = adapter.read_result(work.destination)
            except DeliveryError as exc:
                answer["error"] = exc.message
        answers.append(answer)
    return answers
