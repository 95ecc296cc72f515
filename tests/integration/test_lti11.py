"""LTI 1.1: launches signed with OAuth 1.0a, and Basic Outcomes delivery to a real (fake) consumer on 127.0.0.1.

The consumer (tests/fakes/lti11_consumer.py) signs launches with the `lti` package's ToolConsumer and verifies
every outcome request itself (oauthlib signature, single-use nonce, body hash, exact Content-Type), reads it
with the `lti` package's parser and keeps a gradebook by sourcedId. Wire details: IMS LTI 1.1
Implementation Guide §6 (Basic Outcomes), the OAuth Request Body Hash extension (signing), and canvas-lms
`doc/api/assignment_tools.md` (Canvas extensions and errors).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import func, select

import adapters
from adapters.base import DeliveryError, NormalizedGrade, RetryableDeliveryError
from gateway.cli import main
from gateway.composition import services_of
from gateway.models import (
    App,
    AuthorizationCode,
    Delivery,
    Enrollment,
    LaunchDestination,
    LmsConnection,
    LmsIdentity,
    Placement,
    User,
)
from gateway.services.directory import create_user, enroll
from gateway.services.lms import add_lms_connection, add_placement
from gateway.worker import DeliveryWorker
from tests.conftest import LiveServer
from tests.factories import World
from tests.fakes.lti11_consumer import (
    CANVAS_EXTENSIONS,
    NS,
    OLD_NS,
    Lti11Consumer,
    OutcomeCall,
    billion_laughs,
    child,
    child_names,
    external_entity,
)

KEY = "canvas-consumer-key-1"
SECRET = "shared-secret-0123456789abcdef"
# The consumer fake listens on loopback over http: its host, and the switch that lets Passback call it.
FAKE_HOSTS = {"allowed_hosts": ["127.0.0.1"], "allow_private_addresses": True}
COURSE = "canvas-course-11"
APP_REDIRECT = "https://quiz.example/callback"
NO_EXTENSIONS = dict.fromkeys(CANVAS_EXTENSIONS)


@dataclass
class Lti11:
    world: World
    consumer: Lti11Consumer
    connection_id: str
    passback: str

    @property
    def launch_url(self) -> str:
        return self.passback + "/lti11/launch"

    def launch(self, **kwargs: Any) -> requests.Response:
        return self.consumer.launch(self.launch_url, **kwargs)

    def launch_ok(self, **kwargs: Any) -> dict[str, list[str]]:
        response = self.launch(**kwargs)
        return app_redirect(response)

    def user_of(self, subject: str = "canvas-user-1") -> str:
        with self.world.session() as session:
            user_id = session.scalar(
                select(LmsIdentity.user_id).where(LmsIdentity.issuer == f"lti11:{KEY}", LmsIdentity.subject == subject)
            )
        assert user_id is not None, f"no user recorded for lti11:{KEY} / {subject}"
        return str(user_id)

    def grade(self, user_id: str, **body: Any) -> str:
        response = self.world.post_grade({"assignmentID": "quiz-1", "userID": user_id, **body})
        assert response.status_code == 202, response.text
        return str(response.headers["Location"])

    def delivery(self, location: str) -> dict[str, Any]:
        deliveries = self.world.get(location).json()["deliveries"]
        assert len(deliveries) == 1, deliveries
        return dict(deliveries[0])

    def counts(self) -> dict[str, int]:
        models = {
            "users": User,
            "identities": LmsIdentity,
            "enrollments": Enrollment,
            "placements": Placement,
            "launch_destinations": LaunchDestination,
            "codes": AuthorizationCode,
        }
        with self.world.session() as session:
            return {name: session.scalar(select(func.count()).select_from(m)) or 0 for name, m in models.items()}


@pytest.fixture
def lti11(world: World, live_server: LiveServer) -> Iterator[Lti11]:
    with Lti11Consumer(KEY, SECRET, session=world.http) as consumer:
        with world.session() as session:
            connection = add_lms_connection(
                session,
                services_of(world.app).box,
                world.district_id,
                "Canvas 1.1",
                "lti11",
                {"consumer_key": KEY, "shared_secret": SECRET, **FAKE_HOSTS},
            )
            connection_id = connection.id
        yield Lti11(world, consumer, connection_id, live_server.url)


def app_redirect(response: requests.Response) -> dict[str, list[str]]:
    assert response.status_code == 302, (response.status_code, response.text[:800])
    parts = urlsplit(response.headers["Location"])
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == APP_REDIRECT
    return parse_qs(parts.query)


def assert_error_page(response: requests.Response, form: dict[str, str]) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:800])
    assert response.headers.get("Content-Type", "").startswith("text/html"), response.headers.get("Content-Type")
    assert "Location" not in response.headers
    assert form["oauth_signature"] not in response.text, "the error page echoes the signature"


def drive(worker: DeliveryWorker, done: Callable[[], bool], timeout: float = 8.0) -> None:
    """Run the worker until `done()` (retries are due after the test backoff of 0.02 to 0.1 s)."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out driving the worker"
        worker.run_once()
        time.sleep(0.03)


def replace_calls(consumer: Lti11Consumer, sourcedid: str | None = None) -> list[OutcomeCall]:
    return consumer.requests_for(sourcedid, "replaceResult")


# --- launches ---------------------------------------------------------------------------------------------


