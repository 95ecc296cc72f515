"""Accepting grades from apps and reporting their delivery status."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Row, Table, bindparam, exists, select, union
from sqlalchemy.dialects import postgresql, sqlite
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
    User,
    WebhookEndpoint,
    new_id,
    utcnow,
)
from gateway.services.auth import Principal
from gateway.services.directory import resolve_student, student_key_of, students_named
from gateway.services.errors import Conflict, InvalidInput, NotFound, ServiceError
from gateway.services.paging import after_cursor, page_of, updated_since
from gateway.services.routing import ROUTE_COLUMNS, Route, receives, route_revision, schedule_deletions
from schemas.statuses import PROGRESS_ORDER

# A grade stamped in the future would make every later grade "older" (409) until that time comes.
MAX_FUTURE_SKEW = timedelta(minutes=5)


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


@dataclass(frozen=True)
class GradeRecord:
    """A grade's columns as the intake path stored them, detached from any session: the one shape of a grade
    there, whether read under lock, inserted or updated (an ORM object would cost a flush and a refresh)."""

    id: str
    district_id: str
    app_id: str
    assignment_id: str
    user_id: str
    revision: int
    input_form: str
    percentage: float | None
    fraction: float
    score_given: float
    score_maximum: float
    comment: str | None
    context: dict[str, Any] | None
    activity_progress: str
    grading_progress: str
    preserve_score: bool
    timestamp: datetime
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None
    student_key: dict[str, str] | None = None

    @classmethod
    def from_row(cls, row: Row[Any]) -> GradeRecord:
        return cls(**row._mapping)


@dataclass
class AcceptedGrade:
    # The grade's columns as stored.
    grade: GradeRecord
    assignment_external_id: str
    # False when an identical grade was already stored: nothing changed, no delivery was added.
    changed: bool
    deliveries: list[tuple[Delivery, Route | None]] = field(default_factory=list)
    # The student key the app posted with (`{"sisID": "…"}`), echoed in the answer as `studentKey`.
    student_key: dict[str, str] = field(default_factory=dict)


def _to_naive_utc(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None)


def accept_grade(
    session: Session, principal: Principal, data: Mapping[str, Any], *, now: datetime | None = None
) -> AcceptedGrade:
    """Validate a grade against the caller and the catalog, store it and its outbox rows in this transaction.

    `data` is a GradeRequestSchema load. Raises InvalidInput, Forbidden, NotFound or Conflict (older timestamp);
    the caller commits. This is the hot path of the API: it reads with plain column queries and lets one flush
    at commit write the grade, its revision and its deliveries.
    """
    principal.require_scope("grades:write")
    now = now or utcnow()
    key = student_key_of(data)
    # A userID costs no query here (the lookup below checks it); sisID, email and lmsUserID one indexed query.
    user_id = resolve_student(session, principal, key)
    echo = key.echo() if key is not None else {"userID": user_id}
    external_id = data["assignmentID"]
    known_user, assignment_id, score_maximum, listening, routes = _lookup(session, principal, user_id, external_id)
    if known_user is None:
        raise NotFound(
            f"no user {user_id!r} in this district",
            fields={"userID": ["No such user in this district."]},
            code="user_not_found",
        )
    if assignment_id is None:
        raise NotFound(
            f"no assignment {external_id!r} in this app's catalog",
            fields={"assignmentID": ["No such assignment in this app's catalog."]},
            code="assignment_not_found",
        )
    given_timestamp = _to_naive_utc(data["timestamp"]) if data.get("timestamp") else None
    if given_timestamp is not None and given_timestamp > now + MAX_FUTURE_SKEW:
        raise InvalidInput(
            "timestamp is in the future",
            fields={"timestamp": ["Must not be more than 5 minutes in the future."]},
        )
    normalized = normalize(data, Assignment(score_maximum=score_maximum))

    grade = _locked_grade(session, principal, assignment_id, user_id)
    if grade is None:
        record = {
            "id": new_id(),
            "district_id": principal.district_id,
            "app_id": principal.app_id,
            "assignment_id": assignment_id,
            "user_id": user_id,
            "revision": 1,
            "created_at": now,
            "updated_at": now,
            "student_key": echo,
            **_grade_values(data, normalized, given_timestamp or now),
        }
        if _inserted(session, record):
            grade = GradeRecord(**record)
            revision_id = _add_revision(session, grade, principal, now)
            deliveries = route_revision(
                session, grade, revision_id, first_revision=True, routes=routes, now=now, listening=listening
            )
            return AcceptedGrade(grade, external_id, True, deliveries, echo)
        # Another request created the same grade between our read and insert: continue as an update.
        grade = _locked_grade(session, principal, assignment_id, user_id)
        assert grade is not None

    # The default timestamp is taken only now, under the row lock: two posts without one cannot conflict.
    values = _grade_values(data, normalized, given_timestamp or utcnow())
    if grade.deleted_at is None and all(getattr(grade, k) == v for k, v in values.items() if k != "timestamp"):
        return AcceptedGrade(grade, external_id, False, student_key=echo)
    if values["timestamp"] <= grade.timestamp:
        raise Conflict(
            "a grade with a later or equal timestamp is already stored",
            fields={
                "timestamp": [f"Must be later than the stored grade's timestamp ({grade.timestamp.isoformat()}Z)."]
            },
            code="stale_grade",
        )
    values.update(revision=grade.revision + 1, updated_at=now, deleted_at=None, student_key=echo)
    session.execute(_UPDATE_GRADE, {"grade_pk": grade.id, **values})
    updated = replace(grade, **values)
    revision_id = _add_revision(session, updated, principal, now)
    deliveries = route_revision(session, updated, revision_id, routes=routes, now=now, listening=listening)
    return AcceptedGrade(updated, external_id, True, deliveries, echo)


# The hot path's statements, built once with bind parameters (building them per request showed in the bench).
_USER = select(User.id).where(User.id == bindparam("user_id"), User.district_id == bindparam("district_id"))
# Whether an enabled webhook endpoint of the app in the district may hear this grade's events: without one, routing
# writes no event and asks nothing more.
_LISTENING = exists().where(
    WebhookEndpoint.district_id == bindparam("district_id"),
    WebhookEndpoint.app_id == bindparam("app_id"),
    WebhookEndpoint.disabled.is_(False),
)
# One round trip for the rest of what a grade needs: the user is in the district, the assignment exists, whether
# a webhook endpoint listens, and where the grade goes (one row per destination; one row of NULL destination
# columns when there is none).
_LOOKUP = (
    select(_USER.scalar_subquery(), Assignment.id, Assignment.score_maximum, _LISTENING, *ROUTE_COLUMNS)
    .select_from(Assignment)
    .outerjoin(
        Placement,
        (Placement.assignment_id == Assignment.id)
        & (Placement.district_id == bindparam("district_id"))
        & receives(bindparam("user_id")),
    )
    .outerjoin(LmsConnection, LmsConnection.id == Placement.lms_connection_id)
    .where(Assignment.app_id == bindparam("app_id"), Assignment.external_id == bindparam("external_id"))
    .order_by(Placement.created_at, Placement.id)
)
_GRADES = cast(Table, Grade.__table__)
_LOCKED_GRADE = (
    select(_GRADES)
    .where(
        _GRADES.c.district_id == bindparam("district_id"),
        _GRADES.c.app_id == bindparam("app_id"),
        _GRADES.c.assignment_id == bindparam("assignment_id"),
        _GRADES.c.user_id == bindparam("user_id"),
    )
    .with_for_update()
)
_GRADE_KEY = [_GRADES.c.district_id, _GRADES.c.app_id, _GRADES.c.assignment_id, _GRADES.c.user_id]
_INSERT_GRADE_IF_NEW = {
    "postgresql": postgresql.insert(_GRADES).on_conflict_do_nothing(index_elements=_GRADE_KEY),
    "sqlite": sqlite.insert(_GRADES).on_conflict_do_nothing(index_elements=_GRADE_KEY),
}
_UPDATE_GRADE = _GRADES.update().where(_GRADES.c.id == bindparam("grade_pk"))
_INSERT_REVISION = cast(Table, GradeRevision.__table__).insert()


def _lookup(
    session: Session, principal: Principal, user_id: str, external_id: str
) -> tuple[str | None, str | None, float | None, bool, list[Route]]:
    """(user id if in the district, assignment id, its score maximum, whether a webhook endpoint listens, the
    grade's routes) in one query."""
    params = {
        "user_id": user_id,
        "district_id": principal.district_id,
        "app_id": principal.app_id,
        "external_id": external_id,
    }
    rows = session.execute(_LOOKUP, params).all()
    if not rows:
        # No such assignment: say whether the user is known too, so the user error keeps coming first.
        return session.execute(_USER, params).scalar(), None, None, False, []
    known_user, assignment_id, score_maximum, listening = rows[0][0], rows[0][1], rows[0][2], bool(rows[0][3])
    routes = [Route(*row[4:]) for row in rows if row[4] is not None]
    return known_user, assignment_id, score_maximum, listening, routes


def _inserted(session: Session, record: dict[str, Any]) -> bool:
    """Insert a new grade; False if a concurrent request inserted the same one first (ON CONFLICT DO NOTHING
    keeps the transaction usable, where a unique violation would need a savepoint round trip)."""
    statement = _INSERT_GRADE_IF_NEW[session.get_bind().dialect.name]
    return bool(session.execute(statement, record).rowcount)  # type: ignore[attr-defined]


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
        "preserve_score": data.get("preserveScore", True),
        "timestamp": timestamp,
    }


