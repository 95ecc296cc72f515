"""Prometheus metrics (prometheus_client). Counters and histograms are counted where things happen (LMS
requests, throttle refusals, token fetches, webhook sends, grade intake); the outbox's state is read from the
database when /metrics is scraped (a collector, not a gauge kept up to date), so every process shows the same
numbers. Under gunicorn with several workers set PROMETHEUS_MULTIPROC_DIR (before start, to an empty directory):
every process writes its counts there and a scrape sums them. No Flask here: services count through it too.
See docs/operations.md, "Metrics"."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

log = logging.getLogger("passback.metrics")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# This process's counts (single-process mode); in multiprocess mode they are read back from the directory.
PROCESS_REGISTRY = CollectorRegistry(auto_describe=True)

LMS_REQUEST_SECONDS = Histogram(
    "passback_lms_request_seconds",
    "Time of one HTTP request to an LMS (throttle waits excluded), by adapter and answer class.",
    ["adapter", "status_class"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=PROCESS_REGISTRY,
)
LMS_THROTTLED = Counter(
    "passback_lms_throttled",
    "LMS answers that asked Passback to slow down (429, or Canvas's rate-limit 403), by adapter.",
    ["adapter", "status"],
    registry=PROCESS_REGISTRY,
)
LMS_TOKEN_FETCHES = Counter(
    "passback_lms_token_fetches",
    "LMS access tokens fetched (OAuth 2 client credentials) and cached.",
    registry=PROCESS_REGISTRY,
)
DELIVERY_OUTCOMES = Counter(
    "passback_delivery_outcomes",
    "Delivery attempts recorded by this installation's workers, by adapter and resulting status.",
    ["adapter", "status"],
    registry=PROCESS_REGISTRY,
)
WEBHOOK_DELIVERIES = Counter(
    "passback_webhook_deliveries",
    "Webhook messages sent to apps, by outcome (delivered: 2xx; rejected: another status; error: no answer).",
    ["outcome"],
    registry=PROCESS_REGISTRY,
)
INGEST_REQUESTS = Counter(
    "passback_ingest_requests",
    "Grade intake requests (POST /v1/grade, POST /v1/grades), by endpoint and HTTP status.",
    ["endpoint", "status"],
    registry=PROCESS_REGISTRY,
)


def observe_lms_request(adapter: str, seconds: float, status: int | None, refused: bool) -> None:
    """One LMS request's answer (status None: no answer, a transport error or the deadline)."""
    status_class = "none" if status is None else f"{status // 100}xx"
    LMS_REQUEST_SECONDS.labels(adapter or "unknown", status_class).observe(seconds)
    if refused and status is not None:
        LMS_THROTTLED.labels(adapter or "unknown", str(status)).inc()


def count_token_fetch() -> None:
    LMS_TOKEN_FETCHES.inc()


def count_delivery_outcome(adapter: str, status: str | None) -> None:
    DELIVERY_OUTCOMES.labels(adapter or "unknown", status or "claim_lost").inc()


def count_webhook(outcome: str) -> None:
    WEBHOOK_DELIVERIES.labels(outcome).inc()


def count_ingest(endpoint: str, status: int) -> None:
    INGEST_REQUESTS.labels(endpoint, str(status)).inc()


@dataclass(frozen=True)
class OutboxRow:
    """One group of the outbox read at scrape time: deliveries of a connection in a status."""

    district_id: str
    connection_id: str | None
    status: str
    count: int
    # Seconds since the oldest of them was created.
    oldest_age: float


class OutboxCollector(Collector):
    """Gauges read from the database at each scrape: deliveries by status and connection (unfinished work and
    failures; delivered and superseded rows are history, counted by passback_delivery_outcomes instead), and
    the age of the oldest grade still waiting per connection."""

    def __init__(self, read: Callable[[], Sequence[OutboxRow]], waiting_statuses: Iterable[str]) -> None:
        self.read = read
        self.waiting = frozenset(waiting_statuses)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("passback_metrics_database_up", "Whether the database answered this scrape.")
        try:
            rows = self.read()
        except Exception as exc:  # a scrape must answer: the outbox gauges are left out, and say why
            log.warning("metrics: outbox not read: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        deliveries = GaugeMetricFamily(
            "passback_deliveries",
            "Deliveries in the outbox by status and LMS connection (unfinished and failed ones).",
            labels=["district", "connection", "status"],
        )
        oldest = GaugeMetricFamily(
            "passback_oldest_undelivered_age_seconds",
            "Age of the oldest grade waiting to be delivered (pending, delivering or retrying), per connection.",
            labels=["district", "connection"],
        )
        ages: dict[tuple[str, str], float] = {}
        for row in rows:
            connection = row.connection_id or ""
            deliveries.add_metric([row.district_id, connection, row.status], row.count)
            if row.status in self.waiting:
                key = (row.district_id, connection)
                ages[key] = max(ages.get(key, 0.0), row.oldest_age)
        for (district, connection), age in sorted(ages.items()):
            oldest.add_metric([district, connection], age)
        yield deliveries
        yield oldest


class _Scrape(Collector):
    """What one scrape shows: this process's counts, or every process's in multiprocess mode, and the extras."""

    def __init__(self, extras: Sequence[Collector]) -> None:
        self.extras = extras

    def collect(self) -> Iterator[Metric]:
        if multiprocess_dir():
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            yield from registry.collect()
        else:
            yield from PROCESS_REGISTRY.collect()
        for extra in self.extras:
            yield from extra.collect()


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def render(extras: Sequence[Collector] = ()) -> bytes:
    """The Prometheus text exposition of every metric."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Scrape(extras))
    return generate_latest(registry)
