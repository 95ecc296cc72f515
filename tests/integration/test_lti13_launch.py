"""LTI 1.3 launches from a real (fake) platform on 127.0.0.1, then the app sign-in with the code.

The platform (tests/fakes/lti13_platform.py) publishes its JWKS over HTTP; the test plays the browser:
`/lti/login` → the authentication request → a signed id_token form-posted to `/lti/launch` → the redirect
to the app with `code` and `state=assignment:{id}` → `POST /oauth/tokens` → `/v1/me` and `/v1/grade`.
Wire details: 1EdTech Security Framework 1.0 §5.1 and LTI Core 1.3 §4 and §5 (login, launch); Clever docs
"OAuth Implementation" (the sign-in).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from sqlalchemy import func, select, update

from gateway.composition import services_of
from gateway.models import Assignment, DeepLinkSession, Enrollment, LmsIdentity, Placement, User, utcnow
from gateway.services.catalog import upsert_assignments
from gateway.services.directory import authorize_app, create_app_partner
from gateway.services.lms import add_lms_connection
from gateway.services.lti13_launch import JWKS_REFETCH_SECONDS, PlatformKeys
from tests.conftest import LiveServer
from tests.factories import World
from tests.fakes.lti13_platform import (
    AUTH_REQUEST_PARAMS,
    DROP,
    INSTRUCTOR,
    LEARNER,
    LoginResult,
    Lti13Platform,
    pooled_key,
)

ISS = "https://lms.example"
CID = "passback-on-lms-1"
QUIZ_REDIRECT = "https://quiz.example/callback"
READING_REDIRECT = "https://reading.example/return"


def _authorization_code_model() -> Any:
    import gateway.models

    return getattr(gateway.models, "AuthorizationCode", None)


@dataclass
class Lti:
    world: World
    platform: Lti13Platform
    connection_id: str
    passback: str

    def login(self, **overrides: Any) -> LoginResult:
        return self.platform.login(self.passback, **overrides)

    def launch(self, state: str | None, id_token: str | None, **form: str) -> requests.Response:
        return self.platform.launch(self.passback, state, id_token, **form)

    def full_launch(self, **claims: Any) -> requests.Response:
        state, nonce, params = self.login()
        return self.platform.launch(params["redirect_uri"], state, self.platform.launch_token(nonce, **claims))

    def counts(self) -> dict[str, int]:
        models: dict[str, Any] = {
            "users": User,
            "identities": LmsIdentity,
            "enrollments": Enrollment,
            "placements": Placement,
        }
        code_model = _authorization_code_model()
        if code_model is not None:
            models["codes"] = code_model
        with self.world.session() as session:
            return {name: session.scalar(select(func.count()).select_from(m)) for name, m in models.items()}


@pytest.fixture
def lti(world: World, live_server: LiveServer) -> Iterator[Lti]:
    with Lti13Platform(ISS, CID, "dep-1", session=world.http) as platform:
        with world.session() as session:
            connection = add_lms_connection(
                session,
                services_of(world.app).box,
                world.district_id,
                "LMS",
                "lti13",
                platform.registration(),
            )
            connection_id = connection.id
        yield Lti(world, platform, connection_id, live_server.url)


def app_redirect(response: requests.Response) -> tuple[str, dict[str, list[str]]]:
    assert response.status_code == 302, (response.status_code, response.text[:800])
    parts = urlsplit(response.headers["Location"])
    return f"{parts.scheme}://{parts.netloc}{parts.path}", parse_qs(parts.query)


def assert_error_page(response: requests.Response, id_token: str | None = None) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:800])
    assert response.headers.get("Content-Type", "").startswith("text/html"), response.headers.get("Content-Type")
    assert "Location" not in response.headers
    if id_token:
        assert id_token not in response.text, "the error page echoes the id_token"
        payload = id_token.split(".")[1]
        assert payload not in response.text, "the error page echoes the id_token's claims"


# --- login initiation (LTI Core 1.3 §4.1, Security Framework §5.1.1) -----------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_login_redirects_to_the_platform_with_the_ten_parameters(lti: Lti, method: str) -> None:
    first = lti.platform.login(lti.passback, method)
    assert set(first.params) == AUTH_REQUEST_PARAMS
    assert {k: first.params[k] for k in ("scope", "response_type", "response_mode", "prompt", "client_id")} == {
        "scope": "openid",
        "response_type": "id_token",
        "response_mode": "form_post",
        "prompt": "none",
        "client_id": CID,
    }
    assert first.params["redirect_uri"] == lti.passback + "/lti/launch"
    assert first.params["login_hint"] == "user-hint-42"
    assert first.params["lti_message_hint"] == "msg-hint-7"
    second = lti.platform.login(lti.passback, method)
    assert len({first.state, first.nonce, second.state, second.nonce}) == 4, "state and nonce are fresh each time"
    assert min(len(first.state), len(first.nonce)) >= 16


def test_login_without_message_hint_or_client_id_leaves_the_hint_out(lti: Lti) -> None:
    result = lti.login(lti_message_hint=None, client_id=None, lti_deployment_id=None)
    assert "lti_message_hint" not in result.params
    assert result.params["client_id"] == CID


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"iss": "https://unknown-lms.example"}, id="unknown-iss"),
        pytest.param({"client_id": "someone-elses-client"}, id="unknown-client-id"),
        pytest.param({"iss": "<script>alert(1)</script>"}, id="markup-in-iss-not-reflected"),
    ],
)
def test_login_for_an_unknown_registration_is_a_400_page(lti: Lti, overrides: dict[str, str]) -> None:
    response = lti.platform.login_response(lti.passback, **overrides)
    assert response.status_code == 400, (response.status_code, response.text[:500])
    assert response.headers["Content-Type"].startswith("text/html")
    assert "<script>alert(1)</script>" not in response.text


# --- a good launch --------------------------------------------------------------------------------------


def _placement_for(lti: Lti, assignment_external_id: str = "quiz-1") -> Placement:
    with lti.world.session() as session:
        placement = session.scalar(
            select(Placement)
            .join(Assignment, Assignment.id == Placement.assignment_id)
            .where(
                Placement.lms_connection_id == lti.connection_id,
                Placement.course_id == "course-9",
                Assignment.external_id == assignment_external_id,
            )
        )
        assert placement is not None, "no placement for the launch"
        session.expunge(placement)
        return placement


def test_launch_signs_the_student_in_and_records_user_enrollment_and_placement(lti: Lti) -> None:
    before = lti.counts()
    state, nonce, _params = lti.login()
    token = lti.platform.launch_token(nonce)
    response = lti.launch(state, token)

    target, query = app_redirect(response)
    assert target == QUIZ_REDIRECT
    assert query["state"] == ["assignment:quiz-1"]
    assert len(query["code"]) == 1 and len(query["code"][0]) >= 20
    assert token not in response.headers["Location"]

    with lti.world.session() as session:
        [identity] = session.scalars(select(LmsIdentity).where(LmsIdentity.issuer == ISS)).all()
        assert (identity.subject, identity.lms_connection_id, identity.district_id) == (
            "student-sub-1",
            lti.connection_id,
            lti.world.district_id,
        )
        user = session.get(User, identity.user_id)
        assert user is not None and user.district_id == lti.world.district_id
        enrollment = session.scalar(
            select(Enrollment).where(
                Enrollment.lms_connection_id == lti.connection_id,
                Enrollment.course_id == "course-9",
                Enrollment.user_id == user.id,
            )
        )
        assert enrollment is not None
    placement = _placement_for(lti)
    platform = lti.platform.url
    assert placement.destination["lineitem"] == f"{platform}/api/lti/courses/9/line_items/1"
    assert placement.destination["lineitems"] == f"{platform}/api/lti/courses/9/line_items"
    assert placement.destination["resource_link_id"] == "rl-1"
    assert "https://purl.imsglobal.org/spec/lti-ags/scope/score" in placement.destination["scopes"]
    assert placement.destination["context_memberships_url"] == f"{platform}/api/lti/courses/9/names_and_roles"
    after = lti.counts()
    assert {k: after[k] - before[k] for k in ("users", "identities", "enrollments", "placements")} == {
        "users": 1,
        "identities": 1,
        "enrollments": 1,
        "placements": 1,
    }


def test_second_launch_maps_to_the_same_user_and_refreshes_the_line_item(lti: Lti) -> None:
    app_redirect(lti.full_launch())
    counts = lti.counts()
    moved = f"{lti.platform.url}/api/lti/courses/9/line_items/77"
    endpoint = {
        "scope": ["https://purl.imsglobal.org/spec/lti-ags/scope/score"],
        "lineitems": f"{lti.platform.url}/api/lti/courses/9/line_items",
        "lineitem": moved,
    }
    app_redirect(lti.full_launch(ags=endpoint))
    after = lti.counts()
    assert {k: after[k] for k in ("users", "identities", "enrollments", "placements")} == {
        k: counts[k] for k in ("users", "identities", "enrollments", "placements")
    }
    assert _placement_for(lti).destination["lineitem"] == moved


def test_audience_list_with_azp_is_accepted(lti: Lti) -> None:
    app_redirect(lti.full_launch(aud=[CID, "https://another-tool.example"], azp=CID))


def test_rotated_platform_key_is_fetched_once_on_the_unknown_kid(lti: Lti) -> None:
    app_redirect(lti.full_launch())
    fetched = lti.platform.jwks_requests
    assert fetched >= 1
    lti.platform.rotate()  # new kid; the old key is no longer published
    app_redirect(lti.full_launch())
    assert lti.platform.jwks_requests == fetched + 1, "the JWKS is fetched again exactly once for the new kid"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(lti: Lti) -> FakeClock:
    """The app's platform-key cache on a clock the test advances."""
    clock = FakeClock()
    app = lti.world.app
    services_of(app).platform_keys = PlatformKeys(services_of(app).http, clock=clock)
    return clock


