"""Alerts to district staff: each district's alert settings, and the alert outbox (one row per alert decided,
written in the transaction of the decision, sent after it commits)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, false
from sqlalchemy.orm import Mapped, mapped_column

from gateway.models.base import Base, created_column, id_column, utcnow

DEFAULT_FAILURE_THRESHOLD = 10
DEFAULT_PERIOD_SECONDS = 3600


class AlertSettings(Base):
    """Who hears about a district's LMS connections in trouble, and when. No row: no alerts."""

    __tablename__ = "alert_settings"

    district_id: Mapped[str] = mapped_column(ForeignKey("districts.id", ondelete="CASCADE"), primary_key=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # E-mail addresses; empty: the district's staff accounts at the time of each alert.
    recipients: Mapped[list[Any]] = mapped_column(default=list)
    webhook_url: Mapped[str | None] = mapped_column(Text, default=None)
    # The webhook's signing secret (whsec_…), encrypted with the installation's keys.
    webhook_secret_encrypted: Mapped[str | None] = mapped_column(Text, default=None)
    # This many failed deliveries of one connection within the period raise a "failures" alert.
    failure_threshold: Mapped[int] = mapped_column(Integer, default=DEFAULT_FAILURE_THRESHOLD)
    # At most one alert of each kind per connection per period; also the window failures are counted in.
    period_seconds: Mapped[int] = mapped_column(Integer, default=DEFAULT_PERIOD_SECONDS)
    # Written by each evaluation first: the row lock that makes concurrent evaluations of a district take turns.
    evaluated_at: Mapped[datetime | None] = mapped_column(default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Alert(Base):
    """One alert about one connection, as decided; `status` pending until sent (or given up on: failed)."""

    __tablename__ = "alerts"
    __table_args__ = (
        Index("ix_alerts_connection_kind_created", "lms_connection_id", "kind", "created_at"),
        Index("ix_alerts_district_created", "district_id", "created_at"),
        Index("ix_alerts_status_next", "status", "next_attempt_at"),
    )

    id: Mapped[str] = id_column()
    district_id: Mapped[str] = mapped_column(ForeignKey("districts.id", ondelete="CASCADE"))
    lms_connection_id: Mapped[str] = mapped_column(ForeignKey("lms_connections.id", ondelete="CASCADE"))
    # "unhealthy" (the connection's last attempt failed) or "failures" (the threshold was reached).
    kind: Mapped[str] = mapped_column(String(20))
    failures: Mapped[int] = mapped_column(Integer, default=0)
    threshold: Mapped[int] = mapped_column(Integer, default=0)
    period_seconds: Mapped[int] = mapped_column(Integer, default=DEFAULT_PERIOD_SECONDS)
    cause: Mapped[str] = mapped_column(Text, default="")
    # Where it goes, fixed when decided: the e-mail addresses and the webhook URL of that moment.
    recipients: Mapped[list[Any]] = mapped_column(default=list)
    webhook_url: Mapped[str | None] = mapped_column(Text, default=None)
    # Per channel ("email", "webhook"): "sent", or the last error; a retry sends only what is not sent yet.
    channels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
    # A sender holds the alert until then; another takes it over after (a sender that died).
    lease_until: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = created_column()
    sent_at: Mapped[datetime | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
