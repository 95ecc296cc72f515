"""An app reads what the district shares with it, with the district-app token (issue 15): the users it may see
(GET /v1/users), the courses where its assignments are placed with their students' coverage (GET /v1/courses), a
course's enrollments (GET /v1/courses/{id}/enrollments), and where each assignment lives with its delivery health
(GET /v1/placements); cursor-paged like GET /v1/grades, with `updatedSince` on each and on grades."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import requests
from sqlalchemy import select

from gateway.composition import services_of
from gateway.models import LmsConnection, Placement, TokenKind, User, utcnow
from gateway.services.app_directory import course_ref
from gateway.services.directory import (
    authorize_app,
    create_app_partner,
    create_user,
    enroll,
    issue_token,
    link_identity,
)
from gateway.services.discovery_lease import release_discovery_lease, take_discovery_lease
from gateway.services.lms import add_lms_connection, add_placement
from gateway.services.lti13_launch import record_link_launch
from gateway.worker import DeliveryWorker
from tests.assertions import assert_error
from tests.factories import COURSE, World, build_world

ADA_SIS, ADA_EMAIL, ADA_SANDBOX_ID = "S-1001", "ada@school.example", "sandbox-ada"
CANVAS_COURSE, MOODLE_COURSE = "canvas-7", "moodle-3"
SECRET_SETTINGS = ("0123456789abcdef-shared", "client-secret")


@dataclass
class District:
    """The world's district, with users an app sees and users it does not, on three LMSs."""

    world: World
    ada: str
    alan: str
    teacher: str
    grace: str  # enrolled on Canvas (LTI 1.3) without an LMS identity yet
    linus: str  # enrolled on Moodle (LTI 1.1) without a launch yet
    hidden: list[str]  # not enrolled where the app is placed
    canvas_id: str
    moodle_id: str

    def get(self, path: str, token: str | None = None, **params: Any) -> requests.Response:
        return self.world.get(path, token=token, params=params)

    def ok(self, path: str, token: str | None = None, **params: Any) -> dict[str, Any]:
        response = self.get(path, token, **params)
        assert response.status_code == 200, response.text
        return response.json()


def _box(world: World) -> Any:
    return services_of(world.app).box


def _user(session: Any, user_id: str) -> User:
    user = session.get(User, user_id)
    assert user is not None
    return user


@pytest.fixture
def district(world: World) -> District:
    """The world (Ada and Alan in course-101 on the sandbox, with quiz-1 and quiz-2 placed) and: a teacher there;
    Ada's SIS id, email and sandbox id; a Canvas (LTI 1.3) course with quiz-1 where Ada has her Canvas id and Grace
    has none; a Moodle (LTI 1.1) course with quiz-2 where Alan launched the link and Linus did not; and two users
    the app may not see (one enrolled in a course without its assignments, one enrolled nowhere)."""
    ada, alan = world.students
    box = _box(world)
    with world.session() as session:
        sandbox = session.get(LmsConnection, world.connection_id)
        assert sandbox is not None
        ada_user = _user(session, ada)
        ada_user.sis_id, ada_user.email = ADA_SIS, ADA_EMAIL
        link_identity(session, ada_user, sandbox, ADA_SANDBOX_ID, box=box)
        teacher = create_user(session, world.district_id, name="Ms Hopper", role="teacher", email="hopper@x.example")
        enroll(session, sandbox, COURSE, teacher)

        canvas = add_lms_connection(
            session,
            box,
            world.district_id,
            "Canvas",
            "lti13",
            {
                "issuer": "https://canvas.example",
                "client_id": "client-1",
                "deployment_ids": ["1"],
                "auth_url": "https://canvas.example/auth",
                "token_url": "https://canvas.example/token",
                "jwks_url": "https://canvas.example/jwks",
            },
        )
        grace = create_user(session, world.district_id, name="Grace")
        for user in (ada_user, grace):
            enroll(session, canvas, CANVAS_COURSE, user)
        link_identity(session, ada_user, canvas, "canvas-ada", box=box)
        add_placement(session, world.district_id, canvas.id, world.app_id, "quiz-1", CANVAS_COURSE)

        moodle = add_lms_connection(
            session,
            box,
            world.district_id,
            "Moodle",
            "lti11",
            {"consumer_key": "moodle-key", "shared_secret": SECRET_SETTINGS[0], "allowed_hosts": ["moodle.example"]},
        )
        linus = create_user(session, world.district_id, name="Linus")
        alan_user = _user(session, alan)
        for user in (alan_user, linus):
            enroll(session, moodle, MOODLE_COURSE, user)
        placement = add_placement(session, world.district_id, moodle.id, world.app_id, "quiz-2", MOODLE_COURSE)
        record_link_launch(session, moodle, placement, alan_user)

        elsewhere = create_user(session, world.district_id, name="Elsewhere", email="elsewhere@x.example")
        enroll(session, sandbox, "course-without-the-app", elsewhere)
        nowhere = create_user(session, world.district_id, name="Nowhere")
        ids = (teacher.id, grace.id, linus.id, [elsewhere.id, nowhere.id], canvas.id, moodle.id)
    return District(world, ada, alan, *ids)


