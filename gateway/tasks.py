"""Delivery on Celery workers, for districts that outgrow one process (GATEWAY_BROKER_URL=redis://…).

The database outbox stays the source of truth; a Celery message only says "this LMS connection has work".
`drain_connection` takes one of the connection's concurrency slots (shared through Redis), then claims due
deliveries of that connection in the usual way and hands them to the same `DeliveryWorker.deliver_claims`
the embedded worker uses, until nothing is due or its time is up. So a message delivered twice claims nothing
the second time, and a lost one only delays a grade: `sweep` (run by celery beat every GATEWAY_SWEEP_SECONDS)
enqueues a drain for every connection with due deliveries that no drain is working on, and the leases of a
killed worker's claims expire so the next drain takes them again. Tasks are acknowledged late.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.signals import worker_shutting_down
from sqlalchemy import select

from gateway.clock import Clock
from gateway.config import Settings
from gateway.models import Delivery, LmsConnection
from gateway.services.outbox import claim_due_deliveries, claimable
from gateway.throttle import RedisLimiter, delivery_slot

log = logging.getLogger("passback.tasks")

celery_app = Celery("passback")
QUEUE = "passback"
# A drain that is working refreshes this key; the sweep leaves its connection alone while it exists.
HEARTBEAT = "passback:draining:"
# Grades accepted in a burst kick a connection's drain at most once per this many milliseconds.
KICK = "passback:kick:"
KICK_MS = 500


def configure_celery(settings: Settings) -> Celery:
    celery_app.conf.update(
        broker_url=settings.broker_url,
        task_default_queue=QUEUE,
        # Acknowledge after the work, and give a killed worker's message back: tasks are idempotent.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        # Publishing happens after a grade was committed: fail fast, the sweep will catch up.
        broker_connection_timeout=2,
        broker_connection_retry_on_startup=True,
        task_publish_retry=False,
        broker_transport_options={"visibility_timeout": max(3600, int(settings.lease_seconds * 4))},
        beat_schedule={"passback-sweep": {"task": "passback.sweep", "schedule": settings.sweep_seconds}},
        worker_hijack_root_logger=False,
    )
    return celery_app


@dataclass
class Runtime:
    """What a worker process needs, built once per process from the environment."""

    app: Any
    worker: Any
    limiter: RedisLimiter
    settings: Settings

    @property
    def clock(self) -> Clock:
        """The worker's clock: drains, sweeps and the deliveries they hand on share one time."""
        clock: Clock = self.worker.clock
        return clock

    def drain(self, connection_id: str) -> str:
        settings = self.settings
        slot_key = f"deliver:{connection_id}"
        with self.worker.db.transaction() as session:
            own_limit = session.scalar(select(LmsConnection.concurrency_limit).where(LmsConnection.id == connection_id))
        concurrency = own_limit or settings.connection_concurrency
        # A slot outlives a few leases (renewed after every round); a dead worker's slot frees itself.
        slot_ttl = settings.lease_seconds * 3
        outcome = self._drain(connection_id, slot_key, concurrency, slot_ttl)
        if outcome.startswith("delivered") and not outcome.endswith("handed on") and self._has_due(connection_id):
            # Work committed while this drain was finishing may have been refused a slot ("busy"): look once
            # more after giving the slot back, rather than leave it to the sweep.
            self._kick_quietly(connection_id)
        return outcome

    def _has_due(self, connection_id: str) -> bool:
        with self.worker.db.transaction() as session:
            return (
                session.scalar(
                    select(Delivery.id)
                    .where(
                        Delivery.lms_connection_id == connection_id,
                        claimable(self.clock.now(), self.settings.max_attempts),
                    )
                    .limit(1)
                )
                is not None
            )

    def _kick_quietly(self, connection_id: str) -> None:
        try:
            kick(self.limiter, connection_id)
        except Exception as exc:  # the broker may be down: the sweep covers for it
            log.warning("could not publish a drain for %s (%s)", connection_id, type(exc).__name__)

    def _drain(self, connection_id: str, slot_key: str, concurrency: int, slot_ttl: float) -> str:
        settings = self.settings
        with delivery_slot(self.limiter, slot_key, concurrency, slot_ttl) as slot:
            if slot is None:
                return "busy"
            deadline = self.clock.monotonic() + settings.drain_seconds
            delivered = 0
            while True:
                if self.worker.stopping.is_set():
                    # The worker is shutting down: the claims it gave back go to the next worker now.
                    with contextlib.suppress(Exception):
                        drain_connection.apply_async(args=[connection_id], queue=QUEUE)
                    return f"delivered {delivered}, stopping, handed on"
                self._heartbeat(connection_id)
                claimed_at = self.clock.monotonic()  # before the claim, where its leases start
                with self.worker.db.transaction() as session:
                    claims = claim_due_deliveries(
                        session,
                        limit=settings.worker_batch_size,
                        lease_seconds=settings.lease_seconds,
                        max_attempts=settings.max_attempts,
                        now=self.clock.now(),
                        lms_connection_id=connection_id,
                    )
                if not claims:
                    return f"delivered {delivered}"
                if len(claims) == settings.worker_batch_size:
                    # A backlog: let another slot's worker help (the kick marker keeps this to one message).
                    self._kick_quietly(connection_id)
                self.worker.deliver_claims(claims, claimed_at)
                delivered += len(claims)
                self.limiter.renew_slot(slot_key, slot, slot_ttl)
                if self.clock.monotonic() > deadline:
                    # Hand on to a fresh task, so other connections' drains get the worker too (if the broker
                    # refuses, the sweep finds the rest).
                    with contextlib.suppress(Exception):
                        drain_connection.apply_async(args=[connection_id], queue=QUEUE)
                    return f"delivered {delivered}, handed on"

    def _heartbeat(self, connection_id: str) -> None:
        self.limiter.redis.set(HEARTBEAT + connection_id, "1", px=int(max(2.0, self.settings.sweep_seconds * 2) * 1000))

    def sweep(self) -> int:
        """Enqueue a drain for every connection with due deliveries that no drain is working on."""
        now = self.clock.now()
        with self.worker.db.transaction() as session:
            connection_ids = session.scalars(
                select(Delivery.lms_connection_id)
                .join(LmsConnection, LmsConnection.id == Delivery.lms_connection_id)
                .where(claimable(now, self.settings.max_attempts), LmsConnection.paused.is_(False))
                .distinct()
            ).all()
        sent = 0
        for connection_id in connection_ids:
            if connection_id and not self.limiter.redis.exists(HEARTBEAT + connection_id):
                drain_connection.apply_async(args=[connection_id], queue=QUEUE)
                sent += 1
        return sent


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def runtime() -> Runtime:
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            from gateway import create_app
            from gateway.composition import services_of

            app = create_app()
            services = services_of(app)
            limiter = RedisLimiter(services.settings.broker_url)
            worker = services.delivery_worker(limiter=limiter)
            _runtime = Runtime(app, worker, limiter, services.settings)
        return _runtime


