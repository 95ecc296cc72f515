"""Apps address students by what they know: userID, sisID, email, or lmsUserID with lms (issue 15)."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from sqlalchemy import func, select

from gateway.composition import services_of
from gateway.models import Grade, GradeRevision, LmsConnection, User
from gateway.services.directory import create_user, enroll, link_identity
from gateway.worker import DeliveryWorker
from tests.assertions import assert_error
from tests.factories import COURSE, World, build_world

ADA_SIS = "S-1001"
ADA_EMAIL = "ada@school.example"
ADA_LMS_ID = "canvas-user-17"


@pytest.fixture
def keyed(world: World) -> World:
    """The world's students with what an app knows of them: Ada's SIS id, email and sandbox LMS user id; Alan's
    SIS id and email."""
    ada, alan = world.students
    with world.session() as session:
        for user_id, sis_id, email in ((ada, ADA_SIS, ADA_EMAIL), (alan, "S-1002", "alan@school.example")):
            user = session.get(User, user_id)
            assert user is not None
            user.sis_id, user.email = sis_id, email
        ada_user = session.get(User, ada)
        connection = session.get(LmsConnection, world.connection_id)
        assert ada_user is not None and connection is not None
        link_identity(session, ada_user, connection, ADA_LMS_ID, box=services_of(world.app).box)
    return world


def grade(key: dict[str, str], assignment: str = "quiz-1", percentage: float = 0.8) -> dict[str, Any]:
    return {"assignmentID": assignment, "percentage": percentage, **key}


def stored_grades(world: World) -> list[str]:
    with world.session() as session:
        return list(session.scalars(select(Grade.user_id).order_by(Grade.created_at, Grade.id)))


@pytest.mark.parametrize(
    "key",
    [
        {"sisID": ADA_SIS},
        {"email": ADA_EMAIL},
        {"lmsUserID": ADA_LMS_ID, "lms": "Sandbox"},  # the connection's name
        {"lmsUserID": ADA_LMS_ID, "lms": "connection-id"},  # replaced by the connection's id below
    ],
    ids=["sisID", "email", "lmsUserID-by-name", "lmsUserID-by-id"],
)
def test_each_key_resolves_to_the_student(keyed: World, worker: DeliveryWorker, key: dict[str, str]) -> None:
    if key.get("lms") == "connection-id":
        key = {**key, "lms": keyed.connection_id}
    ada = keyed.students[0]

    response = keyed.post_grade(grade(key))

    assert response.status_code == 202, response.text
    body = response.json()
    assert body["userID"] == ada
    assert body["studentKey"] == key
    assert stored_grades(keyed) == [ada]
    assert worker.run_until_idle() == 1
    [entry] = keyed.gradebook()
    assert entry["studentID"] == ADA_LMS_ID  # the sandbox names Ada by the id it linked her to


def test_reads_carry_the_key_the_current_revision_was_posted_with(keyed: World) -> None:
    first = keyed.post_grade(grade({"sisID": ADA_SIS}, percentage=0.5)).json()
    assert keyed.get(f"/v1/grades/{first['id']}").json() == first
    second = keyed.post_grade(grade({"lmsUserID": ADA_LMS_ID, "lms": "Sandbox"}, percentage=0.6)).json()
    assert (second["id"], second["revision"]) == (first["id"], 2)
    read = keyed.get(f"/v1/grades/{first['id']}").json()
    assert read["studentKey"] == {"lmsUserID": ADA_LMS_ID, "lms": "Sandbox"}
    [listed] = keyed.get("/v1/grades").json()["grades"]
    assert listed["studentKey"] == read["studentKey"] and listed["userID"] == keyed.students[0]
    with keyed.session() as session:
        keys = session.scalars(select(GradeRevision.student_key).order_by(GradeRevision.revision)).all()
    assert keys == [{"sisID": ADA_SIS}, {"lmsUserID": ADA_LMS_ID, "lms": "Sandbox"}]


def test_user_id_is_echoed_as_the_key(keyed: World) -> None:
    response = keyed.post_grade(grade({"userID": keyed.students[1]}))
    assert response.status_code == 202, response.text
    assert response.json()["studentKey"] == {"userID": keyed.students[1]}


def test_an_idempotent_replay_answers_with_the_same_key(keyed: World) -> None:
    first = keyed.post_grade(grade({"sisID": ADA_SIS}), **{"Idempotency-Key": "k-1"})
    again = keyed.post_grade(grade({"sisID": ADA_SIS}), **{"Idempotency-Key": "k-1"})
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["studentKey"] == first.json()["studentKey"] == {"sisID": ADA_SIS}


@pytest.mark.parametrize(
    ("key", "code", "field"),
    [
        ({"sisID": "S-9999"}, "user_not_found", "sisID"),
        ({"email": "nobody@school.example"}, "user_not_found", "email"),
        ({"lmsUserID": "someone-else", "lms": "Sandbox"}, "user_not_found", "lmsUserID"),
        ({"lmsUserID": ADA_LMS_ID, "lms": "No Such LMS"}, "lms_connection_not_found", "lms"),
        ({"userID": "nobody"}, "user_not_found", "userID"),
    ],
    ids=["sisID", "email", "lmsUserID", "lms", "userID"],
)
def test_an_unknown_key_is_404_naming_it(keyed: World, key: dict[str, str], code: str, field: str) -> None:
    response = keyed.post_grade(grade(key))
    error = assert_error(response, 404, code, field)
    assert stored_grades(keyed) == []
    assert set(error["fields"]) == {field}


def test_an_email_two_users_share_is_409_listing_no_one(keyed: World) -> None:
    with keyed.session() as session:
        twin = create_user(session, keyed.district_id, name="Ada's twin", email=ADA_EMAIL)
        twin_id = twin.id

    response = keyed.post_grade(grade({"email": ADA_EMAIL}))

    error = assert_error(response, 409, "student_key_ambiguous", "email")
    assert keyed.students[0] not in response.text and twin_id not in response.text
    assert "twin" not in response.text and "Ada" not in response.text
    assert set(error["fields"]) == {"email"}
    assert stored_grades(keyed) == []


@pytest.mark.parametrize(
    ("body_key", "fields"),
    [
        ({}, {"userID", "sisID", "email", "lmsUserID"}),
        ({"userID": "u", "sisID": ADA_SIS}, {"userID", "sisID"}),
        ({"sisID": ADA_SIS, "email": ADA_EMAIL}, {"sisID", "email"}),
        ({"lmsUserID": ADA_LMS_ID}, {"lms"}),
        ({"sisID": ADA_SIS, "lms": "Sandbox"}, {"lmsUserID"}),
    ],
    ids=["none", "userID-and-sisID", "sisID-and-email", "lmsUserID-alone", "lms-alone"],
)
def test_not_exactly_one_key_is_400_naming_the_fields(keyed: World, body_key: dict[str, str], fields: set[str]) -> None:
    response = keyed.post_grade(grade(body_key))
    error = assert_error(response, 400, "student_key_invalid")
    assert set(error["fields"]) == fields
    assert stored_grades(keyed) == []


@pytest.mark.parametrize(
    "key",
    [{"sisID": "S-1002"}, {"email": "alan@school.example"}, {"sisID": "S-9999"}, {"userID": "alan"}],
    ids=["another-by-sisID", "another-by-email", "unknown-sisID", "another-by-userID"],
)
def test_a_user_token_may_not_name_anyone_else(keyed: World, key: dict[str, str]) -> None:
    if key.get("userID") == "alan":
        key = {"userID": keyed.students[1]}
    token = keyed.user_token(keyed.students[0])

    response = keyed.post_grade(grade(key), token=token)

    # Unknown and another student's key answer alike: a student cannot probe who exists.
    assert_error(response, 403, "user_mismatch", next(iter(key)))
    assert stored_grades(keyed) == []


@pytest.mark.parametrize(
    "key",
    [{}, {"sisID": ADA_SIS}, {"email": ADA_EMAIL}, {"lmsUserID": ADA_LMS_ID, "lms": "Sandbox"}],
    ids=["no-key", "sisID", "email", "lmsUserID"],
)
def test_a_user_token_may_name_itself_by_any_key(keyed: World, key: dict[str, str]) -> None:
    ada = keyed.students[0]
    token = keyed.user_token(ada)

    response = keyed.post_grade(grade(key), token=token)

    assert response.status_code == 202, response.text
    assert response.json()["userID"] == ada
    assert response.json()["studentKey"] == (key or {"userID": ada})
    assert stored_grades(keyed) == [ada]


def test_another_districts_student_is_not_found(keyed: World, http: requests.Session) -> None:
    other = build_world(keyed.app, keyed.base_url, http, district_name="Other District")
    with other.session() as session:
        stranger = session.get(User, other.students[0])
        assert stranger is not None
        stranger.sis_id, stranger.email = "S-7777", "stranger@other.example"
        connection = session.get(LmsConnection, other.connection_id)
        assert connection is not None
        link_identity(session, stranger, connection, "other-lms-user", box=services_of(keyed.app).box)

    for key, field in (
        ({"sisID": "S-7777"}, "sisID"),
        ({"email": "stranger@other.example"}, "email"),
        ({"userID": other.students[0]}, "userID"),
        ({"lmsUserID": "other-lms-user", "lms": other.connection_id}, "lms"),
    ):
        assert_error(keyed.post_grade(grade(key)), 404, field=field)
    # The same SIS id in both districts names each district's own student.
    with other.session() as session:
        twin = session.get(User, other.students[1])
        assert twin is not None
        twin.sis_id = ADA_SIS
    assert keyed.post_grade(grade({"sisID": ADA_SIS})).json()["userID"] == keyed.students[0]
    assert other.post_grade(grade({"sisID": ADA_SIS})).json()["userID"] == other.students[1]


def test_bulk_entries_may_mix_keys(keyed: World, worker: DeliveryWorker) -> None:
    ada, alan = keyed.students
    entries = [
        grade({"userID": ada}, "quiz-1"),
        grade({"sisID": "S-1002"}, "quiz-1"),
        grade({"email": ADA_EMAIL}, "quiz-2"),
        grade({"lmsUserID": ADA_LMS_ID, "lms": "Sandbox"}, "quiz-2", 0.9),
        grade({"sisID": "S-9999"}, "quiz-2"),
        grade({"sisID": ADA_SIS, "email": ADA_EMAIL}, "quiz-2"),
    ]

    response = keyed.http.post(keyed.url("/v1/grades"), json={"grades": entries}, headers=keyed.headers())

    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == [202, 202, 202, 202, 404, 400]
    assert [r.get("userID") for r in results[:4]] == [ada, alan, ada, ada]
    assert [r.get("studentKey") for r in results[:4]] == [
        {"userID": ada},
        {"sisID": "S-1002"},
        {"email": ADA_EMAIL},
        {"lmsUserID": ADA_LMS_ID, "lms": "Sandbox"},
    ]
    assert results[4]["error"]["code"] == "user_not_found" and "sisID" in results[4]["error"]["fields"]
    assert results[5]["error"]["code"] == "student_key_invalid"
    assert set(results[5]["error"]["fields"]) == {"sisID", "email"}
    # Ada's quiz-2 by email, then by her LMS id: one grade, two revisions.
    with keyed.session() as session:
        assert session.scalar(select(func.count()).select_from(Grade)) == 3
        assert session.scalar(select(func.max(Grade.revision))) == 2


def list_user_ids(world: World, token: str | None = None, **params: str) -> list[str]:
    response = world.get("/v1/grades", token=token, params=params)
    assert response.status_code == 200, response.text
    return [g["userID"] for g in response.json()["grades"]]


def test_list_filters_take_the_same_keys(keyed: World) -> None:
    ada, alan = keyed.students
    for user_id in (ada, alan):
        assert keyed.post_grade(grade({"userID": user_id})).status_code == 202

    assert list_user_ids(keyed) == [ada, alan]
    assert list_user_ids(keyed, userID=alan) == [alan]
    assert list_user_ids(keyed, sisID=ADA_SIS) == [ada]
    assert list_user_ids(keyed, email="alan@school.example") == [alan]
    assert list_user_ids(keyed, lmsUserID=ADA_LMS_ID, lms="Sandbox") == [ada]
    assert list_user_ids(keyed, lmsUserID=ADA_LMS_ID, lms=keyed.connection_id) == [ada]
    # A key that names no one is an empty page, not an error.
    assert list_user_ids(keyed, sisID="S-9999") == []
    assert list_user_ids(keyed, lmsUserID=ADA_LMS_ID, lms="No Such LMS") == []
    # A user token sees only its own grades, whatever it filters by.
    token = keyed.user_token(ada)
    assert list_user_ids(keyed, token, sisID=ADA_SIS) == [ada]
    assert list_user_ids(keyed, token, sisID="S-1002") == []


def test_list_filters_refuse_two_keys(keyed: World) -> None:
    response = keyed.get("/v1/grades", params={"sisID": ADA_SIS, "email": ADA_EMAIL})
    error = assert_error(response, 400, "student_key_invalid")
    assert set(error["fields"]) == {"sisID", "email"}
    assert_error(keyed.get("/v1/grades", params={"lms": "Sandbox"}), 400, "student_key_invalid", "lmsUserID")


def test_another_districts_student_is_not_listed(keyed: World, http: requests.Session) -> None:
    other = build_world(keyed.app, keyed.base_url, http, district_name="Other District")
    with other.session() as session:
        stranger = session.get(User, other.students[0])
        assert stranger is not None
        stranger.sis_id = "S-7777"
        teammate = create_user(session, other.district_id, name="Another", email=ADA_EMAIL)
        connection = session.get(LmsConnection, other.connection_id)
        assert connection is not None
        enroll(session, connection, COURSE, teammate)
    assert other.post_grade(grade({"sisID": "S-7777"})).status_code == 202
    assert keyed.post_grade(grade({"email": ADA_EMAIL})).status_code == 202

    assert list_user_ids(keyed, sisID="S-7777") == []
    assert list_user_ids(keyed, email=ADA_EMAIL) == [keyed.students[0]]
