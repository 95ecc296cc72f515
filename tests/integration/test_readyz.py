"""/readyz: the database answers and a delivery worker beats (docs/operations.md, Health checks).

The embedded worker and /readyz read the same FrozenClock: a heartbeat grows old when the test moves the clock,
never by waiting."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from flask import Flask
from sqlalchemy import select

from gateway import create_app
from gateway.clock import FrozenClock
from gateway.composition import services_of
from gateway.db import Database
from gateway.models import WorkerHeartbeat
from tests.conftest import make_settings

MAX_AGE = 60.0


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"readyz_heartbeat_max_age_seconds": MAX_AGE, "heartbeat_seconds": 5.0}


def heartbeats(app: Flask) -> list[WorkerHeartbeat]:
    with services_of(app).database.transaction() as session:
        rows = list(session.scalars(select(WorkerHeartbeat)))
        session.expunge_all()
        return rows


def wait_for_heartbeat(app: Flask) -> WorkerHeartbeat:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = heartbeats(app)
        if rows:
            [row] = rows
            return row
        time.sleep(0.02)
    raise AssertionError("the embedded worker recorded no heartbeat")


def test_ready_with_a_live_embedded_worker_and_503_once_it_stopped_beating(app: Flask) -> None:
    clock = FrozenClock()
    services_of(app).clock = clock
    embedded = services_of(app).start_embedded_worker()
    beat = wait_for_heartbeat(app)
    assert (beat.kind, beat.beat_at) == ("embedded", clock.now())
    client = app.test_client()

    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.json
    assert ready.json == {
        "status": "ready",
        "database": {"reachable": True},
        "worker": {
            "required": True,
            "lastHeartbeatAgeSeconds": 0.0,
            "maxHeartbeatAgeSeconds": MAX_AGE,
            "liveWorkers": 1,
        },
    }

    embedded.stop()
    assert not embedded.thread.is_alive()
    clock.advance(MAX_AGE)
    assert client.get("/readyz").status_code == 200, "a heartbeat exactly the maximum age old still counts"
    clock.advance(1)
    stale = client.get("/readyz")
    assert stale.status_code == 503
    assert stale.json is not None
    assert stale.json["status"] == "unavailable"
    assert stale.json["database"] == {"reachable": True}
    assert stale.json["worker"]["lastHeartbeatAgeSeconds"] == MAX_AGE + 1
    assert stale.json["worker"]["liveWorkers"] == 0


def test_503_when_no_worker_ever_beat_unless_none_is_required(app: Flask, database_url: str) -> None:
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json is not None
    assert response.json["worker"]["lastHeartbeatAgeSeconds"] is None

    database_only = create_app(
        make_settings(database_url, readyz_heartbeat_max_age_seconds=0), database=services_of(app).database
    )
    response = database_only.test_client().get("/readyz")
    assert response.status_code == 200
    assert response.json is not None
    assert response.json["worker"]["required"] is False


@pytest.fixture
def unreachable_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    database = Database()
    database.configure(f"sqlite:///{tmp_path_factory.mktemp('gone') / 'missing-dir' / 'passback.db'}")
    yield database
    database.dispose()


def test_503_when_the_database_is_unreachable(database_url: str, unreachable_database: Database) -> None:
    app = create_app(make_settings(database_url), database=unreachable_database)
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json is not None
    assert response.json["status"] == "unavailable"
    assert response.json["database"] == {"reachable": False}
