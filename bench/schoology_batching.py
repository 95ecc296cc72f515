"""`make bench`, Schoology scenario: 5,000 grades into 50 sections of a Schoology fake that answers every request
after 100 ms, delivered batched (one PUT per section, up to 100 grades each) versus one request per grade.

Both runs use the same database, grades and delivery workers (--workers threads of DeliveryWorker, as `gateway
worker` would run them), against the same fake (tests/fakes/schoology_lms.py, which verifies every OAuth 1.0a
signature); only the connection's `batch_size` setting differs (100, then 1). Between the runs every delivery
is reset to pending and the fake's gradebook emptied. Each run ends when every delivery is `delivered`; then
the fake's gradebook must hold every grade with its expected points, or the benchmark exits 1.

The figure that matters is the ratio of wall times (per-grade / batched), measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from sqlalchemy import func, select, update

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway import create_app  # noqa: E402
from gateway.composition import services_of  # noqa: E402
from gateway.config import Settings  # noqa: E402
from gateway.migrate import upgrade  # noqa: E402
from gateway.models import Delivery, DeliveryStatus, LmsConnection  # noqa: E402
from gateway.services.catalog import upsert_assignments  # noqa: E402
from gateway.services.directory import (  # noqa: E402
    authorize_app,
    create_app_partner,
    create_district,
    create_user,
    enroll,
    link_identity,
)
from gateway.services.lms import add_lms_connection, add_placement  # noqa: E402
from gateway.worker import DeliveryWorker  # noqa: E402
from tests.fakes.schoology_lms import SchoologyFake  # noqa: E402

KEY, SECRET = "bench-key", "bench-secret"


@dataclass
class RunResult:
    mode: str
    seconds: float
    grade_puts: int
    requests: int
    grades_per_second: float


def build(settings: Settings, fake: SchoologyFake, sections: int, per_section: int) -> tuple[Any, str, list[tuple]]:
    """A district with one Schoology connection, `sections` placements and `per_section` students in each."""
    app = create_app(settings)
    db = services_of(app).database
    expected: list[tuple] = []
    with db.transaction() as session:
        district = create_district(session, "Bench District")
        partner = create_app_partner(session, "Bench App", "https://bench.example/callback").app
        upsert_assignments(session, partner.id, [{"id": "unit-test", "name": "Unit test", "scoreMaximum": 20}])
        token = authorize_app(session, partner.id, district.id).raw
        connection = add_lms_connection(
            session,
            services_of(app).box,
            district.id,
            "Schoology",
            "schoology",
            {
                "base_url": fake.url,
                "consumer_key": KEY,
                "consumer_secret": SECRET,
                "batch_size": 100,
                "allow_private_addresses": True,
            },
        )
        for s in range(sections):
            section = str(8000 + s)
            fake.add_assignment(section, "9000", max_points=50)
            add_placement(
                session, district.id, connection.id, partner.id, "unit-test", None,
                section_id=section, destination={"assignment_id": "9000"},
            )  # fmt: skip
            for n in range(per_section):
                uid = f"{s}{n:04d}"
                user = create_user(session, district.id, name=f"Student {uid}")
                link_identity(session, user, connection, uid, box=services_of(app).box)
                enroll(session, connection, section, user)
                enrollment = fake.add_enrollment(section, uid)
                score = (s * per_section + n) % 21
                expected.append((user.id, section, enrollment, score))
        ids = (token, connection.id)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {ids[0]}"}
    for user_id, _, _, score in expected:
        response = client.post(
            "/v1/grade",
            json={"assignmentID": "unit-test", "userID": user_id, "scoreGiven": score, "scoreMaximum": 20},
            headers=headers,
        )
        if response.status_code != 202:
            raise SystemExit(f"grade refused: {response.status_code} {response.get_data(as_text=True)}")
    return app, ids[1], expected


def deliver_all(app: Any, workers: int, timeout: float) -> float:
    """Run `workers` DeliveryWorkers in threads until every delivery is delivered; returns wall seconds."""
    db = services_of(app).database
    stop = threading.Event()

    def work() -> None:
        worker = DeliveryWorker(db, services_of(app).box, app.config["PASSBACK"])
        while not stop.is_set():
            if worker.run_once() == 0:
                time.sleep(0.02)

    started = time.perf_counter()
    threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    try:
        while time.perf_counter() - started < timeout:
            with db.transaction() as session:
                left = session.scalar(
                    select(func.count()).select_from(Delivery).where(Delivery.status != DeliveryStatus.DELIVERED)
                )
            if left == 0:
                return time.perf_counter() - started
            time.sleep(0.05)
        raise SystemExit(f"deliveries not finished within {timeout} s ({left} left)")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)


def check_gradebook(fake: SchoologyFake, expected: list[tuple]) -> None:
    for _, section, enrollment, score in expected:
        stored = fake.grades.get((section, "9000", enrollment))
        want = round(score / 20 * 50, 2)
        if stored is None or float(stored["grade"]) != want:
            raise SystemExit(f"section {section} enrollment {enrollment}: stored {stored}, expected {want}")
    if len(fake.grades) != len(expected):
        raise SystemExit(f"gradebook holds {len(fake.grades)} grades, expected {len(expected)}")


def reset_for_next_run(app: Any, connection_id: str, batch_size: int, fake: SchoologyFake) -> None:
    db, box = services_of(app).database, services_of(app).box
    with db.transaction() as session:
        connection = session.get(LmsConnection, connection_id)
        assert connection is not None
        settings = dict(box.decrypt_json(connection.settings_encrypted))
        connection.settings_encrypted = box.encrypt_json({**settings, "batch_size": batch_size})
        session.execute(
            update(Delivery).values(
                status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=func.now(), delivered_at=None
            )
        )
    with fake.lock:
        fake.grades.clear()
        fake.grade_puts.clear()
        fake.requests.clear()


def run(sections: int, per_section: int, latency: float, workers: int, timeout: float) -> dict[str, Any]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    # Enrollments are read 200 a page, as the adapter asks; the latency applies to every request.
    fake_lms = SchoologyFake(KEY, SECRET, latency=latency, page_size=200)
    with tempfile.TemporaryDirectory() as tmp, fake_lms as fake:
        url = f"sqlite:///{tmp}/bench.db"
        upgrade(url)
        settings = Settings(
            database_url=url,
            secret_key=secrets.token_hex(16),
            encryption_keys=Fernet.generate_key().decode(),
            embedded_worker=False,
            lease_seconds=300.0,
            http_read_timeout=30.0,
        )
        app, connection_id, expected = build(settings, fake, sections, per_section)
        results = []
        for mode, batch_size in (("batched", 100), ("one request per grade", 1)):
            reset_for_next_run(app, connection_id, batch_size, fake)
            seconds = deliver_all(app, workers, timeout)
            check_gradebook(fake, expected)
            results.append(RunResult(mode, seconds, len(fake.grade_puts), len(fake.requests), len(expected) / seconds))
        batched, single = results
        return {
            "scenario": "schoology batching",
            "grades": len(expected),
            "sections": sections,
            "latency_ms": latency * 1000,
            "workers": workers,
            "runs": [vars(r) for r in results],
            "ratio_per_grade_over_batched": single.seconds / batched.seconds,
        }


def print_report(report: dict[str, Any]) -> None:
    print(
        f"\nSchoology: {report['grades']} grades into {report['sections']} sections, fake LMS latency "
        f"{report['latency_ms']:.0f} ms per request, {report['workers']} delivery workers"
    )
    print(f"  {'mode':<24}{'wall s':>9}{'grades/s':>10}{'grade PUTs':>12}{'requests':>10}")
    for run_ in report["runs"]:
        print(
            f"  {run_['mode']:<24}{run_['seconds']:>9.1f}{run_['grades_per_second']:>10.0f}"
            f"{run_['grade_puts']:>12}{run_['requests']:>10}"
        )
    print(f"  batched is {report['ratio_per_grade_over_batched']:.1f}x faster (wall-time ratio, same run)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", type=int, default=50)
    parser.add_argument("--per-section", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args(argv)
    report = run(args.sections, args.per_section, args.latency, args.workers, args.timeout)
    print_report(report)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
