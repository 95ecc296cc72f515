"""The web process's publisher (gateway.tasks.Dispatcher) against a broker that never answers: a socket on
127.0.0.1 that listens and accepts nothing (the kernel completes connections, nobody reads), as a frozen Redis
does. A call notes its connections and returns while the publisher thread is still waiting on that broker; what
does not fit the bounded queue is dropped with a log line; a forked child starts a publisher thread of its own."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator

import pytest

from gateway import tasks
from gateway.tasks import Dispatcher
from tests.conftest import make_settings

PUBLISH_TIMEOUT = 0.5


@pytest.fixture
def frozen_broker_url() -> Iterator[str]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"


@pytest.fixture
def dispatcher(frozen_broker_url: str) -> Dispatcher:
    settings = make_settings("sqlite://", broker_url=frozen_broker_url)
    return Dispatcher(settings, timeout=PUBLISH_TIMEOUT)


def test_a_wake_up_returns_while_the_publisher_still_waits_on_a_frozen_broker(
    dispatcher: Dispatcher, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="passback.tasks"):
        dispatcher({"connection-1"})
        assert not dispatcher.flush(0), "the call returned only once the broker had been given up on"
        assert dispatcher.flush(PUBLISH_TIMEOUT * 20)
    assert "could not publish delivery work" in caplog.text


def test_wake_ups_beyond_the_queue_are_dropped_with_a_log_line(
    dispatcher: Dispatcher, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks, "PUBLISH_QUEUE_SIZE", 3)
    with caplog.at_level(logging.WARNING, logger="passback.tasks"):
        dispatcher({"first"})  # taken by the publisher thread, which then waits on the broker
        dispatcher({f"connection-{n}" for n in range(5)})
        dispatcher({"connection-0"})  # already waiting: coalesced, not dropped
        assert dispatcher.flush(PUBLISH_TIMEOUT * 40)
    # Either "first" was still queued when the five came (3 of 6 kept) or it was taken already (3 of 5 kept).
    assert "delivery wake-ups dropped (queue full)" in caplog.text


# Python 3.12+ warns about fork() in a process with threads: the child here touches only the dispatcher.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")
def test_a_forked_child_starts_a_publisher_thread_of_its_own(dispatcher: Dispatcher) -> None:
    dispatcher({"before-fork"})  # the parent's publisher thread is running (waiting on the broker)
    assert dispatcher._thread is not None and dispatcher._thread.is_alive()
    child = os.fork()
    if child == 0:  # the child: report through the exit status only, never return into pytest
        healthy = dispatcher._thread is None and not dispatcher._pending
        dispatcher({"after-fork"})
        thread = dispatcher._thread
        healthy = healthy and thread is not None and thread.is_alive()
        os._exit(0 if healthy and dispatcher.flush(PUBLISH_TIMEOUT * 20) else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert dispatcher.flush(PUBLISH_TIMEOUT * 20)