def test_launch_redirects_to_the_app_and_records_user_course_link_and_sourcedid(lti11: Lti11) -> None:
    query = lti11.launch_ok()
    assert query["state"] == ["assignment:quiz-1"]
    assert len(query["code"]) == 1 and len(query["code"][0]) >= 16

    sourcedid = lti11.consumer.sourcedid_for("canvas-user-1", "rl-quiz-1")
    user_id = lti11.user_of("canvas-user-1")
    with lti11.world.session() as session:
        user = session.get(User, user_id)
        assert user is not None and user.district_id == lti11.world.district_id
        assert (user.name, user.email, user.role) == ("Ada Lovelace", "canvas-user-1@school.example", "student")
        identity = session.scalar(select(LmsIdentity).where(LmsIdentity.user_id == user_id))
        assert identity is not None and identity.lms_connection_id == lti11.connection_id
        assert session.scalar(
            select(Enrollment).where(
                Enrollment.lms_connection_id == lti11.connection_id,
                Enrollment.course_id == COURSE,
                Enrollment.user_id == user_id,
            )
        )
        placement = session.scalar(select(Placement).where(Placement.lms_connection_id == lti11.connection_id))
        assert placement is not None
        assert (placement.course_id, placement.resource_link_id) == (COURSE, "rl-quiz-1")
        assert placement.assignment_id is not None
        from gateway.models import Assignment

        assignment = session.get(Assignment, placement.assignment_id)
        assert assignment is not None and assignment.external_id == "quiz-1"
        assert placement.destination["outcome_service_url"] == lti11.consumer.outcome_url
        extensions = placement.destination["extensions"]
        assert set(extensions["data_values"]) == {"url", "text"}
        assert {k: extensions[k] for k in extensions if k != "data_values"} == {
            "result_total_score": True,
            "submitted_at": True,
            "needs_additional_review": True,
            "prioritize_non_tool_grade": True,
        }
        [launch] = session.scalars(select(LaunchDestination)).all()
        assert (launch.placement_id, launch.user_id) == (placement.id, user_id)
        assert launch.data == {"sourcedid": sourcedid}, "the sourcedId is stored exactly as received"


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"roles": "urn:lti:role:ims/lis/Learner"}, id="urn-role"),
        pytest.param({"lti_version": "LTI-1p1"}, id="lti-1p1"),
        pytest.param({"timestamp": -120}, id="two-minutes-of-clock-skew"),
        pytest.param(NO_EXTENSIONS, id="no-canvas-extensions"),
        pytest.param({"signature_method": "HMAC-SHA256"}, id="hmac-sha256"),
    ],
)
def test_launch_variants_are_accepted(lti11: Lti11, overrides: dict[str, Any]) -> None:
    if "timestamp" in overrides:  # seconds relative to now
        overrides = {**overrides, "timestamp": int(time.time()) + overrides["timestamp"]}
    assert lti11.launch_ok(**overrides)["state"] == ["assignment:quiz-1"]
    assert lti11.counts()["launch_destinations"] == 1


def test_assignment_may_come_from_the_signed_launch_url_query(lti11: Lti11) -> None:
    """For LMS links that cannot carry custom parameters; the query is part of what the consumer signs."""
    url = lti11.launch_url + "?assignment=quiz-1"
    assert app_redirect(lti11.consumer.launch(url, custom_assignment=None))["state"] == ["assignment:quiz-1"]
    # Signed for quiz-1, posted to quiz-2: the signature no longer matches.
    form = lti11.consumer.launch_form(url, user_id="canvas-user-2", custom_assignment=None)
    before = lti11.counts()
    assert_error_page(lti11.consumer.post_form(lti11.launch_url + "?assignment=quiz-2", form), form)
    assert lti11.counts() == before


def test_relaunch_updates_the_sourcedid_and_a_classmate_reuses_the_placed_link(
    lti11: Lti11, worker: DeliveryWorker
) -> None:
    lti11.launch_ok()
    before = lti11.counts()
    # The LMS may hand out a new sourcedId on a later launch: the latest one is the one to use.
    lti11.launch_ok(lis_result_sourcedid="renewed-sourcedid-1")
    assert lti11.counts() == {**before, "codes": before["codes"] + 1}
    with lti11.world.session() as session:
        assert session.scalar(select(LaunchDestination.data)) == {"sourcedid": "renewed-sourcedid-1"}

    # A classmate opens the same link; the link is placed already, so custom_assignment is not needed.
    query = lti11.launch_ok(user_id="canvas-user-2", custom_assignment=None)
    assert query["state"] == ["assignment:quiz-1"]
    after = lti11.counts()
    assert after["placements"] == before["placements"]
    assert after["launch_destinations"] == 2 and after["users"] == before["users"] + 1

    location = lti11.grade(lti11.user_of("canvas-user-1"), percentage=0.5)
    worker.run_until_idle()
    assert lti11.delivery(location)["status"] == "delivered"
    assert lti11.consumer.gradebook["renewed-sourcedid-1"].score is not None


def _forms_wrong_secret(lti: Lti11) -> list[dict[str, str]]:
    return [lti.consumer.launch_form(lti.launch_url, secret="not-the-secret")]


def _forms_unknown_key(lti: Lti11) -> list[dict[str, str]]:
    return [lti.consumer.launch_form(lti.launch_url, key="unknown-key", secret=SECRET)]


def _forms_tampered(lti: Lti11) -> list[dict[str, str]]:
    form = lti.consumer.launch_form(lti.launch_url)
    form["user_id"] = "someone-else"
    return [form]


def _forms_replay(lti: Lti11) -> list[dict[str, str]]:
    form = lti.consumer.launch_form(lti.launch_url)
    return [form, dict(form)]


def _forms(**overrides: Any) -> Callable[[Lti11], list[dict[str, str]]]:
    def make(lti: Lti11) -> list[dict[str, str]]:
        values = dict(overrides)
        for name in ("timestamp",):
            if name in values:
                values[name] = int(time.time()) + values[name]
        return [lti.consumer.launch_form(lti.launch_url, **values)]

    return make


@pytest.mark.parametrize(
    "make_forms",
    [
        pytest.param(_forms_wrong_secret, id="bad-signature"),
        pytest.param(_forms_unknown_key, id="unknown-consumer-key"),
        pytest.param(_forms_tampered, id="parameter-changed-after-signing"),
        pytest.param(_forms(timestamp=-400), id="timestamp-too-old"),
        pytest.param(_forms(timestamp=+400), id="timestamp-ahead"),
        pytest.param(_forms_replay, id="nonce-replayed"),
        pytest.param(_forms(lti_message_type="ContentItemSelectionRequest"), id="other-message-type"),
        pytest.param(_forms(lti_version="LTI-2p0"), id="other-lti-version"),
        pytest.param(_forms(resource_link_id=None), id="no-resource-link-id"),
        pytest.param(_forms(user_id=None), id="no-user-id"),
        pytest.param(_forms(custom_assignment=None), id="no-assignment-for-an-unplaced-link"),
        pytest.param(_forms(signature_method="PLAINTEXT"), id="plaintext-signature"),
    ],
)
def test_bad_launches_are_refused_with_a_page_and_record_nothing(
    lti11: Lti11, make_forms: Callable[[Lti11], list[dict[str, str]]]
) -> None:
    *accepted, refused = make_forms(lti11)
    for form in accepted:
        app_redirect(lti11.consumer.post_form(lti11.launch_url, form))
    before = lti11.counts()
    response = lti11.consumer.post_form(lti11.launch_url, refused)
    assert_error_page(response, refused)
    assert lti11.counts() == before


