"""Grades, their history, the delivery outbox and idempotency records."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.expression import true

from gateway.models.base import Base, created_column, id_column, utcnow
from schemas.statuses import DeliveryStatus


class Grade(Base):
    """The current grade of one user on one assignment of one app in one district; a new post overwrites it."""

    __tablename__ = "grades"
    __table_args__ = (
        UniqueConstraint("district_id", "app_id", "assignment_id", "user_id"),
        Index("ix_grades_district_created", "district_id", "created_at", "id"),
        # `updatedSince` on GET /v1/grades.
        Index("ix_grades_district_updated", "district_id", "updated_at"),
    )

    id: Mapped[str] = id_column()
    district_id: Mapped[str] = mapped_column(ForeignKey("districts.id", ondelete="CASCADE"))
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    assignment_id: Mapped[str] = mapped_column(ForeignKey("assignments.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    revision: Mapped[int] = mapped_column(Integer, default=1)
    # What the app sent: "percentage" or "score".
    input_form: Mapped[str] = mapped_column(String(10))
    percentage: Mapped[float | None] = mapped_column(Float, default=None)
    # The normalized form: a fraction (may exceed 1 for extra credit) and a score pair.
    fraction: Mapped[float] = mapped_column(Float)
    score_given: Mapped[float] = mapped_column(Float)
    score_maximum: Mapped[float] = mapped_column(Float)
    comment: Mapped[str | None] = mapped_column(Text, default=None)
    context: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    activity_progress: Mapped[str] = mapped_column(String(20))
    grading_progress: Mapped[str] = mapped_column(String(20))
    # With a gradingProgress the LMS does not count: keep the score it holds (True) or clear it (False).
    preserve_score: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    timestamp: Mapped[datetime] = mapped_column()
    created_at: Mapped[datetime] = created_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set by DELETE /v1/grades/{id}: the grade is cleared in the LMSs that support it; a new post revives it.
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)
    # The student key the current revision was posted with ({"sisID": "…"}); NULL before migration 0014.
    student_key: Mapped[dict[str, Any] | None] = mapped_column(default=None)


class GradeRevision(Base):
    """Every accepted version of a grade, oldest first; deliveries point at the revision they carry."""

    __tablename__ = "grade_revisions"
    __table_args__ = (UniqueConstraint("grade_id", "revision"),)

    id: Mapped[str] = id_column()
    district_id: Mapped[str] = mapped_column(ForeignKey("districts.id", ondelete="CASCADE"), index=True)
    grade_id: Mapped[str] = mapped_column(ForeignKey("grades.id", ondelete="CASCADE"))
    revision: Mapped[int] = mapped_column(Integer)
    input_form: Mapped[str] = mapped_column(String(10))
    percentage: Mapped[float | None] = mapped_column(Float, default=None)
    fraction: Mapped[float] = mapped_column(Float)
    score_given: Mapped[float] = mapped_column(Float)
    score_maximum: Mapped[float] = mapped_column(Float)
    comment: Mapped[str | None] = mapped_column(Text, default=None)
    context: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    activity_progress: Mapped[str] = mapped_column(String(20))
    grading_progress: Mapped[str] = mapped_column(String(20))
    preserve_score: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    timestamp: Mapped[datetime] = mapped_column()
    token_id: Mapped[str | None] = mapped_column(String(24), default=None)
    received_at: Mapped[datetime] = created_column()
    # The student key this revision was posted with, as the app sent it.
    student_key: Mapped[dict[str, Any] | None] = mapped_column(default=None)


# Statuses a newer revision replaces; a delivery in flight ("delivering") finishes on its own.
SUPERSEDABLE = (
    DeliveryStatus.PENDING,
    DeliveryStatus.RETRYING,
    DeliveryStatus.FAILED,
    DeliveryStatus.AWAITING_LAUNCH,
    DeliveryStatus.UNROUTABLE,
)


class Delivery(Base):
    """The outbox: one row per grade revision and destination (placement), written with the grade."""

    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_due", "status", "next_attempt_at"),
        Index("ix_deliveries_grade", "grade_id", "placement_id"),
        Index("ix_deliveries_revision", "revision_id"),
        Index("ix_deliveries_district_status", "district_id", "status", "updated_at"),
        # The dashboard's time windows and newest-first lists.
        Index("ix_deliveries_district_created", "district_id", "created_at"),
        Index("ix_deliveries_district_updated", "district_id", "updated_at"),
        # The dashboard's counts by placement (and so by assignment, app and connection): a covering index, so
        # counting a district's deliveries reads the index alone; also a placement's student list.
        Index("ix_deliveries_district_placement", "district_id", "placement_id", "status", "operation"),
        # The dashboard's problems grouped by cause and connection (a covering index: delivered rows have no
        # cause, so they are never read), and its list filtered by cause.
        Index("ix_deliveries_district_cause", "district_id", "error_cause", "lms_connection_id", "status"),
    )

    id: Mapped[str] = id_column()
    district_id: Mapped[str] = mapped_column(ForeignKey("districts.id", ondelete="CASCADE"))
    grade_id: Mapped[str] = mapped_column(ForeignKey("grades.id", ondelete="CASCADE"))
    revision_id: Mapped[str] = mapped_column(ForeignKey("grade_revisions.id", ondelete="CASCADE"))
    placement_id: Mapped[str | None] = mapped_column(ForeignKey("placements.id", ondelete="SET NULL"), default=None)
    lms_connection_id: Mapped[str | None] = mapped_column(
        ForeignKey("lms_connections.id", ondelete="SET NULL"), default=None
    )
    # "replace" sends the revision's score; "delete" clears the student's grade in the LMS.
    operation: Mapped[str] = mapped_column(String(10), default="replace", server_default="replace")
    status: Mapped[str] = mapped_column(String(20), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=utcnow)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    claim_token: Mapped[str | None] = mapped_column(String(32), default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    # The catalogued cause of `last_error` (adapters/causes.py): what went wrong in plain words and what to do.
    error_cause: Mapped[str | None] = mapped_column(String(40), default=None)
    lms_status: Mapped[int | None] = mapped_column(Integer, default=None)
    lms_response: Mapped[str | None] = mapped_column(Text, default=None)
    receipt: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    superseded_by: Mapped[str | None] = mapped_column(String(24), default=None)
    created_at: Mapped[datetime] = created_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)


class IdempotencyRecord(Base):
    """A remembered answer to a request that carried an Idempotency-Key, scoped to the district, the app and
    (for a user token) the user."""

    __tablename__ = "idempotency_records"
    __table_args__ = (UniqueConstraint("district_id", "app_id", "scope", "key"),)

    id: Mapped[str] = id_column()
    district_id: Mapped[str] = mapped_column(ForeignKey("districts.id", ondelete="CASCADE"))
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    # The user id of a user token's key, "" for the district-app token's.
    scope: Mapped[str] = mapped_column(String(24), default="", server_default="")
    key: Mapped[str] = mapped_column(String(255))
    request_fingerprint: Mapped[str] = mapped_column(String(64))
    response_status: Mapped[int] = mapped_column(Integer)
    # POST /v1/grade's answer (no secret in it), in the clear ...
    response_body: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    response_location: Mapped[str | None] = mapped_column(Text, default=None)
    # ... every other operation's, encrypted with the secret box (body and headers): some show a secret once.
    response_sealed: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = created_column()