def user_ids(page: dict[str, Any]) -> list[str]:
    return [user["userID"] for user in page["users"]]


def walk(district: District, path: str, key: str, token: str | None = None, **params: Any) -> list[dict[str, Any]]:
    """Every item of a list, page by page, following nextCursor."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = district.ok(path, token, **params, **({"cursor": cursor} if cursor else {}))
        items += page[key]
        cursor = page["nextCursor"]
        if cursor is None:
            return items


def since(moment: Any) -> str:
    return moment.isoformat() + "Z"


# --- users ---------------------------------------------------------------------------------------------------


def test_users_are_those_enrolled_where_the_app_is_placed_with_their_lms_ids(district: District) -> None:
    response = district.get("/v1/users")
    assert response.status_code == 200, response.text
    page = response.json()

    assert user_ids(page) == [district.ada, district.alan, district.teacher, district.grace, district.linus]
    assert page["nextCursor"] is None
    ada = page["users"][0]
    assert {k: v for k, v in ada.items() if k not in ("createdAt", "updatedAt")} == {
        "userID": district.ada,
        "sisID": ADA_SIS,
        "email": ADA_EMAIL,
        "name": "Ada",
        "role": "student",
        "lmsIdentities": [
            {"lmsConnectionID": district.canvas_id, "lms": "Canvas", "lmsUserID": "canvas-ada"},
            {"lmsConnectionID": district.world.connection_id, "lms": "Sandbox", "lmsUserID": ADA_SANDBOX_ID},
        ],
    }
    assert ada["createdAt"].endswith("Z") and ada["updatedAt"].endswith("Z")
    assert page["users"][2]["role"] == "teacher" and page["users"][3]["lmsIdentities"] == []
    # Only ids leave: no connection settings, secrets or issuers.
    for secret in (*SECRET_SETTINGS, district.world.sandbox_secret, "https://canvas.example", "moodle-key"):
        assert secret not in response.text


def test_users_filter_by_sis_id_email_and_role(district: District) -> None:
    assert user_ids(district.ok("/v1/users", sisID=ADA_SIS)) == [district.ada]
    assert user_ids(district.ok("/v1/users", email=ADA_EMAIL)) == [district.ada]
    assert user_ids(district.ok("/v1/users", email="hopper@x.example", role="teacher")) == [district.teacher]
    assert user_ids(district.ok("/v1/users", role="teacher")) == [district.teacher]
    assert len(user_ids(district.ok("/v1/users", role="student"))) == 4
    # Exact match, as stored; a user the app may not see is not found by any key.
    assert user_ids(district.ok("/v1/users", email=ADA_EMAIL.upper())) == []
    assert user_ids(district.ok("/v1/users", email="elsewhere@x.example")) == []
    assert user_ids(district.ok("/v1/users", sisID="S-9999")) == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"role": "principal"}, "role"),
        ({"sisID": ""}, "sisID"),
        ({"updatedSince": "yesterday"}, "updatedSince"),
        ({"updatedSince": "2026-11-23T10:00:00"}, "updatedSince"),  # no offset
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"userId": "x"}, "userId"),
    ],
    ids=["role", "empty-sisID", "updatedSince", "updatedSince-naive", "limit-0", "limit-501", "cursor", "unknown"],
)
def test_bad_user_filters_are_422_naming_the_field(district: District, params: dict[str, str], field: str) -> None:
    assert_error(district.get("/v1/users", **params), 422, "invalid_input", field)


def test_users_page_by_cursor(district: District) -> None:
    everyone = user_ids(district.ok("/v1/users"))

    first = district.ok("/v1/users", limit=2)
    assert user_ids(first) == everyone[:2] and first["nextCursor"]
    walked = [user["userID"] for user in walk(district, "/v1/users", "users", limit=2)]
    assert walked == everyone
    # Filters and paging combine: the cursor continues the filtered list.
    students = [user["userID"] for user in walk(district, "/v1/users", "users", limit=1, role="student")]
    assert students == [district.ada, district.alan, district.grace, district.linus]


def test_users_updated_since(district: District) -> None:
    world = district.world
    mark = utcnow()
    assert user_ids(district.ok("/v1/users", updatedSince=since(mark))) == []

    with world.session() as session:
        _user(session, district.alan).name = "Alan T."  # the row changed
        canvas = session.get(LmsConnection, district.canvas_id)
        assert canvas is not None
        link_identity(session, _user(session, district.grace), canvas, "canvas-grace", box=_box(world))  # an id
        sandbox = session.get(LmsConnection, world.connection_id)
        assert sandbox is not None
        enroll(session, sandbox, COURSE, _user(session, district.hidden[1]))  # came into view

    changed = district.ok("/v1/users", updatedSince=since(mark))
    assert user_ids(changed) == [district.alan, district.grace, district.hidden[1]]
    assert changed["users"][0]["name"] == "Alan T."
    assert changed["users"][1]["lmsIdentities"][0]["lmsUserID"] == "canvas-grace"
    # Any offset names the same instant; a `+` sent unencoded arrives as a space and still reads as one.
    plus_one = (mark + timedelta(hours=1)).isoformat() + "+01:00"
    assert user_ids(district.ok("/v1/users", updatedSince=plus_one)) == user_ids(changed)
    raw = world.http.get(world.url(f"/v1/users?updatedSince={plus_one}"), headers=world.headers())
    assert raw.status_code == 200, raw.text
    assert user_ids(raw.json()) == user_ids(changed)
    assert user_ids(district.ok("/v1/users", updatedSince=since(utcnow() + timedelta(minutes=1)))) == []


def test_a_new_placement_brings_its_course_members_into_view_as_changed(district: District) -> None:
    world = district.world
    mark = utcnow()
    with world.session() as session:
        add_placement(session, world.district_id, world.connection_id, world.app_id, "quiz-1", "course-without-the-app")

    assert user_ids(district.ok("/v1/users", updatedSince=since(mark))) == [district.hidden[0]]
    assert district.hidden[0] in user_ids(district.ok("/v1/users"))


# --- courses and enrollments ---------------------------------------------------------------------------------


def courses_by_lms_id(district: District, token: str | None = None) -> dict[str, dict[str, Any]]:
    return {course["course"]: course for course in walk(district, "/v1/courses", "courses", token)}


def test_courses_where_the_app_is_placed_with_coverage(district: District) -> None:
    page = district.ok("/v1/courses")

    assert [c["course"] for c in page["courses"]] == [COURSE, CANVAS_COURSE, MOODLE_COURSE]
    sandbox, canvas, moodle = page["courses"]
    assert {k: v for k, v in sandbox.items() if k not in ("id", "firstPlacedAt")} == {
        "lms": "Sandbox",
        "lmsConnectionID": district.world.connection_id,
        "adapter": "sandbox",
        "course": COURSE,
        "sections": [],
        "assignmentIDs": ["quiz-1", "quiz-2"],
        # The teacher is enrolled but not counted: coverage is about students.
        "coverage": {"students": 2, "deliverable": 2, "awaitingRosterMatch": 0, "awaitingLaunch": 0},
    }
    assert (canvas["lms"], canvas["adapter"], canvas["assignmentIDs"]) == ("Canvas", "lti13", ["quiz-1"])
    assert canvas["coverage"] == {"students": 2, "deliverable": 1, "awaitingRosterMatch": 1, "awaitingLaunch": 0}
    assert (moodle["lms"], moodle["adapter"], moodle["assignmentIDs"]) == ("Moodle", "lti11", ["quiz-2"])
    assert moodle["coverage"] == {"students": 2, "deliverable": 1, "awaitingRosterMatch": 0, "awaitingLaunch": 1}
    assert len({c["id"] for c in page["courses"]}) == 3

    first = district.ok("/v1/courses", limit=1)
    assert [c["course"] for c in first["courses"]] == [COURSE] and first["nextCursor"]
    assert [c["course"] for c in walk(district, "/v1/courses", "courses", limit=1)] == [
        COURSE,
        CANVAS_COURSE,
        MOODLE_COURSE,
    ]
    assert_error(district.get("/v1/courses", cursor="x"), 422, "invalid_input", "cursor")
    assert_error(district.get("/v1/courses", limit="101"), 422, "invalid_input", "limit")
    assert_error(district.get("/v1/courses", role="student"), 422, "invalid_input", "role")


def test_sections_of_a_course_are_listed(district: District) -> None:
    world = district.world
    with world.session() as session:
        add_placement(
            session, world.district_id, world.connection_id, world.app_id, "unplaced", "course-5", section_id="5-B"
        )

    course = courses_by_lms_id(district)["course-5"]
    assert (course["sections"], course["assignmentIDs"]) == (["5-B"], ["unplaced"])
    assert course["coverage"]["students"] == 0


def enrollments(district: District, course_id: str, token: str | None = None, **params: Any) -> dict[str, str]:
    page = district.ok(f"/v1/courses/{course_id}/enrollments", token, **params)
    return {e["userID"]: e["delivery"] for e in page["enrollments"]}


def test_enrollments_say_what_a_grade_would_do(district: District) -> None:
    courses = courses_by_lms_id(district)

    page = district.ok(f"/v1/courses/{courses[COURSE]['id']}/enrollments")
    assert [e["userID"] for e in page["enrollments"]] == [district.ada, district.alan, district.teacher]
    ada = page["enrollments"][0]
    assert (ada["role"], ada["source"], ada["delivery"]) == ("student", "manual", "deliverable")
    assert enrollments(district, courses[CANVAS_COURSE]["id"]) == {
        district.ada: "deliverable",
        district.grace: "awaiting_roster_match",
    }
    assert enrollments(district, courses[MOODLE_COURSE]["id"]) == {
        district.alan: "deliverable",
        district.linus: "awaiting_launch",
    }
    assert enrollments(district, courses[COURSE]["id"], role="teacher") == {district.teacher: "deliverable"}
    paged = walk(district, f"/v1/courses/{courses[COURSE]['id']}/enrollments", "enrollments", limit=1)
    assert [e["userID"] for e in paged] == [district.ada, district.alan, district.teacher]
    assert_error(district.get(f"/v1/courses/{courses[COURSE]['id']}/enrollments", role="x"), 422, field="role")


def test_readiness_is_what_delivery_then_does(district: District, worker: DeliveryWorker) -> None:
    """The enrollments' answer and the outbox agree: a grade for Grace waits on Canvas, one for Linus waits on
    Moodle; once Grace's Canvas id is linked she is deliverable, and her waiting grade is released."""
    world = district.world
    for user_id, assignment in ((district.grace, "quiz-1"), (district.linus, "quiz-2")):
        response = world.post_grade({"assignmentID": assignment, "userID": user_id, "percentage": 0.5})
        assert response.status_code == 202, response.text
        by_lms = {d["lmsConnection"]: d["status"] for d in response.json()["deliveries"]}
        assert by_lms == {"Canvas" if user_id == district.grace else "Moodle": "awaiting_launch"}
    courses = courses_by_lms_id(district)
    mark = utcnow()
    assert enrollments(district, courses[CANVAS_COURSE]["id"], updatedSince=since(mark)) == {}

    with world.session() as session:
        canvas = session.get(LmsConnection, district.canvas_id)
        assert canvas is not None
        link_identity(session, _user(session, district.grace), canvas, "canvas-grace", box=_box(world))

    # Her enrollment changed (its readiness did) though its row did not.
    assert enrollments(district, courses[CANVAS_COURSE]["id"], updatedSince=since(mark)) == {
        district.grace: "deliverable"
    }
    assert courses_by_lms_id(district)[CANVAS_COURSE]["coverage"]["deliverable"] == 2