def test_unknown_kids_refetch_the_jwks_at_most_once_a_minute(lti: Lti, clock: FakeClock) -> None:
    """Anyone can start a login: 50 launches with random kids cost the platform one JWKS fetch, not 50."""
    app_redirect(lti.full_launch())  # the JWKS is now cached
    before, counts = lti.platform.jwks_requests, lti.counts()
    for _ in range(50):
        state, nonce, _ = lti.login()
        token = lti.platform.launch_token(nonce, kid=secrets.token_hex(16))
        assert_error_page(lti.launch(state, token), token)
    assert lti.platform.jwks_requests - before <= 1
    assert lti.counts() == counts


def test_a_rotated_key_is_followed_once_the_refetch_window_has_passed(lti: Lti, clock: FakeClock) -> None:
    app_redirect(lti.full_launch())
    state, nonce, _ = lti.login()
    token = lti.platform.launch_token(nonce, kid="not-a-published-kid")
    assert_error_page(lti.launch(state, token), token)  # spends this minute's refetch
    fetched = lti.platform.jwks_requests
    lti.platform.rotate()
    assert_error_page(lti.full_launch())  # within the minute: refused without a fetch
    assert lti.platform.jwks_requests == fetched
    clock.now += JWKS_REFETCH_SECONDS
    app_redirect(lti.full_launch())
    assert lti.platform.jwks_requests == fetched + 1


