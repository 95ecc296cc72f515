"""Fixtures: the app on SQLite always and on PostgreSQL when GATEWAY_TEST_DATABASE_URL is set, a real HTTP
server on 127.0.0.1 for it, a delivery worker, and small factories for the data every test needs."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cryptography.fernet import Fernet
from flask import Flask
from sqlalchemy import text
from werkzeug.serving import make_server

from gateway import create_app
from gateway.composition import services_of
from gateway.config import Settings
from gateway.db import Database
from gateway.migrate import upgrade
from gateway.models import Base
from gateway.worker import DeliveryWorker
from tests.factories import World, build_world

PG_URL = os.environ.get("GATEWAY_TEST_DATABASE_URL")
BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])
TEST_ENCRYPTION_KEY = Fernet.generate_key().decode()


def _reset_postgres(url: str) -> None:
    from gateway.db import make_engine

    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated database per backend: the Alembic migrations are what build the schema under test."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'passback.db'}"
    else:
        assert PG_URL is not None
        url = PG_URL
        _reset_postgres(url)
    upgrade(url)
    return url


def make_settings(database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "secret_key": "test-secret-key",
        "encryption_keys": TEST_ENCRYPTION_KEY,
        "public_url": "http://127.0.0.1:0",
        "embedded_worker": False,
        "worker_poll_seconds": 0.05,
        "lease_seconds": 30.0,
        "backoff_base_seconds": 0.02,
        "backoff_max_seconds": 0.1,
        "max_attempts": 15,
        "http_connect_timeout": 2.0,
        "http_read_timeout": 5.0,
        # Tests script 429s and check the retry at once: a short shared pause keeps them quick.
        "connection_pause_seconds": 0.05,
        # Throttling has its own tests; elsewhere it must not slow a thousand test deliveries down.
        "connection_rate": 100_000.0,
        "connection_burst": 100_000,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def clear_tables(database: Database) -> None:
    # DELETE, children first: on a handful of rows it is much faster than TRUNCATE on PostgreSQL.
    with database.engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())


@pytest.fixture(scope="session")
def shared_database(database_url: str) -> Iterator[Database]:
    """One engine per backend for the whole run, so SQLAlchemy compiles each statement once."""
    database = Database()
    database.configure(database_url)
    yield database
    database.dispose()


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    """Override in a test module to change settings for its app."""
    return {}


@pytest.fixture
def app(database_url: str, shared_database: Database, settings_overrides: dict[str, object]) -> Iterator[Flask]:
    clear_tables(shared_database)
    app = create_app(make_settings(database_url, **settings_overrides), database=shared_database)
    yield app
    worker = services_of(app).embedded_worker
    if worker is not None:
        worker.stop()
    assert shared_database.session is not None
    shared_database.session.remove()


class LiveServer:
    def __init__(self, app: Flask) -> None:
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        # A short poll interval: shutdown() waits for the loop's next poll, 0.5 s by default, on every test.
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.thread.join(5)


@pytest.fixture
def live_server(app: Flask) -> Iterator[LiveServer]:
    app.config["PASSBACK"].public_url = "pending"
    with LiveServer(app) as server:
        app.config["PASSBACK"].public_url = server.url
        yield server


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture
def worker(app: Flask) -> DeliveryWorker:
    return DeliveryWorker(services_of(app).database, services_of(app).box, app.config["PASSBACK"])


@pytest.fixture
def world(app: Flask, live_server: LiveServer, http: requests.Session) -> World:
    """A district with an authorized app, a catalog, a sandbox LMS served by the live server, a course with
    two enrolled students, and the first assignment placed there."""
    return build_world(app, live_server.url, http)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    path = Path(__file__).parent / "artifacts"
    path.mkdir(exist_ok=True)
    return path
