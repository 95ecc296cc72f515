"""A slow or hanging LMS holds only its own deliveries (issue 13, item 4): the embedded worker delivers to
different connections at once, and every LMS request ends at its deadline, well inside the claim's lease."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import pytest

from gateway import start_embedded_worker
from gateway.composition import services_of
from gateway.config import Settings
from gateway.models import User
from gateway.services.directory import enroll
from gateway.services.lms import add_lms_connection, add_placement
from tests.factories import World
from tests.fakes.scripted_lms import ScriptedLms, Trickle


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    # A long lease, so the default 30 s deadline applies: the slow LMS is still trickling when the healthy one
    # is served (two threads are the default's four, less: enough for two connections).
    return {"lease_seconds": 600.0}


@pytest.fixture
def healthy(world: World) -> Iterator[ScriptedLms]:
    """A second sandbox connection in the same district, on its own LMS, with `unplaced` placed there."""
    secret = secrets.token_urlsafe(24)
    with ScriptedLms(secret) as fake:
        box = services_of(world.app).box
        with world.session() as session:
            connection = add_lms_connection(
                session, box, world.district_id, "Healthy", "sandbox", {"base_url": fake.base_url, "secret": secret}
            )
            for student in world.students:
                user = session.get(User, student)
                assert user is not None
                enroll(session, connection, "course-202", user)
            add_placement(session, world.district_id, connection.id, world.app_id, "unplaced", "course-202")
        yield fake
        assert fake.problems == []


def _status(world: World, location: str) -> str:
    return str(world.get(location).json()["status"])


def test_a_trickling_lms_does_not_hold_a_healthy_connections_grade(
    world: World, lms: ScriptedLms, healthy: ScriptedLms
) -> None:
    # One byte every 0.2 s: the per-read timeout never fires; the whole answer would take about a minute.
    [trickle] = lms.script(Trickle(interval=0.2))
    start_embedded_worker(world.app)
    slow = world.post_grade({"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.5})
    assert slow.status_code == 202
    assert lms.wait_for_score_writes(1), "the slow LMS got its request"

    fine = world.post_grade({"assignmentID": "unplaced", "userID": world.students[0], "percentage": 0.9})
    assert fine.status_code == 202, fine.text
    assert healthy.wait_for_score_writes(1, timeout=20), "the healthy LMS was served while the slow one trickled"
    assert not trickle.finished.is_set(), "the slow LMS was still answering"
    deadline = time.monotonic() + 20
    while _status(world, fine.headers["Location"]) != "delivered" and time.monotonic() < deadline:
        time.sleep(0.05)  # the embedded worker records it
    assert _status(world, fine.headers["Location"]) == "delivered"
    assert _status(world, slow.headers["Location"]) == "delivering"

    trickle.release()  # the slow answer is cut short: unknown outcome, so the grade is retried
    assert trickle.finished.wait(10)


def test_the_request_deadline_stays_inside_the_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_LEASE_SECONDS", "60")
    monkeypatch.setenv("GATEWAY_HTTP_REQUEST_DEADLINE", "25")
    with pytest.raises(ValueError, match=r"GATEWAY_HTTP_REQUEST_DEADLINE \(25 s\) must be at most a third of"):
        Settings.from_env(database_url="sqlite://", secret_key="k", encryption_keys="x")
    # Settings built in code are clamped instead: the worker re-checks its lease once a third has passed.
    assert Settings(lease_seconds=60, http_request_deadline=25).request_deadline() == 20
    assert Settings().request_deadline() == 30 and Settings().lease_seconds == 120