def test_a_failing_jwks_url_is_asked_at_most_once_a_minute(lti: Lti, clock: FakeClock) -> None:
    """The platform's JWKS URL is down and nothing is cached: launches are refused with the reason, and the URL
    is asked once per refetch window, not once per launch; once it answers again, launches go through."""
    lti.platform.jwks_failure = 503
    for _ in range(20):
        response = lti.full_launch()
        assert_error_page(response)
        assert "answered HTTP 503" in response.text
    assert lti.platform.jwks_requests == 1
    lti.platform.jwks_failure = None
    assert_error_page(lti.full_launch())  # still inside the window: not asked again
    assert lti.platform.jwks_requests == 1
    clock.now += JWKS_REFETCH_SECONDS
    app_redirect(lti.full_launch())
    assert lti.platform.jwks_requests == 2


# --- deep linking from the lti1p3platform platform -------------------------------------------------------


@pytest.mark.parametrize(
    ("roles", "status"),
    [
        pytest.param([INSTRUCTOR], 303, id="instructor-opens-the-picker"),
        pytest.param([LEARNER], 403, id="learner-refused"),
    ],
)
def test_deep_linking_request_opens_the_picker_only_for_an_instructor(lti: Lti, roles: list[str], status: int) -> None:
    with lti.world.session() as session:
        pickers = session.scalar(select(func.count()).select_from(DeepLinkSession))
    state, nonce, _ = lti.login()
    token = lti.platform.launch_token(nonce, deep_linking=True, roles=roles)
    response = lti.launch(state, token)
    assert response.status_code == status, (response.status_code, response.text[:500])
    with lti.world.session() as session:
        opened = session.scalar(select(func.count()).select_from(DeepLinkSession)) - pickers
    if status == 303:
        assert response.headers["Location"].startswith("/lti/picker/") and opened == 1
    else:
        assert_error_page(response, token)
        assert opened == 0


