"""An app's assignments, and the cached copy of a pulled catalog."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from gateway.models.base import Base, created_column, id_column, utcnow

DEFAULT_SCORE_MAXIMUM = 100.0


class Assignment(Base):
    """One assignment of one app; `external_id` is the id the app chose (its `assignmentID`)."""

    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("app_id", "external_id"),)

    id: Mapped[str] = id_column()
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    external_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(500))
    description: Mapped[str | None] = mapped_column(Text, default=None)
    standards: Mapped[list[Any]] = mapped_column(default=list)
    score_maximum: Mapped[float] = mapped_column(Float, default=DEFAULT_SCORE_MAXIMUM)
    archived: Mapped[bool] = mapped_column(Boolean, default=False)
    # "push" when the app sent it, "pull" when it came from the app's catalog URL.
    source: Mapped[str] = mapped_column(String(10), default="push")
    created_at: Mapped[datetime] = created_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class CatalogSnapshot(Base):
    """The last good answer of an app's catalog URL for one audience (a teacher, or the whole district),
    served from cache while fresh and when a later pull fails."""

    __tablename__ = "catalog_snapshots"
    __table_args__ = (UniqueConstraint("app_id", "district_id", "audience"),)

    id: Mapped[str] = id_column()
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    district_id: Mapped[str] = mapped_column(ForeignKey("districts.id", ondelete="CASCADE"))
    # A user id (the teacher the picker asks for) or "district".
    audience: Mapped[str] = mapped_column(String(24))
    assignments: Mapped[list[Any]] = mapped_column(default=list)
    problems: Mapped[list[Any]] = mapped_column(default=list)
    # When the last good copy was fetched; None until one pull has succeeded.
    fetched_at: Mapped[datetime | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    last_error_at: Mapped[datetime | None] = mapped_column(default=None)
