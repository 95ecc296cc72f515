"""Accepting grades from apps and reporting their delivery status."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.models import (
    Assignment,
    Delivery,
    DeliveryStatus,
    Grade,
    GradeRevision,
    LmsConnection,
    Placement,
    TokenKind,
    utcnow,
)
from gateway.services.auth import Principal
from gateway.services.directory import get_user
from gateway.services.errors import Conflict, Forbidden, InvalidInput, NotFound
from gateway.services.routing import route_revision

# A grade stamped in the future would make every later grade "older" (409) until that time comes.
MAX_FUTURE_SKEW = timedelta(minutes=5)

# Most advanced last: a grade's overall status is the least advanced status among its current deliveries.
STATUS_ORDER = [
    DeliveryStatus.FAILED,
    DeliveryStatus.UNROUTABLE,
    DeliveryStatus.RETRYING,
    DeliveryStatus.AWAITING_LAUNCH,
    DeliveryStatus.PENDING,
    DeliveryStatus.DELIVERING,
    DeliveryStatus.DELIVERED,
]


@dataclass(frozen=True)
class Normalized:
    fraction: float
    score_given: float
    score_maximum: float


def normalize(data: Mapping[str, Any], assignment: Assignment) -> Normalized:
    """A percentage becomes a score pair on the assignment's maximum; a score pair is kept as given."""
    if "percentage" in data:
        fraction = float(data["percentage"])
        maximum = float(assignment.score_maximum)
        return Normalized(fraction, fraction * maximum, maximum)
    given, maximum = float(data["scoreGiven"]), float(data["scoreMaximum"])
    return Normalized(given / maximum, given, maximum)


@dataclass
class AcceptedGrade:
    grade: Grade
    # False when an identical grade was already stored: nothing changed, no delivery was added.
    changed: bool
    deliveries: list[Delivery] = field(default_factory=list)


def _to_naive_utc(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None)


def find_assignment(session: Session, app_id: str, external_id: str) -> Assignment | None:
    return session.scalar(select(Assignment).where(Assignment.app_id == app_id, Assignment.external_id == external_id))


def accept_grade(
    session: Session, principal: Principal, data: Mapping[str, Any], *, now: datetime | None = None
) -> AcceptedGrade:
    """Validate a grade against the caller and the catalog, store it and its outbox rows in this transaction.

    `data` is a GradeRequestSchema load. Raises InvalidInput, Forbidden, NotFound or Conflict (older timestamp);
    the caller commits.
    """
    principal.require_scope("grades:write")
    now = now or utcnow()
    user_id = data.get("userID")
    if principal.kind == TokenKind.DISTRICT_APP:
        if user_id is None:
            raise InvalidInput(
                "userID is required with a district-app token",
                fields={"userID": ["Required with a district-app token."]},
            )
    else:
        if user_id is not None and user_id != principal.user_id:
            raise Forbidden(
                "userID does not match the signed-in user of this token",
                fields={"userID": ["Must match the token's user, or be left out."]},
                code="user_mismatch",
            )
        user_id = principal.user_id
    assert user_id is not None
    if get_user(session, principal.district_id, user_id) is None:
        raise NotFound(
            f"no user {user_id!r} in this district",
            fields={"userID": ["No such user in this district."]},
            code="user_not_found",
        )
    assignment = find_assignment(session, principal.app_id, data["assignmentID"])
    if assignment is None:
        raise NotFound(
            f"no assignment {data['assignmentID']!r} in this app's catalog",
            fields={"assignmentID": ["No such assignment in this app's catalog."]},
            code="assignment_not_found",
        )
    timestamp = _to_naive_utc(data["timestamp"]) if data.get("timestamp") else now
    if timestamp > now + MAX_FUTURE_SKEW:
        raise InvalidInput(
            "timestamp is in the future",
            fields={"timestamp": ["Must not be more than 5 minutes in the future."]},
        )
    values = _grade_values(data, normalize(data, assignment), timestamp)

    grade = _locked_grade(session, principal, assignment.id, user_id)
    if grade is None:
        try:
            with session.begin_nested():
                grade = Grade(
                    district_id=principal.district_id,
                    app_id=principal.app_id,
                    assignment_id=assignment.id,
                    user_id=user_id,
                    revision=1,
                    created_at=now,
                    updated_at=now,
                    **values,
                )
                session.add(grade)
                session.flush()
        except IntegrityError:
            # Another request created the same grade between our read and insert: continue as an update.
            grade = _locked_grade(session, principal, assignment.id, user_id)
            assert grade is not None
        else:
            revision = _add_revision(session, grade, principal, now)
            return AcceptedGrade(grade, True, route_revision(session, grade, revision))

    if all(getattr(grade, k) == v for k, v in values.items() if k != "timestamp"):
        return AcceptedGrade(grade, False)
    if timestamp <= grade.timestamp:
        raise Conflict(
            "a grade with a later or equal timestamp is already stored",
            fields={
                "timestamp": [f"Must be later than the stored grade's timestamp ({grade.timestamp.isoformat()}Z)."]
            },
            code="stale_grade",
        )
    for key, value in values.items():
        setattr(grade, key, value)
    grade.revision += 1
    grade.updated_at = now
    revision = _add_revision(session, grade, principal, now)
    return AcceptedGrade(grade, True, route_revision(session, grade, revision))