# --- rejected launches ----------------------------------------------------------------------------------

REJECTIONS = [
    pytest.param({"forge": "other-key-same-kid"}, id="bad-signature-same-kid"),
    pytest.param({"aud": "some-other-client"}, id="wrong-aud"),
    pytest.param({"aud": ["some-other-client", "another"], "azp": DROP}, id="aud-list-without-client-id"),
    pytest.param({"aud": [CID, "another-tool"], "azp": DROP}, id="aud-list-without-azp"),
    pytest.param({"aud": [CID, "another-tool"], "azp": "another-tool"}, id="aud-list-wrong-azp"),
    pytest.param({"iat_offset": -400, "lifetime": 300}, id="expired-beyond-leeway"),
    pytest.param({"iat_offset": 3600}, id="iat-far-in-the-future"),
    pytest.param({"exp": DROP}, id="no-exp"),
    pytest.param({"deployment_id": "dep-999"}, id="unknown-deployment-id"),
    pytest.param({"forge": "none"}, id="alg-none-unsigned"),
    pytest.param({"forge": "hs256-pem"}, id="hs256-keyed-with-public-pem"),
    pytest.param({"forge": "hs256-jwk"}, id="hs256-keyed-with-public-jwk-json"),
    pytest.param({"iss": "https://evil.example"}, id="wrong-iss"),
    pytest.param({"message_type": DROP}, id="missing-message-type"),
    pytest.param({"message_type": "LtiSubmissionReviewRequest"}, id="unknown-message-type"),
    pytest.param({"version": "1.2.0"}, id="version-not-1.3.0"),
    pytest.param({"version": DROP}, id="missing-version"),
    pytest.param({"sub": DROP}, id="resource-link-launch-without-sub"),
    pytest.param({"resource_link": {"title": "no id"}}, id="resource-link-without-id"),
    pytest.param({"nonce": "not-the-nonce-passback-sent"}, id="wrong-nonce"),
    pytest.param({"nonce": DROP}, id="missing-nonce"),
    pytest.param({"forge": "unpublished-key"}, id="kid-unknown-after-refresh"),
    pytest.param({"custom": {"assignment": "no-such-quiz"}}, id="assignment-no-authorized-app-has"),
    pytest.param({"target_link_uri": "https://evil.example/lti/launch"}, id="foreign-target-link-uri"),
    pytest.param({"target_link_uri": "https://evil.example/x?u=/lti/launch"}, id="foreign-target-with-our-path"),
    pytest.param({"target_link_uri": DROP}, id="missing-target-link-uri"),
    pytest.param({"roles": DROP}, id="missing-roles"),
    pytest.param({"roles": INSTRUCTOR}, id="roles-not-a-list"),
]


