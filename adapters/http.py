"""The one HTTP session factory and the one place that maps an LMS response to retry or fail."""

from __future__ import annotations

import email.utils
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import requests

from adapters import base

USER_AGENT = "Passback/0.1 (+https://github.com/passback/passback)"
# Statuses that a retry can fix; other 4xx are permanent (the LMS refused this request as sent).
RETRYABLE_STATUSES = frozenset({401, 408, 425, 429})
MAX_KEPT_BODY = 2000
MAX_PAUSE_SECONDS = 86400.0


class HttpClient:
    """A shared requests.Session (one per thread) with Passback's timeouts on every call."""

    def __init__(self, connect_timeout: float = 5.0, read_timeout: float = 30.0) -> None:
        self.timeout = (connect_timeout, read_timeout)
        self._local = threading.local()
        self._no_proxy = urllib.request.getproxies().get("no")

    @property
    def session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = USER_AGENT
            # Read the proxy environment once, not on every request (requests does that, and it shows at
            # hundreds of deliveries a second); HTTP(S)_PROXY and NO_PROXY are honoured as they were at start.
            session.proxies = {k: v for k, v in urllib.request.getproxies().items() if k in ("http", "https")}
            session.trust_env = False
            self._local.session = session
        return session

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """Send one request; transport failures become RetryableDeliveryError, responses are returned as is."""
        kwargs.setdefault("timeout", self.timeout)
        kwargs.setdefault("allow_redirects", False)
        if self.session.proxies and requests.utils.should_bypass_proxies(url, no_proxy=self._no_proxy):
            kwargs.setdefault("proxies", {"http": None, "https": None})
        try:
            return self.session.request(method, url, **kwargs)
        except requests.Timeout as exc:
            # A read timeout means "unknown": the LMS may have stored the grade. Every adapter's write must
            # be safe to repeat (a replace, or carry the grade's timestamp).
            raise base.RetryableDeliveryError(f"timed out talking to {_host(url)}: {exc}") from exc
        except requests.ConnectionError as exc:
            raise base.RetryableDeliveryError(f"could not connect to {_host(url)}: {exc}") from exc
        except requests.RequestException as exc:
            raise base.RetryableDeliveryError(f"HTTP error talking to {_host(url)}: {exc}") from exc


def _host(url: str) -> str:
    return urlsplit(url).netloc or url


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now or datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())


def body_excerpt(response: requests.Response) -> str:
    text = response.text or ""
    return text if len(text) <= MAX_KEPT_BODY else text[:MAX_KEPT_BODY] + "…"


def is_rate_limit_refusal(status: int, body: str) -> bool:
    # Canvas throttles with 403 "Rate Limit Exceeded", not 429, and no Retry-After (wire-formats §3.8).
    return status == 403 and "rate limit exceeded" in body.lower()


def is_transient(status: int, body: str) -> bool:
    """An answer a later retry can fix: 5xx, 401/408/425/429, or a rate limit dressed as 403."""
    return status >= 500 or status in RETRYABLE_STATUSES or is_rate_limit_refusal(status, body)


def raise_for_delivery(response: requests.Response, lms_message: str | None = None) -> None:
    """Classify a non-2xx answer on its numeric status (never the reason phrase) and raise accordingly."""
    status = response.status_code
    if 200 <= status < 300:
        return
    body = body_excerpt(response)
    message = f"LMS answered HTTP {status}" + (f": {lms_message}" if lms_message else (f": {body}" if body else ""))
    if is_transient(status, body):
        raise base.RetryableDeliveryError(
            message,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
            lms_status=status,
            lms_body=body,
        )
    if 300 <= status < 400:
        raise base.PermanentDeliveryError(
            f"LMS redirected to {response.headers.get('Location', '?')} (HTTP {status}); check the URL",
            lms_status=status,
            lms_body=body,
        )
    raise base.PermanentDeliveryError(message, lms_status=status, lms_body=body)


def json_or_none(response: requests.Response) -> Mapping[str, Any] | None:
    try:
        value = response.json()
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


_LINK_PART = re.compile(r"<([^>]*)>((?:\s*;\s*[^;,]+)*)")
_LINK_PARAM = re.compile(r";\s*([A-Za-z0-9_*-]+)\s*=\s*(\"[^\"]*\"|[^;,\s]+)")


