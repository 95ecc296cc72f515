"""Placements an app (or a district's script) asks for: catalog assignments mapped to LMS courses/sections."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from schemas.base import StrictSchema
from schemas.grades import ASSIGNMENT_ID_PATTERN, ASSIGNMENT_ID_RULE

MAX_PLACEMENTS = 1000
LMS_ID = validate.Length(min=1, max=255)


class PlacementEntrySchema(StrictSchema):
    assignmentID = fields.String(
        required=True, validate=validate.Regexp(ASSIGNMENT_ID_PATTERN, error=ASSIGNMENT_ID_RULE)
    )
    lms = fields.String(required=True, validate=validate.Length(min=1, max=200))
    course = fields.String(validate=LMS_ID)
    section = fields.String(validate=LMS_ID)
    lmsAssignmentID = fields.String(validate=LMS_ID)


class PlacementsRequestSchema(StrictSchema):
    placements = fields.List(
        fields.Nested(PlacementEntrySchema), required=True, validate=validate.Length(min=1, max=MAX_PLACEMENTS)
    )

    @validates_schema
    def _unique(self, data: dict[str, Any], **_: Any) -> None:
        seen: set[tuple[str, str, str]] = set()
        for index, entry in enumerate(data.get("placements", [])):
            key = (entry["assignmentID"], entry["lms"], entry.get("course") or entry.get("section") or "")
            if key in seen:
                duplicate = {"assignmentID": ["Duplicate placement in this request."]}
                raise ValidationError({"placements": {index: duplicate}})
            seen.add(key)


class PlacementSchema(Schema):
    id = fields.String()
    assignmentID = fields.String(attribute="assignment_id")
    lms = fields.String(attribute="lms_name")
    lmsConnectionID = fields.String(attribute="lms_connection_id")
    course = fields.String(attribute="course_id")
    section = fields.String(attribute="section_id", allow_none=True)
    lmsAssignmentID = fields.String(attribute="lms_assignment_id", allow_none=True)
    created = fields.Boolean()


class PlacementsResponseSchema(Schema):
    created = fields.Integer()
    existing = fields.Integer()
    placements = fields.List(fields.Nested(PlacementSchema))
