"""Grades delivered through LTI 1.3 AGS to a real (fake) platform on 127.0.0.1 that verifies everything."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from flask import Flask
from sqlalchemy import func, select

from adapters.lti13_ags import SCOPE_LINEITEM, SCOPE_SCORE, scores_url
from gateway.models import CachedAccessToken, Delivery, Placement
from gateway.services.directory import create_user, enroll, get_user, link_identity
from gateway.services.lms import add_lms_connection, add_placement
from gateway.worker import DeliveryWorker
from tests.conftest import LiveServer
from tests.factories import World
from tests.fakes.ags_platform import AgsPlatform


@dataclass
class AgsSetup:
    world: World
    platform: AgsPlatform
    connection_id: str
    placement_id: str
    subs: dict[str, str]


@pytest.fixture
def ags(world: World, live_server: LiveServer) -> Iterator[AgsSetup]:
    with AgsPlatform("client-1", f"{live_server.url}/lti/jwks") as platform:
        yield _register(world, platform)


def _register(world: World, platform: AgsPlatform) -> AgsSetup:
    with world.session() as session:
        connection = add_lms_connection(
            session,
            world.app.extensions["passback_box"],
            world.district_id,
            "Canvas",
            "lti13",
            {
                "platform": "generic",
                "issuer": "https://canvas.example",
                "client_id": "client-1",
                "deployment_ids": ["1:abc"],
                "auth_url": f"{platform.url}/auth",
                "token_url": platform.token_url,
                "jwks_url": f"{platform.url}/jwks",
                "allow_private_addresses": True,
            },
        )
        subs = {}
        for student in world.students:
            user = get_user(session, world.district_id, student)
            assert user is not None
            subs[student] = f"sub-{student[:6]}"
            link_identity(session, user, connection, subs[student])
            enroll(session, connection, "canvas-course-7", user)
        placement = add_placement(
            session,
            world.district_id,
            connection.id,
            world.app_id,
            "quiz-1",
            "canvas-course-7",
            destination={
                "lineitems": platform.lineitems_url,
                "resource_link_id": "rl-1",
                "scopes": [SCOPE_LINEITEM, SCOPE_SCORE],
            },
        )
        ids = (connection.id, placement.id)
    return AgsSetup(world, platform, ids[0], ids[1], subs)


def _sandbox_off(world: World) -> None:
    """These tests watch the AGS platform only: drop the sandbox placements so nothing else is delivered."""
    with world.session() as session:
        for placement in session.scalars(select(Placement).where(Placement.course_id == "course-101")):
            session.delete(placement)


def test_score_reaches_the_platform_through_a_created_line_item(ags: AgsSetup, worker: DeliveryWorker) -> None:
    _sandbox_off(ags.world)
    student = ags.world.students[0]
    response = ags.world.post_grade(
        {"assignmentID": "quiz-1", "userID": student, "scoreGiven": 7, "scoreMaximum": 10, "comment": "nice"}
    )
    assert response.status_code == 202
    worker.run_until_idle()

    assert ags.platform.assertion_errors == []
    [created] = ags.platform.lineitem_posts
    assert created == {
        "scoreMaximum": 10.0,
        "label": "Quiz 1",
        "resourceId": "quiz-1",
        "tag": "passback",
        "resourceLinkId": "rl-1",
    }
    score = ags.platform.score_of(ags.subs[student])
    assert score is not None
    assert (score["scoreGiven"], score["scoreMaximum"], score["comment"]) == (7.0, 10.0, "nice")
    assert score["timestamp"].endswith("+00:00")
    status = ags.world.get(response.headers["Location"]).json()
    assert status["status"] == "delivered"
    # The line item found or created is remembered on the placement: the next grade does not look again.
    with ags.world.session() as session:
        placement = session.get(Placement, ags.placement_id)
        assert placement is not None and placement.destination["lineitem"] == ags.platform.lineitem_url(1)


def test_existing_line_item_is_found_across_pages_never_duplicated(ags: AgsSetup, worker: DeliveryWorker) -> None:
    _sandbox_off(ags.world)
    for other in ("a", "b", "c"):
        ags.platform.add_lineitem(f"other-{other}")
    existing = ags.platform.add_lineitem("quiz-1", "Quiz 1", 10, resource_link_id="rl-1")
    for student in ags.world.students:
        assert ags.world.post_grade({"assignmentID": "quiz-1", "userID": student, "percentage": 0.5}).status_code == 202
    worker.run_until_idle()
    assert ags.platform.lineitem_posts == []
    number = int(existing.split("/line_items/")[1].split("/")[0])
    assert {ags.platform.score_of(sub, number)["scoreGiven"] for sub in ags.subs.values()} == {5.0}


def test_a_thousand_scores_share_one_access_token_across_workers(ags: AgsSetup, app: Flask) -> None:
    from gateway.models import LmsConnection
    from gateway.services.auth import authenticate
    from gateway.services.grades import accept_grade

    _sandbox_off(ags.world)
    ags.platform.add_lineitem("quiz-1", "Quiz 1", 10, resource_link_id="rl-1")
    with ags.world.session() as session:
        connection = session.get(LmsConnection, ags.connection_id)
        principal = authenticate(session, ags.world.token)
        for index in range(1000):
            user = create_user(session, ags.world.district_id, name=f"S{index}")
            link_identity(session, user, connection, f"sub-{index}")
            enroll(session, connection, "canvas-course-7", user)
            # Accepted through the service, not HTTP: this test is about delivery, and the suite's time matters.
            accept_grade(session, principal, {"assignmentID": "quiz-1", "userID": user.id, "percentage": 0.9})
    workers = [
        DeliveryWorker(app.extensions["passback_db"], app.extensions["passback_box"], app.config["PASSBACK"])
        for _ in range(2)
    ]
    while sum(w.run_once(limit=50) for w in workers):
        pass
    assert ags.platform.score_posts == 1000
    assert ags.platform.token_requests == 1, "one token, cached in the database, serves every worker"
    with ags.world.session() as session:
        assert session.scalar(select(func.count()).select_from(CachedAccessToken)) == 1


def test_expired_token_is_refreshed_once_and_the_score_delivered(ags: AgsSetup, worker: DeliveryWorker) -> None:
    _sandbox_off(ags.world)
    ags.platform.tokens.clear()  # the platform forgets every token it issued
    assert (
        ags.world.post_grade({"assignmentID": "quiz-1", "userID": ags.world.students[0], "percentage": 1}).status_code
        == 202
    )
    worker.run_until_idle()
    first = ags.platform.token_requests
    ags.platform.tokens.clear()
    assert (
        ags.world.post_grade({"assignmentID": "quiz-1", "userID": ags.world.students[1], "percentage": 1}).status_code
        == 202
    )
    worker.run_until_idle()
    assert ags.platform.token_requests == first + 1
    assert ags.platform.score_of(ags.subs[ags.world.students[1]]) is not None


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected", "retry_at_least"),
    [
        pytest.param(429, "{}", {"Retry-After": "120"}, "retrying", 110, id="429-retry-after"),
        pytest.param(
            403,
            "403 Forbidden (Rate Limit Exceeded)\n",
            {"X-Rate-Limit-Remaining": "0.0"},
            "retrying",
            0,
            id="canvas-403-rate-limit",
        ),
        pytest.param(
            422,
            '{"errors":[{"message":"User not found in course or is not a student"}]}',
            {},
            "failed",
            0,
            id="canvas-422-user-not-found",
        ),
        pytest.param(404, "", {}, "failed", 0, id="404-empty-body"),
        pytest.param(503, "busy", {}, "retrying", 0, id="503"),
    ],
)
def test_platform_answers_are_classified(
    ags: AgsSetup,
    worker: DeliveryWorker,
    status: int,
    body: str,
    headers: dict[str, str],
    expected: str,
    retry_at_least: float,
) -> None:
    from datetime import datetime

    _sandbox_off(ags.world)
    ags.platform.add_lineitem("quiz-1", "Quiz 1", 10, resource_link_id="rl-1")
    ags.platform.fail_next(status, body, headers, content_type="text/plain" if status == 403 else "application/json")
    response = ags.world.post_grade({"assignmentID": "quiz-1", "userID": ags.world.students[0], "percentage": 1})
    worker.run_once()
    [delivery] = ags.world.get(response.headers["Location"]).json()["deliveries"]
    assert delivery["status"] == expected, delivery
    assert delivery["lmsStatus"] == status
    if "User not found" in body:
        assert "User not found in course" in delivery["lastError"]
    if retry_at_least:
        next_at = datetime.fromisoformat(delivery["nextAttemptAt"].replace("Z", "+00:00"))
        assert (next_at - datetime.fromisoformat(delivery["updatedAt"].replace("Z", "+00:00"))).total_seconds() >= (
            retry_at_least
        )


def test_scores_url_keeps_the_query_after_the_path() -> None:
    assert scores_url("https://moodle.example/mod/lti/services.php/2/lineitems/8/lineitem?type_id=3") == (
        "https://moodle.example/mod/lti/services.php/2/lineitems/8/lineitem/scores?type_id=3"
    )
    assert scores_url("https://canvas.example/api/lti/courses/1/line_items/2/") == (
        "https://canvas.example/api/lti/courses/1/line_items/2/scores"
    )


def test_wrong_assertion_audience_is_a_permanent_config_failure(ags: AgsSetup, worker: DeliveryWorker) -> None:
    _sandbox_off(ags.world)
    box = ags.world.app.extensions["passback_box"]
    with ags.world.session() as session:
        from gateway.models import LmsConnection
        from gateway.services.lms import connection_settings

        connection = session.get(LmsConnection, ags.connection_id)
        settings = connection_settings(box, connection)
        settings["token_audience"] = "https://somewhere-else.example/token"
        connection.settings_encrypted = box.encrypt_json(settings)
    response = ags.world.post_grade({"assignmentID": "quiz-1", "userID": ags.world.students[0], "percentage": 1})
    worker.run_once()
    [delivery] = ags.world.get(response.headers["Location"]).json()["deliveries"]
    assert delivery["status"] == "failed"
    assert "the 'aud' is invalid" in delivery["lastError"]
    assert ags.platform.assertion_errors == ["the 'aud' is invalid"]
    with ags.world.session() as session:
        assert session.scalar(select(func.count()).select_from(Delivery).where(Delivery.status == "delivered")) == 0


def test_grade_for_a_student_the_platform_cannot_name_waits_for_the_launch(
    ags: AgsSetup, worker: DeliveryWorker
) -> None:
    _sandbox_off(ags.world)
    with ags.world.session() as session:
        from gateway.models import LmsConnection
        from gateway.services.routing import release_awaiting_launch

        connection = session.get(LmsConnection, ags.connection_id)
        newcomer = create_user(session, ags.world.district_id, name="New")
        enroll(session, connection, "canvas-course-7", newcomer)
        newcomer_id = newcomer.id
    response = ags.world.post_grade({"assignmentID": "quiz-1", "userID": newcomer_id, "percentage": 0.4})
    assert response.status_code == 202
    [delivery] = response.json()["deliveries"]
    assert delivery["status"] == "awaiting_launch" and "open the link" in delivery["lastError"]
    assert worker.run_until_idle() == 0, "nothing is sent without the platform's id for the student"

    with ags.world.session() as session:
        user = get_user(session, ags.world.district_id, newcomer_id)
        connection = session.get(LmsConnection, ags.connection_id)
        link_identity(session, user, connection, "sub-newcomer")
        assert release_awaiting_launch(session, newcomer_id, ags.connection_id) == 1
    worker.run_until_idle()
    assert ags.world.get(response.headers["Location"]).json()["status"] == "delivered"
    assert ags.platform.score_of("sub-newcomer", 1)["scoreGiven"] == 4.0


def test_roster_sync_maps_students_by_email_and_releases_their_grades(ags: AgsSetup, worker: DeliveryWorker) -> None:
    from gateway.models import LmsConnection
    from gateway.services.roster import sync_roster

    _sandbox_off(ags.world)
    with ags.world.session() as session:
        connection = session.get(LmsConnection, ags.connection_id)
        placement = session.get(Placement, ags.placement_id)
        placement.destination = {**placement.destination, "context_memberships_url": ags.platform.memberships_url}
        known = create_user(session, ags.world.district_id, name="Known", email="Kim@School.example")
        enroll(session, connection, "canvas-course-7", known)
        twin_a = create_user(session, ags.world.district_id, name="Twin A", email="twin@school.example")
        create_user(session, ags.world.district_id, name="Twin B", email="twin@school.example")
        enroll(session, connection, "canvas-course-7", twin_a)
        known_id = known.id
    posted = ags.world.post_grade({"assignmentID": "quiz-1", "userID": known_id, "percentage": 0.7})
    assert posted.json()["status"] == "awaiting_launch"
    # 150 members: two pages of at most 100, as Schoology pages them.
    ags.platform.members = [
        {"user_id": f"filler-{n}", "email": f"f{n}@elsewhere.example", "roles": []} for n in range(147)
    ] + [
        {"user_id": "sub-kim", "email": "kim@school.example", "status": "Active"},
        {"user_id": "sub-twin", "email": "twin@school.example"},
        {"user_id": "sub-gone", "email": "kim@school.example", "status": "Inactive"},
    ]
    result = sync_roster(
        ags.world.app.extensions["passback_db"],
        ags.world.app.extensions["passback_box"],
        worker.http,
        worker.adapter_context(),
        ags.world.district_id,
        "Canvas",
    )
    assert ags.platform.membership_pages_served == 2
    assert (result.members, result.matched, result.new_identities, result.released) == (149, 1, 1, 1)
    assert "sub-twin" in result.unmatched, "two users with one email are not guessed between"
    worker.run_until_idle()
    assert ags.platform.score_of("sub-kim", 1)["scoreGiven"] == 7.0
    assert ags.world.get(posted.headers["Location"]).json()["status"] == "delivered"


def test_concurrent_workers_create_one_line_item_for_a_new_placement(ags: AgsSetup, app: Flask) -> None:
    import threading
    import time

    from gateway.models import LmsConnection

    _sandbox_off(ags.world)
    with ags.world.session() as session:
        connection = session.get(LmsConnection, ags.connection_id)
        students = []
        for index in range(6):
            user = create_user(session, ags.world.district_id, name=f"C{index}")
            link_identity(session, user, connection, f"sub-c{index}")
            enroll(session, connection, "canvas-course-7", user)
            students.append(user.id)
    for student in students:
        assert ags.world.post_grade({"assignmentID": "quiz-1", "userID": student, "percentage": 0.5}).status_code == 202
    workers = [
        DeliveryWorker(app.extensions["passback_db"], app.extensions["passback_box"], app.config["PASSBACK"])
        for _ in range(3)
    ]
    start = threading.Barrier(len(workers))

    def work(worker: DeliveryWorker) -> None:
        start.wait()
        deadline = time.monotonic() + 20
        while ags.platform.score_posts < len(students) and time.monotonic() < deadline:
            if worker.run_once(limit=1) == 0:
                time.sleep(0.05)

    threads = [threading.Thread(target=work, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(ags.platform.lineitem_posts) == 1, "one line item, however many workers raced to create it"
    assert ags.platform.score_posts == len(students)


def test_canvas_submission_extension_is_sent_when_the_grade_asks(ags: AgsSetup, worker: DeliveryWorker) -> None:
    from gateway.models import LmsConnection
    from gateway.services.lms import connection_settings

    _sandbox_off(ags.world)
    box = ags.world.app.extensions["passback_box"]
    with ags.world.session() as session:
        connection = session.get(LmsConnection, ags.connection_id)
        connection.settings_encrypted = box.encrypt_json({**connection_settings(box, connection), "platform": "canvas"})
    ags.platform.add_lineitem("quiz-1", "Quiz 1", 10, resource_link_id="rl-1")
    canvas = {"submitted_at": "2026-11-23T10:00:00Z", "new_submission": True, "prioritize_non_tool_grade": True}
    response = ags.world.post_grade(
        {"assignmentID": "quiz-1", "userID": ags.world.students[0], "percentage": 1, "context": {"canvas": canvas}}
    )
    assert response.status_code == 202
    worker.run_until_idle()
    score = ags.platform.score_of(ags.subs[ags.world.students[0]], 1)
    assert score["https://canvas.instructure.com/lti/submission"] == canvas


def test_threads_that_miss_the_token_cache_together_fetch_one_token(ags: AgsSetup, app: Flask) -> None:
    """Workers starting at once on a cold cache: threads of one process wait for one token request."""
    import threading

    from adapters import HttpClient
    from adapters.lti13_ags import Lti13AgsAdapter
    from gateway.models import LmsConnection
    from gateway.services.lms import connection_settings
    from gateway.worker import build_adapter_context

    db, box = app.extensions["passback_db"], app.extensions["passback_box"]
    with ags.world.session() as session:
        connection = session.get(LmsConnection, ags.connection_id)
        assert connection is not None
        settings = connection_settings(box, connection)
    context = build_adapter_context(db, box)
    start = threading.Barrier(8)
    tokens: list[str] = []

    def fetch() -> None:
        adapter = Lti13AgsAdapter.from_settings(settings, HttpClient(2, 5), context)
        start.wait()
        tokens.append(adapter.access_token([SCOPE_SCORE]))

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert len(tokens) == 8 and len(set(tokens)) == 1
    assert ags.platform.token_requests == 1
