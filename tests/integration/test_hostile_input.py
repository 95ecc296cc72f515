"""Text no database can hold (NUL, a lone surrogate) at every door outside /v1 too: a 4xx naming the field and
the rule, JSON for machines and an HTML page for people, never a 500, and nothing stored or changed."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from sqlalchemy import func, select

from gateway.composition import services_of
from gateway.models import Base, StaffUser
from gateway.services.lms import add_lms_connection
from gateway.services.staff import create_staff
from tests.conftest import LiveServer
from tests.factories import World
from tests.fakes.lti11_consumer import Lti11Consumer
from tests.fakes.lti13_platform import Lti13Platform

PASSWORD = "correct horse battery"
EMAIL = "admin@district.example"
NUL = "a\x00b"
# What a browser or client sends for NUL in a URL.
NUL_URL = "a%00b"


@dataclass
class Doors:
    world: World
    lti13_connection_id: str
    lti11: Lti11Consumer
    browser: requests.Session  # a signed-in staff member

    def url(self, path: str) -> str:
        return self.world.url(path)

    def csrf(self) -> str:
        page = self.browser.get(self.url("/dashboard/"))
        match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert match, page.text[:300]
        return match.group(1)

    def snapshot(self) -> dict[str, Any]:
        """Row counts of every table, and the staff member's sign-in state: what a refused request must not change."""
        with self.world.session() as session:
            counts: dict[str, Any] = {
                t.name: session.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables
            }
            staff = session.scalar(select(StaffUser).where(StaffUser.email == EMAIL))
            counts["staff"] = (staff.failed_logins, staff.locked_until)
            return counts


def _signed_in(world: World) -> requests.Session:
    browser = requests.Session()
    page = browser.get(world.url("/dashboard/login"))
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    done = browser.post(
        world.url("/dashboard/login"),
        data={"email": EMAIL, "password": PASSWORD, "csrf_token": token},
        allow_redirects=False,
    )
    assert done.status_code == 302, done.text[:300]
    return browser


@pytest.fixture
def doors(world: World, live_server: LiveServer) -> Iterator[Doors]:
    with (
        Lti13Platform("https://lms.example", "passback-on-lms-1", "dep-1", session=world.http) as platform,
        Lti11Consumer("consumer-key-1", "shared-secret-0123456789abcdef", session=world.http) as consumer,
    ):
        box = services_of(world.app).box
        with world.session() as session:
            lti13 = add_lms_connection(session, box, world.district_id, "LMS", "lti13", platform.registration())
            add_lms_connection(
                session,
                box,
                world.district_id,
                "Canvas 1.1",
                "lti11",
                {"consumer_key": consumer.key, "shared_secret": consumer.secret, "allowed_hosts": ["127.0.0.1"]},
            )
            create_staff(session, world.district_id, EMAIL, PASSWORD)
            lti13_id = lti13.id
        browser = _signed_in(world)
        with browser:
            yield Doors(world, lti13_id, consumer, browser)


def _sandbox_auth(doors: Doors) -> dict[str, str]:
    from gateway.models import LmsConnection
    from gateway.services.lms import connection_settings

    with doors.world.session() as session:
        connection = session.get(LmsConnection, doors.world.connection_id)
        secret = connection_settings(services_of(doors.world.app).box, connection)["secret"]
    return {"Authorization": f"Bearer {secret}"}


def _post_login(doors: Doors, email: str) -> requests.Response:
    with requests.Session() as anonymous:
        page = anonymous.get(doors.url("/dashboard/login"))
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        return anonymous.post(
            doors.url("/dashboard/login"), data={"email": email, "password": PASSWORD, "csrf_token": token}
        )


def _post_setup(doors: Doors, token: str) -> requests.Response:
    with requests.Session() as anonymous:
        page = anonymous.get(doors.url("/dashboard/setup"))
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        return anonymous.post(
            doors.url("/dashboard/setup"), data={"token": token, "password": PASSWORD, "csrf_token": csrf}
        )


