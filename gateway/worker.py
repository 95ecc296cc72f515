"""Claim → deliver → record. The same `deliver_claims` serves the embedded thread and `gateway worker`
(and, later, Celery tasks): the outbox rows in the database stay the source of truth."""

from __future__ import annotations

import atexit
import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from adapters import REGISTRY, AdapterContext, HttpClient, LmsAdapter, causes
from adapters.base import (
    DeliveryError,
    DeliveryReceipt,
    PermanentDeliveryError,
    RetryableDeliveryError,
    SecretUnreadableError,
)
from adapters.http import ThrottledHttpClient, cut_requests_in_flight
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config import Settings
from gateway.crypto import SecretBox
from gateway.db import Database, database_trouble
from gateway.logs import log_context, log_extra
from gateway.metrics import count_delivery_outcome
from gateway.services.adapter_factory import AdapterFactory
from gateway.services.alert_sending import AlertSender
from gateway.services.delivery_work import DeliveryWork, load_works
from gateway.services.discovery_lease import DISCOVERY_WAIT_SECONDS, release_discovery_lease, take_discovery_lease
from gateway.services.heartbeats import record_heartbeat, worker_name
from gateway.services.outbox import (
    Claim,
    claim_due_deliveries,
    count_first_attempts,
    defer_claim,
    due_connections,
    fail_orphaned_claim,
    reconfirm_claims,
    release_claims,
    supersede_claim,
)
from gateway.services.outcomes import (
    RetryPolicy,
    SuccessTouches,
    record_outcome,
    record_successes,
    touch_connection,
)
from gateway.services.webhook_events import emitted
from gateway.throttle import Limiter
from gateway.webhook_sender import WebhookSender
from schemas.statuses import DeliveryStatus

log = logging.getLogger("passback.worker")
PURGE_INTERVAL_SECONDS = 3600
# How long the loop waits after the database was unreachable (a restart or failover takes seconds).
DATABASE_OUTAGE_PAUSE_SECONDS = 2.0
# After a stop cuts the requests still running, how long their rounds get to record what was answered before.
ROUND_WIND_DOWN_SECONDS = 1.0


class ClaimLost(Exception):
    """The worker no longer holds a claim it was about to send for: its lease ran out (another worker may
    have the delivery now) or a newer grade replaced it. The send is abandoned; nothing is recorded."""


class LeaseKeeper:
    """Before each LMS request of a delivery (or a batch), make sure its claims are still held: renew their
    leases once a third of the lease has passed since the last check, and stop the send if one was lost. So no
    request ever goes out under an expired lease, however many requests or retries a delivery needs.

    Before the first request of a claim it also counts the claim's attempt (in the same transaction), and adds
    the claim to `counted`: a claim lost or handed back before anything was sent is not an attempt, and one
    whose worker dies during the request is."""

    def __init__(
        self,
        db: Database,
        claims: list[Claim],
        lease_seconds: float,
        claimed_at: float,
        clock: Clock = SYSTEM_CLOCK,
        counted: set[str] | None = None,
    ) -> None:
        self.db = db
        self.claims = claims
        self.lease_seconds = lease_seconds
        self.clock = clock
        # When the claims were taken (monotonic): their leases run from then, not from when sending starts.
        self.checked = claimed_at
        # Delivery ids whose attempt is counted: the worker records their outcomes without counting again.
        self.counted = counted if counted is not None else set()

    def __call__(self) -> None:
        starting = {claim.delivery_id for claim in self.claims} - self.counted
        fresh = self.clock.monotonic() - self.checked < self.lease_seconds / 3
        if not starting and fresh:
            return
        if fresh:
            # Leases still fresh: only count the first attempts (a cheap update, not the full check).
            with self.db.transaction() as session:
                if not count_first_attempts(session, [c for c in self.claims if c.delivery_id in starting]):
                    # Raised inside the transaction: nothing is counted for a send that does not happen.
                    raise ClaimLost(f"a claim of {len(self.claims)} was lost before sending")
            self.counted |= starting
            return
        with self.db.transaction() as session:
            confirmed, _ = reconfirm_claims(
                session, self.claims, self.lease_seconds, now=self.clock.now(), count_attempt=starting
            )
            if len(confirmed) < len(self.claims):
                # Raised inside the transaction: no attempt is counted for a send that does not happen.
                lost = len(self.claims) - len(confirmed)
                raise ClaimLost(f"{lost} of {len(self.claims)} claims lost before sending")
        self.counted |= starting
        self.checked = self.clock.monotonic()


