"""Graceful stops (docs/operations.md, Stopping and restarting): a worker stopped with SIGTERM or SIGINT claims
nothing more, lets the LMS requests in flight finish within GATEWAY_STOP_GRACE_SECONDS, records each finished send
at once and gives every other claim back (due now, attempt not counted), so a restarted worker delivers them at
once rather than after their leases, and nothing the LMS stored is sent again.

Each layout runs as a real process against the test database and a slow loopback LMS (2 s per write): `gateway
run` (embedded worker), gunicorn with two embedded workers, `gateway worker` (polling the outbox) and `gateway
worker` over a broker (Celery, Redis db 9 or GATEWAY_TEST_STOP_BROKER_URL). The lease is the default 120 s: a grade
waiting for a lease would miss the deadline the restart is given. The measured times are written to
tests/artifacts/graceful_stop.jsonl.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from gateway.composition import services_of
from gateway.models import Delivery, LmsConnection
from gateway.services.directory import create_user, enroll
from gateway.services.outbox import Claim, release_claims
from gateway.worker import DeliveryWorker
from tests.factories import COURSE, World
from tests.fakes.scripted_lms import Hang, ScriptedLms, unused_port
from tests.integration.test_worker_crash import worker_command, worker_env

pytestmark = pytest.mark.slow

BROKER_URL = os.environ.get("GATEWAY_TEST_STOP_BROKER_URL", "redis://127.0.0.1:6379/9")
GRADES = 20
LMS_SECONDS = 2.0
LEASE_SECONDS = 120.0  # the default: nothing here may wait for a lease
# Docker's default: SIGTERM, then SIGKILL this many seconds later.
STOP_TIMEOUT = 10.0
# Well inside one lease: the given-back grades must not wait for theirs.
RESTART_DEADLINE = LEASE_SECONDS / 4
LAYOUTS = ["embedded", "gunicorn", "worker", "celery"]
REPO = Path(__file__).resolve().parents[2]


def point_at(world: World, lms: ScriptedLms) -> None:
    box = services_of(world.app).box
    with world.session() as session:
        connection = session.get(LmsConnection, world.connection_id)
        assert connection is not None
        connection.settings_encrypted = box.encrypt_json({"base_url": lms.base_url, "secret": world.sandbox_secret})


@pytest.fixture
def slow_lms(world: World) -> Iterator[ScriptedLms]:
    with ScriptedLms(world.sandbox_secret, write_delay=LMS_SECONDS) as fake:
        point_at(world, fake)
        yield fake
        assert fake.problems == [], "the gateway broke the LMS protocol"


def post_grades(world: World, count: int) -> list[str]:
    """One grade of quiz-1 for each of `count` enrolled students; returns the students."""
    with world.session() as session:
        connection = session.get(LmsConnection, world.connection_id)
        assert connection is not None
        students = []
        for n in range(count):
            user = create_user(session, world.district_id, name=f"Student {n}")
            enroll(session, connection, COURSE, user)
            students.append(user.id)
    for n, student in enumerate(students):
        response = world.post_grade({"assignmentID": "quiz-1", "userID": student, "percentage": (n + 1) / 100})
        assert response.status_code == 202, response.text
    return students


def deliveries(world: World) -> list[Delivery]:
    with world.session() as session:
        return list(session.scalars(select(Delivery)).all())


class Process:
    """One Passback process under test, in its own session (a test stops it like docker: signals to its pid)."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def wait_exit(self, timeout: float) -> float:
        """Seconds until the process exited; fails (with its log) if it is still running after `timeout`."""
        started = time.monotonic()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {timeout:g} s after the signal:\n{self.log()}") from None
        return time.monotonic() - started

    def kill(self) -> None:
        # The whole group: Celery's beat runs as a child.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)


def _broker_ready() -> bool:
    try:
        import redis

        client = redis.Redis.from_url(BROKER_URL, socket_connect_timeout=1)
        client.flushdb()  # this test database index only
        return True
    except Exception:
        return False


