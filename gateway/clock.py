"""The one source of time for the worker, routing and the services.

Production uses `SystemClock`; tests hand a `FrozenClock` to the code under test and advance it instead of
sleeping. A unit of work reads `now()` once, so every row it writes carries the same instant."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Naive UTC wall time: the one form stored in every backend (SQLite has no time zones)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back: for leases, polls and throttles inside one process."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC).replace(tzinfo=None)

    def monotonic(self) -> float:
        return time.monotonic()


class FrozenClock:
    """A clock that moves only when told to (tests)."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or SystemClock().now()
        self._monotonic = 1000.0
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._monotonic

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += timedelta(seconds=seconds)
            self._monotonic += seconds


SYSTEM_CLOCK: Clock = SystemClock()
