"""Every adapter in REGISTRY honours the same contract. An adapter's harness supplies a real LMS endpoint
(a fake LMS web app on 127.0.0.1) that can be told to accept, fail for now, or refuse."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

import pytest
from flask import Flask

from adapters import (
    REGISTRY,
    AdapterContext,
    DeliveryReceipt,
    Destination,
    HttpClient,
    NormalizedGrade,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from adapters.answers import LmsAnswer, Verdict
from adapters.url_policy import UrlAwaitingApproval
from gateway.composition import services_of
from gateway.services.keys import current_signing_key
from tests.factories import World, build_world
from tests.fakes.ags_platform import AgsPlatform
from tests.fakes.foreign_host import ForeignHost
from tests.fakes.lti11_consumer import Lti11Consumer
from tests.fakes.schoology_lms import Fault as SchoologyFault
from tests.fakes.schoology_lms import SchoologyFake
from tests.fakes.scripted_lms import Hang, Respond, ScriptedLms


class Harness(Protocol):
    """One per adapter kind, listed in HARNESSES: its `running(app, live_server, http)` class method starts the
    adapter's fake LMS and yields the harness (adding an LMS adds one class and one HARNESSES line)."""

    settings: dict[str, Any]
    destination: Destination
    context: AdapterContext | None
    # Settings with credentials the LMS refuses.
    bad_credentials: dict[str, Any]

    def fail_next(self, status: int, *, headers: dict[str, str] | None = None, count: int = 1) -> None:
        """The next `count` score writes answer `status` (with `headers`)."""

    def hold_next(self, seconds: float) -> None:
        """The next score write's answer is held `seconds` (or until the fake stops)."""

    def score_requests(self) -> int:
        """How many score writes reached the LMS (refused or not)."""

    def bad_item(self) -> tuple[NormalizedGrade, Destination]:
        """A grade and destination the LMS (or the adapter) refuses, alone."""

    def roster_destination(self) -> Destination:
        """A placement whose roster source has members (only for adapters with `supports_roster`)."""

    def stored_score(self) -> float | None: ...


@dataclass
class SandboxHarness:
    lms: ScriptedLms
    context = None

    @classmethod
    @contextmanager
    def running(cls, app: Flask, live_server: Any, http: Any) -> Iterator[SandboxHarness]:
        with ScriptedLms("contract-sandbox-secret-1") as lms:
            yield cls(lms)

    @property
    def settings(self) -> dict[str, Any]:
        return {"base_url": self.lms.base_url, "secret": self.lms.secret}

    @property
    def bad_credentials(self) -> dict[str, Any]:
        return {"secret": "not-" + self.lms.secret}

    @property
    def destination(self) -> Destination:
        return Destination("placement-1", "course-101", None, {"item_id": "quiz-1"}, "student-1")

    def fail_next(self, status: int, *, headers: dict[str, str] | None = None, count: int = 1) -> None:
        self.lms.script(*(Respond(status, headers=headers or {}, message="the sandbox says no") for _ in range(count)))

    def hold_next(self, seconds: float) -> None:
        self.lms.script(Hang(max_seconds=seconds))

    def score_requests(self) -> int:
        return len(self.lms.score_writes())

    def bad_item(self) -> tuple[NormalizedGrade, Destination]:
        # The sandbox LMS refuses a negative score (422).
        return replace(GRADE, grade_id="g-bad", score_given=-1.0), replace(self.destination, lms_user_id="student-2")

    def roster_destination(self) -> Destination:
        raise NotImplementedError

    def stored_score(self) -> float | None:
        entry = self.lms.gradebook.get(("course-101", "quiz-1", "student-1"))
        return entry.score_given if entry else None


