"""One JSON error shape for every error: {"error": {"code", "message", "fields"?, "requestId"}}."""

from __future__ import annotations

import logging
import re
from typing import Any, NamedTuple

from flask import Flask, Response, has_request_context, jsonify, request
from markupsafe import escape
from werkzeug.exceptions import HTTPException

from gateway.db import DatabaseTrouble, database_trouble
from gateway.request_ids import request_id
from gateway.services.errors import ServiceError

log = logging.getLogger("passback.http")


class DatabaseTroubleAnswer(NamedTuple):
    """What a client is told when a database error lets it send the same request again."""

    code: str
    message: str
    retry_after_seconds: int


DATABASE_TROUBLE_ANSWERS = {
    DatabaseTrouble.BUSY: DatabaseTroubleAnswer(
        "database_busy", "Passback's database was busy and nothing was stored; send the request again.", 1
    ),
    # A restart or failover takes seconds; the next request gets a fresh connection.
    DatabaseTrouble.UNAVAILABLE: DatabaseTroubleAnswer(
        "database_unavailable",
        "Passback lost its database connection and the request was not completed; send it again.",
        2,
    ),
}


def database_trouble_answer(exc: BaseException) -> DatabaseTroubleAnswer | None:
    """The 503 answer for a database error the client may simply repeat (logged here), else None."""
    trouble = database_trouble(exc)
    if trouble is None:
        return None
    log.warning("database %s, answered 503: %s: %s", trouble.value, type(exc).__name__, exc)
    return DATABASE_TROUBLE_ANSWERS[trouble]


def error_response(status: int, code: str, message: str, fields: dict[str, Any] | None = None) -> Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if fields:
        body["fields"] = fields
    rid = request_id()
    if rid is not None:
        body["requestId"] = rid
    response = jsonify({"error": body})
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="passback"'
    return response


# Pages people open in a browser answer errors with an HTML page, not JSON.
HTML_PAGE_PREFIXES = ("/dashboard",)


def html_error_page(status: int, message: str) -> Response:
    """The dashboard's error page: the status and the message, nothing else (no script, no inline style)."""
    body = (
        "<!doctype html><html lang=en><meta charset=utf-8><title>Passback: this request was refused</title>"
        f"<main><h1>{status}: this request was refused</h1><p>{escape(message)}</p>"
        "<p><a href='/dashboard/'>Back to the dashboard</a></p></main>"
    )
    return Response(body, status=status, content_type="text/html; charset=utf-8")


def _answer(status: int, code: str, message: str, fields: dict[str, Any] | None = None) -> Response:
    """JSON for the API, an HTML page on the dashboard."""
    if has_request_context() and request.path.startswith(HTML_PAGE_PREFIXES):
        return html_error_page(status, message)
    return error_response(status, code, message, fields)


def _code_for(exc: HTTPException) -> str:
    name = exc.name or "error"
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def _service_error(exc: ServiceError) -> Response:
        return _answer(exc.status, exc.code, exc.message, exc.fields)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        response = _answer(exc.code or 500, _code_for(exc), exc.description or exc.name)
        if exc.code == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        trouble = database_trouble_answer(exc)
        if trouble is not None:
            # Nothing was committed (or, if the connection died during COMMIT, an Idempotency-Key makes the
            # repeat safe): the client may send the same request again.
            response = _answer(503, trouble.code, trouble.message)
            response.headers["Retry-After"] = str(trouble.retry_after_seconds)
            return response
        log.exception("unhandled error")
        return _answer(500, "internal_error", "Passback hit an unexpected error; it has been logged.")
