"""Every bad input of POST /v1/grade and GET /v1/grades answers a 4xx in the one error shape and changes
nothing; the overwrite, stale-grade and Idempotency-Key rules hold over real HTTP."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.worker import DeliveryWorker
from tests.assertions import assert_error
from tests.factories import World

DROP = object()  # a case value meaning "leave this field out"
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)  # a past moment, for explicit timestamps


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def assert_nothing_stored(world: World, worker: DeliveryWorker) -> None:
    assert world.get("/v1/grades").json()["grades"] == []
    worker.run_until_idle()
    assert world.gradebook() == []


def grade_body(world: World, **changes: Any) -> dict[str, Any]:
    """A valid grade for the first student on quiz-1, with `changes` applied (DROP removes a field)."""
    body: dict[str, Any] = {"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.8}
    for key, value in changes.items():
        if value is DROP:
            body.pop(key, None)
        else:
            body[key] = value() if callable(value) else value
    return body


def in_an_hour() -> str:
    return iso(datetime.now(UTC) + timedelta(hours=1))


# --- POST /v1/grade: field rules (422) -------------------------------------------------------------------

FIELD_CASES = [
    pytest.param({"scoreGiven": 8, "scoreMaximum": 10}, ["percentage", "scoreGiven"], None, id="both-score-forms"),
    pytest.param({"percentage": DROP}, ["percentage"], None, id="no-score-form"),
    pytest.param({"percentage": DROP, "scoreGiven": 8}, ["scoreMaximum"], None, id="scoreGiven-without-maximum"),
    pytest.param({"percentage": DROP, "scoreMaximum": 10}, ["scoreGiven"], None, id="scoreMaximum-without-given"),
    pytest.param({"percentage": 80}, ["percentage"], "send 0.8", id="percentage-80-hint"),
    pytest.param({"percentage": 1.5}, ["percentage"], None, id="percentage-above-1"),
    pytest.param({"percentage": -0.1}, ["percentage"], None, id="percentage-negative"),
    pytest.param({"percentage": "0.8"}, ["percentage"], "not a string", id="percentage-string"),
    pytest.param({"percentage": True}, ["percentage"], "not a boolean", id="percentage-boolean"),
    pytest.param({"percentage": None}, ["percentage"], None, id="percentage-null"),
    pytest.param({"percentage": DROP, "scoreGiven": -1, "scoreMaximum": 10}, ["scoreGiven"], None, id="given-negative"),
    pytest.param({"percentage": DROP, "scoreGiven": 0, "scoreMaximum": 0}, ["scoreMaximum"], None, id="maximum-zero"),
    pytest.param({"percentage": DROP, "scoreGiven": 1, "scoreMaximum": -10}, ["scoreMaximum"], None, id="maximum-neg"),
    pytest.param({"assignmentID": "quiz 1"}, ["assignmentID"], None, id="assignmentID-space"),
    pytest.param({"assignmentID": "a" * 65}, ["assignmentID"], None, id="assignmentID-65-chars"),
    pytest.param({"assignmentID": ""}, ["assignmentID"], None, id="assignmentID-empty"),
    pytest.param({"assignmentID": 7}, ["assignmentID"], None, id="assignmentID-number"),
    pytest.param(
        {"assignmentID": DROP, "assignmentId": "quiz-1"},
        ["assignmentId"],
        "did you mean 'assignmentID'",
        id="assignmentId-near-miss",
    ),
    pytest.param({"userID": DROP, "userId": "x"}, ["userId"], "did you mean 'userID'", id="userId-near-miss"),
    pytest.param({"timestamp": "2026-01-05T09:00:00"}, ["timestamp"], "offset", id="timestamp-without-offset"),
    pytest.param({"timestamp": "last tuesday"}, ["timestamp"], None, id="timestamp-garbage"),
    pytest.param({"timestamp": in_an_hour}, ["timestamp"], "future", id="timestamp-hour-ahead"),
    pytest.param({"timestamp": "0001-01-01T00:00:00+01:00"}, ["timestamp"], None, id="timestamp-before-year-1-utc"),
    pytest.param({"timestamp": "9999-12-31T23:59:59-01:00"}, ["timestamp"], None, id="timestamp-after-9999-utc"),
    pytest.param({"timestamp": "1969-12-31T23:59:59Z"}, ["timestamp"], "1970", id="timestamp-before-1970"),
    pytest.param({"context": "notes"}, ["context"], None, id="context-string"),
    pytest.param({"context": [1, 2]}, ["context"], None, id="context-array"),
    pytest.param({"context": {"notes": "x" * 4100}}, ["context"], "4096", id="context-over-4096-bytes"),
    pytest.param({"comment": 42}, ["comment"], None, id="comment-number"),
    pytest.param({"activityProgress": "Done"}, ["activityProgress"], None, id="activityProgress-unknown"),
    pytest.param({"gradingProgress": "Graded"}, ["gradingProgress"], None, id="gradingProgress-unknown"),
]


@pytest.mark.parametrize(("changes", "named", "hint"), FIELD_CASES)
def test_field_rule_is_refused_and_nothing_is_stored(
    world: World, worker: DeliveryWorker, changes: dict[str, Any], named: list[str], hint: str | None
) -> None:
    error = assert_error(world.post_grade(grade_body(world, **changes)), 422, "invalid_input")

    for field in named:
        assert field in error["fields"], error
        assert all(isinstance(m, str) and m for m in error["fields"][field])
    if hint is not None:
        assert hint in " ".join(error["fields"][named[0]]), error
    assert_nothing_stored(world, worker)


def test_score_above_maximum_is_extra_credit(world: World) -> None:
    response = world.post_grade(grade_body(world, percentage=DROP, scoreGiven=12, scoreMaximum=10))

    assert response.status_code == 202, response.text
    assert response.json()["normalized"] == {"fraction": 1.2, "scoreGiven": 12.0, "scoreMaximum": 10.0}


def test_score_pair_with_infinite_fraction_is_refused(world: World, worker: DeliveryWorker) -> None:
    response = world.post_grade(grade_body(world, percentage=DROP, scoreGiven=1e308, scoreMaximum=1e-300))

    error = assert_error(response, 422, "invalid_input")
    assert {"scoreGiven", "scoreMaximum"} & set(error["fields"]), error
    assert_nothing_stored(world, worker)


@pytest.mark.parametrize(
    ("changes", "status", "code", "field"),
    [
        pytest.param({"assignmentID": "no-such-quiz"}, 404, "assignment_not_found", "assignmentID", id="assignment"),
        pytest.param({"userID": "no-such-user"}, 404, "user_not_found", "userID", id="user"),
    ],
)
def test_unknown_reference_is_not_found(
    world: World, worker: DeliveryWorker, changes: dict[str, Any], status: int, code: str, field: str
) -> None:
    assert_error(world.post_grade(grade_body(world, **changes)), status, code, field)
    assert_nothing_stored(world, worker)


# --- POST /v1/grade: the body itself (400, 413, 415) and numbers JSON cannot carry ---------------------------

GRADE_JSON = '{{"assignmentID": "quiz-1", "userID": "{user}", "percentage": {percentage}}}'

BODY_CASES = [
    pytest.param('{"assignmentID": "quiz-1", ', "application/json", 400, "malformed_json", None, id="truncated-json"),
    pytest.param("[" + GRADE_JSON + "]", "application/json", 400, "malformed_json", None, id="json-array"),
    pytest.param(GRADE_JSON, "application/json", 400, "malformed_json", "NaN", id="NaN"),
    pytest.param(GRADE_JSON, "application/json", 400, "malformed_json", "Infinity", id="Infinity"),
    pytest.param(GRADE_JSON, "application/json", 400, "malformed_json", "-Infinity", id="minus-Infinity"),
    # Python reads 1e400 as inf and a 400-digit integer overflows float(): both are 422, not 400 or 500.
    pytest.param(GRADE_JSON, "application/json", 422, "invalid_input", "1e400", id="1e400"),
    pytest.param(GRADE_JSON, "application/json", 422, "invalid_input", "1" + "0" * 400, id="400-digit-integer"),
    pytest.param(GRADE_JSON, "text/plain", 415, "unsupported_media_type", "0.8", id="text-plain"),
    pytest.param(GRADE_JSON, None, 415, "unsupported_media_type", "0.8", id="no-content-type"),
]


@pytest.mark.parametrize(("template", "content_type", "status", "code", "percentage"), BODY_CASES)
def test_bad_body_is_refused_and_nothing_is_stored(
    world: World,
    worker: DeliveryWorker,
    template: str,
    content_type: str | None,
    status: int,
    code: str,
    percentage: str | None,
) -> None:
    data = template.format(user=world.students[0], percentage=percentage) if percentage else template
    headers = world.headers(**({"Content-Type": content_type} if content_type else {}))
    response = world.http.post(world.url("/v1/grade"), data=data.encode(), headers=headers)

    error = assert_error(response, status, code)
    if status == 422:
        assert "finite" in " ".join(error["fields"]["percentage"]), error
    assert_nothing_stored(world, worker)


def test_body_over_64_kb_is_413(world: World, worker: DeliveryWorker) -> None:
    response = world.post_grade(grade_body(world, comment="x" * 70_000))

    assert_error(response, 413, "request_entity_too_large")
    assert_nothing_stored(world, worker)


# --- POST /v1/grade: strings the database cannot hold must still be a 4xx, never a 500 ----------------------

# A lone surrogate cannot be encoded as UTF-8, and PostgreSQL text cannot hold NUL (SQLite can): both are
# refused everywhere, so the backends behave alike.
HOSTILE_CASES = [
    pytest.param({"comment": "a\ud800b"}, "comment", id="comment-lone-surrogate"),
    pytest.param({"userID": "\ud800"}, "userID", id="userID-lone-surrogate"),
    pytest.param({"comment": "a\x00b"}, "comment", id="comment-NUL"),
    pytest.param({"userID": "a\x00b"}, "userID", id="userID-NUL"),
    pytest.param({"context": {"note": "a\x00b"}}, "context.note", id="context-value-NUL"),
]


@pytest.mark.parametrize(("changes", "field"), HOSTILE_CASES)
def test_string_the_database_cannot_hold_is_a_422(
    world: World, worker: DeliveryWorker, changes: dict[str, Any], field: str
) -> None:
    response = world.post_grade(grade_body(world, **changes))

    assert_error(response, 422, "invalid_input", field=field)
    assert_nothing_stored(world, worker)


# --- One current grade: overwrite, stale, identical ----------------------------------------------------------


def test_later_timestamp_overwrites_and_supersedes_the_undelivered_delivery(
    world: World, worker: DeliveryWorker
) -> None:
    first = world.post_grade(grade_body(world, percentage=0.5, timestamp=iso(T0))).json()
    response = world.post_grade(grade_body(world, percentage=0.9, timestamp=iso(T0 + timedelta(minutes=1))))

    assert response.status_code == 202, response.text
    second = response.json()
    assert (second["id"], second["revision"], second["percentage"]) == (first["id"], 2, 0.9)
    [old_delivery] = first["deliveries"]
    [new_delivery] = second["deliveries"]
    assert new_delivery["id"] != old_delivery["id"]
    assert new_delivery["status"] == "pending"
    assert [d["id"] for d in world.get(f"/v1/grades/{first['id']}").json()["deliveries"]] == [new_delivery["id"]]

    assert worker.run_until_idle() == 1
    [entry] = world.gradebook()
    assert (entry["scoreGiven"], entry["writes"]) == (9.0, 1)


@pytest.mark.parametrize("offset", [timedelta(minutes=-1), timedelta(0)], ids=["older", "equal"])
def test_stale_timestamp_is_409_and_changes_nothing(world: World, worker: DeliveryWorker, offset: timedelta) -> None:
    stored = world.post_grade(grade_body(world, percentage=0.5, timestamp=iso(T0))).json()

    response = world.post_grade(grade_body(world, percentage=0.9, timestamp=iso(T0 + offset)))

    assert_error(response, 409, "stale_grade", "timestamp")
    assert world.get(f"/v1/grades/{stored['id']}").json() == stored
    worker.run_until_idle()
    [entry] = world.gradebook()
    assert (entry["scoreGiven"], entry["writes"]) == (5.0, 1)


def test_identical_repost_changes_nothing(world: World, worker: DeliveryWorker) -> None:
    body = grade_body(world, comment="well done", context={"attempt": 1})
    first = world.post_grade(body).json()
    assert worker.run_until_idle() == 1

    response = world.post_grade(body)

    assert response.status_code == 202, response.text
    again = response.json()
    assert (again["id"], again["revision"]) == (first["id"], 1)
    assert [d["id"] for d in again["deliveries"]] == [d["id"] for d in first["deliveries"]]
    assert worker.run_until_idle() == 0
    [entry] = world.gradebook()
    assert entry["writes"] == 1


# --- Idempotency-Key -------------------------------------------------------------------------------------


def test_same_key_and_body_replays_the_first_answer(world: World, worker: DeliveryWorker) -> None:
    body = grade_body(world)
    first = world.post_grade(body, **{"Idempotency-Key": "k-1"})
    assert first.status_code == 202, first.text
    assert "Idempotent-Replayed" not in first.headers
    worker.run_until_idle()

    replay = world.post_grade(body, **{"Idempotency-Key": "k-1"})

    assert replay.status_code == 202, replay.text
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.headers["Location"] == first.headers["Location"]
    # The stored answer, byte for byte: still "pending" although the grade has been delivered since.
    assert replay.json() == first.json()
    current = world.get(first.headers["Location"]).json()
    assert (current["revision"], current["status"]) == (1, "delivered")
    assert world.gradebook()[0]["writes"] == 1


def test_same_key_with_another_body_is_409_and_changes_nothing(world: World, worker: DeliveryWorker) -> None:
    stored = world.post_grade(grade_body(world, percentage=0.5), **{"Idempotency-Key": "k-1"}).json()

    response = world.post_grade(grade_body(world, percentage=0.9), **{"Idempotency-Key": "k-1"})

    assert_error(response, 409, "idempotency_key_reused", "Idempotency-Key")
    assert world.get(f"/v1/grades/{stored['id']}").json() == stored
    worker.run_until_idle()
    assert [e["scoreGiven"] for e in world.gradebook()] == [5.0]


def test_over_long_idempotency_key_is_422(world: World, worker: DeliveryWorker) -> None:
    response = world.post_grade(grade_body(world), **{"Idempotency-Key": "k" * 256})

    assert_error(response, 422, "invalid_input", "Idempotency-Key")
    assert_nothing_stored(world, worker)


def test_key_of_a_refused_request_can_be_reused(world: World) -> None:
    refused = world.post_grade(grade_body(world, percentage=80), **{"Idempotency-Key": "k-1"})
    assert_error(refused, 422, "invalid_input", "percentage")

    response = world.post_grade(grade_body(world, percentage=0.8), **{"Idempotency-Key": "k-1"})

    assert response.status_code == 202, response.text
    assert "Idempotent-Replayed" not in response.headers


# --- GET /v1/grades: filters, paging and query rules -------------------------------------------------------


@pytest.fixture
def three_grades(world: World) -> list[dict[str, Any]]:
    """Ada and Alan on quiz-1 (pending), Ada on the unplaced assignment (unroutable), in that order."""
    grades = []
    for assignment, student in [("quiz-1", 0), ("quiz-1", 1), ("unplaced", 0)]:
        response = world.post_grade(grade_body(world, assignmentID=assignment, userID=world.students[student]))
        assert response.status_code == 202, response.text
        grades.append(response.json())
    return grades


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param({}, [0, 1, 2], id="all-oldest-first"),
        pytest.param({"assignmentID": "quiz-1"}, [0, 1], id="assignmentID"),
        pytest.param({"userID": "student-0"}, [0, 2], id="userID"),
        pytest.param({"status": "unroutable"}, [2], id="status-unroutable"),
        pytest.param({"status": "pending"}, [0, 1], id="status-pending"),
        pytest.param({"assignmentID": "quiz-1", "userID": "student-1"}, [1], id="assignmentID-and-userID"),
        pytest.param({"status": "delivered"}, [], id="status-none-match"),
    ],
)
def test_list_filters(
    world: World, three_grades: list[dict[str, Any]], query: dict[str, str], expected: list[int]
) -> None:
    params = {k: world.students[int(v[-1])] if v.startswith("student-") else v for k, v in query.items()}
    response = world.get("/v1/grades", params=params)

    assert response.status_code == 200, response.text
    assert [g["id"] for g in response.json()["grades"]] == [three_grades[i]["id"] for i in expected]


def test_cursor_paging_returns_each_grade_once(world: World, three_grades: list[dict[str, Any]]) -> None:
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(3):
        params = {"limit": "1", **({"cursor": cursor} if cursor else {})}
        page = world.get("/v1/grades", params=params).json()
        assert len(page["grades"]) == 1
        seen.append(page["grades"][0]["id"])
        cursor = page["nextCursor"]
    assert seen == [g["id"] for g in three_grades]
    assert cursor is None


@pytest.mark.parametrize(
    ("params", "field"),
    [
        pytest.param({"cursor": "garbage"}, "cursor", id="cursor-garbage"),
        pytest.param({"limit": "0"}, "limit", id="limit-0"),
        pytest.param({"limit": "1000"}, "limit", id="limit-1000"),
        pytest.param({"limit": "ten"}, "limit", id="limit-not-a-number"),
        pytest.param({"status": "superseded"}, "status", id="status-unknown"),
        pytest.param({"assignmentID": "bad id!"}, "assignmentID", id="assignmentID-bad"),
        pytest.param({"sort": "desc"}, "sort", id="unknown-param"),
    ],
)
def test_bad_list_query_is_422(world: World, params: dict[str, str], field: str) -> None:
    assert_error(world.get("/v1/grades", params=params), 422, "invalid_input", field)


def forged_cursor(value: Any) -> str:
    """A cursor is base64 of JSON [createdAt, id]; a forged one must not reach the database unchecked."""
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


HOSTILE_QUERIES = [
    pytest.param("/v1/grades/a%00b", 404, id="grade-id-NUL"),
    pytest.param("/v1/grades?userID=a%00b", 422, id="userID-filter-NUL"),
    pytest.param("/v1/grades?cursor=" + forged_cursor(["2026-01-01", "a\x00"]), 422, id="cursor-NUL"),
    pytest.param("/v1/grades?cursor=" + forged_cursor(["2026-01-01", "\ud800"]), 422, id="cursor-surrogate"),
]


@pytest.mark.parametrize(("path", "status"), HOSTILE_QUERIES)
def test_hostile_read_is_never_a_500(world: World, path: str, status: int) -> None:
    response = world.get(path)

    assert_error(response, status)


# --- context nesting: a limit in the schema, and never a 500 from Python's recursion ------------------------


def nested(depth: int) -> dict[str, Any]:
    """A context of `depth` levels of objects, built without recursion."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize("depth", [pytest.param(21, id="21-deep"), pytest.param(970, id="970-deep")])