@dataclass
class Lti13Harness:
    world: World
    platform: AgsPlatform

    @classmethod
    @contextmanager
    def running(cls, app: Flask, live_server: Any, http: Any) -> Iterator[Lti13Harness]:
        world = build_world(app, live_server.url, http)
        with AgsPlatform("client-1", f"{live_server.url}/lti/jwks") as platform:
            yield cls(world, platform)

    def __post_init__(self) -> None:
        self.lineitem = self.platform.add_lineitem("quiz-1", "Quiz 1", 10)
        with services_of(self.world.app).database.transaction() as session:
            key = current_signing_key(session, services_of(self.world.app).box)
        self.context = AdapterContext(signing_key=key)

    @property
    def settings(self) -> dict[str, Any]:
        return {
            "platform": "generic",
            "issuer": "https://platform.example",
            "client_id": "client-1",
            "deployment_ids": ["d1"],
            "auth_url": f"{self.platform.url}/auth",
            "token_url": self.platform.token_url,
            "jwks_url": f"{self.platform.url}/jwks",
            # The fakes listen on loopback over http.
            "allow_private_addresses": True,
        }

    # The platform knows no such client: its token endpoint refuses the assertion.
    bad_credentials = {"client_id": "client-unknown"}

    @property
    def destination(self) -> Destination:
        return Destination("placement-1", "course-101", None, {"lineitem": self.lineitem}, "sub-ada")

    def fail_next(self, status: int, *, headers: dict[str, str] | None = None, count: int = 1) -> None:
        self.platform.fail_next(
            status, '{"errors": {"type": "x", "message": "platform says no"}}', headers=headers, count=count
        )

    def hold_next(self, seconds: float) -> None:
        self.platform.fail_next(200, "{}", hold=seconds)

    def score_requests(self) -> int:
        return self.platform.score_requests

    def bad_item(self) -> tuple[NormalizedGrade, Destination]:
        # A line item the platform does not have (404).
        gone = replace(self.destination, data={"lineitem": self.platform.lineitem_url(99)}, lms_user_id="sub-bob")
        return replace(GRADE, grade_id="g-bad"), gone

    def roster_destination(self) -> Destination:
        self.platform.members = [
            {"user_id": "sub-ada", "status": "Active", "roles": ["Learner"], "email": "ada@school.example"},
            {"user_id": "sub-bob", "status": "Inactive", "roles": ["Learner"]},
        ]
        return replace(
            self.destination, data={**self.destination.data, "context_memberships_url": self.platform.memberships_url}
        )

    def stored_score(self) -> float | None:
        score = self.platform.score_of("sub-ada")
        return score["scoreGiven"] if score else None


@dataclass
class Lti11Harness:
    consumer: Lti11Consumer
    context = None

    @classmethod
    @contextmanager
    def running(cls, app: Flask, live_server: Any, http: Any) -> Iterator[Lti11Harness]:
        with Lti11Consumer("contract-key", "contract-secret-1") as consumer:
            yield cls(consumer)

    @property
    def settings(self) -> dict[str, Any]:
        return {
            "consumer_key": "contract-key",
            "shared_secret": "contract-secret-1",
            "allowed_hosts": ["127.0.0.1"],
            "allow_private_addresses": True,
            "outcome_service_url": self.consumer.outcome_url,
        }

    bad_credentials = {"shared_secret": "not-the-contract-secret"}

    @property
    def destination(self) -> Destination:
        return Destination(
            "placement-1",
            "course-101",
            None,
            {"outcome_service_url": self.consumer.outcome_url, "extensions": {}},
            "user-1",
            user_data={"sourcedid": "sourcedid-1"},
        )

    def fail_next(self, status: int, *, headers: dict[str, str] | None = None, count: int = 1) -> None:
        self.consumer.answer_next(status, "the consumer says no", count=count, headers=headers or {})

    def hold_next(self, seconds: float) -> None:
        self.consumer.answer_next(200, "", delay=seconds)

    def score_requests(self) -> int:
        return len(self.consumer.requests_for(operation="replaceResult"))

    def bad_item(self) -> tuple[NormalizedGrade, Destination]:
        # The student launched, but the LMS sent no lis_result_sourcedid: refused before anything is sent.
        return replace(GRADE, grade_id="g-bad"), replace(
            self.destination, lms_user_id="user-2", user_data={"sourcedid": ""}
        )

    def roster_destination(self) -> Destination:
        raise NotImplementedError

    def stored_score(self) -> float | None:
        # LTI 1.1 carries a fraction; the consumer's gradebook scales it by the item's points, as Canvas does.
        entry = self.consumer.gradebook.get("sourcedid-1")
        return float(entry.score) * self.consumer.points_possible if entry and entry.score else None


