"""A simulated LTI 1.3 AGS platform for benchmarks: many LMS connections behind one fast HTTP server.

Why it exists: the delivery benchmark (issue 9) must measure how fast grades *reach* LMSs, with the LMS's
round-trip time, rate limits and failures in the picture, and compare Passback with an app that posts grades
itself (bench/direct_pylti1p3.py). tests/fakes/ags_platform.py is the strict fake for correctness tests; this
one checks the same essentials (RFC 7523 client-assertion tokens, AGS 2.0 §3.4 scores) but is built to stay out
of the measurement:

- **asyncio, not a thread per request.** Latency is an `asyncio.sleep`, so hundreds of concurrent requests
  that are all "waiting on the LMS" cost no threads and no GIL hand-offs. HTTP/1.1 is parsed by hand
  (request line, headers, Content-Length bodies, keep-alive), which is several times cheaper per request
  than http.server or werkzeug. `python -m bench.sim_lms --load-test` measures what it sustains.
- **In-process or in its own process.** `SimLms(...).start()` runs the event loop in a daemon thread (handy
  for tests); `SimLms(..., subprocess=True)` runs it in a separate process so it does not compete for the
  GIL of the process under test. The API is the same either way; `stats()` and `scores()` then go over HTTP.
- **Many platforms on one port.** Platform `name` lives under `/{name}/`: its own issuer, client_id, token
  endpoint, line items, score store, token bucket and counters.

Endpoints of platform `p` (each waits `latency` seconds before answering, like a remote LMS):

- `POST /p/token`: client credentials with an RS256 JWT client assertion. The assertion is verified with
  `cryptography` against the tool key registered for `p` (a JWK dict, or a JWKS URL fetched once): `alg`,
  `kid` when the key has one, `iss` = `sub` = client_id, `aud` = the token URL (or a list holding it),
  `exp` in the future, `iat` at most 30 s ahead and 5 min old (Canvas's window), `jti` never seen before.
- `GET|POST /p/lineitems`, `GET /p/lineitems/{n}`: AGS line items (container and item media types).
- `POST /p/lineitems/{n}/scores`: `Content-Type` must be the score media type (415 otherwise); bearer token
  with the score scope (401 otherwise); body validated (400). The newest `timestamp` wins per
  (line item, userId); an older one gets Canvas's 400 "before last updated timestamp" and is counted as
  `stale`; an equal one is accepted (Canvas). A post whose values (everything but the timestamp) equal the
  stored score is counted as a `duplicate`: that is the cost of a retry that was not needed.
- `GET /p/config`: what an LMS admin hands the tool at registration (issuer, client_id, token URL, line item
  URLs). Not throttled, no latency, not counted: it is setup, not traffic.

Admin (no latency, not counted): `GET /_stats`, `GET /_scores/p`, `POST /_reset` (zero the counters, forget
scores, refill the buckets; tokens, line items and seen `jti`s stay).

Throttling, per platform: a token bucket of `burst` requests refilled at `rate` per second (0 = unlimited);
a token request costs `token_cost` (Canvas charges a token request far more than a call). When a rate is
set, every platform response carries `X-Rate-Limit-Remaining`, the bucket level after this request, as a
float: a simple version
of Canvas's cost budget (Canvas reports hwm minus a leaky-bucket level; here one unit is one request).
Over the limit: `throttle="429"` answers 429 with `Retry-After: 1`; `throttle="canvas"` answers Canvas's
403 text/plain "403 Forbidden (Rate Limit Exceeded)" with `X-Rate-Limit-Remaining: 0.0` and no Retry-After
(canvas-lms request_throttle.rb). Throttled requests do not touch the state.

Faults: a seeded fraction `fault_rate` of platform requests (token and AGS, after throttling) fail. A share
`hang_share` of them *hang*: the request is processed (a score is stored) and the answer is sent only after
`hang_seconds`, i.e. a slow LMS whose answer the client gives up on, so a client that retries sends a
duplicate. The others answer 500 without touching the state.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import multiprocessing
import os
import random
import secrets
import signal
import statistics
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

MEDIA_LINEITEM = "application/vnd.ims.lis.v2.lineitem+json"
MEDIA_CONTAINER = "application/vnd.ims.lis.v2.lineitemcontainer+json"
MEDIA_SCORE = "application/vnd.ims.lis.v1.score+json"
SCOPE_LINEITEM = "https://purl.imsglobal.org/spec/lti-ags/scope/lineitem"
SCOPE_LINEITEM_READONLY = "https://purl.imsglobal.org/spec/lti-ags/scope/lineitem.readonly"
SCOPE_RESULT_READONLY = "https://purl.imsglobal.org/spec/lti-ags/scope/result.readonly"
SCOPE_SCORE = "https://purl.imsglobal.org/spec/lti-ags/scope/score"
SCOPE_NRPS = "https://purl.imsglobal.org/spec/lti-nrps/scope/contextmembership.readonly"
KNOWN_SCOPES = frozenset({SCOPE_LINEITEM, SCOPE_LINEITEM_READONLY, SCOPE_RESULT_READONLY, SCOPE_SCORE, SCOPE_NRPS})
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ACTIVITY = frozenset({"Initialized", "Started", "InProgress", "Submitted", "Completed"})
GRADING = frozenset({"FullyGraded", "Pending", "PendingManual", "Failed", "NotReady"})
HOST = "127.0.0.1"

# Every counter of a platform, in the order /_stats reports them.
STAT_KEYS = (
    "requests",  # every request to a platform endpoint, throttled or not
    "token_requests",  # POST /token received
    "tokens_issued",
    "assertion_errors",  # token requests refused (bad JWT, grant, scope)
    "score_posts",  # POST .../scores received
    "scores_stored",  # score posts that were stored (new value or newer timestamp)
    "duplicates",  # score posts whose values equal the stored score (stored again only if newer)
    "stale",  # score posts older than the stored one (400, not stored)
    "lineitem_requests",
    "lineitems_created",
    "unauthorized",  # 401 on a service call: no, unknown, expired or out-of-scope bearer token
    "bad_requests",  # 400 and 415 on a service call
    "rate_limited",  # 429 (or Canvas's 403) sent
    "faults",  # injected faults: faults_500 + faults_hang
    "faults_500",
    "faults_hang",
)


# --- keys ---------------------------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def generate_rsa_key() -> str:
    """A fresh 2048-bit RSA private key as PKCS#8 PEM: the tool's signing key in benchmarks and tests."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def public_jwk(private_key_pem: str, kid: str | None) -> dict[str, Any]:
    """The public JWK of a PEM RSA key, with `kid` when given: what a platform registers for the tool."""
    key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("an RSA private key is required")
    numbers = key.public_key().public_numbers()
    jwk: dict[str, Any] = {
        "kty": "RSA",
        "alg": "RS256",
        "use": "sig",
        "n": _b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
        "e": _b64url(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")),
    }
    if kid is not None:
        jwk["kid"] = kid
    return jwk


def sign_assertion(private_key_pem: str, kid: str | None, client_id: str, audience: str, **overrides: Any) -> str:
    """An RS256 client-assertion JWT (RFC 7523), signed with `cryptography` alone.

    `overrides` replace or add claims (None removes one), so tests can build the bad assertions a platform
    must refuse. Kept dependency-free so the simulator needs nothing beyond Passback's own requirements.
    """
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": now,
        "exp": now + 60,
        "jti": secrets.token_hex(16),
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    header: dict[str, Any] = {"alg": "RS256", "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("an RSA private key is required")
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64url(signature)}"


def _rsa_public(jwk: Mapping[str, Any]) -> rsa.RSAPublicKey:
    n = int.from_bytes(_b64url_decode(jwk["n"]), "big")
    e = int.from_bytes(_b64url_decode(jwk["e"]), "big")
    return rsa.RSAPublicNumbers(e, n).public_key()


def _http_json(
    url: str, data: bytes | None = None, headers: Mapping[str, str] | None = None, method: str = "GET"
) -> Any:
    """A small blocking JSON request over urllib (the simulator needs nothing beyond the standard library)."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {url}")
    request = urllib.request.Request(url, data=data, headers=dict(headers or {}), method=method)  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (scheme checked above)
        return json.loads(response.read())


def _fetch_jwks(url: str) -> list[dict[str, Any]]:
    """Blocking GET of a JWKS; run in an executor so the event loop keeps serving."""
    data = _http_json(url)
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list):
        raise ValueError(f"{url} is not a JWKS")
    return keys


# --- configuration ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlatformSpec:
    """One simulated LMS connection. `None` fields take the SimLms-wide default."""

    name: str
    issuer: str
    client_id: str
    rate: float | None = None
    burst: float | None = None
    latency: float | None = None
    tool_jwk: dict[str, Any] | None = None
    tool_jwks_url: str | None = None
    lineitems: int | None = None


def default_platforms(count: int) -> list[PlatformSpec]:
    """`lms00`, `lms01`, …: each with its own issuer and client_id, everything else from the defaults."""
    width = max(2, len(str(count - 1)))
    names = [f"lms{i:0{width}d}" for i in range(count)]
    return [PlatformSpec(name=n, issuer=f"https://{n}.sim.example", client_id=f"client-{n}") for n in names]


@dataclass(frozen=True)
class SimConfig:
    """Everything the server needs; picklable so a child process can be started from it."""

    platforms: tuple[PlatformSpec, ...]
    host: str = HOST
    port: int = 0
    latency: float = 0.05
    rate: float = 0.0  # requests/s per platform; 0 = unlimited
    burst: float | None = None  # default: max(1, rate)
    token_cost: float = 1.0
    throttle: str = "429"  # or "canvas"
    fault_rate: float = 0.0
    hang_share: float = 0.5
    hang_seconds: float = 3.0
    seed: int = 0
    lineitems: int = 5  # pre-created per platform: ids 1..n, scoreMaximum 100
    token_lifetime: int = 3600
    tool_jwk: dict[str, Any] | None = None
    tool_jwks_url: str | None = None
    backlog: int = 2048

    def __post_init__(self) -> None:
        names = [p.name for p in self.platforms]
        if len(set(names)) != len(names) or any(not n or "/" in n or n.startswith("_") for n in names):
            raise ValueError("platform names must be unique, non-empty, without '/', not starting with '_'")
        if self.throttle not in ("429", "canvas"):
            raise ValueError("throttle must be '429' or 'canvas'")
        if not 0 <= self.fault_rate <= 1 or not 0 <= self.hang_share <= 1:
            raise ValueError("fault_rate and hang_share must be in 0..1")


# --- the server ---------------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def _json(status: int, data: Any, content_type: str = "application/json") -> Reply:
    return Reply(status, json.dumps(data).encode(), content_type)


def _error(status: int, message: str, kind: str | None = None) -> Reply:
    """AGS errors in Canvas's shape (canvas-lms lti_services.rb, render_error)."""
    return _json(status, {"errors": {"type": kind or HTTPStatus(status).phrase.lower(), "message": message}})


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names lower-cased
    body: bytes

    @property
    def mimetype(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


class Platform:
    """One LMS: registration, line items, scores, tokens, throttle bucket and counters. Loop thread only."""

    def __init__(self, spec: PlatformSpec, config: SimConfig, base_url: str) -> None:
        self.spec = spec
        self.name = spec.name
        self.base = f"{base_url}/{spec.name}"
        self.token_url = f"{self.base}/token"
        self.latency = config.latency if spec.latency is None else spec.latency
        self.rate = config.rate if spec.rate is None else spec.rate
        burst = spec.burst if spec.burst is not None else config.burst
        self.burst = float(burst if burst is not None else max(1.0, self.rate))
        self.token_cost = min(config.token_cost, self.burst)  # a cost above the burst could never be paid
        self.tool_jwk = spec.tool_jwk if spec.tool_jwk is not None else config.tool_jwk
        self.tool_jwks_url = spec.tool_jwks_url if spec.tool_jwks_url is not None else config.tool_jwks_url
        self.lineitems: dict[int, dict[str, Any]] = {}
        self.scores: dict[tuple[int, str], tuple[datetime, dict[str, Any]]] = {}
        self.seen_jti: set[str] = set()
        self.stats = dict.fromkeys(STAT_KEYS, 0)
        self.level = self.burst
        self.refilled = time.monotonic()
        for number in range(1, (spec.lineitems if spec.lineitems is not None else config.lineitems) + 1):
            self.add_lineitem(f"Assignment {number}", 100.0, f"resource-{number}", f"tag-{number}")

    def lineitem_url(self, number: int) -> str:
        return f"{self.base}/lineitems/{number}"

    def add_lineitem(self, label: str, score_maximum: float, resource_id: str, tag: str, **extra: Any) -> int:
        number = len(self.lineitems) + 1
        self.lineitems[number] = {
            "id": self.lineitem_url(number),
            "label": label,
            "scoreMaximum": score_maximum,
            "resourceId": resource_id,
            "tag": tag,
            **extra,
        }
        return number

    def take(self, cost: float) -> bool:
        """Token bucket: charge `cost` if the bucket holds it. Unlimited when rate is 0."""
        if self.rate <= 0:
            return True
        now = time.monotonic()
        self.level = min(self.burst, self.level + (now - self.refilled) * self.rate)
        self.refilled = now
        if self.level >= cost:
            self.level -= cost
            return True
        return False

    def reset(self) -> None:
        self.stats = dict.fromkeys(STAT_KEYS, 0)
        self.scores.clear()
        self.level, self.refilled = self.burst, time.monotonic()

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "issuer": self.spec.issuer,
            "client_id": self.spec.client_id,
            "deployment_id": f"deployment-{self.name}",
            "token_url": self.token_url,
            "lineitems": f"{self.base}/lineitems",
            "lineitem_urls": [item["id"] for item in self.lineitems.values()],
            "scope": [SCOPE_LINEITEM, SCOPE_RESULT_READONLY, SCOPE_SCORE],
            "latency": self.latency,
            "rate": self.rate,
            "burst": self.burst,
        }

    def score_list(self) -> list[dict[str, Any]]:
        return [
            {"lineitem": self.lineitem_url(number), **body} for (number, _user), (_stamp, body) in self.scores.items()
        ]


class SimServer:
    """The HTTP server and all platforms. Lives on one event loop; nothing here is thread-safe by design."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.platforms: dict[str, Platform] = {}
        self.tokens: dict[str, tuple[str, frozenset[str], float]] = {}  # access token -> platform, scopes, expiry
        self.jwks: dict[str, asyncio.Future[list[dict[str, Any]]]] = {}
        self.public_keys: dict[str, rsa.RSAPublicKey] = {}
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.url = ""

    async def listen(self) -> str:
        """Bind (port 0 picks a free one), then build the platforms, whose URLs need the port."""
        self.server = await asyncio.start_server(
            self._connection, self.config.host, self.config.port, backlog=self.config.backlog, reuse_address=True
        )
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://{self.config.host}:{port}"
        self.platforms = {spec.name: Platform(spec, self.config, self.url) for spec in self.config.platforms}
        return self.url

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in list(self.writers):
            writer.close()
        if self.server is not None:
            await self.server.wait_closed()

    # --- HTTP/1.1, just enough of it -----------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                try:
                    method, target, version = lines[0].split(" ", 2)
                except ValueError:
                    await self._write(writer, Reply(400, b"bad request line", "text/plain"), keep_alive=False)
                    return
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    name, sep, value = line.partition(":")
                    if sep:
                        headers[name.strip().lower()] = value.strip()
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    await self._write(writer, Reply(411, b"Content-Length required", "text/plain"), keep_alive=False)
                    return
                try:
                    length = int(headers.get("content-length", "0"))
                    body = await reader.readexactly(length) if length > 0 else b""
                except (ValueError, asyncio.IncompleteReadError, ConnectionError):
                    return
                connection = headers.get("connection", "").lower()
                keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
                parts = urlsplit(target)
                request = Request(method.upper(), parts.path, parse_qs(parts.query), headers, body)
                reply = await self.handle(request)
                if not await self._write(writer, reply, keep_alive):
                    return
                if not keep_alive:
                    return
        except asyncio.CancelledError:
            # Shutdown cancels connections mid-sleep. Ending quietly matters: on 3.11 the stream protocol's
            # done-callback calls task.exception(), which re-raises a cancellation into the loop's log.
            return
        finally:
            self.writers.discard(writer)
            writer.close()

    @staticmethod
    async def _write(writer: asyncio.StreamWriter, reply: Reply, keep_alive: bool) -> bool:
        """Send a reply; False when the client has gone (e.g. it timed out during a hang)."""
        lines = [
            f"HTTP/1.1 {reply.status} {HTTPStatus(reply.status).phrase}",
            f"Content-Type: {reply.content_type}",
            f"Content-Length: {len(reply.body)}",
            f"Connection: {'keep-alive' if keep_alive else 'close'}",
            *(f"{k}: {v}" for k, v in reply.headers.items()),
        ]
        try:
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + reply.body)
            await writer.drain()
        except (ConnectionError, RuntimeError):
            return False
        return not writer.is_closing()

    # --- routing -------------------------------------------------------------------------------------------

    async def handle(self, request: Request) -> Reply:
        parts = request.path.strip("/").split("/")
        if parts[0].startswith("_"):
            return self._admin(request, parts)
        platform = self.platforms.get(parts[0])
        if platform is None:
            return _error(404, f"no platform {parts[0]!r}", "not_found")
        rest = parts[1:]
        if rest == ["config"] and request.method == "GET":
            return _json(200, platform.config())
        route: Callable[[Platform, Request], Awaitable[Reply]]
        allowed: tuple[str, ...]
        cost = 1.0
        if rest == ["token"]:
            route, allowed, counter, cost = self._token, ("POST",), "token_requests", platform.token_cost
        elif rest == ["lineitems"]:
            route, allowed, counter = self._lineitems, ("GET", "POST"), "lineitem_requests"
        elif len(rest) == 2 and rest[0] == "lineitems":
            route, allowed, counter = self._lineitem, ("GET",), "lineitem_requests"
        elif len(rest) == 3 and rest[0] == "lineitems" and rest[2] == "scores":
            route, allowed, counter = self._score, ("POST",), "score_posts"
        else:
            return _error(404, f"no route {request.path}", "not_found")
        if request.method not in allowed:
            reply = _error(405, f"{request.method} not allowed")
            reply.headers["Allow"] = ", ".join(allowed)
            return reply
        platform.stats["requests"] += 1
        platform.stats[counter] += 1

        if not platform.take(cost):
            platform.stats["rate_limited"] += 1
            await self._sleep(platform.latency)
            if self.config.throttle == "canvas":
                return Reply(
                    403,
                    b"403 Forbidden (Rate Limit Exceeded)\n",
                    "text/plain; charset=utf-8",
                    {"X-Rate-Limit-Remaining": "0.0"},
                )
            reply = _error(429, "rate limit exceeded", "too_many_requests")
            reply.headers.update({"Retry-After": "1", "X-Rate-Limit-Remaining": f"{platform.level:.1f}"})
            return reply
        # The level after this request's charge, before others land during the sleep; none when unlimited.
        remaining = f"{platform.level:.1f}" if platform.rate > 0 else None

        fault = None
        if self.config.fault_rate > 0 and self.rng.random() < self.config.fault_rate:
            fault = "hang" if self.rng.random() < self.config.hang_share else "500"
            platform.stats["faults"] += 1
            platform.stats[f"faults_{fault}"] += 1
        await self._sleep(platform.latency)
        if fault == "500":
            reply = _error(500, "simulated internal server error", "internal_server_error")
        else:
            reply = await route(platform, request)
            if fault == "hang":
                await self._sleep(self.config.hang_seconds)
        if remaining is not None:
            reply.headers["X-Rate-Limit-Remaining"] = remaining
        return reply

    @staticmethod
    async def _sleep(seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds)

    def _admin(self, request: Request, parts: list[str]) -> Reply:
        if parts == ["_stats"] and request.method == "GET":
            return _json(200, self.stats())
        if len(parts) == 2 and parts[0] == "_scores" and request.method == "GET":
            platform = self.platforms.get(parts[1])
            if platform is None:
                return _error(404, f"no platform {parts[1]!r}", "not_found")
            return _json(200, platform.score_list())
        if parts == ["_platforms"] and request.method == "GET":
            return _json(200, {name: p.config() for name, p in self.platforms.items()})
        if parts == ["_reset"] and request.method == "POST":
            for platform in self.platforms.values():
                platform.reset()
            return _json(200, {"reset": True})
        return _error(404, f"no admin route {request.path}", "not_found")

    def stats(self) -> dict[str, Any]:
        per = {name: dict(p.stats) for name, p in self.platforms.items()}
        total = {key: sum(s[key] for s in per.values()) for key in STAT_KEYS}
        return {"platforms": per, "total": total}

    # --- token endpoint ------------------------------------------------------------------------------------

    async def _token(self, platform: Platform, request: Request) -> Reply:
        def refuse(error: str, description: str, status: int = 400) -> Reply:
            platform.stats["assertion_errors"] += 1
            return _json(status, {"error": error, "error_description": description})

        if request.mimetype != "application/x-www-form-urlencoded":
            return refuse("invalid_request", "form encoding required")
        form = {k: v[0] for k, v in parse_qs(request.body.decode("utf-8", "replace")).items()}
        if form.get("grant_type") != "client_credentials":
            return refuse("unsupported_grant_type", "grant_type must be client_credentials")
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            return refuse("invalid_request", "client_assertion_type must be jwt-bearer")
        problem = await self._verify_assertion(platform, form.get("client_assertion", ""))
        if problem:
            return refuse("invalid_client", problem, 401)
        scopes = frozenset(form.get("scope", "").split())
        if not scopes or not scopes <= KNOWN_SCOPES:
            return refuse("invalid_scope", f"unknown scopes: {sorted(scopes - KNOWN_SCOPES) or 'none asked'}")
        access = secrets.token_urlsafe(24)
        now = time.time()
        self.tokens[access] = (platform.name, scopes, now + self.config.token_lifetime)
        platform.stats["tokens_issued"] += 1
        return _json(
            200,
            {
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": self.config.token_lifetime,
                "scope": " ".join(sorted(scopes)),
            },
        )

    async def _tool_keys(self, platform: Platform) -> list[dict[str, Any]]:
        if platform.tool_jwk is not None:
            return [platform.tool_jwk]
        url = platform.tool_jwks_url
        if url is None:
            return []
        future = self.jwks.get(url)
        if future is None:  # fetched once per URL; a failed fetch is forgotten so the next request tries again
            future = asyncio.get_running_loop().run_in_executor(None, _fetch_jwks, url)
            self.jwks[url] = future
        try:
            return await future
        except Exception:
            self.jwks.pop(url, None)
            raise

    def _public_key(self, jwk: Mapping[str, Any]) -> rsa.RSAPublicKey:
        cache_key = f"{jwk.get('n')}.{jwk.get('e')}"
        key = self.public_keys.get(cache_key)
        if key is None:
            key = self.public_keys[cache_key] = _rsa_public(jwk)
        return key

    async def _verify_assertion(self, platform: Platform, assertion: str) -> str | None:
        """None when the assertion is good, else the reason (as the token endpoint's error_description)."""
        try:
            header_b64, claims_b64, signature_b64 = assertion.split(".")
            header = json.loads(_b64url_decode(header_b64))
            claims = json.loads(_b64url_decode(claims_b64))
            signature = _b64url_decode(signature_b64)
        except ValueError:
            return "client_assertion is not a JWT"
        if not isinstance(header, dict) or not isinstance(claims, dict):
            return "client_assertion is not a JWT"
        if header.get("alg") != "RS256":
            return f"alg {header.get('alg')!r} is not RS256"
        try:
            keys = await self._tool_keys(platform)
        except Exception as exc:
            return f"could not fetch the tool's JWKS: {exc}"
        kid = header.get("kid")
        candidates = [k for k in keys if k.get("kty") == "RSA" and (kid is None or k.get("kid") in (None, kid))]
        if not candidates:
            return f"no registered key for kid {kid!r}"
        signed = f"{header_b64}.{claims_b64}".encode()
        for jwk in candidates:
            try:
                self._public_key(jwk).verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
                break
            except (InvalidSignature, ValueError, KeyError):
                continue
        else:
            return "signature does not verify"
        now = time.time()
        if claims.get("iss") != platform.spec.client_id or claims.get("sub") != platform.spec.client_id:
            return "iss and sub must be the client_id"
        audience = claims.get("aud")
        if platform.token_url not in (audience if isinstance(audience, list) else [audience]):
            return "the 'aud' is invalid"
        exp, iat = claims.get("exp"), claims.get("iat")
        if not isinstance(exp, int | float) or exp <= now:
            return "the 'exp' is missing or in the past"
        if not isinstance(iat, int | float) or iat > now + 30 or iat < now - 300:
            return "the 'iat' is missing, in the future or too old"
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            return "the 'jti' is missing"
        if jti in platform.seen_jti:
            return "the 'jti' was used before"
        platform.seen_jti.add(jti)
        return None

    # --- AGS -----------------------------------------------------------------------------------------------

    def _authorize(self, platform: Platform, request: Request, accepted: Sequence[str]) -> Reply | None:
        """None when the bearer token is live, belongs to this platform and holds one of `accepted` scopes."""
        header = request.headers.get("authorization", "")
        found = self.tokens.get(header[7:]) if header[:7].lower() == "bearer " else None
        if found is None or found[0] != platform.name:
            message = "Invalid access token"
        elif found[2] < time.time():
            message = "Access token expired"
        elif not found[1] & set(accepted):
            message = "Insufficient permissions"
        else:
            return None
        platform.stats["unauthorized"] += 1
        return _error(401, message, "unauthorized")

    def _bad(self, platform: Platform, status: int, message: str) -> Reply:
        platform.stats["bad_requests"] += 1
        return _error(status, message, "bad_request" if status == 400 else None)

    async def _lineitems(self, platform: Platform, request: Request) -> Reply:
        if request.method == "GET":
            denied = self._authorize(platform, request, (SCOPE_LINEITEM, SCOPE_LINEITEM_READONLY))
            if denied:
                return denied
            filters = {"resource_id": "resourceId", "resource_link_id": "resourceLinkId", "tag": "tag"}
            items = [
                item
                for item in platform.lineitems.values()
                if all(
                    item.get(field_) == request.query[arg][0] for arg, field_ in filters.items() if arg in request.query
                )
            ]
            return _json(200, items, MEDIA_CONTAINER)
        denied = self._authorize(platform, request, (SCOPE_LINEITEM,))
        if denied:
            return denied
        if request.mimetype != MEDIA_LINEITEM:
            return self._bad(platform, 415, f"Content-Type must be {MEDIA_LINEITEM}")
        try:
            body = json.loads(request.body)
        except ValueError:
            return self._bad(platform, 400, "body is not JSON")
        if not isinstance(body, dict):
            return self._bad(platform, 400, "body must be a JSON object")
        if "id" in body:
            return self._bad(platform, 400, 'Invalid parameter "body.id": "id" is not allowed')
        maximum = body.get("scoreMaximum")
        if not body.get("label") or not isinstance(maximum, int | float) or maximum <= 0:
            return self._bad(platform, 400, "label and a positive scoreMaximum are required")
        extra = {k: v for k, v in body.items() if k not in ("label", "scoreMaximum", "resourceId", "tag")}
        number = platform.add_lineitem(body["label"], maximum, body.get("resourceId", ""), body.get("tag", ""), **extra)
        platform.stats["lineitems_created"] += 1
        return _json(201, platform.lineitems[number], MEDIA_LINEITEM)

    async def _lineitem(self, platform: Platform, request: Request) -> Reply:
        denied = self._authorize(platform, request, (SCOPE_LINEITEM, SCOPE_LINEITEM_READONLY))
        if denied:
            return denied
        item = platform.lineitems.get(_int(request.path.rstrip("/").split("/")[-1]))
        if item is None:
            return _error(404, "The specified resource does not exist.", "not_found")
        return _json(200, item, MEDIA_LINEITEM)

    async def _score(self, platform: Platform, request: Request) -> Reply:
        denied = self._authorize(platform, request, (SCOPE_SCORE,))
        if denied:
            return denied
        if request.mimetype != MEDIA_SCORE:
            return self._bad(platform, 415, f"Content-Type must be {MEDIA_SCORE}")
        number = _int(request.path.rstrip("/").split("/")[-2])
        if number not in platform.lineitems:
            return _error(404, "The specified resource does not exist.", "not_found")
        try:
            body = json.loads(request.body)
        except ValueError:
            return self._bad(platform, 400, "body is not JSON")
        if not isinstance(body, dict):
            return self._bad(platform, 400, "body must be a JSON object")
        problem, stamp = _check_score(body)
        if problem or stamp is None:
            return self._bad(platform, 400, problem or "timestamp")
        user = body["userId"]
        stored = platform.scores.get((number, user))
        if stored is not None:
            previous_stamp, previous = stored
            if _values(previous) == _values(body):
                platform.stats["duplicates"] += 1
            if previous_stamp > stamp:
                platform.stats["stale"] += 1
                return _error(
                    400,
                    f"Provided timestamp of {body['timestamp']} before last updated timestamp of "
                    f"{previous['timestamp']}",
                    "bad_request",
                )
        platform.scores[(number, user)] = (stamp, body)
        platform.stats["scores_stored"] += 1
        return _json(200, {"resultUrl": f"{platform.lineitem_url(number)}/results/{user}"}, MEDIA_SCORE)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return -1


def _values(score: Mapping[str, Any]) -> dict[str, Any]:
    """What a score says, without when it was said: two posts with equal values are one grade sent twice."""
    return {k: v for k, v in score.items() if k != "timestamp"}


def _check_score(body: Mapping[str, Any]) -> tuple[str | None, datetime | None]:
    """AGS §3.4 rules as Canvas and Moodle apply them; returns (problem, parsed timestamp)."""
    problems = []
    if not isinstance(body.get("userId"), str) or not body["userId"]:
        problems.append("userId")
    if body.get("activityProgress") not in ACTIVITY:
        problems.append("activityProgress")
    if body.get("gradingProgress") not in GRADING:
        problems.append("gradingProgress")
    given, maximum = body.get("scoreGiven"), body.get("scoreMaximum")
    if given is not None:
        if not isinstance(given, int | float) or isinstance(given, bool) or given < 0:
            problems.append("scoreGiven")
        if not isinstance(maximum, int | float) or isinstance(maximum, bool) or maximum < 0:
            problems.append("scoreMaximum")
    stamp = None
    try:
        stamp = datetime.fromisoformat(str(body["timestamp"]))
        if stamp.tzinfo is None:
            problems.append("timestamp without a time zone")
            stamp = None
    except (KeyError, ValueError):
        problems.append("timestamp")
    return (f"Incorrect score received: {', '.join(problems)}" if problems else None), stamp


# --- running it ---------------------------------------------------------------------------------------------


def _serve_forever(config: SimConfig, on_ready: Callable[[str], None]) -> None:
    """Run a SimServer on a fresh event loop in the main thread until SIGTERM or SIGINT."""

    async def main() -> None:
        server = SimServer(config)
        url = await server.listen()
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, done.set)
        on_ready(url)
        await done.wait()
        await server.close()

    asyncio.run(main())


def _child_main(config: SimConfig, conn: Connection) -> None:
    """Entry point of the subprocess mode: serve, and tell the parent the URL."""

    def ready(url: str) -> None:
        conn.send(url)
        conn.close()

    _serve_forever(config, ready)


class SimLms:
    """Start, introspect and stop a simulated multi-platform LMS.

    `platforms` is a count (named lms00, lms01, …) or a list of PlatformSpec. `tool_jwk` (a public JWK dict)
    or `tool_jwks_url` is the tool key every platform trusts unless its spec names another. Other keyword
    arguments are SimConfig fields. With `subprocess=True` the server runs in its own process (spawned, so
    it is safe from threads of the caller); otherwise on an event loop in a daemon thread of this process.
    """

    def __init__(
        self, platforms: int | Sequence[PlatformSpec] = 20, *, subprocess: bool = False, **options: Any
    ) -> None:
        specs = default_platforms(platforms) if isinstance(platforms, int) else list(platforms)
        self.config = SimConfig(platforms=tuple(specs), **options)
        self.subprocess = subprocess
        self.url = ""
        self._process: multiprocessing.process.BaseProcess | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._server: SimServer | None = None

    # --- lifecycle -----------------------------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> SimLms:
        if self.url:
            raise RuntimeError("already started")
        if self.subprocess:
            context = multiprocessing.get_context("spawn")
            parent, child = context.Pipe(duplex=False)
            self._process = context.Process(target=_child_main, args=(self.config, child), daemon=True)
            self._process.start()
            child.close()
            if not parent.poll(timeout):
                self.stop()
                raise RuntimeError("the simulated LMS did not start")
            self.url = parent.recv()
            parent.close()
            return self
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop, self._stop = loop, asyncio.Event()
            server = self._server = SimServer(self.config)
            try:
                self.url = loop.run_until_complete(server.listen())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_until_complete(self._stop.wait())
                loop.run_until_complete(server.close())
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="sim-lms", daemon=True)
        self._thread.start()
        if not ready.wait(timeout) or failure:
            raise RuntimeError("the simulated LMS did not start") from (failure[0] if failure else None)
        return self

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.join(10)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(5)
            self._process = None
        if self._thread is not None and self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)
            self._thread = None
        self.url = ""

    def __enter__(self) -> SimLms:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # --- addresses -----------------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.config.platforms]

    def spec(self, name: str) -> PlatformSpec:
        for spec in self.config.platforms:
            if spec.name == name:
                return spec
        raise KeyError(f"no platform {name!r}")

    def platform_url(self, name: str) -> str:
        """The platform's base URL: its endpoints are /token, /lineitems, /lineitems/{n}[/scores], /config."""
        self.spec(name)
        return f"{self.url}/{name}"

    def token_url(self, name: str) -> str:
        return f"{self.platform_url(name)}/token"

    def lineitems_url(self, name: str) -> str:
        return f"{self.platform_url(name)}/lineitems"

    def lineitem_url(self, name: str, number: int) -> str:
        return f"{self.platform_url(name)}/lineitems/{number}"

    # --- introspection -------------------------------------------------------------------------------------

    def _local(self, fn: Callable[[SimServer], Any]) -> Any:
        """Run `fn` on the server's loop (its state is touched only there) and wait for the answer."""
        assert self._loop is not None and self._server is not None
        server = self._server

        async def call() -> Any:
            return json.loads(json.dumps(fn(server)))  # a deep copy, as over HTTP

        if self._loop.is_closed():  # stopped: nothing touches the state any more, so read it directly
            return json.loads(json.dumps(fn(server)))
        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(10)

    def _admin(self, path: str, method: str = "GET") -> Any:
        return _http_json(self.url + path, method=method)

    def stats(self) -> dict[str, Any]:
        """{"platforms": {name: counters}, "total": counters}; see STAT_KEYS for the counters."""
        if self._server is not None and not self.subprocess:
            return self._local(SimServer.stats)
        return self._admin("/_stats")

    def scores(self, name: str) -> list[dict[str, Any]]:
        """The stored scores of a platform: the score bodies with their line item URL under "lineitem"."""
        if self._server is not None and not self.subprocess:
            return self._local(lambda server: server.platforms[name].score_list())
        return self._admin(f"/_scores/{name}")

    def reset(self) -> None:
        """Zero the counters, forget the scores, refill the buckets (between benchmark rounds)."""
        self._admin("/_reset", "POST")


