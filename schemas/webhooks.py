"""Webhooks: what an app registers (POST/PATCH /v1/webhooks), what it reads back, and the event Passback
sends to each endpoint, signed as the Standard Webhooks specification says."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates, validates_schema

from schemas.base import StrictSchema, UtcDateTime
from schemas.grades import JsonBoolean, StudentKeySchema
from schemas.statuses import DeliveryStatus

MAX_URL_CHARS = 2048
# An app registers a few endpoints per district (one per environment, say), not one per customer.
MAX_ENDPOINTS_PER_APP = 20


class WebhookEvent(StrEnum):
    """What happened to one destination (delivery) of a grade revision."""

    DELIVERED = "grade.delivered"
    FAILED = "grade.failed"
    # Once per delivery: its first attempt failed and it will be tried again.
    RETRYING = "grade.retrying"
    AWAITING_LAUNCH = "grade.awaiting_launch"
    UNROUTABLE = "grade.unroutable"
    SUPERSEDED = "grade.superseded"
    # Written when a read-back finds the LMS holding another value than the one delivered.
    LMS_CHANGED = "grade.lms_changed"


EVENT_NAMES = [event.value for event in WebhookEvent]
EVENTS_RULE = "One or more of: " + ", ".join(EVENT_NAMES) + "."


def _web_url(value: str) -> None:
    try:
        validate.URL(schemes={"http", "https"}, require_tld=False)(value)
    except ValidationError as exc:
        raise ValidationError("Must be an http(s) URL, e.g. https://app.example.com/passback/webhooks.") from exc


class WebhookRequestSchema(StrictSchema):
    url = fields.String(
        required=True,
        validate=[validate.Length(min=1, max=MAX_URL_CHARS), _web_url],
        metadata={
            "description": "Where to POST events: https on a public address (http and private addresses only where "
            "the operator allows them, e.g. tests)."
        },
    )
    events = fields.List(
        fields.String(validate=validate.OneOf(EVENT_NAMES)),
        required=True,
        validate=validate.Length(min=1, max=len(EVENT_NAMES)),
        metadata={"description": EVENTS_RULE},
    )

    @validates("events")
    def _no_repeats(self, value: list[str], **_: Any) -> None:
        if len(set(value)) != len(value):
            raise ValidationError("Each event at most once.")


class WebhookPatchSchema(StrictSchema):
    url = fields.String(validate=[validate.Length(min=1, max=MAX_URL_CHARS), _web_url])
    events = fields.List(
        fields.String(validate=validate.OneOf(EVENT_NAMES)),
        validate=validate.Length(min=1, max=len(EVENT_NAMES)),
        metadata={"description": EVENTS_RULE},
    )
    disabled = JsonBoolean(
        metadata={
            "description": "true: send nothing more (undelivered events are dropped); false: send new events again."
        }
    )

    @validates("events")
    def _no_repeats(self, value: list[str], **_: Any) -> None:
        if len(set(value)) != len(value):
            raise ValidationError("Each event at most once.")

    @validates_schema
    def _something(self, data: dict[str, Any], **_: Any) -> None:
        if not data:
            raise ValidationError("Send at least one of url, events, disabled.", field_name="_schema")


class WebhookSchema(Schema):
    id = fields.String()
    url = fields.String()
    events = fields.List(fields.String(metadata={"enum": EVENT_NAMES}))
    disabled = fields.Boolean()
    disabledBy = fields.String(
        attribute="disabled_by",
        allow_none=True,
        metadata={"enum": ["app", "staff"], "description": "Who disabled it: the app, or district staff."},
    )
    disabledAt = UtcDateTime(attribute="disabled_at", allow_none=True)
    failing = fields.Boolean(
        metadata={"description": "true once an event was given up on after the retry window (a day or more)."}
    )
    failingSince = UtcDateTime(attribute="failing_since", allow_none=True)
    lastError = fields.String(attribute="last_error", allow_none=True)
    lastSuccessAt = UtcDateTime(attribute="last_success_at", allow_none=True)
    lastFailureAt = UtcDateTime(attribute="last_failure_at", allow_none=True)
    pending = fields.Integer(metadata={"description": "Events waiting to be delivered (or being retried)."})
    createdAt = UtcDateTime(attribute="created_at")
    updatedAt = UtcDateTime(attribute="updated_at")


class WebhookWithSecretSchema(WebhookSchema):
    secret = fields.String(
        metadata={
            "description": "The signing secret (`whsec_` and base64), shown only in this answer: verify each "
            "request's `webhook-signature` with it (Standard Webhooks)."
        }
    )


class WebhookListSchema(Schema):
    webhooks = fields.List(fields.Nested(WebhookSchema))


# --- what an endpoint receives -------------------------------------------------------------------------------


class WebhookDestinationSchema(Schema):
    deliveryID = fields.String(
        attribute="delivery_id", metadata={"description": "The delivery, as GET /v1/grades/{id} lists it."}
    )
    operation = fields.String(metadata={"enum": ["replace", "delete"]})
    lmsConnectionID = fields.String(attribute="lms_connection_id", allow_none=True)
    lms = fields.String(attribute="lms_connection_name", allow_none=True, metadata={"description": "Its name."})
    placementID = fields.String(attribute="placement_id", allow_none=True)
    courseID = fields.String(attribute="course_id", allow_none=True)
    sectionID = fields.String(attribute="section_id", allow_none=True)


class WebhookGradeDataSchema(Schema):
    gradeID = fields.String(attribute="grade_id")
    revision = fields.Integer(metadata={"description": "The revision this event is about (not always the newest)."})
    assignmentID = fields.String(attribute="assignment_external_id")
    userID = fields.String(attribute="user_id")
    studentKey = fields.Nested(
        StudentKeySchema,
        attribute="student_key",
        metadata={"description": "The key the app posted this revision with, as posted."},
    )
    destination = fields.Nested(
        WebhookDestinationSchema,
        metadata={"description": "The LMS destination; its ids are null for grade.unroutable (there is none)."},
    )
    status = fields.String(metadata={"enum": [s.value for s in DeliveryStatus]})
    reason = fields.String(
        allow_none=True,
        metadata={
            "description": "Why, in words: the LMS's answer as Passback classified it (failed, retrying), what is "
            "awaited, or what replaced it; null for grade.delivered."
        },
    )
    lmsStatus = fields.Integer(
        attribute="lms_status", allow_none=True, metadata={"description": "The HTTP status the LMS answered, if any."}
    )
    deliveredValue = fields.Float(
        attribute="delivered_value",
        metadata={"description": "grade.lms_changed only: the fraction (0 to 1) Passback delivered in this revision."},
    )
    lmsValue = fields.Float(
        attribute="lms_value",
        allow_none=True,
        metadata={
            "description": "grade.lms_changed only: the fraction the LMS was read to hold; null when it holds none "
            "(the grade was cleared there)."
        },
    )


class WebhookEventSchema(Schema):
    """The body of every webhook request (Standard Webhooks' payload structure: type, timestamp, data)."""

    type = fields.String(metadata={"enum": EVENT_NAMES})
    timestamp = UtcDateTime(metadata={"description": "When it happened (UTC)."})
    data = fields.Nested(WebhookGradeDataSchema)
