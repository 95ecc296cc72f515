"""The one HTTP client of the adapters (timeouts, a request deadline, a body cap, per-connection throttling) and
the header readers they share. It returns LMS answers as they are: what an answer means (retry or fail) is decided
by each adapter's answer table, read by `adapters.answers.classify`."""

from __future__ import annotations

import contextlib
import email.utils
import heapq
import itertools
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import requests
import urllib3.connection
import urllib3.connectionpool
from requests.adapters import HTTPAdapter

from adapters import base, causes

USER_AGENT = "Passback/0.1 (+https://github.com/passback/passback)"
MAX_KEPT_BODY = 2000
# What Canvas says in the body of its rate-limit 403 (the throttle pauses on it; answer tables retry it).
RATE_LIMIT_MARKER = re.compile(r"rate limit exceeded", re.IGNORECASE)
MAX_PAUSE_SECONDS = 86400.0
# An LMS answer is a score entry or a short error: a body larger than this is never read whole.
MAX_RESPONSE_BYTES = 1024 * 1024
_CHUNK = 64 * 1024


class HttpClient:
    """A shared requests.Session (one per thread) with Passback's timeouts on every call: a connect timeout,
    a per-read timeout, and a total deadline for the whole exchange (connect, headers and body), so an LMS
    that trickles its answer a byte at a time is cut off; answers are read in chunks up to `max_body`."""

    def __init__(
        self,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        deadline: float = 30.0,
        max_body: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self.deadline = deadline
        self.timeout = (min(connect_timeout, deadline), min(read_timeout, deadline))
        self.max_body = max_body
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
            # Sockets that the request deadline can cut, whatever phase the exchange is in.
            adapter = _DeadlineAdapter()
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._local.session = session
        return session

    def request(self, method: str, url: str, *, max_body: int | None = None, **kwargs: Any) -> requests.Response:
        """Send one request and read its answer within the deadline; transport failures, a missed deadline
        and an oversized 2xx answer become RetryableDeliveryError, other responses are returned as is (an
        oversized error answer keeps its first `max_body` bytes; `max_body` overrides the client's cap for this
        request). A caller passing stream=True reads the body itself; the deadline then covers the exchange up
        to the headers only."""
        kwargs.setdefault("timeout", self.timeout)
        kwargs.setdefault("allow_redirects", False)
        if self.session.proxies and requests.utils.should_bypass_proxies(url, no_proxy=self._no_proxy):
            kwargs.setdefault("proxies", {"http": None, "https": None})
        caller_streams = bool(kwargs.pop("stream", False))
        deadline = _Deadline(time.monotonic() + self.deadline)
        _WATCHDOG.watch(deadline)
        _CURRENT.deadline = deadline
        try:
            response = self.session.request(method, url, stream=True, **kwargs)
            if not caller_streams:
                self._read_body(response, url, deadline, self.max_body if max_body is None else max_body)
            return response
        except requests.RequestException as exc:
            if deadline.expired:
                raise base.RetryableDeliveryError(
                    f"no complete answer from {_host(url)} within {self.deadline:g} s; cut off", cause=causes.TIMED_OUT
                ) from exc
            # The text is a sentence of our own: str(exc) of requests is urllib3's repr chain
            # ("HTTPConnectionPool(host=…): Max retries exceeded … object at 0x…"), unreadable on the dashboard.
            reason, cause = transport_failure(exc)
            if isinstance(exc, requests.Timeout):
                # A read timeout means "unknown": the LMS may have stored the grade. Every adapter's write must
                # be safe to repeat (a replace, or carry the grade's timestamp).
                raise base.RetryableDeliveryError(f"timed out talking to {_host(url)}: {reason}", cause=cause) from exc
            if isinstance(exc, requests.ConnectionError):
                raise base.RetryableDeliveryError(f"could not connect to {_host(url)}: {reason}", cause=cause) from exc
            raise base.RetryableDeliveryError(f"HTTP error talking to {_host(url)}: {reason}", cause=cause) from exc
        finally:
            _CURRENT.deadline = None
            deadline.finish()

    def _read_body(self, response: requests.Response, url: str, deadline: _Deadline, max_body: int) -> None:
        """Read the body in chunks, at most `max_body` bytes (decoded), and keep it as the response's content."""
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_content(_CHUNK):
                chunks.append(chunk)
                size += len(chunk)
                if size > max_body:
                    break
        except BaseException:
            response.close()
            raise
        if deadline.expired:
            # An answer without Content-Length ends at a clean close, which is also what a cut looks like.
            response.close()
            raise requests.ConnectionError("cut off at the request deadline")
        if size > max_body:
            # The connection is dropped, not drained: the rest of the answer is never read.
            response.close()
            kept = b"".join(chunks)[:max_body]
            if 200 <= response.status_code < 300:
                raise base.RetryableDeliveryError(
                    f"{_host(url)} answered HTTP {response.status_code} with more than {max_body} bytes; not read",
                    lms_status=response.status_code,
                    cause=causes.UNEXPECTED_ANSWER,
                )
            response._content = kept
        else:
            response._content = b"".join(chunks)
        response._content_consumed = True  # type: ignore[attr-defined]


def _host(url: str) -> str:
    return urlsplit(url).netloc or url


# What the innermost error of a failed exchange says, in words a person reads (first match wins); the phrases
# are those of the OS (errno texts), urllib3 and ssl, on Linux, macOS and Windows.
_TRANSPORT_REASONS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), words)
    for pattern, words in (
        (
            r"name or service not known|nodename nor servname|getaddrinfo failed|name resolution|no address associated"
            r"|NameResolutionError",
            "its name does not resolve",
        ),
        (r"connection refused|actively refused", "it refused the connection"),
        (r"connection reset", "it reset the connection"),
        (r"network is unreachable|no route to host", "there is no network route to it"),
        (
            r"certificate verify failed|CERTIFICATE_VERIFY_FAILED|hostname mismatch",
            "its TLS certificate was not accepted",
        ),
        (r"SSLError|\[SSL|SSL:|wrong version number", "the secure (TLS) connection failed"),
        (r"ProxyError|Unable to connect to proxy|Tunnel connection failed", "the proxy refused the connection"),
        (
            r"RemoteDisconnected|closed connection without response|connection aborted",
            "it closed the connection without answering",
        ),
        (r"IncompleteRead|ChunkedEncodingError|InvalidChunkLength|broken off|ProtocolError", "its answer broke off"),
        (r"ConnectTimeout|connect timeout", "the connection was not accepted in time"),
        (r"ReadTimeout|read timed out|read timeout", "no answer came in time"),
        (r"timed out|timeout", "no answer came in time"),
    )
)


