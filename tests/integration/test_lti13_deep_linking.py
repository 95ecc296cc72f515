"""The assignment picker: a teacher's LtiDeepLinkingRequest opens the catalog, search narrows it, and the
choice goes back to the platform as an LtiDeepLinkingResponse that verifies against Passback's JWKS."""

from __future__ import annotations

import re
import time
import uuid
from html import unescape
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from gateway.composition import services_of
from gateway.models import DeepLinkSession, User, utcnow
from gateway.services.lms import add_lms_connection
from tests.conftest import LiveServer
from tests.factories import World

ISS = "https://canvas.example"
CLAIM = "https://purl.imsglobal.org/spec/lti/claim/"
DL = "https://purl.imsglobal.org/spec/lti-dl/claim/"
RETURN_URL = "https://canvas.example/courses/3/deep_linking_response?data=abc"


@pytest.fixture
def platform_key(world: World) -> RSAKey:
    key = RSAKey.generate_key(2048, parameters={"kid": "canvas-1"}, auto_kid=False)
    with world.session() as session:
        add_lms_connection(
            session,
            services_of(world.app).box,
            world.district_id,
            "Canvas",
            "lti13",
            {
                "platform": "canvas",
                "issuer": ISS,
                "client_id": "10000000000001",
                "deployment_ids": ["7:abc"],
                "public_jwk": key.as_dict(private=False),
            },
        )
    return key


INSTRUCTOR = "http://purl.imsglobal.org/vocab/lis/v2/membership#Instructor"
LEARNER = "http://purl.imsglobal.org/vocab/lis/v2/membership#Learner"


def deep_linking_launch(
    world: World,
    key: RSAKey,
    accept_multiple: bool = True,
    roles: Any = (INSTRUCTOR,),
    return_url: str = RETURN_URL,
    **overrides: Any,
) -> requests.Response:
    """Log in and post a signed LtiDeepLinkingRequest; `overrides` replace claims (None removes one)."""
    login = world.http.post(
        world.url("/lti/login"),
        data={
            "iss": ISS,
            "login_hint": "t-1",
            "target_link_uri": world.url("/lti/launch"),
            "client_id": "10000000000001",
            "lti_deployment_id": "7:abc",
        },
        allow_redirects=False,
    )
    auth = parse_qs(urlsplit(login.headers["Location"]).query)
    assert urlsplit(login.headers["Location"]).netloc == "sso.canvaslms.com", "the canvas preset's auth URL"
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISS,
        "aud": ["10000000000001", "other"],
        "azp": "10000000000001",
        "sub": "t-1",
        "iat": now,
        "exp": now + 300,
        "nonce": auth["nonce"][0],
        "name": "Ms. Frizzle",
        "jti": str(uuid.uuid4()),
        CLAIM + "message_type": "LtiDeepLinkingRequest",
        CLAIM + "version": "1.3.0",
        CLAIM + "deployment_id": "7:abc",
        CLAIM + "target_link_uri": world.url("/lti/launch"),
        CLAIM + "roles": list(roles),
        CLAIM + "context": {"id": "course-3"},
        DL + "deep_linking_settings": {
            "deep_link_return_url": return_url,
            "accept_types": ["ltiResourceLink"],
            "accept_presentation_document_targets": ["iframe", "window"],
            "accept_multiple": accept_multiple,
            "data": "opaque-platform-data",
        },
    }
    claims.update(overrides)
    claims = {name: value for name, value in claims.items() if value is not None}
    token = jwt.encode({"alg": "RS256", "kid": "canvas-1"}, claims, key)
    return world.http.post(
        world.url("/lti/launch"), data={"id_token": token, "state": auth["state"][0]}, allow_redirects=False
    )


def open_picker(world: World, key: RSAKey, accept_multiple: bool = True, roles: Any = (INSTRUCTOR,)) -> str:
    launched = deep_linking_launch(world, key, accept_multiple, roles)
    assert launched.status_code == 303, launched.text
    return (
        world.url(launched.headers["Location"])
        if launched.headers["Location"].startswith("/")
        else (launched.headers["Location"])
    )


def test_teacher_picks_assignments_and_the_platform_gets_a_signed_response(
    world: World, live_server: LiveServer, platform_key: RSAKey
) -> None:
    picker_url = open_picker(world, platform_key)
    page = world.http.get(picker_url)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "Quiz 1" in page.text and "Quiz 2" in page.text and 'type="checkbox"' in page.text
    assert '<label for="q">' in page.text, "the search box has a label"

    narrowed = world.http.get(picker_url, params={"q": "quiz 2"})
    assert "Quiz 2" in narrowed.text and "Quiz 1" not in narrowed.text

    chosen = world.http.post(picker_url, data={"assignment": [f"{world.app_id}:quiz-1", f"{world.app_id}:quiz-2"]})
    assert chosen.status_code == 200
    action = unescape(re.search(r'action="([^"]+)"', chosen.text).group(1))
    assert action == RETURN_URL
    token = re.search(r'name="JWT" value="([^"]+)"', chosen.text).group(1)

    jwks = KeySet.import_key_set(world.http.get(world.url("/lti/jwks")).json())
    claims = jwt.decode(token, jwks, algorithms=["RS256"]).claims
    assert claims["iss"] == "10000000000001" and claims["aud"] == [ISS]
    assert claims[CLAIM + "message_type"] == "LtiDeepLinkingResponse" and claims[CLAIM + "version"] == "1.3.0"
    assert claims[CLAIM + "deployment_id"] == "7:abc" and claims[DL + "data"] == "opaque-platform-data"
    assert claims["exp"] - claims["iat"] <= 600 and claims["nonce"]
    items = claims[DL + "content_items"]
    assert [i["lineItem"] for i in items] == [
        {"scoreMaximum": 10.0, "label": "Quiz 1", "resourceId": "quiz-1", "tag": "passback"},
        {"scoreMaximum": 100.0, "label": "Quiz 2", "resourceId": "quiz-2", "tag": "passback"},
    ]
    assert all(i["type"] == "ltiResourceLink" and i["url"] == world.url("/lti/launch") for i in items)
    assert items[0]["custom"]["assignment"] == "quiz-1"

    again = world.http.post(picker_url, data={"assignment": f"{world.app_id}:quiz-1"})
    assert again.status_code == 410, "a picker answers once"