@pytest.mark.parametrize("claims", REJECTIONS)
def test_rejected_launch_is_an_html_error_that_changes_nothing(lti: Lti, claims: dict[str, Any]) -> None:
    before = lti.counts()
    fetched = lti.platform.jwks_requests
    state, nonce, params = lti.login()
    token = lti.platform.launch_token(nonce, **claims)
    response = lti.platform.launch(params["redirect_uri"], state, token)
    assert_error_page(response, token)
    assert lti.counts() == before
    # An unknown kid is looked up again once, never in a loop.
    assert lti.platform.jwks_requests - fetched <= 2


def test_target_link_uri_must_repeat_the_logins(lti: Lti) -> None:
    """Core §5.3.4: the signed target_link_uri is the login's parameter; one of Passback's launch URLs with
    another query string than the login named is still refused."""
    before = lti.counts()
    state, nonce, _ = lti.login()
    token = lti.platform.launch_token(nonce, target_link_uri=lti.passback + "/lti/launch?other=1")
    assert_error_page(lti.launch(state, token), token)
    assert lti.counts() == before


def test_target_link_uri_with_a_query_string_is_accepted(lti: Lti) -> None:
    target = lti.passback + "/lti/launch?placement=assignment_selection"
    state, nonce, _ = lti.login(target_link_uri=target)
    app_redirect(lti.launch(state, lti.platform.launch_token(nonce)))


def test_empty_roles_are_accepted_as_a_student(lti: Lti) -> None:
    """The roles claim must be present, but an empty list is valid (Core §5.3.7)."""
    app_redirect(lti.full_launch(roles=[]))


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("https://evil.example/lti/launch", id="foreign-host"),
        pytest.param("/lti/launch", id="relative"),
        pytest.param("javascript:alert(1)", id="javascript"),
    ],
)
def test_login_for_a_foreign_target_link_uri_is_a_400_page(lti: Lti, target: str) -> None:
    response = lti.platform.login_response(lti.passback, target_link_uri=target)
    assert response.status_code == 400, (response.status_code, response.text[:500])
    assert response.headers["Content-Type"].startswith("text/html")
    assert "target_link_uri" in response.text


@pytest.mark.parametrize(
    "state",
    [
        pytest.param("a-state-passback-never-issued", id="unknown-state"),
        pytest.param("", id="empty-state"),
        pytest.param(None, id="no-state"),
    ],
)
def test_launch_with_a_state_passback_did_not_issue_is_refused(lti: Lti, state: str | None) -> None:
    before = lti.counts()
    _state, nonce, _params = lti.login()
    token = lti.platform.launch_token(nonce)
    response = lti.launch(state, token)
    assert_error_page(response, token)
    assert lti.counts() == before


def test_launch_without_an_id_token_is_refused(lti: Lti) -> None:
    state, _nonce, _params = lti.login()
    assert_error_page(lti.launch(state, None))
    assert_error_page(lti.launch(state, "not.a.jwt"))


def test_platform_error_post_is_an_error_page(lti: Lti) -> None:
    """A platform that cannot authenticate posts `error` and `error_description` instead (Moodle: mod/lti/auth.php)."""
    state, _nonce, _params = lti.login()
    response = lti.launch(state, None, error="launch_no_longer_valid", error_description="<b>expired</b>")
    assert_error_page(response)
    assert "<b>expired</b>" not in response.text