# --- load test: does the simulator keep up? ----------------------------------------------------------------


async def _raw_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bytes]:
    """One request on a keep-alive connection; a minimal client so the load generator stays cheap."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length) if length else b""


def _score_request(host: str, path: str, token: str, user: str) -> bytes:
    body = json.dumps(
        {
            "userId": user,
            "scoreGiven": 7,
            "scoreMaximum": 10,
            "activityProgress": "Completed",
            "gradingProgress": "FullyGraded",
            "timestamp": datetime.now(UTC).isoformat(timespec="microseconds"),
        }
    ).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: {MEDIA_SCORE}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _load_clients(
    url: str,
    tokens: Mapping[str, str],
    clients: int,
    offset: int,
    seconds: float,
    start_at: float,
    stagger: float,
    total: int,
) -> dict[str, Any]:
    """`clients` connections, each posting scores back to back until the window closes."""
    parts = urlsplit(url)
    host, port = parts.hostname or HOST, parts.port or 80
    names = sorted(tokens)
    samples: list[tuple[float, float]] = []  # (completed at, seconds taken)
    statuses: dict[int, int] = {}

    async def client(index: int) -> None:
        name = names[index % len(names)]
        path = f"/{name}/lineitems/1/scores"
        reader, writer = await asyncio.open_connection(host, port)
        # Staggered within one latency period: started in lockstep, every sleep would end at once and the
        # sim would answer 200 requests in a burst, measuring the wave rather than the steady state.
        await asyncio.sleep(max(0.0, start_at - time.time()) + stagger * index / max(1, total))
        sent = 0
        try:
            while time.time() < start_at + seconds:
                request = _score_request(f"{host}:{port}", path, tokens[name], f"load-{index}-{sent}")
                t0 = time.perf_counter()
                status, _ = await _raw_request(reader, writer, request)
                samples.append((time.time(), time.perf_counter() - t0))
                statuses[status] = statuses.get(status, 0) + 1
                sent += 1
        finally:
            writer.close()

    cpu0 = time.process_time()
    await asyncio.gather(*(client(offset + i) for i in range(clients)))
    return {"samples": samples, "statuses": statuses, "client_cpu": time.process_time() - cpu0}


def _load_process(conn: Connection, *args: Any) -> None:
    conn.send(asyncio.run(_load_clients(*args)))
    conn.close()


def _process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process from /proc (Linux); 0 when unavailable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def load_test(
    clients: int = 200, seconds: float = 5.0, latency: float = 0.05, platforms: int = 20, client_processes: int = 1
) -> dict[str, Any]:
    """Score posts from `clients` keep-alive connections against a subprocess sim with no rate limit.

    The ideal rate is clients / latency; the shortfall is what the sim (and the load generator, which shares
    the machine) costs. Score posts are the realistic request: bearer check, JSON parse, validation, store.
    """
    key = generate_rsa_key()
    sim = SimLms(platforms, subprocess=True, latency=latency, rate=0.0, tool_jwk=public_jwk(key, "load"))
    sim.start()
    try:
        tokens = {name: _token_for(sim, name, key, "load") for name in sim.names}
        assert sim._process is not None
        sim_pid = sim._process.pid or 0
        cpu0 = _process_cpu_seconds(sim_pid)
        start_at = time.time() + 1.0 + 0.1 * clients / 100  # every connection is open before the window
        context = multiprocessing.get_context("spawn")
        shares = [
            clients // client_processes + (1 if i < clients % client_processes else 0) for i in range(client_processes)
        ]
        pipes, procs, offset = [], [], 0
        for share in shares:
            parent, child = context.Pipe(duplex=False)
            proc = context.Process(
                target=_load_process,
                args=(child, sim.url, tokens, share, offset, seconds, start_at, latency, clients),
                daemon=True,
            )
            proc.start()
            child.close()
            pipes.append(parent)
            procs.append(proc)
            offset += share
        results = [pipe.recv() for pipe in pipes]
        for proc in procs:
            proc.join(10)
        sim_cpu = _process_cpu_seconds(sim_pid) - cpu0
        stats = sim.stats()["total"]
    finally:
        sim.stop()
    # Steady state only: from one latency period after the start (every client is sending) to the end.
    window_start, window = start_at + latency, seconds - latency
    samples = [s for r in results for s in r["samples"]]
    latencies = sorted(taken for done, taken in samples if window_start <= done <= start_at + seconds)
    statuses: dict[int, int] = {}
    for r in results:
        for status, count in r["statuses"].items():
            statuses[status] = statuses.get(status, 0) + count
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "clients": clients,
        "client_processes": client_processes,
        "latency_s": latency,
        "seconds": seconds,
        "requests": len(samples),
        "requests_in_window": len(latencies),
        "requests_per_second": round(len(latencies) / window, 1),
        "ideal_per_second": round(clients / latency, 1) if latency > 0 else None,
        "p50_ms": round(quantiles[49] * 1000, 1),
        "p95_ms": round(quantiles[94] * 1000, 1),
        "p99_ms": round(quantiles[98] * 1000, 1),
        "statuses": statuses,
        "sim_cpu_seconds": round(sim_cpu, 2),
        "client_cpu_seconds": round(sum(r["client_cpu"] for r in results), 2),
        "sim_scores_stored": stats["scores_stored"],
        "cpu_count": os.cpu_count(),
    }


def _token_for(sim: SimLms, name: str, private_key_pem: str, kid: str) -> str:
    """Mint an access token the way a tool does (the load test needs one per platform)."""
    spec = sim.spec(name)
    form = urlencode(
        {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": sign_assertion(private_key_pem, kid, spec.client_id, sim.token_url(name)),
            "scope": SCOPE_SCORE,
        }
    ).encode()
    data = _http_json(
        sim.token_url(name), data=form, headers={"Content-Type": "application/x-www-form-urlencoded"}, method="POST"
    )
    return str(data["access_token"])


# --- command line -------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.sim_lms", description=__doc__.split("\n")[0])
    parser.add_argument("--platforms", type=int, default=20, help="simulated LMS connections (default 20)")
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds before each answer (default 0.05)")
    parser.add_argument("--rate", type=float, default=0.0, help="requests/s per platform; 0 = unlimited")
    parser.add_argument("--burst", type=float, default=None, help="token bucket size (default max(1, rate))")
    parser.add_argument("--token-cost", type=float, default=1.0, help="bucket units a token request costs")
    parser.add_argument("--throttle", choices=("429", "canvas"), default="429")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="share of requests that fail (0..1)")
    parser.add_argument("--hang-share", type=float, default=0.5, help="share of faults that hang instead of 500")
    parser.add_argument("--hang-seconds", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lineitems", type=int, default=5, help="line items pre-created per platform")
    parser.add_argument("--tool-jwks-url", default=None, help="the tool's JWKS, fetched once")
    parser.add_argument("--tool-jwk", default=None, help="file holding the tool's public JWK or a JWKS")
    load = parser.add_argument_group("load test (instead of serving)")
    load.add_argument("--load-test", action="store_true", help="measure the sim's throughput and exit")
    load.add_argument("--clients", type=int, default=200)
    load.add_argument("--seconds", type=float, default=5.0)
    load.add_argument("--client-processes", type=int, default=1)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.load_test:
        result = load_test(args.clients, args.seconds, args.latency, args.platforms, args.client_processes)
        print(json.dumps(result, indent=2))
        return 0
    tool_jwk = None
    if args.tool_jwk:
        with open(args.tool_jwk) as f:
            data = json.load(f)
        tool_jwk = data["keys"][0] if "keys" in data else data
    config = SimConfig(
        platforms=tuple(default_platforms(args.platforms)),
        host=args.host,
        port=args.port,
        latency=args.latency,
        rate=args.rate,
        burst=args.burst,
        token_cost=args.token_cost,
        throttle=args.throttle,
        fault_rate=args.fault_rate,
        hang_share=args.hang_share,
        hang_seconds=args.hang_seconds,
        seed=args.seed,
        lineitems=args.lineitems,
        tool_jwk=tool_jwk,
        tool_jwks_url=args.tool_jwks_url,
    )
    _serve_forever(config, lambda url: print(url, flush=True))
    return 0


__all__ = [
    "MEDIA_CONTAINER",
    "MEDIA_LINEITEM",
    "MEDIA_SCORE",
    "SCOPE_LINEITEM",
    "SCOPE_SCORE",
    "STAT_KEYS",
    "PlatformSpec",
    "SimConfig",
    "SimLms",
    "default_platforms",
    "generate_rsa_key",
    "load_test",
    "public_jwk",
    "sign_assertion",
]

if __name__ == "__main__":
    sys.exit(main())
