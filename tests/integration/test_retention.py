"""Retention (GATEWAY_RETENTION_DAYS): the worker's housekeeping purges grade history older than N days, keeps
current grades and their status, and `gateway purge --dry-run` counts without deleting. The clock is frozen and
moved by hand: no sleeps."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from gateway.cli import main
from gateway.clock import SYSTEM_CLOCK, FrozenClock
from gateway.composition import services_of
from gateway.models import Delivery, Grade, GradeRevision
from gateway.services.operator_actions import purge_expired
from gateway.worker import DeliveryWorker
from schemas.statuses import DeliveryStatus
from tests.factories import World

DAY = 86400.0


@pytest.fixture
def settings_overrides(request: pytest.FixtureRequest) -> dict[str, object]:
    return dict(getattr(request, "param", {"retention_days": 30}))


def _rows(world: World) -> tuple[int, int]:
    with world.session() as session:
        return (
            int(session.scalar(select(func.count()).select_from(Delivery)) or 0),
            int(session.scalar(select(func.count()).select_from(GradeRevision)) or 0),
        )


def test_housekeeping_purges_grade_history_past_the_retention_period(world: World) -> None:
    clock = FrozenClock(SYSTEM_CLOCK.now() + timedelta(minutes=5))  # what the API writes is due at once
    services = services_of(world.app)
    worker = DeliveryWorker(services.database, services.box, world.app.config["PASSBACK"], clock=clock)
    student, other = world.students
    # quiz-1: delivered twice (revision 1 becomes history); quiz-2: refused by the LMS (failed, with its error).
    assert world.post_grade({"assignmentID": "quiz-1", "userID": student, "percentage": 0.5}).status_code == 202
    worker.run_until_idle()
    assert world.post_grade({"assignmentID": "quiz-1", "userID": student, "percentage": 0.9}).status_code == 202
    worker.run_until_idle()
    world.inject_faults(1, status=400)
    failed = world.post_grade({"assignmentID": "quiz-2", "userID": student, "percentage": 0.2}).json()["id"]
    worker.run_until_idle()
    # A grade still waiting is never touched, however old.
    waiting = world.post_grade({"assignmentID": "quiz-1", "userID": other, "percentage": 0.7}).json()["id"]
    with world.session() as session:
        statuses = {d.status for d in session.scalars(select(Delivery).where(Delivery.grade_id == failed))}
        assert statuses == {DeliveryStatus.FAILED}
        assert session.scalars(select(Delivery.last_error).where(Delivery.grade_id == failed)).one()
    before = _rows(world)
    assert before == (4, 4)

    worker.purge_if_due()  # day 0: nothing is old enough
    clock.advance(29 * DAY)
    worker.purge_if_due()
    assert _rows(world) == before

    clock.advance(2 * DAY)
    with services.unit_of_work() as uow:
        counted = purge_expired(
            uow,
            idempotency_ttl_seconds=DAY,
            webhook_retention_seconds=30 * DAY,
            retention_days=30,
            dry_run=True,
            now=clock.now(),
        )
    assert (counted["deliveries"], counted["grade_revisions"]) == (1, 1)
    assert _rows(world) == before  # the dry run deleted nothing

    worker.purge_if_due()
    assert _rows(world) == (3, 3)
    with world.session() as session:
        kept = {g.id: g.revision for g in session.scalars(select(Grade))}
        revisions = {(r.grade_id, r.revision) for r in session.scalars(select(GradeRevision))}
        assert revisions == set(kept.items())  # each grade keeps its current revision only
        failed_row = session.scalars(select(Delivery).where(Delivery.grade_id == failed)).one()
        assert failed_row.status == DeliveryStatus.FAILED and failed_row.last_error is None
        waiting_row = session.scalars(select(Delivery).where(Delivery.grade_id == waiting)).one()
        assert waiting_row.status == DeliveryStatus.PENDING
    # The grades read as before: the current deliveries make their status.
    answers = {g["assignmentID"]: g for g in world.get(f"/v1/grades?userID={student}").json()["grades"]}
    assert answers["quiz-1"]["status"] == "delivered" and answers["quiz-1"]["percentage"] == 0.9
    assert answers["quiz-2"]["status"] == "failed"


@pytest.mark.parametrize("settings_overrides", [{"retention_days": 0}], indirect=True)
def test_without_retention_history_is_kept_forever(world: World) -> None:
    clock = FrozenClock(SYSTEM_CLOCK.now() + timedelta(minutes=5))  # what the API writes is due at once
    services = services_of(world.app)
    worker = DeliveryWorker(services.database, services.box, world.app.config["PASSBACK"], clock=clock)
    for percentage in (0.5, 0.9):
        world.post_grade({"assignmentID": "quiz-1", "userID": world.students[0], "percentage": percentage})
        worker.run_until_idle()
    before = _rows(world)
    clock.advance(3650 * DAY)
    worker.purge_if_due()
    assert _rows(world) == before == (2, 2)


def test_purge_dry_run_from_the_command_line(world: World, runner: CliRunner) -> None:
    result = runner.invoke(main, ["purge", "--dry-run", "--json"], env={"GATEWAY_RETENTION_DAYS": "30"})
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["dry_run"] is True and answer["retention_days"] == 30
    assert {"deliveries", "grade_revisions", "lms_answers_cleared", "nonces"} <= set(answer)


def test_a_celery_worker_process_runs_the_housekeeping_too(world: World) -> None:
    """In the Celery layout deliveries run in tasks; the thread that records the process's heartbeat purges."""
    clock = FrozenClock(SYSTEM_CLOCK.now() + timedelta(minutes=5))
    services = services_of(world.app)
    settings = world.app.config["PASSBACK"]
    worker = DeliveryWorker(services.database, services.box, settings, clock=clock)
    for percentage in (0.5, 0.9):
        world.post_grade({"assignmentID": "quiz-1", "userID": world.students[0], "percentage": percentage})
        worker.run_until_idle()
    assert _rows(world) == (2, 2)
    clock.advance(31 * DAY)
    beats = DeliveryWorker(services.database, services.box, settings, clock=clock, role="celery")
    stop = threading.Event()
    thread = threading.Thread(target=beats.beat_until, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while _rows(world) != (1, 1) and time.monotonic() < deadline:
            stop.wait(0.05)
    finally:
        stop.set()
        thread.join(10)
    assert _rows(world) == (1, 1)
