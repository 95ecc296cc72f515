"""The grade intake operations the API offers, each one unit of work: store, commit, then wake delivery for the
connections whose outbox rows were written."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError

from gateway.services import idempotency
from gateway.services.auth import Principal
from gateway.services.catalog import require_catalog_writer
from gateway.services.errors import ServiceError
from gateway.services.grades import (
    BulkOutcome,
    accept_grade,
    accept_grades,
    accepted_view,
    delete_grade,
    grade_views,
)
from gateway.services.lms import PlacementsResult, place_assignments
from gateway.services.unit_of_work import UnitOfWork
from schemas.grades import GradeResponseSchema

# What POST /v1/grade answers, dumped here because an Idempotency-Key stores the answer with the grade.
_grade_response = GradeResponseSchema()


@dataclass(frozen=True)
class IdempotentRequest:
    key: str
    fingerprint: str
    ttl_seconds: float


@dataclass(frozen=True)
class GradeReply:
    payload: dict[str, Any]
    status: int
    location: str | None
    replayed: bool = False


def post_grade(
    uow: UnitOfWork,
    principal: Principal,
    data: Mapping[str, Any],
    location_for: Callable[[str], str],
    idempotent: IdempotentRequest | None = None,
) -> GradeReply:
    """Accept one grade (or replay the stored answer to a repeated Idempotency-Key) and commit."""
    with uow:
        if idempotent is not None:
            replay = _replay(uow, principal, idempotent)
            if replay is not None:
                uow.commit()
                return replay
        accepted = accept_grade(uow.session, principal, data)
        payload = _grade_response.dump(accepted_view(uow.session, accepted))
        location = location_for(accepted.grade.id)
        if idempotent is not None:
            idempotency.remember(uow.session, principal, idempotent.key, idempotent.fingerprint, 202, payload, location)
        uow.nudge_if(len(accepted.deliveries), {delivery.lms_connection_id for delivery, _ in accepted.deliveries})
        try:
            uow.commit()
        except IntegrityError:
            # A concurrent request with the same Idempotency-Key won the race: answer with what it stored.
            uow.rollback()
            replay = _replay(uow, principal, idempotent) if idempotent is not None else None
            if replay is None:
                raise
            return replay
        return GradeReply(payload, 202, location)


def _replay(uow: UnitOfWork, principal: Principal, idempotent: IdempotentRequest) -> GradeReply | None:
    found = idempotency.find_replay(
        uow.session, principal, idempotent.key, idempotent.fingerprint, ttl_seconds=idempotent.ttl_seconds
    )
    return None if found is None else GradeReply(found.body, found.status, found.location, replayed=True)


def post_grades(
    uow: UnitOfWork, principal: Principal, entries: list[tuple[int, Mapping[str, Any] | ServiceError]]
) -> list[BulkOutcome]:
    """Accept many grades, each on its own (see accept_grades), in one commit."""
    with uow:
        outcomes = accept_grades(uow.session, principal, entries)
        connections = {d.lms_connection_id for o in outcomes if o.accepted for d, _ in o.accepted.deliveries}
        uow.nudge_if(len(connections), connections)
        uow.commit()
        return outcomes


def delete_grade_everywhere(uow: UnitOfWork, principal: Principal, grade_id: str) -> tuple[str, dict[str, Any]]:
    """Clear a grade in every LMS that supports deletion; returns its id and its view."""
    with uow:
        grade = delete_grade(uow.session, principal, grade_id)
        view = grade_views(uow.session, [grade])[0]
        uow.nudge()
        uow.commit()
        return grade.id, view


def place_for_app(uow: UnitOfWork, principal: Principal, placements: list[Mapping[str, Any]]) -> PlacementsResult:
    """An app places catalog assignments (all or none); grades that waited for those placements go out now."""
    # Placing is catalog work: the district-app token may, a student's sign-in token may not.
    require_catalog_writer(principal)
    with uow:
        result = place_assignments(uow.session, principal.district_id, principal.app_id, placements)
        uow.nudge({p.lms_connection_id for p in result.placements})
        uow.commit()
        return result