@worker_shutting_down.connect
def stop_drains(sender: Any = None, how: str = "Warm", **_: Any) -> None:
    """Celery's warm shutdown waits for the running tasks: their drains stop claiming and sending at once, the
    sends in flight get the grace period (a cold shutdown: none), then every claim still held is given back."""
    current = _runtime
    if current is None:
        return
    current.worker.request_stop(at_once=how != "Warm")
    threading.Thread(target=current.worker.finish_stop, name="passback-stop", daemon=True).start()


@celery_app.task(name="passback.drain_connection", acks_late=True)
def drain_connection(connection_id: str) -> str:
    return runtime().drain(connection_id)


@celery_app.task(name="passback.sweep", acks_late=True)
def sweep() -> int:
    return runtime().sweep()


def kick(limiter: RedisLimiter, connection_id: str) -> bool:
    """Ask for a drain of this connection, at most once per KICK_MS however many grades arrive."""
    if not limiter.redis.set(KICK + connection_id, "1", nx=True, px=KICK_MS):
        return False
    drain_connection.apply_async(args=[connection_id], queue=QUEUE)
    return True


class Dispatcher:
    """The web process's side: after a grade is committed, wake the connections it is waiting for. Failing
    to publish is logged, never raised (the grade is safe in the outbox; the sweep will find it)."""

    def __init__(self, settings: Settings) -> None:
        configure_celery(settings)
        self.limiter = RedisLimiter(settings.broker_url)

    def __call__(self, connection_ids: set[str] | None) -> None:
        try:
            if connection_ids is None:
                sweep.apply_async(queue=QUEUE)
                return
            for connection_id in connection_ids:
                kick(self.limiter, connection_id)
        except Exception as exc:  # the broker may be down; the outbox and the sweep cover for it
            log.warning("could not publish delivery work (%s); the sweep will pick it up", type(exc).__name__)