@dataclass
class SchoologyHarness:
    fake: SchoologyFake
    context = None

    @classmethod
    @contextmanager
    def running(cls, app: Flask, live_server: Any, http: Any) -> Iterator[SchoologyHarness]:
        with SchoologyFake("contract-key", "contract-secret") as fake:
            yield cls(fake)

    def __post_init__(self) -> None:
        self.fake.add_assignment("7001", "5001", max_points=10)
        self.enrollment_id = self.fake.add_enrollment("7001", "201")

    @property
    def settings(self) -> dict[str, Any]:
        return {
            "base_url": self.fake.url,
            "consumer_key": "contract-key",
            "consumer_secret": "contract-secret",
            "allow_private_addresses": True,
        }

    bad_credentials = {"consumer_secret": "not-the-contract-secret"}

    @property
    def destination(self) -> Destination:
        return Destination("placement-1", "7001", "7001", {"section_id": "7001", "assignment_id": "5001"}, "201")

    def fail_next(self, status: int, *, headers: dict[str, str] | None = None, count: int = 1) -> None:
        body = json.dumps({"status": status, "message": "Schoology says no"})
        self.fake.faults.append(SchoologyFault(status, body, headers or {}, count, method="PUT"))

    def hold_next(self, seconds: float) -> None:
        self.fake.faults.append(SchoologyFault(204, "", method="PUT", hold=seconds))

    def score_requests(self) -> int:
        return sum(1 for method, target in self.fake.requests if method == "PUT" and target.endswith("/grades"))

    def bad_item(self) -> tuple[NormalizedGrade, Destination]:
        # A student not enrolled in the section (in the same batch as an enrolled one).
        return replace(GRADE, grade_id="g-bad"), replace(self.destination, lms_user_id="999")

    def roster_destination(self) -> Destination:
        self.fake.add_enrollment("7001", "202", status=2)
        return self.destination

    def stored_score(self) -> float | None:
        entry = self.fake.grades.get(("7001", "5001", self.enrollment_id))
        return float(entry["grade"]) if entry and entry["grade"] is not None else None


HARNESSES: dict[str, Any] = {
    "sandbox": SandboxHarness,
    "lti13": Lti13Harness,
    "lti11": Lti11Harness,
    "schoology": SchoologyHarness,
}


def test_every_registered_adapter_has_a_harness() -> None:
    assert set(REGISTRY) == set(HARNESSES)


@pytest.fixture(params=sorted(REGISTRY))
def harness(request: pytest.FixtureRequest, app: Flask, live_server: Any, http: Any) -> Iterator[Harness]:
    with HARNESSES[request.param].running(app, live_server, http) as running:
        yield running


@pytest.fixture
def adapter_kind(harness: Harness) -> str:
    return next(kind for kind, cls in HARNESSES.items() if isinstance(harness, cls))


GRADE = NormalizedGrade(
    grade_id="g1",
    revision=1,
    user_id="u1",
    assignment_id="quiz-1",
    assignment_name="Quiz 1",
    fraction=0.75,
    score_given=7.5,
    score_maximum=10.0,
    timestamp=datetime(2026, 11, 23, 10, 0, 0),
)


def _adapter(kind: str, harness: Harness, **settings: Any) -> Any:
    return REGISTRY[kind].from_settings({**harness.settings, **settings}, HttpClient(2, 5), harness.context)


def test_delivers_and_returns_a_receipt(adapter_kind: str, harness: Harness) -> None:
    receipt = _adapter(adapter_kind, harness).deliver(GRADE, harness.destination)
    assert isinstance(receipt, DeliveryReceipt)
    assert receipt.lms_status is not None and 200 <= receipt.lms_status < 300
    assert harness.stored_score() == 7.5