def test_context_nested_deeper_than_the_limit_is_a_422(world: World, worker: DeliveryWorker, depth: int) -> None:
    # Lists, two bytes a level, so 970 levels stay under the 4 KB limit; written out as text because json.dumps
    # of so deep a value would itself hit Python's recursion limit.
    context = '{"a":' + "[" * (depth - 1) + "]" * (depth - 1) + "}"
    body = json.dumps(grade_body(world))[:-1] + ', "context": ' + context + "}"
    headers = world.headers(**{"Content-Type": "application/json"})
    response = world.http.post(world.url("/v1/grade"), data=body, headers=headers)

    error = assert_error(response, 422, "invalid_input", field="context")
    assert "20 levels" in error["fields"]["context"][0]
    assert_nothing_stored(world, worker)


def test_context_at_the_depth_limit_is_accepted(world: World) -> None:
    response = world.post_grade(grade_body(world, context=nested(20)))

    assert response.status_code == 202, response.text
    assert world.get(response.headers["Location"]).json()["context"] == nested(20)


def test_body_nested_past_what_json_can_parse_is_a_400(world: World, worker: DeliveryWorker) -> None:
    body = '{"assignmentID": "quiz-1", "context": ' + '{"a":' * 5000 + "{}" + "}" * 5000 + "}"
    headers = world.headers(**{"Content-Type": "application/json"})
    response = world.http.post(world.url("/v1/grade"), data=body, headers=headers)

    error = assert_error(response, 400, "malformed_json")
    assert "nested" in error["message"]
    assert_nothing_stored(world, worker)
