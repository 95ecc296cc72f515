"""One JSON error shape for every error: {"error": {"code", "message", "fields"?}}."""

from __future__ import annotations

import logging
import re
from typing import Any

from flask import Flask, Response, jsonify
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

from gateway.services.errors import ServiceError

log = logging.getLogger("passback.http")
# PostgreSQL's deadlock_detected and serialization_failure: the transaction was rolled back whole.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})


def error_response(status: int, code: str, message: str, fields: dict[str, Any] | None = None) -> Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if fields:
        body["fields"] = fields
    response = jsonify({"error": body})
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="passback"'
    return response


def _code_for(exc: HTTPException) -> str:
    name = exc.name or "error"
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def _service_error(exc: ServiceError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.fields)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        response = error_response(exc.code or 500, _code_for(exc), exc.description or exc.name)
        if exc.code == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return response

    @app.errorhandler(OperationalError)
    def _database_conflict(exc: OperationalError) -> Response:
        # A deadlock or serialization failure rolled the whole transaction back: nothing was stored, and the
        # same request will go through when sent again. Anything else is unexpected.
        if getattr(exc.orig, "sqlstate", None) in RETRYABLE_SQLSTATES:
            log.warning("database conflict, answered 503: %s", type(exc.orig).__name__)
            response = error_response(
                503, "database_busy", "Passback's database was busy and nothing was stored; send the request again."
            )
            response.headers["Retry-After"] = "1"
            return response
        return _unexpected(exc)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "Passback hit an unexpected error; it has been logged.")