def transport_failure(exc: BaseException) -> tuple[str, str]:
    """A readable reason for a request that got no answer, and its cause code: never the exception's text
    itself (requests' str() is a repr chain naming urllib3's objects and addresses)."""
    if isinstance(
        exc, requests.exceptions.InvalidURL | requests.exceptions.MissingSchema | requests.exceptions.InvalidSchema
    ):
        return "the URL is not valid", causes.NEEDS_CONFIGURATION
    if isinstance(exc, requests.exceptions.ContentDecodingError):
        return "its answer could not be decoded", causes.UNEXPECTED_ANSWER
    said = " ".join(f"{type(e).__name__} {e}" for e in _chain(exc))
    reason = next((words for pattern, words in _TRANSPORT_REASONS if pattern.search(said)), "the connection failed")
    if isinstance(exc, requests.ConnectTimeout):
        # Nothing was sent: the LMS is unreachable rather than slow.
        return "the connection was not accepted in time", causes.LMS_UNREACHABLE
    if isinstance(exc, requests.Timeout):
        return "no answer came in time", causes.TIMED_OUT
    return reason, causes.TIMED_OUT if reason == "no answer came in time" else causes.LMS_UNREACHABLE


def _chain(exc: BaseException, depth: int = 0) -> list[BaseException]:
    """The exception and the ones it wraps (arguments, urllib3's `reason`, its cause and context), bounded."""
    if depth > 6:
        return []
    found = [exc]
    inner: list[BaseException] = [a for a in exc.args if isinstance(a, BaseException)]
    reason = getattr(exc, "reason", None)
    if isinstance(reason, BaseException):
        inner.append(reason)
    for nested in (exc.__cause__, exc.__context__):
        if nested is not None:
            inner.append(nested)
    for nested in inner:
        if nested is not exc:
            found.extend(_chain(nested, depth + 1))
    return found


