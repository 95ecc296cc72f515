"""Grades delivered through LTI 1.3 AGS to a real (fake) platform on 127.0.0.1 that verifies everything."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import requests
from flask import Flask
from sqlalchemy import func, select

from adapters.lti13_ags import SCOPE_LINEITEM, SCOPE_SCORE, scores_url
from gateway.composition import services_of
from gateway.models import CachedAccessToken, Delivery, LaunchDestination, LmsConnection, LmsIdentity, Placement
from gateway.services.directory import create_user, enroll, get_user, link_identity
from gateway.services.lms import add_lms_connection, add_placement
from gateway.services.routing import LAUNCHED_ANOTHER_LINK
from gateway.services.staff import create_staff
from gateway.worker import DeliveryWorker
from tests.conftest import LiveServer
from tests.factories import World
from tests.fakes.ags_platform import AgsPlatform
from tests.fakes.lti13_platform import Lti13Platform


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
            services_of(world.app).box,
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
            link_identity(session, user, connection, subs[student], box=services_of(world.app).box)
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
            link_identity(session, user, connection, f"sub-{index}", box=services_of(ags.world.app).box)
            enroll(session, connection, "canvas-course-7", user)
            # Accepted through the service, not HTTP: this test is about delivery, and the suite's time matters.
            accept_grade(session, principal, {"assignmentID": "quiz-1", "userID": user.id, "percentage": 0.9})
    workers = [
        DeliveryWorker(services_of(app).database, services_of(app).box, app.config["PASSBACK"]) for _ in range(2)
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
    box = services_of(ags.world.app).box
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
        link_identity(session, user, connection, "sub-newcomer", box=services_of(ags.world.app).box)
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
        services_of(ags.world.app).database,
        services_of(ags.world.app).box,
        worker.adapter_factory,
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
            link_identity(session, user, connection, f"sub-c{index}", box=services_of(ags.world.app).box)
            enroll(session, connection, "canvas-course-7", user)
            students.append(user.id)
    for student in students:
        assert ags.world.post_grade({"assignmentID": "quiz-1", "userID": student, "percentage": 0.5}).status_code == 202
    workers = [
        DeliveryWorker(services_of(app).database, services_of(app).box, app.config["PASSBACK"]) for _ in range(3)
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
    box = services_of(ags.world.app).box
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

    box = services_of(app).box
    with ags.world.session() as session:
        connection = session.get(LmsConnection, ags.connection_id)
        assert connection is not None
        settings = connection_settings(box, connection)
    context = services_of(app).adapters.context()
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


def test_the_dashboard_finds_every_token_the_adapter_caches(ags: AgsSetup, worker: DeliveryWorker) -> None:
    """The adapter names the keys it caches tokens under (`token_cache_keys`), so the dashboard can say which
    are held: a score (line item and score scopes), a roster read (NRPS) and a probe (score alone) each cache a
    token, and every row in the cache is found under one of those keys."""
    from adapters.lti13_ags import SCOPE_NRPS, Lti13AgsAdapter
    from gateway.models import CachedAccessToken, LmsConnection
    from gateway.services.lms import connection_settings
    from gateway.services.roster import sync_roster
    from gateway.services.token_cache import token_expiries

    _sandbox_off(ags.world)
    with ags.world.session() as session:
        placement = session.get(Placement, ags.placement_id)
        placement.destination = {**placement.destination, "context_memberships_url": ags.platform.memberships_url}
    posted = ags.world.post_grade({"assignmentID": "quiz-1", "userID": ags.world.students[0], "percentage": 0.5})
    assert posted.status_code == 202
    worker.run_until_idle()
    db, box = services_of(ags.world.app).database, services_of(ags.world.app).box
    sync_roster(db, box, worker.adapter_factory, ags.world.district_id, "Canvas")
    assert services_of(ags.world.app).probe_connection(ags.world.district_id, "Canvas").ok

    with ags.world.session() as session:
        connection = session.get(LmsConnection, ags.connection_id)
        assert connection is not None
        keys = Lti13AgsAdapter.token_cache_keys(connection_settings(box, connection))
        held = session.scalar(select(func.count()).select_from(CachedAccessToken))
        found = token_expiries(session, keys)
    assert held == len(found) == 3, (held, found)
    assert {keys[key] for key in found} == {(SCOPE_LINEITEM, SCOPE_SCORE), (SCOPE_NRPS,), (SCOPE_SCORE,)}


# --- two links to one assignment in one course -------------------------------------------------------------


def test_each_link_to_one_assignment_in_a_course_gets_its_own_column_and_the_students_grade(
    world: World, live_server: LiveServer, worker: DeliveryWorker
) -> None:
    """A teacher adds quiz-1 twice to course-9 (one link per section). Each link is its own placement with its
    own line item: Ada launched link A, Bo link B, and each grade lands in that link's column only; link B,
    launched without a line item, gets one of its own. Cy never launched: their grade goes to both links, and
    link B's refusal (Cy is not in that section) is recorded on that delivery alone."""
    box = services_of(world.app).box
    with (
        Lti13Platform("https://lms.example", "tool-2", "dep-1", session=world.http) as lms,
        AgsPlatform("tool-2", f"{live_server.url}/lti/jwks") as platform,
    ):
        connection_id, launch = _two_link_course(world, live_server, lms, platform)
        column_a = platform.add_lineitem("quiz-1", "Quiz 1 (period 1)", 10, resource_link_id="rl-a")
        platform.link_students = {"rl-a": {"sub-ada", "sub-cy"}, "rl-b": {"sub-bo"}}

        ada = launch("sub-ada", "rl-a", column_a)
        bo = launch("sub-bo", "rl-b")
        ada_again = launch("sub-ada", "rl-a", column_a)
        assert ada_again == ada
        with world.session() as session:
            cy_user = create_user(session, world.district_id, name="Cy")
            connection = session.get(LmsConnection, connection_id)
            assert connection is not None
            link_identity(session, cy_user, connection, "sub-cy", box=box)
            enroll(session, connection, "course-9", cy_user)
            cy = cy_user.id

        posted = {
            user: world.post_grade({"assignmentID": "quiz-1", "userID": user, "percentage": fraction})
            for user, fraction in ((ada, 0.8), (bo, 0.6), (cy, 0.9))
        }
        assert all(r.status_code == 202 for r in posted.values())
        worker.run_until_idle()

        assert platform.assertion_errors == []
        [created] = platform.lineitem_posts
        assert (created["resourceId"], created["resourceLinkId"]) == ("quiz-1", "rl-b")
        assert platform.score_of("sub-ada", 1)["scoreGiven"] == 8.0
        assert platform.score_of("sub-bo", 2)["scoreGiven"] == 6.0
        assert platform.score_of("sub-cy", 1)["scoreGiven"] == 9.0
        assert platform.score_of("sub-ada", 2) is None, "Ada's grade reached link B's column"
        assert platform.score_of("sub-bo", 1) is None, "Bo's grade reached link A's column"
        assert platform.score_of("sub-cy", 2) is None

        with world.session() as session:
            placements = {
                p.resource_link_id: p
                for p in session.scalars(select(Placement).where(Placement.lms_connection_id == connection_id))
            }
        assert set(placements) == {"rl-a", "rl-b"}
        assert placements["rl-a"].destination["lineitem"] == column_a
        assert placements["rl-b"].destination["lineitem"] == platform.lineitem_url(2)
        for user in (ada, bo):
            deliveries = world.get(posted[user].headers["Location"]).json()["deliveries"]
            [delivery] = deliveries
            assert delivery["status"] == "delivered"
            assert delivery["placement"]["id"] == placements["rl-a" if user == ada else "rl-b"].id
        cy_deliveries = {
            d["placement"]["id"]: d for d in world.get(posted[cy].headers["Location"]).json()["deliveries"]
        }
        assert cy_deliveries[placements["rl-a"].id]["status"] == "delivered"
        refused = cy_deliveries[placements["rl-b"].id]
        assert refused["status"] == "failed" and "User not found in course" in refused["lastError"]

        # The dashboard lists each link of the assignment as its own row.
        with world.session() as session:
            create_staff(session, world.district_id, "admin@district.example", "correct horse battery staple")
            assignment_id = session.scalar(select(Placement.assignment_id).where(Placement.id == placements["rl-a"].id))
        browser = requests.Session()
        page = browser.get(world.url("/dashboard/login"))
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token is not None
        signed = browser.post(
            world.url("/dashboard/login"),
            data={
                "email": "admin@district.example",
                "password": "correct horse battery staple",
                "csrf_token": token.group(1),
            },
            allow_redirects=False,
        )
        assert signed.status_code == 302, signed.text
        listed = browser.get(world.url(f"/dashboard/assignments/{assignment_id}")).text
        for link in ("rl-a", "rl-b"):
            assert f"/dashboard/placements/{placements[link].id}" in listed
            assert f"Quiz 1 ({link})" in listed and f"link {link}" in listed


