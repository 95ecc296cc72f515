"""The outbox's claims and leases: which deliveries are due, claiming them for one worker until a lease
expires, renewing, deferring, superseding or failing a claim.

Every function here is one short transaction's worth of work; no LMS call ever happens inside a transaction.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, exists, func, or_, select, text, update
from sqlalchemy.orm import Session, aliased

from adapters import causes
from gateway.models import Delivery, DeliveryStatus, Grade, GradeRevision, LmsConnection, Placement, utcnow
from gateway.services.webhook_events import REPLACED_BY_NEWER, emit
from schemas.webhooks import WebhookEvent


@dataclass(frozen=True)
class Claim:
    delivery_id: str
    claim_token: str


def claimable(now: datetime, max_attempts: int) -> Any:
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
    died). Deliveries never sent come first, then retries by due time: a retry is the likeliest to fail again
    (a timing-out LMS), and new grades must not wait behind it. Deliveries of paused connections wait.
    Claiming is not an attempt: `reconfirm_claims(count_attempt=...)` counts one when the first request goes
    out, and recording an outcome counts one if no request did (so a claim lost or handed back unsent is not).
    A delivery is not claimed while another delivery of the same grade and placement is in flight, so an
    older revision can never land after a newer one. Safe to call from many workers at once: each row is
    taken by a conditional UPDATE, and only one can win it.
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
    conditions = [claimable(now, max_attempts), ~busy, ~paused]
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
        .order_by(case((Delivery.attempts == 0, 0), else_=1), Delivery.next_attempt_at)
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
                updated_at=now,
            )
            .returning(Delivery.id)
            .execution_options(synchronize_session=False)
        )
    )
    return [Claim(delivery_id, token) for delivery_id in chosen.values() if delivery_id in won]


def _fail_exhausted_leases(session: Session, now: datetime, max_attempts: int) -> None:
    failed = session.execute(
        update(Delivery)
        .where(
            Delivery.status == DeliveryStatus.DELIVERING,
            Delivery.lease_expires_at < now,
            Delivery.attempts >= max_attempts,
        )
        .values(
            status=DeliveryStatus.FAILED,
            last_error="gave up: the worker delivering this grade stopped before finishing, too many times",
            error_cause=causes.INTERNAL_ERROR,
            next_attempt_at=None,
            claim_token=None,
            updated_at=now,
        )
        .returning(Delivery.id)
        .execution_options(synchronize_session=False)
    ).scalars()
    emit(session, WebhookEvent.FAILED, list(failed), now=now)


def reconfirm_claims(
    session: Session,
    claims: list[Claim],
    lease_seconds: float,
    *,
    now: datetime | None = None,
    count_attempt: Collection[str] = (),
) -> tuple[set[str], set[str]]:
    """Right before sending: renew the lease of each claim that is still ours, unexpired and of the grade's
    current revision, and count an attempt for those of them in `count_attempt` (their first request goes out
    now, so a worker that dies during it has spent one). Returns (confirmed, outdated) delivery ids; an
    outdated claim should be superseded, and a claim in neither set was lost (its lease ran out and another
    worker may have it) and must not be sent.

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
        starting = confirmed.intersection(count_attempt)
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(confirmed))
            .values(
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                attempts=Delivery.attempts + case((Delivery.id.in_(starting), 1), else_=0),
            )
            .execution_options(synchronize_session=False)
        )
    return confirmed, outdated


def count_first_attempts(session: Session, claims: list[Claim]) -> bool:
    """Right before the first request of claims taken moments ago (their leases still fresh): count their
    attempt, one indexed update per claim token, without reconfirm_claims's full check. False, with nothing
    counted once the caller rolls back, when one of them is no longer ours."""
    if session.get_bind().dialect.name == "postgresql":
        # A counter, not a grade: losing the last few counts to a database crash is harmless, and not waiting
        # for the WAL flush keeps this write off every send's critical path.
        session.execute(text("SET LOCAL synchronous_commit TO OFF"))
    by_token: dict[str, list[str]] = {}
    for claim in claims:
        by_token.setdefault(claim.claim_token, []).append(claim.delivery_id)
    counted = 0
    for token, delivery_ids in by_token.items():
        result = session.execute(
            update(Delivery)
            .where(
                Delivery.id.in_(delivery_ids),
                Delivery.claim_token == token,
                Delivery.status == DeliveryStatus.DELIVERING,
            )
            .values(attempts=Delivery.attempts + 1)
            .execution_options(synchronize_session=False)
        )
        counted += result.rowcount  # type: ignore[attr-defined]
    return counted == len(claims)


