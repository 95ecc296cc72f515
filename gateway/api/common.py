"""Request parsing shared by the API views: JSON body, schema load (with the schemas each view's @operation
declares), bearer principal."""

from __future__ import annotations

from typing import Any

from flask import current_app, g, request
from marshmallow import Schema, ValidationError

from gateway.contract import Operation, contract_of
from gateway.extensions import db
from gateway.input_guard import UNSTORABLE_RULE, unstorable_string_path
from gateway.logs import bind_log_context
from gateway.services.auth import Principal, authenticate
from gateway.services.errors import InvalidInput, ServiceError, Unauthenticated
from schemas.base import load_strict_json


class MalformedJson(ServiceError):
    status = 400
    code = "malformed_json"


class UnsupportedMediaType(ServiceError):
    status = 415
    code = "unsupported_media_type"


def json_body() -> Any:
    """The request body as parsed JSON; strict: application/json, valid UTF-8, no NaN or Infinity."""
    mimetype = request.mimetype or ""
    if not (mimetype == "application/json" or mimetype.endswith("+json")):
        raise UnsupportedMediaType(f"Content-Type must be application/json, not {request.content_type or 'missing'!s}")
    raw = request.get_data(cache=True)
    try:
        body = load_strict_json(raw)
    except (ValueError, RecursionError) as exc:
        raise MalformedJson(f"request body is not valid JSON: {exc}") from exc
    bad = unstorable_string_path(body)
    if bad is not None:
        raise InvalidInput(f"invalid {bad}", fields={bad: [UNSTORABLE_RULE]})
    return body


def json_object() -> dict[str, Any]:
    body = json_body()
    if not isinstance(body, dict):
        raise MalformedJson("request body must be a JSON object")
    return body


def flatten_messages(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """marshmallow's nested messages → {"assignments[3].id": ["…"]}."""
    flat: dict[str, list[str]] = {}
    if isinstance(messages, dict):
        for key, value in messages.items():
            if isinstance(key, int):
                name = f"{prefix}[{key}]"
            else:
                name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                flat[name] = value
            else:
                flat.update(flatten_messages(value, name))
    elif isinstance(messages, list):
        flat[prefix or "_schema"] = [str(m) for m in messages]
    return flat


def load(schema: Schema, data: Any) -> dict[str, Any]:
    try:
        return schema.load(data)
    except ValidationError as exc:
        fields = flatten_messages(exc.messages)
        names = ", ".join(sorted(fields))
        raise InvalidInput(f"invalid {names}", fields=fields) from exc


def declared_operation() -> Operation:
    """The contract the view serving this request declares with @operation."""
    contract = contract_of(current_app.view_functions[request.endpoint or ""])
    if contract is None:
        raise RuntimeError(f"the view {request.endpoint!r} declares no @operation")
    return contract


def load_query() -> dict[str, Any]:
    """The query string, loaded with the query schema the view declares."""
    schema = declared_operation().query
    if schema is None:
        raise RuntimeError(f"the view {request.endpoint!r} declares no query schema")
    return load(schema, request.args.to_dict())


def load_body(body: Any = None) -> dict[str, Any]:
    """The JSON object body (or `body`, when the view already read it), loaded with the body schema the view
    declares."""
    schema = declared_operation().body
    if schema is None:
        raise RuntimeError(f"the view {request.endpoint!r} declares no body schema")
    return load(schema, json_object() if body is None else body)


def current_principal() -> Principal:
    """The caller, from `Authorization: Bearer …`; 401 when missing or not valid."""
    if "principal" in g:
        return g.principal
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("send Authorization: Bearer <token>", code="missing_token")
    assert db.session is not None
    principal = authenticate(
        db.session(), token.strip(), touch_after_seconds=current_app.config["PASSBACK"].token_touch_seconds
    )
    g.principal = principal
    bind_log_context(district_id=principal.district_id, app_id=principal.app_id)  # on this request's log lines
    return principal
