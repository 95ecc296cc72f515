"""Schoology's REST API: grades posted to Passback reach a Schoology-like fake on 127.0.0.1, section by section.

The fake (tests/fakes/schoology_lms.py) verifies every request's two-legged OAuth 1.0a signature with oauthlib's
signature functions and refuses a replayed nonce, pages enrollments two at a time, serves assignments with
Schoology's string-typed `max_points`, and answers the grades PUT item by item. Wire details:
Schoology's REST API v1 docs (developers.schoology.com).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import select, update

from gateway.cli import main as cli
from gateway.composition import services_of
from gateway.models import Delivery, Grade, LmsConnection, Placement, User, utcnow
from gateway.services.directory import create_user, enroll, link_identity
from gateway.services.lms import add_lms_connection, add_placement
from gateway.throttle import LocalLimiter
from gateway.worker import DeliveryWorker
from tests.factories import World, build_world
from tests.fakes.schoology_lms import Fault, SchoologyFake

KEY = "district-consumer-key"
SECRET = "district-consumer-secret"
# The fake listens on loopback over http.
LOOPBACK = {"allow_private_addresses": True}
SECTION = "7001"
COLUMN = "5001"


@dataclass
class SchoologySetup:
    world: World
    fake: SchoologyFake
    connection_id: str
    enrollments: dict[str, str]  # Passback user id -> Schoology enrollment id

    def post(self, user_id: str, **score: float | str) -> str:
        response = self.world.post_grade({"assignmentID": "quiz-1", "userID": user_id, **score})
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    def delivery(self, grade_id: str) -> Delivery:
        with self.world.session() as session:
            rows = session.scalars(
                select(Delivery)
                .where(Delivery.grade_id == grade_id, Delivery.lms_connection_id == self.connection_id)
                .order_by(Delivery.created_at.desc())
            ).all()
            assert rows, "the grade was routed to Schoology"
            session.expunge_all()
            return rows[0]

    def stored(self, user_id: str) -> float | None:
        entry = self.fake.grades.get((SECTION, COLUMN, self.enrollments[user_id]))
        return entry["grade"] if entry else None


def _add_students(setup: SchoologySetup, section: str, count: int, first_uid: int) -> list[str]:
    users = []
    with setup.world.session() as session:
        connection = session.get(LmsConnection, setup.connection_id)
        for n in range(count):
            uid = str(first_uid + n)
            user = create_user(session, setup.world.district_id, name=f"Student {uid}")
            link_identity(session, user, connection, uid, box=services_of(setup.world.app).box)
            enroll(session, connection, section, user)
            setup.enrollments[user.id] = setup.fake.add_enrollment(section, uid)
            users.append(user.id)
        session.commit()
    return users


@pytest.fixture
def schoology(world: World) -> Iterator[SchoologySetup]:
    with SchoologyFake(KEY, SECRET) as fake:
        fake.add_assignment(SECTION, COLUMN, max_points=25)
        with world.session() as session:
            connection = add_lms_connection(
                session,
                services_of(world.app).box,
                world.district_id,
                "Schoology",
                "schoology",
                {"base_url": fake.url, **LOOPBACK, "consumer_key": KEY, "consumer_secret": SECRET},
            )
            connection_id = connection.id
            session.commit()
        setup = SchoologySetup(world, fake, connection_id, {})
        with world.session() as session:
            connection = session.get(LmsConnection, connection_id)
            for uid, user_id in zip(("201", "202"), world.students, strict=True):
                user = session.get(User, user_id)
                link_identity(session, user, connection, uid, box=services_of(world.app).box)
                enroll(session, connection, SECTION, user)
                setup.enrollments[user_id] = fake.add_enrollment(SECTION, uid)
            add_placement(
                session,
                world.district_id,
                connection_id,
                world.app_id,
                "quiz-1",
                None,
                section_id=SECTION,
                destination={"assignment_id": COLUMN},
            )
            session.commit()
        yield setup


def test_points_are_scaled_to_max_points_and_the_rounding_recorded(
    schoology: SchoologySetup, worker: DeliveryWorker
) -> None:
    ada, alan = schoology.world.students
    # quiz-1 is out of 10 for the app; the Schoology column is out of 25 (sent by the fake as the string "25").
    third = schoology.post(ada, scoreGiven=1, scoreMaximum=3)
    share = schoology.post(alan, percentage=0.85)
    worker.run_until_idle()

    assert schoology.stored(ada) == 8.33
    assert schoology.stored(alan) == 21.25
    rounded = schoology.delivery(third)
    assert rounded.status == "delivered"
    assert rounded.receipt is not None
    assert rounded.receipt["points"] == "8.33" and rounded.receipt["exact_points"] == "8.333333333"
    assert rounded.receipt["rounded"] is True and rounded.receipt["max_points"] == "25"
    assert "rounded from 8.333333333" in (rounded.lms_response or "")
    exact = schoology.delivery(share)
    assert exact.receipt is not None and exact.receipt["rounded"] is False
    assert not schoology.fake.signature_failures


def test_grades_for_one_section_go_in_one_request_per_section(
    schoology: SchoologySetup, worker: DeliveryWorker
) -> None:
    other = "7002"
    schoology.fake.add_assignment(other, "5002", max_points=10)
    with schoology.world.session() as session:
        add_placement(
            session,
            schoology.world.district_id,
            schoology.connection_id,
            schoology.world.app_id,
            "quiz-1",
            None,
            section_id=other,
            destination={"assignment_id": "5002"},
        )
        session.commit()
    first = _add_students(schoology, SECTION, 30, 300)
    second = _add_students(schoology, other, 30, 400)
    for n, user in enumerate(first + second):
        schoology.post(user, scoreGiven=n % 10, scoreMaximum=10)
    worker.run_until_idle()

    puts = schoology.fake.grade_puts
    assert sorted((section, len(items)) for section, items in puts) == [(SECTION, 30), (other, 30)]
    assert all(schoology.delivery(g).status == "delivered" for g in _grade_ids(schoology, first + second))


def _grade_ids(setup: SchoologySetup, users: list[str]) -> list[str]:
    with setup.world.session() as session:
        return list(session.scalars(select(Grade.id).where(Grade.user_id.in_(users))))


def test_a_batch_is_chunked_to_the_size_schoology_accepts(schoology: SchoologySetup, worker: DeliveryWorker) -> None:
    users = _add_students(schoology, SECTION, 130, 500)
    for user in users:
        schoology.post(user, percentage=0.5)
    worker.run_until_idle()
    sizes = sorted(len(items) for _, items in schoology.fake.grade_puts)
    assert sum(sizes) == 130 and max(sizes) <= 100, sizes
    assert len(sizes) <= 3, "grades travel in full chunks, not one request each"


def test_one_refused_student_fails_alone(schoology: SchoologySetup, worker: DeliveryWorker) -> None:
    ada, alan = schoology.world.students
    schoology.fake.failing_enrollments[schoology.enrollments[alan]] = (403, "Grade is locked for this student")
    ada_grade = schoology.post(ada, percentage=0.9)
    alan_grade = schoology.post(alan, percentage=0.7)
    worker.run_until_idle()

    assert len(schoology.fake.grade_puts) == 1, "both went in one request"
    assert schoology.delivery(ada_grade).status == "delivered" and schoology.stored(ada) == 22.5
    failed = schoology.delivery(alan_grade)
    assert failed.status == "failed"
    assert "Grade is locked for this student" in (failed.last_error or "")
    assert schoology.stored(alan) is None


def test_probe_follows_the_303_with_a_newly_signed_request(schoology: SchoologySetup) -> None:
    report = services_of(schoology.world.app).probe_connection(schoology.world.district_id, "Schoology")
    assert report.ok, report.message
    assert "key works" in report.message
    paths = [path for _, path in schoology.fake.requests]
    assert paths[-2:] == ["/v1/users/me", "/v1/users/1000"]
    assert schoology.fake.replays_rejected == 0 and not schoology.fake.signature_failures


def test_probe_names_the_likely_cause_of_a_refused_key(world: World, runner: CliRunner) -> None:
    with SchoologyFake(KEY, "the-real-secret") as fake:
        with world.session() as session:
            add_lms_connection(
                session,
                services_of(world.app).box,
                world.district_id,
                "Wrong key",
                "schoology",
                {"base_url": fake.url, **LOOPBACK, "consumer_key": KEY, "consumer_secret": "a-wrong-secret"},
            )
            session.commit()
        result = runner.invoke(cli, ["lms", "probe", "--district", world.district_id, "--lms", "Wrong key"])
    assert result.exit_code == 1
    assert "consumer key or secret is wrong" in result.output


def test_429_is_retried_after_the_time_schoology_asks(schoology: SchoologySetup, worker: DeliveryWorker) -> None:
    ada = schoology.world.students[0]
    schoology.fake.faults.append(Fault(429, '{"message": "slow down"}', {"Retry-After": "120"}, method="PUT"))
    grade = schoology.post(ada, percentage=0.4)
    before = utcnow()
    worker.run_until_idle()
    waiting = schoology.delivery(grade)
    assert waiting.status == "retrying"
    assert waiting.next_attempt_at is not None and waiting.next_attempt_at >= before + timedelta(seconds=119)
    assert schoology.stored(ada) is None

    # Every worker holds back from this connection for as long as Schoology asked, not only this grade.
    assert worker.limiter.paused_for(schoology.connection_id) > 100
    _make_due(schoology, grade)
    worker.run_until_idle()
    assert schoology.delivery(grade).status == "retrying", "nothing is sent while the connection is paused"
    assert [method for method, _ in schoology.fake.requests].count("PUT") == 1, "only the refused one"

    worker.adapter_factory.limiter = LocalLimiter()  # the two minutes have passed
    _make_due(schoology, grade)
    worker.run_until_idle()
    assert schoology.delivery(grade).status == "delivered" and schoology.stored(ada) == 10


def _make_due(setup: SchoologySetup, grade_id: str) -> None:
    with setup.world.session() as session:
        session.execute(update(Delivery).where(Delivery.grade_id == grade_id).values(next_attempt_at=utcnow()))
        session.commit()


def _listings(fake: SchoologyFake, section: str) -> int:
    """How many times the section's enrollment list was read from its first page."""
    return sum(
        1 for _, path in fake.requests if path.startswith(f"/v1/sections/{section}/enrollments") and "start=0" in path
    )


