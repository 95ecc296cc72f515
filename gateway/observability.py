"""The web side of logs and metrics: each request's ids bound for its log lines and one access line per request,
grade intake counted by status, and GET /metrics (Prometheus text) for this host or a bearer token
(GATEWAY_METRICS_TOKEN). See docs/operations.md, "Metrics" and "Logs"."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from typing import TYPE_CHECKING

from flask import Flask, Response, abort, g, request

from gateway.logs import bind_log_context, clear_log_context
from gateway.metrics import CONTENT_TYPE, OutboxCollector, count_ingest, render
from gateway.request_ids import request_id

if TYPE_CHECKING:
    from gateway.composition import Services

access_log = logging.getLogger("passback.access")
# The grade intake operations counted by passback_ingest_requests (view endpoint -> label).
INGEST_ENDPOINTS = {"api.post_grade": "grade", "api.post_grades": "grades"}
# Headers a proxy adds: a request carrying one came through a proxy, so its loopback address is not the client's.
_FORWARDED = ("Forwarded", "X-Forwarded-For", "X-Real-Ip")


def _begin() -> None:
    g.request_started = time.perf_counter()
    clear_log_context()  # a thread of the server serves many requests: nothing of the last one stays bound
    bind_log_context(request_id=request_id())


def _finish(response: Response) -> Response:
    endpoint = request.endpoint or ""
    label = INGEST_ENDPOINTS.get(endpoint)
    if label is not None and request.method == "POST":
        count_ingest(label, response.status_code)
    started = g.get("request_started")
    elapsed_ms = None if started is None else round((time.perf_counter() - started) * 1000, 1)
    access_log.info(
        "%s %s %s",
        request.method,
        request.path,
        response.status_code,
        extra={"method": request.method, "path": request.path, "status": response.status_code, "ms": elapsed_ms},
    )
    return response


def _end(_exc: BaseException | None) -> None:
    clear_log_context()


def _from_this_host(app: Flask) -> bool:
    """The client is this host: a loopback address, and no proxy in between (unless ProxyFix already took the
    client's address from the proxy's header, GATEWAY_TRUSTED_PROXIES)."""
    try:
        loopback = ipaddress.ip_address(request.remote_addr or "").is_loopback
    except ValueError:
        return False
    proxied = not app.config["PASSBACK"].trusted_proxies and any(h in request.headers for h in _FORWARDED)
    return loopback and not proxied


def init_observability(app: Flask, services: Services) -> None:
    """Register the request hooks (after request ids: the id is bound) and /metrics."""
    app.before_request(_begin)
    app.after_request(_finish)
    app.teardown_request(_end)

    from gateway.services.ops_metrics import WAITING, outbox_rows

    outbox = OutboxCollector(lambda: outbox_rows(services.database, now=services.clock.now()), WAITING)

    @app.get("/metrics")
    def metrics() -> Response:
        token = services.settings.metrics_token
        if token:
            header = request.headers.get("Authorization", "")
            scheme, _, sent = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(sent.strip().encode(), token.encode()):
                return Response(
                    "send Authorization: Bearer <GATEWAY_METRICS_TOKEN>\n",
                    status=401,
                    mimetype="text/plain",
                    headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
                )
        elif not _from_this_host(app):
            abort(404)  # not advertised: without a token only this host may scrape
        return Response(render([outbox]), mimetype=None, content_type=CONTENT_TYPE)
