"""Claim → deliver → record. The same `deliver_claimed` serves the embedded thread and `gateway worker`
(and, later, Celery tasks): the outbox rows in the database stay the source of truth."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from adapters import REGISTRY, AdapterContext, GradeAdapter, HttpClient
from adapters.base import DeliveryError, PermanentDeliveryError, RetryableDeliveryError
from gateway.config import Settings
from gateway.crypto import SecretBox
from gateway.db import Database
from gateway.services.deliveries import (
    DISCOVERY_WAIT_SECONDS,
    Claim,
    RetryPolicy,
    claim_due_deliveries,
    defer_claim,
    fail_orphaned_claim,
    load_work,
    record_failure,
    record_success,
    release_discovery_lease,
    take_discovery_lease,
)
from gateway.services.keys import current_signing_key
from gateway.services.token_cache import DatabaseTokenCache

log = logging.getLogger("passback.worker")
PURGE_INTERVAL_SECONDS = 3600


def build_adapter_context(db: Database, box: SecretBox) -> AdapterContext:
    """What adapters borrow from Passback: its current signing key and the database-backed token cache.
    The worker, the roster sync and the read-back API all call LMSs with it."""
    with db.transaction() as session:
        key = current_signing_key(session, box)
    return AdapterContext(signing_key=key, token_cache=DatabaseTokenCache(db, box))


def nudge_worker(app: Any) -> None:
    """Wake the embedded worker, if this process runs one, so new outbox rows go out now, not at its next poll."""
    nudge = app.extensions.get("passback_worker_nudge")
    if nudge is not None:
        nudge()


class DeliveryWorker:
    def __init__(
        self,
        db: Database,
        box: SecretBox,
        settings: Settings,
        *,
        http: HttpClient | None = None,
        adapters: Mapping[str, type[GradeAdapter]] = REGISTRY,
        district_id: str | None = None,
    ) -> None:
        self.db = db
        self.box = box
        self.settings = settings
        self.http = http or HttpClient(settings.http_connect_timeout, settings.http_read_timeout)
        self.adapters = adapters
        self.district_id = district_id
        self.policy = RetryPolicy(
            base_seconds=settings.backoff_base_seconds,
            max_seconds=settings.backoff_max_seconds,
            max_attempts=settings.max_attempts,
            retry_after_max_seconds=settings.retry_after_max_seconds,
        )
        self.wakeup = threading.Event()
        self._context: AdapterContext | None = None
        self._last_purge = 0.0
        self._context_loaded = 0.0

    def adapter_context(self) -> AdapterContext:
        """Passback's current signing key (re-read at most once a minute, so a rotation is picked up) and
        the database-backed token cache."""
        now = time.monotonic()
        if self._context is None or now - self._context_loaded > 60:
            self._context = build_adapter_context(self.db, self.box)
            self._context_loaded = now
        return self._context

    def claim(self, limit: int | None = None) -> list[Claim]:
        with self.db.transaction() as session:
            return claim_due_deliveries(
                session,
                limit=limit or self.settings.worker_batch_size,
                lease_seconds=self.settings.lease_seconds,
                max_attempts=self.settings.max_attempts,
                district_id=self.district_id,
            )

    def deliver_claimed(self, claim: Claim) -> str | None:
        """Deliver one claimed row through its adapter and record the outcome. Returns the new status."""
        with self.db.transaction() as session:
            work = load_work(session, self.box, claim)
        if work is None:
            with self.db.transaction() as session:
                orphaned = fail_orphaned_claim(session, claim)
            log.warning("delivery %s: %s", claim.delivery_id, "destination removed" if orphaned else "claim lost")
            return "failed" if orphaned else None
        adapter_cls = self.adapters.get(work.adapter)
        discovering = bool(
            adapter_cls is not None
            and getattr(adapter_cls, "needs_discovery", None)
            and adapter_cls.needs_discovery(work.destination.data)  # type: ignore[attr-defined]
        )
        if discovering:
            with self.db.transaction() as session:
                if not take_discovery_lease(session, work.destination.placement_id):
                    defer_claim(session, claim, DISCOVERY_WAIT_SECONDS)
                    return "pending"
        try:
            return self._deliver(claim, work, adapter_cls)
        finally:
            if discovering:
                with self.db.transaction() as session:
                    release_discovery_lease(session, work.destination.placement_id)

    def _deliver(self, claim: Claim, work: Any, adapter_cls: Any) -> str | None:
        error: DeliveryError | None = None
        try:
            if adapter_cls is None:
                raise PermanentDeliveryError(f"no adapter named {work.adapter!r} is installed")
            adapter = adapter_cls.from_settings(work.settings, self.http, self.adapter_context())
            if work.operation == "delete":
                receipt = adapter.delete_result(work.destination)
            else:
                receipt = adapter.deliver(work.grade, work.destination)
        except (RetryableDeliveryError, PermanentDeliveryError) as exc:
            error = exc
        except Exception as exc:
            # An adapter bug must not lose the grade: record it and retry within the bounded attempts.
            log.exception("delivery %s: adapter %s raised", claim.delivery_id, work.adapter)
            error = RetryableDeliveryError(f"internal error in adapter {work.adapter}: {type(exc).__name__}: {exc}")
        with self.db.transaction() as session:
            if error is None:
                ok = record_success(session, claim, receipt)
                status = "delivered" if ok else None
            else:
                status = record_failure(session, claim, error, self.policy)
        log.info(
            "delivery %s via %s: %s%s",
            claim.delivery_id,
            work.adapter,
            status or "claim lost",
            f" ({error.message})" if error else "",
        )
        return status

    def run_once(self, limit: int | None = None) -> int:
        """Claim a batch and deliver it. Returns how many deliveries were attempted."""
        claims = self.claim(limit)
        for claim in claims:
            self.deliver_claimed(claim)
        return len(claims)

    def run_until_idle(self, timeout: float = 30.0) -> int:
        """Deliver until nothing is due (for CLI one-shots and tests). Returns attempts made."""
        deadline = time.monotonic() + timeout
        total = 0
        while time.monotonic() < deadline:
            done = self.run_once()
            total += done
            if done == 0:
                return total
        return total

    def purge_if_due(self) -> None:
        """Housekeeping at most once an hour per worker, between delivery rounds."""
        now = time.monotonic()
        if now - self._last_purge < PURGE_INTERVAL_SECONDS:
            return
        self._last_purge = now
        from gateway.services.maintenance import purge_expired

        with self.db.transaction() as session:
            purge_expired(session, idempotency_ttl_seconds=self.settings.idempotency_ttl_seconds)

    def run_forever(self, stop: threading.Event) -> None:
        log.info("delivery worker started")
        while not stop.is_set():
            try:
                self.purge_if_due()
            except Exception:
                log.exception("delivery worker: housekeeping failed")
            try:
                done = self.run_once()
            except Exception:
                # The database may be briefly unavailable; keep the worker alive and try again.
                log.exception("delivery worker: claim round failed")
                done = 0
            if done == 0:
                self.wakeup.wait(self.settings.worker_poll_seconds)
                self.wakeup.clear()
        log.info("delivery worker stopped")


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

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        self.worker.wakeup.set()
        self.thread.join(timeout)

    def nudge(self) -> None:
        """Look for due deliveries now rather than at the next poll (called after a grade is accepted)."""
        self.worker.wakeup.set()
