"""POST /v1/grades: up to 1,000 grades in one request, each validated and stored on its own."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from gateway.models import Delivery, Grade, GradeRevision
from gateway.services.directory import create_user
from gateway.worker import DeliveryWorker
from tests.assertions import assert_error, strict_json
from tests.factories import World


def post_bulk(world: World, grades: Any, token: str | None = None) -> Any:
    return world.http.post(world.url("/v1/grades"), json={"grades": grades}, headers=world.headers(token))


def counts(world: World) -> tuple[int, int, int]:
    with world.session() as session:
        return (
            session.scalar(select(func.count()).select_from(Grade)) or 0,
            session.scalar(select(func.count()).select_from(GradeRevision)) or 0,
            session.scalar(select(func.count()).select_from(Delivery)) or 0,
        )


def test_good_entries_are_stored_and_each_bad_one_is_refused_alone(world: World, worker: DeliveryWorker) -> None:
    ada, alan = world.students
    grades = [
        {"assignmentID": "quiz-1", "userID": ada, "percentage": 0.9},
        {"assignmentID": "quiz-1", "userID": alan, "percentage": 85},  # a percent, not a fraction
        {"assignmentID": "no-such-quiz", "userID": ada, "percentage": 0.5},
        "not an object",
        {"assignmentID": "quiz-2", "userID": alan, "scoreGiven": 7, "scoreMaximum": 10},
        {"assignmentID": "quiz-2", "userID": "nobody", "percentage": 0.1},
    ]
    response = post_bulk(world, grades)
    assert response.status_code == 200, response.text
    body = strict_json(response)
    assert (body["accepted"], body["rejected"]) == (2, 4)
    statuses = [(r["index"], r["status"]) for r in body["results"]]
    assert statuses == [(0, 202), (1, 422), (2, 404), (3, 422), (4, 202), (5, 404)]
    assert "percentage" in body["results"][1]["error"]["fields"]
    assert body["results"][2]["error"]["code"] == "assignment_not_found"
    assert body["results"][5]["error"]["fields"] == {"userID": ["No such user in this district."]}
    assert counts(world)[:2] == (2, 2), "only the accepted entries were stored"

    worker.run_until_idle()
    book = {(e["itemID"], e["studentID"]): e["scoreGiven"] for e in world.gradebook()}
    assert book == {("quiz-1", ada): 9.0, ("quiz-2", alan): 7.0}
    status = world.get(f"/v1/grades/{body['results'][0]['id']}").json()
    assert status["status"] == "delivered"


def test_entries_are_taken_in_order(world: World) -> None:
    ada = world.students[0]
    grades = [
        {"assignmentID": "quiz-1", "userID": ada, "percentage": 0.4, "timestamp": "2026-11-22T09:00:00Z"},
        {"assignmentID": "quiz-1", "userID": ada, "percentage": 0.6, "timestamp": "2026-11-22T09:05:00Z"},
        {"assignmentID": "quiz-1", "userID": ada, "percentage": 0.5, "timestamp": "2026-11-22T09:01:00Z"},
        {"assignmentID": "quiz-1", "userID": ada, "percentage": 0.6, "timestamp": "2026-11-22T09:06:00Z"},
    ]
    body = post_bulk(world, grades).json()
    assert [r["status"] for r in body["results"]] == [202, 202, 409, 202], body
    assert [r.get("revision") for r in body["results"]] == [1, 2, None, 2]
    assert body["results"][3]["changed"] is False, "an identical grade is a no-op"
    assert body["results"][2]["error"]["code"] == "stale_grade"
    with world.session() as session:
        undelivered = session.scalars(
            select(Delivery.status).where(Delivery.status.in_(("pending", "superseded")))
        ).all()
    assert sorted(undelivered) == ["pending", "superseded"], "the older revision's delivery was superseded"


def test_a_thousand_grades_in_one_request(world: World, worker: DeliveryWorker) -> None:
    with world.session() as session:
        users = [create_user(session, world.district_id, name=f"S{n}").id for n in range(500)]
    grades = [
        {"assignmentID": assignment, "userID": user, "percentage": (n % 100) / 100}
        for n, (user, assignment) in enumerate((u, a) for u in users for a in ("quiz-1", "quiz-2"))
    ]
    assert len(grades) == 1000
    response = post_bulk(world, grades)
    assert response.status_code == 200, response.text[:500]
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (1000, 0)
    assert counts(world)[:2] == (1000, 1000)


@pytest.mark.parametrize(
    ("envelope", "status", "field"),
    [
        ({"grades": []}, 422, "grades"),
        ({"grades": [{}] * 1001}, 422, "grades"),
        ({"grade": [{}]}, 422, "grade"),
        ({"grades": {"assignmentID": "quiz-1"}}, 422, "grades"),
        ([], 400, None),
    ],
    ids=["empty", "too-many", "misspelt-key", "not-a-list", "not-an-object"],
)
def test_a_bad_envelope_is_refused_whole(world: World, envelope: Any, status: int, field: str | None) -> None:
    response = world.http.post(world.url("/v1/grades"), json=envelope, headers=world.headers())
    assert_error(response, status, field=field)
    assert counts(world) == (0, 0, 0)


def test_a_bad_token_is_401_before_a_bad_body(world: World) -> None:
    response = world.http.post(world.url("/v1/grades"), json={"grades": []}, headers=world.headers("nope"))
    assert_error(response, 401)


def test_a_students_token_may_post_only_their_own_grades(world: World) -> None:
    ada, alan = world.students
    token = world.user_token(ada)
    grades = [
        {"assignmentID": "quiz-1", "percentage": 0.7},
        {"assignmentID": "quiz-1", "userID": alan, "percentage": 0.7},
    ]
    body = post_bulk(world, grades, token).json()
    assert [r["status"] for r in body["results"]] == [202, 403]
    assert body["results"][1]["error"]["code"] == "user_mismatch"


def test_a_body_past_the_limit_is_413(world: World) -> None:
    comment = "x" * 9000
    grades = [{"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.5, "comment": comment}] * 600
    response = post_bulk(world, grades)
    assert_error(response, 413)
    assert counts(world) == (0, 0, 0)
