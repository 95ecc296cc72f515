"""LMS connections of a district and the placements of assignments in them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint, false, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from gateway.models.base import Base, created_column, id_column, utcnow


class LmsConnection(Base):
    """One LMS a district delivers to, through one adapter. Settings are stored encrypted as a whole."""

    __tablename__ = "lms_connections"
    __table_args__ = (UniqueConstraint("district_id", "name"),)

    id: Mapped[str] = id_column()
    district_id: Mapped[str] = mapped_column(ForeignKey("districts.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    adapter: Mapped[str] = mapped_column(String(40))
    settings_encrypted: Mapped[str] = mapped_column(Text)
    # How a launch finds its registration: "issuer|client_id" for LTI 1.3, the consumer key for LTI 1.1.
    registration_key: Mapped[str | None] = mapped_column(String(800), unique=True, default=None)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    # This LMS's own limits, where the installation's defaults (GATEWAY_CONNECTION_RATE / _CONCURRENCY) do not
    # fit: requests a second, and deliveries at once, across all workers.
    rate_limit: Mapped[float | None] = mapped_column(Float, default=None)
    concurrency_limit: Mapped[int | None] = mapped_column(Integer, default=None)
    created_at: Mapped[datetime] = created_column()
    last_success_at: Mapped[datetime | None] = mapped_column(default=None)
    last_failure_at: Mapped[datetime | None] = mapped_column(default=None)
    last_failure: Mapped[str | None] = mapped_column(Text, default=None)


UNLINKED = text("resource_link_id IS NULL")


class Placement(Base):
    """Where an assignment lives in an LMS: connection, course/section, and the adapter's destination data.

    One per LMS link (two links to one assignment in one course are two placements, each with its own line
    item), and at most one without a link (made by an operator or app) per course and assignment."""

    __tablename__ = "placements"
    __table_args__ = (
        UniqueConstraint(
            "lms_connection_id", "course_id", "assignment_id", "resource_link_id", name="uq_placements_link"
        ),
        Index(
            "uq_placements_unlinked",
            "lms_connection_id",
            "course_id",
            "assignment_id",
            unique=True,
            sqlite_where=UNLINKED,
            postgresql_where=UNLINKED,
        ),
        Index("ix_placements_assignment", "district_id", "assignment_id"),
        # `updatedSince` on GET /v1/placements.
        Index("ix_placements_district_updated", "district_id", "updated_at"),
    )

    id: Mapped[str] = id_column()
    district_id: Mapped[str] = mapped_column(ForeignKey("districts.id", ondelete="CASCADE"))
    lms_connection_id: Mapped[str] = mapped_column(ForeignKey("lms_connections.id", ondelete="CASCADE"))
    assignment_id: Mapped[str] = mapped_column(ForeignKey("assignments.id", ondelete="CASCADE"))
    course_id: Mapped[str] = mapped_column(String(255))
    section_id: Mapped[str | None] = mapped_column(String(255), default=None)
    title: Mapped[str | None] = mapped_column(String(500), default=None)
    # The LMS's link id (LTI resource_link.id), so a launch finds its placement again; None when made by hand.
    resource_link_id: Mapped[str | None] = mapped_column(String(255), default=None, index=True)
    destination: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # While a worker looks up or creates the placement's destination (an AGS line item), others wait, so two
    # concurrent deliveries cannot create two line items.
    discovery_lease_until: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = created_column()
    # A change of where the placement points (its link, title, section or destination); the discovery lease
    # above is a worker's bookkeeping and leaves it alone (gateway/services/discovery_lease.py).
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    lms_connection: Mapped[LmsConnection] = relationship(lazy="joined", innerjoin=True)


class PlacementApproval(Base):
    """A column the district lets one app write into through POST /v1/placements: one LMS assignment of a section
    (Schoology), or every assignment of the section when `lms_assignment_id` is None."""

    __tablename__ = "placement_approvals"
    __table_args__ = (Index("ix_placement_approvals_lookup", "lms_connection_id", "app_id", "section_id"),)

    id: Mapped[str] = id_column()
    district_id: Mapped[str] = mapped_column(ForeignKey("districts.id", ondelete="CASCADE"), index=True)
    lms_connection_id: Mapped[str] = mapped_column(ForeignKey("lms_connections.id", ondelete="CASCADE"))
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    section_id: Mapped[str] = mapped_column(String(255))
    lms_assignment_id: Mapped[str | None] = mapped_column(String(255), default=None)
    # Who approved (a staff email, or "cli"), for the audit trail.
    approved_by: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime] = created_column()


class LaunchDestination(Base):
    """What one student's launch of one link taught Passback about where their grade goes (LTI 1.1's
    lis_result_sourcedid, which differs per student and per link and is only learned at launch)."""

    __tablename__ = "launch_destinations"
    __table_args__ = (UniqueConstraint("placement_id", "user_id"),)

    id: Mapped[str] = id_column()
    district_id: Mapped[str] = mapped_column(ForeignKey("districts.id", ondelete="CASCADE"), index=True)
    placement_id: Mapped[str] = mapped_column(ForeignKey("placements.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Recorded before a placement was one link (migration 0008): the user launched *some* link of the
    # assignment in the course, maybe not this placement's; it stops counting once they launch another one.
    link_unknown: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    updated_at: Mapped[datetime] = created_column()
