"""What the gradebook of an LTI 1.3 platform ends up holding: Moodle's whole-second timestamp order, and
scores with a gradingProgress the LMS does not count (Canvas nils them unless asked to preserve, Moodle drops
them). Against the AGS fake on 127.0.0.1 playing Canvas or Moodle."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from adapters.lti13_ags import SCOPE_LINEITEM, SCOPE_SCORE
from gateway.composition import services_of
from gateway.models import Placement
from gateway.services.directory import get_user, link_identity
from gateway.services.lms import add_lms_connection, add_placement
from gateway.worker import DeliveryWorker
from tests.conftest import LiveServer
from tests.factories import World
from tests.fakes.ags_platform import CANVAS_SUBMISSION, AgsPlatform


@dataclass
class Lms:
    world: World
    platform: AgsPlatform
    student: str
    sub: str

    def post(self, body: dict[str, Any]) -> str:
        response = self.world.post_grade({"assignmentID": "quiz-1", "userID": self.student, **body})
        assert response.status_code == 202, response.text
        return str(response.headers["Location"])

    def delivery(self, location: str) -> dict[str, Any]:
        [delivery] = self.world.get(location).json()["deliveries"]
        return dict(delivery)


def _connect(world: World, platform: AgsPlatform, preset: str) -> Lms:
    with world.session() as session:
        # Only this platform receives the grades: the world's sandbox placements are dropped.
        for placement in session.scalars(select(Placement).where(Placement.course_id == "course-101")):
            session.delete(placement)
        connection = add_lms_connection(
            session,
            services_of(world.app).box,
            world.district_id,
            preset.title(),
            "lti13",
            {
                "platform": preset,
                "issuer": f"https://{preset}.example",
                "client_id": "client-1",
                "deployment_ids": ["1"],
                "auth_url": f"{platform.url}/auth",
                "token_url": platform.token_url,
                "jwks_url": f"{platform.url}/jwks",
                "allow_private_addresses": True,
            },
        )
        student = world.students[0]
        user = get_user(session, world.district_id, student)
        assert user is not None
        link_identity(session, user, connection, "sub-1", box=services_of(world.app).box)
        from gateway.services.directory import enroll

        enroll(session, connection, "course-7", user)
        add_placement(
            session,
            world.district_id,
            connection.id,
            world.app_id,
            "quiz-1",
            "course-7",
            destination={
                "lineitem": platform.add_lineitem("quiz-1", "Quiz 1", 10),
                "scopes": [SCOPE_LINEITEM, SCOPE_SCORE],
            },
        )
    return Lms(world, platform, student, "sub-1")


@pytest.fixture
def moodle(world: World, live_server: LiveServer) -> Iterator[Lms]:
    with AgsPlatform("client-1", f"{live_server.url}/lti/jwks", lms="moodle") as platform:
        yield _connect(world, platform, "moodle")


@pytest.fixture
def canvas(world: World, live_server: LiveServer) -> Iterator[Lms]:
    with AgsPlatform("client-1", f"{live_server.url}/lti/jwks", lms="canvas") as platform:
        yield _connect(world, platform, "canvas")


# A whole second a minute ago (in the past, as the API requires), fixed for the test run.
BASE = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)


def _second(offset: float) -> str:
    """A timestamp `offset` seconds after BASE."""
    return (BASE + timedelta(seconds=offset)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _whole_second(stamp: str) -> int:
    return int(datetime.fromisoformat(stamp).timestamp())


# --- Moodle: whole-second timestamps --------------------------------------------------------------------------


def test_moodle_two_grades_within_one_second_both_land_the_newer_held(moodle: Lms, worker: DeliveryWorker) -> None:
    """The app posts twice within one second and the worker delivers the first at once: Moodle would refuse the
    second (409, equal whole second). Passback sends it one second later instead, so Moodle holds the newer."""
    first = moodle.post({"scoreGiven": 6, "scoreMaximum": 10, "timestamp": _second(0.1)})
    worker.run_until_idle()
    second = moodle.post({"scoreGiven": 9, "scoreMaximum": 10, "timestamp": _second(0.6)})
    worker.run_until_idle()

    assert moodle.platform.held(moodle.sub) == 9.0
    assert moodle.platform.timestamp_refusals == [], "no score was sent with a whole second Moodle already has"
    assert [moodle.delivery(first)["status"], moodle.delivery(second)["status"]] == ["delivered", "delivered"]
    sent = moodle.platform.score_of(moodle.sub)
    assert sent is not None and _whole_second(sent["timestamp"]) == _whole_second(_second(0.1)) + 1


def test_moodle_409_for_the_newest_revision_is_resolved_not_failed(moodle: Lms, worker: DeliveryWorker) -> None:
    """Moodle already holds a score stamped in the same whole second (sent before, its receipt never recorded):
    the newest revision is sent again with a later timestamp rather than failed."""
    stamp = _second(0.7)
    moodle.platform.gradebook[(1, moodle.sub)] = (4.0, datetime.fromisoformat(_second(0.2)))
    location = moodle.post({"scoreGiven": 8, "scoreMaximum": 10, "timestamp": stamp})
    worker.run_until_idle()

    assert len(moodle.platform.timestamp_refusals) == 1
    delivery = moodle.delivery(location)
    assert delivery["status"] == "delivered", delivery
    assert moodle.platform.held(moodle.sub) == 8.0
    assert delivery["gradebookHolds"] == {"score": 8.0, "scoreMaximum": 10.0}


def test_canvas_earlier_timestamp_for_the_newest_revision_is_resolved(canvas: Lms, worker: DeliveryWorker) -> None:
    """Canvas refuses (400) a timestamp before the one it stored; for the grade's newest revision Passback
    sends it again stamped after the stored one."""
    canvas.platform.gradebook[(1, canvas.sub)] = (4.0, datetime.fromisoformat(_second(30)))
    location = canvas.post({"scoreGiven": 7, "scoreMaximum": 10, "timestamp": _second(0.5)})
    worker.run_until_idle()
    assert len(canvas.platform.timestamp_refusals) == 1
    assert canvas.delivery(location)["status"] == "delivered"
    assert canvas.platform.held(canvas.sub) == 7.0


@pytest.mark.parametrize("preset", ["canvas", "generic"])
def test_a_409_outside_moodle_fails_with_the_lms_message_and_is_not_resent(
    world: World, live_server: LiveServer, worker: DeliveryWorker, preset: str
) -> None:
    """Only Moodle's 409 means "an earlier timestamp"; elsewhere a 409 is an ordinary refusal: the delivery
    fails with the LMS's message after one send, not re-stamped and retried forever."""
    with AgsPlatform("client-1", f"{live_server.url}/lti/jwks", lms="canvas") as platform:
        lms = _connect(world, platform, preset)
        platform.fail_next(409, '{"errors":[{"message":"Conflicting submission in progress"}]}', count=10)
        location = lms.post({"scoreGiven": 7, "scoreMaximum": 10, "timestamp": _second(0.5)})
        for _ in range(3):
            worker.run_until_idle()
        delivery = lms.delivery(location)
        assert delivery["status"] == "failed", delivery
        assert delivery["lmsStatus"] == 409
        assert "Conflicting submission in progress" in delivery["lastError"]
        assert platform.score_requests == 1
        assert platform.held(lms.sub) is None