class _Deadline:
    """The end of one request's time: when it passes, every socket the request uses is shut down, which ends
    a read blocked on a trickling LMS at once (a socket timeout only bounds each read)."""

    def __init__(self, at: float) -> None:
        self.at = at
        self.expired = False
        self.done = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def attach(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            if not self.expired:
                self._sockets.append(sock)
                return
        _cut(sock)

    def expire(self) -> None:
        with self._lock:
            if self.done:
                return
            self.expired = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _cut(sock)

    def finish(self) -> None:
        with self._lock:
            self.done = True
            self._sockets = []


def _cut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _Watchdog:
    """One daemon thread that expires request deadlines when they pass (one thread for all requests)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Deadline]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, deadline: _Deadline) -> None:
        with self._cond:
            heapq.heappush(self._heap, (deadline.at, next(self._order), deadline))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="passback-http-deadlines", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                # Finished requests are dropped as they surface (a finished deadline is never cut).
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait(60)
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                _, _, deadline = heapq.heappop(self._heap)
            deadline.expire()

    def cut_all(self) -> int:
        """End every request in flight now, as if its deadline had passed. Returns how many were cut."""
        with self._cond:
            running = [deadline for _, _, deadline in self._heap if not deadline.done]
        for deadline in running:
            deadline.expire()
        return len(running)


_WATCHDOG = _Watchdog()


def cut_requests_in_flight() -> int:
    """End every LMS request this process has in flight (a stopping worker whose grace period ran out: it has
    given their claims back, so their answers would be recorded nowhere). Returns how many were cut."""
    return _WATCHDOG.cut_all()


# The deadline of the request this thread is making: its connections attach their sockets to it.
_CURRENT = threading.local()


def _attach_current(sock: socket.socket | None) -> None:
    deadline = getattr(_CURRENT, "deadline", None)
    if deadline is not None:
        deadline.attach(sock)


class _HTTPConnection(urllib3.connection.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _attach_current(self.sock)

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        _attach_current(self.sock)  # a pooled connection, reused: connect() was not called this time
        return super().getresponse(*args, **kwargs)


class _HTTPSConnection(urllib3.connection.HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _attach_current(self.sock)

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        _attach_current(self.sock)
        return super().getresponse(*args, **kwargs)


class _HTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _DeadlineAdapter(HTTPAdapter):
    """requests' adapter with connections whose sockets the request deadline can cut."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if hasattr(manager, "pool_classes_by_scheme"):
            manager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
        return manager


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
    # Canvas throttles with 403 "Rate Limit Exceeded", not 429, and no Retry-After (canvas-lms request_throttle.rb).
    return status == 403 and RATE_LIMIT_MARKER.search(body) is not None


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


class RequestObserver(Protocol):
    """Told of each LMS request: seconds taken, the status (None: no answer), whether it was a rate-limit refusal."""

    def __call__(self, seconds: float, status: int | None, refused: bool) -> None: ...


@dataclass(frozen=True)
class Throttle:
    """One LMS connection's request limits."""

    key: str
    rate: float = 10.0
    burst: int = 10
    # Canvas sends X-Rate-Limit-Remaining (its bucket counts as full at 600): below `low_water`, or below this
    # fraction of the fullest bucket seen, pause a little (canvas-lms doc/api/throttling.md).
    low_water: float = 100.0
    low_fraction: float = 0.15
    # The longest pause after rate-limit refusals (429, Canvas's 403) in a row that name no Retry-After; the
    # first pause is only the time the LMS's bucket needs for one request, doubled per refusal in a row.
    default_pause: float = 10.0
    # Keep room in the LMS's bucket for this many requests (the connection's concurrent deliveries): a pause
    # lasts until the bucket can take them all, so they do not land on a full bucket together.
    headroom: int = 4
    # Never sleep longer than this in one request; a longer wait becomes a retryable error instead, so the
    # worker frees itself and the outbox schedules the retry.
    max_wait: float = 30.0


@dataclass
class BucketView:
    """What this process has learnt of one connection's LMS bucket from its answers (Canvas reports
    X-Rate-Limit-Remaining and X-Request-Cost on every answer: canvas-lms doc/api/throttling.md)."""

    # The fullest X-Rate-Limit-Remaining seen stands for the bucket's size (not announced).
    full: float = 0.0
    # Units the bucket regains a second, learnt from how Remaining moves between answers; None: not yet.
    refill: float | None = None
    # Units one request costs (X-Request-Cost, averaged); one unit until the LMS says.
    cost: float = 1.0
    last_at: float | None = None
    last_remaining: float | None = None
    # Rate-limit refusals in a row (reset by any other answer); a refusal of a request sent before the last
    # pause began does not count (it was already on its way when the LMS said stop).
    refusals: int = 0
    paused_at: float = float("-inf")


# The smallest pause after a refusal, so a bucket reported as refilled still gets a breath.
MIN_REFUSAL_PAUSE = 0.05
# Refill is learnt over spans between answers of this length: shorter ones are noise (two answers landing
# together), longer ones mostly idle time.
_SAMPLE_SPAN = (0.05, 10.0)


class ThrottledHttpClient(HttpClient):
    """An HttpClient view for one LMS connection: waits for the connection's request rate before each call,
    and tells every worker to back off when the LMS says it is overloaded. Adapters use it as an HttpClient."""

    def __init__(
        self,
        http: HttpClient,
        limiter: RequestLimiter,
        throttle: Throttle,
        before_request: Callable[[], None] | None = None,
        buckets: BucketViews | None = None,
        observe: RequestObserver | None = None,
    ) -> None:
        # No super().__init__(): the view shares the wrapped client's per-thread sessions (connection reuse).
        self.http = http
        # Told of every request's time and answer (the gateway's metrics); never of the throttle's waits.
        self.observe = observe
        # What is learnt of the LMS's bucket, shared with the connection's other clients when given.
        self.buckets = buckets if buckets is not None else BucketViews()
        # Called before every request, after the throttle: the worker checks (and renews) its claim there,
        # and raises to stop a send whose claim it no longer holds.
        self.before_request = before_request
        self.limiter = limiter
        self.throttle = throttle
        self.timeout = http.timeout
        self.waited = 0.0
        # The clock the bucket's refill is learnt on (a test advances its own).
        self.clock: Callable[[], float] = time.monotonic

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
                    f"{_host(url)} is being throttled by Passback (the LMS asked to slow down)",
                    retry_after=wait,
                    cause=causes.RATE_LIMITED,
                )
            time.sleep(min(wait, 1.0))
        self.waited += time.monotonic() - started
        if self.before_request is not None:
            self.before_request()
        sent_at = self.clock()
        began = time.monotonic()
        try:
            response = self.http.request(method, url, **kwargs)
        except base.DeliveryError:
            if self.observe is not None:
                self.observe(time.monotonic() - began, None, False)
            raise
        if self.observe is not None:
            status = response.status_code
            refused = status == 429 or is_rate_limit_refusal(status, response.text or "")
            self.observe(time.monotonic() - began, status, refused)
        self._observe(response, sent_at)
        return response

    def _observe(self, response: requests.Response, sent_at: float | None = None) -> None:
        """Learn from the answer what the LMS's bucket holds and how fast it refills, and pause the connection
        (for every worker) as long as the bucket needs: after a refusal, Retry-After when given, else the time
        to regain room for `headroom` requests, doubled per refusal in a row (up to `default_pause`); after a
        success that leaves the bucket low, the time to refill it to the low-water mark."""
        status = response.status_code
        refused = status == 429 or (status == 403 and is_rate_limit_refusal(status, response.text or ""))
        remaining = _float(response.headers.get("X-Rate-Limit-Remaining"))
        cost = _float(response.headers.get("X-Request-Cost"))
        key = self.throttle.key
        now = self.clock()
        with self.buckets.lock:
            view = self.buckets.view(key)
            _learn(view, now, remaining, None if refused else cost)
            if not refused:
                view.refusals = 0
            elif sent_at is None or sent_at >= view.paused_at:
                view.refusals += 1
                view.paused_at = now
            refill = view.refill or max(self.throttle.rate, 1.0)
            need, refusals, full = view.cost * max(self.throttle.headroom, 1), max(view.refusals, 1), view.full
        if refused:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if retry_after is not None:
                # An absurd Retry-After (weeks) must not silence a connection longer than a day.
                pause = min(retry_after, MAX_PAUSE_SECONDS)
            else:
                regain = max(need - (remaining or 0.0), 0.0) / refill
                pause = min(max(regain, MIN_REFUSAL_PAUSE) * 2 ** (refusals - 1), self.throttle.default_pause)
            self.limiter.pause(key, pause)
            return
        if remaining is None:
            return
        low_water = max(min(self.throttle.low_water, full * self.throttle.low_fraction), need)
        if remaining < low_water:
            # The lower the bucket, the longer everyone waits: until it has refilled to the low-water mark.
            self.limiter.pause(key, min((low_water - remaining) / refill, MAX_PAUSE_SECONDS))


