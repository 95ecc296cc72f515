"""Webhook endpoints an app registers in a district, the events each one hears, and the webhook outbox: one
message per event and endpoint, written in the transaction of the change it reports."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, false, text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.models.base import Base, created_column, id_column, new_id, utcnow
from schemas.statuses import DeliveryStatus

# SQLite numbers rows itself only for an INTEGER primary key; PostgreSQL gets a 64-bit sequence.
SEQUENCE_TYPE = BigInteger().with_variant(Integer(), "sqlite")
# Messages not yet delivered nor given up on: the ordering check's index holds only these.
UNSENT = text("status IN ('pending', 'retrying', 'delivering')")


class WebhookEndpoint(Base):
    """A URL an app asked Passback to call with the events of its grades in one district."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_district_app", "district_id", "app_id"),)

    id: Mapped[str] = id_column()
    district_id: Mapped[str] = mapped_column(ForeignKey("districts.id", ondelete="CASCADE"))
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(Text)
    # The signing secret (whsec_…), encrypted with the installation's keys: Passback must sign with it again.
    secret_encrypted: Mapped[str] = mapped_column(Text)
    # After a rotation the old secret signs too, until this time, so a receiver can switch without losing one.
    previous_secret_encrypted: Mapped[str | None] = mapped_column(Text, default=None)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Who disabled it ("app", or "staff" with the staff member's email in the audit log) and when.
    disabled_by: Mapped[str | None] = mapped_column(String(20), default=None)
    disabled_at: Mapped[datetime | None] = mapped_column(default=None)
    # Set when a message was given up on after the retry window; cleared by the next message it takes.
    failing_since: Mapped[datetime | None] = mapped_column(default=None)
    # After a failed request nothing more is sent to the endpoint until this time (backoff per failure in a row),
    # so an endpoint that is down costs one request per backoff, not one per waiting event.
    failures_in_a_row: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    paused_until: Mapped[datetime | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    last_failure_at: Mapped[datetime | None] = mapped_column(default=None)
    last_success_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = created_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookSubscription(Base):
    """One event type an endpoint hears (a row each, so the outbox insert can join on it)."""

    __tablename__ = "webhook_subscriptions"

    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), primary_key=True)
    event: Mapped[str] = mapped_column(String(40), primary_key=True)


class WebhookMessage(Base):
    """The webhook outbox: one event for one endpoint, its signed body fixed when the event happened, and its
    delivery state (claimed under a lease like an LMS delivery, retried with backoff within a window)."""

    __tablename__ = "webhook_messages"
    __table_args__ = (
        # An endpoint's messages by due time: only unsent ones have one, so claims and "which endpoints have work"
        # read a range of it, however many sent messages are kept.
        Index("ix_webhook_messages_endpoint_due", "endpoint_id", "next_attempt_at"),
        # Whether an earlier message of the same grade to the same endpoint is unsent (it goes first).
        Index(
            "ix_webhook_messages_unsent_grade",
            "endpoint_id",
            "grade_id",
            "seq",
            sqlite_where=UNSENT,
            postgresql_where=UNSENT,
        ),
        # Housekeeping: messages delivered or given up on long ago.
        Index("ix_webhook_messages_status_updated", "status", "updated_at"),
    )

    # The order messages were written in: a grade's events reach an endpoint in this order.
    seq: Mapped[int] = mapped_column(SEQUENCE_TYPE, primary_key=True, autoincrement=True)
    # The webhook-id header (with a msg_ prefix): the same on every attempt, so a receiver can drop repeats.
    id: Mapped[str] = mapped_column(String(24), unique=True, default=new_id)
    district_id: Mapped[str] = mapped_column(ForeignKey("districts.id", ondelete="CASCADE"), index=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(40))
    grade_id: Mapped[str] = mapped_column(String(24))
    delivery_id: Mapped[str | None] = mapped_column(String(24), default=None)
    # The JSON sent, byte for byte on every attempt (the signature covers it).
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=utcnow)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    claim_token: Mapped[str | None] = mapped_column(String(32), default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    # The HTTP status the endpoint last answered (None: no answer).
    last_status: Mapped[int | None] = mapped_column(Integer, default=None)
    created_at: Mapped[datetime] = created_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)