# --- non-final gradingProgress ---------------------------------------------------------------------------------


def test_canvas_pending_after_a_final_grade_keeps_it_and_says_so(canvas: Lms, worker: DeliveryWorker) -> None:
    final = canvas.post({"scoreGiven": 8, "scoreMaximum": 10, "timestamp": _second(1)})
    worker.run_until_idle()
    assert canvas.delivery(final)["gradebookHolds"] == {"score": 8.0, "scoreMaximum": 10.0}

    pending = canvas.post({"scoreGiven": 3, "scoreMaximum": 10, "gradingProgress": "Pending", "timestamp": _second(2)})
    worker.run_until_idle()
    sent = canvas.platform.score_of(canvas.sub)
    assert sent is not None and sent[CANVAS_SUBMISSION] == {"preserve_score": True}
    assert canvas.platform.held(canvas.sub) == 8.0, "the final grade survives a progress update"
    delivery = canvas.delivery(pending)
    assert delivery["status"] == "delivered"
    assert delivery["gradebookHolds"] == {"score": 8.0, "scoreMaximum": 10.0, "kept": True}
    assert "3/10" not in (delivery["lmsResponse"] or "")

    # PendingManual counts on Canvas: the score is held as sent.
    manual = canvas.post(
        {"scoreGiven": 5, "scoreMaximum": 10, "gradingProgress": "PendingManual", "timestamp": _second(3)}
    )
    worker.run_until_idle()
    assert canvas.platform.held(canvas.sub) == 5.0
    assert canvas.delivery(manual)["gradebookHolds"] == {"score": 5.0, "scoreMaximum": 10.0}

    # The app may ask to clear it: no preserve_score, and the delivery says the gradebook holds no score.
    cleared = canvas.post(
        {
            "scoreGiven": 0,
            "scoreMaximum": 10,
            "gradingProgress": "NotReady",
            "activityProgress": "Initialized",
            "preserveScore": False,
            "timestamp": _second(4),
        }
    )
    worker.run_until_idle()
    sent = canvas.platform.score_of(canvas.sub)
    assert sent is not None and CANVAS_SUBMISSION not in sent
    assert canvas.platform.held(canvas.sub) is None
    assert canvas.delivery(cleared)["gradebookHolds"] == {"score": None}
    assert canvas.world.get(cleared).json()["preserveScore"] is False


