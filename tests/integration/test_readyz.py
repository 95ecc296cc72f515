"""/readyz: the database answers at the newest schema, a delivery worker beats, the broker (if any) answers
(docs/operations.md, Health checks). Each failing part is named in `failing`.

The embedded worker and /readyz read the same FrozenClock: a heartbeat grows old when the test moves the clock,
never by waiting."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from flask import Flask
from sqlalchemy import select, text

from gateway import create_app
from gateway.clock import FrozenClock
from gateway.composition import services_of
from gateway.db import Database
from gateway.migrate import upgrade
from gateway.models import WorkerHeartbeat
from gateway.services.heartbeats import record_heartbeat, schema_head
from tests.conftest import PG_URL, make_settings
from tests.fakes.scripted_lms import unused_port

# Redis for the broker check (the project's test Redis; this check is skipped without one).
REDIS_URL = os.environ.get("GATEWAY_TEST_BROKER_URL", "redis://127.0.0.1:6379/14")

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
        "failing": [],
        "database": {"reachable": True},
        "schema": {"current": True, "revision": schema_head(), "head": schema_head()},
        "worker": {
            "required": True,
            "lastHeartbeatAgeSeconds": 0.0,
            "maxHeartbeatAgeSeconds": MAX_AGE,
            "liveWorkers": 1,
        },
        "broker": {"configured": False, "reachable": None, "error": None},
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
    assert stale.json["failing"] == ["worker"]
    assert stale.json["database"] == {"reachable": True}
    assert stale.json["worker"]["lastHeartbeatAgeSeconds"] == MAX_AGE + 1
    assert stale.json["worker"]["liveWorkers"] == 0


def test_503_when_no_worker_ever_beat_unless_none_is_required(app: Flask, database_url: str) -> None:
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json is not None
    assert response.json["worker"]["lastHeartbeatAgeSeconds"] is None
    assert response.json["failing"] == ["worker"]

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
    assert response.json["failing"] == ["database", "worker"]
    assert response.json["database"] == {"reachable": False}
    assert response.json["schema"]["current"] is False


def beat(app: Flask) -> None:
    """A worker's heartbeat, now on the app's clock (as a running worker records it)."""
    now = services_of(app).clock.now()
    with services_of(app).database.transaction() as session:
        record_heartbeat(session, "test-host:1:worker", "worker", started_at=now, now=now)


def redis_available() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_timeout=1, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture
def older_schema(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """A database one migration behind the code: a fresh SQLite file migrated to the revision before the head,
    or (PostgreSQL, one database per run) the test database with its recorded revision set one back."""
    previous = "0017"
    assert schema_head() != previous
    if database_url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path_factory.mktemp('older') / 'passback.db'}"
        upgrade(url, previous)
        database = Database()
        database.configure(url)
        yield database
        database.dispose()
        return
    assert PG_URL is not None
    database = Database()
    database.configure(database_url)
    with database.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": previous})
    try:
        yield database
    finally:
        with database.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": schema_head()})
        database.dispose()


def test_503_when_the_schema_is_behind_the_code(database_url: str, older_schema: Database) -> None:
    app = create_app(make_settings(database_url, readyz_heartbeat_max_age_seconds=0), database=older_schema)
    response = app.test_client().get("/readyz")
    assert response.status_code == 503, response.json
    assert response.json is not None
    assert response.json["failing"] == ["schema"]
    assert response.json["schema"] == {"current": False, "revision": "0017", "head": schema_head()}
    assert response.json["database"] == {"reachable": True}


def test_503_when_the_broker_does_not_answer(app: Flask, database_url: str) -> None:
    beat(app)
    closed = f"redis://127.0.0.1:{unused_port()}/4"
    broken = create_app(make_settings(database_url, broker_url=closed), database=services_of(app).database)
    started = time.monotonic()
    response = broken.test_client().get("/readyz")
    assert time.monotonic() - started < 5, "the broker ping has a short timeout"
    assert response.status_code == 503, response.json
    assert response.json is not None
    assert response.json["failing"] == ["broker"]
    assert response.json["broker"]["configured"] is True
    assert response.json["broker"]["reachable"] is False
    assert "127.0.0.1" in response.json["broker"]["error"]
    assert response.json["worker"]["liveWorkers"] == 1


def test_ready_when_every_part_holds_with_a_broker(app: Flask, database_url: str) -> None:
    if not redis_available():
        pytest.skip(f"no Redis at {REDIS_URL}")
    beat(app)
    with_broker = create_app(make_settings(database_url, broker_url=REDIS_URL), database=services_of(app).database)
    response = with_broker.test_client().get("/readyz")
    assert response.status_code == 200, response.json
    assert response.json is not None
    assert response.json["status"] == "ready"
    assert response.json["failing"] == []
    assert response.json["broker"] == {"configured": True, "reachable": True, "error": None}
    assert response.json["schema"]["current"] is True
    assert response.json["worker"]["liveWorkers"] == 1


def test_healthz_stays_a_liveness_check(database_url: str, unreachable_database: Database) -> None:
    app = create_app(make_settings(database_url), database=unreachable_database)
    assert app.test_client().get("/healthz").json == {"status": "ok"}
