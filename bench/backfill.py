"""`make bench`, delivery at district scale (issue 9): scenarios A (backfill), B (direct passback with pylti1p3),
D (faults and a killed worker), and the table of all four with C (ingest, from bench/grade_throughput.py).

A. Backfill: --grades (20,000) grades for --platforms (20) LTI 1.3 platforms of bench/sim_lms.py (a real HTTP
   server in its own process, --latency 50 ms per request, a token bucket of --rate requests/s per platform,
   429 beyond it). The grades are accepted first (POST /v1/grades through the app, 1,000 a request); then
   --workers Celery worker processes (`gateway worker --concurrency --threads`) and one beat start, over the
   benchmark's own PostgreSQL database (or SQLite without one) and Redis. Reported: wall time from the
   workers' launch to the last delivery, grades/s, access tokens requested, 429s caused, the workers' peak
   RSS, and the ratio to the lower bound that latency, concurrency and rate limits set:
   bound = max over platforms of max(requests / rate, requests * latency / concurrency), requests = grades
   + token requests. Aim: within 1.25 of it.
B. The same kind of grades, sent the way an app does without Passback: one after another with pylti1p3's
   `AssignmentsGradesService.put_grade` (bench/direct_pylti1p3.py), against a fresh simulated LMS with the
   same latency and rate. Sequential sending takes a long time, so B sends a sample (--direct-grades, 1,000)
   and the ratio compares rates (grades/s). Aim: Passback at least 10 times faster, with zero 429s caused.
D. Faults during a backfill of --fault-grades (5,000): 20% of LMS requests fail (half 500s, half hangs past
   Passback's 2 s read timeout, stored by the LMS all the same), 10% of the grades get a newer revision while
   delivery runs, and one of the two workers is killed with SIGKILL when half are delivered (a new one
   starts). Reported: that every grade is in the LMS exactly as its final value (count and values against
   the simulated LMS's store), and how many duplicate sends there were.

Exits 1 when a check fails (a grade missing or wrong), never on speed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gateway.composition import services_of

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cryptography.fernet import Fernet  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from adapters.lti13_ags import SCOPE_SCORE  # noqa: E402
from bench.direct_pylti1p3 import make_grades, run_direct  # noqa: E402
from bench.sim_lms import SimLms  # noqa: E402
from gateway import create_app  # noqa: E402
from gateway.config import Settings  # noqa: E402
from gateway.migrate import upgrade  # noqa: E402
from gateway.models import Delivery, DeliveryStatus, ToolKey  # noqa: E402
from gateway.services.catalog import upsert_assignments  # noqa: E402
from gateway.services.directory import (  # noqa: E402
    authorize_app,
    create_app_partner,
    create_district,
    create_user,
    enroll,
    link_identity,
)
from gateway.services.keys import current_signing_key, published_jwks, rotate_keys  # noqa: E402
from gateway.services.lms import add_lms_connection, add_placement  # noqa: E402

RESULTS = ROOT / "bench" / "results"
LINEITEMS = 5


@dataclass
class Setup:
    app: Any
    token: str
    database_url: str
    expected: dict[tuple[str, int, str], float]  # (platform, lineitem, sub) -> scoreGiven
    users: dict[tuple[str, int, str], str]  # same key -> Passback user id


def bench_settings(database_url: str, keys: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "secret_key": secrets.token_hex(16),
        "encryption_keys": keys,
        "embedded_worker": False,
    }
    values.update(overrides)
    return Settings(**values)


def tool_key(database_url: str, keys: str) -> tuple[dict[str, Any], str, str]:
    """Passback's LTI signing key, made before the simulated LMS starts (it must trust the public half)."""
    app = create_app(bench_settings(database_url, keys))
    db, box = services_of(app).database, services_of(app).box
    with db.transaction() as session:
        if session.scalar(select(ToolKey.kid)) is None:
            rotate_keys(session, box)
        jwk = published_jwks(session)["keys"][0]
        key = current_signing_key(session, box)
        pem = key.as_pem(private=True).decode()
    db.dispose()
    return jwk, pem, str(jwk["kid"])