def _locked_grade(session: Session, principal: Principal, assignment_id: str, user_id: str) -> GradeRecord | None:
    """The grade's row, locked until commit, or None."""
    row = session.execute(
        _LOCKED_GRADE,
        {
            "district_id": principal.district_id,
            "app_id": principal.app_id,
            "assignment_id": assignment_id,
            "user_id": user_id,
        },
    ).first()
    return None if row is None else GradeRecord.from_row(row)


def _add_revision(session: Session, grade: GradeRecord, principal: Principal, now: datetime) -> str:
    revision_id = new_id()
    session.execute(
        _INSERT_REVISION,
        {
            "id": revision_id,
            "district_id": grade.district_id,
            "grade_id": grade.id,
            "revision": grade.revision,
            "input_form": grade.input_form,
            "percentage": grade.percentage,
            "fraction": grade.fraction,
            "score_given": grade.score_given,
            "score_maximum": grade.score_maximum,
            "comment": grade.comment,
            "context": grade.context,
            "activity_progress": grade.activity_progress,
            "grading_progress": grade.grading_progress,
            "preserve_score": grade.preserve_score,
            "timestamp": grade.timestamp,
            "token_id": principal.token_id,
            "received_at": now,
            "student_key": grade.student_key,
        },
    )
    return revision_id


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
    key = student_key_of(query)
    if key is not None and key.field == "userID":
        stmt = stmt.where(Grade.user_id == key.value)
    elif key is not None:
        # Filtering names no one in particular: a key that names nobody gives an empty page, an email two users
        # share gives both users' grades, and a user token sees only its own grades whatever it filters by.
        stmt = stmt.where(Grade.user_id.in_(students_named(principal.district_id, key).scalar_subquery()))
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
    since = updated_since(query)
    if since is not None:
        # A grade changed when a new revision or a deletion was stored, or when one of its deliveries moved on
        # (a status the answer shows): each side is one index range (grades, deliveries by district and time).
        stmt = stmt.where(
            Grade.id.in_(
                union(
                    select(Grade.id).where(Grade.district_id == principal.district_id, Grade.updated_at >= since),
                    select(Delivery.grade_id).where(
                        Delivery.district_id == principal.district_id, Delivery.updated_at >= since
                    ),
                )
            )
        )
    rows = list(session.scalars(after_cursor(stmt, (Grade.created_at, Grade.id), query)))
    page = page_of(rows, query, lambda grade: (grade.created_at, grade.id))
    return GradePage(page.items, page.next_cursor)


