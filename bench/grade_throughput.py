"""`make bench`: accepted grades per second for POST /v1/grade, against a bare one-insert Flask endpoint.

Both are served the same way, `gunicorn -w 2` (sync workers) on 127.0.0.1, from one fresh database per
backend, and measured in the same run in alternating rounds (bare, Passback, Passback, bare, …) so drift on
a shared machine hits both alike. The figure that matters is the ratio Passback / bare; absolute numbers
depend on the machine and are reported only next to their baseline.

- Passback runs with GATEWAY_EMBEDDED_WORKER=false: the benchmark measures *acceptance* (grade, revision
  and outbox rows in one transaction, then 202), not delivery. `--embedded-worker` then restarts it with the
  worker thread on (delivering to its own sandbox LMS, through the same two gunicorn workers) and measures
  again; there every round starts with an empty outbox, so the worker delivers during Passback rounds only,
  and the time it needs to finish a round's deliveries is reported as well (accepted-and-delivered/s).
- The bare endpoint (bench/bare_app.py) parses the same JSON body and inserts one row through an engine made
  by gateway.db.make_engine (same SQLite WAL / BEGIN IMMEDIATE settings, psycopg 3 on PostgreSQL), into
  its own SQLite file, or its own table in the benchmark's PostgreSQL database.
- Every request to Passback is a distinct accepted grade: the district is seeded with `gateway demo --json`
  plus enough enrolled students (--students); --new-fraction of the posts (default half) create the grade
  of a fresh (student, assignment) pair, the others add a revision to an existing grade with another
  percentage and a later timestamp, in the same mix in every round. Each pair always goes to the same
  client, in order, so no post races another for one grade row. Anything but 202 counts as an error;
  afterwards the database must hold one revision per 202.
- The load comes from --clients processes on this machine (http.client, loopback), so the clients share the
  CPU with the servers; keep --clients modest on small machines.
- SQLite always (a file in a temporary directory). PostgreSQL too when GATEWAY_BENCH_DATABASE_URL or
  GATEWAY_TEST_DATABASE_URL is a postgresql:// URL: the benchmark creates its own database next to the one
  named (or, without CREATEDB, its own schema in it) and drops it afterwards; it never touches the tables of
  the database named in the URL.

Prints a table and writes bench/results/latest.json. Exits 1 when a request was not answered 202 or the
database does not match the answers; never on speed.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import multiprocessing
import os
import platform
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from gateway.composition import services_of

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
HOST = "127.0.0.1"
GUNICORN_WORKERS = 2
BARE = "bare"
PASSBACK = "passback"
PASSBACK_EMBEDDED = "passback_embedded"
LABELS = {
    BARE: "bare Flask, 1 insert",
    PASSBACK: "POST /v1/grade",
    PASSBACK_EMBEDDED: "POST /v1/grade, worker on",
}


# --- load generation: runs in the client processes --------------------------------------------------------


@dataclass
class Job:
    port: int
    path: str
    headers: dict[str, str]
    bodies: list[bytes]
    deadline: float  # time.monotonic(), shared by every process on Linux
    expect: int = 202


def _client_main(conn: Connection) -> None:
    """A client process: run each Job it is sent, answer with its timings, stop on None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    while True:
        job = conn.recv()
        if job is None:
            return
        conn.send(_run_job(job))


def _run_job(job: Job) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    samples: list[str] = []
    http_conn: http.client.HTTPConnection | None = None
    start = time.monotonic()
    for body in job.bodies:
        if time.monotonic() > job.deadline:
            break
        t0 = time.monotonic()
        try:
            if http_conn is None:
                http_conn = http.client.HTTPConnection(HOST, job.port, timeout=60)
            http_conn.request("POST", job.path, body, job.headers)
            response = http_conn.getresponse()
            data = response.read()
            status: str = str(response.status)
            if response.will_close:  # gunicorn's sync workers close every connection
                http_conn.close()
                http_conn = None
        except (OSError, http.client.HTTPException) as exc:
            status, data = type(exc).__name__, str(exc).encode()
            if http_conn is not None:
                http_conn.close()
            http_conn = None
        latencies.append(time.monotonic() - t0)
        statuses[status] += 1
        if status != str(job.expect) and len(samples) < 3:
            samples.append(f"{status} {data[:300].decode(errors='replace')}")
    if http_conn is not None:
        http_conn.close()
    return {
        "start": start,
        "end": time.monotonic(),
        "latencies": latencies,
        "statuses": dict(statuses),
        "samples": samples,
        "skipped": len(job.bodies) - len(latencies),
    }