@pytest.fixture
def start(database_url: str, tmp_path: Path) -> Iterator[Callable[..., Process]]:
    """start(layout, **env) runs one delivery process of that layout on the test database."""
    started: list[Process] = []

    def run(layout: str, **extra_env: str) -> Process:
        env = worker_env(database_url, tmp_path)
        env.update({"GATEWAY_LEASE_SECONDS": str(LEASE_SECONDS), "PYTHONUNBUFFERED": "1", **extra_env})
        if layout == "embedded":
            port = unused_port()
            env.update({"GATEWAY_EMBEDDED_WORKER": "true", "GATEWAY_PUBLIC_URL": f"http://127.0.0.1:{port}"})
            argv = [*worker_command()[:-1], "run", "--no-demo", "--port", str(port)]
        elif layout == "gunicorn":
            gunicorn = Path(sys.executable).parent / "gunicorn"
            if not gunicorn.exists():
                pytest.skip("gunicorn is not installed (pip install 'passback[server]')")
            env.update({"GATEWAY_EMBEDDED_WORKER": "true"})
            argv = [str(gunicorn), "-w", "2", "-b", f"127.0.0.1:{unused_port()}", "--chdir", str(REPO), "wsgi:app"]
        elif layout == "worker":
            argv = worker_command()
        else:
            if not _broker_ready():
                pytest.skip(f"no Redis at {BROKER_URL}: the Celery stop is untested here")
            env.update({"GATEWAY_BROKER_URL": BROKER_URL, "GATEWAY_SWEEP_SECONDS": "1"})
            argv = [*worker_command(), "--concurrency", "4", "--beat"]
        process = Process(argv, env, tmp_path / f"{layout}-{len(started)}.log")
        started.append(process)
        return process

    yield run
    for process in started:
        process.kill()


def record_figures(artifacts_dir: Path, **figures: Any) -> None:
    print(json.dumps(figures))
    with (artifacts_dir / "graceful_stop.jsonl").open("a") as out:
        out.write(json.dumps(figures) + "\n")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_stopped_worker_gives_its_claims_back_and_a_restart_delivers_them_at_once(
    world: World,
    slow_lms: ScriptedLms,
    start: Callable[..., Process],
    layout: str,
    sig: signal.Signals,
    database_url: str,
    artifacts_dir: Path,
) -> None:
    students = post_grades(world, GRADES)
    first = start(layout)
    # One write stored, the next in flight: the worker holds claims on the rest of its batch.
    assert slow_lms.wait_for_score_writes(2, timeout=60), "the worker never reached the LMS:\n" + first.log()

    first.signal(sig)
    signal_to_exit = first.wait_exit(STOP_TIMEOUT)

    rows = deliveries(world)
    assert len(rows) == GRADES
    # Nothing waits for a lease: each row is delivered, or due again with its lease gone and no attempt counted.
    held = [(row.status, row.lease_expires_at) for row in rows if row.claim_token or row.lease_expires_at]
    assert held == [], first.log()
    waiting = [row for row in rows if row.status != "delivered"]
    assert waiting and all(row.status == "pending" and row.attempts == 0 for row in waiting), first.log()
    # Every write the LMS stored was recorded before the exit (the one in flight at the signal too).
    stored = {key[2] for key in slow_lms.gradebook}
    delivered = {row.id for row in rows if row.status == "delivered"}
    assert len(stored) == len(delivered) >= 2, first.log()

    slow_lms.write_delay = 0.05  # the LMS recovers; what is left goes out at once
    restarted_at = time.monotonic()
    second = start(layout)
    deadline = restarted_at + RESTART_DEADLINE
    while any(row.status != "delivered" for row in deliveries(world)):
        assert time.monotonic() < deadline, (
            f"not all delivered {RESTART_DEADLINE:g} s after the restart:\n{second.log()}"
        )
        time.sleep(0.05)
    restart_to_delivered = time.monotonic() - restarted_at

    # No write the LMS stored was sent again; every grade is in the gradebook once.
    assert sorted(slow_lms.writes_for(student, "quiz-1") for student in students) == [1] * GRADES
    second.signal(signal.SIGTERM)
    second.wait_exit(STOP_TIMEOUT)
    record_figures(
        artifacts_dir,
        layout=layout,
        signal=sig.name,
        backend=database_url.split(":", 1)[0],
        signal_to_exit_s=round(signal_to_exit, 2),
        restart_to_last_delivered_s=round(restart_to_delivered, 2),
        given_back=len(waiting),
    )


