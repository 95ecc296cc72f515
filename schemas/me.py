"""GET /v1/me, in the shape of Clever's /me."""

from __future__ import annotations

from marshmallow import Schema, fields


class MeDataSchema(Schema):
    id = fields.String(allow_none=True, metadata={"description": "The user's id; null for a district-app token."})
    district = fields.String()
    app = fields.String()
    type = fields.String(metadata={"enum": ["district_app", "student", "teacher"]})
    scopes = fields.List(fields.String())


class MeSchema(Schema):
    type = fields.String(metadata={"enum": ["district_app", "student", "teacher"]})
    data = fields.Nested(MeDataSchema)
