"""What a district shares with an app (GET /v1/users, /v1/courses, /v1/courses/{id}/enrollments): queries and
answers."""

from __future__ import annotations

from enum import StrEnum

from marshmallow import Schema, fields, validate

from schemas.base import PagedQuerySchema, UtcDateTime, updated_since_field

# gateway.models.UserRole's values (schemas/ import nothing of the gateway).
ROLES = ("student", "teacher")


class Readiness(StrEnum):
    """What a grade posted now for an enrolled user would do, by the delivery's routing rules."""

    DELIVERABLE = "deliverable"
    # The LMS's id for the user is not known yet: their first launch, or a roster sync that matches them, gives it.
    AWAITING_ROSTER_MATCH = "awaiting_roster_match"
    # Only the user's own launch of the link gives what the LMS needs (LTI 1.1's lis_result_sourcedid).
    AWAITING_LAUNCH = "awaiting_launch"


READINESS_RULE = (
    "What a grade posted now would do: `deliverable` (sent at once), `awaiting_roster_match` (waits for the LMS's "
    "id for the student, which their first launch or a roster sync supplies), `awaiting_launch` (waits for the "
    "student to open the link once: LTI 1.1 learns where their grade goes only then). Across several assignments "
    "in the course, the longest wait counts."
)


class UserListQuerySchema(PagedQuerySchema):
    sisID = fields.String(
        validate=validate.Length(min=1, max=255), metadata={"description": "The SIS id, exactly as stored."}
    )
    email = fields.String(
        validate=validate.Length(min=1, max=320), metadata={"description": "The email, exactly as stored."}
    )
    role = fields.String(validate=validate.OneOf(ROLES))
    updatedSince = updated_since_field(
        "A user counts as changed when their name, email, SIS id or role changed, an LMS identity was linked to "
        "them, or they came into view (enrolled in a course where the app's assignments are placed)."
    )


class LmsIdentitySchema(Schema):
    lmsConnectionID = fields.String(attribute="lms_connection_id")
    lms = fields.String(attribute="lms_name", metadata={"description": "The LMS connection's name."})
    lmsUserID = fields.String(
        attribute="lms_user_id",
        metadata={"description": "The LMS's id for the user (LTI `sub` or user_id); post grades with it and `lms`."},
    )


class UserSchema(Schema):
    userID = fields.String(attribute="user_id")
    sisID = fields.String(attribute="sis_id", allow_none=True)
    email = fields.String(allow_none=True)
    name = fields.String()
    role = fields.String(metadata={"enum": list(ROLES)})
    lmsIdentities = fields.List(fields.Nested(LmsIdentitySchema), attribute="lms_identities")
    createdAt = UtcDateTime(attribute="created_at")
    updatedAt = UtcDateTime(attribute="updated_at", metadata={"description": "When the user's own fields changed."})


class UserListResponseSchema(Schema):
    users = fields.List(fields.Nested(UserSchema))
    nextCursor = fields.String(attribute="next_cursor", allow_none=True)


class CourseListQuerySchema(PagedQuerySchema):
    # Each course's coverage reads every (placement, member) route of it: 100 courses bound a request's work.
    limit = fields.Integer(
        load_default=50,
        validate=validate.Range(min=1, max=100),
        metadata={"description": "At most 100: each course's coverage is worked out for the page."},
    )


class CoverageSchema(Schema):
    students = fields.Integer(metadata={"description": "Students enrolled in the course in Passback."})
    deliverable = fields.Integer(metadata={"description": "Of them, those a grade reaches now."})
    awaitingRosterMatch = fields.Integer(
        attribute="awaiting_roster_match",
        metadata={"description": "Those whose LMS id is unknown until their first launch or a roster sync."},
    )
    awaitingLaunch = fields.Integer(
        attribute="awaiting_launch",
        metadata={"description": "Those whose grades wait until they open the link once (LTI 1.1)."},
    )


class CourseSchema(Schema):
    id = fields.String(
        metadata={"description": "Passback's id for the course, for /v1/courses/{course_id}/enrollments."}
    )
    lms = fields.String(attribute="lms_name", metadata={"description": "The LMS connection's name."})
    lmsConnectionID = fields.String(attribute="lms_connection_id")
    adapter = fields.String(metadata={"description": "How Passback talks to this LMS: lti13, lti11, schoology…"})
    course = fields.String(attribute="course_id", metadata={"description": "The LMS's id for the course."})
    sections = fields.List(
        fields.String(), metadata={"description": "The sections the app's assignments are placed in (Schoology)."}
    )
    assignmentIDs = fields.List(
        fields.String(),
        attribute="assignment_ids",
        metadata={"description": "The app's assignments placed in the course."},
    )
    coverage = fields.Nested(CoverageSchema)
    firstPlacedAt = UtcDateTime(attribute="first_placed_at")


class CourseListResponseSchema(Schema):
    courses = fields.List(fields.Nested(CourseSchema))
    nextCursor = fields.String(attribute="next_cursor", allow_none=True)


class EnrollmentListQuerySchema(PagedQuerySchema):
    role = fields.String(validate=validate.OneOf(ROLES))
    updatedSince = updated_since_field(
        "An enrollment counts as changed when its row did, or when what a grade would do may have changed: the "
        "LMS's id for the user was linked, the user launched a link in the course, or the app placed another "
        "assignment there."
    )


class EnrollmentSchema(Schema):
    id = fields.String()
    userID = fields.String(attribute="user_id", metadata={"description": "See GET /v1/users for the user."})
    role = fields.String(metadata={"enum": list(ROLES)})
    source = fields.String(
        metadata={"description": "How Passback learned it: `launch`, `roster` (a roster sync), or `manual`."}
    )
    delivery = fields.String(
        attribute="readiness", metadata={"enum": [r.value for r in Readiness], "description": READINESS_RULE}
    )
    createdAt = UtcDateTime(attribute="created_at")
    updatedAt = UtcDateTime(attribute="updated_at")


class EnrollmentListResponseSchema(Schema):
    enrollments = fields.List(fields.Nested(EnrollmentSchema))
    nextCursor = fields.String(attribute="next_cursor", allow_none=True)