class LoadGenerator:
    """A fixed set of client processes, reused for every round so process start-up is never timed."""

    def __init__(self, clients: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        for _ in range(clients):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_client_main, args=(child,), daemon=True)
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)

    @property
    def clients(self) -> int:
        return len(self.pipes)

    def run(self, jobs: list[Job]) -> dict[str, Any]:
        """Send one job to each client at once; wall time is first request sent to last answer read."""
        try:
            for pipe, job in zip(self.pipes, jobs, strict=True):
                pipe.send(job)
            parts = [self._receive(pipe, proc) for pipe, proc in zip(self.pipes, self.procs, strict=True)]
        except (OSError, EOFError) as exc:
            raise RuntimeError(f"a client process died: {exc!r}") from exc
        latencies = [x for p in parts for x in p["latencies"]]
        statuses: Counter[str] = Counter()
        for p in parts:
            statuses.update(p["statuses"])
        return {
            "seconds": max(p["end"] for p in parts) - min(p["start"] for p in parts),
            "latencies": latencies,
            "statuses": dict(statuses),
            "samples": [s for p in parts for s in p["samples"]][:5],
            "skipped": sum(p["skipped"] for p in parts),
        }

    @staticmethod
    def _receive(pipe: Connection, proc: Any) -> dict[str, Any]:
        while not pipe.poll(1.0):
            if not proc.is_alive():
                raise RuntimeError(f"client process {proc.pid} exited with {proc.exitcode}")
        result: dict[str, Any] = pipe.recv()
        return result

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()


# --- the workload -------------------------------------------------------------------------------------------


@dataclass
class Workload:
    """Distinct, always-accepted grade posts over (student, assignment) pairs, a fixed share of them new grades.

    Post i creates the grade of the next unused pair when the running share of creates is below
    `new_fraction` (and unused pairs remain); otherwise it adds a revision to an existing grade, round-robin,
    with another percentage. Every round thus gets the same mix. Pair p always goes to client p % clients,
    which sends its bodies in order, so a pair's timestamps only grow and no two posts race for one grade.
    """

    pairs: list[tuple[str, str]]
    clients: int
    new_fraction: float
    issued: int = 0
    created: int = 0
    update_cursor: int = 0
    posts: Counter[int] = field(default_factory=Counter)
    last_timestamp: datetime = field(default_factory=lambda: datetime.now(UTC) - timedelta(seconds=1))

    def _next_pair(self) -> tuple[int, bool]:
        k = self.issued
        self.issued += 1
        want_create = int((k + 1) * self.new_fraction) > int(k * self.new_fraction)
        if (want_create or self.created == 0) and self.created < len(self.pairs):
            self.created += 1
            return self.created - 1, True
        self.update_cursor += 1
        return (self.update_cursor - 1) % self.created, False

    def take(self, count: int) -> tuple[list[list[bytes]], int]:
        """The next `count` bodies, split by client, and how many of them create a grade."""
        per_client: list[list[bytes]] = [[] for _ in range(self.clients)]
        creates = 0
        for _ in range(count):
            pair_index, create = self._next_pair()
            creates += create
            post_number = self.posts[pair_index]
            self.posts[pair_index] += 1
            user_id, assignment_id = self.pairs[pair_index]
            # Strictly increasing even when the clock does not move between two bodies.
            stamp = max(datetime.now(UTC), self.last_timestamp + timedelta(microseconds=1))
            self.last_timestamp = stamp
            body = {
                "assignmentID": assignment_id,
                "userID": user_id,
                # Never the same as the pair's previous post, so every post is a new revision.
                "percentage": ((post_number + pair_index) % 100 + 1) / 100,
                "timestamp": stamp.isoformat(timespec="microseconds"),
            }
            per_client[pair_index % self.clients].append(json.dumps(body).encode())
        return per_client, creates


