"""Bodies of the sandbox LMS's own endpoints."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from schemas.base import JsonNumber, StrictSchema, UtcDateTime


class SandboxScoreSchema(StrictSchema):
    scoreGiven = JsonNumber(required=True, validate=validate.Range(min=0))
    scoreMaximum = JsonNumber(required=True, validate=validate.Range(min=0, min_inclusive=False))
    comment = fields.String(allow_none=True)
    timestamp = fields.AwareDateTime(format="iso", required=True)
    activityProgress = fields.String(allow_none=True)
    gradingProgress = fields.String(allow_none=True)


class SandboxEntrySchema(Schema):
    courseID = fields.String(attribute="course_id")
    itemID = fields.String(attribute="item_id")
    studentID = fields.String(attribute="student_id")
    scoreGiven = fields.Float(attribute="score_given")
    scoreMaximum = fields.Float(attribute="score_maximum")
    comment = fields.String(allow_none=True)
    activityProgress = fields.String(attribute="activity_progress", allow_none=True)
    gradingProgress = fields.String(attribute="grading_progress", allow_none=True)
    timestamp = UtcDateTime()
    updatedAt = UtcDateTime(attribute="updated_at")
    writes = fields.Integer()


class SandboxFaultSchema(StrictSchema):
    fail_next = fields.Integer(required=True, validate=validate.Range(min=0, max=1000))
    status = fields.Integer(load_default=503, validate=validate.Range(min=400, max=599))
    retry_after = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=0, max=86400))
    message = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=500))
