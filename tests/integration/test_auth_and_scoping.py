"""Who may call the API and what each token sees: bearer tokens (missing, bad, revoked, expired,
de-authorized), user tokens bound to their own user, and every read scoped to the token's district and app."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import requests
from flask import Flask
from sqlalchemy import func, select

from gateway.crypto import hash_token
from gateway.models import ApiToken, DistrictApp, Grade, TokenKind, utcnow
from gateway.services.catalog import upsert_assignments
from gateway.services.directory import (
    authorize_app,
    create_app_partner,
    create_district,
    create_user,
    issue_token,
    revoke_token,
)
from gateway.worker import DeliveryWorker
from tests.assertions import assert_error
from tests.conftest import LiveServer
from tests.factories import World, build_world


def post(world: World, student: int = 0, token: str | None = None) -> requests.Response:
    """A valid grade for one of the world's students on quiz-1."""
    return world.post_grade({"assignmentID": "quiz-1", "userID": world.students[student], "percentage": 0.8}, token)


def grade_ids(world: World, token: str | None = None, **params: str) -> list[str]:
    response = world.get("/v1/grades", token=token, params=params)
    assert response.status_code == 200, response.text
    return [g["id"] for g in response.json()["grades"]]


def assert_nothing_stored(world: World, worker: DeliveryWorker) -> None:
    assert grade_ids(world) == []
    worker.run_until_idle()
    assert world.gradebook() == []


# --- Bearer tokens ---------------------------------------------------------------------------------------

ENDPOINTS = [
    ("POST", "/v1/grade"),
    ("GET", "/v1/grades"),
    ("GET", "/v1/grades/0123456789abcdef01234567"),
    ("GET", "/v1/assignments"),
    ("POST", "/v1/assignments"),
    ("PUT", "/v1/assignments/quiz-1"),
    ("DELETE", "/v1/assignments/quiz-1"),
    ("GET", "/v1/me"),
]