def _grade_values(data: Mapping[str, Any], normalized: Normalized, timestamp: datetime) -> dict[str, Any]:
    return {
        "input_form": "percentage" if "percentage" in data else "score",
        "percentage": data.get("percentage"),
        "fraction": normalized.fraction,
        "score_given": normalized.score_given,
        "score_maximum": normalized.score_maximum,
        "comment": data.get("comment"),
        "context": data.get("context"),
        "activity_progress": data.get("activityProgress", "Completed"),
        "grading_progress": data.get("gradingProgress", "FullyGraded"),
        "timestamp": timestamp,
    }


def _locked_grade(session: Session, principal: Principal, assignment_id: str, user_id: str) -> Grade | None:
    return session.scalar(
        select(Grade)
        .where(
            Grade.district_id == principal.district_id,
            Grade.app_id == principal.app_id,
            Grade.assignment_id == assignment_id,
            Grade.user_id == user_id,
        )
        .with_for_update(of=Grade)
    )


def _add_revision(session: Session, grade: Grade, principal: Principal, now: datetime) -> GradeRevision:
    revision = GradeRevision(
        district_id=grade.district_id,
        grade_id=grade.id,
        revision=grade.revision,
        input_form=grade.input_form,
        percentage=grade.percentage,
        fraction=grade.fraction,
        score_given=grade.score_given,
        score_maximum=grade.score_maximum,
        comment=grade.comment,
        context=grade.context,
        activity_progress=grade.activity_progress,
        grading_progress=grade.grading_progress,
        timestamp=grade.timestamp,
        token_id=principal.token_id,
        received_at=now,
    )
    session.add(revision)
    session.flush()
    return revision


# --- reading -------------------------------------------------------------------------------------------


def get_grade(session: Session, principal: Principal, grade_id: str) -> Grade:
    """A grade of the caller's district and app; a user token sees only its own user's grades."""
    principal.require_scope("grades:read")
    query = select(Grade).where(
        Grade.id == grade_id, Grade.district_id == principal.district_id, Grade.app_id == principal.app_id
    )
    if principal.kind == TokenKind.USER:
        query = query.where(Grade.user_id == principal.user_id)
    grade = session.scalar(query)
    if grade is None:
        raise NotFound(f"no grade {grade_id!r}", code="grade_not_found")
    return grade


@dataclass(frozen=True)
class GradePage:
    grades: list[Grade]
    next_cursor: str | None


_GRADE_ID = re.compile(r"[0-9a-f]{24}")


