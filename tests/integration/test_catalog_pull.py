"""An app with a catalog URL: Passback pulls it with a short-lived token the app checks against /v1/me,
validates each entry, caches the answer, and serves the last good copy when a pull fails."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from gateway.models import ApiToken, App, CatalogSnapshot, utcnow
from tests.factories import World
from tests.fakes.catalog_app import CatalogApp, catalog_body

GOOD = {"name": "Pulled quiz", "id": "pulled-1", "type": "assignment", "description": "d", "standards": ["S.1"]}


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"catalog_cache_seconds": 300.0}


def _use_catalog_url(world: World, url: str | None) -> None:
    with world.session() as session:
        session.execute(update(App).where(App.id == world.app_id).values(catalog_url=url))


def _expire_cache(world: World) -> None:
    long_ago = utcnow() - timedelta(days=1)
    with world.session() as session:
        session.execute(
            update(CatalogSnapshot).where(CatalogSnapshot.fetched_at.is_not(None)).values(fetched_at=long_ago)
        )
        session.execute(update(CatalogSnapshot).values(last_error_at=None))


def test_pull_sends_a_read_only_token_the_app_can_check(world: World) -> None:
    with CatalogApp(world.base_url, lambda me: (200, catalog_body(GOOD))) as catalog:
        _use_catalog_url(world, catalog.url)
        response = world.get("/v1/assignments")

        assert response.status_code == 200, response.text
        body = response.json()
        assert body["source"] == "pull" and body["stale"] is False and body["problems"] == []
        assert [(a["id"], a["name"], a["type"], a["standards"]) for a in body["assignments"]] == [
            ("pulled-1", "Pulled quiz", "assignment", ["S.1"])
        ]
        [me] = catalog.seen_me
        assert me["type"] == "district_app" and me["data"]["district"] == world.district_id
        assert me["data"]["scopes"] == ["me:read"]

    # The pulled assignment can now receive grades.
    assert (
        world.post_grade({"assignmentID": "pulled-1", "userID": world.students[0], "percentage": 1}).status_code == 202
    )
    # The pull token expires quickly and cannot post grades.
    with world.session() as session:
        pull_token = session.query(ApiToken).filter(ApiToken.label == "catalog pull").one()
        assert pull_token.expires_at is not None
        assert (pull_token.expires_at - pull_token.created_at).total_seconds() <= 300


def test_teacher_token_tailors_the_pull(world: World) -> None:
    def per_user(me: dict[str, Any]) -> tuple[int, bytes]:
        return 200, catalog_body({**GOOD, "name": f"for {me['type']} {me['data']['id']}"})

    with CatalogApp(world.base_url, per_user) as catalog:
        _use_catalog_url(world, catalog.url)
        user_token = world.user_token(world.students[0])
        body = world.get("/v1/assignments", token=user_token).json()
        assert body["assignments"][0]["name"] == f"for student {world.students[0]}"


def test_bad_entries_are_reported_not_silently_dropped(world: World) -> None:
    entries = [GOOD, {"id": "no name", "type": "assignment"}, {"name": "x", "id": "y", "type": "video"}, GOOD]
    with CatalogApp(world.base_url, lambda me: (200, catalog_body(*entries))) as catalog:
        _use_catalog_url(world, catalog.url)
        body = world.get("/v1/assignments").json()
    assert [a["id"] for a in body["assignments"]] == ["pulled-1"]
    problems = {p["index"]: p for p in body["problems"]}
    assert set(problems) == {1, 2, 3}
    assert "name" in problems[1]["errors"] and "id" in problems[1]["errors"]
    assert "type" in problems[2]["errors"]
    assert problems[3]["errors"] == {"id": ["Duplicate id in the catalog."]}


def test_answer_is_cached_and_a_failed_pull_serves_the_last_good_copy(world: World) -> None:
    answers = [(200, catalog_body(GOOD)), (503, b"down"), (200, b"{not json")]

    with CatalogApp(world.base_url, lambda me: answers.pop(0)) as catalog:
        _use_catalog_url(world, catalog.url)
        first = world.get("/v1/assignments").json()
        again = world.get("/v1/assignments").json()
        assert catalog.requests_seen == 1, "a fresh copy is served from cache"
        assert again == first

        _expire_cache(world)
        stale = world.get("/v1/assignments").json()
        assert stale["stale"] is True and stale["assignments"] == first["assignments"]

        _expire_cache(world)
        stale_again = world.get("/v1/assignments").json()
        assert stale_again["stale"] is True and catalog.requests_seen == 3


def test_failed_first_pull_is_a_clear_502(world: World) -> None:
    with CatalogApp(world.base_url, lambda me: (200, b'{"items": []}')) as catalog:
        _use_catalog_url(world, catalog.url)
        response = world.get("/v1/assignments")
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "catalog_unavailable"
    assert "assignments" in response.json()["error"]["message"]


@pytest.mark.parametrize("settings_overrides", [{"catalog_cache_seconds": 300.0, "http_request_deadline": 0.5}])
def test_a_trickling_catalog_is_cut_at_the_request_deadline(world: World) -> None:
    """An app that sends its catalog a byte at a time (every read within the read timeout) is cut off at the
    total request deadline: the picker's catalog call answers with the catalog error instead of waiting."""
    with CatalogApp(world.base_url, lambda me: (200, catalog_body(GOOD)), trickle=0.05) as catalog:
        _use_catalog_url(world, catalog.url)
        response = world.get("/v1/assignments")
    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "catalog_unavailable"
    assert "within 0.5 s; cut off" in response.json()["error"]["message"]