def _delivery_view(delivery: Delivery, route: Route | None) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "operation": getattr(delivery, "operation", "replace"),
        "status": delivery.status,
        "lms_connection_name": route.connection_name if route else None,
        "adapter": route.adapter if route else None,
        "placement": {"id": route.placement_id, "course_id": route.course_id, "section_id": route.section_id}
        if route
        else None,
        "attempts": delivery.attempts,
        "next_attempt_at": delivery.next_attempt_at
        if delivery.status in (DeliveryStatus.PENDING, DeliveryStatus.RETRYING)
        else None,
        "last_error": delivery.last_error,
        "cause": getattr(delivery, "error_cause", None),
        "lms_status": delivery.lms_status,
        "lms_response": delivery.lms_response,
        "delivered_at": delivery.delivered_at,
        "gradebook_holds": (delivery.receipt or {}).get("gradebook_holds"),
        "updated_at": delivery.updated_at,
    }


def grade_view(
    grade: Grade | GradeRecord, assignment_external_id: str, deliveries: list[dict[str, Any]]
) -> dict[str, Any]:
    """One grade shaped for GradeResponseSchema, with the deliveries of its current revision."""
    deliveries = [d for d in deliveries if d["status"] != DeliveryStatus.SUPERSEDED]
    statuses = {d["status"] for d in deliveries}
    return {
        "id": grade.id,
        "assignment_external_id": assignment_external_id,
        "user_id": grade.user_id,
        # Grades stored before keys were recorded were all posted by userID.
        "student_key": grade.student_key or {"userID": grade.user_id},
        "percentage": grade.percentage,
        "input_score_given": grade.score_given if grade.input_form == "score" else None,
        "input_score_maximum": grade.score_maximum if grade.input_form == "score" else None,
        "normalized": grade,
        "comment": grade.comment,
        "context": grade.context,
        "timestamp": grade.timestamp,
        "activity_progress": grade.activity_progress,
        "grading_progress": grade.grading_progress,
        "preserve_score": grade.preserve_score,
        "revision": grade.revision,
        "created_at": grade.created_at,
        "updated_at": grade.updated_at,
        "status": next((s for s in PROGRESS_ORDER if s in statuses), DeliveryStatus.PENDING).value,
        "deliveries": deliveries,
        "deleted_at": grade.deleted_at,
    }