def _two_link_course(
    world: World, live_server: LiveServer, lms: Lti13Platform, platform: AgsPlatform
) -> tuple[str, Callable[..., str]]:
    """An LTI 1.3 connection and a launcher of quiz-1's links in course-9 (returns the launching user's id)."""
    _sandbox_off(world)
    box = services_of(world.app).box
    with world.session() as session:
        connection = add_lms_connection(
            session,
            box,
            world.district_id,
            "Canvas 1.3",
            "lti13",
            {**lms.registration(), "token_url": platform.token_url},
        )
        connection_id = connection.id

    def launch(sub: str, link: str, lineitem: str | None = None, assignment: str = "quiz-1") -> str:
        ags: dict[str, object] = {"scope": [SCOPE_LINEITEM, SCOPE_SCORE], "lineitems": platform.lineitems_url}
        if lineitem:
            ags["lineitem"] = lineitem
        state, nonce, params = lms.login(live_server.url)
        token = lms.launch_token(
            nonce,
            sub=sub,
            resource_link={"id": link, "title": f"Quiz 1 ({link})"},
            context={"id": "course-9", "title": "Algebra 9"},
            custom={"assignment": assignment},
            ags=ags,
        )
        response = lms.launch(params["redirect_uri"], state, token)
        assert response.status_code == 302, response.text[:500]
        with world.session() as session:
            return str(
                session.scalar(
                    select(LmsIdentity.user_id).where(
                        LmsIdentity.issuer == "https://lms.example", LmsIdentity.subject == sub
                    )
                )
            )

    return connection_id, launch


