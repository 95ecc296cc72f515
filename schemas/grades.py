"""Bodies of POST /v1/grade and the grade status responses."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates, validates_schema

from schemas.base import JsonNumber, PagedQuerySchema, StrictSchema, UtcDateTime, updated_since_field
from schemas.statuses import LISTED_STATUSES, DeliveryStatus

ASSIGNMENT_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
ASSIGNMENT_ID_RULE = "Must be 1 to 64 characters: letters, digits, dash, underscore and dot."
ACTIVITY_PROGRESS = ("Initialized", "Started", "InProgress", "Submitted", "Completed")
GRADING_PROGRESS = ("FullyGraded", "Pending", "PendingManual", "Failed", "NotReady")
MAX_CONTEXT_BYTES = 4096
MAX_CONTEXT_DEPTH = 20
MAX_COMMENT_CHARS = 10_000
STUDENT_KEY_RULE = (
    "Name the student by exactly one of userID, sisID, email, or lmsUserID with lms, resolved in the token's "
    "district (400 for none or two; 404 unknown; 409 when it names two users). A user token may name only its own "
    "user, by any key, or leave the key out."
)
STUDENT_KEY_FILTER_RULE = (
    "At most one of userID, sisID, email, or lmsUserID with lms (400 for two). A key that names no one gives an "
    "empty page; an email two users share matches both."
)


class JsonBoolean(fields.Boolean):
    """A JSON true or false: not 1, "true" or "yes"."""

    default_error_messages = {"invalid": "Must be a JSON boolean: true or false."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


def json_depth(value: Any) -> int:
    """How many levels of objects and arrays `value` nests (a scalar is 0), counted without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
        else:
            deepest = max(deepest, depth)
            continue
        deepest = max(deepest, depth + 1)
    return deepest


class GradeRequestSchema(StrictSchema):
    assignmentID = fields.String(
        required=True, validate=validate.Regexp(ASSIGNMENT_ID_PATTERN, error=ASSIGNMENT_ID_RULE)
    )
    # The student keys: exactly one with a district-app token (see STUDENT_KEY_RULE); a user token may leave
    # them out. Exclusivity is checked by the service, which answers 400 naming the fields.
    userID = fields.String(
        validate=validate.Length(min=1, max=64),
        metadata={"description": f"The student's Passback id. {STUDENT_KEY_RULE}"},
    )
    sisID = fields.String(
        validate=validate.Length(min=1, max=255),
        metadata={"description": f"The student's id in the district's student information system. {STUDENT_KEY_RULE}"},
    )
    email = fields.String(
        validate=validate.Length(min=1, max=320),
        metadata={"description": f"The student's email, matched exactly as Passback stores it. {STUDENT_KEY_RULE}"},
    )
    lmsUserID = fields.String(
        validate=validate.Length(min=1, max=255),
        metadata={"description": f"The student's user id in the LMS named by `lms`. {STUDENT_KEY_RULE}"},
    )
    lms = fields.String(
        validate=validate.Length(min=1, max=200),
        metadata={"description": "With lmsUserID, and only with it: the LMS connection's id or name."},
    )
    # The bounds are checked below, with a hint for a percent sent as 80; the metadata documents them.
    percentage = JsonNumber(metadata={"description": "A fraction in 0..1 (0.8 means 80%).", "minimum": 0, "maximum": 1})
    scoreGiven = JsonNumber(validate=validate.Range(min=0, error="Must be greater than or equal to 0."))
    scoreMaximum = JsonNumber(validate=validate.Range(min=0, min_inclusive=False, error="Must be greater than 0."))
    comment = fields.String(allow_none=True, validate=validate.Length(max=MAX_COMMENT_CHARS))
    context = fields.Dict(
        keys=fields.String(),
        allow_none=True,
        metadata={
            "description": f"Whatever else the app knows, at most {MAX_CONTEXT_BYTES} bytes of JSON, nested at most "
            f"{MAX_CONTEXT_DEPTH} levels deep."
        },
    )
    timestamp = fields.AwareDateTime(
        format="iso",
        error_messages={
            "invalid": "Must be an ISO 8601 date-time, e.g. 2026-11-23T10:00:00Z.",
            "invalid_awareness": "Must include a UTC offset, e.g. 2026-11-23T10:00:00Z or +01:00.",
        },
    )
    activityProgress = fields.String(validate=validate.OneOf(ACTIVITY_PROGRESS))
    gradingProgress = fields.String(validate=validate.OneOf(GRADING_PROGRESS))
    preserveScore = JsonBoolean(
        metadata={
            "description": "Only for a gradingProgress the LMS does not count (Canvas counts FullyGraded and "
            "PendingManual, Moodle only FullyGraded): true (the default) keeps the score the LMS already holds, "
            "false clears it."
        },
    )

    @validates("percentage")
    def _percentage_in_range(self, value: float, **_: Any) -> None:
        if 0 <= value <= 1:
            return
        if 1 < value <= 100:
            raise ValidationError(
                f"Must be between 0 and 1; {value:g} looks like a percent: send {value / 100:g} instead. "
                "For extra credit send scoreGiven and scoreMaximum."
            )
        raise ValidationError("Must be between 0 and 1.")

    @validates("timestamp")
    def _timestamp_in_range(self, value: datetime, **_: Any) -> None:
        try:
            in_utc = value.astimezone(UTC)
        except OverflowError as exc:
            raise ValidationError("Out of range.") from exc
        if in_utc.year < 1970:
            raise ValidationError("Must be in 1970 or later.")

    @validates("context")
    def _context_small(self, value: dict[str, Any] | None, **_: Any) -> None:
        if value is None:
            return
        # Depth first: serializing (or any recursive walk of) a deeply nested value exhausts Python's stack.
        if json_depth(value) > MAX_CONTEXT_DEPTH:
            raise ValidationError(f"Must be nested at most {MAX_CONTEXT_DEPTH} levels deep (objects and arrays).")
        if len(json.dumps(value, separators=(",", ":"))) > MAX_CONTEXT_BYTES:
            raise ValidationError(f"Must be at most {MAX_CONTEXT_BYTES} bytes of JSON.")

    @validates_schema
    def _exactly_one_score_form(self, data: dict[str, Any], **_: Any) -> None:
        has_percentage = "percentage" in data
        has_given = "scoreGiven" in data
        has_maximum = "scoreMaximum" in data
        errors: dict[str, list[str]] = {}
        if has_percentage and (has_given or has_maximum):
            message = "Send either percentage, or scoreGiven with scoreMaximum, not both."
            errors["percentage"] = [message]
            errors["scoreGiven" if has_given else "scoreMaximum"] = [message]
        elif not has_percentage:
            if not has_given and not has_maximum:
                errors["percentage"] = ["Required: send percentage, or scoreGiven with scoreMaximum."]
            elif not has_maximum:
                errors["scoreMaximum"] = ["Required with scoreGiven."]
            elif not has_given:
                errors["scoreGiven"] = ["Required with scoreMaximum."]
        if not errors and has_given and has_maximum and not math.isfinite(data["scoreGiven"] / data["scoreMaximum"]):
            errors["scoreMaximum"] = ["Too small for this scoreGiven: scoreGiven / scoreMaximum is not finite."]
        if errors:
            raise ValidationError(errors)


