"""Per-LMS-connection limits: a request rate (token bucket), a pause when the LMS says slow down, and a cap on
concurrent deliveries. In one process they live in memory; with a broker they live in Redis, so every worker
on every machine shares them.

The HTTP side (adapters/http.py `ThrottledHttpClient`) asks `acquire` before each request and calls `pause`
when the LMS answers 429, Canvas's 403 "Rate Limit Exceeded", or a low `X-Rate-Limit-Remaining`.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("passback.throttle")
# A unit that is back but for float rounding (20 s at 3 a minute) counts as back (the Lua below and the
# RateLimit-Remaining header use the same tolerance).
ROUNDING = 1e-6
# The local quota buckets are swept of full ones (the same as no bucket) once every this many takes.
_SWEEP_EVERY = 4096


@dataclass(frozen=True)
class Take:
    """One request's take from a quota bucket: whether it may go, the units left after it, and (refused) the
    seconds until one unit is back."""

    allowed: bool
    tokens: float
    wait: float


def _take(tokens: float, at: float, now: float, rate: float, burst: int) -> Take:
    """The token-bucket rule both limiters apply (Redis's in Lua, below); `Take.tokens` is what the bucket keeps."""
    tokens = min(float(burst), tokens + max(0.0, now - at) * rate)
    if tokens >= 1 - ROUNDING:
        return Take(True, max(0.0, tokens - 1), 0.0)
    return Take(False, tokens, (1 - tokens) / rate)


class LocalLimiter:
    """The limits of one process (the embedded worker, a `gateway worker` without a broker)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._paused: dict[str, float] = {}
        self._slots: dict[str, dict[str, float]] = {}
        self._quotas: dict[str, tuple[float, float]] = {}  # key -> (tokens, at), apart from the LMS buckets
        self._takes = 0

    def take(self, key: str, rate: float, burst: int, now: float | None = None) -> Take:
        """One unit of a quota (an API client's requests): taken when there is one, else refused and told when.
        Unlike `acquire`, a refusal takes nothing. `now` is a monotonic time (tests pass their clock's)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, at = self._quotas.get(key, (float(burst), now))
            taken = _take(tokens, at, now, rate, burst)
            self._quotas[key] = (taken.tokens, now)
            self._takes += 1
            if self._takes % _SWEEP_EVERY == 0:
                # A bucket that has refilled holds what a new one would: dropping it bounds the memory that
                # many one-off keys (say, made-up tokens) would otherwise take.
                self._quotas = {k: (t, a) for k, (t, a) in self._quotas.items() if t + (now - a) * rate < burst}
            return taken

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


# A quota's token bucket (an API client's requests): like _ACQUIRE, but a refusal takes nothing, and the time is
# the caller's when given (a test's clock) else Redis's own (web servers on several machines need not agree).
# KEYS: bucket hash. ARGV: rate per second, burst, now ('' for Redis's). Returns {allowed, tokens, wait}.
_TAKE = """
local now
if ARGV[3] ~= '' then
  now = tonumber(ARGV[3])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or burst
local at = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 - 1e-6 then
  tokens = math.max(0, tokens - 1)
  allowed = 1
else
  wait = (1 - tokens) / rate
end
-- tostring keeps 14 digits, which on an epoch time is a tenth of a millisecond: keep them all.
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'at', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return {allowed, string.format('%.17g', tokens), string.format('%.17g', wait)}
"""


class RedisLimiter:
    """The same limits shared by every worker through Redis."""

    def __init__(
        self, url: str, prefix: str = "passback:limits:", *, timeout: float = 5.0, retries: bool = True
    ) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
        if not retries:  # a caller that cannot wait (a web request) needs its short timeout to be the whole wait
            options["retry"] = Retry(NoBackoff(), 0)
        self.redis = redis.Redis.from_url(url, **options)
        self.prefix = prefix
        self._take = self.redis.register_script(_TAKE)
        self._acquire = self.redis.register_script(_ACQUIRE)
        self._pause = self.redis.register_script(_PAUSE)
        self._slot = self.redis.register_script(_SLOT)
        self._renew = self.redis.register_script(_RENEW)

    def take(self, key: str, rate: float, burst: int, now: float | None = None) -> Take:
        """As LocalLimiter.take, shared by every process; `now` is epoch seconds, None for Redis's clock."""
        allowed, tokens, wait = self._take(
            keys=[self.prefix + "quota:" + key], args=[rate, burst, "" if now is None else repr(now)]
        )
        return Take(int(allowed) == 1, float(tokens), float(wait))

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


class QuotaLimiter:
    """API quotas: through Redis when the broker is Redis, else in this process. A request must not wait on a
    hung or lost Redis (intake never waits on the broker): Redis gets a short timeout, and after a failure the
    process counts on its own for `local_seconds` before it tries Redis again."""

    def __init__(self, broker_url: str, *, timeout: float = 0.25, local_seconds: float = 10.0) -> None:
        self.local = LocalLimiter()
        self.shared = (
            RedisLimiter(broker_url, "passback:api:", timeout=timeout, retries=False)
            if broker_url.startswith(("redis://", "rediss://"))
            else None
        )
        self.local_seconds = local_seconds
        self._local_until = 0.0

    def take(self, key: str, rate: float, burst: int, *, monotonic: float, epoch: float | None) -> Take:
        """`monotonic` is the process's clock (the local count's); `epoch` the shared one's, None for Redis's."""
        if self.shared is not None and time.monotonic() >= self._local_until:
            try:
                return self.shared.take(key, rate, burst, epoch)
            except Exception as exc:  # any Redis trouble: count here rather than fail or hold the request
                self._local_until = time.monotonic() + self.local_seconds
                log.warning("API quotas counted in this process for %gs: Redis failed: %s", self.local_seconds, exc)
        return self.local.take(key, rate, burst, monotonic)


def make_limiter(broker_url: str) -> Limiter:
    """Redis-backed when the broker is Redis (shared by all workers), else in this process only."""
    if broker_url.startswith(("redis://", "rediss://")):
        return RedisLimiter(broker_url)
    return LocalLimiter()
