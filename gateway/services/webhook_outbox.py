"""The webhook outbox's claims and outcomes: which endpoints have due messages, claiming one endpoint's messages
under a lease (a grade's messages in the order they were written), renewing or giving claims back, recording
what each endpoint answered (retried with backoff for the retry window, then given up on and the endpoint
marked failing), and the Standard Webhooks signature.

The claims follow the LMS outbox's rules (gateway/services/outbox.py): a conditional UPDATE takes each row for
one worker until its lease expires; a worker that dies leaves rows that become claimable again. Every function is
one short transaction's worth of work; no HTTP request happens inside a transaction."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Exists, and_, case, exists, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from gateway.crypto import SecretBox
from gateway.models import WebhookEndpoint, WebhookMessage
from gateway.services.outcomes import RetryPolicy
from schemas.statuses import DeliveryStatus

# The limiter keys of endpoints (per-endpoint throttle and concurrency slots), apart from LMS connections' ids.
LIMIT_KEY = "webhook:"
MESSAGE_ID_PREFIX = "msg_"
MAX_ERROR_CHARS = 2000
UNSENT = (DeliveryStatus.PENDING, DeliveryStatus.RETRYING, DeliveryStatus.DELIVERING)


@dataclass(frozen=True)
class MessageClaim:
    message_id: str
    claim_token: str


def claimable(now: datetime) -> ColumnElement[bool]:
    """Due (pending or retrying, its time reached), or claimed by a worker whose lease ran out."""
    return or_(
        and_(
            WebhookMessage.status.in_((DeliveryStatus.PENDING, DeliveryStatus.RETRYING)),
            WebhookMessage.next_attempt_at <= now,
        ),
        and_(WebhookMessage.status == DeliveryStatus.DELIVERING, WebhookMessage.lease_expires_at < now),
    )


def _blocked() -> Exists:
    """An earlier message of the same grade to the same endpoint is still unsent: this one waits for it."""
    earlier = aliased(WebhookMessage)
    return exists().where(
        earlier.endpoint_id == WebhookMessage.endpoint_id,
        earlier.grade_id == WebhookMessage.grade_id,
        earlier.seq < WebhookMessage.seq,
        earlier.status.in_(UNSENT),
    )


def _open(now: datetime) -> ColumnElement[bool]:
    """The endpoint takes requests now: enabled, and not paused after a failure."""
    return and_(
        WebhookEndpoint.disabled.is_(False),
        or_(WebhookEndpoint.paused_until.is_(None), WebhookEndpoint.paused_until <= now),
    )


def due_endpoints(session: Session, *, limit: int, now: datetime, exclude: Collection[str] = ()) -> list[str]:
    """Enabled endpoints with messages to send now, the longest-waiting first, leaving out `exclude` (being
    served)."""
    first_due = func.min(WebhookMessage.next_attempt_at)
    query = (
        select(WebhookMessage.endpoint_id, first_due)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookMessage.endpoint_id)
        .where(claimable(now), ~_blocked(), _open(now))
        .group_by(WebhookMessage.endpoint_id)
        .order_by(first_due)
        .limit(limit)
    )
    if exclude:
        query = query.where(WebhookMessage.endpoint_id.not_in(list(exclude)))
    return [endpoint_id for endpoint_id, _ in session.execute(query).all()]


def next_due(session: Session, *, now: datetime) -> datetime | None:
    """When the earliest message waiting out its backoff falls due (None: none waits)."""
    return session.scalar(
        select(func.min(WebhookMessage.next_attempt_at))
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookMessage.endpoint_id)
        .where(
            WebhookMessage.status.in_((DeliveryStatus.PENDING, DeliveryStatus.RETRYING)),
            WebhookMessage.next_attempt_at > now,
            WebhookEndpoint.disabled.is_(False),
        )
    )


def claim_messages(
    session: Session, endpoint_id: str, *, limit: int, lease_seconds: float, now: datetime
) -> list[MessageClaim]:
    """Claim up to `limit` due messages of one endpoint (enabled, not paused) until the lease expires, oldest
    first. A message is not claimed while an earlier message of the same grade to the same endpoint is still
    unsent (waiting, retrying or in flight), so an endpoint hears a grade's events in the order they happened."""
    blocked = _blocked()
    enabled = exists().where(WebhookEndpoint.id == WebhookMessage.endpoint_id, _open(now))
    conditions = [WebhookMessage.endpoint_id == endpoint_id, claimable(now), ~blocked, enabled]
    candidates = session.scalars(
        select(WebhookMessage.seq)
        .where(*conditions)
        .order_by(WebhookMessage.seq)
        .limit(limit)
        # PostgreSQL: pass over rows another worker is claiming; SQLite has one writer at a time.
        .with_for_update(skip_locked=True, of=WebhookMessage)
    ).all()
    if not candidates:
        return []
    token = secrets.token_hex(16)
    won = session.execute(
        update(WebhookMessage)
        .where(WebhookMessage.seq.in_(candidates), *conditions)
        .values(
            status=DeliveryStatus.DELIVERING,
            claim_token=token,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            updated_at=now,
        )
        .returning(WebhookMessage.seq, WebhookMessage.id)
        .execution_options(synchronize_session=False)
    ).all()
    return [MessageClaim(message_id, token) for _, message_id in sorted(won)]


