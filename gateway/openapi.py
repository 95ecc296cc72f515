"""The OpenAPI document at /openapi.json, generated from the contracts the views declare with @operation
(gateway/contract.py), and a Swagger UI page for people at /api-docs, served from the swagger-ui-bundle package.

Only what is generic lives here: info, security schemes, tags, and the marshmallow → JSON Schema conversion.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin, OpenAPIConverter
from apispec.ext.marshmallow.field_converter import DEFAULT_FIELD_MAPPING
from flask import Blueprint, Flask, Response, current_app, jsonify, render_template, send_from_directory
from marshmallow import fields
from swagger_ui_bundle import swagger_ui_path
from werkzeug.exceptions import NotFound
from werkzeug.routing import Rule

from gateway.composition import services_of
from gateway.contract import (
    EVERY_ANSWER_HEADERS,
    IDEMPOTENCY_KEY,
    IDEMPOTENT_REPLAYED,
    REQUEST_ID,
    TAGS,
    Callback,
    Header,
    Operation,
    Reply,
    contract_of,
    takes_idempotency_key,
)
from schemas.base import JsonNumber
from schemas.errors import ErrorSchema

openapi_bp = Blueprint("openapi", __name__)

SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "A district-app token (gateway app authorize) or a user token (the app sign-in).",
    },
    "clientBasic": {
        "type": "http",
        "scheme": "basic",
        "description": "The app's client id and secret (client_secret_basic).",
    },
}
# Swagger UI files the page loads (and their source maps, for a browser's developer tools).
SWAGGER_UI_ASSETS = frozenset(
    name for base in ("swagger-ui.css", "swagger-ui-bundle.js") for name in (base, f"{base}.map")
) | {"favicon-32x32.png"}
_RULE_ARGUMENT = re.compile(r"<(?:(?P<converter>[a-z]+)(?:\([^)]*\))?:)?(?P<name>\w+)>")
_CONVERTER_TYPES = {"int": "integer", "float": "number"}


class PassbackConverter(OpenAPIConverter):
    """apispec's converter, taught Passback's fields: a JsonNumber is a number (so its Range gives `minimum`, not
    `x-minimum`), an exclusive Range bound says so, and a field with `loaded_with` metadata (an entry loaded on its
    own by the view) documents that schema."""

    field_mapping = {**DEFAULT_FIELD_MAPPING, JsonNumber: ("number", None)}

    def init_attribute_functions(self) -> None:
        super().init_attribute_functions()
        self.attribute_functions += [self.exclusive_bounds, self.loaded_with]

    def field2nullable(self, field: fields.Field, ret: dict[str, Any]) -> dict[str, Any]:
        # A nullable nested schema as `allOf` + `nullable`; apispec's anyOf with a bare object makes generated
        # clients parse every such value as an anonymous object instead of the named model.
        if field.allow_none and "$ref" in ret:
            return {"allOf": [{"$ref": ret.pop("$ref")}], "nullable": True}
        return dict(super().field2nullable(field, ret))

    def exclusive_bounds(self, field: fields.Field, ret: dict[str, Any], **_: Any) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for validator in field.validators:
            min_inclusive = getattr(validator, "min_inclusive", True)
            max_inclusive = getattr(validator, "max_inclusive", True)
            if not min_inclusive and "minimum" in ret:
                found["exclusiveMinimum"] = True
            if not max_inclusive and "maximum" in ret:
                found["exclusiveMaximum"] = True
        return found

    def loaded_with(self, field: fields.Field, **_: Any) -> dict[str, Any]:
        schema = field.metadata.get("loaded_with")
        return {} if schema is None else dict(self.resolve_nested_schema(schema))


class PassbackPlugin(MarshmallowPlugin):
    Converter = PassbackConverter


def build_spec(app: Flask) -> dict[str, Any]:
    """The document for every rule of `app` whose view declares an @operation, in URL order."""
    plugin = PassbackPlugin()
    spec = APISpec(
        title="Passback",
        version="0.1.0",
        openapi_version="3.0.3",
        plugins=[plugin],
        info={"description": "Grade passback gateway: apps post grades, Passback delivers them to the LMS."},
    )
    for name, scheme in SECURITY_SCHEMES.items():
        spec.components.security_scheme(name, scheme)
    for name, description in TAGS.items():
        spec.tag({"name": name, "description": description})
    assert plugin.converter is not None  # set by APISpec when it initialises the plugin
    converter = plugin.converter
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: (r.rule, sorted(r.methods or ()))):
        contract = contract_of(app.view_functions[rule.endpoint])
        if contract is None:
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            path = openapi_path(rule)
            spec.path(path=path, operations={method.lower(): _operation(contract, method, rule, converter)})
    return spec.to_dict()


def openapi_path(rule: Rule) -> str:
    """/v1/grades/<grade_id> → /v1/grades/{grade_id}."""
    return _RULE_ARGUMENT.sub(lambda m: "{" + m["name"] + "}", rule.rule)


def _with_conventions(contract: Operation, method: str, rule: Rule) -> Operation:
    """The conventions every operation follows without declaring them: X-Request-Id; and for a mutating /v1
    operation, Idempotency-Key, its replay header on each success and its 409."""
    headers = [*contract.headers, REQUEST_ID]
    if not takes_idempotency_key(method, rule.rule):
        return replace(contract, headers=tuple(headers))
    if IDEMPOTENCY_KEY not in headers:
        headers.insert(0, IDEMPOTENCY_KEY)
    replies = tuple(
        reply if IDEMPOTENT_REPLAYED in reply.headers else replace(reply, headers=(*reply.headers, IDEMPOTENT_REPLAYED))
        for reply in contract.replies
    )
    reused = "The Idempotency-Key was used with another request (code `idempotency_key_reused`)."
    errors = {reply.status: reply for reply in contract.errors}
    conflict = errors.get(409)
    if conflict is None:
        errors[409] = Reply(409, reused, ErrorSchema)
    elif "Idempotency-Key" not in conflict.description:
        errors[409] = replace(conflict, description=f"{conflict.description} Or: {reused[0].lower()}{reused[1:]}")
    return replace(
        contract,
        headers=tuple(headers),
        replies=replies,
        errors=tuple(errors[status] for status in sorted(errors)),
    )


def _operation(contract: Operation, method: str, rule: Rule, converter: OpenAPIConverter) -> dict[str, Any]:
    contract = _with_conventions(contract, method, rule)
    parameters: list[dict[str, Any]] = []
    for match in _RULE_ARGUMENT.finditer(rule.rule):
        name = match["name"]
        declared = contract.path.get(name)
        schema = (
            converter.field2property(declared)
            if declared is not None
            else {"type": _CONVERTER_TYPES.get(match["converter"] or "", "string")}
        )
        parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
    if contract.query is not None:
        parameters.append({"in": "query", "schema": contract.query})
    parameters += [_header_parameter(header) for header in contract.headers]
    operation: dict[str, Any] = {
        "operationId": contract.operation_id,
        "tags": [contract.tag],
        "summary": contract.summary,
        "security": [{name: [] for name in schemes} for schemes in contract.security],
        "responses": {str(reply.status): _response(reply) for reply in (*contract.replies, *contract.errors)},
    }
    if contract.description:
        operation["description"] = contract.description
    if parameters:
        operation["parameters"] = parameters
    if contract.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {media_type: {"schema": contract.body} for media_type in contract.body_media_types},
        }
    if contract.callbacks:
        operation["callbacks"] = {callback.name: _callback(callback) for callback in contract.callbacks}
    return operation


def _header_parameter(header: Header) -> dict[str, Any]:
    return {
        "name": header.name,
        "in": "header",
        "required": header.required,
        "description": header.description,
        "schema": _header_schema(header),
    }


def _callback(callback: Callback) -> dict[str, Any]:
    """One callback's path item: the POST Passback sends, its headers and body, and what it expects back."""
    request: dict[str, Any] = {
        "summary": callback.summary,
        "requestBody": {"required": True, "content": {"application/json": {"schema": callback.body}}},
        "responses": {"2XX": {"description": callback.answer}},
    }
    if callback.description:
        request["description"] = callback.description
    if callback.headers:
        request["parameters"] = [_header_parameter(header) for header in callback.headers]
    return {callback.url: {"post": request}}


