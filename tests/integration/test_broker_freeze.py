"""Intake never waits on the broker: a redis-server of the test's own (on a free port) is frozen with SIGSTOP, as
a hung Redis is (connections accepted, nothing answered), while grades are posted to the gateway; each post is
timed. Then Redis is resumed and a real `gateway worker --beat` must deliver every grade. Before the web process
published its wake-ups from a thread of its own, each post waited about 5 s after its commit (the broker client's
socket timeout). Skipped where no redis-server binary is installed (unless PASSBACK_REQUIRE_REDIS=1).
"""

from __future__ import annotations

import signal
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from gateway.models import Delivery, LmsConnection
from gateway.services.directory import create_user, enroll
from gateway.tasks import flush_dispatchers
from tests.factories import COURSE, World
from tests.fakes.scripted_lms import ScriptedLms
from tests.integration.test_broker_outage import RedisServer, redis_binary, wait_until
from tests.integration.test_celery import LEASE_SECONDS, CeleryWorker

pytestmark = pytest.mark.slow

FREEZE_SECONDS = 20.0
POST_EVERY_SECONDS = 0.5  # about 40 posts while Redis is frozen
BASELINE_POSTS = 10
# What a post cost with a frozen broker before: the broker client's 5 s socket timeout, after the commit.
OLD_FROZEN_POST_SECONDS = 5.0


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(redis_binary(), directory)
    server.start()
    yield server
    assert server.process is not None
    server.process.send_signal(signal.SIGCONT)  # a stopped process would not act on the SIGTERM
    server.stop()


@pytest.fixture
def settings_overrides(redis_server: RedisServer) -> dict[str, object]:
    return {"lease_seconds": LEASE_SECONDS, "broker_url": redis_server.url}


def delivered(world: World) -> int:
    with world.session() as session:
        return int(session.scalar(select(func.count()).where(Delivery.status == "delivered")) or 0)


def post_for(world: World, student_ids: list[str], frozen_until: float | None) -> list[float]:
    """Post one grade per student every POST_EVERY_SECONDS (until `frozen_until`, then wait for it); the
    latencies, sorted."""
    latencies: list[float] = []
    for student_id in student_ids:
        if frozen_until is not None and time.monotonic() >= frozen_until:
            break
        started = time.monotonic()
        response = world.post_grade({"assignmentID": "quiz-1", "userID": student_id, "percentage": 0.7})
        latencies.append(time.monotonic() - started)
        assert response.status_code == 202, response.text
        time.sleep(max(0.0, POST_EVERY_SECONDS - latencies[-1]))
    if frozen_until is not None:
        time.sleep(max(0.0, frozen_until - time.monotonic()))
    return sorted(latencies)


def report(broker: str, latencies: list[float]) -> None:
    p95 = latencies[max(0, round(len(latencies) * 0.95) - 1)]
    median = statistics.median(latencies)
    print(
        f"POST /v1/grade, Redis {broker}: {len(latencies)} posts, median {median * 1000:.0f} ms,"
        f" p95 {p95 * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms"
    )


def test_a_frozen_broker_leaves_intake_latency_unchanged_and_every_grade_is_delivered_after(
    world: World, lms: ScriptedLms, redis_server: RedisServer, database_url: str, tmp_path: Path
) -> None:
    with world.session() as session:
        connection = session.get(LmsConnection, world.connection_id)
        users = [create_user(session, world.district_id, name=f"Student {n}") for n in range(BASELINE_POSTS + 60)]
        for user in users:
            enroll(session, connection, COURSE, user)
        student_ids = [user.id for user in users]
    worker = CeleryWorker(database_url, tmp_path, "celery", broker_url=redis_server.url)
    assert redis_server.process is not None
    try:
        # With the broker answering (the publisher is connected when Redis freezes), for comparison.
        answering = post_for(world, student_ids[:BASELINE_POSTS], frozen_until=None)
        wait_until(lambda: delivered(world) == BASELINE_POSTS, "the first grades delivered", worker)
        report("answering", answering)

        redis_server.process.send_signal(signal.SIGSTOP)
        frozen = post_for(world, student_ids[BASELINE_POSTS:], frozen_until=time.monotonic() + FREEZE_SECONDS)
        redis_server.process.send_signal(signal.SIGCONT)
        report("frozen", frozen)
        # Far below the broker's timeout (generous for a busy machine): no post waited on the frozen broker.
        assert frozen[-1] < OLD_FROZEN_POST_SECONDS / 5, frozen

        total = BASELINE_POSTS + len(frozen)
        wait_until(lambda: delivered(world) == total, "every grade delivered after the freeze", worker, timeout=90)
        assert worker.process.poll() is None, "the worker ended:\n" + worker.log()
        assert len(lms.gradebook) == total
        assert flush_dispatchers(), "the web process's publisher is still stuck on the resumed broker"
    finally:
        worker.stop()