def test_a_missing_enrollment_is_refreshed_once_then_fails_clearly(
    schoology: SchoologySetup, worker: DeliveryWorker
) -> None:
    ada, alan = schoology.world.students
    schoology.post(ada, percentage=0.6)
    worker.run_until_idle()
    assert _listings(schoology.fake, SECTION) == 1

    schoology.fake.remove_enrollment(SECTION, "202")
    grade = schoology.post(alan, percentage=0.6)
    worker.run_until_idle()
    failed = schoology.delivery(grade)
    assert failed.status == "failed", "not a retry loop"
    assert failed.attempts == 1
    assert "not enrolled in section 7001" in (failed.last_error or "")
    assert _listings(schoology.fake, SECTION) == 2, "the cached list was refreshed exactly once"


def test_a_student_added_after_the_list_was_cached_is_found_by_the_refresh(
    schoology: SchoologySetup, worker: DeliveryWorker
) -> None:
    ada = schoology.world.students[0]
    schoology.post(ada, percentage=0.6)
    worker.run_until_idle()
    (late,) = _add_students(schoology, SECTION, 1, 900)
    grade = schoology.post(late, percentage=1)
    worker.run_until_idle()
    assert schoology.delivery(grade).status == "delivered"
    assert schoology.stored(late) == 25