def _learn(view: BucketView, now: float, remaining: float | None, cost: float | None) -> None:
    """Fold one answer into the view. Between two answers the bucket gained refill * elapsed and lost the
    later request's cost, so refill = (remaining - previous remaining + cost) / elapsed. Spans where the
    bucket sat at the top (idle: a full bucket hides its refill) or longer than a few seconds are skipped."""
    if cost is not None and cost >= 0:
        view.cost = cost if view.last_at is None else 0.7 * view.cost + 0.3 * cost
    if remaining is None:
        return
    previous, at = view.last_remaining, view.last_at
    at_top = previous is not None and previous >= view.full and remaining >= view.full
    if previous is not None and at is not None and not at_top and _SAMPLE_SPAN[0] <= now - at <= _SAMPLE_SPAN[1]:
        sample = (remaining - previous + (cost or 0.0)) / (now - at)
        if sample > 0:
            view.refill = sample if view.refill is None else 0.7 * view.refill + 0.3 * sample
    view.full = max(view.full, remaining)
    view.last_at, view.last_remaining = now, remaining


class BucketViews:
    """What one process has learnt of each connection's LMS bucket, shared by the throttled clients of that
    connection (the gateway's adapter factory holds one)."""

    def __init__(self) -> None:
        self._views: dict[str, BucketView] = {}
        # Held while one answer is folded into a view (callers take it around `view`).
        self.lock = threading.Lock()

    def view(self, key: str) -> BucketView:
        """The connection's view, made on first use; call with `lock` held."""
        return self._views.setdefault(key, BucketView())

    def snapshot(self, key: str) -> BucketView | None:
        """A copy of what has been learnt of a connection's LMS bucket (for the dashboard and tests)."""
        with self.lock:
            view = self._views.get(key)
            return None if view is None else BucketView(**vars(view))


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
