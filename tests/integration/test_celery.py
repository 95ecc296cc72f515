"""Delivery on Celery workers over the real Redis on 127.0.0.1:6379 (GATEWAY_BROKER_URL), against SQLite and,
in CI, PostgreSQL: `gateway worker --beat` runs as a real process; the web app publishes to the broker after it
commits a grade. Skipped, with the reason, where no Redis answers.

- A grade posted is delivered by the Celery worker.
- A lost message (nothing published at all) only delays the grade: the sweep finds the due delivery.
- A Celery worker killed with SIGKILL mid-delivery: a new worker delivers the grade once the lease expires,
  with its final value.
- Webhooks go out from the Celery worker's process, on threads of its own beside the pool.
- A retry goes out within a few seconds of its due time, with the sweep at its production interval (a finished
  drain used to hide its connection from the sweep for two sweep intervals: 30-45 s late).
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.composition import services_of
from gateway.models import Delivery, Grade, LmsConnection
from gateway.services.directory import create_user, enroll
from tests.factories import COURSE, World
from tests.fakes.scripted_lms import Close, Hang, Respond, ScriptedLms
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.integration.test_worker_crash import worker_command, worker_env

pytestmark = pytest.mark.slow

REDIS_URL = os.environ.get("GATEWAY_TEST_BROKER_URL", "redis://127.0.0.1:6379/14")
LEASE_SECONDS = 3.0


def _redis() -> object | None:
    try:
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
        client.ping()
        return client
    except Exception:
        return None


@pytest.fixture(autouse=True)
def broker() -> Iterator[None]:
    client = _redis()
    if client is None:
        reason = f"no Redis at {REDIS_URL}: the Celery path is untested here (CI runs it)"
        if os.environ.get("PASSBACK_REQUIRE_REDIS") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    client.flushdb()  # type: ignore[attr-defined]  # this test database index only
    yield
    client.flushdb()  # type: ignore[attr-defined]


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"lease_seconds": LEASE_SECONDS, "broker_url": REDIS_URL}


class CeleryWorker:
    def __init__(
        self,
        database_url: str,
        tmp_path: Path,
        name: str,
        *,
        beat: bool = True,
        broker_url: str = REDIS_URL,
        environment: dict[str, str] | None = None,
    ) -> None:
        env = worker_env(database_url, tmp_path)
        env.update(
            {
                "GATEWAY_BROKER_URL": broker_url,
                "GATEWAY_SWEEP_SECONDS": "1",
                "GATEWAY_BACKOFF_BASE_SECONDS": "0.2",
                "GATEWAY_BACKOFF_MAX_SECONDS": "1",
                **(environment or {}),
            }
        )
        self.log_path = tmp_path / f"{name}.log"
        argv = [*worker_command(), "--concurrency", "4"] + (["--beat"] if beat else [])
        with self.log_path.open("wb") as log:
            # Its own process group: `--beat` forks a beat child, which a kill of the worker alone would orphan
            # (left running, it would keep publishing to the test broker after the test).
            self.process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def kill(self) -> None:
        """SIGKILL the worker and its beat at once, as a crashed machine would."""
        self._signal_group(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        # Whatever of the group is still alive (a beat child) goes too.
        self._signal_group(signal.SIGKILL)


@pytest.fixture
def start_worker(database_url: str, tmp_path: Path) -> Iterator[object]:
    started: list[CeleryWorker] = []

    def start(name: str = "celery", beat: bool = True, environment: dict[str, str] | None = None) -> CeleryWorker:
        worker = CeleryWorker(database_url, tmp_path, name, beat=beat, environment=environment)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def post(world: World, percentage: float) -> str:
    response = world.post_grade({"assignmentID": "quiz-1", "userID": world.students[0], "percentage": percentage})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def statuses(world: World, grade_id: str) -> list[tuple[str, int]]:
    with world.session() as session:
        rows = session.execute(
            select(Delivery.status, Delivery.attempts)
            .where(Delivery.grade_id == grade_id)
            .order_by(Delivery.created_at)
        ).all()
    return [(status, attempts) for status, attempts in rows]


def wait_for(world: World, grade_id: str, status: str, worker: CeleryWorker, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = statuses(world, grade_id)
        if current and current[-1][0] == status:
            return
        time.sleep(0.1)
    raise AssertionError(f"grade {grade_id} not {status} in {timeout} s: {statuses(world, grade_id)}\n{worker.log()}")


def test_a_posted_grade_is_delivered_by_a_celery_worker(world: World, lms: ScriptedLms, start_worker: object) -> None:
    worker = start_worker(beat=False)  # type: ignore[operator]
    grade_id = post(world, 0.7)  # the web app publishes a drain for the connection after the commit
    wait_for(world, grade_id, "delivered", worker)
    [entry] = lms.gradebook.values()
    assert entry.score_given == 7.0 and entry.writes == 1
    assert "passback.drain_connection" in worker.log()


def test_a_celery_worker_sends_webhooks_beside_its_drains(world: World, lms: ScriptedLms, start_worker: object) -> None:
    world.app.config["PASSBACK"].webhook_allow_private_addresses = True  # the receiver is on 127.0.0.1
    with WebhookReceiver() as receiver:
        created = world.http.post(
            world.url("/v1/webhooks"),
            json={"url": receiver.url, "events": ["grade.delivered"]},
            headers=world.headers(),
        )
        assert created.status_code == 201, created.text
        receiver.secrets.append(created.json()["secret"])
        worker = start_worker(  # type: ignore[operator]
            beat=False, environment={"GATEWAY_WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true"}
        )

        grade_id = post(world, 0.7)

        wait_for(world, grade_id, "delivered", worker)
        assert receiver.wait_for(1, timeout=30), worker.log()
        [event] = receiver.events()
        assert (event["type"], event["data"]["gradeID"]) == ("grade.delivered", grade_id)
        assert receiver.problems == []
        worker.stop()
        assert worker.process.returncode == 0, worker.log()
        assert "webhook sender stopped" in worker.log()


def test_a_lost_message_only_delays_the_grade(
    world: World, lms: ScriptedLms, start_worker: object, database_url: str
) -> None:
    # The web app publishes nothing (as if the broker had lost the message): only the sweep can find it.
    services_of(world.app).nudger.dispatch = None
    grade_id = post(world, 0.4)
    worker = start_worker()  # type: ignore[operator]
    wait_for(world, grade_id, "delivered", worker)
    assert "passback.sweep" in worker.log()
    [entry] = lms.gradebook.values()
    assert entry.score_given == 4.0


def test_a_killed_celery_worker_loses_no_grade(world: World, lms: ScriptedLms, start_worker: object) -> None:
    [hang] = lms.script(Hang(then=Close()))
    assert isinstance(hang, Hang)
    first = start_worker("first")  # type: ignore[operator]
    grade_id = post(world, 0.8)
    assert hang.arrived.wait(30), "the Celery worker never reached the LMS:\n" + first.log()
    assert statuses(world, grade_id) == [("delivering", 1)]
    first.kill()
    hang.release()

    # The app changes its mind while no worker runs: the newer grade supersedes the undelivered one.
    newer = world.post_grade({"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.85})
    assert newer.status_code == 202

    second = start_worker("second")  # type: ignore[operator]
    wait_for(world, grade_id, "delivered", second)
    # The new worker claims the newer grade before retries, so it may be delivered while the dead worker's
    # lease still runs: the old claim is taken back (and found outdated) only once that lease has expired.
    deadline = time.monotonic() + 10 * LEASE_SECONDS
    while statuses(world, grade_id)[0][0] == "delivering" and time.monotonic() < deadline:
        time.sleep(0.1)
    # Exactly the final value is in the gradebook, stored once.
    [entry] = lms.gradebook.values()
    assert entry.score_given == 8.5 and entry.writes == 1, (statuses(world, grade_id), second.log())
    # The dead worker's claim of the old value was taken back and superseded, never sent again (its one
    # attempt is the request the dead worker sent; taking it back counted none).
    assert statuses(world, grade_id) == [("superseded", 1), ("delivered", 1)]


RETRIED_GRADES = 6
RETRY_BACKOFF_BASE = 2.0  # the first retry falls due 1-2 s after the 503 (equal jitter)
PRODUCTION_SWEEP_SECONDS = 15.0  # GATEWAY_SWEEP_SECONDS's default


def _epoch(moment: datetime) -> float:
    return moment.replace(tzinfo=UTC).timestamp()


def test_a_retry_under_celery_goes_out_within_seconds_of_its_due_time(
    world: World, lms: ScriptedLms, start_worker: object
) -> None:
    with world.session() as session:
        connection = session.get(LmsConnection, world.connection_id)
        users = [create_user(session, world.district_id, name=f"Retried {n}") for n in range(RETRIED_GRADES)]
        for user in users:
            enroll(session, connection, COURSE, user)
        student_ids = [user.id for user in users]
    lms.script(*[Respond(503) for _ in student_ids])  # every grade's first write is refused once
    worker = start_worker(  # type: ignore[operator]
        environment={
            "GATEWAY_SWEEP_SECONDS": str(PRODUCTION_SWEEP_SECONDS),
            "GATEWAY_BACKOFF_BASE_SECONDS": str(RETRY_BACKOFF_BASE),
            "GATEWAY_BACKOFF_MAX_SECONDS": "60",
        }
    )
    for student_id in student_ids:
        response = world.post_grade({"assignmentID": "quiz-1", "userID": student_id, "percentage": 0.6})
        assert response.status_code == 202, response.text

    # Each retry's due time, read while the delivery waits in its backoff (then the row forgets it).
    due_at: dict[str, float] = {}
    deadline = time.monotonic() + 3 * PRODUCTION_SWEEP_SECONDS + 30
    while time.monotonic() < deadline:
        with world.session() as session:
            rows = session.execute(select(Delivery.status, Delivery.next_attempt_at, Grade.user_id).join(Grade)).all()
        for status, next_attempt_at, student_id in rows:
            if status == "retrying" and next_attempt_at is not None:
                due_at[student_id] = _epoch(next_attempt_at)
        if sum(1 for status, _, _ in rows if status == "delivered") == RETRIED_GRADES:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"not every retry delivered in time:\n{worker.log()}")
    assert len(due_at) == RETRIED_GRADES, due_at

    # When the LMS saw each student's second write, on the wall clock the due times are on.
    wall_minus_monotonic = time.time() - time.monotonic()
    retried_at = {}
    for request in lms.score_writes():
        if request.outcome == "stored":
            retried_at[request.student_id] = request.at + wall_minus_monotonic
    lateness = sorted(retried_at[student_id] - due for student_id, due in due_at.items())
    print(f"retry lateness under Celery: median {statistics.median(lateness):.2f} s, max {lateness[-1]:.2f} s")
    # Generous against scheduling noise on a busy machine; the fault it guards against cost 30-45 s.
    assert lateness[-1] < 5.0, (lateness, worker.log())