def test_a_newer_grade_replaces_the_waiting_one(schoology: SchoologySetup, worker: DeliveryWorker) -> None:
    ada = schoology.world.students[0]
    with schoology.world.session() as session:
        session.execute(update(LmsConnection).where(LmsConnection.id == schoology.connection_id).values(paused=True))
        session.commit()
    schoology.post(ada, percentage=0.3)
    schoology.post(ada, percentage=0.8)
    worker.run_until_idle()
    assert schoology.fake.grade_puts == [], "a paused connection sends nothing"
    with schoology.world.session() as session:
        session.execute(update(LmsConnection).where(LmsConnection.id == schoology.connection_id).values(paused=False))
        session.commit()
    worker.run_until_idle()
    ((_, items),) = schoology.fake.grade_puts
    assert [item["grade"] for item in items] == [20], "only the newest grade travels"
    assert schoology.stored(ada) == 20


def test_a_refused_key_is_permanent_and_shows_on_the_connection(
    schoology: SchoologySetup, worker: DeliveryWorker
) -> None:
    ada = schoology.world.students[0]
    schoology.fake.faults.append(Fault(401, '{"message": "Invalid consumer key"}', method="PUT"))
    grade = schoology.post(ada, percentage=0.5)
    worker.run_until_idle()
    failed = schoology.delivery(grade)
    assert failed.status == "failed" and failed.attempts == 1
    assert "consumer key or secret is wrong" in (failed.last_error or "")
    with schoology.world.session() as session:
        connection = session.get(LmsConnection, schoology.connection_id)
        assert connection is not None and "consumer key or secret is wrong" in (connection.last_failure or "")


