"""GET /metrics (docs/operations.md, Metrics): scraped over HTTP from the live server after grades are posted and
delivered, parsed with prometheus_client's own parser, and checked by value. Counters live for the whole test
process, so each check compares two scrapes (the increase), never an absolute count."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from gateway import create_app
from gateway.clock import SYSTEM_CLOCK, FrozenClock
from gateway.composition import services_of
from gateway.services.token_cache import DatabaseTokenCache
from gateway.webhook_sender import WebhookSender
from gateway.worker import DeliveryWorker
from tests.conftest import TEST_ENCRYPTION_KEY, LiveServer, make_settings
from tests.factories import World
from tests.fakes.scripted_lms import unused_port
from tests.fakes.webhook_receiver import Answer, WebhookReceiver

REPO = Path(__file__).resolve().parents[2]

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


@pytest.mark.slow
@pytest.mark.parametrize("directory", ["given", "automatic"])
def test_gunicorn_workers_share_their_counts_through_the_multiprocess_directory(
    app: Flask, database_url: str, tmp_path: Path, directory: str
) -> None:
    """Two gunicorn workers, with PROMETHEUS_MULTIPROC_DIR or without (gunicorn.conf.py makes a directory):
    whichever serves the scrape sums both processes."""
    gunicorn = Path(sys.executable).parent / "gunicorn"
    if not gunicorn.exists():
        pytest.skip("gunicorn is not installed (pip install 'passback[server]')")
    port = unused_port()
    (tmp_path / "prometheus").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if directory == "given":
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "prometheus")
        (tmp_path / "prometheus" / "counter_1.db").write_bytes(b"left by an earlier run")
    env.update(
        {
            "GATEWAY_DATABASE_URL": database_url,
            "GATEWAY_ENCRYPTION_KEYS": TEST_ENCRYPTION_KEY,
            "GATEWAY_SECRET_KEY": "test-secret-key",
            "GATEWAY_EMBEDDED_WORKER": "false",
            "GATEWAY_INSTANCE_DIR": str(tmp_path / "instance"),
        }
    )
    argv = [str(gunicorn), "-w", "2", "-b", f"127.0.0.1:{port}", "--chdir", str(REPO), "wsgi:app"]
    with (tmp_path / "gunicorn.log").open("wb") as log:
        process = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(url + "/healthz", timeout=15)
                break
            except requests.RequestException:  # refused before the bind; a worker still importing times out
                assert process.poll() is None, (tmp_path / "gunicorn.log").read_text()
                assert time.monotonic() < deadline, "gunicorn never accepted a connection"
                time.sleep(0.1)
        # One worker is held by a request whose headers are not finished (a sync worker reads it to the end), so
        # the other serves the next six; then the held one is finished and counted by the first: both count.
        held = socket.create_connection(("127.0.0.1", port), timeout=15)
        held.sendall(b"POST /v1/grade HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        time.sleep(0.5)
        for _ in range(6):
            assert requests.post(url + "/v1/grade", json={}, timeout=15).status_code == 401
        held.sendall(b"Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        assert held.recv(64).startswith(b"HTTP/1.1 401")
        held.close()
        if directory == "given":
            counted_by = [n for n in intake_by_file(tmp_path / "prometheus", tmp_path / "each") if n]
            assert len(counted_by) == 2, f"each worker counted its own: {counted_by}"
        for _ in range(4):
            text = requests.get(url + "/metrics", timeout=15).text
            samples = {
                (s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }
            assert value(samples, "passback_ingest_requests_total", endpoint="grade", status="401") == 7
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(15)
    logged = [json.loads(line) for line in (tmp_path / "gunicorn.log").read_text().splitlines() if line.startswith("{")]
    intake = [line for line in logged if line.get("logger") == "passback.access" and line.get("path") == "/v1/grade"]
    assert len(intake) == 7 and all(line["request_id"] and line["status"] == 401 for line in intake)


def intake_by_file(directory: Path, scratch: Path) -> list[float]:
    """Each process's own intake count: the multiprocess collector run on one process's file at a time."""
    counts = []
    for index, file in enumerate(sorted(directory.glob("counter_*.db"))):
        alone = scratch / str(index)
        alone.mkdir(parents=True)
        shutil.copy(file, alone / file.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))
        counts.append(
            registry.get_sample_value("passback_ingest_requests_total", {"endpoint": "grade", "status": "401"}) or 0.0
        )
    return counts
