"""Recording what an LMS answered for a claimed delivery: delivered, retry later with backoff, or failed; and
the connection's health that follows from it.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session

from adapters import DeliveryReceipt, causes
from adapters.base import AwaitingConfiguration, DeliveryError, PermanentDeliveryError, RetryableDeliveryError
from gateway.models import Delivery, DeliveryStatus, LmsConnection, Placement, utcnow
from gateway.services.outbox import Claim, claimed_row, newer_revision_id
from gateway.services.webhook_events import REPLACED_BY_NEWER, emit
from schemas.webhooks import WebhookEvent

MAX_ERROR_CHARS = 2000
SUCCESS_TOUCH_SECONDS = 5.0


class SuccessTouches:
    """When a worker last wrote each connection's `last_success_at`. Every worker would otherwise update the same
    connection row after every grade (a hot row): with this, a success is written at most every few seconds per
    worker; a failure always. Each delivery worker holds one."""

    def __init__(self, every_seconds: float = SUCCESS_TOUCH_SECONDS) -> None:
        self.every_seconds = every_seconds
        self._last: dict[str, datetime] = {}
        self._lock = threading.Lock()

    def due(self, connection_id: str, now: datetime) -> bool:
        """Whether a success at `now` is to be written (and, if so, noted as written)."""
        with self._lock:
            last = self._last.get(connection_id)
            if last is not None and (now - last).total_seconds() < self.every_seconds:
                return False
            self._last[connection_id] = now
            return True


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded tries, and the LMS's Retry-After honoured (up to a cap)."""

    base_seconds: float = 15.0
    max_seconds: float = 3600.0
    max_attempts: int = 15
    retry_after_max_seconds: float = 86400.0

    def delay(self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        # The exponent is bounded so a huge attempt number cannot overflow a float before the cap applies.
        exponential = min(self.max_seconds, self.base_seconds * 2.0 ** min(max(0, attempt - 1), 64))
        # "Equal jitter": at least half the backoff, so a burst of failures spreads out but never hammers.
        delay = exponential / 2 + (rng or random).uniform(0, exponential / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry_after_max_seconds))
        return delay


def _truncate(text: str | None) -> str | None:
    if text is None:
        return None
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "…"


def record_outcome(
    session: Session,
    claim: Claim,
    outcome: DeliveryReceipt | DeliveryError,
    policy: RetryPolicy,
    *,
    touch: bool = True,
    now: datetime | None = None,
    counted: bool = False,
) -> str | None:
    """Record a receipt or an error for one claimed delivery; returns the new status (None: claim lost).
    An outcome is an attempt: `counted` says one was counted already (when its first request went out), else
    it is counted here. `touch=False` leaves the connection's health to the caller (a batch touches it once);
    `now` is the caller's unit of work's time."""
    if isinstance(outcome, DeliveryError):
        return record_failure(session, claim, outcome, policy, touch=touch, now=now, counted=counted)
    delivered = record_success(session, claim, outcome, touch=touch, now=now, counted=counted)
    return DeliveryStatus.DELIVERED if delivered else None


def record_success(
    session: Session,
    claim: Claim,
    receipt: DeliveryReceipt,
    *,
    now: datetime | None = None,
    touch: bool = True,
    counted: bool = False,
) -> bool:
    """Mark the claimed delivery delivered (counting its attempt unless `counted`). Returns False if the claim
    was lost (another worker took over)."""
    now = now or utcnow()
    delivery = claimed_row(session, claim)
    if delivery is None:
        return False
    if not counted:
        delivery.attempts += 1
    delivery.status = DeliveryStatus.DELIVERED
    delivery.delivered_at = now
    delivery.updated_at = now
    delivery.next_attempt_at = None
    delivery.lease_expires_at = None
    delivery.claim_token = None
    delivery.last_error = None
    delivery.error_cause = None
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
    emit(session, WebhookEvent.DELIVERED, [delivery.id], now=now)
    return True


