"""The picker's answer goes only to an https URL on the platform's hosts, and every page carries security
headers: a nonce CSP, nosniff, no referrer; the LMS may frame the LTI pages, nobody frames the dashboard."""

from __future__ import annotations

import re

import pytest
import requests
from joserfc.jwk import RSAKey
from sqlalchemy import func, select

from gateway.models import DeepLinkSession
from tests.conftest import LiveServer
from tests.factories import World
from tests.integration.test_lti13_deep_linking import RETURN_URL, deep_linking_launch, open_picker, platform_key

__all__ = ["platform_key"]  # the fixture, shared with the picker's own tests


def _csp(response: requests.Response) -> dict[str, str]:
    policy = response.headers.get("Content-Security-Policy", "")
    return {d.split(" ", 1)[0]: d.split(" ", 1)[1] if " " in d else "" for d in (p.strip() for p in policy.split(";"))}


def _assert_common(response: requests.Response) -> dict[str, str]:
    assert response.headers.get("X-Content-Type-Options") == "nosniff"
    assert response.headers.get("Referrer-Policy") == "no-referrer"
    csp = _csp(response)
    assert csp.get("default-src") == "'none'" and csp.get("base-uri") == "'none'"
    assert "'unsafe-inline'" not in csp.get("script-src", "")
    return csp


@pytest.mark.parametrize(
    "return_url",
    [
        pytest.param("javascript:alert(document.domain)", id="javascript"),
        pytest.param("JavaScript://canvas.example/%0aalert(1)", id="javascript-with-host"),
        pytest.param("data:text/html,<script>alert(1)</script>", id="data"),
        pytest.param("https://evil.example/deep_linking_response", id="another-host"),
        pytest.param("http://canvas.example/deep_linking_response", id="plain-http"),
    ],
)
def test_a_return_url_off_the_platforms_https_hosts_is_refused(
    world: World, live_server: LiveServer, platform_key: RSAKey, return_url: str
) -> None:
    refused = deep_linking_launch(world, platform_key, return_url=return_url)
    assert refused.status_code == 400, refused.text
    assert refused.headers["Content-Type"].startswith("text/html")
    assert "deep_link_return_url" in refused.text
    with world.session() as session:
        assert session.scalar(select(func.count()).select_from(DeepLinkSession)) == 0, "no picker was opened"


def test_the_lms_may_frame_the_picker_and_receive_its_answer(
    world: World, live_server: LiveServer, platform_key: RSAKey
) -> None:
    picker_url = open_picker(world, platform_key)
    page = world.http.get(picker_url)
    assert page.status_code == 200
    csp = _assert_common(page)
    framers = csp["frame-ancestors"].split()
    # The registered hosts (issuer, the canvas preset's sso host) and the preset's school domains.
    assert {"https://canvas.example", "https://sso.canvaslms.com", "https://*.instructure.com"} <= set(framers)
    assert "*" not in framers and "'none'" not in framers
    assert "X-Frame-Options" not in page.headers
    nonce = re.search(r"'nonce-([^']+)'", csp["style-src"]).group(1)
    assert f'<style nonce="{nonce}">' in page.text

    answer = world.http.post(picker_url, data={"assignment": f"{world.app_id}:quiz-1"})
    assert answer.status_code == 200
    csp = _assert_common(answer)
    form_action = csp["form-action"].split()
    assert form_action[:2] == ["'self'", "https://canvas.example"] and set(form_action[2:]) == set(framers)
    assert set(csp["frame-ancestors"].split()) == set(framers)
    nonce = re.search(r"'nonce-([^']+)'", csp["script-src"]).group(1)
    assert f'<script nonce="{nonce}">document.getElementById("return").submit();</script>' in answer.text
    assert f'action="{RETURN_URL.replace("&", "&amp;")}"' in answer.text


def test_launch_error_pages_may_be_framed_by_the_lms(world: World, live_server: LiveServer) -> None:
    refused = world.http.post(world.url("/lti/launch"), data={"id_token": "x", "state": "y"}, allow_redirects=False)
    assert 400 <= refused.status_code < 500
    csp = _assert_common(refused)
    assert csp["frame-ancestors"] == "*"
    lti11 = world.http.post(world.url("/lti11/launch"), data={"oauth_consumer_key": "nobody"})
    assert 400 <= lti11.status_code < 500 and _assert_common(lti11)["frame-ancestors"] == "*"


@pytest.mark.parametrize("path", ["/dashboard/login", "/v1/grades", "/openapi.json", "/healthz"])
def test_nobody_frames_the_dashboard_or_the_api(world: World, live_server: LiveServer, path: str) -> None:
    response = world.http.get(world.url(path), allow_redirects=False)
    csp = _assert_common(response)
    assert csp["frame-ancestors"] == "'none'"
    assert response.headers.get("X-Frame-Options") == "DENY"
