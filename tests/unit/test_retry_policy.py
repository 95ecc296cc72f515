"""RetryPolicy.delay: exponential backoff with equal jitter, a cap, and the LMS's Retry-After as a floor."""

from __future__ import annotations

import random

import pytest

from gateway.config import Settings
from gateway.services.outcomes import RetryPolicy

POLICY = RetryPolicy(base_seconds=15.0, max_seconds=3600.0, max_attempts=15, retry_after_max_seconds=86400.0)


def backoff(attempt: int, policy: RetryPolicy = POLICY) -> float:
    """The un-jittered backoff of an attempt: base doubling per attempt, capped."""
    return min(policy.max_seconds, policy.base_seconds * 2 ** (attempt - 1))


def test_defaults_are_the_documented_ones() -> None:
    assert RetryPolicy() == POLICY
    settings = Settings()
    assert (settings.backoff_base_seconds, settings.backoff_max_seconds) == (15.0, 3600.0)
    assert (settings.max_attempts, settings.retry_after_max_seconds, settings.lease_seconds) == (15, 86400.0, 120.0)
    # The lease must outlast any LMS call, or a live worker's delivery could be claimed twice.
    assert settings.lease_seconds > settings.http_connect_timeout + settings.http_read_timeout


@pytest.mark.parametrize("attempt", range(1, 16))
def test_delay_stays_within_half_and_full_backoff(attempt: int) -> None:
    rng = random.Random(attempt)
    full = backoff(attempt)
    for _ in range(200):
        delay = POLICY.delay(attempt, rng=rng)
        assert full / 2 <= delay <= full


def test_backoff_doubles_until_the_cap() -> None:
    # With the jitter drawn at its top (uniform -> b), delay is the full backoff.
    class Top(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b

    class Bottom(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return a

    tops = [POLICY.delay(n, rng=Top()) for n in range(1, 11)]
    assert tops == [15.0, 30.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 3600.0, 3600.0]
    bottoms = [POLICY.delay(n, rng=Bottom()) for n in range(1, 11)]
    assert bottoms == [t / 2 for t in tops]


def test_the_cap_holds_for_late_attempts() -> None:
    rng = random.Random(7)
    for attempt in (10, 15, 30, 64, 200):
        assert 1800.0 <= POLICY.delay(attempt, rng=rng) <= 3600.0


def test_attempt_zero_or_less_is_treated_as_the_first() -> None:
    rng = random.Random(1)
    for attempt in (0, -3):
        assert 7.5 <= POLICY.delay(attempt, rng=rng) <= 15.0


def test_seeded_jitter_is_reproducible_and_actually_jitters() -> None:
    first = [POLICY.delay(5, rng=random.Random(42)) for _ in range(3)]
    assert len(set(first)) == 1  # same seed, same draw
    rng = random.Random(42)
    draws = [POLICY.delay(5, rng=rng) for _ in range(500)]
    full = backoff(5)
    assert len(set(draws)) > 400
    # Spread over the whole [half, full] band, not bunched at one end.
    assert min(draws) < full * 0.55
    assert max(draws) > full * 0.95


@pytest.mark.parametrize(
    ("attempt", "retry_after", "expected_low", "expected_high"),
    [
        (1, 600.0, 600.0, 600.0),  # Retry-After above the backoff: exactly Retry-After
        (1, 0.0, 7.5, 15.0),  # "now" does not shorten the backoff
        (8, 60.0, 960.0, 1920.0),  # Retry-After below the backoff: the backoff stands
        (1, 10_000_000.0, 86400.0, 86400.0),  # capped at a day
        (15, 5000.0, 5000.0, 5000.0),  # above the backoff cap, below the Retry-After cap
    ],
)
def test_retry_after_is_a_floor_with_a_cap(
    attempt: int, retry_after: float, expected_low: float, expected_high: float
) -> None:
    rng = random.Random(3)
    for _ in range(50):
        delay = POLICY.delay(attempt, retry_after, rng)
        assert expected_low <= delay <= expected_high


def test_retry_after_cap_is_configurable() -> None:
    policy = RetryPolicy(base_seconds=1.0, max_seconds=10.0, retry_after_max_seconds=120.0)
    assert policy.delay(1, 3600.0, random.Random(0)) == 120.0


def test_small_backoff_settings_used_by_the_tests() -> None:
    policy = RetryPolicy(base_seconds=0.02, max_seconds=0.1)
    rng = random.Random(9)
    assert all(0.01 <= policy.delay(1, rng=rng) <= 0.02 for _ in range(100))
    assert all(0.05 <= policy.delay(12, rng=rng) <= 0.1 for _ in range(100))


def test_very_late_attempts_are_capped_not_overflowing() -> None:
    # base * 2 ** 1099 does not fit a float: the cap must apply before that overflows (GATEWAY_MAX_ATTEMPTS > 1024).
    assert 1800.0 <= POLICY.delay(1100, rng=random.Random(0)) <= 3600.0
