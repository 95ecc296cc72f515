"""The picker's answer goes only to an https URL on the platform's hosts, and every page carries security
headers: a nonce CSP, nosniff, no referrer to other sites; the LMS may frame the LTI pages, nobody frames the
dashboard."""

from __future__ import annotations

import dataclasses
import re

import pytest
import requests
from joserfc.jwk import RSAKey
from sqlalchemy import func, select

from gateway.composition import services_of
from gateway.models import DeepLinkSession
from gateway.security_headers import origin_of
from gateway.services.lms import update_lms_settings
from tests.conftest import LiveServer
from tests.factories import World
from tests.integration.test_dashboard import PASSWORD, staff_of
from tests.integration.test_lti13_deep_linking import RETURN_URL, deep_linking_launch, open_picker, platform_key

__all__ = ["platform_key"]  # the fixture, shared with the picker's own tests


def _csp(response: requests.Response) -> dict[str, str]:
    policy = response.headers.get("Content-Security-Policy", "")
    return {d.split(" ", 1)[0]: d.split(" ", 1)[1] if " " in d else "" for d in (p.strip() for p in policy.split(";"))}


def _assert_common(response: requests.Response) -> dict[str, str]:
    assert response.headers.get("X-Content-Type-Options") == "nosniff"
    assert response.headers.get("Referrer-Policy") == "same-origin"
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
    assert _csp_allows(framers, "https://school.instructure.com"), "hosted Canvas frames from the school's domain"
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


def _referer_a_browser_sends(policy: str, page: str, target: str) -> str | None:
    """The Referer a browser puts on a form post from `page` to `target` under a Referrer-Policy (the policies
    Passback has used; W3C Referrer Policy §3)."""
    same_origin = origin_of(page) == origin_of(target)
    if policy == "no-referrer":
        return None
    if policy == "same-origin":
        return page.split("#", 1)[0] if same_origin else None
    raise AssertionError(f"unexpected Referrer-Policy {policy!r}")


def test_dashboard_sign_in_over_https_works_under_the_referrer_policy(world: World) -> None:
    """Flask-WTF's https CSRF check (WTF_CSRF_SSL_STRICT) refuses a POST without a same-origin Referer, so the
    policy must let the browser send one to Passback itself."""
    from gateway import create_app

    email = staff_of(world)
    settings = dataclasses.replace(world.app.config["PASSBACK"], public_url="https://localhost")
    app = create_app(settings, database=services_of(world.app).database)
    client = app.test_client()
    page_url = "https://localhost/dashboard/login"
    page = client.get("/dashboard/login", base_url="https://localhost")
    assert page.status_code == 200
    policy = page.headers["Referrer-Policy"]
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True)).group(1)
    headers = {}
    if (referer := _referer_a_browser_sends(policy, page_url, page_url)) is not None:
        headers["Referer"] = referer
    signed_in = client.post(
        "/dashboard/login",
        base_url="https://localhost",
        data={"email": email, "password": PASSWORD, "csrf_token": token},
        headers=headers,
    )
    assert signed_in.status_code == 302, signed_in.get_data(as_text=True)
    assert client.get("/dashboard/", base_url="https://localhost").status_code == 200
    assert policy == "same-origin"
    # The one-time setup link keeps its token in the fragment, which no Referer ever carries.
    assert _referer_a_browser_sends(policy, "https://localhost/dashboard/setup#secret", page_url) == (
        "https://localhost/dashboard/setup"
    )
    assert _referer_a_browser_sends(policy, page_url, "https://lms.example/") is None


def _csp_allows(sources: list[str], origin: str) -> bool:
    """Whether a frame-ancestors list admits this origin (CSP Level 3 §6.7.2.7 host-source matching, the parts
    Passback uses: scheme, `*.` host wildcards, explicit ports)."""
    scheme, _, rest = origin.partition("://")
    host, _, port = rest.partition(":")
    for source in sources:
        if source == "*":
            return True
        s_scheme, _, s_rest = source.partition("://")
        s_host, _, s_port = s_rest.partition(":")
        if s_scheme != scheme or (s_port or "") != (port or ""):
            continue
        if s_host == host or (s_host.startswith("*.") and host.endswith(s_host[1:])):
            return True
    return False


def test_a_schoology_preset_picker_may_be_framed_by_schoology_pages(
    world: World, live_server: LiveServer, platform_key: RSAKey
) -> None:
    """Schoology frames tools from app.schoology.com (or a district's *.schoology.com), not from the LTI service
    host its preset registers."""
    with world.session() as session:
        update_lms_settings(session, services_of(world.app).box, world.district_id, "Canvas", {"platform": "schoology"})
    page = world.http.get(open_picker(world, platform_key))
    assert page.status_code == 200
    framers = _csp(page)["frame-ancestors"].split()
    assert _csp_allows(framers, "https://app.schoology.com")
    assert _csp_allows(framers, "https://district.schoology.com")
    assert not _csp_allows(framers, "https://evil.example") and not _csp_allows(framers, "https://schoology.com.evil")