def _lti11_launch(doors: Doors, **fields: str) -> requests.Response:
    form = doors.lti11.launch_form(doors.url("/lti11/launch"), **fields)
    return requests.post(doors.url("/lti11/launch"), data=form, allow_redirects=False, timeout=5)


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


Send = Callable[[Doors], requests.Response]
# (sender, field the answer names, "html" or "json")
CASES: list[Any] = [
    # Without signing in.
    pytest.param(
        lambda d: requests.get(d.url(f"/lti/login?iss={NUL_URL}&login_hint=x&target_link_uri=x"), timeout=5),
        "iss",
        "html",
        id="lti-login-query-iss",
    ),
    pytest.param(
        lambda d: requests.post(
            d.url("/lti/login"),
            data={"iss": "https://lms.example", "login_hint": "x", "target_link_uri": "x", "client_id": NUL},
            timeout=5,
        ),
        "client_id",
        "html",
        id="lti-login-form-client_id",
    ),
    pytest.param(
        lambda d: requests.post(d.url("/lti/launch"), data={"state": NUL, "id_token": "x.y.z"}, timeout=5),
        "state",
        "html",
        id="lti-launch-state",
    ),
    pytest.param(lambda d: _lti11_launch(d, user_id=NUL), "user_id", "html", id="lti11-user_id"),
    pytest.param(
        lambda d: _lti11_launch(d, resource_link_id=NUL), "resource_link_id", "html", id="lti11-resource_link_id"
    ),
    pytest.param(lambda d: _lti11_launch(d, key=NUL), "oauth_consumer_key", "html", id="lti11-consumer-key"),
    pytest.param(lambda d: requests.get(d.url(f"/lti/config/{NUL_URL}"), timeout=5), "path", "html", id="lti-config"),
    pytest.param(lambda d: requests.get(d.url(f"/lti/picker/{NUL_URL}"), timeout=5), "path", "html", id="lti-picker"),
    pytest.param(
        lambda d: requests.get(d.url(f"/sandbox-lms/{NUL_URL}/health"), timeout=5),
        "path",
        "json",
        id="sandbox-lms-gradebook-path",
    ),
    pytest.param(
        lambda d: requests.get(
            d.url(f"/sandbox-lms/{d.world.connection_id}/gradebook?course={NUL_URL}"),
            headers=_sandbox_auth(d),
            timeout=5,
        ),
        "course",
        "json",
        id="sandbox-lms-course-query",
    ),
    pytest.param(
        lambda d: requests.put(
            d.url(f"/sandbox-lms/{d.world.connection_id}/courses/c/items/i/scores/{NUL_URL}"),
            json={"scoreGiven": 1, "scoreMaximum": 2},
            headers=_sandbox_auth(d),
            timeout=5,
        ),
        "path",
        "json",
        id="sandbox-lms-score-path",
    ),
    pytest.param(
        lambda d: requests.post(
            d.url("/oauth/tokens"),
            data={"grant_type": "authorization_code", "code": "x"},
            headers=_basic(NUL, "s"),
            timeout=5,
        ),
        "Authorization",
        "json",
        id="oauth-basic-client-id",
    ),
    pytest.param(
        lambda d: requests.post(
            d.url("/oauth/tokens"),
            data={"grant_type": "authorization_code", "code": "x", "client_id": NUL, "client_secret": "s"},
            timeout=5,
        ),
        "client_id",
        "json",
        id="oauth-form-client-id",
    ),
    pytest.param(
        lambda d: requests.post(
            d.url("/oauth/tokens"),
            json={"grant_type": "authorization_code", "code": "x", "client_id": NUL, "client_secret": "s"},
            timeout=5,
        ),
        "client_id",
        "json",
        id="oauth-json-client-id",
    ),
    pytest.param(lambda d: _post_login(d, EMAIL + "\x00"), "email", "html", id="dashboard-sign-in-email"),
    pytest.param(lambda d: _post_setup(d, NUL), "token", "html", id="dashboard-setup-token"),
    # Signed in.
    pytest.param(lambda d: d.browser.get(d.url(f"/dashboard/deliveries/{NUL_URL}")), "path", "html", id="delivery"),
    pytest.param(lambda d: d.browser.get(d.url(f"/dashboard/apps/{NUL_URL}")), "path", "html", id="app"),
    pytest.param(lambda d: d.browser.get(d.url(f"/dashboard/assignments/{NUL_URL}")), "path", "html", id="assignment"),
    pytest.param(lambda d: d.browser.get(d.url(f"/dashboard/placements/{NUL_URL}")), "path", "html", id="placement"),
    pytest.param(
        lambda d: d.browser.get(d.url(f"/dashboard/connections/{NUL_URL}/mappings")), "path", "html", id="mappings"
    ),
    pytest.param(
        lambda d: d.browser.post(d.url(f"/dashboard/connections/{NUL_URL}/pause"), data={"csrf_token": d.csrf()}),
        "path",
        "html",
        id="pause",
    ),
    pytest.param(
        lambda d: d.browser.get(d.url(f"/dashboard/sandbox?connection={NUL_URL}")),
        "connection",
        "html",
        id="sandbox-gradebook-query",
    ),
    pytest.param(
        lambda d: d.browser.post(
            d.url(f"/dashboard/connections/{d.world.connection_id}/mappings"),
            data={"csrf_token": d.csrf(), "app": d.world.app_id, "mappings": f"quiz-1, {NUL}, {NUL}"},
        ),
        "mappings",
        "html",
        id="mappings-form",
    ),
]