def test_enrollments_updated_since_a_launch_or_a_new_placement(district: District) -> None:
    world = district.world
    moodle_course = courses_by_lms_id(district)[MOODLE_COURSE]["id"]
    mark = utcnow()
    with world.session() as session:
        moodle = session.get(LmsConnection, district.moodle_id)
        placement = session.scalar(select(Placement).where(Placement.course_id == MOODLE_COURSE))
        assert moodle is not None and placement is not None
        record_link_launch(session, moodle, placement, _user(session, district.linus))

    assert enrollments(district, moodle_course, updatedSince=since(mark)) == {district.linus: "deliverable"}

    mark = utcnow()
    with world.session() as session:
        add_placement(session, world.district_id, district.moodle_id, world.app_id, "quiz-1", MOODLE_COURSE)
    # Another assignment placed there: every member's grades may now go elsewhere, and neither launched it.
    assert enrollments(district, moodle_course, updatedSince=since(mark)) == {
        district.alan: "awaiting_launch",
        district.linus: "awaiting_launch",
    }


def test_an_unknown_course_is_404(district: District) -> None:
    for course_id in (
        "nothing-here",
        course_ref(district.world.connection_id, "course-without-the-app"),  # enrolled, but not placed
        course_ref(district.canvas_id, COURSE),  # the id of a course on another connection
        "%E2%9C%93",
    ):
        assert_error(district.get(f"/v1/courses/{course_id}/enrollments"), 404, "course_not_found")


