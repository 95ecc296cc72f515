"""X-Request-Id on every answer of the app (API, OAuth, LTI, dashboard, sandbox LMS): the one the request sent
when it is fit to log and echo, else a new one. The id is on every log record made while the request is
served (`request_id`, "-" outside a request) and in every JSON error body (`requestId`), so a client's report
leads to the log lines of its request."""

from __future__ import annotations

import json
import logging
import re
import uuid
from contextvars import ContextVar, Token
from typing import Any

from flask import Flask, Response, g, has_request_context, request

HEADER = "X-Request-Id"
# Visible ASCII only, bounded: the value is echoed in a header and written to the logs, so no spaces, control
# characters (a forged log line) or unbounded lengths; anything else is replaced, not refused.
_FIT = re.compile(r"[!-~]{1,128}")
# JSON error bodies larger than this are left as they are (none is; a guard against rewriting a big body).
_MAX_REWRITTEN_BODY = 64 * 1024

_current: ContextVar[str | None] = ContextVar("passback_request_id", default=None)
_record_factory_installed = False


def fit_request_id(sent: str | None) -> str | None:
    return sent if sent is not None and _FIT.fullmatch(sent) else None


def request_id() -> str | None:
    """This request's id (made on first use), None outside a request."""
    if not has_request_context():
        return None
    current = g.get("request_id")
    if current is None:
        current = g.request_id = fit_request_id(request.headers.get(HEADER)) or uuid.uuid4().hex
    return str(current)


def _bind() -> None:
    g.request_id_token = _current.set(request_id())


def _unbind(_exc: BaseException | None) -> None:
    token: Token[str | None] | None = g.pop("request_id_token", None)
    if token is not None:
        try:
            _current.reset(token)
        except ValueError:  # set in another context (a copied one): that context ends with its request
            _current.set(None)


def _stamp(response: Response) -> Response:
    rid = request_id()
    if rid is None:
        return response
    response.headers[HEADER] = rid
    if response.status_code >= 400 and response.mimetype == "application/json":
        _add_to_error_body(response, rid)
    return response


def _add_to_error_body(response: Response, rid: str) -> None:
    """An error body made elsewhere (authlib's RFC 6749 errors, the sandbox LMS) gets `requestId` too; the
    project's own shape has it already (gateway/errors.error_response)."""
    if response.is_streamed or response.direct_passthrough or (response.content_length or 0) > _MAX_REWRITTEN_BODY:
        return
    data = response.get_data()
    if b'"requestId"' in data:
        return
    try:
        body = json.loads(data)
    except ValueError:
        return
    if not isinstance(body, dict) or "error" not in body:
        return
    error = body["error"]
    holder: dict[str, Any] = error if isinstance(error, dict) else body
    if "requestId" in holder:
        return
    holder["requestId"] = rid
    response.set_data(json.dumps(body, separators=(",", ":")))


def install_log_record_factory() -> None:
    """Every log record carries `request_id` (the current request's, or "-"), whatever logger made it."""
    global _record_factory_installed
    if _record_factory_installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.request_id = _current.get() or "-"
        return record

    logging.setLogRecordFactory(factory)
    _record_factory_installed = True


class RequestIdLogFilter(logging.Filter):
    """For a handler whose format names %(request_id)s: a record made without the factory (logging.makeLogRecord,
    another process's record) gets "-" rather than breaking the format."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _current.get() or "-"
        return True


def init_request_ids(app: Flask) -> None:
    """Call before any other before_request hook is registered: even the first refusal carries the id."""
    install_log_record_factory()
    app.before_request(_bind)
    app.after_request(_stamp)
    app.teardown_request(_unbind)
