"""The sandbox LMS's own tables: its gradebook and the faults an operator or test asks it to inject."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from gateway.models.base import Base, id_column, utcnow


class SandboxGradebookEntry(Base):
    __tablename__ = "sandbox_gradebook"
    __table_args__ = (UniqueConstraint("gradebook", "course_id", "item_id", "student_id"),)

    id: Mapped[str] = id_column()
    # The sandbox LMS instance (one per sandbox connection); not a foreign key: it is the LMS's own data.
    gradebook: Mapped[str] = mapped_column(String(64), index=True)
    course_id: Mapped[str] = mapped_column(String(255))
    item_id: Mapped[str] = mapped_column(String(255))
    student_id: Mapped[str] = mapped_column(String(255))
    score_given: Mapped[float] = mapped_column(Float)
    score_maximum: Mapped[float] = mapped_column(Float)
    comment: Mapped[str | None] = mapped_column(Text, default=None)
    activity_progress: Mapped[str | None] = mapped_column(String(20), default=None)
    grading_progress: Mapped[str | None] = mapped_column(String(20), default=None)
    timestamp: Mapped[datetime] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    writes: Mapped[int] = mapped_column(Integer, default=1)


class SandboxFault(Base):
    """Make the sandbox LMS answer the next `remaining` grade writes with `status` (e.g. 503), after holding each
    one `hang_seconds` when set (an LMS that hangs: the gateway's request deadline cuts it first)."""

    __tablename__ = "sandbox_faults"

    gradebook: Mapped[str] = mapped_column(String(64), primary_key=True)
    remaining: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[int] = mapped_column(Integer, default=503)
    message: Mapped[str] = mapped_column(Text, default="sandbox LMS is unavailable (injected fault)")
    retry_after: Mapped[int | None] = mapped_column(Integer, default=None)
    hang_seconds: Mapped[int | None] = mapped_column(Integer, default=None)