# --- placements ----------------------------------------------------------------------------------------------


def placements_of(district: District, token: str | None = None, **params: Any) -> list[dict[str, Any]]:
    return district.ok("/v1/placements", token, **params)["placements"]


def test_placements_say_where_each_assignment_lives(district: District) -> None:
    courses = courses_by_lms_id(district)

    placements = placements_of(district)

    assert [(p["assignmentID"], p["course"], p["lms"]) for p in placements] == [
        ("quiz-1", COURSE, "Sandbox"),
        ("quiz-2", COURSE, "Sandbox"),
        ("quiz-1", CANVAS_COURSE, "Canvas"),
        ("quiz-2", MOODLE_COURSE, "Moodle"),
    ]
    canvas = placements[2]
    assert {k: v for k, v in canvas.items() if k not in ("id", "createdAt", "updatedAt")} == {
        "assignmentID": "quiz-1",
        "lms": "Canvas",
        "lmsConnectionID": district.canvas_id,
        "adapter": "lti13",
        "courseID": courses[CANVAS_COURSE]["id"],
        "course": CANVAS_COURSE,
        "section": None,
        "linkID": None,
        "title": "Quiz 1",
        "lmsAssignmentID": None,
        "lineItem": None,
        "deliveries": {
            "delivered": 0,
            "pending": 0,
            "delivering": 0,
            "retrying": 0,
            "awaiting_launch": 0,
            "failed": 0,
        },
    }
    assert [p["course"] for p in placements_of(district, assignmentID="quiz-2")] == [COURSE, MOODLE_COURSE]
    assert placements_of(district, assignmentID="unplaced") == []
    assert placements_of(district, assignmentID="no-such-assignment") == []
    paged = walk(district, "/v1/placements", "placements", limit=3)
    assert [p["id"] for p in paged] == [p["id"] for p in placements]
    assert_error(district.get("/v1/placements", assignmentID="bad id!"), 422, "invalid_input", "assignmentID")