@dataclass
class Target:
    name: str
    port: int
    path: str
    headers: dict[str, str]
    workload: Workload
    rounds: list[dict[str, Any]] = field(default_factory=list)
    warmup: dict[str, Any] | None = None

    def jobs(self, count: int, deadline: float) -> tuple[list[Job], int]:
        bodies, creates = self.workload.take(count)
        return [Job(self.port, self.path, self.headers, b, deadline) for b in bodies], creates


# --- servers and set-up -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class Gunicorn:
    """`gunicorn -w 2 -b 127.0.0.1:PORT APP` in its own process group, so stop() ends it and its workers."""

    def __init__(self, name: str, app_spec: str, port: int, env: dict[str, str], log_dir: Path) -> None:
        self.name, self.app_spec, self.port, self.env = name, app_spec, port, env
        self.log_path = log_dir / f"gunicorn-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "-w",
            str(GUNICORN_WORKERS),
            "-b",
            f"{HOST}:{self.port}",
            "--log-level",
            "warning",
            self.app_spec,
        ]

    def start(self) -> None:
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()

    def wait_ready(self, timeout: float = 60.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
                conn.close()
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer /healthz within {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)


def run_cli(args: list[str], env: dict[str, str]) -> str:
    """`gateway ARGS` in a fresh process with this backend's environment; its stdout."""
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"gateway {' '.join(args)} failed ({result.returncode}):\n{result.stderr}{result.stdout}")
    return result.stdout


def seed_students(settings: dict[str, Any], district_id: str, connection_id: str, course: str, count: int) -> list[str]:
    """Add `count` students enrolled in the demo course, through the same services as `gateway user add/enroll`."""
    from gateway import create_app
    from gateway.services.directory import create_user, enroll
    from gateway.services.lms import get_connection

    app = create_app(settings)
    database = services_of(app).database
    ids: list[str] = []
    try:
        with app.app_context(), database.transaction() as session:
            connection = get_connection(session, district_id, connection_id)
            for n in range(count):
                user = create_user(session, district_id, name=f"Bench Student {n}")
                enroll(session, connection, course, user, source="bench")
                ids.append(user.id)
    finally:
        database.dispose()
    return ids


def create_bare_table(url: str) -> None:
    from bench.bare_app import Base
    from gateway.db import make_engine

    engine = make_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()


def table_counts(url: str, bare_url: str) -> dict[str, Any]:
    """What the run left in the databases: it must match the 202s counted by the clients."""
    from sqlalchemy import text

    from gateway.db import make_engine

    counts: dict[str, Any] = {}
    for database_url, tables in (
        (url, ("grades", "grade_revisions", "deliveries")),
        (bare_url, ("bench_bare_grades",)),
    ):
        engine = make_engine(database_url)
        try:
            with engine.connect() as conn:
                for table in tables:
                    counts[table] = conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()  # noqa: S608
                if "deliveries" in tables:
                    rows = conn.execute(text("SELECT status, count(*) FROM deliveries GROUP BY status")).all()
                    counts["deliveries_by_status"] = {status: n for status, n in rows}
        finally:
            engine.dispose()
    return counts


def outbox_drainer(url: str, timeout: float) -> Callable[[], dict[str, Any]]:
    """A function that waits until the embedded worker has no due delivery left (or `timeout` passes)."""
    from sqlalchemy import text

    from gateway.db import make_engine

    def drain() -> dict[str, Any]:
        engine = make_engine(url)
        started = time.monotonic()
        try:
            while True:
                with engine.connect() as conn:
                    left = conn.execute(
                        text("SELECT count(*) FROM deliveries WHERE status IN ('pending', 'delivering', 'retrying')")
                    ).scalar_one()
                if left == 0 or time.monotonic() - started > timeout:
                    return {"seconds": time.monotonic() - started, "left": left}
                time.sleep(0.05)
        finally:
            engine.dispose()

    return drain