@pytest.mark.parametrize(
    "students",
    [
        pytest.param([f"student-{i}" for i in range(8)], id="a-class-opens-the-link-at-once"),
        pytest.param(["student-1"] * 3, id="one-student-double-clicks"),
    ],
)
def test_concurrent_first_launches_all_succeed_with_one_placement(lti11: Lti11, students: list[str]) -> None:
    forms = [lti11.consumer.launch_form(lti11.launch_url, user_id=s) for s in students]
    before = lti11.counts()

    def post(form: dict[str, str]) -> requests.Response:
        return requests.post(lti11.launch_url, data=form, allow_redirects=False, timeout=30)

    with ThreadPoolExecutor(len(forms)) as pool:
        responses = list(pool.map(post, forms))
    statuses = [r.status_code for r in responses]
    failed = [r.text[-300:] for r in responses if r.status_code != 302]
    assert statuses == [302] * len(forms), f"statuses {statuses}; first failure: {failed[:1]}"
    after = lti11.counts()
    assert after["placements"] - before["placements"] == 1
    assert after["users"] - before["users"] == len(set(students))
    assert after["enrollments"] - before["enrollments"] == len(set(students))
    assert after["launch_destinations"] - before["launch_destinations"] == len(set(students))


def test_launch_signs_the_student_in_and_their_own_grade_is_delivered(lti11: Lti11, worker: DeliveryWorker) -> None:
    from gateway.crypto import hash_token

    secret = "app-client-secret-for-this-test"
    with lti11.world.session() as session:
        partner = session.get(App, lti11.world.app_id)
        assert partner is not None
        partner.client_secret_hash = hash_token(secret)
        client_id = partner.client_id
    query = lti11.launch_ok()
    tokens = lti11.world.http.post(
        lti11.world.url("/oauth/tokens"),
        data={"grant_type": "authorization_code", "code": query["code"][0], "redirect_uri": APP_REDIRECT},
        auth=(client_id, secret),
    )
    assert tokens.status_code == 200, tokens.text
    user_token = tokens.json()["access_token"]
    me = lti11.world.get("/v1/me", token=user_token).json()
    assert me["type"] == "student" and me["data"]["id"] == lti11.user_of()
    posted = lti11.world.post_grade({"assignmentID": "quiz-1", "percentage": 0.9}, token=user_token)
    assert posted.status_code == 202, posted.text
    worker.run_until_idle()
    assert lti11.world.get(posted.headers["Location"], token=user_token).json()["status"] == "delivered"
    assert float(lti11.consumer.gradebook[lti11.consumer.sourcedid_for("canvas-user-1", "rl-quiz-1")].score) == 0.9


# --- delivery: the request on the wire ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("score", "fraction"),
    [
        pytest.param({"percentage": 0.8}, 0.8, id="percentage"),
        pytest.param({"scoreGiven": 7, "scoreMaximum": 10}, 0.7, id="score-pair"),
        pytest.param({"percentage": 1}, 1.0, id="full-marks"),
        pytest.param({"percentage": 0}, 0.0, id="zero"),
        pytest.param({"percentage": 1 / 3}, 1 / 3, id="one-third"),
    ],
)
def test_grade_is_sent_as_a_signed_replace_result(
    lti11: Lti11, worker: DeliveryWorker, score: dict[str, Any], fraction: float
) -> None:
    lti11.launch_ok()
    sourcedid = lti11.consumer.sourcedid_for("canvas-user-1", "rl-quiz-1")
    location = lti11.grade(lti11.user_of(), **score)
    worker.run_until_idle()

    assert lti11.consumer.problems == []
    [call] = replace_calls(lti11.consumer)
    assert call.headers["Content-Type"] == "application/xml"
    assert call.oauth["oauth_signature_method"] == "HMAC-SHA1"
    assert call.oauth["oauth_consumer_key"] == KEY
    assert "oauth_body_hash" in call.oauth, "the body hash is in the Authorization header"
    assert call.sourcedid == sourcedid
    assert call.message_identifier, "each request carries an imsx_messageIdentifier"
    header = child(call.tree, "imsx_POXHeader/imsx_POXRequestHeaderInfo/imsx_version")
    assert header is not None and header.text == "V1.0"
    request_el = call.operation_element
    assert child_names(request_el) == ["resultRecord"], "no Canvas extension without a context asking for one"
    result = child(request_el, "resultRecord/result")
    assert child_names(result) == ["resultScore"]
    assert child(result, "resultScore/language").text == "en"
    text = child(result, "resultScore/textString").text
    assert text is not None and "," not in text and "e" not in text.lower(), text
    assert float(text) == pytest.approx(fraction, abs=1e-3)
    assert lti11.consumer.gradebook[sourcedid].score == text.strip()
    assert lti11.delivery(location)["status"] == "delivered"


@pytest.mark.parametrize("total_score_accepted", [True, False], ids=["total-score-accepted", "not-accepted"])
def test_extra_credit_is_sent_as_points_where_accepted_else_capped(
    lti11: Lti11, worker: DeliveryWorker, total_score_accepted: bool
) -> None:
    lti11.launch_ok(ext_outcome_result_total_score_accepted="true" if total_score_accepted else None)
    sourcedid = lti11.consumer.sourcedid_for("canvas-user-1", "rl-quiz-1")
    location = lti11.grade(lti11.user_of(), scoreGiven=12, scoreMaximum=10)
    worker.run_until_idle()
    delivery = lti11.delivery(location)
    assert delivery["status"] == "delivered", delivery
    [call] = replace_calls(lti11.consumer)
    result = child(call.operation_element, "resultRecord/result")
    entry = lti11.consumer.gradebook[sourcedid]
    if total_score_accepted:
        assert float(child(result, "resultTotalScore/textString").text) == 12.0
        assert child(result, "resultTotalScore/language").text == "en"
        assert entry.total_score is not None and float(entry.total_score) == 12.0
        score = child(result, "resultScore/textString")
        assert score is None or 0.0 <= float(score.text) <= 1.0
    else:
        assert child(result, "resultTotalScore") is None
        assert float(entry.score or "nan") == 1.0
        assert "capped" in (delivery.get("lmsResponse") or "").lower(), delivery


