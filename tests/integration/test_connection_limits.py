"""One LMS connection's own limits (`gateway lms limits`): its request rate reaches the throttled HTTP client
every adapter sends through, and its concurrency caps the Celery drains that deliver to it."""

from __future__ import annotations

import json
import os
import secrets

import pytest
from click.testing import CliRunner

from gateway.cli import main as cli
from gateway.composition import services_of
from gateway.services.delivery_work import load_works
from gateway.tasks import Runtime
from gateway.throttle import RedisLimiter, delivery_slot
from gateway.worker import DeliveryWorker
from tests.factories import World

REDIS_URL = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def limits(runner: CliRunner, world: World, *args: str) -> dict:
    result = runner.invoke(cli, ["lms", "limits", "--district", world.district_id, "--lms", "Sandbox", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_a_connection_gets_its_own_rate_and_back_the_default(
    world: World, worker: DeliveryWorker, runner: CliRunner
) -> None:
    default = limits(runner, world)
    assert (default["own_rate"], default["own_concurrency"]) == (False, False)
    assert limits(runner, world, "--rate", "2.5", "--concurrency", "1")["rate"] == 2.5

    world.post_grade({"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.5})
    [claim] = worker.claim()
    with world.session() as session:
        work = load_works(session, services_of(world.app).box, [claim])[claim.delivery_id]
    http = worker.http_for(work.lms_connection_id, work.rate_limit)
    assert (http.throttle.rate, http.throttle.burst) == (2.5, 2), "its own rate, and no burst above it"
    assert worker.deliver_claims([claim]) == {claim.delivery_id: "delivered"}

    back = limits(runner, world, "--default")
    assert (back["own_rate"], back["own_concurrency"]) == (False, False)


def test_bad_limits_are_refused(world: World, runner: CliRunner) -> None:
    result = runner.invoke(cli, ["lms", "limits", "--district", world.district_id, "--lms", "Sandbox", "--rate", "0"])
    assert result.exit_code == 2 and "--rate" in result.output
    other = runner.invoke(cli, ["lms", "limits", "--district", world.district_id, "--lms", "Nope"])
    assert other.exit_code != 0 and "no LMS connection" in other.output


def test_a_drain_respects_the_connections_own_concurrency(world: World, runner: CliRunner) -> None:
    try:
        limiter = RedisLimiter(REDIS_URL, prefix=f"passback-test:{secrets.token_hex(6)}:")
        limiter.redis.ping()
    except Exception as exc:
        if os.environ.get("PASSBACK_REQUIRE_REDIS") == "1":
            pytest.fail(f"no Redis at {REDIS_URL}: {exc}")
        pytest.skip(f"no Redis at {REDIS_URL}")
    limits(runner, world, "--concurrency", "1")
    world.post_grade({"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.5})
    app = world.app
    settings = app.config["PASSBACK"]
    worker = DeliveryWorker(services_of(app).database, services_of(app).box, settings, limiter=limiter)
    runtime = Runtime(app, worker, limiter, settings)
    key = f"deliver:{world.connection_id}"
    with delivery_slot(limiter, key, 1, 60) as held:
        assert held is not None
        assert runtime.drain(world.connection_id) == "busy", "one delivery at once: the slot is taken"
    assert runtime.drain(world.connection_id) == "delivered 1"


def test_the_connections_page_shows_the_limits(world: World, runner: CliRunner) -> None:
    from tests.integration.test_dashboard import signed_in, staff_of

    browser = signed_in(world, staff_of(world))
    page = browser.get(world.url("/dashboard/connections"))
    assert "requests a second (default)" in page.text
    limits(runner, world, "--rate", "3", "--concurrency", "2")
    page = browser.get(world.url("/dashboard/connections"))
    assert "3 requests a second," in page.text and "2 deliveries at once" in page.text