def test_students_are_found_by_school_uid_through_the_303(world: World, worker: DeliveryWorker) -> None:
    with SchoologyFake(KEY, SECRET) as fake:
        fake.add_assignment(SECTION, COLUMN, max_points=10)
        fake.add_user("3301", school_uid="S-1001")
        enrollment = fake.add_enrollment(SECTION, "3301")
        with world.session() as session:
            connection = add_lms_connection(
                session,
                services_of(world.app).box,
                world.district_id,
                "Schoology by SIS id",
                "schoology",
                {
                    "base_url": fake.url,
                    **LOOPBACK,
                    "consumer_key": KEY,
                    "consumer_secret": SECRET,
                    "roster_match": "school_uid",
                },
            )
            student = create_user(session, world.district_id, name="Grace")
            student.sis_id = "S-1001"
            enroll(session, connection, SECTION, student)
            add_placement(
                session, world.district_id, connection.id, world.app_id, "quiz-1", None,
                section_id=SECTION, destination={"assignment_id": COLUMN},
            )  # fmt: skip
            student_id = student.id
            session.commit()
        response = world.post_grade(
            {"assignmentID": "quiz-1", "userID": student_id, "scoreGiven": 7, "scoreMaximum": 10}
        )
        assert response.status_code == 202, response.text
        worker.run_until_idle()
        assert fake.grades[(SECTION, COLUMN, enrollment)]["grade"] == 7
        assert "/v1/users/ext/S-1001" in [path for _, path in fake.requests]
        assert fake.replays_rejected == 0