def test_a_launch_recorded_before_links_were_placements_stops_counting_once_the_student_launches_their_link(
    world: World, live_server: LiveServer, worker: DeliveryWorker
) -> None:
    """Before migration 0008 links A and B of quiz-1 shared one placement, left bound to B (launched last), and
    Ada's launch of A was recorded on it; 0008 marks such launch rows link-unknown. Ada relaunches A: her grade
    goes to A's column only, not on to B's too. Bo, who has launched nothing since, still gets his at B."""
    with (
        Lti13Platform("https://lms.example", "tool-2", "dep-1", session=world.http) as lms,
        AgsPlatform("tool-2", f"{live_server.url}/lti/jwks") as platform,
    ):
        column_a = platform.add_lineitem("quiz-1", "Quiz 1 (period 1)", 10, resource_link_id="rl-a")
        column_b = platform.add_lineitem("quiz-1", "Quiz 1 (period 2)", 10, resource_link_id="rl-b")
        connection_id, launch = _two_link_course(world, live_server, lms, platform)
        # The state 0008 leaves: one placement bound to B, Ada's and Bo's launch rows on it of unknown link.
        ada = launch("sub-ada", "rl-b", column_b)
        bo = launch("sub-bo", "rl-b", column_b)
        with world.session() as session:
            merged = session.scalar(select(Placement).where(Placement.lms_connection_id == connection_id))
            assert merged is not None and merged.resource_link_id == "rl-b"
            merged_id = merged.id
            for row in session.scalars(select(LaunchDestination).where(LaunchDestination.placement_id == merged_id)):
                row.link_unknown = True

        assert launch("sub-ada", "rl-a", column_a) == ada
        for user, fraction in ((ada, 0.8), (bo, 0.6)):
            assert (
                world.post_grade({"assignmentID": "quiz-1", "userID": user, "percentage": fraction}).status_code == 202
            )
        worker.run_until_idle()

        assert platform.assertion_errors == []
        assert platform.score_of("sub-ada", 1)["scoreGiven"] == 8.0
        assert platform.score_of("sub-ada", 2) is None, "Ada's grade reached link B's column"
        assert platform.score_of("sub-bo", 2)["scoreGiven"] == 6.0
        with world.session() as session:
            launches = {
                (row.placement_id, row.user_id): row.link_unknown for row in session.scalars(select(LaunchDestination))
            }
        assert (merged_id, ada) not in launches, "Ada's launch of unknown link was kept"
        assert launches[(merged_id, bo)] is True


