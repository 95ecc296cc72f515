"""Workers' heartbeats and the readiness they give /readyz: whether the database answers, its schema is at the
newest migration, some delivery worker (embedded thread, `gateway worker`, Celery worker) has recorded a heartbeat
recently, and the broker (when one is configured) answers a ping."""

from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from alembic.runtime.migration import MigrationContext
from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from gateway.db import Database
from gateway.models import WorkerHeartbeat

# Rows of workers gone this long are deleted (a restarted worker has a new pid, hence a new row).
FORGET_AFTER = timedelta(days=1)
# A broker ping that takes longer than this counts as a failure (/readyz must answer well within a probe's timeout).
BROKER_PING_TIMEOUT = 1.0


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
    # The database's Alembic revision and the newest one this code knows (None: not read).
    schema_revision: str | None = None
    schema_head: str | None = None
    # Broker: configured at all, and the ping's error (None: it answered, or none is configured).
    broker_configured: bool = False
    broker_error: str | None = field(default=None)

    @property
    def schema_current(self) -> bool:
        return self.database_reachable and self.schema_head is not None and self.schema_revision == self.schema_head

    @property
    def worker_ok(self) -> bool:
        if not self.worker_required:
            return True
        return self.heartbeat_age is not None and self.heartbeat_age <= self.max_heartbeat_age

    @property
    def failing(self) -> list[str]:
        """The parts that are not ready, in the order to look at them."""
        parts = []
        if not self.database_reachable:
            parts.append("database")
        elif not self.schema_current:
            parts.append("schema")
        if not self.worker_ok:
            parts.append("worker")
        if self.broker_configured and self.broker_error is not None:
            parts.append("broker")
        return parts

    @property
    def ready(self) -> bool:
        return not self.failing

    def as_json(self) -> dict[str, Any]:
        return {
            "status": "ready" if self.ready else "unavailable",
            "failing": self.failing,
            "database": {"reachable": self.database_reachable},
            "schema": {
                "current": self.schema_current,
                "revision": self.schema_revision,
                "head": self.schema_head,
            },
            "worker": {
                "required": self.worker_required,
                "lastHeartbeatAgeSeconds": None if self.heartbeat_age is None else round(self.heartbeat_age, 3),
                "maxHeartbeatAgeSeconds": self.max_heartbeat_age,
                "liveWorkers": self.live_workers,
            },
            "broker": {
                "configured": self.broker_configured,
                "reachable": None if not self.broker_configured else self.broker_error is None,
                "error": self.broker_error,
            },
        }


@functools.cache
def schema_head() -> str:
    """The newest Alembic revision of this code's migrations (read once per process)."""
    from alembic.script import ScriptDirectory

    from gateway.migrate import alembic_config

    heads = ScriptDirectory.from_config(alembic_config("")).get_heads()
    return ",".join(sorted(heads))


def ping_broker(url: str, timeout: float = BROKER_PING_TIMEOUT) -> str | None:
    """None when the broker answers within `timeout`, else what went wrong (in one line, no credentials)."""
    scheme = urlsplit(url).scheme
    try:
        if scheme in ("redis", "rediss"):
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            client = redis.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
            )
            try:
                client.ping()
            finally:
                client.close()
            return None
        from kombu import Connection

        with Connection(url, connect_timeout=timeout) as connection:  # type: ignore[no-untyped-call]
            connection.ensure_connection(max_retries=1, timeout=timeout)
        return None
    except Exception as exc:  # any failure to reach it is "not ready"; which one is in the message
        host = urlsplit(url).hostname or "?"
        port = urlsplit(url).port
        return f"{host}{f':{port}' if port else ''}: {type(exc).__name__}"


def check_readiness(database: Database, *, max_heartbeat_age: float, now: datetime, broker_url: str = "") -> Readiness:
    """The database answers a query and its schema is at the newest migration, (unless `max_heartbeat_age` is 0:
    no worker required) the newest worker heartbeat is at most `max_heartbeat_age` seconds old, and a broker, if
    configured, answers a ping. Any database error reads as unreachable."""
    required = max_heartbeat_age > 0
    broker_error = ping_broker(broker_url) if broker_url else None
    head = schema_head()
    try:
        with database.transaction() as session:
            session.execute(text("SELECT 1"))
            # Alembic's own reading (None without its table: never migrated).
            heads = MigrationContext.configure(session.connection()).get_current_heads()
            revision = ",".join(sorted(heads))
            newest = session.scalar(select(func.max(WorkerHeartbeat.beat_at)))
            live = session.scalar(
                select(func.count())
                .select_from(WorkerHeartbeat)
                .where(WorkerHeartbeat.beat_at >= now - timedelta(seconds=max_heartbeat_age))
            )
    except SQLAlchemyError:
        return Readiness(False, required, None, max_heartbeat_age, 0, None, head, bool(broker_url), broker_error)
    age = None if newest is None else max(0.0, (now - newest).total_seconds())
    return Readiness(
        True, required, age, max_heartbeat_age, int(live or 0), revision or None, head, bool(broker_url), broker_error
    )