def test_roster_sync_links_students_by_school_uid(world: World, worker: DeliveryWorker, runner: CliRunner) -> None:
    with SchoologyFake(KEY, SECRET) as fake:
        fake.add_assignment(SECTION, COLUMN, max_points=10)
        for n in range(5):
            fake.add_user(str(4400 + n), school_uid=f"SIS-{n}")
            fake.add_enrollment(SECTION, str(4400 + n))
        fake.add_enrollment(SECTION, "4499", admin=1)  # the teacher: not a student, not matched
        with world.session() as session:
            add_lms_connection(
                session,
                services_of(world.app).box,
                world.district_id,
                "Schoology roster",
                "schoology",
                {
                    "base_url": fake.url,
                    **LOOPBACK,
                    "consumer_key": KEY,
                    "consumer_secret": SECRET,
                    "roster_match": "school_uid",
                },
            )
            students = []
            for n in range(4):  # SIS-4 has no Passback user: reported unmatched
                user = create_user(session, world.district_id, name=f"S{n}")
                user.sis_id = f"SIS-{n}"
                students.append(user.id)
            session.commit()
        placed = runner.invoke(
            cli,
            [
                "placement", "add", "--district", world.district_id, "--lms", "Schoology roster",
                "--app", world.app_id, "--assignment", "quiz-1", "--section", SECTION, "--lms-assignment", COLUMN,
                "--json",
            ],
        )  # fmt: skip
        assert placed.exit_code == 0, placed.output
        assert json.loads(placed.output)["section"] == SECTION
        synced = runner.invoke(
            cli, ["lms", "sync-roster", "--district", world.district_id, "--lms", "Schoology roster", "--json"]
        )
        assert synced.exit_code == 0, synced.output
        summary = json.loads(synced.output)
        assert (summary["members"], summary["matched"], summary["unmatched"]) == (5, 4, ["4404"])
        for user in students:
            world.post_grade({"assignmentID": "quiz-1", "userID": user, "percentage": 1})
        worker.run_until_idle()
        assert len(fake.grade_puts) == 1 and len(fake.grade_puts[0][1]) == 4


def test_a_schoology_placement_must_name_section_and_assignment(world: World, runner: CliRunner) -> None:
    with world.session() as session:
        add_lms_connection(
            session,
            services_of(world.app).box,
            world.district_id,
            "Schoology",
            "schoology",
            {"base_url": "https://api.schoology.com/v1", "consumer_key": KEY, "consumer_secret": SECRET},
        )
        session.commit()
    result = runner.invoke(
        cli,
        [
            "placement", "add", "--district", world.district_id, "--lms", "Schoology", "--app", world.app_id,
            "--assignment", "quiz-1", "--section", SECTION,
        ],
    )  # fmt: skip
    assert result.exit_code != 0
    assert "Schoology assignment id (--lms-assignment)" in result.output


def test_an_app_places_its_assignments_in_schoology_sections_in_bulk(
    schoology: SchoologySetup, worker: DeliveryWorker, runner: CliRunner
) -> None:
    world = schoology.world
    schoology.fake.add_assignment("7003", "5003", max_points=50)
    # The district approves the column for the app first (test_placement_approvals.py: what happens otherwise).
    approve = ["--district", world.district_id, "--lms", "Schoology", "--app", world.app_id, "--section", "7003"]
    assert runner.invoke(cli, ["placement", "approve", *approve, "--lms-assignment", "5003"]).exit_code == 0
    body = {
        "placements": [
            {"assignmentID": "quiz-2", "lms": "Schoology", "section": "7003", "lmsAssignmentID": "5003"},
            # Asking again for an existing placement returns it: a script can run twice.
            {"assignmentID": "quiz-1", "lms": "Schoology", "section": SECTION, "lmsAssignmentID": COLUMN},
        ]
    }
    response = world.http.post(world.url("/v1/placements"), json=body, headers=world.headers())
    assert response.status_code == 201, response.text
    answer = response.json()
    assert (answer["created"], answer["existing"]) == (1, 1)
    placed = answer["placements"][0]
    assert (placed["section"], placed["course"], placed["lmsAssignmentID"], placed["lms"]) == (
        "7003", "7003", "5003", "Schoology"
    )  # fmt: skip
    again = world.http.post(world.url("/v1/placements"), json=body, headers=world.headers())
    assert again.status_code == 200 and again.json()["created"] == 0

    (student,) = _add_students(schoology, "7003", 1, 700)
    world.post_grade({"assignmentID": "quiz-2", "userID": student, "percentage": 0.5})
    worker.run_until_idle()
    assert any(section == "7003" and items[0]["grade"] == 25 for section, items in schoology.fake.grade_puts)