def test_every_lms_adapter_calls_only_its_connections_hosts(adapter_kind: str, harness: Harness) -> None:
    if not REGISTRY[adapter_kind].url_policed:
        pytest.skip("the sandbox is Passback's own gradebook at its configured base_url, and hands out no URLs")
    adapter = _adapter(adapter_kind, harness)
    with ForeignHost() as foreign:
        with pytest.raises(UrlAwaitingApproval, match="outside its registered hosts"):
            adapter.http.request("GET", foreign.url("localhost") + "/anything")
        assert foreign.hits == []


def test_delivering_twice_is_safe(adapter_kind: str, harness: Harness) -> None:
    adapter = _adapter(adapter_kind, harness)
    adapter.deliver(GRADE, harness.destination)
    adapter.deliver(GRADE, harness.destination)
    assert harness.stored_score() == 7.5


@pytest.mark.parametrize("status", [500, 502, 503, 429], ids=lambda s: f"http-{s}")
def test_transient_lms_errors_are_retryable(adapter_kind: str, harness: Harness, status: int) -> None:
    harness.fail_next(status)
    with pytest.raises(RetryableDeliveryError) as caught:
        _adapter(adapter_kind, harness).deliver(GRADE, harness.destination)
    assert caught.value.lms_status == status
    assert harness.stored_score() is None


@pytest.mark.parametrize("status", [400, 403, 404, 422], ids=lambda s: f"http-{s}")
def test_refusals_are_permanent_and_keep_the_lms_text(adapter_kind: str, harness: Harness, status: int) -> None:
    harness.fail_next(status)
    with pytest.raises(PermanentDeliveryError) as caught:
        _adapter(adapter_kind, harness).deliver(GRADE, harness.destination)
    assert caught.value.lms_status == status
    assert caught.value.lms_body


UNREACHABLE = "http://127.0.0.1:9/nothing-listens-here"


def test_unreachable_lms_is_retryable(adapter_kind: str, harness: Harness) -> None:
    # Each adapter keeps the LMS's address somewhere else: in its settings, or in the placement's destination.
    given = harness.destination
    destination = Destination(
        given.placement_id,
        given.course_id,
        given.section_id,
        {**given.data, "outcome_service_url": UNREACHABLE},
        given.lms_user_id,
        given.user_data,
    )
    with pytest.raises(RetryableDeliveryError):
        _adapter(adapter_kind, harness, base_url=UNREACHABLE, token_url=UNREACHABLE).deliver(GRADE, destination)


def test_probe_reports_health(adapter_kind: str, harness: Harness) -> None:
    assert _adapter(adapter_kind, harness).probe().ok is True


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_settings_schema_refuses_empty_settings(kind: str) -> None:
    errors = REGISTRY[kind].settings_schema().validate({})
    assert errors, "an adapter with required settings must name them"


