"""The outbox side of delivery: claim due rows with a lease, describe the work, record what happened.

Every function here is one short transaction's worth of work; no LMS call ever happens inside a transaction.
"""

from __future__ import annotations

import random
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, exists, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from adapters import DeliveryReceipt, Destination, NormalizedGrade
from adapters.base import AwaitingConfiguration, DeliveryError, PermanentDeliveryError, RetryableDeliveryError
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
    utcnow,
)
from gateway.services.errors import Conflict, NotFound
from gateway.services.lms import connection_settings

MAX_ERROR_CHARS = 2000
SUCCESS_TOUCH_SECONDS = 5.0
_LAST_SUCCESS_TOUCH: dict[str, datetime] = {}
_TOUCH_LOCK = threading.Lock()


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded tries, and the LMS's Retry-After honoured (up to a cap)."""

    base_seconds: float = 15.0
    max_seconds: float = 3600.0
    max_attempts: int = 15
    retry_after_max_seconds: float = 86400.0

    def delay(self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        # The exponent is bounded so a huge attempt number cannot overflow a float before the cap applies.
        exponential = min(self.max_seconds, self.base_seconds * 2 ** min(max(0, attempt - 1), 64))
        # "Equal jitter": at least half the backoff, so a burst of failures spreads out but never hammers.
        delay = exponential / 2 + (rng or random).uniform(0, exponential / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry_after_max_seconds))
        return delay


@dataclass(frozen=True)
class Claim:
    delivery_id: str
    claim_token: str


def _claimable(now: datetime, max_attempts: int) -> Any:
    due = and_(
        Delivery.status.in_((DeliveryStatus.PENDING, DeliveryStatus.RETRYING)),
        Delivery.next_attempt_at <= now,
    )
    lease_lost = and_(
        Delivery.status == DeliveryStatus.DELIVERING,
        Delivery.lease_expires_at < now,
        Delivery.attempts < max_attempts,
    )
    return or_(due, lease_lost)


def claim_due_deliveries(
    session: Session,
    *,
    limit: int,
    lease_seconds: float,
    max_attempts: int,
    now: datetime | None = None,
    district_id: str | None = None,
    lms_connection_id: str | None = None,
    section_id: str | None = None,
    without_connection: bool = False,
) -> list[Claim]:
    """Claim up to `limit` due deliveries for this worker until the lease expires.

    Due means pending/retrying with next_attempt_at reached, or delivering whose lease expired (its worker
    died). Deliveries of paused connections wait. A delivery is not claimed while another delivery of the same
    grade and placement is in flight, so an older revision can never land after a newer one. Safe to call
    from many workers at once: each row is taken by a conditional UPDATE, and only one can win it.
    """
    now = now or utcnow()
    _fail_exhausted_leases(session, now, max_attempts)
    in_flight = aliased(Delivery)
    busy = exists().where(
        in_flight.grade_id == Delivery.grade_id,
        in_flight.placement_id == Delivery.placement_id,
        in_flight.id != Delivery.id,
        in_flight.status == DeliveryStatus.DELIVERING,
        in_flight.lease_expires_at >= now,
    )
    paused = exists().where(LmsConnection.id == Delivery.lms_connection_id, LmsConnection.paused.is_(True))
    conditions = [_claimable(now, max_attempts), ~busy, ~paused]
    if district_id is not None:
        conditions.append(Delivery.district_id == district_id)
    if without_connection:
        # Rows whose connection was removed (they fail as orphaned once loaded).
        conditions.append(Delivery.lms_connection_id.is_(None))
    if lms_connection_id is not None:
        # One connection's work (a Celery drain), or a batching worker topping up one request to a section.
        conditions.append(Delivery.lms_connection_id == lms_connection_id)
        if section_id is not None:
            conditions.append(Delivery.operation == "replace")
            conditions.append(
                Delivery.placement_id.in_(
                    select(Placement.id).where(
                        Placement.lms_connection_id == lms_connection_id, Placement.section_id == section_id
                    )
                )
            )
    candidates = session.execute(
        select(Delivery.id, Delivery.grade_id, Delivery.placement_id)
        .where(*conditions)
        .order_by(Delivery.next_attempt_at)
        .limit(limit)
        # PostgreSQL: lock the candidates now and pass over rows another transaction holds (an API request
        # superseding them, another worker claiming), so a claim never waits on, nor deadlocks with, them.
        # SQLite has one writer at a time and renders no FOR UPDATE.
        .with_for_update(skip_locked=True, of=Delivery)
    ).all()
    # One row per (grade, placement): the in-flight check above cannot see rows this same statement claims.
    chosen: dict[tuple[str, str | None], str] = {}
    for delivery_id, grade_id, placement_id in candidates:
        chosen.setdefault((grade_id, placement_id), delivery_id)
    if not chosen:
        return []
    # One conditional UPDATE takes them all; the conditions are checked again per row, so a row another
    # worker took in the meantime is not taken twice. RETURNING tells which rows this call won.
    token = secrets.token_hex(16)
    won = set(
        session.scalars(
            update(Delivery)
            .where(Delivery.id.in_(list(chosen.values())), *conditions)
            .values(
                status=DeliveryStatus.DELIVERING,
                claim_token=token,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                attempts=Delivery.attempts + 1,
                updated_at=now,
            )
            .returning(Delivery.id)
            .execution_options(synchronize_session=False)
        )
    )
    return [Claim(delivery_id, token) for delivery_id in chosen.values() if delivery_id in won]


