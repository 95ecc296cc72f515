"""Request quotas on the API: every operation of the API document (/v1 and POST /oauth/tokens) and any other
/v1 path counts against its caller's token bucket of GATEWAY_API_RATE_LIMIT requests, refilled over
GATEWAY_API_RATE_WINDOW_SECONDS. Over it, 429 with Retry-After before the view runs, so a refused request
changes nothing; every counted answer carries RateLimit-Limit, RateLimit-Remaining and RateLimit-Reset (the
IETF httpapi draft's names).

The caller is its bearer token (a user token and the district-app token count apart), else the app's client id
(HTTP Basic or `client_id` in the body: the token endpoint), else the client address. LTI launches, the
dashboard, the sandbox LMS and the health checks are not counted: an LMS or a person's browser must never be
turned away because an app is busy. Design: docs/api-contract.md."""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import math
from dataclasses import dataclass
from datetime import UTC

from flask import Flask, Response, current_app, g, request

from gateway.clock import SYSTEM_CLOCK
from gateway.composition import services_of
from gateway.contract import API_PREFIX, contract_of
from gateway.services.errors import ServiceError
from gateway.throttle import ROUNDING
from schemas.base import load_strict_json

log = logging.getLogger("passback.rate_limits")


class RateLimited(ServiceError):
    status = 429
    code = "rate_limited"


@dataclass(frozen=True)
class Quota:
    """What a counted request's answer says of its caller's bucket."""

    limit: int
    remaining: int
    reset_seconds: int
    retry_after_seconds: int | None = None


def counted() -> bool:
    """Whether this request counts: /v1, or a view declared with @operation (the API document's)."""
    if request.path.startswith(API_PREFIX):
        return True
    view = current_app.view_functions.get(request.endpoint or "")
    return view is not None and contract_of(view) is not None


def _digest(value: str) -> str:
    # Never the credential itself: not in Redis, not in memory longer than the request.
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def caller_key() -> str:
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    scheme, credentials = scheme.lower(), credentials.strip()
    if scheme == "bearer" and credentials:
        return "token:" + _digest(credentials)
    client_id = ""
    if scheme == "basic":
        try:
            client_id = base64.b64decode(credentials, validate=True).decode("utf-8", "replace").partition(":")[0]
        except (binascii.Error, ValueError):
            client_id = ""
    elif request.path.startswith(API_PREFIX):
        pass  # /v1 takes bearer tokens only: its bodies are no business of the count
    elif request.mimetype == "application/x-www-form-urlencoded":
        client_id = request.form.get("client_id", "")
    elif request.is_json:
        try:
            body = load_strict_json(request.get_data(cache=True))
        except (ValueError, RecursionError):
            body = None  # the view answers the bad body; the count falls back to the address
        client_id = str(body.get("client_id", "")) if isinstance(body, dict) else ""
    if client_id:
        return "client:" + _digest(client_id)
    return "address:" + (request.remote_addr or "unknown")


def _whole_seconds(seconds: float) -> int:
    """Rounded up, but float rounding (19.999… s for a unit refilled in 20 s) adds no second."""
    return max(0, math.ceil(seconds - ROUNDING))


def _check_quota() -> None:
    services = services_of(current_app)
    settings = services.settings
    if settings.api_rate_limit <= 0 or not counted():
        return
    limit = settings.api_rate_limit
    rate = limit / settings.api_rate_window_seconds
    clock = services.clock
    # In production the shared count keeps Redis's time (hosts need not agree); a test's clock is used as given.
    epoch = None if clock is SYSTEM_CLOCK else clock.now().replace(tzinfo=UTC).timestamp()
    key = caller_key()
    taken = services.quotas.take(key, rate, limit, monotonic=clock.monotonic(), epoch=epoch)
    retry_after = None if taken.allowed else max(1, _whole_seconds(taken.wait))
    g.quota = Quota(
        limit=limit,
        remaining=max(0, math.floor(taken.tokens + ROUNDING)),
        reset_seconds=_whole_seconds((limit - taken.tokens) / rate),
        retry_after_seconds=retry_after,
    )
    if retry_after is not None:
        log.info(
            "rate limit: %s refused for %d s (%d requests per %g s)",
            key.split(":")[0],
            retry_after,
            limit,
            settings.api_rate_window_seconds,
        )
        raise RateLimited(
            f"more than {limit} requests in {settings.api_rate_window_seconds:g} s: "
            f"send the request again in {retry_after} s",
        )


def _quota_headers(response: Response) -> Response:
    quota: Quota | None = g.get("quota")
    if quota is not None:
        response.headers["RateLimit-Limit"] = str(quota.limit)
        response.headers["RateLimit-Remaining"] = str(quota.remaining)
        response.headers["RateLimit-Reset"] = str(quota.reset_seconds)
        if quota.retry_after_seconds is not None:
            response.headers["Retry-After"] = str(quota.retry_after_seconds)
    return response


def init_rate_limits(app: Flask) -> None:
    app.before_request(_check_quota)
    app.after_request(_quota_headers)