@pytest.mark.parametrize(
    "data",
    [
        {"text": "<p>My essay &amp; more</p>"},
        {"url": "https://quiz.example/r/42?a=1&b=2"},
        {"ltiLaunchUrl": "https://passback.example/lti/review?grade=123"},
    ],
    ids=["text", "url", "ltiLaunchUrl"],
)
def test_canvas_extensions_from_the_grade_context_sit_where_canvas_reads_them(
    lti11: Lti11, worker: DeliveryWorker, data: dict[str, str]
) -> None:
    # Canvas names the launch-URL data value `lti_launch_url` in the accepted list.
    lti11.launch_ok(ext_outcome_data_values_accepted="url,text,lti_launch_url")
    sourcedid = lti11.consumer.sourcedid_for("canvas-user-1", "rl-quiz-1")
    submitted = "2024-04-16T18:54:36.736+00:00"
    context = {
        "lti11": {
            "resultData": data,
            "submittedAt": submitted,
            "prioritizeNonToolGrade": True,
            "needsAdditionalReview": True,
        }
    }
    location = lti11.grade(lti11.user_of(), percentage=0.6, context=context)
    worker.run_until_idle()
    assert lti11.delivery(location)["status"] == "delivered"
    assert lti11.consumer.problems == []
    [call] = replace_calls(lti11.consumer)
    request_el = call.operation_element
    assert set(child_names(request_el)) == {"submissionDetails", "resultRecord"}
    details = child(request_el, "submissionDetails")
    stamp = child(details, "submittedAt").text
    assert datetime.fromisoformat(stamp.replace("Z", "+00:00")) == datetime.fromisoformat(submitted)
    for flag in ("prioritizeNonToolGrade", "needsAdditionalReview"):
        element = child(details, flag)
        assert element is not None and not (element.text or "").strip() and len(element) == 0, flag
    [(kind, value)] = data.items()
    assert child(request_el, f"resultRecord/result/resultData/{kind}").text == value
    assert child(request_el, "resultRecord/result/resultScore/textString").text.strip() in {"0.6", "0.60", "0.6000"}
    entry = lti11.consumer.gradebook[sourcedid]
    assert entry.result_data == {kind: value}
    assert set(entry.submission_details) == {"submittedAt", "prioritizeNonToolGrade", "needsAdditionalReview"}


@pytest.mark.parametrize(
    "accepted",
    [
        pytest.param(NO_EXTENSIONS, id="none-accepted"),
        pytest.param(
            {
                **CANVAS_EXTENSIONS,
                "ext_outcome_data_values_accepted": "url",
                "ext_outcome_submission_submitted_at_accepted": None,
            },
            id="url-only-no-submitted-at",
        ),
    ],
)
def test_canvas_extensions_are_left_out_when_the_consumer_did_not_accept_them(
    lti11: Lti11, worker: DeliveryWorker, accepted: dict[str, Any]
) -> None:
    lti11.launch_ok(**accepted)
    context = {"lti11": {"resultData": {"text": "essay"}, "submittedAt": "2024-04-16T18:54:36+00:00"}}
    location = lti11.grade(lti11.user_of(), percentage=0.6, context=context)
    worker.run_until_idle()
    assert lti11.delivery(location)["status"] == "delivered"
    [call] = replace_calls(lti11.consumer)
    assert child_names(call.operation_element) == ["resultRecord"]
    assert child_names(child(call.operation_element, "resultRecord/result")) == ["resultScore"]


def test_outcome_url_with_a_query_string_is_signed_with_it(lti11: Lti11, worker: DeliveryWorker) -> None:
    url = lti11.consumer.url + "/mod/lti/service.php?instance=3&x=a%20b"
    lti11.launch_ok(lis_outcome_service_url=url)
    location = lti11.grade(lti11.user_of(), percentage=0.4)
    worker.run_until_idle()
    assert lti11.consumer.problems == []
    assert lti11.delivery(location)["status"] == "delivered"
    [call] = replace_calls(lti11.consumer)
    assert call.url == url


# --- delivery: what the consumer answers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "expected", "error_text"),
    [
        pytest.param(
            lambda c: c.fail_next("Tool does not accept grades", status=200),
            "failed",
            "Tool does not accept grades",
            id="moodle-failure-http-200",
        ),
        pytest.param(
            lambda c: c.fail_next(
                "Score is not between 0 and 1\n[EID_13960006980949683]",
                status=422,
                extra_status_xml="<ext_canvas_error_code>bad_score</ext_canvas_error_code>",
            ),
            "failed",
            "Score is not between 0 and 1",
            id="canvas-failure-http-422",
        ),
        pytest.param(
            lambda c: c.fail_next("replaceResult is not supported", status=200, code_major="unsupported"),
            "failed",
            "replaceResult is not supported",
            id="unsupported-http-200",
        ),
        pytest.param(
            lambda c: c.answer_next(503, "<html><body>Busy</body></html>", content_type="text/html"),
            "retrying",
            None,
            id="503",
        ),
        pytest.param(lambda c: c.answer_next(500, "oops", content_type="text/plain"), "retrying", None, id="500"),
        pytest.param(
            lambda c: c.answer_next(
                403,
                "403 Forbidden (Rate Limit Exceeded)\n",
                content_type="text/plain",
                headers={"X-Rate-Limit-Remaining": "0.0"},
            ),
            "retrying",
            None,
            id="canvas-403-rate-limit",
        ),
        pytest.param(
            lambda c: c.answer_next(200, "<html><body>Proxy error<br></body></html>", content_type="text/html"),
            "retrying",
            None,
            id="http-200-not-xml",
        ),
    ],
)
def test_consumer_answers_are_classified(
    lti11: Lti11,
    worker: DeliveryWorker,
    script: Callable[[Lti11Consumer], None],
    expected: str,
    error_text: str | None,
) -> None:
    lti11.launch_ok()
    script(lti11.consumer)
    location = lti11.grade(lti11.user_of(), percentage=0.7)
    worker.run_once()
    delivery = lti11.delivery(location)
    assert delivery["status"] == expected, delivery
    if error_text:
        assert error_text in (delivery["lastError"] or ""), delivery
    if expected == "retrying":
        # Once the consumer is well again, the retry delivers.
        drive(worker, lambda: lti11.delivery(location)["status"] == "delivered")
    assert lti11.consumer.problems == []


def test_timeout_is_retryable(lti11: Lti11) -> None:
    lti11.consumer.answer_next(200, code_major="success", delay=1.5)
    adapter = adapters.REGISTRY["lti11"].from_settings(
        {"consumer_key": KEY, "shared_secret": SECRET, **FAKE_HOSTS}, adapters.HttpClient(1, 0.3)
    )
    with pytest.raises(RetryableDeliveryError):
        adapter.deliver(_grade(0.5), _destination(lti11.consumer, "sid-timeout"))


