"""`make bench`, webhook fan-out (issue 15): LMS delivery with and without webhooks, in the same run.

1. Without webhooks: 10,000 grades (--students 100 x --assignments 100, posted 1,000 a request) are delivered
   by the delivery worker (`DeliveryWorker.run_forever`, what the embedded worker and `gateway worker` run: its
   LMS threads and its webhook sender's own threads) to --connections sandbox-protocol LMSs, each request answered
   after --lms-latency. Reported: LMS grades/s, from the worker's start to the last grade recorded delivered.
2. With webhooks sent from the same process: five endpoints of the app hear `grade.delivered`: three that answer
   at once, one that always answers 500, and one that answers after --slow-seconds. The same number of new grades
   (other students), the same worker: LMS grades/s again, and when the healthy endpoints had every event
   (distinct webhook-ids).
3. With webhooks from a process of their own: GATEWAY_WEBHOOK_THREADS=0 in the delivery worker and
   `gateway worker --webhooks-only` beside it; again new grades, LMS grades/s and the healthy endpoints' time.
Then: every event written (grades x 5 endpoints per phase with webhooks), what the failing endpoint got and holds
(retrying or waiting, none lost), how far the slow one got. The endpoints run in a process of their own (the apps'
side of each webhook must not share the delivery worker's interpreter lock); the simulated LMSs run in this one,
in every phase alike.

Aim: LMS grades/s with webhooks about what it is without (the ratio near 1). Exits 1 when a grade is not
delivered, a healthy endpoint misses an event or an event is lost; never on speed. Uses PostgreSQL (a database
of its own) when GATEWAY_BENCH_DATABASE_URL or GATEWAY_TEST_DATABASE_URL names one, else SQLite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cryptography.fernet import Fernet  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from bench.backfill import bench_settings, database  # noqa: E402
from gateway import create_app  # noqa: E402
from gateway.composition import services_of  # noqa: E402
from gateway.models import Delivery, DeliveryStatus, WebhookMessage  # noqa: E402
from gateway.services.catalog import upsert_assignments  # noqa: E402
from gateway.services.directory import authorize_app, create_app_partner, create_district, create_user, enroll  # noqa: E402
from gateway.services.lms import add_lms_connection, add_placement  # noqa: E402

RESULTS = ROOT / "bench" / "results"
ENDPOINTS = ("healthy-1", "healthy-2", "healthy-3", "failing", "slow")
HEALTHY = ENDPOINTS[:3]
LMS_SECRET = "bench-lms-secret-0123456789"  # noqa: S105 - the simulated LMS checks nothing


class _Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes: without this, Nagle and the client's delayed ACK add 40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))


class Lms(ThreadingHTTPServer):
    """The sandbox protocol (adapters/sandbox.py): PUT …/scores/{student} stores and answers the entry after
    `latency`. Counts the writes."""

    daemon_threads = True

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.writes = 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _LmsHandler)

    def url(self, n: int) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/lms/{n}"


class _LmsHandler(_Quiet):
    server: Lms

    def do_PUT(self) -> None:
        body = json.loads(self._body())
        time.sleep(self.server.latency)
        with self.server.lock:
            self.server.writes += 1
        self._answer(200, json.dumps({"entry": {"scoreGiven": body["scoreGiven"]}}).encode())


class Receivers(ThreadingHTTPServer):
    """Five endpoints on one server: /healthy-N answers 204 at once, /failing 500, /slow 204 after `slow`.
    Records the distinct webhook-ids each one answered 2xx, and how many requests each got."""

    daemon_threads = True

    def __init__(self, slow: float) -> None:
        self.slow = slow
        self.taken: dict[str, set[str]] = defaultdict(set)
        self.requests: Counter[str] = Counter()
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"


class _ReceiverHandler(_Quiet):
    server: Receivers

    def do_GET(self) -> None:
        """/stats: how many distinct events each endpoint took, and how many requests it got."""
        with self.server.lock:
            stats = {
                "taken": {name: len(ids) for name, ids in self.server.taken.items()},
                "requests": dict(self.server.requests),
            }
        self._answer(200, json.dumps(stats).encode())

    def do_POST(self) -> None:
        self._body()
        name = self.path.strip("/")
        if name == "slow":
            time.sleep(self.server.slow)
        status = 500 if name == "failing" else 204
        now = time.monotonic()
        with self.server.lock:
            self.server.requests[name] += 1
            self.server.first.setdefault(name, now)
            if status < 300:
                self.server.taken[name].add(self.headers["webhook-id"])
                self.server.last[name] = now
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


def _serve_receivers(slow: float, conn: Any) -> None:
    server = Receivers(slow)
    conn.send(server.server_address[1])
    server.serve_forever(poll_interval=0.05)


class RemoteReceivers:
    """The receivers in a process of their own: their HTTP work must not share the delivery worker's interpreter
    (its GIL), or the bench would charge the apps' side of every webhook to Passback's LMS deliveries."""

    def __init__(self, slow: float) -> None:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self.process = context.Process(target=_serve_receivers, args=(slow, child), daemon=True)
        self.process.start()
        self.port = int(parent.recv())

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def stats(self) -> dict[str, dict[str, int]]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=10) as answer:
            stats: dict[str, dict[str, int]] = json.loads(answer.read())
        return stats

    def taken(self, name: str) -> int:
        return int(self.stats()["taken"].get(name, 0))

    def close(self) -> None:
        self.process.terminate()
        self.process.join(10)


@contextlib.contextmanager
def serving(server: ThreadingHTTPServer) -> Iterator[None]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def build(app: Any, lms: Lms, args: argparse.Namespace) -> tuple[str, list[list[str]]]:
    """A district with --connections sandbox connections; --assignments assignments, each placed in one
    connection's course; three cohorts (one per phase) of --students students enrolled in every course. Returns
    the token and the cohorts' user ids."""
    db, box = services_of(app).database, services_of(app).box
    assignments = [{"id": f"a-{n}", "name": f"A {n}", "scoreMaximum": 100} for n in range(args.assignments)]
    cohorts: list[list[str]] = [[], [], []]
    with db.transaction() as session:
        district = create_district(session, "Fan-out District")
        partner = create_app_partner(session, "Fan-out App", "https://bench.example/callback").app
        upsert_assignments(session, partner.id, assignments)
        token = authorize_app(session, partner.id, district.id).raw
        connections = [
            add_lms_connection(
                session, box, district.id, f"LMS {n}", "sandbox", {"base_url": lms.url(n), "secret": LMS_SECRET}
            )
            for n in range(args.connections)
        ]
        for cohort in cohorts:
            for n in range(args.students):
                user = create_user(session, district.id, name=f"S {len(cohort)} {n}")
                for connection in connections:
                    enroll(session, connection, f"course-{connection.name}", user)
                cohort.append(user.id)
        for n, assignment in enumerate(assignments):
            connection = connections[n % len(connections)]
            add_placement(
                session, district.id, connection.id, partner.id, assignment["id"], f"course-{connection.name}"
            )
    return token, cohorts


