"""Delivery on Celery workers, for districts that outgrow one process (GATEWAY_BROKER_URL=redis://…).

The database outbox stays the source of truth; a Celery message only says "this LMS connection has work".
`drain_connection` takes one of the connection's concurrency slots (shared through Redis), then claims due
deliveries of that connection in the usual way and hands them to the same `DeliveryWorker.deliver_claims`
the embedded worker uses, until nothing is due or its time is up. So a message delivered twice claims nothing
the second time, and a lost one only delays a grade: `sweep` (run by celery beat every GATEWAY_SWEEP_SECONDS)
enqueues a drain for every connection with due deliveries that no drain is working on, and the leases of a
killed worker's claims expire so the next drain takes them again. Tasks are acknowledged late.

Hand-on: a drain clears its heartbeat when it ends, and when it leaves work due later (a retry's backoff), it
schedules the connection's next drain for that time (a countdown, one per connection and due time); the sweep
does the same for what falls due before its next run. So a retry goes out at its due time, not a sweep later.

The web process publishes from a thread of its own (`Dispatcher`): a request commits and returns, whatever the
broker is doing.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import secrets
import threading
import time
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from celery import Celery
from celery.signals import worker_shutting_down
from sqlalchemy import func, select

from gateway.clock import Clock
from gateway.config import Settings
from gateway.models import Delivery, DeliveryStatus, LmsConnection
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
# The epoch second a drain of the connection is scheduled for (a countdown task), so drains ending together
# schedule it once.
NEXT_DRAIN = "passback:next-drain:"
# Scheduled drains wait in the worker's memory (an ETA task): further out than this, a drain is scheduled at this
# horizon and, finding nothing due, schedules the next hop.
SCHEDULE_HORIZON_SECONDS = 300.0
# A scheduled drain starts this much after the due time, so the row it is for is due by then.
SCHEDULE_SLACK_SECONDS = 0.05
# The web process's publisher waits this long on a broker that does not answer, then drops the message.
PUBLISH_TIMEOUT_SECONDS = 2.0
# Connections waiting to be published; beyond this many, further ones are dropped (the sweep finds them).
PUBLISH_QUEUE_SIZE = 1024
# The publisher thread ends after this long with nothing to publish (the next publish starts it again).
PUBLISHER_IDLE_SECONDS = 30.0

# Delete the heartbeat only if it is still this drain's (a drain that started since keeps its own).
_CLEAR_HEARTBEAT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: the connection's NEXT_DRAIN key. ARGV: due (epoch s), now (epoch s), ttl (ms). Returns 1 when the caller
# should schedule a drain: none is scheduled in the future at or before `due`.
_RESERVE_NEXT_DRAIN = """
local current = tonumber(redis.call('GET', KEYS[1]) or '')
local due = tonumber(ARGV[1])
if current and current > tonumber(ARGV[2]) and current <= due then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"""


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
        beat_schedule={
            "passback-sweep": {"task": "passback.sweep", "schedule": settings.sweep_seconds},
            # Alerts to district staff (docs/alerts.md): evaluated and sent by one task at a time per beat.
            "passback-alerts": {"task": "passback.alerts", "schedule": settings.alert_check_seconds},
        },
        worker_hijack_root_logger=False,
    )
    return celery_app


def _epoch(moment: datetime) -> float:
    """Seconds since the epoch of a naive UTC time (as the clock and the database hold them)."""
    return moment.replace(tzinfo=UTC).timestamp()


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
        if outcome.startswith("delivered") and not outcome.endswith("handed on"):
            if self._has_due(connection_id):
                # Work committed while this drain was finishing may have been refused a slot ("busy"): look once
                # more after giving the slot back, rather than leave it to the sweep.
                self._kick_quietly(connection_id)
            else:
                self._schedule_next_drain(connection_id)
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

    def _next_due(self, connection_ids: list[str] | None = None) -> dict[str, datetime]:
        """When each connection's earliest waiting delivery (a retry in its backoff) falls due, if it is not paused."""
        query = (
            select(Delivery.lms_connection_id, func.min(Delivery.next_attempt_at))
            .join(LmsConnection, LmsConnection.id == Delivery.lms_connection_id)
            .where(
                Delivery.status.in_((DeliveryStatus.PENDING, DeliveryStatus.RETRYING)),
                Delivery.next_attempt_at > self.clock.now(),
                LmsConnection.paused.is_(False),
            )
            .group_by(Delivery.lms_connection_id)
        )
        if connection_ids is not None:
            query = query.where(Delivery.lms_connection_id.in_(connection_ids))
        with self.worker.db.transaction() as session:
            return {connection_id: due for connection_id, due in session.execute(query).all() if connection_id}

    def _schedule_next_drain(self, connection_id: str) -> None:
        """Hand on to a drain at the time this connection's next retry falls due (if it has one)."""
        due = self._next_due([connection_id]).get(connection_id)
        if due is not None:
            self._schedule_drain(connection_id, due)

    def _schedule_drain(self, connection_id: str, due: datetime) -> bool:
        """A drain of the connection at `due` (at most SCHEDULE_HORIZON_SECONDS ahead), unless one is already
        scheduled at or before it. Returns whether a task was published; a broker error is logged, not raised."""
        now = self.clock.now()
        countdown = min(SCHEDULE_HORIZON_SECONDS, max(0.0, (due - now).total_seconds())) + SCHEDULE_SLACK_SECONDS
        ttl_ms = int(countdown * 1000) + 60_000
        try:
            reserved = self._reserve_next_drain(
                keys=[NEXT_DRAIN + connection_id], args=[repr(_epoch(now) + countdown), repr(_epoch(now)), ttl_ms]
            )
            if int(reserved) != 1:
                return False
            drain_connection.apply_async(args=[connection_id], queue=QUEUE, countdown=countdown)
        except Exception as exc:  # the broker may be down: the sweep covers for it
            log.warning("could not schedule a drain for %s (%s)", connection_id, type(exc).__name__)
            return False
        return True

    def _kick_quietly(self, connection_id: str) -> None:
        try:
            kick(self.limiter.redis, connection_id)
        except Exception as exc:  # the broker may be down: the sweep covers for it
            log.warning("could not publish a drain for %s (%s)", connection_id, type(exc).__name__)

    def _drain(self, connection_id: str, slot_key: str, concurrency: int, slot_ttl: float) -> str:
        with delivery_slot(self.limiter, slot_key, concurrency, slot_ttl) as slot:
            if slot is None:
                return "busy"
            heartbeat = secrets.token_hex(8)
            try:
                return self._drain_rounds(connection_id, slot_key, slot, slot_ttl, heartbeat)
            finally:
                # The sweep may enqueue this connection again at once: a heartbeat left behind hid it for two
                # sweep intervals, which is what kept retries waiting 30-45 s past their due time.
                self._clear_heartbeat(connection_id, heartbeat)

    def _drain_rounds(self, connection_id: str, slot_key: str, slot: str, slot_ttl: float, heartbeat: str) -> str:
        settings = self.settings
        deadline = self.clock.monotonic() + settings.drain_seconds
        delivered = 0
        while True:
            if self.worker.stopping.is_set():
                # The worker is shutting down: the claims it gave back go to the next worker now.
                with contextlib.suppress(Exception):
                    drain_connection.apply_async(args=[connection_id], queue=QUEUE)
                return f"delivered {delivered}, stopping, handed on"
            self._heartbeat(connection_id, heartbeat)
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

    def _heartbeat(self, connection_id: str, token: str) -> None:
        # Outlives the sweep interval between rounds; a killed drain's expires by itself.
        self.limiter.redis.set(
            HEARTBEAT + connection_id, token, px=int(max(2.0, self.settings.sweep_seconds * 2) * 1000)
        )

    def _clear_heartbeat(self, connection_id: str, token: str) -> None:
        try:
            self._clear_heartbeat_script(keys=[HEARTBEAT + connection_id], args=[token])
        except Exception as exc:  # the broker may be down: the heartbeat expires by itself
            log.warning("could not clear the drain heartbeat of %s (%s)", connection_id, type(exc).__name__)

    @cached_property
    def _clear_heartbeat_script(self) -> Any:
        return self.limiter.redis.register_script(_CLEAR_HEARTBEAT)

    @cached_property
    def _reserve_next_drain(self) -> Any:
        return self.limiter.redis.register_script(_RESERVE_NEXT_DRAIN)

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
        # What falls due before the next sweep gets a drain at its due time (drains that leave a retry behind
        # schedule one too; this covers a scheduled drain that was lost).
        soon = _epoch(now) + self.settings.sweep_seconds
        for connection_id, due in self._next_due().items():
            if _epoch(due) <= soon and self._schedule_drain(connection_id, due):
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


