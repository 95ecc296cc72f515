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
    # Hold each of those writes this long first (an LMS that hangs); at most 300 s.
    hang_seconds = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=1, max=300))


class SandboxFaultStateSchema(Schema):
    fail_next = fields.Integer(attribute="remaining")
    status = fields.Integer()
    retry_after = fields.Integer(allow_none=True)
    hang_seconds = fields.Integer(allow_none=True)
    message = fields.String()


class SandboxLaunchSchema(StrictSchema):
    """`POST …/launches`: the student (exactly one of userID, sisID, email) opens the assignment's link."""

    userID = fields.String(validate=validate.Length(min=1, max=255))
    sisID = fields.String(validate=validate.Length(min=1, max=255))
    email = fields.String(validate=validate.Length(min=1, max=255))
    assignmentID = fields.String(required=True, validate=validate.Length(min=1, max=64))
    # The app's client id (or id), when two apps placed the same assignmentID here.
    app = fields.String(load_default=None, validate=validate.Length(min=1, max=64))
    # The course, when the assignment is placed in several courses of this sandbox.
    courseID = fields.String(load_default=None, validate=validate.Length(min=1, max=255))


class SandboxLaunchResultSchema(Schema):
    redirect = fields.String(attribute="redirect_url")
    userID = fields.String(attribute="user_id")
    assignmentID = fields.String(attribute="assignment_id")
    courseID = fields.String(attribute="course_id")
    app = fields.String(attribute="app_name")


# The faults the dashboard offers, and the HTTP status each answers with: 5xx and 429 are retried by Passback, a
# hang is cut by its request deadline (and retried), 422 is a refusal that fails the grade at once.
FAULT_KINDS = {"500": 500, "503": 503, "429": 429, "hang": 504, "refuse": 422}


class SandboxFaultFormSchema(Schema):
    """The dashboard's fault form (strings from an HTML form; empty optional fields are left out)."""

    kind = fields.String(required=True, validate=validate.OneOf(sorted(FAULT_KINDS)))
    count = fields.Integer(required=True, validate=validate.Range(min=1, max=1000))
    retry_after = fields.Integer(load_default=None, validate=validate.Range(min=0, max=86400))
    hang_seconds = fields.Integer(load_default=None, validate=validate.Range(min=1, max=300))