def test_placements_show_the_destination_the_lms_gave(district: District) -> None:
    world = district.world
    with world.session() as session:
        placement = session.scalar(select(Placement).where(Placement.course_id == CANVAS_COURSE))
        assert placement is not None
        placement.resource_link_id, placement.title = "link-9", "Quiz 1 (period 2)"
        placement.destination = {
            "lineitem": "https://canvas.example/api/lti/courses/7/line_items/3",
            "lineitems": "https://canvas.example/api/lti/courses/7/line_items",
            "scopes": ["https://purl.imsglobal.org/spec/lti-ags/scope/score"],
        }

    canvas = next(p for p in placements_of(district) if p["course"] == CANVAS_COURSE)

    assert (canvas["linkID"], canvas["title"]) == ("link-9", "Quiz 1 (period 2)")
    assert canvas["lineItem"] == "https://canvas.example/api/lti/courses/7/line_items/3"
    assert "lineitems" not in str(canvas) and "scope" not in str(canvas)


def test_placement_health_counts_deliveries_and_updated_since(district: District, worker: DeliveryWorker) -> None:
    world = district.world
    for user_id in (district.ada, district.alan):
        assert world.post_grade({"assignmentID": "quiz-1", "userID": user_id, "percentage": 0.9}).status_code == 202
    assert world.post_grade({"assignmentID": "quiz-2", "userID": district.linus, "percentage": 0.7}).status_code == 202
    sandbox_quiz1 = placements_of(district, assignmentID="quiz-1")[0]
    assert sandbox_quiz1["deliveries"]["pending"] == 2
    mark = utcnow()
    assert placements_of(district, updatedSince=since(mark)) == []

    assert worker.run_until_idle() >= 2

    # Ada's grade went to Canvas too, which has no line item to write to yet (nobody launched the link).
    changed = placements_of(district, updatedSince=since(mark))
    assert [(p["assignmentID"], p["course"]) for p in changed] == [("quiz-1", COURSE), ("quiz-1", CANVAS_COURSE)]
    assert changed[0]["deliveries"]["delivered"] == 2 and changed[0]["deliveries"]["pending"] == 0
    assert changed[1]["deliveries"]["failed"] == 1
    moodle = placements_of(district, assignmentID="quiz-2")[1]
    assert moodle["deliveries"]["awaiting_launch"] == 1

    mark = utcnow()
    with world.session() as session:
        placement = session.scalar(select(Placement).where(Placement.course_id == MOODLE_COURSE))
        assert placement is not None
        # A worker's line-item discovery lease is bookkeeping: taking and releasing it changes nothing an app sees.
        assert take_discovery_lease(session, placement.id)
        release_discovery_lease(session, placement.id)
    assert placements_of(district, updatedSince=since(mark)) == []
    with world.session() as session:
        placement = session.scalar(select(Placement).where(Placement.course_id == MOODLE_COURSE))
        assert placement is not None
        placement.title = "Quiz 2, retitled"
    assert [p["title"] for p in placements_of(district, updatedSince=since(mark))] == ["Quiz 2, retitled"]