def test_state_of_one_login_with_the_nonce_of_another_is_refused(lti: Lti) -> None:
    before = lti.counts()
    state_a, _nonce_a, _ = lti.login()
    _state_b, nonce_b, _ = lti.login()
    token = lti.platform.launch_token(nonce_b)
    assert_error_page(lti.launch(state_a, token), token)
    assert lti.counts() == before


def test_replayed_id_token_is_refused(lti: Lti) -> None:
    state, nonce, _params = lti.login()
    token = lti.platform.launch_token(nonce)
    app_redirect(lti.launch(state, token))
    counts = lti.counts()
    assert_error_page(lti.launch(state, token), token)
    # The same token again through a fresh login's state.
    fresh_state, _fresh_nonce, _ = lti.login()
    assert_error_page(lti.launch(fresh_state, token), token)
    assert lti.counts() == counts


def test_used_nonce_in_a_fresh_token_is_refused(lti: Lti) -> None:
    state, nonce, _ = lti.login()
    app_redirect(lti.launch(state, lti.platform.launch_token(nonce)))
    counts = lti.counts()
    fresh_state, _fresh_nonce, _ = lti.login()
    token = lti.platform.launch_token(nonce, sub="another-student")
    assert_error_page(lti.launch(fresh_state, token), token)
    assert lti.counts() == counts


def test_used_state_with_a_fresh_token_is_refused(lti: Lti) -> None:
    state, nonce, _ = lti.login()
    app_redirect(lti.launch(state, lti.platform.launch_token(nonce)))
    counts = lti.counts()
    _fresh_state, fresh_nonce, _ = lti.login()
    token = lti.platform.launch_token(fresh_nonce, sub="another-student")
    assert_error_page(lti.launch(state, token), token)
    assert lti.counts() == counts


@pytest.mark.parametrize(
    ("field", "claims"),
    [
        pytest.param("sub", {"sub": "s" * 300}, id="sub-over-255"),
        pytest.param("context.id", {"context": {"id": "c" * 300, "title": "Long"}}, id="context-id-over-255"),
        pytest.param("resource_link.id", {"resource_link": {"id": "r" * 300}}, id="resource-link-id-over-255"),
    ],
)
def test_overlong_ids_from_the_platform_are_refused_not_a_500(lti: Lti, field: str, claims: dict[str, Any]) -> None:
    """LTI Core caps these ids at 255 characters; a signed token that breaks the cap is a 4xx, never a 500
    (PostgreSQL refuses a longer value for a VARCHAR(255) column)."""
    before = lti.counts()
    state, nonce, _ = lti.login()
    token = lti.platform.launch_token(nonce, **claims)
    assert_error_page(lti.launch(state, token), token)
    assert lti.counts() == before


def _post_launches(lti: Lti, subs: list[str]) -> list[requests.Response]:
    """Log in once per launch, then post every launch at the same moment, each from its own browser."""
    prepared = []
    for sub in subs:
        state, nonce, params = lti.login()
        prepared.append((params["redirect_uri"], state, lti.platform.launch_token(nonce, sub=sub)))

    def post(item: tuple[str, str, str]) -> requests.Response:
        url, state, token = item
        return requests.post(url, data={"state": state, "id_token": token}, allow_redirects=False, timeout=30)

    with ThreadPoolExecutor(len(prepared)) as pool:
        return list(pool.map(post, prepared))


@pytest.mark.parametrize(
    "subs",
    [
        pytest.param([f"student-{i}" for i in range(8)], id="a-class-opens-the-link-at-once"),
        pytest.param(["student-1"] * 3, id="one-student-double-clicks"),
    ],
)
def test_concurrent_first_launches_all_succeed_with_one_placement(lti: Lti, subs: list[str]) -> None:
    before = lti.counts()
    responses = _post_launches(lti, subs)
    statuses = [r.status_code for r in responses]
    failed = [r.text[:200] for r in responses if r.status_code != 302]
    assert statuses == [302] * len(subs), f"statuses {statuses}; first failure: {failed[:1]}"
    after = lti.counts()
    assert after["placements"] - before["placements"] == 1
    assert after["users"] - before["users"] == len(set(subs))
    assert after["identities"] - before["identities"] == len(set(subs))