def post_grades(client: Any, token: str, students: list[str], assignments: int) -> float:
    grades = [
        {"assignmentID": f"a-{a}", "userID": student, "percentage": ((n * 31 + a) % 100) / 100}
        for n, student in enumerate(students)
        for a in range(assignments)
    ]
    started = time.monotonic()
    for start in range(0, len(grades), 1000):
        answer = client.post(
            "/v1/grades", json={"grades": grades[start : start + 1000]}, headers={"Authorization": f"Bearer {token}"}
        )
        assert answer.status_code == 200 and answer.json["rejected"] == 0, answer.get_data(as_text=True)[:500]
    return time.monotonic() - started


def undelivered(app: Any) -> int:
    with services_of(app).database.transaction() as session:
        return int(
            session.scalar(
                select(func.count()).select_from(Delivery).where(Delivery.status != DeliveryStatus.DELIVERED)
            )
            or 0
        )


def deliver(app: Any, timeout: float) -> tuple[Any, threading.Event, float]:
    """Start the delivery worker (LMS threads and webhook threads) and wait until every grade is delivered.
    Returns the worker, its stop event (still running) and the seconds the LMS deliveries took."""
    worker = services_of(app).delivery_worker()
    stop = threading.Event()
    started = time.monotonic()
    threading.Thread(target=worker.run_forever, args=(stop,), name="bench-worker", daemon=True).start()
    deadline = started + timeout
    while undelivered(app) and time.monotonic() < deadline:
        time.sleep(0.2)
    seconds = time.monotonic() - started
    if undelivered(app):
        raise SystemExit(f"{undelivered(app)} grades not delivered within {timeout:g} s")
    return worker, stop, seconds