@pytest.mark.parametrize(
    ("entry", "status", "field"),
    [
        ({"assignmentID": "quiz-2", "lms": "Schoology", "section": "7003"}, 422, "placements[0].destination"),
        ({"assignmentID": "nope", "lms": "Schoology", "section": "7003", "lmsAssignmentID": "1"}, 404, None),
        ({"assignmentID": "quiz-2", "lms": "Elsewhere", "section": "7003", "lmsAssignmentID": "1"}, 404, None),
        ({"assignmentID": "quiz-2", "lms": "Schoology", "section": "7003", "lmsAssignmentID": ""}, 422,
         "placements[0].lmsAssignmentID"),
        ({"assignmentID": "quiz-2", "lms": "Schoology", "sektion": "7003"}, 422, "placements[0].sektion"),
        ({"assignmentID": "quiz-1", "lms": "Schoology", "section": SECTION, "lmsAssignmentID": "9999"}, 409, None),
    ],
    ids=["no-lms-assignment", "unknown-assignment", "unknown-connection", "empty-id", "unknown-field", "conflict"],
)  # fmt: skip
def test_bad_placements_are_refused_and_change_nothing(
    schoology: SchoologySetup, entry: dict[str, str], status: int, field: str | None
) -> None:
    world = schoology.world
    good = {"assignmentID": "quiz-2", "lms": "Schoology", "section": "7009", "lmsAssignmentID": "5009"}
    response = world.http.post(world.url("/v1/placements"), json={"placements": [entry, good]}, headers=world.headers())
    assert response.status_code == status, response.text
    error = response.json()["error"]
    if field:
        assert field in error["fields"], error
    with world.session() as session:
        sections = set(session.scalars(select(Placement.section_id).where(Placement.section_id.is_not(None))))
    assert sections == {SECTION}, "nothing was placed, not even the good entry"


def test_a_student_token_cannot_place_assignments(schoology: SchoologySetup) -> None:
    world = schoology.world
    token = world.user_token(world.students[0])
    body = {"placements": [{"assignmentID": "quiz-2", "lms": "Schoology", "section": "1", "lmsAssignmentID": "2"}]}
    response = world.http.post(world.url("/v1/placements"), json=body, headers=world.headers(token))
    assert response.status_code == 403


def test_a_re_enrolled_student_is_sent_again_under_the_new_enrollment(
    schoology: SchoologySetup, worker: DeliveryWorker
) -> None:
    ada, alan = schoology.world.students
    schoology.post(ada, percentage=0.6)
    worker.run_until_idle()  # the section's enrollments are now cached
    schoology.fake.remove_enrollment(SECTION, "202")
    schoology.enrollments[alan] = schoology.fake.add_enrollment(SECTION, "202", enrollment_id="99999")
    grade = schoology.post(alan, percentage=0.4)
    worker.run_until_idle()
    assert schoology.delivery(grade).status == "delivered"
    assert schoology.stored(alan) == 10


def _signed_in(world: World) -> tuple[requests.Session, str]:
    from tests.integration.test_dashboard import csrf, signed_in, staff_of

    browser = signed_in(world, staff_of(world))
    page = browser.get(world.url("/dashboard/connections"))
    return browser, csrf(page)


def test_the_connections_page_checks_the_key_before_any_grade(schoology: SchoologySetup) -> None:
    world = schoology.world
    browser, token = _signed_in(world)
    page = browser.get(world.url("/dashboard/connections"))
    assert "Students found by" in page.text and KEY in page.text and SECRET not in page.text
    checked = browser.post(
        world.url(f"/dashboard/connections/{schoology.connection_id}/probe"), data={"csrf_token": token}
    )
    assert checked.status_code == 200
    assert "Schoology: works. key works: Schoology accepts it as" in checked.text
    assert schoology.fake.grade_puts == [], "checking sends no grade"
    audit = browser.get(world.url("/dashboard/audit"))
    assert "checked the connection" in audit.text


