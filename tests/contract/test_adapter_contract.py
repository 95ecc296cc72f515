"""Every adapter in REGISTRY honours the same contract. An adapter's harness supplies a real LMS endpoint
(a fake LMS web app on 127.0.0.1) that can be told to accept, fail for now, or refuse."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
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
from adapters.url_policy import UrlAwaitingApproval
from gateway.composition import services_of
from gateway.services.keys import current_signing_key
from tests.factories import World, build_world
from tests.fakes.ags_platform import AgsPlatform
from tests.fakes.foreign_host import ForeignHost
from tests.fakes.lti11_consumer import Lti11Consumer
from tests.fakes.schoology_lms import Fault as SchoologyFault
from tests.fakes.schoology_lms import SchoologyFake


class Harness(Protocol):
    settings: dict[str, Any]
    destination: Destination
    context: AdapterContext | None

    def fail_next(self, status: int) -> None: ...

    def stored_score(self) -> float | None: ...


@dataclass
class SandboxHarness:
    world: World

    @property
    def settings(self) -> dict[str, Any]:
        return {
            "base_url": f"{self.world.base_url}/sandbox-lms/{self.world.connection_id}",
            "secret": self.world.sandbox_secret,
        }

    @property
    def destination(self) -> Destination:
        return Destination("placement-1", "course-101", None, {"item_id": "quiz-1"}, self.world.students[0])

    context = None

    def fail_next(self, status: int) -> None:
        self.world.inject_faults(1, status)

    def stored_score(self) -> float | None:
        entries = self.world.gradebook()
        return entries[0]["scoreGiven"] if entries else None


@dataclass
class Lti13Harness:
    world: World
    platform: AgsPlatform

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

    @property
    def destination(self) -> Destination:
        return Destination("placement-1", "course-101", None, {"lineitem": self.lineitem}, "sub-ada")

    def fail_next(self, status: int) -> None:
        self.platform.fail_next(status, '{"errors": {"type": "x", "message": "platform says no"}}')

    def stored_score(self) -> float | None:
        score = self.platform.score_of("sub-ada")
        return score["scoreGiven"] if score else None


@dataclass
class Lti11Harness:
    consumer: Lti11Consumer
    context = None

    @property
    def settings(self) -> dict[str, Any]:
        return {
            "consumer_key": "contract-key",
            "shared_secret": "contract-secret-1",
            "allowed_hosts": ["127.0.0.1"],
            "allow_private_addresses": True,
        }

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

    def fail_next(self, status: int) -> None:
        self.consumer.answer_next(status, "the consumer says no")

    def stored_score(self) -> float | None:
        # LTI 1.1 carries a fraction; the consumer's gradebook scales it by the item's points, as Canvas does.
        entry = self.consumer.gradebook.get("sourcedid-1")
        return float(entry.score) * self.consumer.points_possible if entry and entry.score else None


@dataclass
class SchoologyHarness:
    fake: SchoologyFake
    context = None

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

    @property
    def destination(self) -> Destination:
        return Destination("placement-1", "7001", "7001", {"section_id": "7001", "assignment_id": "5001"}, "201")

    def fail_next(self, status: int) -> None:
        body = json.dumps({"status": status, "message": "Schoology says no"})
        self.fake.faults.append(SchoologyFault(status, body, method="PUT"))

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
    world = build_world(app, live_server.url, http)
    if request.param == "lti13":
        with AgsPlatform("client-1", f"{live_server.url}/lti/jwks") as platform:
            yield Lti13Harness(world, platform)
    elif request.param == "lti11":
        with Lti11Consumer("contract-key", "contract-secret-1") as consumer:
            yield Lti11Harness(consumer)
    elif request.param == "schoology":
        with SchoologyFake("contract-key", "contract-secret") as fake:
            yield SchoologyHarness(fake)
    else:
        yield HARNESSES[request.param](world)


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
    if adapter_kind == "sandbox":
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