def stop_worker(worker: Any, stop: threading.Event) -> None:
    stop.set()
    worker.request_stop()
    worker.finish_stop()


def message_states(app: Any) -> dict[str, dict[str, int]]:
    with services_of(app).database.transaction() as session:
        rows = session.execute(
            select(WebhookMessage.endpoint_id, WebhookMessage.status, func.count()).group_by(
                WebhookMessage.endpoint_id, WebhookMessage.status
            )
        ).all()
    states: dict[str, dict[str, int]] = defaultdict(dict)
    for endpoint_id, status, count in rows:
        states[endpoint_id][status] = count
    return states


def webhooks_process(url: str, keys: str, args: argparse.Namespace, log: Path) -> subprocess.Popen[bytes]:
    """`gateway worker --webhooks-only`: the webhook sender in a process of its own."""
    env = {
        **os.environ,
        "GATEWAY_DATABASE_URL": url,
        "GATEWAY_ENCRYPTION_KEYS": keys,
        "GATEWAY_SECRET_KEY": "bench-secret-key",
        "GATEWAY_INSTANCE_DIR": str(log.parent),
        "GATEWAY_WORKER_POLL_SECONDS": "0.2",
        "GATEWAY_WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true",
        "GATEWAY_WEBHOOK_RATE": str(args.webhook_rate),
        "GATEWAY_WEBHOOK_BURST": str(int(args.webhook_rate)),
    }
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "worker", "--webhooks-only"], env=env, stdout=out, stderr=out
        )


