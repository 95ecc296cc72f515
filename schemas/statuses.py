"""The delivery status vocabulary, spelled once: the database rows, the API's enums and filters, the dashboard
and the worker all use these members."""

from __future__ import annotations

from enum import StrEnum


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERING = "delivering"
    DELIVERED = "delivered"
    RETRYING = "retrying"
    FAILED = "failed"
    AWAITING_LAUNCH = "awaiting_launch"
    UNROUTABLE = "unroutable"
    # Replaced by a newer revision of the same grade before it reached the LMS.
    SUPERSEDED = "superseded"
    # A failure district staff marked as handled outside Passback (the grade entered by hand, the student gone):
    # final, never sent, no longer counted as failed; a retry takes it up again.
    RESOLVED = "resolved"


# Statuses the API and the dashboard filter by: every status but "superseded", which is history, not work.
LISTED_STATUSES: tuple[DeliveryStatus, ...] = tuple(s for s in DeliveryStatus if s is not DeliveryStatus.SUPERSEDED)

# Most advanced last: a grade's overall status is the least advanced status among its current deliveries.
PROGRESS_ORDER: tuple[DeliveryStatus, ...] = (
    DeliveryStatus.FAILED,
    DeliveryStatus.UNROUTABLE,
    DeliveryStatus.RETRYING,
    DeliveryStatus.AWAITING_LAUNCH,
    DeliveryStatus.PENDING,
    DeliveryStatus.DELIVERING,
    DeliveryStatus.RESOLVED,
    DeliveryStatus.DELIVERED,
)
