"""Webhooks (issue 15): an app registers endpoints with its district-app token and hears what happened to each
grade, signed as the Standard Webhooks specification says. Every request reaches a real receiver on 127.0.0.1
that verifies it with the `standardwebhooks` package from PyPI (tests/fakes/webhook_receiver.py).

- The endpoints' API: register (the secret once), list, read, change, disable, rotate the secret, remove;
  scoped to the district and the app, refused to user tokens, URLs by the rules LMS URLs follow.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from gateway.services.directory import authorize_app, create_app_partner, create_district
from tests.assertions import assert_error
from tests.factories import World, build_world
from tests.fakes.webhook_receiver import WebhookReceiver

ALL_EVENTS = [
    "grade.delivered",
    "grade.failed",
    "grade.retrying",
    "grade.awaiting_launch",
    "grade.unroutable",
    "grade.superseded",
]


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    # The receiver listens on 127.0.0.1, which only tests (and on-site apps) may allow, as for LMS URLs.
    return {"webhook_allow_private_addresses": True}


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as fake:
        yield fake
        assert fake.problems == [], "a webhook request did not verify with standardwebhooks"


def register(world: World, url: str, events: list[str] | None = None, token: str | None = None) -> requests.Response:
    return world.http.post(
        world.url("/v1/webhooks"), json={"url": url, "events": events or ALL_EVENTS}, headers=world.headers(token)
    )


def registered(world: World, receiver: WebhookReceiver, events: list[str] | None = None) -> dict[str, Any]:
    response = register(world, receiver.url, events)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    receiver.secrets.append(created["secret"])
    return created


def other_world(world: World, *, same_app: bool) -> tuple[str, str]:
    """(district id, district-app token) of a second district: the same app authorized there, or another app in
    the world's district."""
    with world.session() as session:
        if same_app:
            district = create_district(session, "Other District")
            return district.id, authorize_app(session, world.app_id, district.id).raw
        partner = create_app_partner(session, "Other App", "https://other.example/callback").app
        return world.district_id, authorize_app(session, partner.id, world.district_id).raw


# --- the endpoints' API ---------------------------------------------------------------------------------------


def test_register_read_list_change_and_remove_an_endpoint(world: World, receiver: WebhookReceiver) -> None:
    response = register(world, receiver.url, ["grade.failed", "grade.delivered"])

    assert response.status_code == 201, response.text
    created = response.json()
    assert created["url"] == receiver.url
    assert created["events"] == ["grade.delivered", "grade.failed"]
    assert created["secret"].startswith("whsec_") and len(created["secret"]) > 40
    assert (created["disabled"], created["failing"], created["pending"]) == (False, False, 0)
    hook = f"/v1/webhooks/{created['id']}"

    read = world.get(hook)
    assert read.status_code == 200, read.text
    assert "secret" not in read.json() and read.json()["events"] == ["grade.delivered", "grade.failed"]
    listed = world.get("/v1/webhooks").json()["webhooks"]
    assert [w["id"] for w in listed] == [created["id"]] and "secret" not in listed[0]

    patched = world.http.patch(
        world.url(hook), json={"events": ["grade.superseded"], "url": receiver.url + "/v2"}, headers=world.headers()
    )
    assert patched.status_code == 200, patched.text
    assert (patched.json()["events"], patched.json()["url"]) == (["grade.superseded"], receiver.url + "/v2")

    disabled = world.http.patch(world.url(hook), json={"disabled": True}, headers=world.headers())
    assert (disabled.json()["disabled"], disabled.json()["disabledBy"]) == (True, "app")
    enabled = world.http.patch(world.url(hook), json={"disabled": False}, headers=world.headers())
    assert (enabled.json()["disabled"], enabled.json()["disabledBy"]) == (False, None)

    removed = world.http.delete(world.url(hook), headers=world.headers())
    assert removed.status_code == 204 and removed.content == b""
    assert_error(world.get(hook), 404, "webhook_not_found")
    assert world.get("/v1/webhooks").json()["webhooks"] == []


def test_rotating_gives_a_new_secret_once(world: World, receiver: WebhookReceiver) -> None:
    created = registered(world, receiver)

    rotated = world.http.post(world.url(f"/v1/webhooks/{created['id']}/rotate-secret"), headers=world.headers())

    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["secret"].startswith("whsec_") and rotated.json()["secret"] != created["secret"]
    assert "secret" not in world.get(f"/v1/webhooks/{created['id']}").json()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"events": ["grade.delivered"]}, "url", id="no-url"),
        pytest.param({"url": "ftp://example.com/x", "events": ["grade.delivered"]}, "url", id="not-http"),
        pytest.param({"url": "https://example.com/x", "events": []}, "events", id="no-events"),
        pytest.param({"url": "https://example.com/x", "events": ["grade.eaten"]}, "events[0]", id="unknown-event"),
        pytest.param(
            {"url": "https://example.com/x", "events": ["grade.failed", "grade.failed"]}, "events", id="repeated"
        ),
        pytest.param({"url": "https://example.com/x", "events": ["grade.failed"], "secret": "x"}, "secret", id="extra"),
    ],
)
def test_a_bad_registration_names_the_field(world: World, body: dict[str, Any], field: str) -> None:
    response = world.http.post(world.url("/v1/webhooks"), json=body, headers=world.headers())

    assert_error(response, 422, "invalid_input", field)
    assert world.get("/v1/webhooks").json()["webhooks"] == []


def test_a_user_token_may_not_manage_webhooks(world: World, receiver: WebhookReceiver) -> None:
    created = registered(world, receiver)
    student = world.user_token(world.students[0])

    assert_error(register(world, receiver.url, token=student), 403)
    assert_error(world.get("/v1/webhooks", token=student), 403)
    assert_error(world.get(f"/v1/webhooks/{created['id']}", token=student), 403)
    patch = world.http.patch(
        world.url(f"/v1/webhooks/{created['id']}"), json={"disabled": True}, headers=world.headers(student)
    )
    assert_error(patch, 403)
    assert world.get(f"/v1/webhooks/{created['id']}").json()["disabled"] is False


@pytest.mark.parametrize("same_app", [True, False], ids=["same-app-other-district", "other-app-same-district"])
def test_endpoints_are_scoped_to_the_district_and_the_app(
    world: World, receiver: WebhookReceiver, same_app: bool
) -> None:
    created = registered(world, receiver)
    _district, token = other_world(world, same_app=same_app)
    hook = f"/v1/webhooks/{created['id']}"

    assert world.get("/v1/webhooks", token=token).json()["webhooks"] == []
    assert_error(world.get(hook, token=token), 404, "webhook_not_found")
    patch = world.http.patch(world.url(hook), json={"url": "https://evil.example/x"}, headers=world.headers(token))
    assert_error(patch, 404, "webhook_not_found")
    assert_error(world.http.post(world.url(hook + "/rotate-secret"), headers=world.headers(token)), 404)
    assert_error(world.http.delete(world.url(hook), headers=world.headers(token)), 404)
    assert world.get(hook).json()["url"] == receiver.url


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/hooks",
        "https://127.0.0.1/hooks",
        "https://10.1.2.3/hooks",
        "https://[::1]/hooks",
        "https://169.254.169.254/latest",
        "https://localhost/hooks",
    ],
)
def test_webhook_urls_follow_the_address_rules_of_lms_urls(app: Any, live_server: Any, http: Any, url: str) -> None:
    app.config["PASSBACK"].webhook_allow_private_addresses = False
    world = build_world(app, live_server.url, http)

    assert_error(register(world, url), 422, "invalid_input", "url")
    assert register(world, "https://hooks.example.com/passback").status_code == 201
