"""The app's assignment catalog over HTTP: Clever's shape, create and update, all-or-nothing bulk upserts,
archiving, and every bad input refused with nothing stored."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.assertions import assert_error
from tests.factories import World

CLEVER_FIELDS = {"name", "id", "type", "description", "standards"}


def catalog(world: World, token: str | None = None, **params: str) -> dict[str, dict[str, Any]]:
    response = world.get("/v1/assignments", token=token, params=params)
    assert response.status_code == 200, response.text
    return {a["id"]: a for a in response.json()["assignments"]}


def put(world: World, assignment_id: str, body: Any, token: str | None = None) -> requests.Response:
    return world.http.put(world.url(f"/v1/assignments/{assignment_id}"), json=body, headers=world.headers(token))


def bulk(world: World, body: Any, token: str | None = None) -> requests.Response:
    return world.http.post(world.url("/v1/assignments"), json=body, headers=world.headers(token))


# --- Reading ------------------------------------------------------------------------------------------------


def test_catalog_has_clevers_shape(world: World) -> None:
    response = world.get("/v1/assignments")

    assert response.status_code == 200, response.text
    assignments = response.json()["assignments"]
    assert [a["id"] for a in assignments] == ["quiz-1", "quiz-2", "unplaced"]
    for assignment in assignments:
        assert set(assignment) >= CLEVER_FIELDS, assignment
        assert assignment["type"] == "assignment"
        assert isinstance(assignment["standards"], list)
    assert assignments[0]["name"] == "Quiz 1"
    assert assignments[0]["scoreMaximum"] == 10


# --- PUT /v1/assignments/{id} ------------------------------------------------------------------------------


def test_put_creates_then_updates(world: World) -> None:
    body = {"name": "Fractions", "description": "Halves and thirds", "standards": ["CCSS.3.NF.1"], "scoreMaximum": 20}
    created = put(world, "fractions-1", body)
    assert created.status_code == 201, created.text
    assert created.json()["id"] == "fractions-1"

    updated = put(world, "fractions-1", {**body, "name": "Fractions, revised"})

    assert updated.status_code == 200, updated.text
    entry = catalog(world)["fractions-1"]
    assert (entry["name"], entry["description"], entry["standards"]) == (
        "Fractions, revised",
        "Halves and thirds",
        ["CCSS.3.NF.1"],
    )
    assert entry["scoreMaximum"] == 20


@pytest.mark.parametrize(
    ("path_id", "body", "field", "hint"),
    [
        pytest.param("bad%20id!", {"name": "A"}, "id", None, id="id-with-space-and-bang"),
        pytest.param("a" * 65, {"name": "A"}, "id", None, id="id-65-chars"),
        pytest.param("new-1", {"description": "no name"}, "name", None, id="name-missing"),
        pytest.param("new-1", {"name": ""}, "name", None, id="name-empty"),
        pytest.param("new-1", {"name": "A", "type": "quiz"}, "type", None, id="type-not-assignment"),
        pytest.param("new-1", {"name": "A", "scoreMaximum": 0}, "scoreMaximum", None, id="scoreMaximum-zero"),
        pytest.param("new-1", {"name": "A", "scoreMaximum": "10"}, "scoreMaximum", None, id="scoreMaximum-string"),
        pytest.param("new-1", {"name": "A", "standards": "CCSS"}, "standards", None, id="standards-not-a-list"),
        pytest.param("new-1", {"name": "A", "scoreMax": 10}, "scoreMax", "did you mean 'scoreMaximum'", id="near-miss"),
        pytest.param("quiz-1", {"name": "Renamed", "type": "quiz"}, "type", None, id="bad-update-of-existing"),
    ],
)
def test_bad_put_is_422_and_changes_nothing(
    world: World, path_id: str, body: dict[str, Any], field: str, hint: str | None
) -> None:
    before = catalog(world, includeArchived="true")

    error = assert_error(put(world, path_id, body), 422, "invalid_input", field)

    if hint is not None:
        assert hint in " ".join(error["fields"][field]), error
    assert catalog(world, includeArchived="true") == before


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [
        pytest.param(b'{"name": ', "application/json", 400, "malformed_json", id="truncated-json"),
        pytest.param(b'[{"name": "A"}]', "application/json", 400, "malformed_json", id="json-array"),
        pytest.param(b'{"name": "A"}', "text/plain", 415, "unsupported_media_type", id="text-plain"),
    ],
)
def test_put_body_that_is_not_a_json_object_is_refused(
    world: World, data: bytes, content_type: str, status: int, code: str
) -> None:
    headers = world.headers(**{"Content-Type": content_type})
    response = world.http.put(world.url("/v1/assignments/new-1"), data=data, headers=headers)

    assert_error(response, status, code)
    assert "new-1" not in catalog(world, includeArchived="true")


# Refused on both backends alike: SQLite could store NUL, PostgreSQL cannot; a lone surrogate is not UTF-8.
@pytest.mark.parametrize(
    "name", [pytest.param("Quiz \ud800", id="lone-surrogate"), pytest.param("Quiz \x00", id="NUL")]
)
def test_name_the_database_cannot_hold_is_422(world: World, name: str) -> None:
    assert_error(put(world, "new-1", {"name": name}), 422, "invalid_input", "name")
    assert "new-1" not in catalog(world, includeArchived="true")


# --- POST /v1/assignments (bulk) ------------------------------------------------------------------------------


def test_bulk_upsert_counts_created_and_updated(world: World) -> None:
    response = bulk(
        world,
        {
            "assignments": [
                {"id": "quiz-1", "name": "Quiz One"},
                {"id": "essay-1", "name": "Essay", "scoreMaximum": 4},
                {"id": "essay-2", "name": "Essay 2"},
            ]
        },
    )

    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["created"], result["updated"]) == (2, 1)
    assert [a["id"] for a in result["assignments"]] == ["quiz-1", "essay-1", "essay-2"]
    entries = catalog(world)
    assert entries["quiz-1"]["name"] == "Quiz One"
    assert (entries["essay-1"]["scoreMaximum"], entries["essay-2"]["scoreMaximum"]) == (4, 100)


GOOD_ENTRY = {"id": "quiz-1", "name": "Renamed by the batch"}

BAD_BULK_CASES = [
    pytest.param({"assignments": [GOOD_ENTRY, {"id": "new-1"}]}, "assignments[1].name", id="entry-without-name"),
    pytest.param({"assignments": [GOOD_ENTRY, {"id": "bad id", "name": "A"}]}, "assignments[1].id", id="entry-bad-id"),
    pytest.param({"assignments": [GOOD_ENTRY, {"name": "A"}]}, "assignments[1].id", id="entry-without-id"),
    pytest.param(
        {"assignments": [GOOD_ENTRY, {"id": "new-1", "name": "A", "type": "quiz"}]},
        "assignments[1].type",
        id="entry-bad-type",
    ),
    pytest.param(
        {"assignments": [GOOD_ENTRY, {"id": "new-1", "name": "A"}, {"id": "new-1", "name": "B"}]},
        "assignments[2].id",
        id="duplicate-ids",
    ),
    pytest.param({"assignments": [{**GOOD_ENTRY, "scoreMax": 5}]}, "assignments[0].scoreMax", id="entry-unknown-field"),
    pytest.param({"assignments": []}, "assignments", id="empty-list"),
    pytest.param(
        {"assignments": [GOOD_ENTRY] + [{"id": f"a-{i}", "name": "A"} for i in range(1000)]},
        "assignments",
        id="over-1000",
    ),
    pytest.param({"assignment": [GOOD_ENTRY]}, "assignment", id="misspelt-key"),
]


@pytest.mark.parametrize(("body", "field"), BAD_BULK_CASES)
def test_bad_bulk_is_422_and_stores_nothing_from_the_batch(world: World, body: dict[str, Any], field: str) -> None:
    before = catalog(world, includeArchived="true")

    assert_error(bulk(world, body), 422, "invalid_input", field)

    assert catalog(world, includeArchived="true") == before


# --- DELETE /v1/assignments/{id} ------------------------------------------------------------------------------


def test_delete_archives_and_grades_are_still_accepted(world: World) -> None:
    response = world.http.delete(world.url("/v1/assignments/quiz-1"), headers=world.headers())

    assert response.status_code == 200, response.text
    assert response.json()["archived"] is True
    assert "quiz-1" not in catalog(world)
    assert catalog(world, includeArchived="true")["quiz-1"]["archived"] is True
    grade = world.post_grade({"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.5})
    assert grade.status_code == 202, grade.text
    assert grade.json()["normalized"]["scoreMaximum"] == 10


def test_delete_unknown_is_404(world: World) -> None:
    response = world.http.delete(world.url("/v1/assignments/no-such-quiz"), headers=world.headers())

    assert_error(response, 404, "assignment_not_found")


# --- User tokens read the catalog but cannot write it ---------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param("PUT", "/v1/assignments/quiz-1", {"name": "Hijacked"}, id="put"),
        pytest.param("POST", "/v1/assignments", {"assignments": [{"id": "quiz-1", "name": "Hijacked"}]}, id="bulk"),
        pytest.param("DELETE", "/v1/assignments/quiz-1", None, id="delete"),
    ],
)
def test_user_token_cannot_write_the_catalog(world: World, method: str, path: str, body: Any) -> None:
    token = world.user_token(world.students[0])
    before = catalog(world, token=token)
    assert "quiz-1" in before

    response = world.http.request(method, world.url(path), json=body, headers=world.headers(token))

    assert_error(response, 403, "insufficient_scope")
    assert catalog(world, includeArchived="true")["quiz-1"] == before["quiz-1"]