def record_successes(
    session: Session,
    receipts: list[tuple[Claim, DeliveryReceipt]],
    *,
    now: datetime | None = None,
    counted: Collection[str] = (),
) -> set[str]:
    """Mark many claimed deliveries delivered in one statement (a batch's receipts, none of which teach the
    placement anything), counting the attempt of those not in `counted` (delivery ids whose first request
    counted it). Returns the delivery ids still ours, which are the ones marked."""
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
            "b_uncounted": 0 if claim.delivery_id in counted else 1,
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
                error_cause=None,
                lms_status=bindparam("b_lms_status"),
                lms_response=bindparam("b_lms_response"),
                receipt=bindparam("b_receipt"),
                attempts=table.c.attempts + bindparam("b_uncounted"),
            ),
            rows,
        )
    delivered = {str(row["b_id"]) for row in rows}
    emit(session, WebhookEvent.DELIVERED, [c.delivery_id for c, _ in receipts if c.delivery_id in delivered], now=now)
    return delivered


def record_failure(
    session: Session,
    claim: Claim,
    error: DeliveryError,
    policy: RetryPolicy,
    *,
    now: datetime | None = None,
    rng: random.Random | None = None,
    touch: bool = True,
    counted: bool = False,
) -> str | None:
    """Record a failed attempt (counting it unless `counted`): retry later with backoff, or fail for good.
    Returns the new status."""
    now = now or utcnow()
    delivery = claimed_row(session, claim)
    if delivery is None:
        return None
    if not counted:
        delivery.attempts += 1
    delivery.claim_token = None
    delivery.lease_expires_at = None
    delivery.updated_at = now
    delivery.lms_status = error.lms_status
    delivery.lms_response = _truncate(error.lms_body)
    delivery.error_cause = error.cause
    event: WebhookEvent | None = None
    newer = newer_revision_id(session, delivery)
    if newer is not None:
        # A newer revision arrived while this one was in flight: it carries the grade now; retrying this one
        # could land the old score after the new one.
        delivery.status = DeliveryStatus.SUPERSEDED
        delivery.error_cause = causes.SUPERSEDED
        delivery.superseded_by = newer
        delivery.next_attempt_at = None
        delivery.last_error = _truncate(causes.readable(error.message))
        event = WebhookEvent.SUPERSEDED
    elif isinstance(error, AwaitingConfiguration):
        # Nothing was sent and only a person can change the outcome (a setting, a key): wait without spending
        # the attempts (the one counted above).
        delivery.attempts = max(0, delivery.attempts - 1)
        delivery.status = DeliveryStatus.RETRYING
        delivery.next_attempt_at = now + timedelta(seconds=min(error.wait_seconds, policy.max_seconds))
        delivery.last_error = _truncate(causes.readable(error.message))
    elif isinstance(error, RetryableDeliveryError) and delivery.attempts < policy.max_attempts:
        delay = policy.delay(delivery.attempts, error.retry_after, rng)
        delivery.status = DeliveryStatus.RETRYING
        delivery.next_attempt_at = now + timedelta(seconds=delay)
        delivery.last_error = _truncate(causes.readable(error.message))
        # Once per delivery: its first attempt failed and it will be tried again.
        event = WebhookEvent.RETRYING if delivery.attempts == 1 else None
    else:
        delivery.status = DeliveryStatus.FAILED
        delivery.next_attempt_at = None
        prefix = "" if isinstance(error, PermanentDeliveryError) else f"gave up after {delivery.attempts} attempts: "
        delivery.last_error = _truncate(prefix + causes.readable(error.message))
        event = WebhookEvent.FAILED
    if touch:
        touch_connection(session, delivery.lms_connection_id, error=error.message, now=now)
    if event is not None:
        reason = REPLACED_BY_NEWER if event is WebhookEvent.SUPERSEDED else None
        emit(session, event, [delivery.id], now=now, reason=reason)
    return delivery.status


def touch_connection(
    session: Session,
    connection_id: str | None,
    *,
    error: str | None,
    now: datetime | None = None,
    touches: SuccessTouches | None = None,
) -> None:
    """Keep the connection's health: when it last took a grade, and when and why it last refused one. With
    `touches` (a worker's), a success is written only when it is due."""
    if connection_id is None:
        return
    now = now or utcnow()
    if error is None and touches is not None and not touches.due(connection_id, now):
        return
    values: dict[str, Any] = (
        {"last_success_at": now}
        if error is None
        else {"last_failure_at": now, "last_failure": _truncate(causes.readable(error))}
    )
    session.execute(update(LmsConnection).where(LmsConnection.id == connection_id).values(**values))
