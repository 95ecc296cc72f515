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
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Exists,
    Table,
    and_,
    bindparam,
    case,
    exists,
    func,
    literal_column,
    or_,
    select,
    update,
)
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


def _unsent(column: Any) -> ColumnElement[bool]:
    """`status IN ('pending', 'retrying', 'delivering')` written out, not bound: PostgreSQL then sees that the
    partial indexes on unsent messages apply, in a prepared statement's generic plan too."""
    return cast(ColumnElement[bool], column.in_([literal_column(f"'{status.value}'") for status in UNSENT]))


_MESSAGES = cast(Table, WebhookMessage.__table__)


@dataclass(frozen=True)
class MessageClaim:
    message_id: str
    claim_token: str


@dataclass(frozen=True)
class Outgoing:
    """A claimed message and the bytes to send (signed as they are)."""

    claim: MessageClaim
    body: bytes


def claimable(now: datetime) -> ColumnElement[bool]:
    """Due (pending or retrying, its time reached), or claimed by a worker whose lease ran out. A message keeps
    its due time while claimed, and has none once delivered or given up on."""
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
        _unsent(earlier.status),
    )


def _open(now: datetime) -> ColumnElement[bool]:
    """The endpoint takes requests now: enabled, and not paused after a failure."""
    return and_(
        WebhookEndpoint.disabled.is_(False),
        or_(WebhookEndpoint.paused_until.is_(None), WebhookEndpoint.paused_until <= now),
    )


def due_endpoints(session: Session, *, limit: int, now: datetime, exclude: Collection[str] = ()) -> list[str]:
    """Endpoints (enabled, not paused) with messages to send now, leaving out `exclude` (being served), the one
    that took a message least recently first. One index probe per endpoint, however many messages wait."""
    due = exists().where(
        WebhookMessage.endpoint_id == WebhookEndpoint.id,
        WebhookMessage.next_attempt_at <= now,
        claimable(now),
    )
    query = (
        select(WebhookEndpoint.id)
        .where(_open(now), due)
        .order_by(func.coalesce(WebhookEndpoint.last_success_at, WebhookEndpoint.created_at), WebhookEndpoint.id)
        .limit(limit)
    )
    if exclude:
        query = query.where(WebhookEndpoint.id.not_in(list(exclude)))
    return list(session.scalars(query))


def claim_messages(
    session: Session, endpoint_id: str, *, limit: int, lease_seconds: float, now: datetime
) -> list[Outgoing]:
    """Claim up to `limit` due messages of one endpoint (enabled, not paused) until the lease expires, the longest
    due first, with their bodies. A message is not claimed while an earlier message of the same grade to the same
    endpoint is still unsent (waiting, retrying or in flight), so an endpoint hears a grade's events in the order
    they happened. One statement: an UPDATE of the rows a locking subquery picked, returning what is sent."""
    enabled = exists().where(WebhookEndpoint.id == WebhookMessage.endpoint_id, _open(now))
    picked = (
        select(WebhookMessage.seq)
        .where(
            WebhookMessage.endpoint_id == endpoint_id,
            # Only unsent messages have a next attempt (a claimed one keeps the time it was due): the range of the
            # (endpoint, next attempt) index, however many sent messages are kept.
            WebhookMessage.next_attempt_at <= now,
            claimable(now),
            ~_blocked(),
            enabled,
        )
        # Due time alone: the (endpoint, next attempt) index gives it without a sort; a grade's messages keep their
        # order through the check above, not this one.
        .order_by(WebhookMessage.next_attempt_at)
        .limit(limit)
        # PostgreSQL: pass over rows another worker is claiming; SQLite has one writer at a time.
        .with_for_update(skip_locked=True, of=WebhookMessage)
        .scalar_subquery()
    )
    token = secrets.token_hex(16)
    won = session.execute(
        update(WebhookMessage)
        .where(WebhookMessage.seq.in_(picked))
        .values(
            status=DeliveryStatus.DELIVERING,
            claim_token=token,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            updated_at=now,
        )
        .returning(WebhookMessage.seq, WebhookMessage.id, WebhookMessage.body)
        .execution_options(synchronize_session=False)
    ).all()
    return [Outgoing(MessageClaim(message_id, token), body.encode()) for _, message_id, body in sorted(won)]


@dataclass(frozen=True)
class Target:
    """Where and how one endpoint's messages are sent: its URL and the secrets that sign (the current one, and
    the previous one while a rotation's overlap lasts)."""

    endpoint_id: str
    url: str
    secrets: tuple[str, ...]
    # Set when the secret cannot be decrypted with the configured keys: nothing is sent, the messages wait.
    problem: str | None = None


def load_target(session: Session, box: SecretBox, endpoint_id: str, *, now: datetime) -> Target:
    """Where the endpoint's messages go and the secrets that sign them (none: the endpoint was removed)."""
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None:
        return Target(endpoint_id, "", ())
    problem = None
    signing: list[str] = []
    try:
        signing.append(box.decrypt_json(endpoint.secret_encrypted, "the webhook endpoint's secret"))
        previous = endpoint.previous_secret_encrypted
        if previous and endpoint.previous_secret_expires_at and endpoint.previous_secret_expires_at > now:
            signing.append(box.decrypt_json(previous, "the webhook endpoint's previous secret"))
    except Exception as exc:  # SecretUndecryptable: the messages wait for the right key
        problem = str(exc)
    return Target(endpoint.id, endpoint.url, tuple(signing), problem)


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
    held = {
        message_id: (attempts, token)
        for message_id, attempts, token in session.execute(
            select(WebhookMessage.id, WebhookMessage.attempts, WebhookMessage.claim_token)
            .where(WebhookMessage.id.in_([claim.message_id for claim, _ in answers]))
            .with_for_update()
        )
    }
    last: Answer | None = None
    rows: list[dict[str, Any]] = []
    for claim, answer in answers:
        attempts, token = held.get(claim.message_id, (0, None))
        if token != claim.claim_token:
            continue  # the lease ran out and another worker has it (or the endpoint was removed)
        last = answer
        attempts += 1
        retry_at = None if answer.ok else now + timedelta(seconds=policy.delay(attempts, answer.retry_after))
        rows.append(
            {
                "m_id": claim.message_id,
                "m_token": token,
                "m_status": DeliveryStatus.DELIVERED if answer.ok else DeliveryStatus.RETRYING,
                "m_attempts": attempts,
                "m_next": retry_at,
                "m_error": None if answer.ok else _truncate(answer.error or "no answer"),
                "m_http": answer.status,
                "m_delivered": now if answer.ok else None,
            }
        )
    if rows:
        # One executemany for the round, like an LMS round's successes (outcomes.record_successes).
        session.execute(
            update(_MESSAGES)
            .where(_MESSAGES.c.id == bindparam("m_id"), _MESSAGES.c.claim_token == bindparam("m_token"))
            .values(
                status=bindparam("m_status"),
                attempts=bindparam("m_attempts"),
                next_attempt_at=bindparam("m_next"),
                last_error=bindparam("m_error"),
                last_status=bindparam("m_http"),
                delivered_at=bindparam("m_delivered"),
                claim_token=None,
                lease_expires_at=None,
                updated_at=now,
            ),
            rows,
        )
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
