"""One guard in front of every endpoint: text PostgreSQL cannot store never reaches a view.

PostgreSQL's text type cannot hold NUL, and a lone UTF-16 surrogate cannot be encoded as UTF-8: either one in
a query parameter makes the database raise, a 500. The guard looks at everything a view may pass to a query
(the path, query parameters, form fields, strings of a JSON body, the Authorization header and its Basic
credentials) before any view runs, and answers a 4xx naming the field and the rule: JSON for the API, OAuth and
sandbox LMS, an HTML page for the dashboard and the LTI pages people see in a browser.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from flask import Flask, Response, request
from markupsafe import escape

from gateway.errors import error_response

UNSTORABLE_RULE = "Must not contain NUL characters or unpaired UTF-16 surrogates."
# A JSON body can only carry NUL or a surrogate as an escape: bodies without one are not parsed twice.
_SUSPECT_ESCAPE = re.compile(rb"\\u(0000|[dD][89a-fA-F])")
_HTML_PREFIXES = ("/dashboard", "/lti/", "/lti11/")
# /v1 checks its JSON bodies in gateway/api/common.json_body, with this module's walk: after the bearer token
# (a bad token answers 401 before a bad body), and under the bulk endpoint's larger body limit.
JSON_IN_VIEW = frozenset({"api"})


def is_unstorable(text: str) -> bool:
    """NUL cannot be stored in PostgreSQL text and a lone surrogate cannot be encoded as UTF-8."""
    if "\x00" in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def unstorable_string_path(value: Any) -> str | None:
    """The path (`comment`, `assignments[1].name`) of the first string, key or value, no database can hold.
    Walked with a stack, not recursion: a deeply nested body cannot exhaust Python's stack here."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if is_unstorable(item):
                return path or "_schema"
        elif isinstance(item, dict):
            children = []
            for key, child in item.items():
                if is_unstorable(str(key)):
                    return path or "_schema"
                children.append((child, f"{path}.{key}" if path else str(key)))
            stack.extend(reversed(children))
        elif isinstance(item, list):
            stack.extend(reversed([(child, f"{path}[{index}]") for index, child in enumerate(item)]))
    return None


def _basic_credentials(header: str) -> str:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return ""
    try:
        return base64.b64decode(value.strip(), validate=True).decode("utf-8", "surrogateescape")
    except (binascii.Error, ValueError):
        return ""


def find_unstorable_input() -> tuple[str, str] | None:
    """(where, field) of the first unstorable text in this request, or None."""
    if is_unstorable(request.path):
        return "path", "path"
    for name, value in request.args.items(multi=True):
        if is_unstorable(name) or is_unstorable(value):
            return "query", name if not is_unstorable(name) else "_query"
    header = request.headers.get("Authorization", "")
    if is_unstorable(header) or is_unstorable(_basic_credentials(header)):
        return "header", "Authorization"
    mimetype = request.mimetype or ""
    if mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        request.get_data(cache=True)  # kept, so views that verify a signature over the raw body still see it
        for name, value in request.form.items(multi=True):
            if is_unstorable(name) or is_unstorable(value):
                return "form", name if not is_unstorable(name) else "_form"
    elif (mimetype == "application/json" or mimetype.endswith("+json")) and request.blueprint not in JSON_IN_VIEW:
        raw = request.get_data(cache=True)
        if _SUSPECT_ESCAPE.search(raw):
            from schemas.base import load_strict_json

            try:
                body = load_strict_json(raw)
            except (ValueError, RecursionError):
                return None  # not JSON: the view answers that, in its own words
            field = unstorable_string_path(body)
            if field is not None:
                return "body", field
    return None


def refuse_unstorable_input() -> Response | None:
    """before_request: the 4xx for unstorable input, or None to let the view run."""
    found = find_unstorable_input()
    if found is None:
        return None
    where, field = found
    # No id holds such a character, so a path with one names nothing: 404, as for any unknown resource.
    status = 404 if where == "path" else 422
    message = f"invalid {field} ({where}): {UNSTORABLE_RULE}"
    if request.path.startswith(_HTML_PREFIXES):
        return _html_page(status, message)
    code = "not_found" if status == 404 else "invalid_input"
    return error_response(status, code, message, {field: [UNSTORABLE_RULE]})


def _html_page(status: int, message: str) -> Response:
    body = (
        "<!doctype html><html lang=en><meta charset=utf-8><title>Passback: this request was refused</title>"
        "<main style='font-family:system-ui;max-width:40rem;margin:2rem auto'>"
        f"<h1>This request was refused</h1><p>{escape(message)}</p></main>"
    )
    return Response(body, status=status, content_type="text/html; charset=utf-8")


def register_input_guard(app: Flask) -> None:
    app.before_request(refuse_unstorable_input)
