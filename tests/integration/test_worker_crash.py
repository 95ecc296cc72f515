"""Leases: a worker that dies between claim and result does not lose the grade (docs/delivery.md, Leases).

The main test runs `gateway worker` as a real process, lets it claim a delivery and send it to a fake LMS that
holds the request, kills the process with SIGKILL, and shows the delivery waits out the lease and is then
delivered exactly once by another worker.

The workers in this process read a FrozenClock: a lease runs out when the test moves the clock past it, so no
test waits for one, and none depends on how fast the machine is.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from adapters.http import HttpClient
from gateway.clock import FrozenClock
from gateway.composition import services_of
from gateway.models import Delivery
from gateway.services.staff_retries import retry_delivery
from gateway.worker import DeliveryWorker, LeaseKeeper
from tests.conftest import TEST_ENCRYPTION_KEY, make_settings
from tests.factories import COURSE, World
from tests.fakes.scripted_lms import Close, Hang, ScriptedLms

pytestmark = pytest.mark.slow

LEASE_SECONDS = 30.0


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"lease_seconds": LEASE_SECONDS}


def post(world: World, percentage: float) -> str:
    response = world.post_grade({"assignmentID": "quiz-1", "userID": world.students[0], "percentage": percentage})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def delivery_of(world: World, grade_id: str) -> Delivery:
    with world.session() as session:
        [delivery] = session.scalars(select(Delivery).where(Delivery.grade_id == grade_id)).all()
        return delivery


def advance_past(clock: FrozenClock, instant: datetime) -> None:
    """Move the clock just past `instant` (a lease's end): a lease runs out once the time is later than its end."""
    clock.advance(max(0.0, (instant - clock.now()).total_seconds()) + 0.001)


def worker_command() -> list[str]:
    console_script = Path(sys.executable).parent / "gateway"
    if console_script.exists():
        return [str(console_script), "worker"]
    return [sys.executable, "-m", "gateway.cli", "worker"]


def worker_env(database_url: str, tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "GATEWAY_DATABASE_URL": database_url,
            "GATEWAY_ENCRYPTION_KEYS": TEST_ENCRYPTION_KEY,
            "GATEWAY_SECRET_KEY": "test-secret-key",
            "GATEWAY_LEASE_SECONDS": str(LEASE_SECONDS),
            "GATEWAY_WORKER_POLL_SECONDS": "0.1",
            "GATEWAY_EMBEDDED_WORKER": "false",
            "GATEWAY_HTTP_READ_TIMEOUT": "30",
            "GATEWAY_INSTANCE_DIR": str(tmp_path / "instance"),
        }
    )
    return env


