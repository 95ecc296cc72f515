"""The catalog in Clever's shape, and the bodies that upsert it."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from schemas.base import JsonNumber, StrictSchema
from schemas.grades import ASSIGNMENT_ID_PATTERN, ASSIGNMENT_ID_RULE

MAX_BULK = 1000


class AssignmentFieldsSchema(StrictSchema):
    """What an app says about one assignment (the id comes from the path or the entry)."""

    name = fields.String(required=True, validate=validate.Length(min=1, max=500))
    type = fields.String(
        load_default="assignment",
        validate=validate.Equal("assignment", error='Must be "assignment".'),
    )
    description = fields.String(allow_none=True, validate=validate.Length(max=10_000))
    standards = fields.List(fields.String(validate=validate.Length(min=1, max=200)), validate=validate.Length(max=100))
    scoreMaximum = JsonNumber(
        validate=validate.Range(min=0, min_inclusive=False, max=1_000_000, error="Must be greater than 0.")
    )


class AssignmentEntrySchema(AssignmentFieldsSchema):
    id = fields.String(required=True, validate=validate.Regexp(ASSIGNMENT_ID_PATTERN, error=ASSIGNMENT_ID_RULE))


class AssignmentIdSchema(StrictSchema):
    id = fields.String(required=True, validate=validate.Regexp(ASSIGNMENT_ID_PATTERN, error=ASSIGNMENT_ID_RULE))


class BulkAssignmentsSchema(StrictSchema):
    assignments = fields.List(
        fields.Nested(AssignmentEntrySchema),
        required=True,
        validate=validate.Length(min=1, max=MAX_BULK),
    )

    @validates_schema
    def _unique_ids(self, data: dict[str, Any], **_: Any) -> None:
        seen: set[str] = set()
        for index, entry in enumerate(data.get("assignments", [])):
            if entry["id"] in seen:
                raise ValidationError({"assignments": {index: {"id": ["Duplicate id in this request."]}}})
            seen.add(entry["id"])


class AssignmentSchema(Schema):
    name = fields.String()
    id = fields.String(attribute="external_id")
    type = fields.Constant("assignment")
    description = fields.String(allow_none=True)
    standards = fields.List(fields.String())
    scoreMaximum = fields.Float(attribute="score_maximum")
    archived = fields.Boolean()


class CatalogSchema(Schema):
    assignments = fields.List(fields.Nested(AssignmentSchema))
    source = fields.String(metadata={"description": "push, or pull (from the app's catalog URL)"})
    problems = fields.List(fields.Dict(), metadata={"description": "Entries of a pulled catalog that were refused."})
    stale = fields.Boolean(metadata={"description": "True when the last pull failed and the last good copy is served."})


class BulkResultSchema(Schema):
    created = fields.Integer()
    updated = fields.Integer()
    assignments = fields.List(fields.Nested(AssignmentSchema))


class CatalogQuerySchema(StrictSchema):
    includeArchived = fields.Boolean(load_default=False)
