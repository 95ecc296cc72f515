"""Workers' heartbeats and the readiness they give /readyz: whether the database answers and whether some
delivery worker (embedded thread, `gateway worker`, Celery worker) has recorded a heartbeat recently."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from gateway.db import Database
from gateway.models import WorkerHeartbeat

# Rows of workers gone this long are deleted (a restarted worker has a new pid, hence a new row).
FORGET_AFTER = timedelta(days=1)


def worker_name(role: str) -> str:
    """This process's worker: one row per host, process and role."""
    return f"{socket.gethostname()}:{os.getpid()}:{role}"


def record_heartbeat(session: Session, worker: str, role: str, *, started_at: datetime, now: datetime) -> None:
    """Keep `worker`'s row fresh (only that worker writes it), and forget workers gone for a day."""
    row = session.get(WorkerHeartbeat, worker)
    if row is None:
        session.add(WorkerHeartbeat(worker=worker, kind=role, started_at=started_at, beat_at=now))
        session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.beat_at < now - FORGET_AFTER))
    else:
        row.beat_at = now


@dataclass(frozen=True)
class Readiness:
    database_reachable: bool
    worker_required: bool
    # Seconds since the newest heartbeat of any worker; None: none recorded (or the database is unreachable).
    heartbeat_age: float | None
    max_heartbeat_age: float
    live_workers: int

    @property
    def ready(self) -> bool:
        if not self.database_reachable:
            return False
        if not self.worker_required:
            return True
        return self.heartbeat_age is not None and self.heartbeat_age <= self.max_heartbeat_age

    def as_json(self) -> dict[str, Any]:
        return {
            "status": "ready" if self.ready else "unavailable",
            "database": {"reachable": self.database_reachable},
            "worker": {
                "required": self.worker_required,
                "lastHeartbeatAgeSeconds": None if self.heartbeat_age is None else round(self.heartbeat_age, 3),
                "maxHeartbeatAgeSeconds": self.max_heartbeat_age,
                "liveWorkers": self.live_workers,
            },
        }


def check_readiness(database: Database, *, max_heartbeat_age: float, now: datetime) -> Readiness:
    """The database answers a query, and (unless `max_heartbeat_age` is 0: no worker required) the newest
    worker heartbeat is at most `max_heartbeat_age` seconds old. Any database error reads as unreachable."""
    required = max_heartbeat_age > 0
    try:
        with database.transaction() as session:
            session.execute(text("SELECT 1"))
            newest = session.scalar(select(func.max(WorkerHeartbeat.beat_at)))
            live = session.scalar(
                select(func.count())
                .select_from(WorkerHeartbeat)
                .where(WorkerHeartbeat.beat_at >= now - timedelta(seconds=max_heartbeat_age))
            )
    except SQLAlchemyError:
        return Readiness(False, required, None, max_heartbeat_age, 0)
    age = None if newest is None else max(0.0, (now - newest).total_seconds())
    return Readiness(True, required, age, max_heartbeat_age, int(live or 0))