@pytest.mark.parametrize(("send", "field", "kind"), CASES)
def test_unstorable_text_at_any_door_is_a_4xx_that_changes_nothing(
    doors: Doors, send: Send, field: str, kind: str
) -> None:
    before = doors.snapshot()

    response = send(doors)

    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    content_type = response.headers.get("Content-Type", "")
    if kind == "html":
        assert content_type.startswith("text/html"), content_type
    else:
        assert content_type.startswith("application/json"), content_type
    assert field in response.text and "NUL" in response.text, "the answer names the field and the rule"
    assert doors.snapshot() == before, "nothing was stored or changed"


def _every_route(app: Any) -> list[tuple[str, str]]:
    """(method, path) of every route, each of its variables filled with a NUL-bearing value."""
    routes = []
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:>]+:)?[^>]+>", NUL_URL, rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            routes.append((method, path))
    return routes


@pytest.mark.parametrize("where", ["path", "query", "form", "json"])
def test_every_route_refuses_unstorable_text_in_path_query_and_body(doors: Doors, where: str) -> None:
    """Walks the URL map, so a route added later is covered without a new case here."""
    token = doors.csrf()
    failures = []
    for method, path in _every_route(doors.world.app):
        if where == "path" and NUL_URL not in path:
            continue  # nothing hostile to send in this route's path
        if where != "path":
            path = path.replace(NUL_URL, "x")
        kwargs: dict[str, Any] = {}
        if where == "query":
            path += f"?q={NUL_URL}"
        elif where == "form":
            kwargs["data"] = {"csrf_token": token, "field": NUL}
        elif where == "json":
            kwargs["json"] = {"field": NUL}
        if where in ("form", "json") and method == "GET":
            continue
        response = doors.browser.request(method, doors.url(path), allow_redirects=False, **kwargs)
        if not 400 <= response.status_code < 500:
            failures.append((method, path, response.status_code))
    assert failures == []


def test_a_json_body_too_deep_to_parse_is_a_4xx_at_the_token_endpoint(doors: Doors) -> None:
    body = '{"code": ' + "[" * 5000 + "]" * 5000 + "}"

    response = requests.post(
        doors.url("/oauth/tokens"), data=body, headers={"Content-Type": "application/json"}, timeout=5
    )

    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