@celery_app.task(name="passback.alerts", acks_late=True)
def send_alerts() -> int:
    """Evaluate the districts' alerts and send those due (the embedded and polling workers do it themselves)."""
    _decided, sent = runtime().worker.alerts.run_once()
    return int(sent)


def kick(redis: Any, connection_id: str, producer: Any = None) -> bool:
    """Ask for a drain of this connection, at most once per KICK_MS however many grades arrive."""
    if not redis.set(KICK + connection_id, "1", nx=True, px=KICK_MS):
        return False
    drain_connection.apply_async(args=[connection_id], queue=QUEUE, producer=producer)
    return True


_dispatchers: weakref.WeakSet[Dispatcher] = weakref.WeakSet()


class Dispatcher:
    """The web process's side: after a grade is committed, wake the connections it is waiting for, without
    waiting on the broker. Calls only note the connections (coalesced, at most PUBLISH_QUEUE_SIZE, the rest
    dropped with a log line); a thread of this process publishes them, with short socket timeouts. Failing to
    publish is logged, never raised: the grade is safe in the outbox and the sweep will find it.

    The thread starts on first use in each process (a forked gunicorn worker starts its own) and ends when idle."""

    def __init__(self, settings: Settings, *, timeout: float = PUBLISH_TIMEOUT_SECONDS) -> None:
        configure_celery(settings)
        self.broker_url = settings.broker_url
        self.timeout = timeout
        self._reset()
        _dispatchers.add(self)

    def _reset(self) -> None:
        """Fresh state for this process: a forked child inherits neither the parent's thread nor its locks."""
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pending: dict[str, None] = {}  # an ordered set of connection ids
        self._sweep_wanted = False
        self._publishing = False
        self._dropped = 0
        self._thread: threading.Thread | None = None

    def __call__(self, connection_ids: set[str] | None) -> None:
        with self._lock:
            if connection_ids is None:
                self._sweep_wanted = True
            for connection_id in connection_ids or ():
                if connection_id in self._pending:
                    continue
                if len(self._pending) >= PUBLISH_QUEUE_SIZE:
                    self._dropped += 1
                    continue
                self._pending[connection_id] = None
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="passback-publisher", daemon=True)
                self._thread.start()
            self._changed.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until everything noted so far was published (or given up on); False when `timeout` ran out."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._pending or self._sweep_wanted or self._publishing:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def _run(self) -> None:
        publisher = _Publisher(self.broker_url, self.timeout)
        try:
            while True:
                with self._lock:
                    idle_until = time.monotonic() + PUBLISHER_IDLE_SECONDS
                    while not (self._pending or self._sweep_wanted):
                        left = idle_until - time.monotonic()
                        if left <= 0:
                            return
                        self._changed.wait(left)
                    connection_ids, self._pending = list(self._pending), {}
                    sweep_wanted, self._sweep_wanted = self._sweep_wanted, False
                    dropped, self._dropped = self._dropped, 0
                    self._publishing = True
                if dropped:
                    log.warning("%d delivery wake-ups dropped (queue full); the sweep will pick them up", dropped)
                try:
                    publisher.publish(connection_ids, sweep_wanted)
                finally:
                    with self._lock:
                        self._publishing = False
                        self._changed.notify_all()
        finally:
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None  # the next call starts another
                self._publishing = False
                self._changed.notify_all()
            publisher.close()