class NormalizedSchema(Schema):
    fraction = fields.Float(metadata={"description": "scoreGiven / scoreMaximum; above 1 for extra credit."})
    scoreGiven = fields.Float(attribute="score_given")
    scoreMaximum = fields.Float(attribute="score_maximum")


class PlacementRefSchema(Schema):
    id = fields.String()
    courseID = fields.String(attribute="course_id")
    sectionID = fields.String(attribute="section_id", allow_none=True)


class DeliveryStatusSchema(Schema):
    id = fields.String()
    operation = fields.String(metadata={"enum": ["replace", "delete"]})
    status = fields.String(metadata={"enum": [s.value for s in DeliveryStatus]})
    lmsConnection = fields.String(attribute="lms_connection_name", allow_none=True)
    adapter = fields.String(allow_none=True)
    placement = fields.Nested(PlacementRefSchema, allow_none=True)
    attempts = fields.Integer()
    nextAttemptAt = UtcDateTime(attribute="next_attempt_at", allow_none=True)
    lastError = fields.String(attribute="last_error", allow_none=True)
    cause = fields.String(
        allow_none=True,
        metadata={
            "description": "Why the last attempt did not go through, as a stable code of Passback's catalogue of "
            "causes (docs/error-causes.md), e.g. `not_enrolled`, `credentials_refused`, `rate_limited`; "
            "`lastError` keeps the LMS's own words. Null when delivered or not yet tried."
        },
    )
    lmsStatus = fields.Integer(attribute="lms_status", allow_none=True)
    lmsResponse = fields.String(attribute="lms_response", allow_none=True)
    deliveredAt = UtcDateTime(attribute="delivered_at", allow_none=True)
    gradebookHolds = fields.Dict(
        attribute="gradebook_holds",
        allow_none=True,
        metadata={
            "description": "What the LMS gradebook holds after this delivery, where the adapter can tell: "
            "`score` and `scoreMaximum` (`score` null: no score); `kept: true` when the LMS kept the score it "
            "held before (the score shown is the last one Passback delivered, null if none)."
        },
    )
    updatedAt = UtcDateTime(attribute="updated_at")


class StudentKeySchema(Schema):
    """The one key the app named the student by, echoed as posted."""

    userID = fields.String()
    sisID = fields.String()
    email = fields.String()
    lmsUserID = fields.String()
    lms = fields.String()