@pytest.mark.parametrize("layout", ["embedded", "worker"])
def test_a_second_ctrl_c_stops_at_once(
    world: World, slow_lms: ScriptedLms, start: Callable[..., Process], layout: str, artifacts_dir: Path
) -> None:
    [hang] = slow_lms.script(Hang(max_seconds=60))
    assert isinstance(hang, Hang)
    post_grades(world, 3)
    # A grace period longer than docker's timeout: only the second Ctrl-C can end the stop within it.
    process = start(layout, GATEWAY_STOP_GRACE_SECONDS="25")
    assert hang.arrived.wait(60), "the worker never reached the LMS:\n" + process.log()

    process.signal(signal.SIGINT)
    deadline = time.monotonic() + 10
    while "claiming nothing more" not in process.log():
        assert time.monotonic() < deadline, process.log()
        time.sleep(0.05)
    process.signal(signal.SIGINT)
    second_signal_to_exit = process.wait_exit(STOP_TIMEOUT)
    hang.release()

    rows = deliveries(world)
    assert [row for row in rows if row.claim_token or row.lease_expires_at] == []
    assert all(row.status == "pending" and row.attempts == 0 for row in rows), process.log()
    record_figures(
        artifacts_dir, layout=layout, signal="SIGINT twice", second_signal_to_exit_s=round(second_signal_to_exit, 2)
    )


def test_a_stopping_worker_sends_nothing_more_and_records_the_send_in_flight(
    world: World, lms: ScriptedLms, worker: DeliveryWorker
) -> None:
    [hang] = lms.script(Hang())
    assert isinstance(hang, Hang)
    post_grades(world, 3)
    claims = worker.claim()
    assert len(claims) == 3
    round_ = threading.Thread(target=worker.deliver_claims, args=(claims,))
    round_.start()
    assert hang.arrived.wait(10)
    worker.request_stop()  # while the first write is in flight
    hang.release()
    round_.join(10)
    assert not round_.is_alive()

    rows = {row.id: row for row in deliveries(world)}
    assert len(lms.score_writes()) == 1
    statuses = sorted((row.status, row.attempts, row.claim_token) for row in rows.values())
    # The send in flight is recorded; the two never sent are due again with no attempt counted.
    assert statuses == [("delivered", 1, None), ("pending", 0, None), ("pending", 0, None)]


def test_release_claims_touches_only_claims_still_held_under_their_token(
    world: World, lms: ScriptedLms, worker: DeliveryWorker
) -> None:
    post_grades(world, 3)
    fresh, retried, taken_over = worker.claim()
    database = services_of(world.app).database
    with database.transaction() as session:
        retried_row = session.get(Delivery, retried.delivery_id)
        assert retried_row is not None
        retried_row.last_error = "503 from the LMS"
        retried_row.attempts = 3
    stale = Claim(taken_over.delivery_id, "another-workers-token")
    with database.transaction() as session:
        # The retried one's request went out and was cut by the stop: its attempt is taken back.
        assert release_claims(session, [fresh, retried, stale], uncount={retried.delivery_id}) == 2
    rows = {row.id: row for row in deliveries(world)}
    assert (rows[fresh.delivery_id].status, rows[fresh.delivery_id].attempts) == ("pending", 0)
    assert (rows[retried.delivery_id].status, rows[retried.delivery_id].attempts) == ("retrying", 2)
    for claim in (fresh, retried):
        row = rows[claim.delivery_id]
        assert row.claim_token is None and row.lease_expires_at is None and row.next_attempt_at is not None
    # The claim under another token is untouched: still delivering, under its own lease.
    other = rows[taken_over.delivery_id]
    assert other.status == "delivering" and other.claim_token == taken_over.claim_token