@pytest.mark.parametrize(
    "kind",
    ["billion-laughs", "xxe-file", "xxe-http"],
)
def test_hostile_xml_answers_expand_nothing_and_deliver_nothing(
    lti11: Lti11, worker: DeliveryWorker, tmp_path: Path, kind: str
) -> None:
    marker = "PASSBACK-XXE-MARKER-7f3a"
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(marker)
    body = {
        "billion-laughs": billion_laughs(),
        "xxe-file": external_entity(secret_file.as_uri()),
        "xxe-http": external_entity(lti11.consumer.xxe_probe_url),
    }[kind]
    lti11.launch_ok()
    lti11.consumer.answer_next(200, body, content_type="application/xml")
    location = lti11.grade(lti11.user_of(), percentage=0.7)

    started = time.monotonic()
    worker.run_once()
    assert time.monotonic() - started < 10, "the worker came back"
    delivery = lti11.delivery(location)
    seen = (delivery.get("lastError") or "") + (delivery.get("lmsResponse") or "")
    assert marker not in seen
    assert "XXE-PROBE-WAS-FETCHED" not in seen
    assert "lol" * 20 not in seen
    assert lti11.consumer.xxe_probe_hits == 0
    assert delivery["status"] in {"retrying", "failed"}, delivery

    # Passback is still up and the next grade goes through.
    location = lti11.grade(lti11.user_of(), percentage=0.75)
    drive(worker, lambda: lti11.delivery(location)["status"] == "delivered")


def test_a_401_fails_at_once_without_a_resend(lti11: Lti11, worker: DeliveryWorker) -> None:
    # Outcome requests are signed with the shared secret: a 401 means the key, secret or clock is wrong, and a
    # resend with a fresh nonce cannot fix it (docs/adapters.md, "401").
    lti11.launch_ok()
    lti11.consumer.answer_next(401, "Invalid signature", content_type="text/plain")
    location = lti11.grade(lti11.user_of(), percentage=0.7)
    worker.run_once()
    delivery = lti11.delivery(location)
    assert (delivery["status"], delivery["attempts"], delivery["lmsStatus"]) == ("failed", 1, 401), delivery
    assert "consumer refused the signature" in delivery["lastError"]
    assert len(replace_calls(lti11.consumer)) == 1
    assert lti11.consumer.problems == []


def test_a_permanent_401_is_not_delivered(lti11: Lti11, worker: DeliveryWorker) -> None:
    lti11.launch_ok()
    lti11.consumer.answer_next(401, "Invalid signature", content_type="text/plain", count=100)
    location = lti11.grade(lti11.user_of(), percentage=0.7)
    worker.run_once()
    delivery = lti11.delivery(location)
    assert delivery["status"] == "failed", delivery
    assert len(replace_calls(lti11.consumer)) == 1, "one attempt sends the request once"
    assert lti11.consumer.problems == []


# --- awaiting the launch ----------------------------------------------------------------------------------


def test_grade_for_a_student_who_has_not_launched_waits_then_is_delivered(lti11: Lti11, worker: DeliveryWorker) -> None:
    course = "canvas-course-42"
    with lti11.world.session() as session:
        connection = session.get(LmsConnection, lti11.connection_id)
        assert connection is not None
        user = create_user(session, lti11.world.district_id, name="Grace", email="grace@school.example")
        enroll(session, connection, course, user)
        add_placement(session, lti11.world.district_id, connection.id, lti11.world.app_id, "quiz-1", course)
        # The LMS's name for the student is known (as a roster sync learns it), but not their sourcedId.
        session.add(
            LmsIdentity(
                district_id=lti11.world.district_id,
                user_id=user.id,
                lms_connection_id=connection.id,
                issuer=f"lti11:{KEY}",
                subject="stu-42",
            )
        )
        user_id = user.id
    location = lti11.grade(user_id, percentage=0.9)
    worker.run_until_idle()
    assert lti11.delivery(location)["status"] == "awaiting_launch"
    assert lti11.consumer.calls == []

    placements = lti11.counts()["placements"]
    lti11.launch_ok(user_id="stu-42", resource_link_id="rl-42", context_id=course)
    assert lti11.user_of("stu-42") == user_id
    assert lti11.counts()["placements"] == placements, "the launch found the placement made by hand"
    worker.run_until_idle()
    assert lti11.delivery(location)["status"] == "delivered"
    assert float(lti11.consumer.gradebook[lti11.consumer.sourcedid_for("stu-42", "rl-42")].score) == 0.9
    with lti11.world.session() as session:
        placement = session.scalar(select(Placement).where(Placement.course_id == course))
        assert placement is not None and placement.resource_link_id == "rl-42"


def test_a_launch_of_one_link_does_not_route_grades_of_another_link(lti11: Lti11, worker: DeliveryWorker) -> None:
    lti11.launch_ok()
    user_id = lti11.user_of()
    with lti11.world.session() as session:
        add_placement(session, lti11.world.district_id, lti11.connection_id, lti11.world.app_id, "quiz-2", COURSE)
    quiz2 = lti11.world.post_grade({"assignmentID": "quiz-2", "userID": user_id, "percentage": 0.3})
    assert quiz2.status_code == 202
    worker.run_until_idle()
    assert lti11.delivery(quiz2.headers["Location"])["status"] == "awaiting_launch"
    assert lti11.consumer.calls == []

    lti11.launch_ok(resource_link_id="rl-quiz-2", custom_assignment="quiz-2")
    worker.run_until_idle()
    assert lti11.delivery(quiz2.headers["Location"])["status"] == "delivered"
    [call] = replace_calls(lti11.consumer)
    assert call.sourcedid == lti11.consumer.sourcedid_for("canvas-user-1", "rl-quiz-2")


