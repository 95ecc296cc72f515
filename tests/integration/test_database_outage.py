"""PostgreSQL backends terminated as a failover or an admin restart does (`pg_terminate_backend`): a request
whose connection dies answers 503 with Retry-After (nothing committed), the next request gets a fresh
connection and succeeds, and the delivery worker carries on. The backends are terminated from a connection of
the test's own at a chosen statement of the app, so the outage falls at a known point, never a race."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import requests
from sqlalchemy import Engine, event, func, select

from gateway import start_embedded_worker
from gateway.composition import services_of
from gateway.crypto import hash_token
from gateway.models import App, Delivery, Grade, GradeRevision
from gateway.worker import DeliveryWorker
from tests.factories import World
from tests.integration.test_dashboard import signed_in, staff_of

GRADE = {"assignmentID": "quiz-1", "percentage": 0.8}
DELIVERY_THREAD = "passback-delivery"


def terminate_every_backend(database_url: str) -> int:
    """Terminate every other backend of the test database and wait until they have exited."""
    with psycopg.connect(database_url, autocommit=True) as admin:
        pids = [
            pid
            for (pid,) in admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ]
        # pg_terminate_backend answers false for a backend that exited on its own meanwhile (a pool closing a
        # connection), so what counts is that none of them is left.
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))
        [(left,)] = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)).fetchall()
    assert left == 0, "a backend outlived pg_terminate_backend's wait"
    return len(pids)


class BackendTerminator:
    """Terminates every backend of the database just before the app sends the first statement `when` picks
    (the statement then runs on a dead connection, as it would at a failover)."""

    def __init__(self, engine: Engine, database_url: str) -> None:
        self.engine = engine
        self.database_url = database_url
        self.lock = threading.Lock()
        self.when: Callable[[str], bool] | None = None
        self.fired = 0
        event.listen(engine, "before_cursor_execute", self._before_cursor_execute)

    def arm(self, when: Callable[[str], bool]) -> None:
        with self.lock:
            self.when = when

    def _before_cursor_execute(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        with self.lock:
            if self.when is None or not self.when(statement):
                return
            self.when = None
            self.fired += 1
        terminate_every_backend(self.database_url)

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._before_cursor_execute)


@pytest.fixture(autouse=True)
def postgresql_only(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only: terminates its backends (runs when GATEWAY_TEST_DATABASE_URL is set)")


@pytest.fixture
def terminator(world: World, database_url: str) -> Iterator[BackendTerminator]:
    killer = BackendTerminator(services_of(world.app).database.engine, database_url)
    yield killer
    killer.close()


def count(world: World, model: Any) -> int:
    with world.session() as session:
        return session.scalar(select(func.count()).select_from(model))


def assert_retry_later(response: requests.Response, code: str = "database_unavailable") -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0
    assert response.json()["error"]["code"] == code


def test_a_grade_whose_backend_is_terminated_mid_request_answers_503_and_the_retry_is_stored_once(
    world: World, terminator: BackendTerminator, worker: DeliveryWorker
) -> None:
    body = {**GRADE, "userID": world.students[0]}
    # The grade's row is already inserted in the request's transaction when its connection dies.
    terminator.arm(lambda statement: statement.startswith("INSERT INTO deliveries"))
    assert_retry_later(world.post_grade(body, **{"Idempotency-Key": "outage-1"}))
    assert terminator.fired == 1
    assert count(world, Grade) == 0, "the transaction of the refused request was committed"

    retried = world.post_grade(body, **{"Idempotency-Key": "outage-1"})
    assert retried.status_code == 202, retried.text
    assert (count(world, Grade), count(world, GradeRevision), count(world, Delivery)) == (1, 1, 1)
    worker.run_until_idle()
    assert [entry["scoreGiven"] for entry in world.gradebook()] == [8.0]


def test_after_every_idle_backend_was_terminated_the_next_request_succeeds(
    world: World, terminator: BackendTerminator
) -> None:
    assert world.post_grade({**GRADE, "userID": world.students[0]}).status_code == 202
    assert terminate_every_backend(terminator.database_url) > 0  # the pool's idle connections, all dead now
    response = world.post_grade({**GRADE, "userID": world.students[1]})
    assert response.status_code == 202, response.text
    assert count(world, Grade) == 2


def test_an_oauth_token_request_whose_backend_is_terminated_answers_503(
    world: World, terminator: BackendTerminator
) -> None:
    secret = "app-client-secret-for-this-test"
    with world.session() as session:
        partner = session.get(App, world.app_id)
        assert partner is not None
        partner.client_secret_hash = hash_token(secret)
        client_id = partner.client_id
    terminator.arm(lambda _statement: True)
    response = world.http.post(
        world.url("/oauth/tokens"), data={"grant_type": "authorization_code", "code": "x"}, auth=(client_id, secret)
    )
    assert_retry_later(response)
    assert terminator.fired == 1
    again = world.http.post(
        world.url("/oauth/tokens"), data={"grant_type": "authorization_code", "code": "x"}, auth=(client_id, secret)
    )
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant", again.text


def test_a_dashboard_page_whose_backend_is_terminated_answers_a_503_page(
    world: World, terminator: BackendTerminator
) -> None:
    browser = signed_in(world, staff_of(world))
    terminator.arm(lambda _statement: True)
    page = browser.get(world.url("/dashboard/"))
    assert page.status_code == 503 and int(page.headers["Retry-After"]) > 0
    assert page.headers["Content-Type"].startswith("text/html") and "database connection" in page.text
    assert terminator.fired == 1
    assert browser.get(world.url("/dashboard/")).status_code == 200


def test_the_embedded_worker_carries_on_after_its_backend_is_terminated(
    world: World, terminator: BackendTerminator, caplog: pytest.LogCaptureFixture
) -> None:
    posted = world.post_grade({**GRADE, "userID": world.students[0]})
    assert posted.status_code == 202
    # The worker's first look for due connections runs on a connection that dies under it.
    terminator.arm(
        lambda statement: (
            threading.current_thread().name == DELIVERY_THREAD and "GROUP BY deliveries.lms_connection_id" in statement
        )
    )
    with caplog.at_level(logging.WARNING, logger="passback.worker"):
        start_embedded_worker(world.app)
        status = wait_for_status(world, posted.headers["Location"], "delivered")
    assert status == "delivered"
    assert terminator.fired == 1
    assert any("database unavailable, trying again" in record.getMessage() for record in caplog.records)


def wait_for_status(world: World, location: str, wanted: str, timeout: float = 30.0) -> str:
    """The grade's status once it is `wanted`, or at the deadline (the worker runs on its own thread)."""
    deadline = time.monotonic() + timeout
    status = world.get(location).json()["status"]
    while status != wanted and time.monotonic() < deadline:
        time.sleep(0.05)
        status = world.get(location).json()["status"]
    return status