def test_a_send_not_yet_started_to_a_sibling_link_is_dropped_when_the_student_launches_another(
    world: World, live_server: LiveServer, worker: DeliveryWorker
) -> None:
    """Cy, enrolled by hand, got quiz-1's grade queued at both links (no launch yet). Before the worker sends it,
    Cy launches link A: the send queued for B is superseded, and only A's column gets the grade."""
    with (
        Lti13Platform("https://lms.example", "tool-2", "dep-1", session=world.http) as lms,
        AgsPlatform("tool-2", f"{live_server.url}/lti/jwks") as platform,
    ):
        column_a = platform.add_lineitem("quiz-1", "Quiz 1 (period 1)", 10, resource_link_id="rl-a")
        column_b = platform.add_lineitem("quiz-1", "Quiz 1 (period 2)", 10, resource_link_id="rl-b")
        connection_id, launch = _two_link_course(world, live_server, lms, platform)
        launch("sub-ada", "rl-a", column_a)
        launch("sub-bo", "rl-b", column_b)
        box = services_of(world.app).box
        with world.session() as session:
            cy_user = create_user(session, world.district_id, name="Cy")
            connection = session.get(LmsConnection, connection_id)
            assert connection is not None
            link_identity(session, cy_user, connection, "sub-cy", box=box)
            enroll(session, connection, "course-9", cy_user)
            cy = cy_user.id
        posted = world.post_grade({"assignmentID": "quiz-1", "userID": cy, "percentage": 0.9})
        assert posted.status_code == 202
        queued = world.get(posted.headers["Location"]).json()["deliveries"]
        assert sorted(d["status"] for d in queued) == ["pending", "pending"]

        assert launch("sub-cy", "rl-a", column_a) == cy
        worker.run_until_idle()

        assert platform.score_of("sub-cy", 1)["scoreGiven"] == 9.0
        assert platform.score_of("sub-cy", 2) is None, "the send queued for link B still went out"
        with world.session() as session:
            link_of = {p.id: p.resource_link_id for p in session.scalars(select(Placement))}
            rows = {link_of[d.placement_id]: d for d in session.scalars(select(Delivery)) if d.placement_id}
        assert rows["rl-a"].status == "delivered"
        assert (rows["rl-b"].status, rows["rl-b"].last_error) == ("superseded", LAUNCHED_ANOTHER_LINK)