@contextlib.contextmanager
def postgres_bench_database(base_url: str) -> Iterator[tuple[str, str]]:
    """A database of our own on the server of `base_url` (or, without CREATEDB, a schema of our own in the
    database it names), dropped afterwards. Yields (url, how)."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"passback_bench_{os.getpid()}_{secrets.token_hex(3)}"
    url = make_url(base_url)
    libpq = url.set(drivername="postgresql")

    def dsn(u: Any) -> str:
        return u.render_as_string(hide_password=False)

    try:
        with psycopg.connect(dsn(libpq.set(database="postgres")), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        print(f"  (no CREATE DATABASE: {exc.__class__.__name__}; using schema {name} in {url.database})")
        with psycopg.connect(dsn(libpq), autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{name}"')
        try:
            yield dsn(url.update_query_dict({"options": f"-csearch_path={name}"})), f"schema {name}"
        finally:
            with psycopg.connect(dsn(libpq), autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        return
    try:
        yield dsn(url.set(database=name)), f"database {name}"
    finally:
        with psycopg.connect(dsn(libpq.set(database="postgres")), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- one backend --------------------------------------------------------------------------------------------


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def summarize(target: Target) -> dict[str, Any]:
    latencies = sorted(x for r in target.rounds for x in r["latencies"])
    statuses: Counter[str] = Counter()
    for r in target.rounds:
        statuses.update(r["statuses"])
    accepted = statuses.get("202", 0)
    seconds = sum(r["seconds"] for r in target.rounds)
    return {
        "label": LABELS[target.name],
        "requests": sum(statuses.values()),
        "accepted": accepted,
        "errors": sum(statuses.values()) - accepted,
        "statuses": dict(statuses),
        "error_samples": [s for r in target.rounds for s in r["samples"]][:5],
        "not_sent_before_deadline": sum(r["skipped"] for r in target.rounds),
        "seconds": round(seconds, 3),
        "accepted_per_second": round(accepted / seconds, 1) if seconds else 0.0,
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p95_ms": round(percentile(latencies, 0.95) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "new_grades": sum(r.get("creates", 0) for r in target.rounds),
        **(
            {
                "drain_seconds": round(sum(r["drain"]["seconds"] for r in target.rounds), 3),
                "accepted_and_delivered_per_second": round(
                    accepted / (seconds + sum(r["drain"]["seconds"] for r in target.rounds)), 1
                ),
                "undelivered_after_drain": sum(r["drain"]["left"] for r in target.rounds),
            }
            if target.name != BARE and target.rounds and "drain" in target.rounds[0]
            else {}
        ),
        "per_round_per_second": [round(r["statuses"].get("202", 0) / r["seconds"], 1) for r in target.rounds],
        "warmup_requests": target.warmup["requests"] if target.warmup else 0,
        "warmup_errors": target.warmup["errors"] if target.warmup else 0,
    }


def run_round(load: LoadGenerator, target: Target, count: int, timeout: float) -> dict[str, Any]:
    jobs, creates = target.jobs(count, time.monotonic() + timeout)
    result = load.run(jobs)
    result["creates"] = creates
    return result


def measure_pair(
    load: LoadGenerator,
    bare: Target,
    passback: Target,
    args: argparse.Namespace,
    progress: str,
    drain: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Warm both up, then alternate rounds bare/Passback in ABBA order; the ratio of the totals.

    With `drain` (the embedded worker is on), every round starts with an empty outbox, so bare rounds never
    share the machine with deliveries, and the time each Passback round's deliveries take is recorded.
    """
    for target in (bare, passback):
        warm = run_round(load, target, args.warmup, args.round_timeout)
        if drain is not None:
            drain()
        errors = sum(warm["statuses"].values()) - warm["statuses"].get("202", 0)
        target.warmup = {"requests": sum(warm["statuses"].values()), "errors": errors, "samples": warm["samples"]}
        if errors:
            raise RuntimeError(f"{target.name} warm-up: {errors} requests not accepted: {warm['samples']}")
    base, extra = divmod(args.requests, args.rounds)
    for n in range(args.rounds):
        count = base + (1 if n < extra else 0)
        order = (bare, passback) if n % 2 == 0 else (passback, bare)
        for target in order:
            target.rounds.append(run_round(load, target, count, args.round_timeout))
            if drain is not None:
                target.rounds[-1]["drain"] = drain()
        print(
            f"  {progress} round {n + 1}/{args.rounds}: "
            + ", ".join(
                f"{t.name} {t.rounds[-1]['statuses'].get('202', 0) / t.rounds[-1]['seconds']:.0f}/s"
                for t in (bare, passback)
            ),
            flush=True,
        )
    bare_summary, passback_summary = summarize(bare), summarize(passback)
    per_round = [
        round((p["statuses"].get("202", 0) / p["seconds"]) / (b["statuses"].get("202", 0) / b["seconds"]), 3)
        for b, p in zip(bare.rounds, passback.rounds, strict=True)
        if b["statuses"].get("202")
    ]
    ratio = (
        passback_summary["accepted_per_second"] / bare_summary["accepted_per_second"]
        if bare_summary["accepted_per_second"]
        else 0.0
    )
    return {
        "bare": bare_summary,
        passback.name: passback_summary,
        "ratio": round(ratio, 3),
        # Less sensitive than the totals to a burst of other work on a shared machine.
        "median_round_ratio": round(statistics.median(per_round), 3) if per_round else None,
        "ratio_per_round": per_round,
    }