class DeliveryWorker:
    def __init__(
        self,
        db: Database,
        box: SecretBox,
        settings: Settings,
        *,
        http: HttpClient | None = None,
        adapters: Mapping[str, type[LmsAdapter]] = REGISTRY,
        district_id: str | None = None,
        limiter: Limiter | None = None,
        clock: Clock = SYSTEM_CLOCK,
        role: str = "worker",
    ) -> None:
        self.db = db
        self.box = box
        self.settings = settings
        self.district_id = district_id
        # Leases, retry times and every timestamp the worker writes come from here (tests move it by hand).
        self.clock = clock
        # Each worker builds its adapters through a factory of its own, so it keeps its own LMS lookups (an
        # LMS-side change is seen within their TTL, or on a miss); the limiter may be shared (the composition root).
        self.adapter_factory = AdapterFactory(
            db, box, settings, http=http, limiter=limiter, registry=adapters, clock=clock
        )
        self.policy = RetryPolicy(
            base_seconds=settings.backoff_base_seconds,
            max_seconds=settings.backoff_max_seconds,
            max_attempts=settings.max_attempts,
            retry_after_max_seconds=settings.retry_after_max_seconds,
        )
        self.wakeup = threading.Event()
        # When this worker last wrote each connection's last_success_at (at most every few seconds).
        self.success_touches = SuccessTouches()
        # The heartbeat row /readyz reads: embedded, worker (`gateway worker` polling) or celery.
        self.role = role
        self.heartbeat_name = worker_name(role)
        self.started_at = clock.now()
        self._last_heartbeat: float | None = None
        # Set by request_stop: claim nothing more and start no send; `hurry`: do not wait for the sends in flight.
        self.stopping = threading.Event()
        self.hurry = threading.Event()
        # Claims taken and not yet recorded or released: what a stop gives back.
        self._held: dict[str, Claim] = {}
        # Held claims whose first request went out, so their attempt is counted (LeaseKeeper adds them).
        self._counted: set[str] = set()
        self._held_changed = threading.Condition()
        self._last_purge: float | None = None
        # Webhooks to apps go out on threads of their own (run_forever starts them), never on the LMS's.
        self.webhooks = WebhookSender(db, box, settings, limiter=self.limiter, clock=clock)
        self.webhooks.lms_busy = lambda: bool(self._held)
        # Alerts to district staff (connections in trouble), evaluated and sent on a thread of their own.
        self.alerts = AlertSender(db, box, settings, clock=clock)
        self._alerts_thread: threading.Thread | None = None

    @property
    def adapters(self) -> Mapping[str, type[LmsAdapter]]:
        return self.adapter_factory.registry

    @property
    def http(self) -> HttpClient:
        return self.adapter_factory.http

    @property
    def limiter(self) -> Limiter:
        return self.adapter_factory.limiter

    def adapter_context(self) -> AdapterContext:
        """What this worker's adapters borrow from Passback (signing key, token cache, lookups)."""
        return self.adapter_factory.context()

    def claim(
        self,
        limit: int | None = None,
        *,
        lms_connection_id: str | None = None,
        without_connection: bool = False,
        section_id: str | None = None,
    ) -> list[Claim]:
        """Claim due deliveries (held by this worker until recorded or given back)."""
        with self.db.transaction() as session:
            claims = claim_due_deliveries(
                session,
                limit=limit or self.settings.worker_batch_size,
                lease_seconds=self.settings.lease_seconds,
                max_attempts=self.settings.max_attempts,
                now=self.clock.now(),
                district_id=self.district_id,
                lms_connection_id=lms_connection_id,
                without_connection=without_connection,
                section_id=section_id,
            )
        self._hold(claims)
        return claims

    def _hold(self, claims: list[Claim]) -> None:
        with self._held_changed:
            self._held.update((claim.delivery_id, claim) for claim in claims)

    def _let_go(self, claims: list[Claim]) -> None:
        with self._held_changed:
            for claim in claims:
                if self._held.get(claim.delivery_id) == claim:
                    del self._held[claim.delivery_id]
                    self._counted.discard(claim.delivery_id)
            self._held_changed.notify_all()

    def request_stop(self, *, at_once: bool = False) -> None:
        """Claim nothing more and start no send from now on; the sends in flight get the grace period to finish
        (none when `at_once`). finish_stop then gives back what is left."""
        self.stopping.set()
        if at_once:
            self.hurry.set()
        self.wakeup.set()
        self.webhooks.request_stop(at_once=at_once)
        with self._held_changed:
            self._held_changed.notify_all()

    def finish_stop(self) -> int:
        """After request_stop: wait (real time, up to the grace period) for the sends in flight to finish and be
        recorded, then give every claim still held back to due and cut the requests still running, whose
        answers would now be recorded nowhere. Webhook sends in flight share the same grace period. Returns how
        many delivery claims were given back."""
        deadline = time.monotonic() + self.settings.stop_grace()
        self._wait_for_rounds(deadline)
        self.webhooks.wait_for_rounds(deadline)
        # Requests still running are cut: their rounds then record what was answered before and let go.
        cut = cut_requests_in_flight()
        if cut:
            self._wait_for_rounds(time.monotonic() + ROUND_WIND_DOWN_SECONDS)
            self.webhooks.wait_for_rounds(time.monotonic() + ROUND_WIND_DOWN_SECONDS)
        self.webhooks.release_held()
        with self._held_changed:
            left = list(self._held.values())
        released = 0
        if left:
            try:
                with self.db.transaction() as session:
                    released = release_claims(
                        session,
                        left,
                        now=self.clock.now(),
                        uncount={c.delivery_id for c in left if c.delivery_id in self._counted},
                    )
            except Exception as exc:
                # The database is away: these claims wait for their leases, as after a crash.
                log.warning("delivery worker: could not give back %d claims: %s", len(left), exc)
            self._let_go(left)
        log.info("delivery worker stopping: %d claims given back, %d LMS requests cut", released, cut)
        return released

    def deliver_claimed(self, claim: Claim) -> str | None:
        """Deliver one claimed row through its adapter and record the outcome. Returns the new status."""
        return self.deliver_claims([claim]).get(claim.delivery_id)

    def deliver_claims(self, claims: list[Claim], claimed_at: float | None = None) -> dict[str, str | None]:
        """The one delivery function, whoever claimed the rows (the embedded thread, `gateway worker`, a
        Celery task): each claim goes through its adapter and its outcome is recorded. Claims for an adapter
        that takes many grades per request are grouped by connection and batch key, topped up with more due
        grades of the same batch, and sent together. Returns each delivery's new status (None: claim lost)."""
        if claimed_at is None:
            claimed_at = self.clock.monotonic()  # the claims were just taken (callers that can pass the time before)
        self._hold(claims)
        try:
            return self._deliver_held(claims, claimed_at)
        finally:
            self._let_go(claims)

    def _deliver_held(self, claims: list[Claim], claimed_at: float) -> dict[str, str | None]:
        statuses: dict[str, str | None] = {}
        # Claims whose first request went out (their attempt is counted then, see LeaseKeeper); worker-wide, so
        # a stop knows which of the claims it gives back had their attempt counted.
        counted = self._counted
        if self.stopping.is_set():
            return self._release(claims)
        batches: dict[tuple[str, str], list[tuple[Claim, DeliveryWork]]] = {}
        # Outcomes of single deliveries, recorded together when the round ends or the worker stops (one
        # transaction for the round rather than one per grade: the stop records them before giving the rest back).
        sent: list[tuple[Claim, DeliveryWork, Any]] = []
        # Claims not sent because the worker is stopping: given back at once, not left to their leases.
        unsent: list[Claim] = []
        for claim, work in self._load(claims, statuses):
            if self.stopping.is_set():
                unsent.append(claim)
                continue
            adapter_cls = self.adapters.get(work.adapter)
            key = None
            if work.operation == "replace" and adapter_cls is not None:
                key = adapter_cls.batch_key(work.destination)
            if key is None:
                status = self._deliver_one(claim, work, adapter_cls, sent, claimed_at, counted)
                if status is not None:
                    statuses[claim.delivery_id] = status
            else:
                batches.setdefault((work.lms_connection_id, key), []).append((claim, work))
        if sent and self.stopping.is_set():
            # A send the stop cut (or that would be retried anyway) goes back as due, its attempt not spent.
            unsent.extend(c for c, _, o in sent if o is None or isinstance(o, RetryableDeliveryError))
            sent = [(c, w, o) for c, w, o in sent if o is not None and not isinstance(o, RetryableDeliveryError)]
        if sent:
            statuses.update(self._record_batch([(c, w) for c, w, _ in sent], [o for _, _, o in sent], counted))
        for (connection_id, key), group in batches.items():
            if self.stopping.is_set():
                unsent.extend(claim for claim, _ in group)
                continue
            statuses.update(self._deliver_batch(connection_id, key, group, claimed_at, counted))
        if unsent:
            statuses.update(self._release(unsent))
        return statuses

    def _wait_for_rounds(self, deadline: float) -> None:
        """Until `deadline` (real time) or a second Ctrl-C, wait for the rounds in flight to record and let go."""
        with self._held_changed:
            while self._held and not self.hurry.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                # Short waits: a second Ctrl-C (hurry) is seen at once.
                self._held_changed.wait(min(remaining, 0.1))

    def _release(self, claims: list[Claim]) -> dict[str, str | None]:
        uncount = {claim.delivery_id for claim in claims if claim.delivery_id in self._counted}
        with self.db.transaction() as session:
            release_claims(session, claims, now=self.clock.now(), uncount=uncount)
        log.info("delivery worker stopping: %d claims given back unsent", len(claims))
        return {claim.delivery_id: DeliveryStatus.PENDING for claim in claims}

    def _load(self, claims: list[Claim], statuses: dict[str, str | None]) -> list[tuple[Claim, DeliveryWork]]:
        """The claims' work, read together; a claim whose destination was removed fails with the reason."""
        with self.db.transaction() as session:
            works = load_works(session, self.box, claims)
        now = self.clock.now()
        loaded = []
        for claim in claims:
            work = works.get(claim.delivery_id)
            if work is not None and work.outdated:
                # Only the newest grade for a student and assignment is sent (e.g. an old revision whose
                # worker died, reclaimed after a newer one arrived).
                with self.db.transaction() as session:
                    statuses[claim.delivery_id] = (
                        DeliveryStatus.SUPERSEDED if supersede_claim(session, claim, now=now) else None
                    )
                continue
            if work is not None:
                loaded.append((claim, work))
                continue
            with self.db.transaction() as session:
                orphaned = fail_orphaned_claim(session, claim, now=now)
            log.warning("delivery %s: %s", claim.delivery_id, "destination removed" if orphaned else "claim lost")
            statuses[claim.delivery_id] = DeliveryStatus.FAILED if orphaned else None
        return loaded

    def _deliver_one(
        self,
        claim: Claim,
        work: DeliveryWork,
        adapter_cls: type[LmsAdapter] | None,
        sent: list[tuple[Claim, DeliveryWork, Any]],
        claimed_at: float,
        counted: set[str],
    ) -> str | None:
        """Send one delivery. Its outcome goes to `sent`, recorded with the round's others, and None is returned;
        a delivery that looks up its destination under the placement's lease is recorded at once (what it
        learned serves the next delivery) and its status returned."""
        discovering = adapter_cls is not None and adapter_cls.needs_discovery(work.destination.data)
        if not discovering:
            sent.append((claim, work, self._send(claim, work, adapter_cls, claimed_at, counted)))
            return None
        with self.db.transaction() as session:
            now = self.clock.now()
            if not take_discovery_lease(session, work.destination.placement_id, now=now):
                defer_claim(session, claim, DISCOVERY_WAIT_SECONDS, now=now)
                return DeliveryStatus.PENDING
        try:
            outcome = self._send(claim, work, adapter_cls, claimed_at, counted)
            return self._record_batch([(claim, work)], [outcome], counted)[claim.delivery_id]
        finally:
            with self.db.transaction() as session:
                release_discovery_lease(session, work.destination.placement_id)

    def http_for(
        self, connection_id: str, rate: float | None = None, keeper: LeaseKeeper | None = None
    ) -> ThrottledHttpClient:
        """The shared HTTP client, throttled for one LMS connection (its own rate, or the default)."""
        return self.adapter_factory.http_for(connection_id, rate, keeper)

    def _adapter(
        self,
        work: DeliveryWork,
        adapter_cls: type[LmsAdapter] | None,
        claims: list[Claim],
        claimed_at: float,
        counted: set[str],
    ) -> LmsAdapter:
        if adapter_cls is None:
            raise PermanentDeliveryError(
                f"no adapter named {work.adapter!r} is installed", cause=causes.NEEDS_CONFIGURATION
            )
        if work.settings_problem:
            # The grade waits (attempts not counted) until a person configures the key it was encrypted with.
            raise SecretUnreadableError(work.settings_problem)
        keeper = LeaseKeeper(self.db, claims, self.settings.lease_seconds, claimed_at, self.clock, counted)
        return self.adapter_factory.build(
            work.adapter,
            work.settings,
            connection_id=work.lms_connection_id,
            rate=work.rate_limit,
            before_request=keeper,
        )

    def _send(
        self,
        claim: Claim,
        work: DeliveryWork,
        adapter_cls: type[LmsAdapter] | None,
        claimed_at: float,
        counted: set[str],
    ) -> DeliveryReceipt | DeliveryError | None:
        """The adapter's answer for one delivery: a receipt, or the error (never raised); None when the claim
        was lost before a request went out."""
        try:
            adapter = self._adapter(work, adapter_cls, [claim], claimed_at, counted)
            if work.operation == "delete":
                return adapter.delete_result(work.destination)
            return adapter.deliver(work.grade, work.destination)
        except ClaimLost as exc:
            log.warning("delivery %s: not sent, %s", claim.delivery_id, exc)
            return None
        except DeliveryError as exc:
            return exc
        except Exception as exc:
            return self._adapter_bug(claim.delivery_id, work.adapter, exc)

    def _deliver_batch(
        self,
        connection_id: str,
        key: str,
        group: list[tuple[Claim, DeliveryWork]],
        claimed_at: float,
        counted: set[str],
    ) -> dict[str, str | None]:
        adapter_cls = self.adapters[group[0][1].adapter]
        try:
            # The group grows below (top-up): the keeper holds the same list, so it checks every claim in it.
            claims = [claim for claim, _ in group]
            adapter = self._adapter(group[0][1], adapter_cls, claims, claimed_at, counted)
        except Exception as exc:
            error = exc if isinstance(exc, DeliveryError) else self._adapter_bug("batch", group[0][1].adapter, exc)
            return self._record_batch(group, [error] * len(group), counted)
        room = adapter.max_batch - len(group)
        statuses: dict[str, str | None] = {}
        more: list[Claim] = []
        try:
            if room > 0 and not self.stopping.is_set():
                # Fill the request: more due grades of the same connection and section, claimed the usual way.
                more = self.claim(room, lms_connection_id=connection_id, section_id=key)
                for claim, work in self._load(more, statuses):
                    if adapter_cls.batch_key(work.destination) == key:
                        group.append((claim, work))
                        claims.append(claim)
                    else:
                        outcome = self._send(claim, work, adapter_cls, claimed_at, counted)
                        statuses.update(self._record_batch([(claim, work)], [outcome], counted))
            outcomes: list[DeliveryReceipt | DeliveryError | None]
            try:
                outcomes = list(adapter.deliver_batch([(work.grade, work.destination) for _, work in group]))
                if len(outcomes) != len(group):
                    raise RuntimeError(f"deliver_batch answered {len(outcomes)} outcomes for {len(group)} grades")
            except ClaimLost as exc:
                log.warning("batch of %d for %s: not sent, %s", len(group), key, exc)
                outcomes = [None] * len(group)
            except DeliveryError as exc:
                outcomes = [exc] * len(group)
            except Exception as exc:
                outcomes = [self._adapter_bug("batch", group[0][1].adapter, exc)] * len(group)
            statuses.update(self._record_batch(group, outcomes, counted))
            return statuses
        finally:
            self._let_go(more)  # the batch's own claims are let go by deliver_claims

    def _record_batch(
        self, group: list[tuple[Claim, DeliveryWork]], outcomes: list[Any], counted: set[str]
    ) -> dict[str, str | None]:
        statuses: dict[str, str | None] = {}
        # A send abandoned because its claim was lost records nothing: the row is another worker's now.
        for (claim, _), outcome in zip(group, outcomes, strict=True):
            if outcome is None:
                statuses[claim.delivery_id] = None
        kept = [(pair, outcome) for pair, outcome in zip(group, outcomes, strict=True) if outcome is not None]
        group, outcomes = [pair for pair, _ in kept], [outcome for _, outcome in kept]
        plain = [
            (claim, outcome)
            for (claim, _), outcome in zip(group, outcomes, strict=True)
            if isinstance(outcome, DeliveryReceipt) and not outcome.destination_update
        ]
        with self.db.transaction() as session:
            now = self.clock.now()
            delivered = record_successes(session, plain, now=now, counted=counted)
            statuses.update(
                {
                    claim.delivery_id: DeliveryStatus.DELIVERED if claim.delivery_id in delivered else None
                    for claim, _ in plain
                }
            )
            for (claim, _), outcome in zip(group, outcomes, strict=True):
                if claim.delivery_id not in statuses:
                    statuses[claim.delivery_id] = record_outcome(
                        session, claim, outcome, self.policy, touch=False, now=now, counted=claim.delivery_id in counted
                    )
            # Each connection's health, once for the round rather than once per grade.
            by_connection: dict[str, list[Any]] = {}
            for (_, work), outcome in zip(group, outcomes, strict=True):
                by_connection.setdefault(work.lms_connection_id, []).append(outcome)
            for connection_id, results in by_connection.items():
                errors = [o for o in results if isinstance(o, DeliveryError)]
                if len(errors) < len(results):
                    touch_connection(session, connection_id, error=None, now=now, touches=self.success_touches)
                if errors:
                    touch_connection(session, connection_id, error=errors[-1].message, now=now)
            woken = emitted(session) > 0
        if woken:
            # The outcomes just committed wrote webhook messages: send them now, not at the next poll.
            self.webhooks.wakeup.set()
        for (claim, work), outcome in zip(group, outcomes, strict=True):
            self._log(claim.delivery_id, work, statuses[claim.delivery_id], outcome)
        return statuses

    @staticmethod
    def _adapter_bug(delivery_id: str, adapter: str, exc: Exception) -> RetryableDeliveryError:
        # An adapter bug must not lose the grade: record it and retry within the bounded attempts.
        log.error("delivery %s: adapter %s raised", delivery_id, adapter, exc_info=exc)
        # The exception's type only: its text may be a repr (the log above has it all).
        return RetryableDeliveryError(
            f"internal error in adapter {adapter} ({type(exc).__name__}); the log has the details",
            cause=causes.INTERNAL_ERROR,
        )

    @staticmethod
    def _log(delivery_id: str, work: DeliveryWork, status: str | None, outcome: Any) -> None:
        count_delivery_outcome(work.adapter, status)
        error = f" ({outcome.message})" if isinstance(outcome, DeliveryError) else ""
        ids = log_extra(
            delivery_id=delivery_id,
            connection_id=work.lms_connection_id,
            district_id=work.district_id,
            adapter=work.adapter,
        )
        log.info("delivery %s via %s: %s%s", delivery_id, work.adapter, status or "claim lost", error, extra=ids)

    def run_once(self, limit: int | None = None) -> int:
        """Claim a batch and deliver it. Returns how many deliveries were claimed (batch top-ups not counted)."""
        claimed_at = self.clock.monotonic()  # before the claim, where its leases start
        claims = self.claim(limit)
        if claims:
            self.deliver_claims(claims, claimed_at)
        return len(claims)

    def run_until_idle(self, timeout: float = 30.0) -> int:
        """Deliver until nothing is due (for CLI one-shots and tests). Returns attempts made."""
        # Real time, not the clock: this bounds how long the caller waits, and a frozen clock never runs out.
        deadline = time.monotonic() + timeout
        total = 0
        while time.monotonic() < deadline:
            done = self.run_once()
            total += done
            if done == 0:
                return total
        return total

    def heartbeat_if_due(self) -> None:
        """Record that this worker is alive, at most once per `heartbeat_seconds`."""
        now = self.clock.monotonic()
        if self._last_heartbeat is not None and now - self._last_heartbeat < self.settings.heartbeat_seconds:
            return
        with self.db.transaction() as session:
            record_heartbeat(session, self.heartbeat_name, self.role, started_at=self.started_at, now=self.clock.now())
        self._last_heartbeat = now

    def beat_until(self, stop: threading.Event) -> None:
        """Heartbeats and the hourly housekeeping, until `stop`: for a process whose deliveries run elsewhere
        (Celery's tasks), so the Celery layout purges as the polling worker does."""
        while not stop.is_set():
            try:
                self.heartbeat_if_due()
            except Exception as exc:
                log.warning("delivery worker: heartbeat not recorded: %s", exc)
            try:
                self.purge_if_due()
            except Exception as exc:
                log.warning("delivery worker: housekeeping failed: %s", exc)
            stop.wait(self.settings.heartbeat_seconds)

    def purge_if_due(self) -> None:
        """Housekeeping at most once an hour per worker, between delivery rounds."""
        now = self.clock.monotonic()
        if self._last_purge is not None and now - self._last_purge < PURGE_INTERVAL_SECONDS:
            return
        self._last_purge = now
        from gateway.services.maintenance import purge_expired

        with self.db.transaction() as session:
            purge_expired(
                session,
                idempotency_ttl_seconds=self.settings.idempotency_ttl_seconds,
                webhook_retention_seconds=self.settings.webhook_retention_seconds,
                retention_days=self.settings.retention_days,
                now=self.clock.now(),
            )

    def alerts_if_due(self) -> None:
        """Start an alert round (gateway/services/alert_sending.py) when one is due and none is running: an SMTP
        server or a webhook that is slow never holds up the claim loop."""
        if self._alerts_thread is not None and self._alerts_thread.is_alive():
            return
        self._alerts_thread = threading.Thread(target=self.alerts.run_if_due, name="passback-alerts", daemon=True)
        self._alerts_thread.start()

    def run_forever(self, stop: threading.Event) -> None:
        """Deliver until `stop`: up to `worker_threads` connections at once, each connection's claims on one
        thread, so a slow or hanging LMS holds only its own thread (and each request ends at its deadline)."""
        threads = max(1, self.settings.worker_threads)
        log.info("delivery worker started (%d connections at once)", threads)
        # Webhooks on their own loop and threads: a slow endpoint never takes a thread an LMS needs (none here with
        # GATEWAY_WEBHOOK_THREADS=0: a `gateway worker --webhooks-only` process sends them).
        if self.settings.webhook_threads > 0:
            threading.Thread(target=self.webhooks.serve, args=(stop,), name="passback-webhooks", daemon=True).start()
        busy: set[str | None] = set()
        busy_lock = threading.Lock()
        pool = DaemonThreads("passback-deliver")
        while not stop.is_set() and not self.stopping.is_set():
            try:
                self.heartbeat_if_due()
                self.purge_if_due()
                self.alerts_if_due()
            except Exception:
                log.exception("delivery worker: heartbeat or housekeeping failed")
            try:
                started = self._dispatch(pool, threads, busy, busy_lock)
            except Exception as exc:
                started = 0
                trouble = database_trouble(exc)
                if trouble is None:
                    log.exception("delivery worker: claim round failed")
                else:
                    # A restart, failover or lock: keep the worker alive, say so in one line, and back off.
                    log.warning("delivery worker: database %s, trying again: %s", trouble.value, exc)
                    stop.wait(DATABASE_OUTAGE_PAUSE_SECONDS)
            if started == 0:
                # A finished connection wakes the loop too, so its next claims go out at once.
                self.wakeup.wait(self.settings.worker_poll_seconds)
                self.wakeup.clear()
        # Stopped (a signal, the process exiting): the sends in flight get the grace period, the rest goes back.
        self.request_stop()
        log.info(
            "delivery worker stopping: claiming nothing more; sends in flight have %g s to finish (Ctrl-C again: none)",
            self.settings.stop_grace(),
        )
        self.finish_stop()
        log.info("delivery worker stopped")

    def _dispatch(self, pool: DaemonThreads, threads: int, busy: set[str | None], busy_lock: threading.Lock) -> int:
        """Claim the due work of connections no thread is working on (one connection per free thread) and
        hand each connection's claims to a thread. Returns how many connections were started."""
        with busy_lock:
            taken = set(busy)
        free = threads - len(taken)
        if free <= 0:
            return 0
        with self.db.transaction() as session:
            candidates = due_connections(
                session,
                max_attempts=self.settings.max_attempts,
                # A few spare: a connection's due rows may all wait on another revision in flight.
                limit=free + 4,
                exclude=taken,
                district_id=self.district_id,
                now=self.clock.now(),
            )
        started = 0
        for connection_id in candidates:
            if started >= free or self.stopping.is_set():
                break
            # Before the claim: its leases start inside the claim's transaction, not when it commits.
            claimed_at = self.clock.monotonic()
            claims = self.claim(lms_connection_id=connection_id, without_connection=connection_id is None)
            if not claims:
                continue
            with busy_lock:
                busy.add(connection_id)
            pool.submit(self._deliver_for_connection, connection_id, claims, claimed_at, busy, busy_lock)
            started += 1
        return started

    def _deliver_for_connection(
        self,
        connection_id: str | None,
        claims: list[Claim],
        claimed_at: float,
        busy: set[str | None],
        busy_lock: threading.Lock,
    ) -> None:
        try:
            with log_context(connection_id=connection_id):
                self.deliver_claims(claims, claimed_at)
        except Exception:
            # Unrecorded claims are taken again when their leases run out.
            log.exception("delivery worker: round for connection %s failed", connection_id)
        finally:
            with busy_lock:
                busy.discard(connection_id)
            self.wakeup.set()


