"""Placements an app (or a district's script) asks for: catalog assignments mapped to LMS courses/sections; and
the placements an app reads back with their delivery health."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from schemas.base import PagedQuerySchema, StrictSchema, UtcDateTime, updated_since_field
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


class PlacementListQuerySchema(PagedQuerySchema):
    assignmentID = fields.String(validate=validate.Regexp(ASSIGNMENT_ID_PATTERN, error=ASSIGNMENT_ID_RULE))
    updatedSince = updated_since_field(
        "A placement counts as changed when it did (its link, title, section or line item), or when one of its "
        "deliveries changed status."
    )


class DeliveryCountsSchema(Schema):
    """Score sends to one placement by status, every revision, superseded ones left out (as the dashboard
    counts them)."""

    delivered = fields.Integer()
    pending = fields.Integer()
    delivering = fields.Integer()
    retrying = fields.Integer()
    awaiting_launch = fields.Integer()
    failed = fields.Integer()


class PlacementDetailSchema(Schema):
    id = fields.String()
    assignmentID = fields.String(attribute="assignment_id")
    lms = fields.String(attribute="lms_name", metadata={"description": "The LMS connection's name."})
    lmsConnectionID = fields.String(attribute="lms_connection_id")
    adapter = fields.String(metadata={"description": "How Passback talks to this LMS: lti13, lti11, schoology…"})
    courseID = fields.String(
        attribute="course_ref", metadata={"description": "Passback's id for the course (GET /v1/courses)."}
    )
    course = fields.String(attribute="course_id", metadata={"description": "The LMS's id for the course."})
    section = fields.String(attribute="section_id", allow_none=True)
    linkID = fields.String(
        attribute="link_id",
        allow_none=True,
        metadata={"description": "The LMS link (LTI resource link id) it belongs to; null when placed by hand or API."},
    )
    title = fields.String(allow_none=True)
    lmsAssignmentID = fields.String(
        attribute="lms_assignment_id", allow_none=True, metadata={"description": "The LMS's assignment (Schoology)."}
    )
    lineItem = fields.String(
        attribute="line_item",
        allow_none=True,
        metadata={"description": "The gradebook column's URL (LTI 1.3 AGS line item), once known."},
    )
    deliveries = fields.Nested(DeliveryCountsSchema)
    createdAt = UtcDateTime(attribute="created_at")
    updatedAt = UtcDateTime(attribute="updated_at")


class PlacementListResponseSchema(Schema):
    placements = fields.List(fields.Nested(PlacementDetailSchema))
    nextCursor = fields.String(attribute="next_cursor", allow_none=True)
