"""The work of claimed deliveries: grade revision, destination and adapter settings, read in one short
transaction for a whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters import Destination, NormalizedGrade
from gateway.crypto import SecretBox, SecretUndecryptable
from gateway.models import (
    Assignment,
    Delivery,
    DeliveryStatus,
    Grade,
    GradeRevision,
    LaunchDestination,
    LmsConnection,
    LmsIdentity,
    Placement,
    User,
)
from gateway.services.lms import connection_settings
from gateway.services.outbox import Claim


@dataclass(frozen=True)
class DeliveryWork:
    """Everything an adapter needs for one claimed delivery, read in one short transaction."""

    delivery_id: str
    claim_token: str
    operation: str
    adapter: str
    lms_connection_id: str
    settings: dict[str, Any]
    grade: NormalizedGrade
    destination: Destination
    # A newer revision of the grade exists: sending this one would only be overwritten (or, landing late,
    # overwrite the newer one). The worker supersedes it instead of sending.
    outdated: bool = False
    # The connection's own request rate, where it has one (else the installation's default).
    rate_limit: float | None = None
    # Why the connection's settings could not be read (a secret encrypted under a key not configured here).
    settings_problem: str | None = None
    # The district the grade belongs to (for the logs).
    district_id: str = ""


def load_work(session: Session, box: SecretBox, claim: Claim) -> DeliveryWork | None:
    """Read the claimed delivery's grade revision and destination; None if the claim is no longer ours."""
    return load_works(session, box, [claim]).get(claim.delivery_id)


def load_works(session: Session, box: SecretBox, claims: list[Claim]) -> dict[str, DeliveryWork]:
    """The work of many claimed deliveries in a few queries (a batch of a hundred is common); claims that are
    no longer ours are left out."""
    tokens = {claim.delivery_id: claim.claim_token for claim in claims}
    works = _works(session, box, list(tokens), tokens)
    return {delivery_id: work for delivery_id, work in works.items() if work.claim_token == tokens[delivery_id]}


def work_for(
    session: Session, box: SecretBox, delivery_id: str, *, claim_token: str | None = None
) -> DeliveryWork | None:
    """A delivery's grade revision, destination and adapter settings; with `claim_token`, only if it is ours."""
    work = _works(session, box, [delivery_id], {delivery_id: claim_token or ""}).get(delivery_id)
    if work is None or (claim_token is not None and work.claim_token != claim_token):
        return None
    return work


