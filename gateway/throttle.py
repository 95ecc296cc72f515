"""Per-LMS-connection limits: a request rate (token bucket), a pause when the LMS says slow down, and a cap on
concurrent deliveries. In one process they live in memory; with a broker they live in Redis, so every worker
on every machine shares them.

The HTTP side (adapters/http.py `ThrottledHttpClient`) asks `acquire` before each request and calls `pause`
when the LMS answers 429, Canvas's 403 "Rate Limit Exceeded", or a low `X-Rate-Limit-Remaining`.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class LocalLimiter:
    """The limits of one process (the embedded worker, a `gateway worker` without a broker)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._paused: dict[str, float] = {}
        self._slots: dict[str, dict[str, float]] = {}

    def acquire(self, key: str, rate: float, burst: int) -> float:
        """Take one request's token. Returns 0 when the request may go now, else the seconds to wait first."""
        now = time.monotonic()
        with self._lock:
            paused_until = self._paused.get(key, 0.0)
            if paused_until > now:
                return paused_until - now
            tokens, at = self._buckets.get(key, (float(burst), now))
            tokens = min(float(burst), tokens + (now - at) * rate)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / rate

    def pause(self, key: str, seconds: float) -> None:
        until = time.monotonic() + seconds
        with self._lock:
            self._paused[key] = max(self._paused.get(key, 0.0), until)

    def paused_for(self, key: str) -> float:
        with self._lock:
            return max(0.0, self._paused.get(key, 0.0) - time.monotonic())

    def try_slot(self, key: str, limit: int, ttl: float) -> str | None:
        now = time.monotonic()
        with self._lock:
            holders = {t: exp for t, exp in self._slots.get(key, {}).items() if exp > now}
            if len(holders) >= limit:
                self._slots[key] = holders
                return None
            token = secrets.token_hex(8)
            holders[token] = now + ttl
            self._slots[key] = holders
            return token

    def renew_slot(self, key: str, token: str, ttl: float) -> None:
        with self._lock:
            if token in self._slots.get(key, {}):
                self._slots[key][token] = time.monotonic() + ttl

    def release_slot(self, key: str, token: str) -> None:
        with self._lock:
            self._slots.get(key, {}).pop(token, None)


# Token bucket in Redis, on Redis's clock (workers on several machines need not agree on the time).
# KEYS: bucket hash, pause key. ARGV: rate per second, burst. Returns seconds to wait, as a string ("0": go).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local paused = tonumber(redis.call('GET', KEYS[2]) or '0')
if paused > now then return tostring(paused - now) end
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or burst
local at = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], 3600)
return tostring(wait)
"""
# KEYS: pause key. ARGV: seconds, and the key's time to live in whole milliseconds. Extends, never shortens.
_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local untl = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if untl > current then
  redis.call('SET', KEYS[1], tostring(untl), 'PX', ARGV[2])
end
return 1
"""
# A counting semaphore whose holders expire (a killed worker's slot frees itself).
# KEYS: sorted set. ARGV: limit, ttl seconds, token. Returns 1 when taken.
_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 60)
return 1
"""
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
return redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[2])
"""


class RedisLimiter:
    """The same limits shared by every worker through Redis."""

    def __init__(self, url: str, prefix: str = "passback:limits:") -> None:
        import redis

        self.redis = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.prefix = prefix
        self._acquire = self.redis.register_script(_ACQUIRE)
        self._pause = self.redis.register_script(_PAUSE)
        self._slot = self.redis.register_script(_SLOT)
        self._renew = self.redis.register_script(_RENEW)

    def acquire(self, key: str, rate: float, burst: int) -> float:
        wait = self._acquire(keys=[self.prefix + "bucket:" + key, self.prefix + "pause:" + key], args=[rate, burst])
        return float(wait)

    def pause(self, key: str, seconds: float) -> None:
        seconds = max(0.0, min(seconds, 86400.0))
        self._pause(keys=[self.prefix + "pause:" + key], args=[seconds, int(seconds * 1000) + 1000])

    def paused_for(self, key: str) -> float:
        raw = self.redis.get(self.prefix + "pause:" + key)
        if raw is None:
            return 0.0
        seconds, micros = self.redis.time()
        return max(0.0, float(raw) - (seconds + micros / 1_000_000))

    def try_slot(self, key: str, limit: int, ttl: float) -> str | None:
        token = secrets.token_hex(8)
        taken = self._slot(keys=[self.prefix + "slots:" + key], args=[limit, ttl, token])
        return token if int(taken) == 1 else None

    def renew_slot(self, key: str, token: str, ttl: float) -> None:
        self._renew(keys=[self.prefix + "slots:" + key], args=[ttl, token])

    def release_slot(self, key: str, token: str) -> None:
        self.redis.zrem(self.prefix + "slots:" + key, token)


Limiter = LocalLimiter | RedisLimiter


@contextmanager
def delivery_slot(limiter: Any, key: str, limit: int, ttl: float) -> Iterator[str | None]:
    """One of the connection's `limit` concurrent delivery slots, or None when all are taken."""
    token = limiter.try_slot(key, limit, ttl)
    try:
        yield token
    finally:
        if token is not None:
            limiter.release_slot(key, token)


def make_limiter(broker_url: str) -> Limiter:
    """Redis-backed when the broker is Redis (shared by all workers), else in this process only."""
    if broker_url.startswith(("redis://", "rediss://")):
        return RedisLimiter(broker_url)
    return LocalLimiter()
