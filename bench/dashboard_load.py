"""How fast the staff dashboard's pages load on a district with 100,000 grades, against the same pages at 1,000.

    .venv/bin/python -m bench.dashboard_load [--grades 100000] [--small 1000] [--repeat 5] [--backends …]

For each backend and each size, a fresh database is migrated and one district is seeded directly with
SQLAlchemy Core bulk inserts: apps with assignments, students in courses of two sandbox LMS connections (plus
an LTI 1.3 connection), every assignment placed in every course, and one grade, revision and delivery per
(student, assignment) with a realistic mix of statuses (mostly delivered; some failed, retrying, pending and unroutable)
spread over 60 days, plus the sandbox gradebook's copy of each delivered grade. Then a staff member signs in
through the login form of the Flask test client and every dashboard page is requested `--repeat` times after
one warm-up; the table shows the median milliseconds per page at both sizes and their ratio. A page that
is paginated and indexed costs about the same at both sizes; a ratio far above 1 points at a scan.

- SQLite always (a file in a temporary directory). PostgreSQL too when GATEWAY_BENCH_DATABASE_URL or
  GATEWAY_TEST_DATABASE_URL is a postgresql:// URL: the benchmark works in a schema of its own in that
  database (dropped afterwards); it never touches the database's other schemas.
- The CSV export streams every row of its view; it is measured on the failed view (5% of the grades) and on
  the whole list.

Exits 1 when a page does not answer 200; never on speed (the numbers depend on the machine).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from sqlalchemy import insert

from bench.grade_throughput import backends_to_run
from gateway import create_app
from gateway.composition import services_of
from gateway.config import Settings
from gateway.crypto import SecretBox
from gateway.db import Database
from gateway.migrate import upgrade
from gateway.models import (
    App,
    Assignment,
    Delivery,
    District,
    DistrictApp,
    Enrollment,
    Grade,
    GradeRevision,
    LmsConnection,
    Placement,
    SandboxGradebookEntry,
    User,
    utcnow,
)
from gateway.models.base import new_id
from gateway.services.dashboard_deliveries import cursor_text
from gateway.services.staff import create_staff

ASSIGNMENTS_PER_APP = 10
APP_NAMES = ("Fraction Tutor", "Reading Ladder", "Quiz Builder", "Science Lab")
COURSE_SIZE = 100
BATCH = 5_000
PASSWORD = "benchmark password"  # noqa: S105 - a throwaway account in a throwaway database
# Share of deliveries per status; the rest are delivered.
STATUS_MIX = (("failed", 0.05), ("retrying", 0.02), ("pending", 0.03), ("unroutable", 0.01))


@dataclass
class Seeded:
    district_id: str
    grades: int
    app_id: str = ""
    assignment_id: str = ""
    placement_id: str = ""
    failed_delivery_id: str = ""
    # The list position halfway down the district's deliveries (the list's "Older →" link).
    middle_cursor: str = ""
    counts: dict[str, int] = field(default_factory=dict)


def _insert(conn: Any, model: Any, rows: list[dict[str, Any]]) -> None:
    for start in range(0, len(rows), BATCH):
        conn.execute(insert(model.__table__), rows[start : start + BATCH])


def seed(database: Database, box: SecretBox, grades: int, rng: random.Random) -> Seeded:
    """One district with about `grades` grades, each with one revision and one delivery."""
    assert database.engine is not None
    now = utcnow()
    assignments_total = ASSIGNMENTS_PER_APP * len(APP_NAMES)
    students = max(1, grades // assignments_total)
    courses = max(1, students // COURSE_SIZE)
    district_id = new_id()
    seeded = Seeded(district_id=district_id, grades=students * assignments_total)
    apps = [
        {
            "id": new_id(),
            "name": name,
            "client_id": secrets.token_hex(8),
            "client_secret_hash": "x",
            "redirect_uri": "https://app.example/cb",
            "created_at": now,
        }
        for name in APP_NAMES
    ]
    assignments = [
        {
            "id": new_id(),
            "app_id": app["id"],
            "external_id": f"{app['name'].split()[0].lower()}-{n + 1}",
            "name": f"{app['name']}: unit {n + 1}",
            "standards": [],
            "score_maximum": 10.0 if n % 2 else 100.0,
            "archived": False,
            "source": "push",
            "created_at": now,
            "updated_at": now,
        }
        for app in apps
        for n in range(ASSIGNMENTS_PER_APP)
    ]
    connections = []
    for name in ("Sandbox North", "Sandbox South"):
        connection_id = new_id()
        settings = {"base_url": f"http://127.0.0.1:1/sandbox-lms/{connection_id}", "secret": secrets.token_hex(8)}
        connections.append(
            {
                "id": connection_id,
                "district_id": district_id,
                "name": name,
                "adapter": "sandbox",
                "settings_encrypted": box.encrypt_json(settings),
                "registration_key": None,
                "paused": False,
                "created_at": now,
                "last_success_at": now,
            }
        )
    lti13 = {"platform": "canvas", "client_id": secrets.token_hex(6), "deployment_ids": ["1:abc"]}
    lti13.update({"issuer": "https://canvas.instructure.com", "token_url": "https://sso.example/token"})
    connections.append(
        {
            "id": new_id(),
            "district_id": district_id,
            "name": "Canvas",
            "adapter": "lti13",
            "settings_encrypted": box.encrypt_json(lti13),
            "registration_key": f"{lti13['issuer']}|{lti13['client_id']}",
            "paused": False,
            "created_at": now,
            "last_success_at": None,
        }
    )
    course_ids = [f"course-{c + 1:03d}" for c in range(courses)]
    course_connection = {course: connections[i % 2]["id"] for i, course in enumerate(course_ids)}
    users = [
        {
            "id": new_id(),
            "district_id": district_id,
            "role": "student",
            "name": f"Student {s + 1:05d}",
            "created_at": now,
        }
        for s in range(students)
    ]
    user_course = {u["id"]: course_ids[i % courses] for i, u in enumerate(users)}
    enrollments = [
        {
            "id": new_id(),
            "district_id": district_id,
            "lms_connection_id": course_connection[course],
            "course_id": course,
            "user_id": user_id,
            "role": "student",
            "source": "manual",
            "created_at": now,
        }
        for user_id, course in user_course.items()
    ]
    placements = {
        (a["id"], course): {
            "id": new_id(),
            "district_id": district_id,
            "lms_connection_id": course_connection[course],
            "assignment_id": a["id"],
            "course_id": course,
            "title": a["name"],
            "destination": {},
            "created_at": now,
        }
        for a in assignments
        for course in course_ids
    }
    grade_rows, revision_rows, delivery_rows, gradebook_rows = [], [], [], []
    counts: dict[str, int] = {}
    for a in assignments:
        for user in users:
            posted = now - timedelta(seconds=rng.uniform(60, 60 * 86400))
            fraction = round(rng.uniform(0.3, 1.0), 2)
            grade_id, revision_id = new_id(), new_id()
            score = {
                "input_form": "percentage",
                "percentage": fraction,
                "fraction": fraction,
                "score_given": round(fraction * a["score_maximum"], 2),
                "score_maximum": a["score_maximum"],
                "activity_progress": "Completed",
                "grading_progress": "FullyGraded",
                "timestamp": posted,
            }
            grade_rows.append(
                {
                    "id": grade_id,
                    "district_id": district_id,
                    "app_id": a["app_id"],
                    "assignment_id": a["id"],
                    "user_id": user["id"],
                    "revision": 1,
                    "created_at": posted,
                    "updated_at": posted,
                    **score,
                }
            )
            revision_rows.append(
                {
                    "id": revision_id,
                    "district_id": district_id,
                    "grade_id": grade_id,
                    "revision": 1,
                    "received_at": posted,
                    **score,
                }
            )
            roll, status = rng.random(), "delivered"
            for name, share in STATUS_MIX:
                if roll < share:
                    status = name
                    break
                roll -= share
            counts[status] = counts.get(status, 0) + 1
            course = user_course[user["id"]]
            # An unroutable grade has no placement (and so no connection) yet.
            placement = placements[(a["id"], course)] if status != "unroutable" else {"id": None}
            updated = posted + timedelta(seconds=rng.uniform(1, 30))
            delivery_rows.append(
                {
                    "id": new_id(),
                    "district_id": district_id,
                    "grade_id": grade_id,
                    "revision_id": revision_id,
                    "placement_id": placement["id"],
                    "lms_connection_id": placement.get("lms_connection_id"),
                    "operation": "replace",
                    "status": status,
                    "attempts": {"delivered": 1, "failed": 1, "retrying": 3}.get(status, 0),
                    "next_attempt_at": updated + timedelta(minutes=5) if status in ("pending", "retrying") else None,
                    "last_error": {
                        "failed": "the LMS refused the score: HTTP 422 student not enrolled in this course",
                        "retrying": "LMS answered HTTP 503",
                        "unroutable": "no placement of this assignment in a course the student is enrolled in",
                    }.get(status),
                    "lms_status": {"delivered": 200, "failed": 422, "retrying": 503}.get(status),
                    # The catalogued cause (adapters/causes.py) the Problems table groups by.
                    "error_cause": {
                        "failed": "not_enrolled",
                        "retrying": "lms_error",
                        "unroutable": "unroutable",
                    }.get(status),
                    "created_at": posted,
                    "updated_at": updated,
                    "delivered_at": updated if status == "delivered" else None,
                }
            )
            if status == "delivered":
                gradebook_rows.append(
                    {
                        "id": new_id(),
                        "gradebook": placement["lms_connection_id"],
                        "course_id": course,
                        "item_id": a["external_id"],
                        "student_id": user["id"],
                        "score_given": score["score_given"],
                        "score_maximum": score["score_maximum"],
                        "timestamp": posted,
                        "updated_at": updated,
                        "writes": 1,
                    }
                )
    with database.engine.begin() as conn:
        _insert(conn, District, [{"id": district_id, "name": "Benchmark USD", "created_at": now}])
        _insert(conn, App, apps)
        _insert(
            conn,
            DistrictApp,
            [{"id": new_id(), "district_id": district_id, "app_id": a["id"], "created_at": now} for a in apps],
        )
        _insert(conn, Assignment, assignments)
        _insert(conn, LmsConnection, connections)
        _insert(conn, User, users)
        _insert(conn, Enrollment, enrollments)
        _insert(conn, Placement, list(placements.values()))
        _insert(conn, Grade, grade_rows)
        _insert(conn, GradeRevision, revision_rows)
        _insert(conn, Delivery, delivery_rows)
        _insert(conn, SandboxGradebookEntry, gradebook_rows)
    if database.engine.dialect.name == "postgresql":
        # What autovacuum would have done by the time a district has 100,000 grades: planner statistics and
        # a visibility map (index-only scans). SQLite gets nothing: Passback never runs ANALYZE there.
        with database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    first = assignments[0]
    seeded.app_id = first["app_id"]
    seeded.assignment_id = first["id"]
    seeded.placement_id = placements[(first["id"], course_ids[0])]["id"]
    seeded.failed_delivery_id = next(d["id"] for d in delivery_rows if d["status"] == "failed")
    middle = sorted(delivery_rows, key=lambda d: (d["updated_at"], d["id"]))[len(delivery_rows) // 2]
    seeded.middle_cursor = cursor_text((middle["updated_at"], middle["id"]))
    seeded.counts = counts
    return seeded


def pages(seeded: Seeded) -> list[tuple[str, str]]:
    """(label, path) of every page measured."""
    return [
        ("overview", "/dashboard/"),
        ("deliveries: failed", "/dashboard/deliveries?status=failed"),
        ("deliveries: one cause", "/dashboard/deliveries?cause=not_enrolled"),
        ("deliveries: all", "/dashboard/deliveries"),
        ("deliveries: all, mid-list page", f"/dashboard/deliveries?before={seeded.middle_cursor}"),
        ("delivery detail", f"/dashboard/deliveries/{seeded.failed_delivery_id}"),
        ("drill: apps", "/dashboard/apps"),
        ("drill: app's assignments", f"/dashboard/apps/{seeded.app_id}"),
        ("drill: assignment's placements", f"/dashboard/assignments/{seeded.assignment_id}"),
        ("drill: placement's students", f"/dashboard/placements/{seeded.placement_id}"),
        ("connections", "/dashboard/connections"),
        ("sandbox gradebook", "/dashboard/sandbox"),
        ("audit log", "/dashboard/audit"),
        ("CSV: failed (all rows)", "/dashboard/deliveries.csv?status=failed"),
        ("CSV: all (all rows)", "/dashboard/deliveries.csv"),
    ]


def measure(
    url: str, grades: int, repeat: int, rng: random.Random, only: str | None = None, verbose: bool = False
) -> tuple[Seeded, dict[str, float], float]:
    """Seed a fresh database at `url` and time every page: median milliseconds per page, and seed seconds."""
    upgrade(url)
    settings = Settings(
        database_url=url,
        secret_key=secrets.token_hex(16),
        encryption_keys=Fernet.generate_key().decode(),
        embedded_worker=False,
    )
    database = Database()
    database.configure(url)
    try:
        app = create_app(settings, database=database)
        started = time.perf_counter()
        seeded = seed(database, services_of(app).box, grades, rng)
        seed_seconds = time.perf_counter() - started
        with database.transaction() as session:
            create_staff(session, seeded.district_id, "staff@benchmark.example", PASSWORD)
        client = app.test_client()
        form = client.get("/dashboard/login").get_data(as_text=True)
        token = re.search(r'name="csrf_token" value="([^"]+)"', form)
        assert token is not None
        signed_in = client.post(
            "/dashboard/login",
            data={"email": "staff@benchmark.example", "password": PASSWORD, "csrf_token": token.group(1)},
        )
        if signed_in.status_code != 302:
            raise SystemExit(f"sign-in failed: HTTP {signed_in.status_code}")
        timings: dict[str, float] = {}
        for label, path in pages(seeded):
            if only and only not in label:
                continue
            samples = []
            for attempt in range(repeat + 1):
                started = time.perf_counter()
                response = client.get(path)
                body = response.get_data()  # a streamed page is timed until its last byte
                elapsed = (time.perf_counter() - started) * 1000
                if verbose:
                    print(f"  {label}: {elapsed:.1f} ms", file=sys.stderr, flush=True)
                if response.status_code != 200:
                    print(f"  {label} ({path}) answered HTTP {response.status_code}: {body[:200]!r}", file=sys.stderr)
                    samples = [float("nan")]
                    break
                if attempt:  # the first request warms caches and compiles statements
                    samples.append(elapsed)
            timings[label] = statistics.median(samples)
        return seeded, timings, seed_seconds
    finally:
        database.dispose()


@contextlib.contextmanager
def backend_url(backend: str, pg_url: str | None, workdir: Path, tag: str) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a schema of our own in the PostgreSQL database named."""
    if backend == "sqlite":
        yield f"sqlite:///{workdir / f'dashboard-{tag}.db'}"
        return
    import psycopg
    from sqlalchemy.engine import make_url

    assert pg_url is not None
    schema = f"passback_dashboard_bench_{os.getpid()}_{tag}"
    url = make_url(pg_url)
    libpq = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(libpq, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def print_table(backend: str, small: tuple[Seeded, dict[str, float]], large: tuple[Seeded, dict[str, float]]) -> None:
    (small_seed, small_ms), (large_seed, large_ms) = small, large
    head_small, head_large = f"{small_seed.grades:,} grades", f"{large_seed.grades:,} grades"
    width = max(len(label) for label in large_ms)
    print(f"\n{backend}: median ms per page")
    print(f"| {'page':<{width}} | {head_small:>14} | {head_large:>14} | ratio |")
    print(f"|{'-' * (width + 2)}|{'-' * 15}:|{'-' * 15}:|------:|")
    for label, ms in large_ms.items():
        base = small_ms[label]
        print(f"| {label:<{width}} | {base:>14.1f} | {ms:>14.1f} | {ms / base:>5.1f} |")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard_load", description=__doc__.split("\n")[0])
    parser.add_argument("--grades", type=int, default=100_000, help="grades in the large district (100,000)")
    parser.add_argument("--small", type=int, default=1_000, help="grades in the comparison district (1,000)")
    parser.add_argument("--repeat", type=int, default=5, help="measured requests per page, after one warm-up")
    parser.add_argument("--backends", default=None, help="sqlite,postgresql (default: sqlite, plus PG if set)")
    parser.add_argument("--pages", default=None, help="only the pages whose label contains this text")
    parser.add_argument("--verbose", action="store_true", help="print every request's time as it is measured")
    parser.add_argument("--seed", type=int, default=7, help="random seed of the generated data")
    args = parser.parse_args(argv)
    if min(args.grades, args.small, args.repeat) < 1:
        parser.error("--grades, --small and --repeat must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="passback-dashboard-bench-"))
    failed = False
    for backend, pg_url in backends_to_run(args.backends).items():
        results = []
        for tag, grades in (("small", args.small), ("large", args.grades)):
            with backend_url(backend, pg_url, workdir, tag) as url:
                seeded, timings, seed_seconds = measure(
                    url, grades, args.repeat, random.Random(args.seed), args.pages, args.verbose
                )
            mix = ", ".join(f"{k} {v:,}" for k, v in sorted(seeded.counts.items()))
            print(f"{backend}: seeded {seeded.grades:,} grades in {seed_seconds:.1f} s ({mix})", flush=True)
            results.append((seeded, timings))
            failed = failed or any(ms != ms for ms in timings.values())  # NaN: a page did not answer 200
        print_table(backend, results[0], results[1])
    for leftover in workdir.glob("*"):
        leftover.unlink()
    workdir.rmdir()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