# --- grades: updatedSince ------------------------------------------------------------------------------------


def test_grades_updated_since_a_revision_or_a_delivery(district: District, worker: DeliveryWorker) -> None:
    world = district.world
    posted = [
        world.post_grade({"assignmentID": "quiz-1", "userID": user_id, "percentage": 0.8}).json()["id"]
        for user_id in (district.ada, district.alan)
    ]
    mark = utcnow()

    def changed() -> list[str]:
        return [g["id"] for g in district.ok("/v1/grades", updatedSince=since(mark))["grades"]]

    assert changed() == []
    worker.run_until_idle()
    assert changed() == posted  # their deliveries moved on
    mark = utcnow()
    assert changed() == []
    revised = world.post_grade({"assignmentID": "quiz-1", "userID": district.alan, "percentage": 0.9}).json()
    assert changed() == [revised["id"]] == [posted[1]]
    paged = [g["id"] for g in walk(district, "/v1/grades", "grades", limit=1, updatedSince=since(mark))]
    assert paged == [posted[1]]
    assert_error(district.get("/v1/grades", updatedSince="soon"), 422, "invalid_input", "updatedSince")


# --- who may read it -----------------------------------------------------------------------------------------

ENDPOINTS = ("/v1/users", "/v1/courses", "/v1/placements")