def test_adapters_and_schemas_import_neither_flask_nor_gateway() -> None:
    code = (
        "import sys, adapters, schemas.grades, schemas.assignments;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('flask', 'gateway'));"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# --- what each LMS answer means: every adapter through the same cases (adapters/answers.py, docs/adapters.md) ---


def _refreshes_on_401(kind: str) -> bool:
    return REGISTRY[kind].answer_table.verdict(LmsAnswer(401)) is Verdict.REFRESH_TOKEN_THEN_RETRY


def test_a_401_fails_for_good_at_once_or_after_one_fresh_token(adapter_kind: str, harness: Harness) -> None:
    # Shared-secret adapters (sandbox, LTI 1.1, Schoology): the secret is wrong, one request. Token holders
    # (LTI 1.3): the token is dropped and fetched afresh, the score sent once more, then the 401 is final.
    harness.fail_next(401, count=2)
    with pytest.raises(PermanentDeliveryError) as caught:
        _adapter(adapter_kind, harness).deliver(GRADE, harness.destination)
    assert not isinstance(caught.value, RetryableDeliveryError)
    assert caught.value.lms_status == 401
    assert harness.score_requests() == (2 if _refreshes_on_401(adapter_kind) else 1)
    assert harness.stored_score() is None


def test_a_single_401_to_a_token_holder_is_cured_by_a_fresh_token(adapter_kind: str, harness: Harness) -> None:
    if not _refreshes_on_401(adapter_kind):
        pytest.skip("a shared-secret adapter does not resend a 401 (see the test above)")
    harness.fail_next(401)
    receipt = _adapter(adapter_kind, harness).deliver(GRADE, harness.destination)
    assert receipt.lms_status is not None and 200 <= receipt.lms_status < 300
    assert harness.score_requests() == 2
    assert harness.stored_score() == 7.5


@pytest.mark.parametrize("status", [408, 425, 429, 503], ids=lambda s: f"http-{s}")
def test_retryable_answers_carry_retry_after(adapter_kind: str, harness: Harness, status: int) -> None:
    harness.fail_next(status, headers={"Retry-After": "7"})
    with pytest.raises(RetryableDeliveryError) as caught:
        _adapter(adapter_kind, harness).deliver(GRADE, harness.destination)
    assert (caught.value.lms_status, caught.value.retry_after) == (status, 7.0)
    assert harness.stored_score() is None


def test_an_answer_held_past_the_deadline_is_retryable(adapter_kind: str, harness: Harness) -> None:
    harness.hold_next(10.0)
    adapter = REGISTRY[adapter_kind].from_settings(harness.settings, HttpClient(2, 5, deadline=0.5), harness.context)
    with pytest.raises(RetryableDeliveryError) as caught:
        adapter.deliver(GRADE, harness.destination)
    # Cut by the deadline or by the read timeout it caps, whichever fires first: no answer, nothing stored.
    assert caught.value.lms_status is None
    assert caught.value.message.startswith(("no complete answer from", "timed out talking to")), caught.value.message
    assert harness.stored_score() is None


def test_one_bad_item_in_a_batch_fails_alone(adapter_kind: str, harness: Harness) -> None:
    bad_grade, bad_destination = harness.bad_item()
    outcomes = _adapter(adapter_kind, harness).deliver_batch(
        [(bad_grade, bad_destination), (GRADE, harness.destination)]
    )
    assert len(outcomes) == 2
    assert isinstance(outcomes[0], PermanentDeliveryError), outcomes[0]
    assert isinstance(outcomes[1], DeliveryReceipt), outcomes[1]
    assert harness.stored_score() == 7.5


def test_read_and_delete_round_trip(adapter_kind: str, harness: Harness) -> None:
    cls = REGISTRY[adapter_kind]
    if not (cls.supports_read or cls.supports_delete):
        pytest.skip(f"the {adapter_kind} adapter neither reads nor deletes grades")
    adapter = _adapter(adapter_kind, harness)
    adapter.deliver(GRADE, harness.destination)
    if cls.supports_read:
        assert adapter.read_result(harness.destination) == pytest.approx(GRADE.fraction)
    if cls.supports_delete:
        receipt = adapter.delete_result(harness.destination)
        assert receipt.lms_status is not None and 200 <= receipt.lms_status < 300
        assert harness.stored_score() is None
        if cls.supports_read:
            assert adapter.read_result(harness.destination) is None


def test_roster_has_the_shape_roster_sync_reads(adapter_kind: str, harness: Harness) -> None:
    cls = REGISTRY[adapter_kind]
    if not cls.supports_roster:
        pytest.skip(f"the {adapter_kind} adapter has no roster service")
    destination = harness.roster_destination()
    source = cls.roster_source(destination.data, destination.section_id)
    assert source
    members = _adapter(adapter_kind, harness).memberships(source)
    assert members
    for member in members:
        assert isinstance(member["user_id"], str) and member["user_id"]
        assert member["status"] in {"Active", "Inactive"}
    assert {m["status"] for m in members} == {"Active", "Inactive"}


def test_probe_fails_on_bad_credentials(adapter_kind: str, harness: Harness) -> None:
    report = _adapter(adapter_kind, harness, **harness.bad_credentials).probe()
    assert report.ok is False, report
    assert report.message