def test_bad_signature_with_the_platforms_kid_does_not_trust_a_second_key(lti: Lti) -> None:
    """The platform publishes two keys; a token claiming the first kid but signed by the second is refused."""
    second = pooled_key(1)
    lti.platform.published.append(second)
    state, nonce, _ = lti.login()
    token = lti.platform.launch_token(nonce, key=second, kid=lti.platform.signing_key.kid)
    assert_error_page(lti.launch(state, token), token)


# --- the app sign-in with the code (Clever docs: OAuth Implementation) ---------------------------------


@dataclass
class SignIn:
    lti: Lti
    app_id: str
    client_id: str
    client_secret: str

    def code(self, assignment: str = "story-3", **claims: Any) -> str:
        target, query = app_redirect(self.lti.full_launch(custom={"assignment": assignment}, **claims))
        expected = READING_REDIRECT if assignment == "story-3" else QUIZ_REDIRECT
        assert target == expected
        assert query["state"] == [f"assignment:{assignment}"]
        return query["code"][0]

    def exchange(
        self,
        code: str,
        *,
        as_json: bool = True,
        secret: str | None = None,
        client_id: str | None = None,
        redirect_uri: str = READING_REDIRECT,
        http: Any = None,
    ) -> requests.Response:
        body = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
        auth = (client_id or self.client_id, secret or self.client_secret)
        url = self.lti.passback + "/oauth/tokens"
        http = http or self.lti.world.http
        if as_json:
            return http.post(url, json=body, auth=auth, timeout=10)
        return http.post(url, data=body, auth=auth, timeout=10)


@pytest.fixture
def signin(lti: Lti) -> SignIn:
    """A second app, Reading App, whose secret the test knows, authorized in the district with story-3."""
    with lti.world.session() as session:
        created = create_app_partner(session, "Reading App", READING_REDIRECT)
        upsert_assignments(session, created.app.id, [{"id": "story-3", "name": "Story 3", "scoreMaximum": 20}])
        authorize_app(session, created.app.id, lti.world.district_id)
        ids = (created.app.id, created.app.client_id, created.client_secret)
    return SignIn(lti, *ids)


def _launched_user(lti: Lti, subject: str = "student-sub-1") -> str:
    with lti.world.session() as session:
        identity = session.scalar(select(LmsIdentity).where(LmsIdentity.issuer == ISS, LmsIdentity.subject == subject))
        assert identity is not None
        return identity.user_id


@pytest.mark.parametrize("as_json", [pytest.param(True, id="json-body"), pytest.param(False, id="form-body")])
def test_code_exchange_gives_a_student_token_for_me_and_grades(signin: SignIn, as_json: bool) -> None:
    code = signin.code()
    response = signin.exchange(code, as_json=as_json)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"].lower() == "bearer"
    token = body["access_token"]
    user_id = _launched_user(signin.lti)
    world = signin.lti.world

    me = world.get("/v1/me", token=token)
    assert me.status_code == 200, me.text
    assert me.json()["type"] == "student"
    assert me.json()["data"]["id"] == user_id
    assert me.json()["data"]["district"] == world.district_id

    grade = world.post_grade({"assignmentID": "story-3", "percentage": 0.75}, token=token)
    assert grade.status_code == 202, grade.text
    assert grade.json()["userID"] == user_id
    # Routed to the placement the launch recorded (course-9 of the LTI 1.3 platform), not unroutable.
    status = world.get(grade.headers["Location"], token=token).json()
    assert [d["status"] for d in status["deliveries"]] == ["pending"], status