def test_single_choice_placement_refuses_two_and_unknown_choices(
    world: World, live_server: LiveServer, platform_key: RSAKey
) -> None:
    picker_url = open_picker(world, platform_key, accept_multiple=False)
    assert 'type="radio"' in world.http.get(picker_url).text
    two = world.http.post(picker_url, data={"assignment": [f"{world.app_id}:quiz-1", f"{world.app_id}:quiz-2"]})
    assert two.status_code == 422 and "one assignment at a time" in two.text
    unknown = world.http.post(picker_url, data={"assignment": f"{world.app_id}:nope"})
    assert unknown.status_code == 422
    nothing = world.http.post(picker_url, data={})
    assert nothing.status_code == 422


def test_expired_picker_is_closed(world: World, live_server: LiveServer, platform_key: RSAKey) -> None:
    picker_url = open_picker(world, platform_key)
    with world.session() as session:
        for picker in session.query(DeepLinkSession):
            picker.expires_at = utcnow()
    assert world.http.get(picker_url).status_code == 410
    assert world.http.get(world.url("/lti/picker/not-a-picker")).status_code == 410


def _pickers(world: World) -> int:
    with world.session() as session:
        return session.query(DeepLinkSession).count()


@pytest.mark.parametrize(
    "roles",
    [
        pytest.param([LEARNER], id="learner"),
        pytest.param([], id="no-roles"),
        pytest.param(
            ["http://purl.imsglobal.org/vocab/lis/v2/institution/person#Instructor", LEARNER], id="school-teacher"
        ),
        pytest.param(["http://purl.imsglobal.org/vocab/lis/v2/membership#Mentor"], id="mentor"),
        pytest.param(["http://purl.imsglobal.org/vocab/lis/v2/membership/Learner#Instructor"], id="learner-subrole"),
        pytest.param(["http://purl.imsglobal.org/vocab/lis/v2/membership#InstructorX"], id="instructor-prefix"),
        pytest.param(["http://purl.imsglobal.org/vocab/lis/v2/system/person#Administrator"], id="system-admin"),
    ],
)
def test_deep_linking_by_a_non_instructor_is_refused_and_opens_no_picker(
    world: World, live_server: LiveServer, platform_key: RSAKey, roles: list[str]
) -> None:
    """Only an instructor-like context role may add assignments (LTI Core 1.3 App. A.2, exact role URIs)."""
    launched = deep_linking_launch(world, platform_key, roles=roles)
    assert launched.status_code == 403, (launched.status_code, launched.text[:500])
    assert launched.headers["Content-Type"].startswith("text/html") and "Location" not in launched.headers
    assert _pickers(world) == 0
    with world.session() as session:
        assert session.query(User).filter(User.name == "Ms. Frizzle").count() == 0, "a refused launch adds no user"


@pytest.mark.parametrize(
    "role",
    [
        pytest.param("http://purl.imsglobal.org/vocab/lis/v2/membership/Instructor#TeachingAssistant", id="ta"),
        pytest.param("http://purl.imsglobal.org/vocab/lis/v2/membership/instructor#TeachingAssistant", id="ta-lc"),
        pytest.param("http://purl.imsglobal.org/vocab/lis/v2/membership#ContentDeveloper", id="content-developer"),
        pytest.param("http://purl.imsglobal.org/vocab/lis/v2/membership#Administrator", id="course-admin"),
        pytest.param("Instructor", id="bare-name"),
    ],
)
def test_deep_linking_by_instructor_like_roles_opens_the_picker(
    world: World, live_server: LiveServer, platform_key: RSAKey, role: str
) -> None:
    open_picker(world, platform_key, roles=[LEARNER, role])
    assert _pickers(world) == 1


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({CLAIM + "roles": None}, id="missing-roles"),
        pytest.param({CLAIM + "target_link_uri": None}, id="missing-target-link-uri"),
        pytest.param({CLAIM + "target_link_uri": "https://evil.example/lti/launch"}, id="foreign-target-link-uri"),
    ],
)
def test_deep_linking_without_required_claims_is_refused(
    world: World, live_server: LiveServer, platform_key: RSAKey, overrides: dict[str, Any]
) -> None:
    launched = deep_linking_launch(world, platform_key, **overrides)
    assert launched.status_code == 400, (launched.status_code, launched.text[:500])
    assert launched.headers["Content-Type"].startswith("text/html")
    assert _pickers(world) == 0