def fan_out(receivers: RemoteReceivers, expected: int, started: float, timeout: float) -> float | None:
    """Seconds from `started` until every healthy endpoint took `expected` events (None: not within timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        taken = receivers.stats()["taken"]
        if all(taken.get(n, 0) >= expected for n in HEALTHY):
            return time.monotonic() - started
        time.sleep(0.2)
    return None


def run(args: argparse.Namespace, url: str, tmp: Path) -> dict[str, Any]:
    keys = Fernet.generate_key().decode()
    settings = bench_settings(
        url,
        keys,
        lease_seconds=120.0,
        worker_poll_seconds=0.2,
        connection_rate=100_000.0,
        connection_burst=100_000,
        webhook_allow_private_addresses=True,
        webhook_rate=args.webhook_rate,
        webhook_burst=int(args.webhook_rate),
    )
    app = create_app(settings)
    client = app.test_client()
    grades = args.students * args.assignments
    report: dict[str, Any] = {"grades": grades, "connections": args.connections, "lms_latency": args.lms_latency}
    lms, receivers = Lms(args.lms_latency), RemoteReceivers(args.slow_seconds)
    with serving(lms), contextlib.closing(receivers):
        token, cohorts = build(app, lms, args)

        # 1. without webhooks
        report["ingest_seconds"] = post_grades(client, token, cohorts[0], args.assignments)
        worker, stop, seconds = deliver(app, args.timeout)
        stop_worker(worker, stop)
        report["without"] = {"lms_seconds": seconds, "lms_grades_per_second": grades / seconds}

        # 2. with webhooks, sent from the delivery worker's process: five endpoints hear every delivery
        endpoint_ids: dict[str, str] = {}
        for name in ENDPOINTS:
            answer = client.post(
                "/v1/webhooks",
                json={"url": receivers.url(name), "events": ["grade.delivered"]},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert answer.status_code == 201, answer.get_data(as_text=True)
            endpoint_ids[name] = answer.json["id"]
        post_grades(client, token, cohorts[1], args.assignments)
        worker, stop, seconds = deliver(app, args.timeout)
        done = fan_out(receivers, grades, time.monotonic() - seconds, args.webhook_timeout)
        stop_worker(worker, stop)
        report["same_process"] = {
            "lms_seconds": seconds,
            "lms_grades_per_second": grades / seconds,
            "ratio": report["without"]["lms_seconds"] / seconds,
            "healthy_all_delivered_seconds": done,
            "webhooks_per_second": grades * len(HEALTHY) / done if done else None,
        }

        # 3. with webhooks from a process of their own (GATEWAY_WEBHOOK_THREADS=0 in the delivery worker)
        settings.webhook_threads = 0
        post_grades(client, token, cohorts[2], args.assignments)
        sender = webhooks_process(url, keys, args, tmp / "webhooks.log")
        try:
            worker, stop, seconds = deliver(app, args.timeout)
            done = fan_out(receivers, 2 * grades, time.monotonic() - seconds, args.webhook_timeout)
            stop_worker(worker, stop)
        finally:
            sender.send_signal(signal.SIGTERM)
            sender.wait(30)
        report["own_process"] = {
            "lms_seconds": seconds,
            "lms_grades_per_second": grades / seconds,
            "ratio": report["without"]["lms_seconds"] / seconds,
            "healthy_all_delivered_seconds": done,
            "webhooks_per_second": grades * len(HEALTHY) / done if done else None,
            "sender_exit_code": sender.returncode,
        }
        states = message_states(app)
        stats = receivers.stats()

    messages = sum(sum(s.values()) for s in states.values())
    healthy_taken = min(stats["taken"].get(n, 0) for n in HEALTHY)
    failing = states.get(endpoint_ids["failing"], {})
    report.update(
        {
            "endpoints": len(ENDPOINTS),
            "messages_written": messages,
            "healthy_events_each": healthy_taken,
            "failing_requests": stats["requests"].get("failing", 0),
            "failing_states": failing,
            "slow_seconds_per_request": args.slow_seconds,
            "slow_delivered": stats["taken"].get("slow", 0),
            "database": "postgresql" if url.startswith("postgresql") else "sqlite",
        }
    )
    problems = []
    if messages != 2 * grades * len(ENDPOINTS):
        problems.append(f"{messages} messages written, {2 * grades * len(ENDPOINTS)} expected")
    if healthy_taken != 2 * grades:
        problems.append(f"a healthy endpoint took {healthy_taken} of {2 * grades} events")
    if sum(failing.values()) != 2 * grades or failing.get("delivered"):
        problems.append(f"the failing endpoint's messages: {failing}")
    if report["own_process"]["sender_exit_code"] != 0:
        problems.append(f"gateway worker --webhooks-only exited with {report['own_process']['sender_exit_code']}")
    report["problems"] = problems
    services_of(app).database.dispose()
    return report


def _seconds(value: float | None) -> str:
    return "not within the timeout" if value is None else f"{value:.0f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=100)
    parser.add_argument("--assignments", type=int, default=100)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--lms-latency", type=float, default=0.02)
    parser.add_argument("--slow-seconds", type=float, default=2.0)
    parser.add_argument("--webhook-rate", type=float, default=1000.0, help="per endpoint, requests a second")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--webhook-timeout", type=float, default=900.0)
    parser.add_argument("--json", type=Path, default=RESULTS / "webhook_fanout.json")
    args = parser.parse_args(argv)
    postgres_url = os.environ.get("GATEWAY_BENCH_DATABASE_URL") or os.environ.get("GATEWAY_TEST_DATABASE_URL")
    if postgres_url and not postgres_url.startswith("postgresql"):
        postgres_url = None
    with tempfile.TemporaryDirectory() as tmp, database(postgres_url, Path(tmp), "fanout") as url:
        print(f"webhook fan-out: {args.students * args.assignments} grades, three times …", flush=True)
        report = run(args, url, Path(tmp))
    report["when"] = datetime.now(UTC).isoformat()
    report["args"] = {k: str(v) for k, v in vars(args).items()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    without, same, own = report["without"], report["same_process"], report["own_process"]
    print(
        f"  LMS grades/s ({report['database']}): without webhooks {without['lms_grades_per_second']:.0f}; "
        f"with 5 endpoints sent from the same process {same['lms_grades_per_second']:.0f} "
        f"(ratio {same['ratio']:.2f}), from a process of their own {own['lms_grades_per_second']:.0f} "
        f"(ratio {own['ratio']:.2f})\n"
        f"  healthy endpoints took every event: {_seconds(same['healthy_all_delivered_seconds'])} and "
        f"{_seconds(own['healthy_all_delivered_seconds'])} after the worker started "
        f"({report['messages_written']} events written)\n"
        f"  failing endpoint: {report['failing_requests']} requests for {2 * report['grades']} events "
        f"({report['failing_states']}); slow endpoint ({args.slow_seconds:g} s a request): "
        f"{report['slow_delivered']} taken",
        flush=True,
    )
    for problem in report["problems"]:
        print(f"  FAILED: {problem}", flush=True)
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