def test_a_student_linked_by_the_cli_keeps_one_user_and_their_grade_waits_for_the_launch(
    lti11: Lti11, worker: DeliveryWorker, runner: CliRunner
) -> None:
    course = "canvas-course-77"
    with lti11.world.session() as session:
        user_id = create_user(session, lti11.world.district_id, name="Lin").id
        add_placement(session, lti11.world.district_id, lti11.connection_id, lti11.world.app_id, "quiz-1", course)

    def enroll_cli(*extra: str) -> None:
        args = ["user", "enroll", "--district", lti11.world.district_id, "--lms", "Canvas 1.1", "--course", course]
        result = runner.invoke(main, [*args, "--user", user_id, *extra], catch_exceptions=False)
        assert result.exit_code == 0, result.output

    enroll_cli()
    location = lti11.grade(user_id, percentage=0.7)
    worker.run_until_idle()
    assert lti11.delivery(location)["status"] == "awaiting_launch"

    # Knowing the LMS's name for the student is not their sourcedid: the grade keeps waiting, nothing is sent.
    enroll_cli("--lms-user-id", "stu-77")
    worker.run_until_idle()
    assert lti11.delivery(location)["status"] == "awaiting_launch"
    assert lti11.consumer.calls == []

    users = lti11.counts()["users"]
    lti11.launch_ok(user_id="stu-77", resource_link_id="rl-77", context_id=course)
    assert lti11.user_of("stu-77") == user_id, "the launch found the user the CLI linked"
    assert lti11.counts()["users"] == users
    worker.run_until_idle()
    assert lti11.delivery(location)["status"] == "delivered"
    assert float(lti11.consumer.gradebook[lti11.consumer.sourcedid_for("stu-77", "rl-77")].score) == 0.7
    enroll_cli("--lms-user-id", "stu-77")  # linking again is harmless


def test_a_students_grade_goes_to_the_links_they_launched_and_waits_at_every_link_before(
    lti11: Lti11, worker: DeliveryWorker, runner: CliRunner
) -> None:
    course = "canvas-course-88"
    # The teacher adds quiz-1 twice to the course (two links); each is its own placement.
    for link in ("rl-p1", "rl-p2"):
        lti11.launch_ok(user_id="teacher-1", roles="Instructor", resource_link_id=link, context_id=course)
    with lti11.world.session() as session:
        links = session.scalars(select(Placement.resource_link_id).where(Placement.course_id == course)).all()
        user_id = create_user(session, lti11.world.district_id, name="Mo").id
    assert sorted(links) == ["rl-p1", "rl-p2"]
    args = ["user", "enroll", "--district", lti11.world.district_id, "--lms", "Canvas 1.1", "--course", course]
    result = runner.invoke(main, [*args, "--user", user_id, "--lms-user-id", "stu-88"], catch_exceptions=False)
    assert result.exit_code == 0, result.output

    # Launched neither link yet: the grade waits at both.
    first = lti11.grade(user_id, percentage=0.4)
    worker.run_until_idle()
    waiting = lti11.world.get(first).json()["deliveries"]
    assert [d["status"] for d in waiting] == ["awaiting_launch", "awaiting_launch"]

    # The student opens link 2: the grade goes there, and no longer waits for link 1 (that row is retired).
    lti11.launch_ok(user_id="stu-88", resource_link_id="rl-p2", context_id=course)
    worker.run_until_idle()
    [delivered] = lti11.world.get(first).json()["deliveries"]
    assert delivered["status"] == "delivered"
    with lti11.world.session() as session:
        retired = session.execute(
            select(Delivery.status, Delivery.last_error)
            .join(Placement, Placement.id == Delivery.placement_id)
            .where(Placement.resource_link_id == "rl-p1", Placement.course_id == course)
        ).all()
    assert [(status, "another link" in str(error)) for status, error in retired] == [("superseded", True)]
    assert float(lti11.consumer.gradebook[lti11.consumer.sourcedid_for("stu-88", "rl-p2")].score) == 0.4
    assert lti11.consumer.sourcedid_for("stu-88", "rl-p1") not in lti11.consumer.gradebook

    # A retake: opening link 1 as well makes it a destination, and the current grade goes there too.
    lti11.launch_ok(user_id="stu-88", resource_link_id="rl-p1", context_id=course)
    worker.run_until_idle()
    assert [d["status"] for d in lti11.world.get(first).json()["deliveries"]] == ["delivered", "delivered"]
    assert float(lti11.consumer.gradebook[lti11.consumer.sourcedid_for("stu-88", "rl-p1")].score) == 0.4

    second = lti11.grade(user_id, percentage=0.6)
    worker.run_until_idle()
    assert [d["status"] for d in lti11.world.get(second).json()["deliveries"]] == ["delivered", "delivered"]
    for link in ("rl-p1", "rl-p2"):
        assert float(lti11.consumer.gradebook[lti11.consumer.sourcedid_for("stu-88", link)].score) == 0.6


# --- read and delete --------------------------------------------------------------------------------------


def _grade(fraction: float) -> NormalizedGrade:
    return NormalizedGrade(
        grade_id="g-1",
        revision=1,
        user_id="u-1",
        assignment_id="quiz-1",
        assignment_name="Quiz 1",
        fraction=fraction,
        score_given=fraction * 10,
        score_maximum=10.0,
        timestamp=datetime.now(UTC),
    )


def _destination(consumer: Lti11Consumer, sourcedid: str) -> adapters.Destination:
    return adapters.Destination(
        "placement-1",
        COURSE,
        None,
        {"outcome_service_url": consumer.outcome_url, "extensions": {}},
        "canvas-user-1",
        user_data={"sourcedid": sourcedid},
    )


def test_adapter_reads_and_deletes_results(lti11: Lti11) -> None:
    adapter: Any = adapters.REGISTRY["lti11"].from_settings(
        {"consumer_key": KEY, "shared_secret": SECRET, **FAKE_HOSTS}, adapters.HttpClient(2, 5)
    )
    destination = _destination(lti11.consumer, "sid-read-1")
    assert adapter.read_result(destination) is None, "an empty textString is no grade"
    adapter.deliver(_grade(0.75), destination)
    assert adapter.read_result(destination) == pytest.approx(0.75)
    receipt = adapter.delete_result(destination)
    assert isinstance(receipt, adapters.DeliveryReceipt)
    assert "sid-read-1" not in lti11.consumer.gradebook
    assert adapter.read_result(destination) is None
    operations = [c.operation for c in lti11.consumer.calls]
    assert operations == ["readResult", "replaceResult", "readResult", "deleteResult", "readResult"]
    assert lti11.consumer.problems == []

    lti11.consumer.fail_next("sourcedid_invalid", status=422)
    with pytest.raises(DeliveryError):
        adapter.read_result(destination)