def test_moodle_non_final_score_is_not_reported_delivered_with_that_score(moodle: Lms, worker: DeliveryWorker) -> None:
    final = moodle.post({"scoreGiven": 8, "scoreMaximum": 10, "timestamp": _second(1)})
    worker.run_until_idle()
    assert moodle.delivery(final)["gradebookHolds"] == {"score": 8.0, "scoreMaximum": 10.0}
    posts = moodle.platform.score_posts

    pending = moodle.post(
        {"scoreGiven": 3, "scoreMaximum": 10, "gradingProgress": "PendingManual", "timestamp": _second(2)}
    )
    worker.run_until_idle()
    # Moodle would drop the score (and so erase the final one): nothing is sent, and the delivery says so.
    assert moodle.platform.score_posts == posts
    assert moodle.platform.held(moodle.sub) == 8.0
    delivery = moodle.delivery(pending)
    assert delivery["status"] == "delivered"
    assert delivery["gradebookHolds"] == {"score": 8.0, "scoreMaximum": 10.0, "kept": True}
    assert "3/10" not in (delivery["lmsResponse"] or "")

    # Asked to clear it, Passback sends it and says the gradebook holds no score.
    cleared = moodle.post(
        {
            "scoreGiven": 3,
            "scoreMaximum": 10,
            "gradingProgress": "Pending",
            "preserveScore": False,
            "timestamp": _second(2.5),
        }
    )
    worker.run_until_idle()
    assert moodle.platform.score_posts == posts + 1
    assert moodle.platform.held(moodle.sub) is None
    assert moodle.delivery(cleared)["gradebookHolds"] == {"score": None}
    # The next final grade, in the same whole second as the clearing one, still lands.
    again = moodle.post({"scoreGiven": 10, "scoreMaximum": 10, "timestamp": _second(2.9)})
    worker.run_until_idle()
    assert moodle.delivery(again)["status"] == "delivered"
    assert moodle.platform.held(moodle.sub) == 10.0


def test_preserve_score_must_be_a_boolean(canvas: Lms) -> None:
    response = canvas.world.post_grade(
        {"assignmentID": "quiz-1", "userID": canvas.student, "percentage": 0.5, "preserveScore": "yes"}
    )
    assert response.status_code == 422
    assert "preserveScore" in response.json()["error"]["fields"]
