"""SQLAlchemy models. Import from here so that every table is registered on Base.metadata."""

from gateway.models.alert import Alert, AlertSettings
from gateway.models.base import Base, new_id, utcnow
from gateway.models.catalog import DEFAULT_SCORE_MAXIMUM, Assignment, CatalogSnapshot
from gateway.models.district import (
    ApiToken,
    App,
    District,
    DistrictApp,
    Enrollment,
    LmsIdentity,
    TokenKind,
    User,
    UserRole,
)
from gateway.models.grade import (
    SUPERSEDABLE,
    Delivery,
    DeliveryStatus,
    Grade,
    GradeRevision,
    IdempotencyRecord,
)
from gateway.models.lms import LaunchDestination, LmsConnection, Placement, PlacementApproval
from gateway.models.lti import (
    AuthorizationCode,
    CachedAccessToken,
    DeepLinkSession,
    LaunchState,
    ToolKey,
    ToolKeyStatus,
    UsedNonce,
)
from gateway.models.sandbox import SandboxFault, SandboxGradebookEntry
from gateway.models.staff import AuditEntry, SignInFailure, StaffRole, StaffSession, StaffUser
from gateway.models.webhook import WebhookEndpoint, WebhookMessage, WebhookSubscription
from gateway.models.worker import WorkerHeartbeat

__all__ = [
    "DEFAULT_SCORE_MAXIMUM",
    "SUPERSEDABLE",
    "Alert",
    "AlertSettings",
    "ApiToken",
    "App",
    "Assignment",
    "AuditEntry",
    "AuthorizationCode",
    "Base",
    "CachedAccessToken",
    "CatalogSnapshot",
    "DeepLinkSession",
    "Delivery",
    "DeliveryStatus",
    "District",
    "DistrictApp",
    "Enrollment",
    "Grade",
    "GradeRevision",
    "IdempotencyRecord",
    "LaunchDestination",
    "LaunchState",
    "LmsConnection",
    "LmsIdentity",
    "Placement",
    "PlacementApproval",
    "SandboxFault",
    "SandboxGradebookEntry",
    "SignInFailure",
    "StaffRole",
    "StaffSession",
    "StaffUser",
    "TokenKind",
    "ToolKey",
    "ToolKeyStatus",
    "UsedNonce",
    "User",
    "UserRole",
    "WebhookEndpoint",
    "WebhookMessage",
    "WebhookSubscription",
    "WorkerHeartbeat",
    "new_id",
    "utcnow",
]