class _Publisher:
    """The publisher thread's own broker connections, with socket timeouts short enough that a frozen broker
    costs a few seconds of this thread, never a request."""

    def __init__(self, broker_url: str, timeout: float) -> None:
        import redis

        self.broker_url = broker_url
        self.redis = redis.Redis.from_url(broker_url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self.transport_options = {"socket_timeout": timeout, "socket_connect_timeout": timeout, "max_retries": 1}
        self.connection: Any = None

    def publish(self, connection_ids: list[str], sweep_wanted: bool) -> None:
        try:
            if self.connection is None:
                self.connection = celery_app.connection_for_write(
                    self.broker_url, transport_options=self.transport_options
                )
            producer = celery_app.amqp.Producer(self.connection, auto_declare=False)
            if sweep_wanted:
                sweep.apply_async(queue=QUEUE, producer=producer)
            for connection_id in connection_ids:
                kick(self.redis, connection_id, producer)
        except Exception as exc:  # the broker may be down; the outbox and the sweep cover for it
            log.warning("could not publish delivery work (%s); the sweep will pick it up", type(exc).__name__)
            self.close()

    def close(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(Exception):
                self.connection.release()
            self.connection = None
        with contextlib.suppress(Exception):
            self.redis.close()


def _forget_parent_threads() -> None:
    for dispatcher in list(_dispatchers):
        dispatcher._reset()


def flush_dispatchers(timeout: float = PUBLISH_TIMEOUT_SECONDS * 2) -> bool:
    """Publish what this process noted before it goes on (a CLI command exiting, a test reading the queue)."""
    deadline = time.monotonic() + timeout
    return all(dispatcher.flush(max(0.0, deadline - time.monotonic())) for dispatcher in list(_dispatchers))


os.register_at_fork(after_in_child=_forget_parent_threads)
# A CLI command that committed work publishes its wake-ups before the process ends (bounded by the timeout).
atexit.register(flush_dispatchers)
