"""Structured logs (docs/operations.md, Logs): the JSON lines of a request served by the live server and of the
delivery that follows carry their ids, and no credential ever reaches the output."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
import structlog
from sqlalchemy import select

from gateway.clock import SYSTEM_CLOCK, FrozenClock
from gateway.composition import services_of
from gateway.logs import REDACTED, configure_logging, resolve_format
from gateway.models import Delivery
from gateway.worker import DeliveryWorker
from tests.factories import World


@contextmanager
def configured(level: str, fmt: str, stream: io.StringIO) -> Iterator[None]:
    """configure_logging for one test; the root and passback levels and handlers are put back afterwards."""
    root, passback = logging.getLogger(), logging.getLogger("passback")
    levels = root.level, passback.level
    handler = configure_logging(level, fmt, stream=stream)
    try:
        yield
    finally:
        assert handler is not None
        root.removeHandler(handler)
        root.setLevel(levels[0])
        passback.setLevel(levels[1])


@pytest.fixture
def output() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    with configured("info", "json", stream):
        yield stream


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_request_and_delivery_lines_carry_their_ids_and_no_secret(world: World, output: io.StringIO) -> None:
    response = world.post_grade(
        {"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.9}, **{"X-Request-Id": "trace-42"}
    )
    assert response.status_code == 202, response.text
    grade_id = response.json()["id"]
    clock = FrozenClock(SYSTEM_CLOCK.now() + timedelta(minutes=1))
    services = services_of(world.app)
    DeliveryWorker(services.database, services.box, world.app.config["PASSBACK"], clock=clock).run_until_idle()
    # Credentials handed to a log call, as a value, a nested key or inside the message, are redacted.
    logging.getLogger("passback.test").warning("calling the LMS with Authorization: Bearer %s", world.token)
    structlog.get_logger("passback.test").info(
        "token fetched", access_token=world.token, settings={"secret": world.sandbox_secret, "base_url": "x"}
    )

    written = output.getvalue()
    parsed = lines(output)
    [access] = [line for line in parsed if line.get("logger") == "passback.access" and line.get("path") == "/v1/grade"]
    assert access["request_id"] == "trace-42" == response.headers["X-Request-Id"]
    assert (access["district_id"], access["app_id"]) == (world.district_id, world.app_id)
    assert (access["method"], access["status"], access["level"]) == ("POST", 202, "info")
    assert access["ms"] >= 0 and access["timestamp"].endswith("Z")

    with world.session() as session:
        delivery_id = session.scalar(select(Delivery.id).where(Delivery.grade_id == grade_id))
    [delivered] = [line for line in parsed if line.get("delivery_id") == delivery_id]
    assert delivered["logger"] == "passback.worker"
    assert (delivered["connection_id"], delivered["district_id"]) == (world.connection_id, world.district_id)
    assert delivered["adapter"] == "sandbox" and "delivered" in delivered["event"]
    assert "request_id" not in delivered, "a worker's line is no request's"

    [fetched] = [line for line in parsed if line.get("event") == "token fetched"]
    assert fetched["access_token"] == REDACTED
    assert fetched["settings"] == {"secret": REDACTED, "base_url": "x"}
    [calling] = [line for line in parsed if line["event"].startswith("calling the LMS")]
    assert calling["event"] == f"calling the LMS with Authorization: Bearer {REDACTED}"
    assert world.token not in written
    assert world.sandbox_secret not in written


def test_text_on_a_terminal_json_otherwise() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert resolve_format("auto", Terminal()) == "text"
    assert resolve_format("auto", io.StringIO()) == "json"
    assert resolve_format("json", Terminal()) == "json"
    stream = Terminal()
    with configured("warning", "auto", stream):
        logging.getLogger("passback.test").info("below the level")
        logging.getLogger("passback.test").warning("plain words")
    text = stream.getvalue()
    assert "plain words" in text and "below the level" not in text
    assert not text.lstrip().startswith("{")
