"""The webhook sender: claims an endpoint's due messages from the webhook outbox, POSTs each one signed, and
records the answers. It runs beside the LMS delivery worker and never on its threads: its own loop, its own pool
of `GATEWAY_WEBHOOK_THREADS` threads (one endpoint per thread), its own HTTP client and request deadline, and its
own per-endpoint throttle and concurrency slots in the shared limiter. So an endpoint that is slow, hangs or is
down holds only its own thread, and never a grade on its way to an LMS.

What it reuses from LMS delivery: the HTTP client with its total request deadline and answer cap
(adapters/http.py), the per-key throttle that pauses on a 429 (`ThrottledHttpClient`, `Throttle`), the URL
policy LMS URLs follow (adapters/url_policy.py), the concurrency slots (gateway/throttle.py `delivery_slot`), the
backoff (`RetryPolicy`), the stop semantics and daemon threads of gateway/worker.py."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from adapters.base import DeliveryError
from adapters.http import BucketViews, HttpClient, Throttle, ThrottledHttpClient, body_excerpt, parse_retry_after
from adapters.url_policy import HostResolver, PolicedHttpClient, UrlAwaitingApproval, UrlRefused
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config import Settings
from gateway.crypto import SecretBox
from gateway.db import Database, database_trouble
from gateway.logs import log_extra
from gateway.metrics import count_webhook
from gateway.services.outcomes import RetryPolicy
from gateway.services.webhook_outbox import (
    LIMIT_KEY,
    Answer,
    MessageClaim,
    Outgoing,
    Target,
    claim_messages,
    due_endpoints,
    give_up_on_old_messages,
    load_target,
    message_header_id,
    record_answers,
    release_claims,
    renew_claims,
    signed_headers,
)
from gateway.services.webhooks import refused_at_send, url_policy
from gateway.throttle import Limiter, delivery_slot, make_limiter

if TYPE_CHECKING:
    from gateway.worker import DaemonThreads

log = logging.getLogger("passback.webhooks")
# An endpoint's answer is read up to this much: only its status matters (and a line of it for the error).
MAX_ANSWER_BYTES = 64 * 1024
# A throttled endpoint waits at most this long in a thread before its message is retried later instead.
MAX_THROTTLE_WAIT_SECONDS = 5.0
DATABASE_OUTAGE_PAUSE_SECONDS = 2.0
# While LMS delivery in the same process has work in hand, webhooks use at most this many threads: grades first,
# and still two, so one slow endpoint cannot hold every webhook back.
BUSY_LMS_THREADS = 2
# A retryable DeliveryError carries no retry_after beyond what the throttle learnt; at most a day is honoured.
RETRY_AFTER_MAX_SECONDS = 86400.0


class WebhookSender:
    def __init__(
        self,
        db: Database,
        box: SecretBox,
        settings: Settings,
        *,
        limiter: Limiter | None = None,
        http: HttpClient | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.db = db
        self.box = box
        self.settings = settings
        self.clock = clock
        deadline = settings.webhook_deadline()
        # Its own client: its own deadline and pooled sessions, apart from the LMS requests'.
        self.http = http or HttpClient(settings.http_connect_timeout, deadline, deadline, max_body=MAX_ANSWER_BYTES)
        self.limiter = limiter or make_limiter(settings.broker_url)
        self.resolver = HostResolver()
        self.buckets = BucketViews()
        self.policy = RetryPolicy(
            base_seconds=settings.webhook_backoff_base_seconds,
            max_seconds=settings.webhook_backoff_max_seconds,
            retry_after_max_seconds=RETRY_AFTER_MAX_SECONDS,
        )
        self.wakeup = threading.Event()
        # Set by request_stop: claim nothing more and start no send; `hurry`: do not wait for the sends in flight.
        self.stopping = threading.Event()
        self.hurry = threading.Event()
        self._held: dict[str, MessageClaim] = {}
        self._held_changed = threading.Condition()
        # Whether LMS delivery in this process has work in hand: then webhooks take BUSY_LMS_THREADS threads at
        # most, so the process's CPU goes to grades first (the delivery worker that runs this sender sets it).
        self.lms_busy: Callable[[], bool] = lambda: False

    # --- one endpoint's round

    def send_endpoint(self, endpoint_id: str) -> int:
        """Take one of the endpoint's concurrency slots, claim its due messages, send them one after another and
        record the answers. Returns how many messages were claimed (0: none due, or every slot taken)."""
        settings = self.settings
        slot_ttl = settings.lease_seconds * 3
        with delivery_slot(self.limiter, LIMIT_KEY + endpoint_id, settings.webhook_concurrency, slot_ttl) as slot:
            if slot is None or self.stopping.is_set():
                return 0
            claimed_at = self.clock.monotonic()
            with self.db.transaction() as session:
                now = self.clock.now()
                outgoing = claim_messages(
                    session,
                    endpoint_id,
                    limit=settings.webhook_batch_size,
                    lease_seconds=settings.lease_seconds,
                    now=now,
                )
                target = load_target(session, self.box, endpoint_id, now=now) if outgoing else None
            if target is None:
                return 0
            claims = [item.claim for item in outgoing]
            self._hold(claims)
            try:
                self._send(target, outgoing, claimed_at)
            finally:
                self._let_go(claims)
            return len(claims)

    def _send(self, target: Target, outgoing: list[Outgoing], claimed_at: float) -> None:
        client = PolicedHttpClient(
            ThrottledHttpClient(
                self.http,
                self.limiter,
                Throttle(
                    key=LIMIT_KEY + target.endpoint_id,
                    rate=self.settings.webhook_rate,
                    burst=max(1, min(self.settings.webhook_burst, int(self.settings.webhook_rate))),
                    default_pause=self.settings.connection_pause_seconds,
                    headroom=self.settings.webhook_concurrency,
                    max_wait=MAX_THROTTLE_WAIT_SECONDS,
                ),
                buckets=self.buckets,
            ),
            url_policy(target.url, allow_private=self.settings.webhook_allow_private_addresses, resolver=self.resolver),
        )
        answers: list[tuple[MessageClaim, Answer]] = []
        unsent: list[MessageClaim] = []
        checked = claimed_at
        pending = [item.claim for item in outgoing]
        failed = False
        for item in outgoing:
            pending.remove(item.claim)
            if self.stopping.is_set() or failed:
                # Stopping; or the endpoint just failed, and the rest would most likely fail too: they wait
                # (unspent) until its pause ends.
                unsent.append(item.claim)
                continue
            if self.clock.monotonic() - checked >= self.settings.lease_seconds / 3:
                # A third of the lease has passed: renew what is left, and send nothing whose claim was lost.
                with self.db.transaction() as session:
                    held = renew_claims(
                        session, [item.claim, *pending], self.settings.lease_seconds, now=self.clock.now()
                    )
                checked = self.clock.monotonic()
                if item.claim.message_id not in held:
                    log.warning("webhook %s: claim lost before sending", item.claim.message_id)
                    continue
            answer = self._post(client, target, item)
            if self.stopping.is_set() and not answer.ok:
                unsent.append(item.claim)  # the stop cut it (or it would be retried anyway): due again, unspent
                continue
            answers.append((item.claim, answer))
            failed = not answer.ok
        with self.db.transaction() as session:
            now = self.clock.now()
            paused_until = record_answers(
                session,
                target.endpoint_id,
                answers,
                self.policy,
                now=now,
            )
            if unsent:
                release_claims(session, unsent, now=now, due_at=None if self.stopping.is_set() else paused_until)
            if paused_until is not None:
                give_up_on_old_messages(session, target.endpoint_id, self.settings.webhook_retry_seconds, now=now)
        for claim, answer in answers:
            count_webhook("delivered" if answer.ok else "rejected" if answer.status is not None else "error")
            log.info(
                "webhook %s to endpoint %s: %s",
                claim.message_id,
                target.endpoint_id,
                "delivered" if answer.ok else answer.error,
                extra=log_extra(endpoint_id=target.endpoint_id),
            )

    def _post(self, client: PolicedHttpClient, target: Target, item: Outgoing) -> Answer:
        if target.problem is not None:
            return Answer(False, error=target.problem)
        if not target.secrets:
            return Answer(False, error="the endpoint was removed")
        # Real time, not the clock: the receiver checks the timestamp against its own clock.
        sent_at = int(time.time())
        webhook_id = message_header_id(item.claim.message_id)
        headers = signed_headers(target.secrets, webhook_id, sent_at, item.body)
        try:
            response = client.request("POST", target.url, data=item.body, headers=headers, max_body=MAX_ANSWER_BYTES)
        except (UrlRefused, UrlAwaitingApproval):
            # The policy words its refusals for an LMS connection's settings; say it for an endpoint.
            allow = self.settings.webhook_allow_private_addresses
            reason = refused_at_send(target.url, allow_private=allow, resolver=self.resolver)
            return Answer(False, error=f"not sent, the URL's address is refused: {reason}")
        except DeliveryError as exc:
            return Answer(
                False, status=exc.lms_status, error=exc.message, retry_after=getattr(exc, "retry_after", None)
            )
        if 200 <= response.status_code < 300:
            return Answer(True, status=response.status_code)
        excerpt = body_excerpt(response)[:200]
        return Answer(
            False,
            status=response.status_code,
            error=f"the endpoint answered HTTP {response.status_code}" + (f": {excerpt}" if excerpt else ""),
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )

    # --- held claims and stopping

    def _hold(self, claims: list[MessageClaim]) -> None:
        with self._held_changed:
            self._held.update((claim.message_id, claim) for claim in claims)

    def _let_go(self, claims: list[MessageClaim]) -> None:
        with self._held_changed:
            for claim in claims:
                if self._held.get(claim.message_id) == claim:
                    del self._held[claim.message_id]
            self._held_changed.notify_all()

    def request_stop(self, *, at_once: bool = False) -> None:
        """Claim nothing more and start no send from now on (the sends in flight may finish, unless `at_once`)."""
        self.stopping.set()
        if at_once:
            self.hurry.set()
        self.wakeup.set()
        with self._held_changed:
            self._held_changed.notify_all()

    def wait_for_rounds(self, deadline: float) -> None:
        """Until `deadline` (real time) or a stop at once, wait for the rounds in flight to record and let go."""
        with self._held_changed:
            while self._held and not self.hurry.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._held_changed.wait(min(remaining, 0.1))

    def release_held(self) -> int:
        """Give every claim still held back to due (after its requests were cut). Returns how many."""
        with self._held_changed:
            left = list(self._held.values())
        if not left:
            return 0
        released = 0
        try:
            with self.db.transaction() as session:
                released = release_claims(session, left, now=self.clock.now())
        except Exception as exc:
            # The database is away: these claims wait for their leases, as after a crash.
            log.warning("webhook sender: could not give back %d claims: %s", len(left), exc)
        self._let_go(left)
        return released

    def finish_stop(self) -> int:
        """After request_stop, for a sender that runs alone: wait up to the grace period for the sends in flight,
        cut what still runs, give back the rest. Returns how many claims were given back."""
        from adapters.http import cut_requests_in_flight
        from gateway.worker import ROUND_WIND_DOWN_SECONDS

        self.wait_for_rounds(time.monotonic() + self.settings.stop_grace())
        if self._held and cut_requests_in_flight():
            self.wait_for_rounds(time.monotonic() + ROUND_WIND_DOWN_SECONDS)
        released = self.release_held()
        log.info("webhook sender stopped: %d claims given back", released)
        return released

    # --- loops

    def run_once(self) -> int:
        """Every endpoint with due messages gets one round, one after another. Returns messages claimed."""
        with self.db.transaction() as session:
            endpoints = due_endpoints(session, limit=1000, now=self.clock.now())
        return sum(self.send_endpoint(endpoint_id) for endpoint_id in endpoints)

    def run_until_idle(self, timeout: float = 30.0) -> int:
        """Send until nothing is due (tests, `gateway worker --once`). Returns messages claimed."""
        deadline = time.monotonic() + timeout  # real time: bounds how long the caller waits
        total = 0
        while time.monotonic() < deadline:
            done = self.run_once()
            total += done
            if done == 0:
                break
        return total

    def serve(self, stop: threading.Event) -> None:
        """Send until `stop` or request_stop: up to `webhook_threads` endpoints at once, one thread each. Leaves
        the claims of a stop to the caller (finish_stop, or the delivery worker's stop)."""
        from gateway.worker import DaemonThreads

        # A process of webhooks alone (--webhooks-only) sends even where delivery workers are told to send none.
        threads = max(1, self.settings.webhook_threads)
        busy: set[str] = set()
        lock = threading.Lock()
        pool = DaemonThreads("passback-webhook")
        log.info("webhook sender started (%d endpoints at once)", threads)
        while not stop.is_set() and not self.stopping.is_set():
            try:
                self._dispatch(pool, threads, busy, lock)
            except Exception as exc:
                trouble = database_trouble(exc)
                if trouble is None:
                    log.exception("webhook sender: dispatch failed")
                else:
                    log.warning("webhook sender: database %s, trying again: %s", trouble.value, exc)
                    stop.wait(DATABASE_OUTAGE_PAUSE_SECONDS)
            # A round that sent something wakes the loop at once; one that found nothing to claim (every slot
            # of the endpoint taken elsewhere) does not, so an endpoint is not asked again before the next poll.
            self.wakeup.wait(self.settings.worker_poll_seconds)
            self.wakeup.clear()

    def run_forever(self, stop: threading.Event) -> None:
        """serve, then stop gracefully (a sender that runs alone, beside Celery's pool)."""
        self.serve(stop)
        self.request_stop()
        self.finish_stop()

    def _dispatch(self, pool: DaemonThreads, threads: int, busy: set[str], lock: threading.Lock) -> int:
        with lock:
            taken = set(busy)
        free = (min(threads, BUSY_LMS_THREADS) if self.lms_busy() else threads) - len(taken)
        if free <= 0:
            return 0
        with self.db.transaction() as session:
            endpoints = due_endpoints(session, limit=free, now=self.clock.now(), exclude=taken)
        for endpoint_id in endpoints:
            with lock:
                busy.add(endpoint_id)
            pool.submit(self._round, endpoint_id, busy, lock)
        return len(endpoints)

    def _round(self, endpoint_id: str, busy: set[str], lock: threading.Lock) -> None:
        sent = 0
        try:
            sent = self.send_endpoint(endpoint_id)
        except Exception:
            # Unrecorded claims are taken again when their leases run out.
            log.exception("webhook sender: round for endpoint %s failed", endpoint_id)
        finally:
            with lock:
                busy.discard(endpoint_id)
            if sent:
                self.wakeup.set()
