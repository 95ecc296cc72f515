"""The dashboard's query strings and bulk forms."""

from __future__ import annotations

from marshmallow import EXCLUDE, Schema, fields, validate

from schemas.statuses import DeliveryStatus

LISTED_STATUSES = [s.value for s in DeliveryStatus]
BULK_ACTIONS = ["retry_failed", "retry_now", "resolve"]


class DeliveryFilterSchema(Schema):
    """Which deliveries a list shows (every field optional; together they narrow it). Unknown keys, such as the
    page cursors, are left to the view."""

    class Meta:
        unknown = EXCLUDE

    status = fields.String(load_default=None, validate=validate.OneOf(LISTED_STATUSES))
    connection = fields.String(load_default=None, validate=validate.Length(max=64))
    app = fields.String(load_default=None, validate=validate.Length(max=64))
    assignment = fields.String(load_default=None, validate=validate.Length(max=255))
    course = fields.String(load_default=None, validate=validate.Length(max=255))
    student = fields.String(
        load_default=None,
        validate=validate.Length(max=200),
        metadata={"description": "Part of the student's name or e-mail, or their SIS id."},
    )
    since = fields.Date(load_default=None, metadata={"description": "Changed on or after this day (district time)."})
    until = fields.Date(load_default=None, metadata={"description": "Changed on or before this day (district time)."})
    cause = fields.String(load_default=None, validate=validate.Length(max=64))


class BulkActionSchema(DeliveryFilterSchema):
    action = fields.String(required=True, validate=validate.OneOf(BULK_ACTIONS))