def test_delete_grade_sends_a_delete_result(lti11: Lti11, worker: DeliveryWorker) -> None:
    lti11.launch_ok()
    sourcedid = lti11.consumer.sourcedid_for("canvas-user-1", "rl-quiz-1")
    location = lti11.grade(lti11.user_of(), percentage=0.7)
    worker.run_until_idle()
    assert sourcedid in lti11.consumer.gradebook
    response = lti11.world.http.delete(lti11.world.url(location), headers=lti11.world.headers())
    assert response.status_code == 202, response.text
    worker.run_until_idle()
    assert [c.sourcedid for c in lti11.consumer.requests_for(operation="deleteResult")] == [sourcedid]
    assert sourcedid not in lti11.consumer.gradebook
    assert lti11.consumer.problems == []
    # A new post after the delete puts a grade back.
    location = lti11.grade(lti11.user_of(), percentage=0.4)
    worker.run_until_idle()
    assert lti11.delivery(location)["status"] == "delivered"
    assert float(lti11.consumer.gradebook[sourcedid].score or "nan") == 0.4


def test_status_api_reads_back_what_the_consumer_holds(lti11: Lti11, worker: DeliveryWorker) -> None:
    lti11.launch_ok()
    sourcedid = lti11.consumer.sourcedid_for("canvas-user-1", "rl-quiz-1")
    location = lti11.grade(lti11.user_of(), percentage=0.7)
    worker.run_until_idle()
    read = lti11.world.get(location + "/lms")
    assert read.status_code == 200, read.text
    [value] = read.json()["lms"]
    assert value["value"] == pytest.approx(0.7) and value["error"] is None
    # A teacher's override in the LMS is what a read-back shows.
    lti11.consumer.gradebook[sourcedid].score = "0.9"
    assert lti11.world.get(location + "/lms").json()["lms"][0]["value"] == pytest.approx(0.9)
    assert [c.operation for c in lti11.consumer.calls].count("readResult") == 2
    assert lti11.world.get("/v1/grades/0123456789abcdef01234567/lms").status_code == 404


def test_grade_for_a_launch_without_sourcedid_fails_with_the_reason(lti11: Lti11, worker: DeliveryWorker) -> None:
    # An ungraded link (no outcome URL, no sourcedid): the student did open it, so nothing waits for a launch.
    lti11.launch_ok(lis_result_sourcedid=None)
    location = lti11.grade(lti11.user_of(), percentage=0.5)
    worker.run_until_idle()
    delivery = lti11.delivery(location)
    assert delivery["status"] == "failed"
    assert "sent no lis_result_sourcedid" in delivery["lastError"]


# --- answers matched to their request (issue 13, item 6) --------------------------------------------------

OTHER_MESSAGE = "0b7c2d61-0000-4000-8000-000000000000"


def _success_in_the_body(status_xml: str = "") -> str:
    """An envelope whose header carries no status; a `success` sits inside the body instead."""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><imsx_POXEnvelopeResponse xmlns="{NS}"><imsx_POXHeader>'
        f"<imsx_POXResponseHeaderInfo><imsx_version>V1.0</imsx_version>{status_xml}</imsx_POXResponseHeaderInfo>"
        "</imsx_POXHeader><imsx_POXBody><replaceResultResponse><imsx_statusInfo><imsx_codeMajor>success"
        "</imsx_codeMajor></imsx_statusInfo></replaceResultResponse></imsx_POXBody></imsx_POXEnvelopeResponse>"
    )


@pytest.mark.parametrize(
    ("script", "error_text"),
    [
        pytest.param(
            lambda c: c.answer_next(200, code_major="success", message_ref=OTHER_MESSAGE),
            OTHER_MESSAGE,
            id="success-naming-another-message",
        ),
        pytest.param(
            lambda c: c.answer_next(
                200, code_major="success", operation_ref="readResult", body_xml="<readResultResponse/>"
            ),
            "readResult",
            id="success-for-another-operation",
        ),
        pytest.param(
            lambda c: c.answer_next(200, code_major="success", body_xml="<deleteResultResponse/>"),
            "deleteResultResponse",
            id="success-with-another-operations-body",
        ),
        pytest.param(
            lambda c: c.answer_next(200, _success_in_the_body(), content_type="application/xml"),
            "without a POX response",
            id="success-outside-the-header",
        ),
        pytest.param(
            lambda c: c.answer_next(200, code_major="processing", description="Queued"),
            "processing",
            id="processing-is-not-delivered",
        ),
        pytest.param(
            lambda c: c.fail_next("Score is not between 0 and 1", status=422, message_ref=OTHER_MESSAGE),
            OTHER_MESSAGE,
            id="failure-naming-another-message",
        ),
    ],
)
def test_an_answer_that_is_not_this_requests_success_is_not_delivered(
    lti11: Lti11, worker: DeliveryWorker, script: Callable[[Lti11Consumer], None], error_text: str
) -> None:
    """Only a success in the envelope's header status, naming our message and operation, is a delivery. Anything
    else is resent (replaceResult is idempotent) until the consumer's own success comes back."""
    lti11.launch_ok()
    sourcedid = lti11.consumer.sourcedid_for("canvas-user-1", "rl-quiz-1")
    script(lti11.consumer)
    location = lti11.grade(lti11.user_of(), percentage=0.7)
    worker.run_once()
    delivery = lti11.delivery(location)
    assert delivery["status"] == "retrying", delivery
    assert error_text in (delivery["lastError"] or ""), delivery
    assert sourcedid not in lti11.consumer.gradebook

    drive(worker, lambda: lti11.delivery(location)["status"] == "delivered")
    first, second = replace_calls(lti11.consumer)
    assert first.message_identifier != second.message_identifier, "each request has its own message id"
    assert float(lti11.consumer.gradebook[sourcedid].score or "nan") == 0.7
    assert lti11.consumer.problems == []