def _works(
    session: Session, box: SecretBox, delivery_ids: list[str], tokens: dict[str, str]
) -> dict[str, DeliveryWork]:
    if not delivery_ids:
        return {}
    rows = session.execute(
        select(Delivery, GradeRevision, Placement, LmsConnection, Assignment, Grade, User)
        .join(GradeRevision, GradeRevision.id == Delivery.revision_id)
        .join(Placement, Placement.id == Delivery.placement_id)
        .join(LmsConnection, LmsConnection.id == Delivery.lms_connection_id)
        .join(Assignment, Assignment.id == Placement.assignment_id)
        .join(Grade, Grade.id == Delivery.grade_id)
        .join(User, User.id == Grade.user_id)
        .where(Delivery.id.in_(delivery_ids))
    ).all()
    if not rows:
        return {}
    user_ids = {row.Grade.user_id for row in rows}
    connection_ids = {row.LmsConnection.id for row in rows}
    placement_ids = {row.Placement.id for row in rows}
    subjects = {
        (user_id, connection_id): subject
        for user_id, connection_id, subject in session.execute(
            select(LmsIdentity.user_id, LmsIdentity.lms_connection_id, LmsIdentity.subject).where(
                LmsIdentity.user_id.in_(user_ids), LmsIdentity.lms_connection_id.in_(connection_ids)
            )
        )
    }
    launches = {
        (placement_id, user_id): data
        for placement_id, user_id, data in session.execute(
            select(LaunchDestination.placement_id, LaunchDestination.user_id, LaunchDestination.data).where(
                LaunchDestination.placement_id.in_(placement_ids), LaunchDestination.user_id.in_(user_ids)
            )
        )
    }
    receipts = _last_receipts(session, {row.Delivery.grade_id for row in rows}, placement_ids)
    placed_links: dict[tuple[str, str], set[str]] = {}
    unlinked = {
        (row.Placement.lms_connection_id, row.Placement.course_id) for row in rows if not row.Placement.resource_link_id
    }
    if unlinked:
        for connection_id, course_id, link_id in session.execute(
            select(Placement.lms_connection_id, Placement.course_id, Placement.resource_link_id).where(
                Placement.lms_connection_id.in_({c for c, _ in unlinked}),
                Placement.course_id.in_({c for _, c in unlinked}),
                Placement.resource_link_id.is_not(None),
            )
        ):
            placed_links.setdefault((connection_id, course_id), set()).add(str(link_id))
    settings: dict[str, dict[str, Any]] = {}
    problems: dict[str, str] = {}
    works: dict[str, DeliveryWork] = {}
    for delivery, revision, placement, connection, assignment, grade_row, user in rows:
        if connection.id not in settings:
            try:
                settings[connection.id] = connection_settings(box, connection)
            except SecretUndecryptable as exc:
                settings[connection.id], problems[connection.id] = {}, exc.message
        lms_user_id = subjects.get((grade_row.user_id, connection.id))
        grade = NormalizedGrade(
            grade_id=grade_row.id,
            revision=revision.revision,
            user_id=grade_row.user_id,
            assignment_id=assignment.external_id,
            assignment_name=assignment.name,
            fraction=revision.fraction,
            score_given=revision.score_given,
            score_maximum=revision.score_maximum,
            timestamp=revision.timestamp,
            activity_progress=revision.activity_progress,
            grading_progress=revision.grading_progress,
            comment=revision.comment,
            context=revision.context,
            preserve_score=revision.preserve_score,
        )
        destination = Destination(
            placement_id=placement.id,
            course_id=placement.course_id,
            section_id=placement.section_id,
            data=dict(placement.destination or {}),
            lms_user_id=lms_user_id or grade_row.user_id,
            user_data=dict(launches.get((placement.id, grade_row.user_id)) or {}),
            assignment_id=assignment.external_id,
            lms_user_known=lms_user_id is not None,
            user_email=user.email,
            user_sis_id=user.sis_id,
            last_receipt=receipts.get((grade_row.id, placement.id)) or {},
            placed_links=frozenset(placed_links.get((placement.lms_connection_id, placement.course_id), ())),
        )
        works[delivery.id] = DeliveryWork(
            delivery.id,
            delivery.claim_token or "",
            delivery.operation,
            connection.adapter,
            connection.id,
            dict(settings[connection.id]),
            grade,
            destination,
            # A delete is outdated too once the grade was posted again (revived) after it.
            outdated=revision.revision < grade_row.revision,
            district_id=delivery.district_id,
            rate_limit=connection.rate_limit,
            settings_problem=problems.get(connection.id),
        )
    return works


def _last_receipts(
    session: Session, grade_ids: set[str], placement_ids: set[str]
) -> dict[tuple[str, str], dict[str, Any]]:
    """The receipt of the latest delivered send of each grade to each placement (one grade's sends to one
    placement never overlap, so the latest delivered is the last the LMS accepted)."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for grade_id, placement_id, receipt in session.execute(
        select(Delivery.grade_id, Delivery.placement_id, Delivery.receipt)
        .where(
            Delivery.grade_id.in_(grade_ids),
            Delivery.placement_id.in_(placement_ids),
            Delivery.operation == "replace",
            Delivery.status == DeliveryStatus.DELIVERED,
        )
        .order_by(Delivery.delivered_at.desc(), Delivery.id.desc())
    ):
        latest.setdefault((grade_id, placement_id), receipt or {})
    return latest