def _fail_exhausted_leases(session: Session, now: datetime, max_attempts: int) -> None:
    session.execute(
        update(Delivery)
        .where(
            Delivery.status == DeliveryStatus.DELIVERING,
            Delivery.lease_expires_at < now,
            Delivery.attempts >= max_attempts,
        )
        .values(
            status=DeliveryStatus.FAILED,
            last_error="gave up: the worker delivering this grade stopped before finishing, too many times",
            next_attempt_at=None,
            claim_token=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )


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


DISCOVERY_LEASE_SECONDS = 120
DISCOVERY_WAIT_SECONDS = 2.0


def take_discovery_lease(session: Session, placement_id: str, *, now: datetime | None = None) -> bool:
    """Reserve the placement's destination discovery for this worker; False if another worker holds it."""
    now = now or utcnow()
    result = session.execute(
        update(Placement)
        .where(
            Placement.id == placement_id,
            or_(Placement.discovery_lease_until.is_(None), Placement.discovery_lease_until < now),
        )
        .values(discovery_lease_until=now + timedelta(seconds=DISCOVERY_LEASE_SECONDS))
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def release_discovery_lease(session: Session, placement_id: str) -> None:
    session.execute(
        update(Placement)
        .where(Placement.id == placement_id)
        .values(discovery_lease_until=None)
        .execution_options(synchronize_session=False)
    )


def reconfirm_claims(
    session: Session, claims: list[Claim], lease_seconds: float, *, now: datetime | None = None
) -> tuple[set[str], set[str]]:
    """Right before sending: renew the lease of each claim that is still ours, unexpired and of the grade's
    current revision. Returns (confirmed, outdated) delivery ids; an outdated claim should be superseded, and a
    claim in neither set was lost (its lease ran out and another worker may have it) and must not be sent.

    This is what keeps an old score from landing after a new one: while a claim's lease runs, the newer
    delivery of the same grade cannot be claimed, and a claim whose lease ran out is never sent."""
    if not claims:
        return set(), set()
    now = now or utcnow()
    ids = [claim.delivery_id for claim in claims]
    tokens = {claim.delivery_id: claim.claim_token for claim in claims}
    rows = session.execute(
        select(Delivery.id, Delivery.claim_token, Delivery.lease_expires_at, Delivery.revision_id, Delivery.grade_id)
        .where(Delivery.id.in_(ids))
        .with_for_update()
    ).all()
    current = dict(
        session.execute(
            select(Grade.id, GradeRevision.id)
            .join(GradeRevision, (GradeRevision.grade_id == Grade.id) & (GradeRevision.revision == Grade.revision))
            .where(Grade.id.in_({row.grade_id for row in rows}))
        ).all()
    )
    confirmed: set[str] = set()
    outdated: set[str] = set()
    for row in rows:
        if row.claim_token != tokens[row.id] or row.lease_expires_at is None or row.lease_expires_at < now:
            continue
        if current.get(row.grade_id) not in (None, row.revision_id):
            outdated.add(row.id)
        else:
            confirmed.add(row.id)
    if confirmed:
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(confirmed))
            .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
            .execution_options(synchronize_session=False)
        )
    return confirmed, outdated