def test_worker_killed_between_claim_and_result_delivers_once_after_the_lease(
    world: World, lms: ScriptedLms, database_url: str, tmp_path: Path
) -> None:
    # The first write is held by the LMS; when released, the LMS drops it without storing anything.
    [hang] = lms.script(Hang(then=Close()))
    assert isinstance(hang, Hang)
    grade_id = post(world, 0.8)

    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            worker_command(), env=worker_env(database_url, tmp_path), stdout=log, stderr=subprocess.STDOUT
        )
    try:
        arrived = hang.arrived.wait(15)
        assert arrived, "the worker process never reached the LMS:\n" + log_path.read_text()

        # Claimed and in flight: the row is `delivering` under the worker's lease.
        claimed = delivery_of(world, grade_id)
        assert (claimed.status, claimed.attempts) == ("delivering", 1)
        assert claimed.lease_expires_at is not None and claimed.claim_token is not None

        process.send_signal(signal.SIGKILL)
        assert process.wait(10) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)

    lease_expires_at = claimed.lease_expires_at
    # Another worker, its clock at the instant of the dead worker's claim.
    clock = FrozenClock(claimed.updated_at)
    worker = DeliveryWorker(
        services_of(world.app).database,
        services_of(world.app).box,
        world.app.config["PASSBACK"],
        clock=clock,
    )
    assert clock.now() < lease_expires_at
    dead = delivery_of(world, grade_id)
    assert (dead.status, dead.attempts, dead.claim_token) == ("delivering", 1, claimed.claim_token)
    # Another worker looking now finds nothing to do: the dead worker's lease still holds the row.
    assert worker.run_once() == 0
    assert delivery_of(world, grade_id).status == "delivering"
    assert lms.gradebook == {}
    assert world.get(f"/v1/grades/{grade_id}").json()["status"] == "delivering"

    hang.release()  # the LMS finally gives up on the dead connection

    # At the very end of the lease the row is still the dead worker's; an instant later it is free again.
    clock.advance((lease_expires_at - clock.now()).total_seconds())
    assert clock.now() == lease_expires_at
    assert worker.claim() == []
    advance_past(clock, lease_expires_at)
    claims = worker.claim()
    assert claims, "the delivery was not claimed again after the lease expired"
    assert worker.deliver_claimed(claims[0]) == "delivered"

    delivered = delivery_of(world, grade_id)
    assert (delivered.status, delivered.attempts) == ("delivered", 2)
    assert delivered.claim_token is None and delivered.lease_expires_at is None
    assert worker.run_once() == 0
    # The LMS saw two requests (the dropped one and the retry) and stored the grade once.
    assert len(lms.score_writes()) == 2
    [entry] = lms.gradebook.values()
    assert (entry.key, entry.score_given, entry.score_maximum, entry.writes) == (
        (COURSE, "quiz-1", world.students[0]),
        8.0,
        10.0,
        1,
    )
    status = world.get(f"/v1/grades/{grade_id}").json()
    assert status["status"] == "delivered"
    assert status["deliveries"][0]["attempts"] == 2


def test_late_result_of_a_worker_whose_lease_expired_is_ignored(
    world: World, lms: ScriptedLms, database_url: str
) -> None:
    """A slow (not dead) worker finishes after its lease expired and another worker delivered: its result is
    dropped, it does not overwrite the row."""
    db, box = services_of(world.app).database, services_of(world.app).box
    [hang] = lms.script(Hang())
    assert isinstance(hang, Hang)
    grade_id = post(world, 0.6)
    clock = FrozenClock()  # after the post: its delivery is due on this clock
    settings = make_settings(database_url, lease_seconds=LEASE_SECONDS)
    # A call outliving its lease: the request deadline (a third of the lease) normally prevents it; a long one
    # here stands for a stalled process, to show the late result is still dropped.
    slow = DeliveryWorker(db, box, settings, http=HttpClient(2, 5, deadline=30), clock=clock)
    other = DeliveryWorker(db, box, settings, clock=clock)

    results: list[str | None] = []
    [claim] = slow.claim()
    thread = threading.Thread(target=lambda: results.append(slow.deliver_claimed(claim)), daemon=True)
    thread.start()
    assert hang.arrived.wait(5)
    lease_expires_at = delivery_of(world, grade_id).lease_expires_at
    assert lease_expires_at is not None
    advance_past(clock, lease_expires_at)  # the slow worker's lease runs out while its request hangs

    assert other.run_once() == 1
    delivered = delivery_of(world, grade_id)
    assert (delivered.status, delivered.attempts) == ("delivered", 2)

    hang.release()
    thread.join(5)
    assert results == [None], "the late result must be recognised as a lost claim"
    after = delivery_of(world, grade_id)
    assert (after.status, after.attempts, after.delivered_at) == ("delivered", 2, delivered.delivered_at)
    assert [s.score_given for s in lms.gradebook.values()] == [6.0]