class GradeResponseSchema(Schema):
    id = fields.String()
    assignmentID = fields.String(attribute="assignment_external_id")
    userID = fields.String(attribute="user_id", metadata={"description": "The student's Passback id, resolved."})
    studentKey = fields.Nested(
        StudentKeySchema,
        attribute="student_key",
        metadata={
            "description": 'The key the app named the student by, as posted (e.g. `{"sisID": "S-1001"}`): in '
            "an answer to posting, this post's key; in a read, the key the current revision was posted with. "
            '`{"userID": …}` when a user token left the key out, and for grades stored before keys were recorded.'
        },
    )
    percentage = fields.Float(allow_none=True)
    scoreGiven = fields.Float(attribute="input_score_given", allow_none=True)
    scoreMaximum = fields.Float(attribute="input_score_maximum", allow_none=True)
    normalized = fields.Nested(NormalizedSchema)
    comment = fields.String(allow_none=True)
    context = fields.Dict(allow_none=True)
    timestamp = UtcDateTime()
    activityProgress = fields.String(attribute="activity_progress")
    gradingProgress = fields.String(attribute="grading_progress")
    preserveScore = fields.Boolean(attribute="preserve_score")
    revision = fields.Integer()
    createdAt = UtcDateTime(attribute="created_at")
    updatedAt = UtcDateTime(attribute="updated_at")
    status = fields.String(metadata={"description": "The least advanced delivery status of this revision."})
    deletedAt = UtcDateTime(attribute="deleted_at", allow_none=True)
    deliveries = fields.List(fields.Nested(DeliveryStatusSchema))


class GradeListQuerySchema(PagedQuerySchema):
    assignmentID = fields.String(validate=validate.Regexp(ASSIGNMENT_ID_PATTERN, error=ASSIGNMENT_ID_RULE))
    userID = fields.String(validate=validate.Length(min=1, max=64), metadata={"description": STUDENT_KEY_FILTER_RULE})
    sisID = fields.String(validate=validate.Length(min=1, max=255), metadata={"description": STUDENT_KEY_FILTER_RULE})
    email = fields.String(validate=validate.Length(min=1, max=320), metadata={"description": STUDENT_KEY_FILTER_RULE})
    lmsUserID = fields.String(
        validate=validate.Length(min=1, max=255), metadata={"description": STUDENT_KEY_FILTER_RULE}
    )
    lms = fields.String(
        validate=validate.Length(min=1, max=200),
        metadata={"description": "With lmsUserID, and only with it: the LMS connection's id or name."},
    )
    status = fields.String(validate=validate.OneOf([s.value for s in LISTED_STATUSES]))
    updatedSince = updated_since_field(
        "A grade counts as changed when a revision or a deletion was stored, or when one of its deliveries changed "
        "status."
    )


class GradeListResponseSchema(Schema):
    grades = fields.List(fields.Nested(GradeResponseSchema))
    nextCursor = fields.String(attribute="next_cursor", allow_none=True)


class LmsValueSchema(Schema):
    deliveryID = fields.String(attribute="delivery_id")
    lmsConnection = fields.String(attribute="lms_connection")
    value = fields.Float(allow_none=True, metadata={"description": "The fraction the LMS holds; null: no grade."})
    error = fields.String(allow_none=True, metadata={"description": "Why the LMS could not be read."})


class LmsValuesSchema(Schema):
    lms = fields.List(fields.Nested(LmsValueSchema))


MAX_BULK_GRADES = 1000


class BulkGradeRequestSchema(StrictSchema):
    """`POST /v1/grades`: the envelope only; each entry is then loaded with GradeRequestSchema on its own, so one
    bad grade is refused alone."""

    grades = fields.List(
        fields.Raw(metadata={"loaded_with": GradeRequestSchema}),
        required=True,
        validate=validate.Length(min=1, max=MAX_BULK_GRADES, error="Must hold 1 to 1000 grades."),
    )


class BulkGradeResultSchema(Schema):
    index = fields.Integer(metadata={"description": "The entry's position in the request's `grades`."})
    status = fields.Integer(metadata={"description": "202 accepted, or the status the entry alone would get."})
    id = fields.String(metadata={"description": "The grade's id (accepted entries)."})
    revision = fields.Integer()
    changed = fields.Boolean(metadata={"description": "False when an identical grade was already stored."})
    userID = fields.String(metadata={"description": "The student's Passback id, resolved (accepted entries)."})
    studentKey = fields.Nested(
        StudentKeySchema, metadata={"description": "The key the entry named the student by (accepted entries)."}
    )
    error = fields.Dict(keys=fields.String(), values=fields.Raw(), metadata={"description": "Refused entries."})


class BulkGradeResponseSchema(Schema):
    accepted = fields.Integer()
    rejected = fields.Integer()
    results = fields.List(fields.Nested(BulkGradeResultSchema))