def test_staff_map_catalog_assignments_to_sections_in_bulk(schoology: SchoologySetup, worker: DeliveryWorker) -> None:
    world = schoology.world
    schoology.fake.add_assignment("7005", "5005", max_points=20)
    browser, token = _signed_in(world)
    url = world.url(f"/dashboard/connections/{schoology.connection_id}/mappings")
    page = browser.get(url)
    assert page.status_code == 200 and "Quiz 1" in page.text, "the existing mapping is listed"

    bad = browser.post(
        url, data={"csrf_token": token, "app": world.app_id, "mappings": "quiz-2, 7005, 5005\nquiz-2, 7006"}
    )
    assert bad.status_code == 422 and "line 2: expected three values" in bad.text
    too_long = browser.post(
        url, data={"csrf_token": token, "app": world.app_id, "mappings": "quiz-2, " + "7" * 300 + ", 1"}
    )
    assert too_long.status_code == 422 and "at most 255 characters" in too_long.text
    foreign = browser.post(url, data={"csrf_token": token, "app": "someone-else", "mappings": "quiz-2, 7005, 5005"})
    assert foreign.status_code == 422 and "choose one of the district" in foreign.text

    done = browser.post(
        url, data={"csrf_token": token, "app": world.app_id, "mappings": "# pasted\nquiz-2\t7005\t5005\n"}
    )
    assert done.status_code == 200 and "1 mappings added, 0 already there." in done.text
    assert "<code>7005</code>" in done.text and "<code>5005</code>" in done.text

    (student,) = _add_students(schoology, "7005", 1, 750)
    world.post_grade({"assignmentID": "quiz-2", "userID": student, "percentage": 0.75})
    worker.run_until_idle()
    assert any(section == "7005" and items[0]["grade"] == 15 for section, items in schoology.fake.grade_puts)


def test_another_districts_connection_cannot_be_checked_or_mapped(schoology: SchoologySetup, world: World) -> None:
    other = build_world(world.app, world.base_url, world.http, district_name="Elsewhere")
    from tests.integration.test_dashboard import csrf, signed_in, staff_of

    browser = signed_in(other, staff_of(other, "staff@elsewhere.example"))
    token = csrf(browser.get(other.url("/dashboard/connections")))
    target = f"/dashboard/connections/{schoology.connection_id}"
    assert browser.get(other.url(target + "/mappings")).status_code == 404
    assert browser.post(other.url(target + "/probe"), data={"csrf_token": token}).status_code == 404
    posted = browser.post(
        other.url(target + "/mappings"), data={"csrf_token": token, "app": other.app_id, "mappings": "quiz-2, 1, 2"}
    )
    assert posted.status_code == 404
    assert schoology.fake.requests == [], "nothing reached the other district's Schoology"


def test_a_score_no_gradebook_can_hold_fails_alone(schoology: SchoologySetup, worker: DeliveryWorker) -> None:
    ada, alan = schoology.world.students
    huge = schoology.post(ada, scoreGiven=1e30, scoreMaximum=1)
    fine = schoology.post(alan, percentage=0.5)
    worker.run_until_idle()
    failed = schoology.delivery(huge)
    assert failed.status == "failed" and failed.attempts == 1
    assert "cannot turn this score into Schoology points" in (failed.last_error or "")
    assert schoology.delivery(fine).status == "delivered" and schoology.stored(alan) == 12.5