def defer_claim(session: Session, claim: Claim, seconds: float, *, now: datetime | None = None) -> None:
    """Give a claimed delivery back untouched, to be tried shortly: waiting is not a failed attempt."""
    now = now or utcnow()
    session.execute(
        update(Delivery)
        .where(Delivery.id == claim.delivery_id, Delivery.claim_token == claim.claim_token)
        .values(
            status=DeliveryStatus.PENDING,
            attempts=Delivery.attempts - 1,
            next_attempt_at=now + timedelta(seconds=seconds),
            claim_token=None,
            lease_expires_at=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )


def _claimed_row(session: Session, claim: Claim) -> Delivery | None:
    """The claimed delivery if the claim is still ours, locked: between this read and the caller's write another
    worker must not take the row over."""
    return session.scalar(
        select(Delivery)
        .where(Delivery.id == claim.delivery_id, Delivery.claim_token == claim.claim_token)
        .with_for_update()
    )


def supersede_claim(session: Session, claim: Claim, *, now: datetime | None = None) -> bool:
    """A claimed delivery of an older revision: mark it superseded by the grade's current revision, unsent."""
    now = now or utcnow()
    delivery = _claimed_row(session, claim)
    if delivery is None:
        return False
    delivery.status = DeliveryStatus.SUPERSEDED
    delivery.superseded_by = _newer_revision_id(session, delivery)
    delivery.next_attempt_at = None
    delivery.claim_token = None
    delivery.lease_expires_at = None
    delivery.updated_at = now
    return True


def fail_orphaned_claim(session: Session, claim: Claim, *, now: datetime | None = None) -> bool:
    """A claimed delivery whose placement or connection was removed cannot be sent: fail it with the reason."""
    now = now or utcnow()
    result = session.execute(
        update(Delivery)
        .where(Delivery.id == claim.delivery_id, Delivery.claim_token == claim.claim_token)
        .values(
            status=DeliveryStatus.FAILED,
            last_error="its placement or LMS connection was removed before it could be delivered",
            next_attempt_at=None,
            claim_token=None,
            lease_expires_at=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def _truncate(text: str | None) -> str | None:
    if text is None:
        return None
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "…"


def record_outcome(
    session: Session, claim: Claim, outcome: DeliveryReceipt | DeliveryError, policy: RetryPolicy, *, touch: bool = True
) -> str | None:
    """Record a receipt or an error for one claimed delivery; returns the new status (None: claim lost).
    `touch=False` leaves the connection's health to the caller (a batch touches it once)."""
    if isinstance(outcome, DeliveryError):
        return record_failure(session, claim, outcome, policy, touch=touch)
    return DeliveryStatus.DELIVERED if record_success(session, claim, outcome, touch=touch) else None


def record_success(
    session: Session, claim: Claim, receipt: DeliveryReceipt, *, now: datetime | None = None, touch: bool = True
) -> bool:
    """Mark the claimed delivery delivered. Returns False if the claim was lost (another worker took over)."""
    now = now or utcnow()
    delivery = _claimed_row(session, claim)
    if delivery is None:
        return False
    delivery.status = DeliveryStatus.DELIVERED
    delivery.delivered_at = now
    delivery.updated_at = now
    delivery.next_attempt_at = None
    delivery.lease_expires_at = None
    delivery.claim_token = None
    delivery.last_error = None
    delivery.lms_status = receipt.lms_status
    delivery.lms_response = _truncate(receipt.summary)
    delivery.receipt = dict(receipt.details) if receipt.details else None
    if receipt.destination_update and delivery.placement_id is not None:
        placement = session.get(Placement, delivery.placement_id, with_for_update=True)
        learned_link = receipt.destination_update.get("lineitem_link")
        # A line item of another link is not kept by a placement a link has taken meanwhile.
        taken = placement is not None and placement.resource_link_id not in (None, learned_link)
        if placement is not None and not (learned_link and taken):
            placement.destination = {**(placement.destination or {}), **receipt.destination_update}
    if touch:
        touch_connection(session, delivery.lms_connection_id, error=None, now=now)
    return True


def record_successes(
    session: Session, receipts: list[tuple[Claim, DeliveryReceipt]], *, now: datetime | None = None
) -> set[str]:
    """Mark many claimed deliveries delivered in one statement (a batch's receipts, none of which teach the
    placement anything). Returns the delivery ids still ours, which are the ones marked."""
    if not receipts:
        return set()
    now = now or utcnow()
    ours = {
        (delivery_id, token)
        for delivery_id, token in session.execute(
            select(Delivery.id, Delivery.claim_token)
            .where(Delivery.id.in_([c.delivery_id for c, _ in receipts]))
            .with_for_update()
        )
    }
    rows = [
        {
            "b_id": claim.delivery_id,
            "b_token": claim.claim_token,
            "b_lms_status": receipt.lms_status,
            "b_lms_response": _truncate(receipt.summary),
            "b_receipt": dict(receipt.details) if receipt.details else None,
        }
        for claim, receipt in receipts
        if (claim.delivery_id, claim.claim_token) in ours
    ]
    if rows:
        table = cast(Table, Delivery.__table__)
        session.execute(
            update(table)
            .where(table.c.id == bindparam("b_id"), table.c.claim_token == bindparam("b_token"))
            .values(
                status=DeliveryStatus.DELIVERED,
                delivered_at=now,
                updated_at=now,
                next_attempt_at=None,
                lease_expires_at=None,
                claim_token=None,
                last_error=None,
                lms_status=bindparam("b_lms_status"),
                lms_response=bindparam("b_lms_response"),
                receipt=bindparam("b_receipt"),
            ),
            rows,
        )
    return {str(row["b_id"]) for row in rows}


def record_failure(
    session: Session,
    claim: Claim,
    error: DeliveryError,
    policy: RetryPolicy,
    *,
    now: datetime | None = None,
    rng: random.Random | None = None,
    touch: bool = True,
) -> str | None:
    """Record a failed attempt: retry later with backoff, or fail for good. Returns the new status."""
    now = now or utcnow()
    delivery = _claimed_row(session, claim)
    if delivery is None:
        return None
    delivery.claim_token = None
    delivery.lease_expires_at = None
    delivery.updated_at = now
    delivery.lms_status = error.lms_status
    delivery.lms_response = _truncate(error.lms_body)
    newer = _newer_revision_id(session, delivery)
    if newer is not None:
        # A newer revision arrived while this one was in flight: it carries the grade now; retrying this one
        # could land the old score after the new one.
        delivery.status = DeliveryStatus.SUPERSEDED
        delivery.superseded_by = newer
        delivery.next_attempt_at = None
        delivery.last_error = _truncate(error.message)
    elif isinstance(error, AwaitingConfiguration):
        # Nothing was sent and only a person can change the outcome (a setting, a key): wait without spending
        # the attempts (the claim counted one).
        delivery.attempts = max(0, delivery.attempts - 1)
        delivery.status = DeliveryStatus.RETRYING
        delivery.next_attempt_at = now + timedelta(seconds=min(error.wait_seconds, policy.max_seconds))
        delivery.last_error = _truncate(error.message)
    elif isinstance(error, RetryableDeliveryError) and delivery.attempts < policy.max_attempts:
        delay = policy.delay(delivery.attempts, error.retry_after, rng)
        delivery.status = DeliveryStatus.RETRYING
        delivery.next_attempt_at = now + timedelta(seconds=delay)
        delivery.last_error = _truncate(error.message)
    else:
        delivery.status = DeliveryStatus.FAILED
        delivery.next_attempt_at = None
        prefix = "" if isinstance(error, PermanentDeliveryError) else f"gave up after {delivery.attempts} attempts: "
        delivery.last_error = _truncate(prefix + error.message)
    if touch:
        touch_connection(session, delivery.lms_connection_id, error=error.message, now=now)
    return delivery.status


def _newer_revision_id(session: Session, delivery: Delivery) -> str | None:
    """The grade's current revision id when it is newer than the one this delivery carries, else None."""
    current = session.execute(
        select(GradeRevision.id)
        .join(Grade, (Grade.id == GradeRevision.grade_id) & (Grade.revision == GradeRevision.revision))
        .where(Grade.id == delivery.grade_id)
    ).scalar_one_or_none()
    return current if current is not None and current != delivery.revision_id else None


def touch_connection(
    session: Session, connection_id: str | None, *, error: str | None, now: datetime | None = None
) -> None:
    """Keep the connection's health: when it last took a grade, and when and why it last refused one."""
    if connection_id is None:
        return
    now = now or utcnow()
    if error is None:
        # Every worker would otherwise update the same connection row after every grade (a hot row): a
        # success is written at most every few seconds per process; a failure always.
        with _TOUCH_LOCK:
            last = _LAST_SUCCESS_TOUCH.get(connection_id)
            if last is not None and (now - last).total_seconds() < SUCCESS_TOUCH_SECONDS:
                return
            _LAST_SUCCESS_TOUCH[connection_id] = now
    values: dict[str, Any] = (
        {"last_success_at": now} if error is None else {"last_failure_at": now, "last_failure": _truncate(error)}
    )
    session.execute(update(LmsConnection).where(LmsConnection.id == connection_id).values(**values))


def retry_delivery(session: Session, district_id: str, delivery_id: str, *, now: datetime | None = None) -> Delivery:
    """Send a failed delivery again now, with a fresh count of attempts (staff action after a fix)."""
    now = now or utcnow()
    delivery = session.scalar(
        select(Delivery).where(Delivery.id == delivery_id, Delivery.district_id == district_id).with_for_update()
    )
    if delivery is None:
        raise NotFound(f"no delivery {delivery_id!r}")
    if delivery.status not in (DeliveryStatus.FAILED, DeliveryStatus.RETRYING):
        raise Conflict(f"only failed or retrying deliveries can be retried; this one is {delivery.status}")
    if _newer_revision_id(session, delivery) is not None:
        raise Conflict("a newer grade replaced this one; its own delivery carries the current score")
    delivery.status = DeliveryStatus.PENDING
    delivery.attempts = 0
    delivery.next_attempt_at = now
    delivery.updated_at = now
    return delivery


def retry_failed(
    session: Session,
    district_id: str,
    *,
    lms_connection_id: str | None = None,
    assignment_id: str | None = None,
    now: datetime | None = None,
) -> int:
    """After a fix: send every failed delivery of a connection or an assignment again, with fresh attempts.
    Deliveries that a newer grade replaced are left alone (the newer one carries the score)."""
    now = now or utcnow()
    current = (
        select(GradeRevision.id)
        .join(Grade, (Grade.id == GradeRevision.grade_id) & (Grade.revision == GradeRevision.revision))
        .where(Grade.district_id == district_id)
    )
    conditions = [
        Delivery.district_id == district_id,
        Delivery.status == DeliveryStatus.FAILED,
        Delivery.revision_id.in_(current),
    ]
    if lms_connection_id is not None:
        conditions.append(Delivery.lms_connection_id == lms_connection_id)
    if assignment_id is not None:
        conditions.append(Delivery.grade_id.in_(select(Grade.id).where(Grade.assignment_id == assignment_id)))
    result = session.execute(
        update(Delivery)
        .where(*conditions)
        .values(status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def due_connections(
    session: Session,
    *,
    max_attempts: int,
    limit: int,
    exclude: set[str | None] | frozenset[str | None] = frozenset(),
    district_id: str | None = None,
    now: datetime | None = None,
) -> list[str | None]:
    """Connections (None: rows whose connection was removed) with due deliveries, the longest-waiting first,
    leaving out `exclude` and paused connections: what a worker that delivers to several connections at once
    claims next, one connection at a time."""
    now = now or utcnow()
    paused = exists().where(LmsConnection.id == Delivery.lms_connection_id, LmsConnection.paused.is_(True))
    conditions = [_claimable(now, max_attempts), ~paused]
    if district_id is not None:
        conditions.append(Delivery.district_id == district_id)
    named = [c for c in exclude if c is not None]
    if named:
        conditions.append(or_(Delivery.lms_connection_id.is_(None), Delivery.lms_connection_id.not_in(named)))
    if None in exclude:
        conditions.append(Delivery.lms_connection_id.is_not(None))
    first_due = func.min(Delivery.next_attempt_at)
    rows = session.execute(
        select(Delivery.lms_connection_id, first_due)
        .where(*conditions)
        .group_by(Delivery.lms_connection_id)
        .order_by(first_due)
        .limit(limit)
    ).all()
    return [connection_id for connection_id, _ in rows]