def build(database_url: str, keys: str, sim: SimLms, grades: int, seed: int = 0) -> Setup:
    """A district with one lti13 connection per simulated platform, LINEITEMS placed assignments in each, and
    enough students (linked to their platform `sub`) for `grades` distinct grades."""
    app = create_app(bench_settings(database_url, keys))
    db, box = services_of(app).database, services_of(app).box
    platforms = sim.names
    per_platform = -(-grades // len(platforms))
    students = -(-per_platform // LINEITEMS)
    rng = random.Random(seed)
    expected: dict[tuple[str, int, str], float] = {}
    users: dict[tuple[str, int, str], str] = {}
    with db.transaction() as session:
        district = create_district(session, "Backfill District")
        partner = create_app_partner(session, "Backfill App", "https://bench.example/callback").app
        upsert_assignments(
            session, partner.id, [{"id": f"unit-{n}", "name": f"Unit {n}", "scoreMaximum": 100} for n in range(1, 6)]
        )
        token = authorize_app(session, partner.id, district.id).raw
        for name in platforms:
            spec = sim.spec(name)
            connection = add_lms_connection(
                session,
                box,
                district.id,
                name,
                "lti13",
                {
                    "platform": "generic",
                    "issuer": spec.issuer,
                    "client_id": spec.client_id,
                    "deployment_ids": ["1"],
                    "auth_url": sim.platform_url(name) + "/auth",
                    "token_url": sim.token_url(name),
                    "jwks_url": sim.platform_url(name) + "/jwks",
                    "allow_private_addresses": True,
                },
            )
            for n in range(1, LINEITEMS + 1):
                add_placement(
                    session, district.id, connection.id, partner.id, f"unit-{n}", name,
                    destination={"lineitem": sim.lineitem_url(name, n), "scopes": [SCOPE_SCORE]},
                )  # fmt: skip
            count = 0
            for s in range(students):
                sub = f"{name}-s{s}"
                user = create_user(session, district.id, name=sub)
                link_identity(session, user, connection, sub, box=box)
                enroll(session, connection, name, user)
                for n in range(1, LINEITEMS + 1):
                    if count == per_platform or len(expected) == grades:
                        break
                    expected[(name, n, sub)] = float(rng.randint(0, 100))
                    users[(name, n, sub)] = user.id
                    count += 1
    return Setup(app, token, database_url, expected, users)


def post_all(setup: Setup, values: dict[tuple[str, int, str], float], at: datetime) -> float:
    """POST /v1/grades, 1,000 a request, through the app; returns seconds."""
    client = setup.app.test_client()
    headers = {"Authorization": f"Bearer {setup.token}"}
    items = list(values.items())
    started = time.perf_counter()
    for start in range(0, len(items), 1000):
        body = {
            "grades": [
                {
                    "assignmentID": f"unit-{n}",
                    "userID": setup.users[(name, n, sub)],
                    "scoreGiven": score,
                    "scoreMaximum": 100,
                    "timestamp": (at + timedelta(milliseconds=i)).isoformat().replace("+00:00", "Z"),
                }
                for i, ((name, n, sub), score) in enumerate(items[start : start + 1000], start)
            ]
        }
        response = client.post("/v1/grades", json=body, headers=headers)
        answer = response.get_json()
        if response.status_code != 200 or answer["rejected"]:
            raise SystemExit(f"bulk post refused: {response.status_code} {json.dumps(answer)[:500]}")
    return time.perf_counter() - started


def counts(setup: Setup) -> dict[str, int]:
    with services_of(setup.app).database.transaction() as session:
        rows = session.execute(select(Delivery.status, func.count()).group_by(Delivery.status)).all()
    return {str(status): int(n) for status, n in rows}


def undelivered(setup: Setup) -> int:
    found = counts(setup)
    return sum(n for status, n in found.items() if status not in (DeliveryStatus.DELIVERED, DeliveryStatus.SUPERSEDED))


class Workers:
    """Celery worker processes (and one beat) as `gateway worker` runs them."""

    def __init__(self, database_url: str, keys: str, broker: str, log_dir: Path, env: dict[str, str]) -> None:
        self.env = dict(os.environ)
        self.env.update(
            {
                "GATEWAY_DATABASE_URL": database_url,
                "GATEWAY_ENCRYPTION_KEYS": keys,
                "GATEWAY_SECRET_KEY": secrets.token_hex(16),
                "GATEWAY_BROKER_URL": broker,
                "GATEWAY_EMBEDDED_WORKER": "false",
                "GATEWAY_INSTANCE_DIR": str(log_dir / "instance"),
                "GATEWAY_SWEEP_SECONDS": "1",
                **env,
            }
        )
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen[bytes]] = []
        self.peaks: dict[int, int] = {}
        self.first_delivery: float | None = None
        gateway = Path(sys.executable).parent / "gateway"
        self.command = [str(gateway)] if gateway.exists() else [sys.executable, "-m", "gateway.cli"]

    def start(self, threads: int, beat: bool = False) -> subprocess.Popen[bytes]:
        n = len(self.processes)
        argv = [*self.command, "worker", "--concurrency", str(threads)] + (["--beat"] if beat else [])
        log = (self.log_dir / f"worker-{n}.log").open("wb")
        process = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def sample_memory(self) -> None:
        for process in self.processes:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.peaks[process.pid] = max(self.peaks.get(process.pid, 0), int(line.split()[1]) * 1024)

    def stop(self) -> None:
        self.sample_memory()
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def wait_delivered(setup: Setup, workers: Workers, timeout: float, on_tick: Any = None) -> float:
    started = time.perf_counter()
    total = undelivered(setup)
    while time.perf_counter() - started < timeout:
        left = undelivered(setup)
        if left < total and workers.first_delivery is None:
            workers.first_delivery = time.perf_counter() - started
        workers.sample_memory()
        if on_tick is not None:
            on_tick(left)
        if left == 0:
            return time.perf_counter() - started
        if any(p.poll() not in (None, -signal.SIGKILL) for p in workers.processes):
            raise SystemExit(f"a worker exited early; logs in {workers.log_dir}")
        time.sleep(0.2)
    raise SystemExit(f"not all delivered within {timeout:.0f} s: {counts(setup)}; logs in {workers.log_dir}")


def check_store(sim: SimLms, expected: dict[tuple[str, int, str], float]) -> None:
    found: dict[tuple[str, int, str], float] = {}
    for name in sim.names:
        for score in sim.scores(name):
            number = int(str(score["lineitem"]).rstrip("/").rsplit("/", 1)[-1])
            found[(name, number, score["userId"])] = float(score["scoreGiven"])
    if found != expected:
        missing = [k for k in expected if k not in found][:5]
        wrong = [(k, found[k], v) for k, v in expected.items() if k in found and found[k] != v][:5]
        extra = [k for k in found if k not in expected][:5]
        raise SystemExit(f"LMS store differs: missing {missing}, wrong {wrong}, unexpected {extra}")


@contextlib.contextmanager
def database(postgres_url: str | None, tmp: Path, label: str) -> Iterator[str]:
    if postgres_url:
        from bench.grade_throughput import postgres_bench_database

        with postgres_bench_database(postgres_url) as (url, _):
            upgrade(url)
            yield url
    else:
        url = f"sqlite:///{tmp}/{label}.db"
        upgrade(url)
        yield url


def throttle_env(args: argparse.Namespace) -> dict[str, str]:
    """Passback's limits for the simulated LMSs, as an operator would set them: a little under the LMS's own
    rate (--headroom), small bursts, --concurrency deliveries at once per connection."""
    return {
        "GATEWAY_CONNECTION_RATE": str(args.rate * args.headroom),
        "GATEWAY_CONNECTION_BURST": "2",
        "GATEWAY_CONNECTION_CONCURRENCY": str(args.concurrency),
    }


def lower_bound(requests_by_platform: dict[str, int], latency: float, rate: float, concurrency: int) -> float:
    per_platform = [
        max(requests / rate if rate else 0.0, requests * latency / concurrency)
        for requests in requests_by_platform.values()
    ]
    return max(per_platform)


def scenario_a(args: argparse.Namespace, postgres_url: str | None, broker: str, tmp: Path) -> dict[str, Any]:
    keys = Fernet.generate_key().decode()
    with database(postgres_url, tmp, "a") as url:
        jwk, _, _ = tool_key(url, keys)
        with SimLms(args.platforms, subprocess=True, latency=args.latency, rate=args.rate, tool_jwk=jwk) as sim:
            setup = build(url, keys, sim, args.grades)
            ingest = post_all(setup, setup.expected, datetime.now(UTC) - timedelta(hours=1))
            env = throttle_env(args)
            env["GATEWAY_WORKER_BATCH_SIZE"] = "20"
            workers = Workers(url, keys, broker, tmp / "a", env)
            (tmp / "a").mkdir(exist_ok=True)
            sim.reset()
            try:
                for n in range(args.workers):
                    workers.start(args.threads, beat=n == 0)
                seconds = wait_delivered(setup, workers, args.timeout)
            finally:
                workers.stop()
            check_store(sim, setup.expected)
            stats = sim.stats()
            per_platform = {name: s["requests"] for name, s in stats["platforms"].items()}
            bound = lower_bound(per_platform, args.latency, args.rate, args.concurrency)
            peaks = list(workers.peaks.values())
            services_of(setup.app).database.dispose()
    return {
        "grades": len(setup.expected),
        "platforms": args.platforms,
        "ingest_seconds": ingest,
        "seconds": seconds,
        "startup_seconds": workers.first_delivery,
        "grades_per_second": len(setup.expected) / seconds,
        "token_requests": stats["total"]["token_requests"],
        "requests": stats["total"]["requests"],
        "rate_limited": stats["total"]["rate_limited"],
        "duplicates": stats["total"]["duplicates"],
        "bound_seconds": bound,
        "ratio_to_bound": seconds / bound,
        "peak_rss_mb_max": max(peaks) / 2**20 if peaks else None,
        "peak_rss_mb_total": sum(peaks) / 2**20 if peaks else None,
        "workers": args.workers,
        "threads": args.threads,
        "database": "postgresql" if postgres_url else "sqlite",
    }


def scenario_b(args: argparse.Namespace) -> dict[str, Any]:
    from bench.sim_lms import generate_rsa_key, public_jwk

    pem = generate_rsa_key()
    kid = "direct-app"
    with SimLms(
        args.platforms, subprocess=True, latency=args.latency, rate=args.rate, tool_jwk=public_jwk(pem, kid)
    ) as sim:
        grades = make_grades(args.direct_grades, sim.names, lineitems=LINEITEMS, order="shuffled")
        result = run_direct({name: sim.platform_url(name) for name in sim.names}, grades, pem, kid)
        stats = sim.stats()
    return {**result, "sim_rate_limited": stats["total"]["rate_limited"], "grades": len(grades)}


def scenario_d(args: argparse.Namespace, postgres_url: str | None, broker: str, tmp: Path) -> dict[str, Any]:
    keys = Fernet.generate_key().decode()
    with database(postgres_url, tmp, "d") as url:
        jwk, _, _ = tool_key(url, keys)
        with SimLms(
            args.platforms,
            subprocess=True,
            latency=args.latency,
            rate=args.rate,
            tool_jwk=jwk,
            fault_rate=0.2,
            hang_share=0.5,
            hang_seconds=3.0,
            seed=7,
        ) as sim:
            setup = build(url, keys, sim, args.fault_grades, seed=1)
            post_all(setup, setup.expected, datetime.now(UTC) - timedelta(hours=1))
            env = throttle_env(args)
            env.update(
                {
                    "GATEWAY_HTTP_READ_TIMEOUT": "2",
                    "GATEWAY_BACKOFF_BASE_SECONDS": "0.5",
                    "GATEWAY_BACKOFF_MAX_SECONDS": "4",
                    "GATEWAY_LEASE_SECONDS": "10",
                    "GATEWAY_WORKER_BATCH_SIZE": "20",
                }
            )
            (tmp / "d").mkdir(exist_ok=True)
            workers = Workers(url, keys, broker, tmp / "d", env)
            rng = random.Random(3)
            revised = dict(rng.sample(sorted(setup.expected.items()), len(setup.expected) // 10))
            final = dict(setup.expected)
            final.update({key: float((value + 37) % 101) for key, value in revised.items()})
            state = {"killed": False, "revised": False}
            total = len(setup.expected)

            def chaos(left: int) -> None:
                if not state["revised"] and left < total * 0.8:
                    post_all(setup, {k: final[k] for k in revised}, datetime.now(UTC) - timedelta(minutes=1))
                    state["revised"] = True
                if not state["killed"] and left < total / 2:
                    victim = workers.processes[1]
                    victim.send_signal(signal.SIGKILL)
                    victim.wait(10)
                    workers.start(args.threads)
                    state["killed"] = True

            try:
                workers.start(args.threads, beat=True)
                workers.start(args.threads)
                seconds = wait_delivered(setup, workers, args.timeout, chaos)
            finally:
                workers.stop()
            check_store(sim, final)
            stats = sim.stats()["total"]
            services_of(setup.app).database.dispose()
    return {
        "grades": total,
        "revised": len(revised),
        "killed_worker": state["killed"],
        "seconds": seconds,
        "faults_500": stats.get("faults_500", 0),
        "faults_hang": stats.get("faults_hang", 0),
        "score_posts": stats["score_posts"],
        "duplicates": stats["duplicates"],
        "stale": stats["stale"],
        "all_final_values_in_lms": True,
    }


def print_table(report: dict[str, Any]) -> None:
    a, b, d, c = report.get("A"), report.get("B"), report.get("D"), report.get("C")
    rows: list[tuple[str, str, str]] = []
    if a:
        rows.append(
            (
                f"A backfill: {a['grades']} grades, {a['platforms']} LMSs ({a['database']})",
                f"{a['seconds']:.1f} s, {a['grades_per_second']:.0f} grades/s, {a['token_requests']} tokens, "
                f"{a['rate_limited']} 429s",
                f"{a['ratio_to_bound']:.2f} x bound",
            )
        )
        rows.append(
            (
                "",
                f"bound {a['bound_seconds']:.1f} s; first delivery at {a['startup_seconds'] or 0:.1f} s; "
                f"peak RSS {a['peak_rss_mb_max'] or 0:.0f} MB a worker",
                "",
            )
        )
    if b:
        speedup = f"Passback {a['grades_per_second'] / b['grades_per_second']:.1f}x" if a else ""
        rows.append(
            (
                f"B direct pylti1p3, sequential ({b['grades']} grades)",
                f"{b['grades_per_second']:.1f} grades/s, {b['sim_rate_limited']} 429s",
                speedup,
            )
        )
    if c:
        rows.append(
            (
                f"C ingest, gunicorn ({c['backend']})",
                f"{c['rps']:.0f} req/s, p50 {c['p50_ms']:.1f} ms, p99 {c['p99_ms']:.1f} ms",
                f"{c['ratio']:.2f} x bare",
            )
        )
        rows.append(
            (
                "",
                f"bare insert: {c['bare_rps']:.0f} req/s, p50 {c['bare_p50_ms']:.1f} ms, p99 {c['bare_p99_ms']:.1f} ms",
                "",
            )
        )
    if d:
        rows.append(
            (
                f"D faults + SIGKILL: {d['grades']} grades, {d['revised']} revised",
                f"all final values in the LMS; {d['duplicates']} duplicate sends",
                f"{d['seconds']:.1f} s",
            )
        )
    print("\nDelivery at district scale (issue 9)")
    print(f"  {'scenario':<52}{'figures':<58}{'vs baseline':>16}")
    for scenario, figures, versus in rows:
        print(f"  {scenario:<52}{figures:<58}{versus:>16}")


def scenario_c_from_results() -> dict[str, Any] | None:
    """Scenario C is bench/grade_throughput.py's run (earlier in `make bench`): its PostgreSQL figures, delivery
    off (acceptance alone), next to the bare insert endpoint measured in the same run."""
    from bench.grade_throughput import BARE, PASSBACK

    path = RESULTS / "latest.json"
    if not path.exists():
        return None
    backends = json.loads(path.read_text()).get("backends", {})
    name = "postgresql" if "postgresql" in backends else next(iter(backends), None)
    if name is None or "worker_off" not in backends[name]:
        return None
    pair = backends[name]["worker_off"]
    return {
        "backend": name,
        "rps": pair[PASSBACK]["accepted_per_second"],
        "p50_ms": pair[PASSBACK]["p50_ms"],
        "p99_ms": pair[PASSBACK]["p99_ms"],
        "bare_rps": pair[BARE]["accepted_per_second"],
        "bare_p50_ms": pair[BARE]["p50_ms"],
        "bare_p99_ms": pair[BARE]["p99_ms"],
        "ratio": pair["ratio"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default="ABD")
    parser.add_argument("--grades", type=int, default=20_000)
    parser.add_argument("--platforms", type=int, default=20)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--rate", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--headroom", type=float, default=0.95, help="Passback's rate / the LMS's rate")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=24)
    parser.add_argument("--direct-grades", type=int, default=1000)
    parser.add_argument("--fault-grades", type=int, default=5000)
    parser.add_argument("--timeout", type=float, default=1200.0)
    parser.add_argument("--broker", default=os.environ.get("GATEWAY_BENCH_BROKER_URL", "redis://127.0.0.1:6379/13"))
    args = parser.parse_args(argv)
    postgres_url = os.environ.get("GATEWAY_BENCH_DATABASE_URL") or os.environ.get("GATEWAY_TEST_DATABASE_URL")
    if postgres_url and not postgres_url.startswith("postgresql"):
        postgres_url = None
    report: dict[str, Any] = {"when": datetime.now(UTC).isoformat(), "args": vars(args)}
    try:
        import redis

        broker = redis.Redis.from_url(args.broker, socket_connect_timeout=2)
        broker.ping()
        broker.flushdb()
    except Exception as exc:
        print(f"scenarios A and D need Redis at {args.broker} ({type(exc).__name__}); skipping them")
        args.scenarios = args.scenarios.replace("A", "").replace("D", "")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if "A" in args.scenarios:
            print(f"A: backfill of {args.grades} grades …", flush=True)
            report["A"] = scenario_a(args, postgres_url, args.broker, tmp)
            print(f"   {json.dumps(report['A'])}", flush=True)
        if "B" in args.scenarios:
            print(f"B: {args.direct_grades} grades sent directly with pylti1p3 …", flush=True)
            report["B"] = scenario_b(args)
            print(f"   {json.dumps(report['B'], default=str)}", flush=True)
        if "D" in args.scenarios:
            print(f"D: {args.fault_grades} grades with faults and a killed worker …", flush=True)
            report["D"] = scenario_d(args, postgres_url, args.broker, tmp)
            print(f"   {json.dumps(report['D'])}", flush=True)
    report["C"] = scenario_c_from_results()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "backfill.json").write_text(json.dumps(report, indent=2, default=str))
    print_table(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