def test_a_redirect_away_from_the_configured_api_is_not_followed(schoology: SchoologySetup) -> None:
    # Following it would hand another server a signed header (with PLAINTEXT, the secret itself).
    schoology.fake.faults.append(
        Fault(303, "", {"Location": "http://attacker.example/v1/users/1000"}, path_contains="/users/me")
    )
    report = services_of(schoology.world.app).probe_connection(schoology.world.district_id, "Schoology")
    assert not report.ok
    assert "outside the configured API" in report.message and "not followed" in report.message


# --- PLAINTEXT only over https, or plain http to exactly 127.0.0.1 (issue 13, item 19) ---------------------


@pytest.mark.parametrize(
    "base",
    [
        pytest.param("http://localhost:{port}/v1", id="localhost"),
        # The standard library reads the host after the backslash (127.0.0.1); the HTTP client connects to
        # the one before it.
        pytest.param("http://localhost:{port}\\@127.0.0.1/v1", id="parser-difference"),
    ],
)
def test_plaintext_settings_stored_before_the_rule_never_send_the_secret_over_plain_http(
    schoology: SchoologySetup, worker: DeliveryWorker, base: str
) -> None:
    """Settings written before the rule (or restored, or edited outside `gateway lms add`) are checked again at
    every request: the grade fails with the rule, and Schoology never sees the secret on a plain-http wire."""
    box = services_of(schoology.world.app).box
    port = urlsplit(schoology.fake.url).port
    with schoology.world.session() as session:
        connection = session.get(LmsConnection, schoology.connection_id)
        assert connection is not None
        connection.settings_encrypted = box.encrypt_json(
            {
                "base_url": base.format(port=port),
                "consumer_key": KEY,
                "consumer_secret": SECRET,
                "signature_method": "PLAINTEXT",
            }
        )
        session.commit()
    grade_id = schoology.post(schoology.world.students[0], percentage=0.8)
    worker.run_until_idle()
    delivery = schoology.delivery(grade_id)
    assert schoology.fake.plaintext_exposures == []
    assert schoology.fake.requests == []
    assert delivery.status == "failed", (delivery.status, delivery.last_error)
    assert "PLAINTEXT" in (delivery.last_error or "") and "https" in (delivery.last_error or "")


@pytest.mark.parametrize(
    ("base_url", "accepted"),
    [
        pytest.param("https://district.schoology.example/v1", True, id="https"),
        pytest.param("http://127.0.0.1:8443/v1", True, id="http-127.0.0.1"),
        pytest.param("http://localhost:8443/v1", False, id="http-localhost"),
        pytest.param("http://127.0.0.2:8443/v1", False, id="http-127.0.0.2"),
        pytest.param("http://[::1]:8443/v1", False, id="http-ipv6-loopback"),
        pytest.param("http://127.0.0.1.nip.io/v1", False, id="http-name-starting-127.0.0.1"),
        pytest.param("http://127.0.0.1@district.schoology.example/v1", False, id="http-userinfo-127.0.0.1"),
        pytest.param("http://district.schoology.example/v1", False, id="http"),
    ],
)
def test_lms_add_accepts_plaintext_only_over_https_or_to_exactly_127_0_0_1(
    world: World, runner: CliRunner, base_url: str, accepted: bool
) -> None:
    result = runner.invoke(
        cli,
        [
            "lms", "add", "--district", world.district_id, "--name", "Plain", "--adapter", "schoology",
            "--setting", f"base_url={base_url}", "--setting", f"consumer_key={KEY}",
            "--setting", f"consumer_secret={SECRET}", "--setting", "signature_method=PLAINTEXT",
        ],
    )  # fmt: skip
    with world.session() as session:
        stored = session.scalar(select(LmsConnection).where(LmsConnection.name == "Plain"))
    if accepted:
        assert result.exit_code == 0, result.output
        assert stored is not None
    else:
        assert result.exit_code != 0, result.output
        assert "signature_method" in result.output and "https" in result.output, result.output
        assert SECRET not in result.output
        assert stored is None