def test_instructor_launch_signs_in_a_teacher(signin: SignIn) -> None:
    code = signin.code(roles=[INSTRUCTOR], sub="teacher-sub-1")
    token = signin.exchange(code).json()["access_token"]
    me = signin.lti.world.get("/v1/me", token=token).json()
    assert me["type"] == "teacher"
    assert me["data"]["id"] == _launched_user(signin.lti, "teacher-sub-1")


def test_token_answer_is_not_cacheable(signin: SignIn) -> None:
    """RFC 6749 §5.1: a token response carries `Cache-Control: no-store`."""
    response = signin.exchange(signin.code())
    assert response.status_code == 200
    assert "no-store" in response.headers.get("Cache-Control", "")


def test_code_is_single_use(signin: SignIn) -> None:
    code = signin.code()
    assert signin.exchange(code).status_code == 200
    again = signin.exchange(code)
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"


def test_concurrent_exchanges_of_one_code_give_one_token(signin: SignIn) -> None:
    code = signin.code()
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: signin.exchange(code, http=requests), range(4)))
    assert sorted(r.status_code for r in responses) == [200, 400, 400, 400], [r.text for r in responses]
    assert {r.json()["error"] for r in responses if r.status_code == 400} == {"invalid_grant"}
    [token] = [r.json()["access_token"] for r in responses if r.status_code == 200]
    assert signin.lti.world.get("/v1/me", token=token).status_code == 401, "the code was presented again"


def test_reused_code_revokes_the_token_its_first_use_bought(signin: SignIn) -> None:
    """RFC 6749 §4.1.2: a code used twice may have been stolen; the token it bought stops working. Other
    tokens of the same user (from another code) keep working."""
    world = signin.lti.world
    first_code, other_code = signin.code(), signin.code()
    token = signin.exchange(first_code).json()["access_token"]
    other = signin.exchange(other_code).json()["access_token"]
    assert world.get("/v1/me", token=token).status_code == 200

    again = signin.exchange(first_code)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"

    me = world.get("/v1/me", token=token)
    assert me.status_code == 401, me.text
    assert world.post_grade({"assignmentID": "story-3", "percentage": 0.5}, token=token).status_code == 401
    assert world.get("/v1/me", token=other).status_code == 200


def test_a_code_presented_by_another_app_revokes_nothing(signin: SignIn) -> None:
    """Only the app the code was issued to can trigger the revocation (another app's reuse is just refused)."""
    world = signin.lti.world
    with world.session() as session:
        other = create_app_partner(session, "Other App", READING_REDIRECT)
        authorize_app(session, other.app.id, world.district_id)
        other_client = (other.app.client_id, other.client_secret)
    code = signin.code()
    token = signin.exchange(code).json()["access_token"]
    refused = signin.exchange(code, client_id=other_client[0], secret=other_client[1])
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    assert world.get("/v1/me", token=token).status_code == 200


def test_code_expires_after_a_minute(signin: SignIn) -> None:
    model = _authorization_code_model()
    assert model is not None, "gateway.models.AuthorizationCode is missing"
    code = signin.code()
    with signin.lti.world.session() as session:
        [row] = session.scalars(select(model)).all()
        assert row.expires_at <= utcnow() + timedelta(seconds=61), "a code lives at most a minute"
        session.execute(update(model).values(expires_at=utcnow() - timedelta(seconds=1)))
    response = signin.exchange(code)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_wrong_client_secret_is_invalid_client(signin: SignIn) -> None:
    code = signin.code()
    response = signin.exchange(code, secret="not-the-secret")
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


def test_code_issued_to_another_app_is_invalid_grant(signin: SignIn) -> None:
    code = signin.code("quiz-1")  # quiz-1 belongs to the world's Quiz App
    for redirect_uri in (READING_REDIRECT, QUIZ_REDIRECT):
        response = signin.exchange(code, redirect_uri=redirect_uri)
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_grant"


def test_wrong_redirect_uri_is_invalid_grant(signin: SignIn) -> None:
    code = signin.code()
    response = signin.exchange(code, redirect_uri="https://reading.example/elsewhere")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