def test_every_api_endpoint_needs_a_token(world: World) -> None:
    body = {"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.8, "name": "Renamed"}
    for method, path in ENDPOINTS:
        response = world.http.request(method, world.url(path), json=body)
        assert_error(response, 401, "missing_token")
        assert response.headers["WWW-Authenticate"].startswith("Bearer"), (method, path)
    assert grade_ids(world) == []
    first = world.get("/v1/assignments").json()["assignments"][0]
    assert (first["id"], first["name"], first["archived"]) == ("quiz-1", "Quiz 1", False)


@pytest.mark.parametrize(
    ("authorization", "code"),
    [
        pytest.param(None, "missing_token", id="no-header"),
        pytest.param("Bearer", "missing_token", id="bearer-without-token"),
        pytest.param("Basic dXNlcjpwYXNz", "missing_token", id="basic-scheme"),
        pytest.param("Bearer garbage", "invalid_token", id="unknown-token"),
    ],
)
def test_bad_authorization_is_401_and_stores_nothing(
    world: World, worker: DeliveryWorker, authorization: str | None, code: str
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    body = {"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.8}
    response = world.http.post(world.url("/v1/grade"), json=body, headers=headers)

    assert_error(response, 401, code)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert_nothing_stored(world, worker)


def _revoke(world: World, session: Any, token: str) -> None:
    revoke_token(session, token)


def _expire(world: World, session: Any, token: str) -> None:
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
    row.expires_at = utcnow() - timedelta(seconds=1)


def _deauthorize_app(world: World, session: Any, token: str) -> None:
    link = session.scalar(
        select(DistrictApp).where(DistrictApp.app_id == world.app_id, DistrictApp.district_id == world.district_id)
    )
    link.revoked_at = utcnow()


@pytest.mark.parametrize(
    "invalidate",
    [
        pytest.param(_revoke, id="revoked"),
        pytest.param(_expire, id="expired"),
        pytest.param(_deauthorize_app, id="app-deauthorized"),
    ],
)
def test_token_that_worked_is_refused_once_invalid(
    world: World, worker: DeliveryWorker, invalidate: Callable[[World, Any, str], None]
) -> None:
    with world.session() as session:
        token = issue_token(
            session, TokenKind.DISTRICT_APP, world.district_id, world.app_id, scopes="grades:write grades:read"
        ).raw
    assert world.get("/v1/me", token=token).status_code == 200
    with world.session() as session:
        invalidate(world, session, token)

    response = post(world, token=token)

    assert_error(response, 401, "invalid_token")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert_error(world.get("/v1/me", token=token), 401, "invalid_token")
    # Read the database itself: a de-authorized app has no working token left to ask with.
    with world.session() as session:
        assert session.scalar(select(func.count()).select_from(Grade)) == 0
    worker.run_until_idle()
    assert world.gradebook() == []


# --- GET /v1/me --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["district_app", "student", "teacher"])
def test_me_says_what_the_token_is(world: World, role: str) -> None:
    user_id: str | None = None
    token = world.token
    if role == "student":
        user_id = world.students[0]
    elif role == "teacher":
        with world.session() as session:
            user_id = create_user(session, world.district_id, name="Grace", role="teacher").id
    if user_id is not None:
        token = world.user_token(user_id)

    response = world.get("/v1/me", token=token)

    assert response.status_code == 200, response.text
    me = response.json()
    assert me["type"] == me["data"]["type"] == role
    assert me["data"]["district"] == world.district_id
    assert me["data"]["app"] == world.app_id
    assert me["data"]["id"] == user_id


# --- User tokens: bound to their user -----------------------------------------------------------------------


@pytest.mark.parametrize("given", ["omitted", "own-id"])
def test_user_token_posts_for_its_own_user(world: World, given: str) -> None:
    token = world.user_token(world.students[0])
    user_id = world.students[0] if given == "own-id" else None

    response = world.post_grade(
        {"assignmentID": "quiz-1", "percentage": 0.8, **({"userID": user_id} if user_id else {})}, token=token
    )

    assert response.status_code == 202, response.text
    assert response.json()["userID"] == world.students[0]


def test_user_token_cannot_post_for_another_student(world: World, worker: DeliveryWorker) -> None:
    token = world.user_token(world.students[0])

    response = post(world, student=1, token=token)

    assert_error(response, 403, "user_mismatch", "userID")
    assert_nothing_stored(world, worker)


def test_user_token_sees_only_its_own_grades(world: World) -> None:
    own = post(world, student=0).json()["id"]
    other = post(world, student=1).json()["id"]
    token = world.user_token(world.students[0])

    assert world.get(f"/v1/grades/{own}", token=token).status_code == 200
    assert_error(world.get(f"/v1/grades/{other}", token=token), 404, "grade_not_found")
    assert grade_ids(world, token=token) == [own]
    assert grade_ids(world, token=token, userID=world.students[1]) == []


# --- District and app scoping -------------------------------------------------------------------------------


def _other_district_and_app(world: World, app: Flask, live_server: LiveServer) -> str:
    """A whole second world: its own district, app, catalog (with a quiz-1 too) and students."""
    return build_world(app, live_server.url, world.http, district_name="Other").token


def _same_app_other_district(world: World, app: Flask, live_server: LiveServer) -> str:
    with world.session() as session:
        district = create_district(session, "Other")
        return authorize_app(session, world.app_id, district.id).raw


def _other_app_same_district(world: World, app: Flask, live_server: LiveServer) -> str:
    with world.session() as session:
        partner = create_app_partner(session, "Reading App", "https://reading.example/callback").app
        upsert_assignments(session, partner.id, [{"id": "quiz-1", "name": "Reading quiz 1"}])
        return authorize_app(session, partner.id, world.district_id).raw


OUTSIDERS = [
    pytest.param(_other_district_and_app, id="other-district-other-app"),
    pytest.param(_same_app_other_district, id="same-app-other-district"),
    pytest.param(_other_app_same_district, id="other-app-same-district"),
]


@pytest.mark.parametrize("outsider", OUTSIDERS)
def test_outsider_cannot_read_the_grade(
    world: World, app: Flask, live_server: LiveServer, outsider: Callable[[World, Flask, LiveServer], str]
) -> None:
    grade_id = post(world).json()["id"]
    token = outsider(world, app, live_server)

    assert_error(world.get(f"/v1/grades/{grade_id}", token=token), 404, "grade_not_found")
    assert grade_ids(world, token=token) == []
    assert grade_ids(world, token=token, userID=world.students[0]) == []
    assert grade_ids(world) == [grade_id]


@pytest.mark.parametrize("outsider", OUTSIDERS[:2])
def test_other_district_cannot_grade_this_districts_student(
    world: World,
    worker: DeliveryWorker,
    app: Flask,
    live_server: LiveServer,
    outsider: Callable[[World, Flask, LiveServer], str],
) -> None:
    token = outsider(world, app, live_server)

    assert_error(post(world, token=token), 404, "user_not_found", "userID")
    assert grade_ids(world, token=token) == []
    assert_nothing_stored(world, worker)


# --- The OpenAPI document ---------------------------------------------------------------------------------


def test_openapi_document_lists_the_api(world: World) -> None:
    response = world.http.get(world.url("/openapi.json"))

    assert response.status_code == 200, response.text
    paths = response.json()["paths"]
    for path in ("/v1/grade", "/v1/grades/{grade_id}", "/v1/grades", "/v1/assignments", "/v1/me"):
        assert path in paths, sorted(paths)