def on_stop_signals(first: Callable[[], None], again: Callable[[], None]) -> None:
    """SIGTERM or SIGINT (Ctrl-C): `first` on the first one (a graceful stop), `again` on any later one (stop
    at once). Installed by the main thread of `gateway run` and `gateway worker`."""
    received: list[int] = []

    def handle(signum: int, _frame: Any) -> None:
        received.append(signum)
        if len(received) == 1:
            first()
        else:
            again()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


class DaemonThreads:
    """Each connection's round on a daemon thread of its own: a process that stops is never held by an LMS
    request in flight (a stop gives its claim back; a ThreadPoolExecutor's threads are joined at exit)."""

    def __init__(self, name_prefix: str) -> None:
        self.name_prefix = name_prefix
        self._count = 0

    def submit(self, target: Callable[..., Any], *args: Any) -> None:
        self._count += 1
        threading.Thread(target=target, args=args, name=f"{self.name_prefix}-{self._count}", daemon=True).start()


class EmbeddedWorker:
    """The delivery worker as a daemon thread inside the web process (the default, embedded mode)."""

    def __init__(self, worker: DeliveryWorker) -> None:
        self.worker = worker
        self.stop_event = threading.Event()
        self.thread = threading.Thread(
            target=worker.run_forever, args=(self.stop_event,), name="passback-delivery", daemon=True
        )

    def start(self) -> None:
        self.thread.start()
        # A process that exits (gunicorn's worker shutdown, the end of a script) stops it gracefully: its claims
        # are given back rather than left to their leases. The delivery threads are daemons, so this runs.
        atexit.register(self.stop)

    def stop(self) -> None:
        """Stop gracefully: claim nothing more, give the sends in flight the grace period, give back the rest
        (a second call returns at once)."""
        atexit.unregister(self.stop)
        self.stop_event.set()
        self.worker.request_stop()
        if self.thread.ident is not None:
            # The thread ends within the grace period plus one short transaction.
            self.thread.join(self.worker.settings.stop_grace() + 5.0)

    def stop_at_once(self) -> None:
        """A second Ctrl-C: do not wait for the sends in flight; give every claim back now."""
        self.worker.request_stop(at_once=True)

    def nudge(self) -> None:
        """Look for due deliveries (and webhook messages) now rather than at the next poll (called after a grade
        is accepted)."""
        self.worker.wakeup.set()
        self.worker.webhooks.wakeup.set()
