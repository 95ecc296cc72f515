"""Work that releases or routes outbox rows wakes delivery once it is committed, whichever door it came through:
an LTI launch, `gateway user enroll`, `gateway lms sync-roster`. Under Celery the wake-up is a task published to
the broker (read back from the real Redis queue, no worker consuming it); in embedded mode it is the worker's
wake-up event. Skipped where no Redis answers, like the other Celery tests."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import update

from gateway.cli import main
from gateway.composition import services_of
from gateway.models import Delivery, LmsConnection, LmsIdentity, Placement, utcnow
from gateway.services.directory import create_user, enroll
from gateway.services.lms import add_placement
from gateway.tasks import QUEUE, flush_dispatchers
from gateway.worker import DeliveryWorker, EmbeddedWorker
from schemas.statuses import DeliveryStatus
from tests.conftest import TEST_ENCRYPTION_KEY
from tests.factories import World
from tests.integration.test_lti11 import KEY, Lti11, lti11  # noqa: F401  (the fixture)
from tests.integration.test_lti13_delivery import AgsSetup, _sandbox_off, ags  # noqa: F401  (the fixture)

# The URL the Celery tests use: Celery keeps the first broker connection of the process, so all must agree.
REDIS_URL = os.environ.get("GATEWAY_TEST_BROKER_URL", "redis://127.0.0.1:6379/14")
DRAIN = "passback.drain_connection"
SWEEP = "passback.sweep"


@pytest.fixture
def broker() -> Iterator[Any]:
    try:
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
        client.ping()
    except Exception:
        reason = f"no Redis at {REDIS_URL}: the Celery path is untested here (CI runs it)"
        if os.environ.get("PASSBACK_REQUIRE_REDIS") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    client.flushdb()  # this test database index only
    yield client
    client.flushdb()


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"broker_url": REDIS_URL}


def enqueued(broker: Any) -> list[tuple[str, str]]:
    """The tasks waiting in the broker's queue, as (task name, its arguments' repr)."""
    assert flush_dispatchers(), "the web process's publisher did not publish its wake-ups"
    messages = [json.loads(raw) for raw in broker.lrange(QUEUE, 0, -1)]
    return [(m["headers"]["task"], m["headers"].get("argsrepr", "")) for m in messages]


def forget_published(broker: Any) -> None:
    """Empty the queue of what was published so far (the publisher thread included), to see what comes next."""
    assert flush_dispatchers(), "the web process's publisher did not publish its wake-ups"
    broker.flushdb()


def drains_of(broker: Any) -> set[str]:
    return {args for task, args in enqueued(broker) if task == DRAIN}


def cli(app: Flask, database_url: str, *args: str) -> dict[str, Any]:
    runner = CliRunner(
        env={
            "GATEWAY_DATABASE_URL": database_url,
            "GATEWAY_ENCRYPTION_KEYS": TEST_ENCRYPTION_KEY,
            "GATEWAY_SECRET_KEY": "test-secret-key",
            "GATEWAY_BROKER_URL": REDIS_URL,
        }
    )
    result = runner.invoke(main, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.output))


def _waiting_for_the_launch(lti11: Lti11, worker: DeliveryWorker) -> tuple[str, str]:  # noqa: F811
    """A student the LMS names (as a roster sync learns) but who never launched: their grade awaits the launch."""
    course = "canvas-course-42"
    with lti11.world.session() as session:
        connection = session.get(LmsConnection, lti11.connection_id)
        assert connection is not None
        user = create_user(session, lti11.world.district_id, name="Grace", email="grace@school.example")
        enroll(session, connection, course, user)
        add_placement(session, lti11.world.district_id, connection.id, lti11.world.app_id, "quiz-1", course)
        session.add(
            LmsIdentity(
                district_id=lti11.world.district_id,
                user_id=user.id,
                lms_connection_id=connection.id,
                issuer=f"lti11:{KEY}",
                subject="stu-42",
            )
        )
        user_id = user.id
    location = lti11.grade(user_id, percentage=0.9)
    worker.run_until_idle()
    assert lti11.delivery(location)["status"] == "awaiting_launch"
    return course, location


def test_an_lti_launch_that_releases_a_waiting_grade_asks_celery_to_drain_its_connection(
    lti11: Lti11,  # noqa: F811
    worker: DeliveryWorker,
    broker: Any,
) -> None:
    course, location = _waiting_for_the_launch(lti11, worker)
    forget_published(broker)  # what posting the grade published (and its once-per-500-ms kick marker) goes

    lti11.launch_ok(user_id="stu-42", resource_link_id="rl-42", context_id=course)

    assert lti11.delivery(location)["status"] == "pending"
    assert repr([lti11.connection_id]) in drains_of(broker), enqueued(broker)


def test_an_lti_launch_that_releases_a_waiting_grade_wakes_the_embedded_worker(
    lti11: Lti11,  # noqa: F811
    worker: DeliveryWorker,
    broker: Any,
) -> None:
    course, location = _waiting_for_the_launch(lti11, worker)
    nudger = services_of(lti11.world.app).nudger
    nudger.dispatch = None  # embedded mode: no broker, the web process's own worker delivers
    nudger.embedded = EmbeddedWorker(worker)  # never started: nothing else clears its wake-up event
    worker.wakeup.clear()

    lti11.launch_ok(user_id="stu-42", resource_link_id="rl-42", context_id=course)

    assert lti11.delivery(location)["status"] == "pending"
    assert worker.wakeup.is_set()


def test_user_enroll_routes_the_students_grade_and_asks_celery_to_deliver_it(
    world: World, app: Flask, database_url: str, broker: Any
) -> None:
    with world.session() as session:
        newcomer_id = create_user(session, world.district_id, name="Newcomer").id
    posted = world.post_grade({"assignmentID": "quiz-1", "userID": newcomer_id, "percentage": 0.5})
    assert posted.status_code == 202, posted.text
    assert [d["status"] for d in posted.json()["deliveries"]] == ["unroutable"]
    forget_published(broker)

    enrolled = cli(
        app, database_url, "user", "enroll", "--district", world.district_id, "--lms", world.connection_id,
        "--course", "course-101", "--user", newcomer_id,
    )  # fmt: skip

    assert enrolled["deliveries_created"] == 1
    tasks = {task for task, _ in enqueued(broker)}
    assert tasks & {DRAIN, SWEEP}, "the routed grade waits for the next sweep"


def test_placement_add_routes_waiting_grades_and_asks_celery_to_deliver_them(
    world: World, app: Flask, database_url: str, broker: Any
) -> None:
    posted = world.post_grade({"assignmentID": "unplaced", "userID": world.students[0], "percentage": 0.5})
    assert posted.status_code == 202, posted.text
    assert [d["status"] for d in posted.json()["deliveries"]] == ["unroutable"]
    broker.flushdb()

    placed = cli(
        app, database_url, "placement", "add", "--district", world.district_id, "--lms", world.connection_id,
        "--app", world.app_id, "--assignment", "unplaced", "--course", "course-101",
    )  # fmt: skip

    assert placed["assignment"] == "unplaced"
    assert repr([world.connection_id]) in drains_of(broker), enqueued(broker)


def test_roster_sync_that_releases_a_grade_asks_celery_to_drain_the_connection(
    ags: AgsSetup,  # noqa: F811
    app: Flask,
    database_url: str,
    broker: Any,
) -> None:
    _sandbox_off(ags.world)
    with ags.world.session() as session:
        connection = session.get(LmsConnection, ags.connection_id)
        placement = session.get(Placement, ags.placement_id)
        assert connection is not None and placement is not None
        placement.destination = {**placement.destination, "context_memberships_url": ags.platform.memberships_url}
        known = create_user(session, ags.world.district_id, name="Known", email="kim@school.example")
        enroll(session, connection, "canvas-course-7", known)
        known_id = known.id
    posted = ags.world.post_grade({"assignmentID": "quiz-1", "userID": known_id, "percentage": 0.7})
    assert posted.json()["status"] == "awaiting_launch"
    ags.platform.members = [{"user_id": "sub-kim", "email": "kim@school.example", "status": "Active"}]
    forget_published(broker)

    synced = cli(app, database_url, "lms", "sync-roster", "--district", ags.world.district_id, "--lms", "Canvas")

    assert synced["released"] == 1
    assert repr([ags.connection_id]) in drains_of(broker), enqueued(broker)


def test_lms_set_makes_retrying_deliveries_due_and_asks_celery_to_drain_the_connection(
    world: World, app: Flask, database_url: str, broker: Any
) -> None:
    posted = world.post_grade({"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.5})
    assert posted.status_code == 202, posted.text
    with world.session() as session:
        # As after a refused host: retrying, next look an hour away.
        session.execute(
            update(Delivery)
            .where(Delivery.lms_connection_id == world.connection_id)
            .values(status=DeliveryStatus.RETRYING, next_attempt_at=utcnow() + timedelta(hours=1))
        )
    broker.flushdb()

    changed = cli(
        app, database_url, "lms", "set", "--district", world.district_id, "--lms", world.connection_id,
        "--setting", f"secret={world.sandbox_secret}",
    )  # fmt: skip

    assert changed["changed"] == ["secret"]
    assert repr([world.connection_id]) in drains_of(broker), enqueued(broker)
