"""The one error shape: {"error": {"code", "message", "fields"?, "requestId"}}."""

from __future__ import annotations

from marshmallow import Schema, fields


class ErrorBodySchema(Schema):
    code = fields.String(required=True, metadata={"description": "Stable machine-readable error code."})
    message = fields.String(required=True)
    fields_ = fields.Dict(
        data_key="fields",
        keys=fields.String(),
        values=fields.Raw(),
        metadata={"description": "Per-field messages, naming each field and the rule it broke."},
    )
    request_id = fields.String(
        data_key="requestId",
        metadata={"description": "The answer's X-Request-Id: quote it when reporting the error."},
    )


class ErrorSchema(Schema):
    error = fields.Nested(ErrorBodySchema, required=True)