def _encode_cursor(grade: Grade) -> str:
    raw = json.dumps([grade.created_at.isoformat(), grade.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, grade_id = json.loads(raw)
        if not isinstance(created, str) or not isinstance(grade_id, str) or not _GRADE_ID.fullmatch(grade_id):
            raise ValueError("not a cursor")
        return datetime.fromisoformat(created).replace(tzinfo=None), grade_id
    except (ValueError, TypeError, binascii.Error) as exc:
        raise InvalidInput("cursor is not valid", fields={"cursor": ["Not a cursor this API gave out."]}) from exc


def list_grades(session: Session, principal: Principal, query: Mapping[str, Any]) -> GradePage:
    """Grades of the caller's district and app, oldest first, filtered, paged by an opaque cursor."""
    principal.require_scope("grades:read")
    stmt = select(Grade).where(Grade.district_id == principal.district_id, Grade.app_id == principal.app_id)
    if principal.kind == TokenKind.USER:
        stmt = stmt.where(Grade.user_id == principal.user_id)
    if "assignmentID" in query:
        stmt = stmt.join(Assignment, Assignment.id == Grade.assignment_id).where(
            Assignment.external_id == query["assignmentID"]
        )
    if "userID" in query:
        stmt = stmt.where(Grade.user_id == query["userID"])
    if "status" in query:
        current = (
            select(Delivery.grade_id)
            .join(GradeRevision, GradeRevision.id == Delivery.revision_id)
            .where(
                Delivery.district_id == principal.district_id,
                Delivery.status == query["status"],
                GradeRevision.revision == Grade.revision,
                Delivery.grade_id == Grade.id,
            )
        )
        stmt = stmt.where(current.exists())
    if "cursor" in query:
        created, grade_id = _decode_cursor(query["cursor"])
        stmt = stmt.where(tuple_(Grade.created_at, Grade.id) > tuple_(created, grade_id))
    limit = int(query.get("limit", 50))
    rows = list(session.scalars(stmt.order_by(Grade.created_at, Grade.id).limit(limit + 1)))
    next_cursor = _encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return GradePage(rows[:limit], next_cursor)


def grade_views(session: Session, grades: Sequence[Grade]) -> list[dict[str, Any]]:
    """Grades with their current revision's deliveries, shaped for GradeResponseSchema (one query each)."""
    if not grades:
        return []
    rows = session.execute(
        select(Delivery, GradeRevision.grade_id, GradeRevision.revision, Placement, LmsConnection)
        .join(GradeRevision, GradeRevision.id == Delivery.revision_id)
        .outerjoin(Placement, Placement.id == Delivery.placement_id)
        .outerjoin(LmsConnection, LmsConnection.id == Delivery.lms_connection_id)
        .where(Delivery.grade_id.in_([g.id for g in grades]))
        .order_by(Delivery.created_at, Delivery.id)
    ).all()
    current_revision = {g.id: g.revision for g in grades}
    by_grade: dict[str, list[dict[str, Any]]] = {g.id: [] for g in grades}
    for delivery, grade_id, revision, placement, connection in rows:
        if revision != current_revision[grade_id]:
            continue
        by_grade[grade_id].append(
            {
                "id": delivery.id,
                "status": delivery.status,
                "lms_connection_name": connection.name if connection else None,
                "adapter": connection.adapter if connection else None,
                "placement": placement,
                "attempts": delivery.attempts,
                "next_attempt_at": delivery.next_attempt_at
                if delivery.status in (DeliveryStatus.PENDING, DeliveryStatus.RETRYING)
                else None,
                "last_error": delivery.last_error,
                "lms_status": delivery.lms_status,
                "lms_response": delivery.lms_response,
                "delivered_at": delivery.delivered_at,
                "updated_at": delivery.updated_at,
            }
        )
    views = []
    for grade in grades:
        deliveries = [d for d in by_grade[grade.id] if d["status"] != DeliveryStatus.SUPERSEDED]
        statuses = {d["status"] for d in deliveries}
        overall = next((s.value for s in STATUS_ORDER if s in statuses), "pending")
        views.append(
            {
                "id": grade.id,
                "assignment_external_id": grade.assignment.external_id,
                "user_id": grade.user_id,
                "percentage": grade.percentage,
                "input_score_given": grade.score_given if grade.input_form == "score" else None,
                "input_score_maximum": grade.score_maximum if grade.input_form == "score" else None,
                "normalized": grade,
                "comment": grade.comment,
                "context": grade.context,
                "timestamp": grade.timestamp,
                "activity_progress": grade.activity_progress,
                "grading_progress": grade.grading_progress,
                "revision": grade.revision,
                "created_at": grade.created_at,
                "updated_at": grade.updated_at,
                "status": overall,
                "deliveries": deliveries,
            }
        )
    return views
