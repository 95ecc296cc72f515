"""Housekeeping: drop one-time records once they can no longer matter."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, exists, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from gateway.models import (
    ApiToken,
    AuthorizationCode,
    DeepLinkSession,
    Delivery,
    Grade,
    GradeRevision,
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
    # Retention (GATEWAY_RETENTION_DAYS): grade history past it, and the LMS answers kept on current deliveries.
    deliveries: int = 0
    grade_revisions: int = 0
    lms_answers_cleared: int = 0


# Deliveries that are done: history once a newer revision exists, and fit for purging after the retention period.
FINISHED = (DeliveryStatus.DELIVERED, DeliveryStatus.FAILED, DeliveryStatus.SUPERSEDED)


def purge_expired(
    session: Session,
    *,
    idempotency_ttl_seconds: float,
    webhook_retention_seconds: float = WEBHOOK_RETENTION_SECONDS,
    retention_days: int = 0,
    now: datetime | None = None,
) -> Purged:
    """Delete used nonces, OIDC states, sign-in codes and pickers past their expiry, idempotency records past
    their TTL, expired catalog-pull tokens, and webhook messages delivered or given up on longer ago than their
    retention. With `retention_days` (> 0), also the grade history older than that (docs/privacy.md,
    "Retention"). Current grades, deliveries still to make, messages still to send and audit-worthy tokens are
    never touched."""
    now = now or utcnow()

    def count(statement: object) -> int:
        return int(session.execute(statement).rowcount or 0)  # type: ignore[call-overload]

    purged = Purged(
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
    if retention_days > 0:
        cutoff = now - timedelta(days=retention_days)
        purged.deliveries = count(delete(Delivery).where(*_old_history(cutoff)))
        purged.grade_revisions = count(delete(GradeRevision).where(*_old_revisions(cutoff)))
        purged.lms_answers_cleared = count(
            update(Delivery)
            .where(
                Delivery.status.in_((DeliveryStatus.DELIVERED, DeliveryStatus.FAILED)),
                Delivery.updated_at < cutoff,
                or_(Delivery.lms_response.is_not(None), Delivery.last_error.is_not(None)),
            )
            .values(lms_response=None, last_error=None)
            .execution_options(synchronize_session=False)
        )
    return purged


def _old_history(cutoff: datetime) -> tuple[ColumnElement[bool], ...]:
    """Finished deliveries last changed before `cutoff` that carry a revision other than their grade's current one
    (the current revision's deliveries make the grade's status, so they stay)."""
    current = exists().where(
        GradeRevision.id == Delivery.revision_id,
        Grade.id == GradeRevision.grade_id,
        Grade.revision == GradeRevision.revision,
    )
    return (Delivery.status.in_(FINISHED), Delivery.updated_at < cutoff, ~current)


def _old_revisions(cutoff: datetime) -> tuple[ColumnElement[bool], ...]:
    """Revisions received before `cutoff`, older than their grade's current one, that no delivery points at."""
    current_number = select(Grade.revision).where(Grade.id == GradeRevision.grade_id).scalar_subquery()
    return (
        GradeRevision.received_at < cutoff,
        GradeRevision.revision < current_number,
        ~exists().where(Delivery.revision_id == GradeRevision.id),
    )