@dataclass(frozen=True)
class Target:
    """Where and how one endpoint's messages are sent: its URL and the secrets that sign (the current one, and
    the previous one while a rotation's overlap lasts)."""

    endpoint_id: str
    url: str
    secrets: tuple[str, ...]
    # Set when the secret cannot be decrypted with the configured keys: nothing is sent, the messages wait.
    problem: str | None = None


@dataclass(frozen=True)
class Outgoing:
    claim: MessageClaim
    body: bytes


def load_claimed(
    session: Session, box: SecretBox, endpoint_id: str, claims: Sequence[MessageClaim], *, now: datetime
) -> tuple[Target, list[Outgoing]]:
    """The endpoint's target and the claimed messages' bodies, in the claims' order."""
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None:
        return Target(endpoint_id, "", ()), []
    problem = None
    signing: list[str] = []
    try:
        signing.append(box.decrypt_json(endpoint.secret_encrypted, "the webhook endpoint's secret"))
        previous = endpoint.previous_secret_encrypted
        if previous and endpoint.previous_secret_expires_at and endpoint.previous_secret_expires_at > now:
            signing.append(box.decrypt_json(previous, "the webhook endpoint's previous secret"))
    except Exception as exc:  # SecretUndecryptable: the messages wait for the right key
        problem = str(exc)
    bodies = dict(
        session.execute(
            select(WebhookMessage.id, WebhookMessage.body).where(WebhookMessage.id.in_([c.message_id for c in claims]))
        ).all()
    )
    outgoing = [Outgoing(c, bodies[c.message_id].encode()) for c in claims if c.message_id in bodies]
    return Target(endpoint.id, endpoint.url, tuple(signing), problem), outgoing


def renew_claims(session: Session, claims: Sequence[MessageClaim], lease_seconds: float, *, now: datetime) -> set[str]:
    """Extend the leases of the claims still held; returns their message ids (a claim not among them was lost)."""
    held: set[str] = set()
    by_token: dict[str, list[str]] = {}
    for claim in claims:
        by_token.setdefault(claim.claim_token, []).append(claim.message_id)
    for token, ids in by_token.items():
        held.update(
            session.scalars(
                update(WebhookMessage)
                .where(
                    WebhookMessage.id.in_(ids),
                    WebhookMessage.claim_token == token,
                    WebhookMessage.status == DeliveryStatus.DELIVERING,
                )
                .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
                .returning(WebhookMessage.id)
                .execution_options(synchronize_session=False)
            )
        )
    return held