def test_a_request_and_its_answer_are_tied_by_the_message_id(lti11: Lti11, worker: DeliveryWorker) -> None:
    lti11.launch_ok()
    location = lti11.grade(lti11.user_of(), percentage=0.7)
    worker.run_until_idle()
    [call] = replace_calls(lti11.consumer)
    with lti11.world.session() as session:
        receipt = session.scalar(select(Delivery.receipt).where(Delivery.grade_id == location.rsplit("/", 1)[-1]))
    assert receipt is not None and receipt["message_id"] == call.message_identifier


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"operation_ref": "replaceResultRequest"}, id="moodle-names-the-request"),
        pytest.param({"namespace": OLD_NS, "operation_ref": "", "message_ref": ""}, id="old-moodle-namespace"),
        pytest.param({"namespace": OLD_NS}, id="canvas-oms1p0-namespace"),
        pytest.param({"message_ref": "  {echo}\n  "}, id="reference-with-whitespace"),
    ],
)
def test_consumer_dialects_of_a_success_are_delivered(
    lti11: Lti11, worker: DeliveryWorker, options: dict[str, str]
) -> None:
    """Moodle names the request (`replaceResultRequest`); old Moodle answers in another namespace with no
    operation reference (Moodle: mod/lti/servicelib.php); an empty messageRefIdentifier is taken as no reference."""
    lti11.launch_ok()
    if options.get("message_ref", "").strip() == "{echo}":
        # The id is known only once the request is built: echo it from the consumer's side.
        original = lti11.consumer._envelope

        def echo(call: Any, *args: Any, **kwargs: Any) -> str:
            kwargs["message_ref"] = f"  {call.message_identifier}\n  "
            return original(call, *args, **kwargs)

        lti11.consumer._envelope = echo  # type: ignore[method-assign]
        options = {}
    lti11.consumer.answer_next(200, code_major="success", **options)
    location = lti11.grade(lti11.user_of(), percentage=0.7)
    worker.run_once()
    assert lti11.delivery(location)["status"] == "delivered", lti11.delivery(location)
    assert len(replace_calls(lti11.consumer)) == 1


@pytest.mark.parametrize(
    "script",
    [
        pytest.param(
            lambda c: c.answer_next(
                200,
                code_major="success",
                message_ref=OTHER_MESSAGE,
                body_xml="<readResultResponse><result><resultScore><language>en</language>"
                "<textString>0.99</textString></resultScore></result></readResultResponse>",
            ),
            id="another-messages-score",
        ),
        pytest.param(
            lambda c: c.answer_next(
                200,
                code_major="success",
                extra_status_xml="<resultScore><language>en</language><textString>0.99</textString></resultScore>",
                body_xml="<readResultResponse><result><resultScore><language>en</language>"
                "<textString>0.7</textString></resultScore></result></readResultResponse>",
            ),
            id="a-score-outside-the-body",
        ),
    ],
)
def test_read_back_takes_only_the_score_of_its_own_answer(
    lti11: Lti11, worker: DeliveryWorker, script: Callable[[Lti11Consumer], None]
) -> None:
    lti11.launch_ok()
    location = lti11.grade(lti11.user_of(), percentage=0.7)
    worker.run_until_idle()
    script(lti11.consumer)
    [value] = lti11.world.get(location + "/lms").json()["lms"]
    assert value["value"] != pytest.approx(0.99), value
    assert value["value"] == pytest.approx(0.7) or value["error"], value


# --- extra credit on the LMS's scale (issue 13, item 7) ---------------------------------------------------


def _receipt(lti: Lti11, location: str) -> dict[str, Any]:
    with lti.world.session() as session:
        receipt = session.scalar(select(Delivery.receipt).where(Delivery.grade_id == location.rsplit("/", 1)[-1]))
    assert receipt is not None
    return dict(receipt)


def test_extra_credit_goes_as_points_on_the_canvas_assignments_scale(lti11: Lti11, worker: DeliveryWorker) -> None:
    """The app grades out of 10; the Canvas assignment is worth 50 points. 12/10 is 120%: 60 of Canvas's points."""
    lti11.consumer.points_possible = 50
    lti11.launch_ok()
    with lti11.world.session() as session:
        destination = session.scalar(
            select(Placement.destination).where(Placement.lms_connection_id == lti11.connection_id)
        )
    assert destination is not None and destination["points_possible"] == 50
    sourcedid = lti11.consumer.sourcedid_for("canvas-user-1", "rl-quiz-1")
    location = lti11.grade(lti11.user_of(), scoreGiven=12, scoreMaximum=10)
    worker.run_until_idle()
    delivery = lti11.delivery(location)
    assert delivery["status"] == "delivered", delivery
    [call] = replace_calls(lti11.consumer)
    assert float(child(call.operation_element, "resultRecord/result/resultTotalScore/textString").text) == 60.0
    assert float(lti11.consumer.gradebook[sourcedid].total_score or "nan") == 60.0
    assert "resultTotalScore 60 points of 50 possible" in delivery["lmsResponse"], delivery
    receipt = _receipt(lti11, location)
    assert (receipt["score_element"], receipt["score_sent"], receipt["points_possible"]) == (
        "resultTotalScore",
        "60",
        50,
    )
    # What Canvas holds, read back as its fraction, is the app's 120%.
    assert lti11.world.get(location + "/lms").json()["lms"][0]["value"] == pytest.approx(1.2)


@pytest.mark.parametrize(
    "points",
    [
        pytest.param(None, id="launch-without-points-possible"),
        pytest.param("$Canvas.assignment.pointsPossible", id="unsubstituted-variable"),
        pytest.param("0", id="no-points-possible"),
    ],
)
def test_extra_credit_without_the_lms_scale_is_capped_and_says_so(
    lti11: Lti11, worker: DeliveryWorker, points: str | None
) -> None:
    """resultTotalScore accepted, but the launch does not say the assignment's points: sending the app's own points
    would be right only by chance, so the capped fraction goes, and the delivery says why."""
    lti11.launch_ok(custom_canvas_assignment_points_possible=points)
    sourcedid = lti11.consumer.sourcedid_for("canvas-user-1", "rl-quiz-1")
    location = lti11.grade(lti11.user_of(), scoreGiven=12, scoreMaximum=10)
    worker.run_until_idle()
    delivery = lti11.delivery(location)
    assert delivery["status"] == "delivered", delivery
    [call] = replace_calls(lti11.consumer)
    result = child(call.operation_element, "resultRecord/result")
    assert child_names(result) == ["resultScore"]
    assert float(lti11.consumer.gradebook[sourcedid].score or "nan") == 1.0
    assert "capped at 1.0: the launch did not say the assignment's points possible" in delivery["lmsResponse"]
    receipt = _receipt(lti11, location)
    assert (receipt["score_element"], receipt["score_sent"]) == ("resultScore", "1")
    assert "points_possible" not in receipt


def test_a_score_within_full_marks_goes_as_the_fraction_whatever_the_scale(
    lti11: Lti11, worker: DeliveryWorker
) -> None:
    lti11.consumer.points_possible = 50
    lti11.launch_ok()
    location = lti11.grade(lti11.user_of(), scoreGiven=7, scoreMaximum=20)
    worker.run_until_idle()
    [call] = replace_calls(lti11.consumer)
    assert child_names(child(call.operation_element, "resultRecord/result")) == ["resultScore"]
    assert _receipt(lti11, location)["score_sent"] == "0.35"