def link_url(response: requests.Response, rel: str) -> str | None:
    """The URL of a `Link` relation: header name and rel matched case-insensitively, the URL untouched
    (RFC 8288; requests' own parser keys on the raw rel, and lower-casing corrupts page tokens)."""
    wanted = rel.lower()
    for name, value in response.headers.items():
        if name.lower() != "link":
            continue
        for match in _LINK_PART.finditer(value):
            url, params = match.group(1), match.group(2) or ""
            for key, raw in _LINK_PARAM.findall(params):
                if key.lower() == "rel" and wanted in raw.strip('"').lower().split():
                    return url.strip()
    return None


class RequestLimiter(Protocol):
    """What ThrottledHttpClient needs of a limiter (gateway/throttle.py has the in-process and Redis ones)."""

    def acquire(self, key: str, rate: float, burst: int) -> float: ...

    def pause(self, key: str, seconds: float) -> None: ...


@dataclass(frozen=True)
class Throttle:
    """One LMS connection's request limits."""

    key: str
    rate: float = 10.0
    burst: int = 10
    # Canvas sends X-Rate-Limit-Remaining (its bucket starts at 700): below `low_water`, or below this
    # fraction of the fullest bucket seen, pause a little (wire-formats §3.8).
    low_water: float = 100.0
    low_fraction: float = 0.15
    # How long everyone waits after a 429 or a rate-limit 403 that names no Retry-After.
    default_pause: float = 10.0
    # Never sleep longer than this in one request; a longer wait becomes a retryable error instead, so the
    # worker frees itself and the outbox schedules the retry.
    max_wait: float = 30.0


class ThrottledHttpClient(HttpClient):
    """An HttpClient view for one LMS connection: waits for the connection's request rate before each call,
    and tells every worker to back off when the LMS says it is overloaded. Adapters use it as an HttpClient."""

    def __init__(
        self,
        http: HttpClient,
        limiter: RequestLimiter,
        throttle: Throttle,
        before_request: Callable[[], None] | None = None,
    ) -> None:
        # No super().__init__(): the view shares the wrapped client's per-thread sessions (connection reuse).
        self.http = http
        # Called before every request, after the throttle: the worker checks (and renews) its claim there,
        # and raises to stop a send whose claim it no longer holds.
        self.before_request = before_request
        self.limiter = limiter
        self.throttle = throttle
        self.timeout = http.timeout
        self.waited = 0.0

    @property
    def session(self) -> requests.Session:
        return self.http.session

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        started = time.monotonic()
        while True:
            wait = self.limiter.acquire(self.throttle.key, self.throttle.rate, self.throttle.burst)
            if wait <= 0:
                break
            if time.monotonic() - started + wait > self.throttle.max_wait:
                raise base.RetryableDeliveryError(
                    f"{_host(url)} is being throttled by Passback (the LMS asked to slow down)", retry_after=wait
                )
            time.sleep(min(wait, 1.0))
        self.waited += time.monotonic() - started
        if self.before_request is not None:
            self.before_request()
        response = self.http.request(method, url, **kwargs)
        self._observe(response)
        return response

    def _observe(self, response: requests.Response) -> None:
        status = response.status_code
        if status == 429 or (status == 403 and is_rate_limit_refusal(status, response.text or "")):
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            # An absurd Retry-After (weeks) must not silence a connection longer than a day.
            self.limiter.pause(self.throttle.key, min(retry_after or self.throttle.default_pause, MAX_PAUSE_SECONDS))
            return
        remaining = _float(response.headers.get("X-Rate-Limit-Remaining"))
        if remaining is None:
            return
        # The LMS's bucket size is not announced: the fullest it was seen stands for it (Canvas's is 700).
        key = self.throttle.key
        with _BUCKETS_LOCK:
            full = _BUCKET_HIGH_WATER[key] = max(_BUCKET_HIGH_WATER.get(key, 0.0), remaining)
        low_water = min(self.throttle.low_water, full * self.throttle.low_fraction)
        if remaining < low_water:
            # The lower the bucket, the longer everyone waits, as if it refilled at our own request rate.
            pause = (low_water - remaining) / max(self.throttle.rate, 1.0)
            self.limiter.pause(self.throttle.key, min(pause, MAX_PAUSE_SECONDS))


_BUCKET_HIGH_WATER: dict[str, float] = {}
_BUCKETS_LOCK = threading.Lock()


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