def test_claim_abandoned_too_often_fails_with_a_reason_and_can_be_retried(
    world: World, lms: ScriptedLms, database_url: str
) -> None:
    db, box = services_of(world.app).database, services_of(world.app).box
    grade_id = post(world, 0.9)
    clock = FrozenClock()  # after the post: its delivery is due on this clock
    settings = make_settings(database_url, lease_seconds=LEASE_SECONDS, max_attempts=2)
    crashing = DeliveryWorker(db, box, settings, clock=clock)

    # A worker that claims it and dies before sending anything has not made an attempt.
    crashing.claim()
    unsent = delivery_of(world, grade_id)
    assert unsent.attempts == 0 and unsent.lease_expires_at is not None
    advance_past(clock, unsent.lease_expires_at)
    # Two workers in a row claim it, get as far as their first request (the lease keeper runs right before
    # it and counts the attempt) and die before a result.
    for attempt in (1, 2):
        [abandoned_claim] = crashing.claim()
        LeaseKeeper(db, [abandoned_claim], LEASE_SECONDS, clock.monotonic(), clock)()
        abandoned = delivery_of(world, grade_id)
        assert abandoned.attempts == attempt and abandoned.lease_expires_at is not None
        assert crashing.claim() == []  # within the lease: not claimable
        advance_past(clock, abandoned.lease_expires_at)
    assert crashing.claim() == []
    failed = delivery_of(world, grade_id)
    assert failed.status == "failed"
    assert failed.last_error is not None and "stopped before finishing" in failed.last_error
    assert world.get(f"/v1/grades/{grade_id}").json()["status"] == "failed"
    assert lms.score_writes() == []

    with world.session() as session:
        retry_delivery(session, world.district_id, failed.id)
    assert crashing.run_until_idle() == 1
    assert delivery_of(world, grade_id).status == "delivered"
    assert [s.score_given for s in lms.gradebook.values()] == [9.0]


def test_a_slow_round_never_sends_an_old_score_after_its_lease_ran_out(
    world: World, lms: ScriptedLms, database_url: str
) -> None:
    """A worker claims two grades in one round; the first send hangs past the lease. Meanwhile the second
    student's grade is corrected and another worker delivers the new score. When the slow worker gets to the
    second grade its claim is gone, so it sends nothing: the old score never lands over the new one."""
    db, box = services_of(world.app).database, services_of(world.app).box
    ada, alan = world.students
    [hang] = lms.script(Hang())
    assert isinstance(hang, Hang)
    world.post_grade({"assignmentID": "quiz-1", "userID": ada, "percentage": 0.1})
    world.post_grade({"assignmentID": "quiz-1", "userID": alan, "percentage": 0.5})
    clock = FrozenClock()  # after the posts: their deliveries are due on this clock
    settings = make_settings(database_url, lease_seconds=LEASE_SECONDS)
    # As above, a call outliving its lease (a stalled process) despite the request deadline.
    slow = DeliveryWorker(db, box, settings, http=HttpClient(2, 5, deadline=30), clock=clock)
    other = DeliveryWorker(db, box, settings, clock=clock)
    claims = slow.claim()
    assert len(claims) == 2
    results: dict[str, str | None] = {}
    thread = threading.Thread(target=lambda: results.update(slow.deliver_claims(claims)), daemon=True)
    thread.start()
    assert hang.arrived.wait(5), "the first send reached the LMS and hangs there"

    corrected = world.post_grade({"assignmentID": "quiz-1", "userID": alan, "percentage": 0.9})
    assert corrected.status_code == 202
    with world.session() as session:
        times = session.execute(select(Delivery.lease_expires_at, Delivery.next_attempt_at)).all()
    # Past the slow worker's leases, and past the correction's time (the API stamps it on the system clock).
    advance_past(clock, max(instant for row in times for instant in row if instant is not None))
    other.run_until_idle()
    alan_entries = [s for s in lms.gradebook.values() if s.key[2] == alan]
    assert [s.score_given for s in alan_entries] == [9.0], "the correction is in the gradebook"

    hang.release()
    thread.join(10)
    assert not thread.is_alive()
    alan_entries = [s for s in lms.gradebook.values() if s.key[2] == alan]
    assert [(s.score_given, s.writes) for s in alan_entries] == [(9.0, 1)], "the old 5 was never sent"
    assert lms.writes_for(alan, "quiz-1") == 1