def release_claims(
    session: Session, claims: Sequence[MessageClaim], *, now: datetime, due_at: datetime | None = None
) -> int:
    """Give back claims that were not sent (the worker is stopping, or the endpoint just failed): due again at
    `due_at` (default: at once), no attempt spent."""
    released = 0
    by_token: dict[str, list[str]] = {}
    for claim in claims:
        by_token.setdefault(claim.claim_token, []).append(claim.message_id)
    for token, ids in by_token.items():
        result = session.execute(
            update(WebhookMessage)
            .where(
                WebhookMessage.id.in_(ids),
                WebhookMessage.claim_token == token,
                WebhookMessage.status == DeliveryStatus.DELIVERING,
            )
            .values(
                # A message that failed before waits as retrying (its last error kept), a fresh one as pending.
                status=case(
                    (WebhookMessage.last_error.is_(None), DeliveryStatus.PENDING), else_=DeliveryStatus.RETRYING
                ),
                next_attempt_at=due_at or now,
                claim_token=None,
                lease_expires_at=None,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        released += int(result.rowcount or 0)  # type: ignore[attr-defined]
    return released


@dataclass(frozen=True)
class Answer:
    """What an endpoint did with one message: `ok` (a 2xx), else the error in words, the HTTP status if it
    answered, and its Retry-After."""

    ok: bool
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None


def record_answers(
    session: Session,
    endpoint_id: str,
    answers: Sequence[tuple[MessageClaim, Answer]],
    policy: RetryPolicy,
    *,
    now: datetime,
) -> datetime | None:
    """Record each claimed message's answer (claims no longer held are skipped): delivered, or retrying after its
    backoff. The endpoint's health follows the last answer: a 2xx clears its failures and its failing mark; a
    failure pauses the endpoint for a backoff that grows with its failures in a row (so one that is down gets a
    request per pause, not one per waiting event; give_up_on_old_messages follows). Returns until when the
    endpoint is paused (None: it is not)."""
    if not answers:
        return None
    # FOR NO KEY UPDATE: a delivery's transaction writing this endpoint's new messages (a foreign key's share
    # lock) is never held up by it.
    endpoint = session.get(WebhookEndpoint, endpoint_id, with_for_update={"key_share": True})
    if endpoint is None:
        return None
    rows = {
        m.id: m
        for m in session.scalars(
            select(WebhookMessage)
            .where(WebhookMessage.id.in_([claim.message_id for claim, _ in answers]))
            .with_for_update()
        )
    }
    last: Answer | None = None
    for claim, answer in answers:
        message = rows.get(claim.message_id)
        if message is None or message.claim_token != claim.claim_token:
            continue  # the lease ran out and another worker has it (or the endpoint was removed)
        last = answer
        message.attempts += 1
        message.claim_token = None
        message.lease_expires_at = None
        message.updated_at = now
        message.last_status = answer.status
        if answer.ok:
            message.status = DeliveryStatus.DELIVERED
            message.delivered_at = now
            message.next_attempt_at = None
            message.last_error = None
        else:
            message.status = DeliveryStatus.RETRYING
            message.last_error = _truncate(answer.error or "no answer")
            message.next_attempt_at = now + timedelta(seconds=policy.delay(message.attempts, answer.retry_after))
    if last is None:
        return None
    if last.ok:
        endpoint.last_success_at = now
        endpoint.failures_in_a_row = 0
        endpoint.paused_until = None
        endpoint.failing_since = None
        return None
    endpoint.last_failure_at = now
    endpoint.last_error = _truncate(last.error or "no answer")
    endpoint.failures_in_a_row += 1
    endpoint.paused_until = now + timedelta(seconds=policy.delay(endpoint.failures_in_a_row, last.retry_after))
    return endpoint.paused_until


def give_up_on_old_messages(session: Session, endpoint_id: str, retry_seconds: float, *, now: datetime) -> int:
    """The endpoint failed again (record_answers paused it): every message that has waited for it longer than the
    retry window fails (the endpoint was tried on their behalf all that time), and the endpoint is marked failing
    if any did. Call it after the round's unsent claims are given back. Returns how many."""
    endpoint = session.get(WebhookEndpoint, endpoint_id, with_for_update={"key_share": True})
    if endpoint is None:
        return 0
    result = session.execute(
        update(WebhookMessage)
        .where(
            WebhookMessage.endpoint_id == endpoint.id,
            WebhookMessage.status.in_((DeliveryStatus.PENDING, DeliveryStatus.RETRYING)),
            WebhookMessage.created_at <= now - timedelta(seconds=retry_seconds),
        )
        .values(
            status=DeliveryStatus.FAILED,
            next_attempt_at=None,
            updated_at=now,
            last_error=_truncate(
                f"gave up after a day of failures at the endpoint (its last error: {endpoint.last_error})"
            ),
        )
        .execution_options(synchronize_session=False)
    )
    given_up = int(result.rowcount or 0)  # type: ignore[attr-defined]
    if given_up and endpoint.failing_since is None:
        endpoint.failing_since = now
    return given_up


def _truncate(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "…"


# --- signing -----------------------------------------------------------------------------------------------


def message_header_id(message_id: str) -> str:
    return MESSAGE_ID_PREFIX + message_id


def signature(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """`v1,` and the base64 HMAC-SHA256 of `id.timestamp.body`, keyed with the secret's bytes (the base64 after
    `whsec_`), as the Standard Webhooks specification says."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secrets: Sequence[str], webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The request's headers: its id, when it is sent, and one signature per secret (space-separated)."""
    return {
        "Content-Type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(s, webhook_id, timestamp, body) for s in secrets),
    }