def accepted_view(session: Session, accepted: AcceptedGrade) -> dict[str, Any]:
    """The answer to POST /v1/grade, from the rows just written (no read back) unless nothing changed."""
    if not accepted.changed:
        view = grade_views(session, [accepted.grade])[0]
    else:
        deliveries = [_delivery_view(delivery, route) for delivery, route in accepted.deliveries]
        view = grade_view(accepted.grade, accepted.assignment_external_id, deliveries)
    return {**view, "student_key": accepted.student_key}


def grade_views(session: Session, grades: Sequence[Grade | GradeRecord]) -> list[dict[str, Any]]:
    """Grades with their current revision's deliveries, shaped for GradeResponseSchema (two queries)."""
    if not grades:
        return []
    rows = session.execute(
        # The route's columns without the per-user flags, which only routing needs.
        select(Delivery, *ROUTE_COLUMNS[:6])
        .join(GradeRevision, GradeRevision.id == Delivery.revision_id)
        .join(Grade, (Grade.id == GradeRevision.grade_id) & (Grade.revision == GradeRevision.revision))
        .outerjoin(Placement, Placement.id == Delivery.placement_id)
        .outerjoin(LmsConnection, LmsConnection.id == Delivery.lms_connection_id)
        .where(Delivery.grade_id.in_([g.id for g in grades]))
        .order_by(Delivery.created_at, Delivery.id)
    ).all()
    external_ids = dict(
        session.execute(
            select(Assignment.id, Assignment.external_id).where(Assignment.id.in_({g.assignment_id for g in grades}))
        ).all()
    )
    by_grade: dict[str, list[dict[str, Any]]] = {g.id: [] for g in grades}
    for delivery, *route in rows:
        # A placement-less delivery (unroutable) has NULL route columns from the outer joins.
        known = Route(*route) if route[0] is not None else None
        by_grade[delivery.grade_id].append(_delivery_view(delivery, known))
    return [grade_view(g, external_ids[g.assignment_id], by_grade[g.id]) for g in grades]


def delete_grade(session: Session, principal: Principal, grade_id: str, *, now: datetime | None = None) -> Grade:
    """Clear a grade: undelivered sends are superseded, and every LMS that received it and supports deletion
    gets a delete. The grade and its history stay in Passback (marked deleted); a later post revives it."""
    principal.require_scope("grades:write")
    grade = get_grade(session, principal, grade_id)
    if grade.deleted_at is not None:
        return grade
    now = now or utcnow()
    grade.deleted_at = now
    grade.updated_at = now
    schedule_deletions(session, grade, now)
    return grade


@dataclass
class BulkOutcome:
    """One entry of a bulk post: accepted (with its grade) or refused (with the error it alone would get)."""

    index: int
    accepted: AcceptedGrade | None = None
    error: ServiceError | None = None


def accept_grades(
    session: Session, principal: Principal, entries: list[tuple[int, Mapping[str, Any] | ServiceError]]
) -> list[BulkOutcome]:
    """Accept many grades in one transaction, each on its own: an entry that breaks a rule is rolled back to
    its savepoint and reported, the others are kept. Entries are taken in order, so two entries for one
    student and assignment are a grade and its newer revision (or a conflict, as two posts would be)."""
    principal.require_scope("grades:write")
    outcomes: list[BulkOutcome] = []
    for index, entry in entries:
        if isinstance(entry, ServiceError):
            outcomes.append(BulkOutcome(index, error=entry))
            continue
        savepoint = session.begin_nested()
        try:
            accepted = accept_grade(session, principal, entry)
        except ServiceError as exc:
            savepoint.rollback()
            outcomes.append(BulkOutcome(index, error=exc))
            continue
        savepoint.commit()
        outcomes.append(BulkOutcome(index, accepted=accepted))
    return outcomes