def test_a_placement_added_without_a_link_uses_the_deep_linked_column_and_a_link_taking_it_gets_its_own(
    world: World, live_server: LiveServer, worker: DeliveryWorker
) -> None:
    """The teacher deep-linked quiz-1 as link rl-a, so the platform's one "Quiz 1" column is tied to rl-a; the
    operator then placed quiz-1 in course-9 by hand (no link). Cy's grade goes into that column, without a second
    one. When link rl-b (launched with no line item in its claim) takes the placement, it does not inherit rl-a's
    column: Dee's grade goes to a column of rl-b's own."""
    with (
        Lti13Platform("https://lms.example", "tool-2", "dep-1", session=world.http) as lms,
        AgsPlatform("tool-2", f"{live_server.url}/lti/jwks") as platform,
    ):
        platform.add_lineitem("quiz-1", "Quiz 1", 10, resource_link_id="rl-a")
        connection_id, launch = _two_link_course(world, live_server, lms, platform)
        box = services_of(world.app).box
        with world.session() as session:
            placement_id = add_placement(
                session,
                world.district_id,
                connection_id,
                world.app_id,
                "quiz-1",
                "course-9",
                destination={"lineitems": platform.lineitems_url, "scopes": [SCOPE_LINEITEM, SCOPE_SCORE]},
            ).id
            cy_user = create_user(session, world.district_id, name="Cy")
            connection = session.get(LmsConnection, connection_id)
            assert connection is not None
            link_identity(session, cy_user, connection, "sub-cy", box=box)
            enroll(session, connection, "course-9", cy_user)
            cy = cy_user.id
        assert world.post_grade({"assignmentID": "quiz-1", "userID": cy, "percentage": 0.9}).status_code == 202
        worker.run_until_idle()

        assert platform.assertion_errors == []
        assert platform.lineitem_posts == [], "a second Quiz 1 column was created"
        assert platform.score_of("sub-cy", 1)["scoreGiven"] == 9.0

        dee = launch("sub-dee", "rl-b")
        with world.session() as session:
            taken = session.get(Placement, placement_id)
            assert taken is not None and taken.resource_link_id == "rl-b"
            assert "lineitem" not in taken.destination
        assert world.post_grade({"assignmentID": "quiz-1", "userID": dee, "percentage": 0.7}).status_code == 202
        worker.run_until_idle()

        assert platform.score_of("sub-dee", 1) is None, "link rl-b's grade went into rl-a's column"
        [created] = platform.lineitem_posts
        assert (created["resourceId"], created["resourceLinkId"]) == ("quiz-1", "rl-b")
        assert platform.score_of("sub-dee", 2)["scoreGiven"] == 7.0


def test_a_placement_added_without_a_link_never_takes_the_column_of_a_link_placed_in_passback(
    world: World, live_server: LiveServer, worker: DeliveryWorker
) -> None:
    """Link rl-a was deep-linked as quiz-1 (its column says resourceId quiz-1) and later re-pointed to quiz-2, so
    Passback has a placement for rl-a. quiz-1 placed in course-9 by hand must not write into rl-a's column: it
    gets a column of its own, tied to no link."""
    with (
        Lti13Platform("https://lms.example", "tool-2", "dep-1", session=world.http) as lms,
        AgsPlatform("tool-2", f"{live_server.url}/lti/jwks") as platform,
    ):
        column_a = platform.add_lineitem("quiz-1", "Quiz 1", 10, resource_link_id="rl-a")
        connection_id, launch = _two_link_course(world, live_server, lms, platform)
        launch("sub-eve", "rl-a", column_a, assignment="quiz-2")
        box = services_of(world.app).box
        with world.session() as session:
            add_placement(
                session,
                world.district_id,
                connection_id,
                world.app_id,
                "quiz-1",
                "course-9",
                destination={"lineitems": platform.lineitems_url, "scopes": [SCOPE_LINEITEM, SCOPE_SCORE]},
            )
            cy_user = create_user(session, world.district_id, name="Cy")
            connection = session.get(LmsConnection, connection_id)
            assert connection is not None
            link_identity(session, cy_user, connection, "sub-cy", box=box)
            enroll(session, connection, "course-9", cy_user)
            cy = cy_user.id
        assert world.post_grade({"assignmentID": "quiz-1", "userID": cy, "percentage": 0.9}).status_code == 202
        worker.run_until_idle()

        assert platform.score_of("sub-cy", 1) is None, "the hand-made placement wrote into link rl-a's column"
        [created] = platform.lineitem_posts
        assert created["resourceId"] == "quiz-1" and "resourceLinkId" not in created
        assert platform.score_of("sub-cy", 2)["scoreGiven"] == 9.0
