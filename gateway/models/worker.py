"""Delivery workers' heartbeats: each running worker (embedded thread, `gateway worker`, Celery worker) keeps
one row fresh, so /readyz can tell whether anything is delivering."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from gateway.models.base import Base


class WorkerHeartbeat(Base):
    __tablename__ = "worker_heartbeats"

    # host:pid:kind, one row per worker process (a restarted worker writes a new row; old rows are purged).
    worker: Mapped[str] = mapped_column(String(255), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    started_at: Mapped[datetime] = mapped_column()
    beat_at: Mapped[datetime] = mapped_column(index=True)