def accepted_total(targets: list[Target]) -> int:
    """Every 202 a target answered, warm-up included (a warm-up with any other answer stops the run)."""
    return sum(
        (t.warmup["requests"] if t.warmup else 0) + sum(r["statuses"].get("202", 0) for r in t.rounds) for t in targets
    )


def run_backend(
    backend: str, url: str, bare_url: str, args: argparse.Namespace, load: LoadGenerator, workdir: Path
) -> dict[str, Any]:
    from cryptography.fernet import Fernet

    from gateway.services.demo import DEMO_ASSIGNMENTS, DEMO_COURSE

    instance = workdir / "instance"
    instance.mkdir(parents=True, exist_ok=True)
    passback_port, bare_port = free_port(), free_port()
    secret_key, encryption_keys = secrets.token_urlsafe(32), Fernet.generate_key().decode()
    env = {
        **os.environ,
        "GATEWAY_INSTANCE_DIR": str(instance),
        "GATEWAY_DATABASE_URL": url,
        "GATEWAY_SECRET_KEY": secret_key,
        "GATEWAY_ENCRYPTION_KEYS": encryption_keys,
        "GATEWAY_PUBLIC_URL": f"http://{HOST}:{passback_port}",
        "GATEWAY_EMBEDDED_WORKER": "false",
        # One token posts every grade, far faster than an app may: the limit is counted (its cost is measured)
        # but never reached.
        "GATEWAY_API_RATE_LIMIT": str(10**9),
    }
    t0 = time.monotonic()
    run_cli(["db", "upgrade"], env)
    demo = json.loads(run_cli(["demo", "--json"], env))
    assignments = [a["id"] for a in DEMO_ASSIGNMENTS]
    if args.students is not None:
        student_count = args.students
    else:  # enough pairs that every planned create finds an unused one
        posts = (args.warmup + args.requests) * (2 if args.embedded_worker else 1)
        student_count = max(len(demo["student_ids"]), -(-int(posts * args.new_fraction + 1) // len(assignments)))
    extra = seed_students(
        {"database_url": url, "secret_key": secret_key, "encryption_keys": encryption_keys, "embedded_worker": False},
        demo["district_id"],
        demo["lms_connection_id"],
        DEMO_COURSE,
        max(0, student_count - len(demo["student_ids"])),
    )
    students = (demo["student_ids"] + extra)[:student_count]
    pairs = [(s, a) for s in students for a in assignments]
    create_bare_table(bare_url)
    setup_seconds = time.monotonic() - t0

    auth = {"Content-Type": "application/json", "Authorization": f"Bearer {demo['token']}"}
    json_only = {"Content-Type": "application/json"}
    servers = {
        PASSBACK: Gunicorn(PASSBACK, "wsgi:app", passback_port, env, workdir),
        BARE: Gunicorn(BARE, "bench.bare_app:app", bare_port, {**env, "GATEWAY_DATABASE_URL": bare_url}, workdir),
    }
    bare = Target(BARE, bare_port, "/grade", json_only, Workload(pairs, load.clients, args.new_fraction))
    passback_workload = Workload(pairs, load.clients, args.new_fraction)
    result: dict[str, Any] = {
        "database": url.split("@")[-1] if backend == "postgresql" else "sqlite file in a temporary directory",
        "students": len(students),
        "grade_pairs": len(pairs),
        "setup_seconds": round(setup_seconds, 1),
    }
    passback_targets: list[Target] = []
    bare_targets: list[Target] = [bare]
    try:
        for server in servers.values():
            server.start()
        for server in servers.values():
            server.wait_ready()
        passback = Target(PASSBACK, passback_port, "/v1/grade", auth, passback_workload)
        passback_targets.append(passback)
        result["worker_off"] = measure_pair(load, bare, passback, args, f"{backend}:")
        if args.embedded_worker:
            # Same database and pairs, the same port (the sandbox LMS of the demo points at it), worker on.
            servers[PASSBACK].stop()
            servers[PASSBACK_EMBEDDED] = Gunicorn(
                PASSBACK_EMBEDDED, "wsgi:app", passback_port, {**env, "GATEWAY_EMBEDDED_WORKER": "true"}, workdir
            )
            servers[PASSBACK_EMBEDDED].start()
            servers[PASSBACK_EMBEDDED].wait_ready()
            drain = outbox_drainer(url, args.drain_timeout)
            result["worker_on_backlog"] = drain()  # what the worker-off rounds left in the outbox
            bare_again = Target(BARE, bare_port, "/grade", json_only, bare.workload)
            embedded = Target(PASSBACK_EMBEDDED, passback_port, "/v1/grade", auth, passback_workload)
            bare_targets.append(bare_again)
            passback_targets.append(embedded)
            result["worker_on"] = measure_pair(load, bare_again, embedded, args, f"{backend} (worker on):", drain=drain)
    finally:
        for server in servers.values():
            server.stop()
    counts = table_counts(url, bare_url)
    expected = {"grade_revisions": accepted_total(passback_targets), "bench_bare_grades": accepted_total(bare_targets)}
    result["database_counts"] = counts
    result["database_matches_answers"] = all(counts[k] == v for k, v in expected.items())
    result["database_expected"] = expected
    return result


# --- report -------------------------------------------------------------------------------------------------


def measured_pairs(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [data[run] for run in ("worker_off", "worker_on") if run in data]


def print_table(report: dict[str, Any]) -> None:
    meta = report["meta"]
    print()
    print(
        f"Accepted grades/s, gunicorn -w {GUNICORN_WORKERS} (sync), {meta['clients']} client processes on the same "
        f"{meta['cpu_count']}-CPU machine, {meta['requests']} requests per target in {meta['rounds']} alternating "
        f"rounds (+{meta['warmup']} warm-up)"
    )
    header = f"{'backend':<11} {'target':<28} {'grades/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'errors':>7} {'new':>6}"
    print(header)
    print("-" * len(header))
    for backend, data in report["backends"].items():
        for run in ("worker_off", "worker_on"):
            if run not in data:
                continue
            pair = data[run]
            for name in (BARE, PASSBACK if run == "worker_off" else PASSBACK_EMBEDDED):
                s = pair[name]
                print(
                    f"{backend:<11} {s['label']:<28} {s['accepted_per_second']:>9.1f} {s['p50_ms']:>8.1f} "
                    f"{s['p95_ms']:>8.1f} {s['errors']:>7} {s['new_grades'] if name != BARE else '':>6}"
                )
                if "accepted_and_delivered_per_second" in s:
                    delivered = s["accepted_and_delivered_per_second"]
                    print(
                        f"{backend:<11} {'  … accepted and delivered':<28} {delivered:>9.1f}"
                        f"   (outbox drained {s['drain_seconds']:.1f}s after its rounds, "
                        f"{s['undelivered_after_drain']} left)"
                    )
            rounds = ", ".join(f"{r:.2f}" for r in pair["ratio_per_round"])
            print(
                f"{backend:<11} {'ratio Passback / bare':<28} {pair['ratio']:>9.2f}   "
                f"(median of rounds {pair['median_round_ratio']:.2f}; rounds: {rounds})"
            )
        if not data["database_matches_answers"]:
            print(f"{backend:<11} DATABASE MISMATCH: {data['database_counts']} expected {data['database_expected']}")
    print("'new' = posts that created a grade; the rest added a revision to an existing one.")


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def backends_to_run(requested: str | None) -> dict[str, str | None]:
    pg = os.environ.get("GATEWAY_BENCH_DATABASE_URL") or os.environ.get("GATEWAY_TEST_DATABASE_URL")
    pg = pg if pg and pg.startswith("postgresql") else None
    names = requested.split(",") if requested else ["sqlite"] + (["postgresql"] if pg else [])
    chosen: dict[str, str | None] = {}
    for name in (n.strip() for n in names):
        if name == "sqlite":
            chosen["sqlite"] = None
        elif name == "postgresql":
            if pg is None:
                raise SystemExit("postgresql needs GATEWAY_BENCH_DATABASE_URL or GATEWAY_TEST_DATABASE_URL")
            chosen["postgresql"] = pg
        else:
            raise SystemExit(f"unknown backend {name!r}: sqlite or postgresql")
    return chosen


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.grade_throughput", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per target (default 2000)")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured requests per target first")
    parser.add_argument("--rounds", type=int, default=8, help="alternating rounds the requests are split into")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client processes (default 8)")
    parser.add_argument(
        "--new-fraction", type=float, default=0.5, help="share of posts that create a grade; the rest add a revision"
    )
    parser.add_argument("--students", type=int, default=None, help="enrolled students (default: enough for the mix)")
    parser.add_argument("--backends", default=None, help="sqlite,postgresql (default: sqlite, plus PG if set)")
    parser.add_argument("--embedded-worker", action="store_true", help="also measure with the worker thread on")
    parser.add_argument("--round-timeout", type=float, default=60.0, help="seconds before a round stops sending")
    parser.add_argument(
        "--drain-timeout", type=float, default=60.0, help="with --embedded-worker: longest wait for the outbox"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, SQLite file)")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "latest.json")
    args = parser.parse_args(argv)
    if min(args.requests, args.rounds, args.clients, args.students or 1) < 1 or args.warmup < 0:
        parser.error("--requests, --rounds, --clients and --students must be positive")
    if not 0 <= args.new_fraction <= 1:
        parser.error("--new-fraction must be in 0..1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    backends = backends_to_run(args.backends)
    started = time.monotonic()
    report: dict[str, Any] = {
        "meta": {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "commit": git_commit(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "gunicorn": f"gunicorn -w {GUNICORN_WORKERS} -b {HOST}:PORT (sync workers)",
            "passback_embedded_worker": "false (acceptance only)"
            + ("; and true for worker_on" if args.embedded_worker else ""),
            "requests": args.requests,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "clients": args.clients,
        },
        "backends": {},
    }
    tmp = Path(tempfile.mkdtemp(prefix="passback-bench-"))
    load = LoadGenerator(args.clients)
    try:
        for backend, pg_url in backends.items():
            workdir = tmp / backend
            workdir.mkdir()
            print(f"{backend}: migrating, seeding students, starting gunicorn …", flush=True)
            if pg_url is None:
                # Two files: the embedded worker's writes must not hold the bare endpoint's write lock.
                url, bare_url = f"sqlite:///{workdir / 'passback.db'}", f"sqlite:///{workdir / 'bare.db'}"
                report["backends"][backend] = run_backend(backend, url, bare_url, args, load, workdir)
            else:
                with postgres_bench_database(pg_url) as (url, how):
                    report["backends"][backend] = run_backend(backend, url, url, args, load, workdir)
                    report["backends"][backend]["database"] += f" ({how}, dropped afterwards)"
    finally:
        load.close()
        if args.keep:
            print(f"kept {tmp}")
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    report["meta"]["total_seconds"] = round(time.monotonic() - started, 1)
    print_table(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}")
    failed = [
        backend
        for backend, data in report["backends"].items()
        if not data["database_matches_answers"]
        or any(
            pair[name]["errors"]
            for pair in measured_pairs(data)
            for name in (BARE, PASSBACK, PASSBACK_EMBEDDED)
            if name in pair
        )
    ]
    if failed:
        print(f"FAILED: requests not accepted or database mismatch on {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