def _response(reply: Reply) -> dict[str, Any]:
    response: dict[str, Any] = {"description": reply.description}
    if reply.schema is not None:
        response["content"] = {reply.media_type: {"schema": reply.schema}}
    response["headers"] = {
        header.name: {"description": header.description, "schema": _header_schema(header)}
        for header in (*reply.headers, *EVERY_ANSWER_HEADERS)
    }
    return response


def _header_schema(header: Header) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": header.type}
    if header.max_length is not None:
        schema.update(minLength=1, maxLength=header.max_length)
    return schema


def openapi_document(app: Flask) -> dict[str, Any]:
    """Built on first use and kept with the app: the rules and contracts do not change while it runs."""
    services = services_of(app)
    if services.openapi_document is None:
        services.openapi_document = build_spec(app)
    return services.openapi_document


@openapi_bp.get("/openapi.json")
def openapi_json() -> Response:
    return jsonify(openapi_document(current_app))


@openapi_bp.get("/api-docs")
def api_docs() -> str:
    """Swagger UI: the page, its script and stylesheet all come from this gateway (no CDN), under the app's CSP."""
    return render_template("api_docs.html")


@openapi_bp.get("/api-docs/assets/<name>")
def api_docs_asset(name: str) -> Response:
    if name not in SWAGGER_UI_ASSETS:
        raise NotFound()
    return send_from_directory(str(swagger_ui_path), name, max_age=86400)
