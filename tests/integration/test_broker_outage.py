"""A Celery worker survives its broker going away: a real `gateway worker --beat` over a redis-server this test
starts on a free port, delivering to a slow loopback LMS, while Redis is stopped for 20 s and started again on
the same port (with its data, as a restarted Redis has). The worker must still be running afterwards and deliver
every grade. Skipped where no redis-server binary is installed (unless PASSBACK_REQUIRE_REDIS=1).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from gateway.models import Delivery, LmsConnection
from gateway.services.directory import create_user, enroll
from tests.factories import COURSE, World
from tests.fakes.scripted_lms import ScriptedLms
from tests.integration.test_celery import LEASE_SECONDS, CeleryWorker

pytestmark = pytest.mark.slow

OUTAGE_SECONDS = 20.0
STUDENTS = 30  # two assignments each: 60 grades, several seconds of LMS time over 4 slots
LMS_WRITE_DELAY = 0.3  # well inside the request deadline (a third of the 3 s lease)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """A redis-server of the test's own (never the shared one), persisting to `directory` so a restart keeps
    the queued messages, as a production Redis with an append-only file does."""

    def __init__(self, binary: str, directory: Path, *extra_args: str) -> None:
        self.binary = binary
        self.directory = directory
        self.extra_args = list(extra_args)
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.directory)]
        argv += ["--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "no"]
        argv += self.extra_args
        with (self.directory / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise AssertionError("redis-server did not start:\n" + (self.directory / "redis.log").read_text())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        reason = "no redis-server binary: the broker outage is untested here (CI runs it)"
        if os.environ.get("PASSBACK_REQUIRE_REDIS") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return binary


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(redis_binary(), directory)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings_overrides(redis_server: RedisServer) -> dict[str, object]:
    return {"lease_seconds": LEASE_SECONDS, "broker_url": redis_server.url}


def post_grades(world: World) -> int:
    with world.session() as session:
        connection = session.get(LmsConnection, world.connection_id)
        users = [create_user(session, world.district_id, name=f"Student {n}") for n in range(STUDENTS)]
        for user in users:
            enroll(session, connection, COURSE, user)
        user_ids = [user.id for user in users]
    grades = [
        {"assignmentID": assignment, "userID": user_id, "percentage": 0.5}
        for user_id in user_ids
        for assignment in ("quiz-1", "quiz-2")
    ]
    response = world.http.post(world.url("/v1/grades"), json={"grades": grades}, headers=world.headers())
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == len(grades)
    return len(grades)


def delivered(world: World) -> int:
    with world.session() as session:
        return int(session.scalar(select(func.count()).where(Delivery.status == "delivered")) or 0)


def wait_until(condition: object, what: str, worker: CeleryWorker, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        if worker.process.poll() is not None:
            raise AssertionError(f"the worker exited ({worker.process.returncode}) before {what}:\n{worker.log()}")
        time.sleep(0.1)
    raise AssertionError(f"not {what} in {timeout} s:\n{worker.log()}")


def test_a_celery_worker_survives_a_broker_outage_and_delivers_the_rest(
    world: World, lms: ScriptedLms, redis_server: RedisServer, database_url: str, tmp_path: Path
) -> None:
    lms.write_delay = LMS_WRITE_DELAY
    worker = CeleryWorker(database_url, tmp_path, "celery", broker_url=redis_server.url)
    try:
        total = post_grades(world)
        wait_until(lambda: len(lms.score_writes()) >= 2, "the worker reached the LMS", worker)

        redis_server.stop()  # mid-delivery: drains hold claims and slots in Redis
        time.sleep(OUTAGE_SECONDS)
        redis_server.start()

        # A grade posted after the outage goes through the broker too.
        late = world.post_grade({"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.9})
        assert late.status_code == 202, late.text
        wait_until(lambda: delivered(world) == total + 1, "every grade delivered", worker)
        assert worker.process.poll() is None, "the worker ended:\n" + worker.log()
        assert lms.gradebook[(COURSE, "quiz-1", world.students[0])].score_given == 9.0
    finally:
        worker.stop()


def test_an_unrecoverable_worker_error_exits_non_zero(database_url: str, tmp_path: Path) -> None:
    # A broker that refuses a command the worker needs at start (SADD, for its queue binding) is an error Celery
    # does not retry: "Unrecoverable error", and the process must say so to its supervisor.
    directory = tmp_path / "refusing-redis"
    directory.mkdir()
    server = RedisServer(redis_binary(), directory, "--rename-command", "SADD", "")
    server.start()
    worker = CeleryWorker(database_url, tmp_path, "refused", beat=False, broker_url=server.url)
    try:
        worker.process.wait(60)
        assert "Unrecoverable error" in worker.log()
        assert worker.process.returncode != 0, worker.log()
    finally:
        worker.stop()
        server.stop()
