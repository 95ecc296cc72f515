"""GET /metrics (docs/operations.md, Metrics): scraped over HTTP from the live server after grades are posted and
delivered, parsed with prometheus_client's own parser, and checked by value. Counters live for the whole test
process, so each check compares two scrapes (the increase), never an absolute count."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from gateway import create_app
from gateway.clock import SYSTEM_CLOCK, FrozenClock
from gateway.composition import services_of
from gateway.services.token_cache import DatabaseTokenCache
from gateway.webhook_sender import WebhookSender
from gateway.worker import DeliveryWorker
from tests.conftest import LiveServer, make_settings
from tests.factories import World
from tests.fakes.webhook_receiver import Answer, WebhookReceiver

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"webhook_allow_private_addresses": True}


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as fake:
        yield fake


def scrape(world: World, **headers: str) -> Samples:
    response = world.http.get(world.url("/metrics"), headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def increase(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def ahead() -> FrozenClock:
    return FrozenClock(SYSTEM_CLOCK.now() + timedelta(minutes=1))


def test_metrics_count_intake_deliveries_lms_requests_throttling_and_webhooks(
    world: World, receiver: WebhookReceiver
) -> None:
    services = services_of(world.app)
    created = world.http.post(
        world.url("/v1/webhooks"), json={"url": receiver.url, "events": ["grade.delivered"]}, headers=world.headers()
    )
    assert created.status_code == 201, created.text
    receiver.secrets.append(created.json()["secret"])
    receiver.script(Answer(500))  # the first webhook is refused, the second taken (204)
    before = scrape(world)

    for student in world.students:
        assert world.post_grade({"assignmentID": "quiz-1", "userID": student, "percentage": 0.5}).status_code == 202
    assert world.post_grade({"assignmentID": "quiz-1", "percentage": 2}).status_code == 422

    waiting = scrape(world)
    assert increase(before, waiting, "passback_ingest_requests_total", endpoint="grade", status="202") == 2
    assert increase(before, waiting, "passback_ingest_requests_total", endpoint="grade", status="422") == 1
    connection = {"district": world.district_id, "connection": world.connection_id}
    assert value(waiting, "passback_deliveries", status="pending", **connection) == 2
    assert value(waiting, "passback_metrics_database_up") == 1
    age = value(waiting, "passback_oldest_undelivered_age_seconds", **connection)
    assert 0 <= age < 60

    # The LMS throttles the first write (429), then takes both grades.
    world.inject_faults(1, status=429, retry_after=0)
    clock = ahead()
    worker = DeliveryWorker(services.database, services.box, world.app.config["PASSBACK"], clock=clock)
    worker.run_until_idle()
    clock.advance(3600)
    worker.run_until_idle()
    sender = WebhookSender(services.database, services.box, world.app.config["PASSBACK"], clock=clock)
    sender.run_until_idle()
    clock.advance(3600)
    sender.run_until_idle()

    after = scrape(world)
    assert value(after, "passback_deliveries", status="pending", **connection) == 0
    assert (world.district_id, world.connection_id) not in {
        (dict(labels).get("district"), dict(labels).get("connection"))
        for name, labels in after
        if name == "passback_oldest_undelivered_age_seconds"
    }, "nothing is waiting any more"
    assert increase(before, after, "passback_delivery_outcomes_total", adapter="sandbox", status="delivered") == 2
    assert increase(before, after, "passback_delivery_outcomes_total", adapter="sandbox", status="retrying") == 1
    assert increase(before, after, "passback_lms_throttled_total", adapter="sandbox", status="429") == 1
    requests_2xx = increase(before, after, "passback_lms_request_seconds_count", adapter="sandbox", status_class="2xx")
    requests_4xx = increase(before, after, "passback_lms_request_seconds_count", adapter="sandbox", status_class="4xx")
    assert requests_2xx >= 2 and requests_4xx == 1
    assert increase(before, after, "passback_lms_request_seconds_sum", adapter="sandbox", status_class="2xx") > 0
    assert increase(before, after, "passback_webhook_deliveries_total", outcome="rejected") == 1
    assert increase(before, after, "passback_webhook_deliveries_total", outcome="delivered") == 2  # both grades


def test_a_fetched_lms_token_is_counted(app: Flask, live_server: LiveServer, http: requests.Session) -> None:
    services = services_of(app)
    cache = DatabaseTokenCache(services.database, services.box)

    def fetches() -> float:
        text = http.get(live_server.url + "/metrics", timeout=5).text
        [family] = [f for f in text_string_to_metric_families(text) if f.name == "passback_lms_token_fetches"]
        return sum(s.value for s in family.samples if s.name.endswith("_total"))

    before = fetches()
    cache.put("https://lms.example/token|client|scope", "a-token", 3600)
    assert cache.get("https://lms.example/token|client|scope") == "a-token"  # a hit fetches nothing
    assert fetches() - before == 1


def test_metrics_answer_this_host_only_unless_a_token_is_set(app: Flask, database_url: str) -> None:
    client = app.test_client()
    assert client.get("/metrics").status_code == 200, "the test client connects from 127.0.0.1"
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "10.1.2.3"}).status_code == 404
    forwarded = client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
    assert forwarded.status_code == 404, "a request through a proxy on this host is not this host's"

    guarded = create_guarded(app, database_url)
    assert guarded.get("/metrics").status_code == 401
    assert guarded.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    remote = guarded.get(
        "/metrics", headers={"Authorization": "Bearer scrape-me"}, environ_base={"REMOTE_ADDR": "10.1.2.3"}
    )
    assert remote.status_code == 200
    assert "passback_ingest_requests" in remote.text


def create_guarded(app: Flask, database_url: str) -> FlaskClient:
    return create_app(
        make_settings(database_url, metrics_token="scrape-me"), database=services_of(app).database
    ).test_client()