def defer_claim(session: Session, claim: Claim, seconds: float, *, now: datetime | None = None) -> None:
    """Give a claimed delivery back unsent, to be tried shortly: waiting is not an attempt (none was counted)."""
    now = now or utcnow()
    session.execute(
        update(Delivery)
        .where(Delivery.id == claim.delivery_id, Delivery.claim_token == claim.claim_token)
        .values(
            status=DeliveryStatus.PENDING,
            next_attempt_at=now + timedelta(seconds=seconds),
            claim_token=None,
            lease_expires_at=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )


def release_claims(
    session: Session, claims: list[Claim], *, now: datetime | None = None, uncount: Collection[str] = ()
) -> int:
    """Give back claims a stopping worker will not finish: due again at once, lease cleared, no attempt spent.
    A claim counts its attempt when its first request goes out (LeaseKeeper): one never sent spent none, and
    the attempt of one whose request the stop cut (`uncount`) is taken back, since the stop, not the LMS, ended
    it. Only rows still held under the claim's token are touched, so a delivery already recorded, or taken by
    another worker, is left alone. Returns how many."""
    now = now or utcnow()
    cut = list(uncount)
    by_token: dict[str, list[str]] = {}
    for claim in claims:
        by_token.setdefault(claim.claim_token, []).append(claim.delivery_id)
    released = 0
    for token, delivery_ids in by_token.items():
        result = session.execute(
            update(Delivery)
            .where(
                Delivery.id.in_(delivery_ids),
                Delivery.claim_token == token,
                Delivery.status == DeliveryStatus.DELIVERING,
            )
            .values(
                # A delivery that failed before waits as retrying (its last error kept), a fresh one as pending.
                status=case((Delivery.last_error.is_(None), DeliveryStatus.PENDING), else_=DeliveryStatus.RETRYING),
                attempts=case(
                    (Delivery.id.in_(cut) & (Delivery.attempts > 0), Delivery.attempts - 1), else_=Delivery.attempts
                )
                if cut
                else Delivery.attempts,
                next_attempt_at=now,
                claim_token=None,
                lease_expires_at=None,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        released += result.rowcount  # type: ignore[attr-defined]
    return released


def claimed_row(session: Session, claim: Claim) -> Delivery | None:
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
    delivery = claimed_row(session, claim)
    if delivery is None:
        return False
    delivery.status = DeliveryStatus.SUPERSEDED
    delivery.error_cause = causes.SUPERSEDED
    delivery.superseded_by = newer_revision_id(session, delivery)
    delivery.next_attempt_at = None
    delivery.claim_token = None
    delivery.lease_expires_at = None
    delivery.updated_at = now
    emit(session, WebhookEvent.SUPERSEDED, [delivery.id], now=now, reason=REPLACED_BY_NEWER)
    return True


def fail_orphaned_claim(session: Session, claim: Claim, *, now: datetime | None = None) -> bool:
    """A claimed delivery whose placement or connection was removed cannot be sent: fail it with the reason."""
    now = now or utcnow()
    failed = session.execute(
        update(Delivery)
        .where(Delivery.id == claim.delivery_id, Delivery.claim_token == claim.claim_token)
        .values(
            status=DeliveryStatus.FAILED,
            last_error="its placement or LMS connection was removed before it could be delivered",
            error_cause=causes.DESTINATION_REMOVED,
            next_attempt_at=None,
            claim_token=None,
            lease_expires_at=None,
            updated_at=now,
        )
        .returning(Delivery.id)
        .execution_options(synchronize_session=False)
    ).scalars()
    ids = list(failed)
    emit(session, WebhookEvent.FAILED, ids, now=now)
    return bool(ids)


def newer_revision_id(session: Session, delivery: Delivery) -> str | None:
    """The grade's current revision id when it is newer than the one this delivery carries, else None."""
    current = session.execute(
        select(GradeRevision.id)
        .join(Grade, (Grade.id == GradeRevision.grade_id) & (Grade.revision == GradeRevision.revision))
        .where(Grade.id == delivery.grade_id)
    ).scalar_one_or_none()
    return current if current is not None and current != delivery.revision_id else None


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
    conditions = [claimable(now, max_attempts), ~paused]
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
