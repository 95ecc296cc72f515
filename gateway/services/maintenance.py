"""Housekeeping: drop one-time records once they can no longer matter."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.orm import Session

from gateway.models import (
    ApiToken,
    AuthorizationCode,
    DeepLinkSession,
    IdempotencyRecord,
    LaunchState,
    UsedNonce,
    WebhookMessage,
    utcnow,
)
from schemas.statuses import DeliveryStatus

CATALOG_PULL_LABEL = "catalog pull"
# Webhook messages delivered or given up on are kept this long (for the app's and staff's questions), then dropped.
WEBHOOK_RETENTION_SECONDS = 30 * 86400.0


@dataclass
class Purged:
    nonces: int = 0
    launch_states: int = 0
    codes: int = 0
    pickers: int = 0
    idempotency_keys: int = 0
    pull_tokens: int = 0
    webhook_messages: int = 0


def purge_expired(
    session: Session,
    *,
    idempotency_ttl_seconds: float,
    webhook_retention_seconds: float = WEBHOOK_RETENTION_SECONDS,
    now: datetime | None = None,
) -> Purged:
    """Delete used nonces, OIDC states, sign-in codes and pickers past their expiry, idempotency records past
    their TTL, expired catalog-pull tokens, and webhook messages delivered or given up on longer ago than their
    retention. Grades, deliveries, messages still to send and audit-worthy tokens are never touched."""
    now = now or utcnow()

    def count(statement: object) -> int:
        return int(session.execute(statement).rowcount or 0)  # type: ignore[call-overload]

    return Purged(
        nonces=count(delete(UsedNonce).where(UsedNonce.expires_at < now)),
        launch_states=count(delete(LaunchState).where(LaunchState.expires_at < now)),
        codes=count(delete(AuthorizationCode).where(AuthorizationCode.expires_at < now)),
        pickers=count(delete(DeepLinkSession).where(DeepLinkSession.expires_at < now)),
        idempotency_keys=count(
            delete(IdempotencyRecord).where(
                IdempotencyRecord.created_at < now - timedelta(seconds=idempotency_ttl_seconds)
            )
        ),
        pull_tokens=count(delete(ApiToken).where(ApiToken.label == CATALOG_PULL_LABEL, ApiToken.expires_at < now)),
        webhook_messages=count(
            delete(WebhookMessage).where(
                WebhookMessage.status.in_((DeliveryStatus.DELIVERED, DeliveryStatus.FAILED)),
                WebhookMessage.updated_at < now - timedelta(seconds=webhook_retention_seconds),
            )
        ),
    )