def test_a_user_token_may_not_look_anyone_up(district: District) -> None:
    world = district.world
    course = courses_by_lms_id(district)[COURSE]["id"]
    token = world.user_token(district.ada)
    for path, params in (
        ("/v1/users", {}),
        ("/v1/users", {"sisID": ADA_SIS}),  # not even itself
        ("/v1/users", {"email": "hopper@x.example"}),
        ("/v1/courses", {}),
        (f"/v1/courses/{course}/enrollments", {}),
        ("/v1/placements", {"assignmentID": "quiz-1"}),
    ):
        response = district.get(path, token, **params)
        assert_error(response, 403, "insufficient_scope")
        assert district.ada not in response.text and "Hopper" not in response.text


def test_a_district_token_without_the_roster_scope_is_refused(district: District) -> None:
    world = district.world
    with world.session() as session:
        # Like the short-lived token a catalog pull hands the app's catalog URL.
        narrow = issue_token(session, TokenKind.DISTRICT_APP, world.district_id, world.app_id, scopes="me:read").raw
    for path in ENDPOINTS:
        assert_error(district.get(path, narrow), 403, "insufficient_scope")
    assert "roster:read" in district.ok("/v1/me")["data"]["scopes"]


def test_another_app_of_the_district_sees_nothing_of_the_first(district: District) -> None:
    world = district.world
    with world.session() as session:
        other = create_app_partner(session, "Reading App", "https://reading.example/callback").app
        token = authorize_app(session, other.id, world.district_id).raw
    course = courses_by_lms_id(district)[COURSE]["id"]

    assert district.ok("/v1/users", token)["users"] == []
    assert district.ok("/v1/users", token, sisID=ADA_SIS)["users"] == []
    assert district.ok("/v1/courses", token)["courses"] == []
    assert district.ok("/v1/placements", token)["placements"] == []
    assert_error(district.get(f"/v1/courses/{course}/enrollments", token), 404, "course_not_found")


def test_another_district_sees_only_its_own(district: District, http: requests.Session) -> None:
    other = build_world(district.world.app, district.world.base_url, http, district_name="Other District")
    with other.session() as session:
        stranger = _user(session, other.students[0])
        stranger.sis_id = ADA_SIS  # the same SIS id in another district names another student
    mine = courses_by_lms_id(district)[COURSE]["id"]
    theirs = courses_by_lms_id(district, other.token)[COURSE]["id"]

    assert user_ids(district.ok("/v1/users", other.token)) == other.students
    assert user_ids(district.ok("/v1/users", other.token, sisID=ADA_SIS)) == [other.students[0]]
    assert user_ids(district.ok("/v1/users", sisID=ADA_SIS)) == [district.ada]
    assert [c["lmsConnectionID"] for c in district.ok("/v1/courses", other.token)["courses"]] == [other.connection_id]
    assert {p["lmsConnectionID"] for p in placements_of(district, other.token)} == {other.connection_id}
    assert theirs != mine
    assert_error(district.get(f"/v1/courses/{mine}/enrollments", other.token), 404, "course_not_found")
    assert_error(district.get(f"/v1/courses/{theirs}/enrollments"), 404, "course_not_found")
    assert set(enrollments(district, theirs, other.token)) == set(other.students)
    # Cursors carry no scope of their own: one read in a district pages nothing of another.
    cursor = district.ok("/v1/users", limit=1)["nextCursor"]
    assert set(user_ids(district.ok("/v1/users", other.token, cursor=cursor))) <= set(other.students)
