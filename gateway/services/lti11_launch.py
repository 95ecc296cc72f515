"""LTI 1.1 launches: the OAuth 1.0a signature checked with oauthlib (HMAC-SHA1, a 5-minute timestamp
window, nonces used once), then the same records as an LTI 1.3 launch plus the student's sourcedid."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from oauthlib.oauth1 import RequestValidator, SignatureOnlyEndpoint
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from adapters.lti11_outcomes import accepted_extensions, launch_points_possible
from adapters.url_policy import drop_refused_urls
from gateway.crypto import SecretBox
from gateway.models import LmsConnection, UsedNonce, utcnow
from gateway.services.directory import enroll, identity_issuer
from gateway.services.lms import connection_settings
from gateway.services.lti13_launch import (
    LaunchRefused,
    RecordedLaunch,
    linked_user,
    placement_for_link,
    record_link_launch,
    resolve_link_assignment,
    role_for,
)
from gateway.services.routing import release_awaiting_launch, retire_unlaunched_links, route_waiting_grades

TIMESTAMP_WINDOW_SECONDS = 300
LTI_VERSIONS = ("LTI-1p0", "LTI-1p1")

log = logging.getLogger("passback.lti11")


class _LaunchValidator(RequestValidator):
    """oauthlib's questions, answered from Passback's registrations and its used-nonce table."""

    enforce_ssl = False  # the public URL decides the scheme; TLS ends at the proxy in front of Passback
    timestamp_lifetime = TIMESTAMP_WINDOW_SECONDS
    dummy_client = "passback-unknown-consumer"

    def __init__(self, session: Session, box: SecretBox, now: datetime) -> None:
        super().__init__()
        self.session = session
        self.box = box
        self.now = now
        self.connection: LmsConnection | None = None
        self.settings: dict[str, Any] = {}

    @property
    def allowed_signature_methods(self) -> tuple[str, ...]:
        return ("HMAC-SHA1", "HMAC-SHA256")

    # LMSs send keys and nonces of every shape; oauthlib's defaults want 20-30 alphanumerics.
    def check_client_key(self, client_key: str) -> bool:
        return 0 < len(client_key) <= 255

    def check_nonce(self, nonce: str) -> bool:
        return 0 < len(nonce) <= 255

    def validate_client_key(self, client_key: str, request: Any) -> bool:
        self.connection = self.session.scalar(
            select(LmsConnection).where(LmsConnection.registration_key == f"lti11|{client_key}")
        )
        if self.connection is None:
            return False
        self.settings = connection_settings(self.box, self.connection)
        return True

    def get_client_secret(self, client_key: str, request: Any) -> str:
        # oauthlib computes a signature even for unknown keys (timing); the dummy secret never verifies.
        return str(self.settings.get("shared_secret") or "passback-no-such-secret")

    def validate_timestamp_and_nonce(
        self,
        client_key: str,
        timestamp: str,
        nonce: str,
        request: Any,
        request_token: Any = None,
        access_token: Any = None,
    ) -> bool:
        try:
            with self.session.begin_nested():
                self.session.add(
                    UsedNonce(
                        issuer=f"lti11:{client_key}",
                        nonce=nonce,
                        expires_at=self.now + timedelta(seconds=2 * TIMESTAMP_WINDOW_SECONDS),
                    )
                )
        except IntegrityError:
            return False
        return True


def verify_launch(
    session: Session, box: SecretBox, url: str, body: str, content_type: str, *, now: datetime | None = None
) -> tuple[LmsConnection, dict[str, Any]]:
    """Check the signed form POST; returns the registration and its settings, or raises LaunchRefused."""
    validator = _LaunchValidator(session, box, now or utcnow())
    endpoint = SignatureOnlyEndpoint(validator)
    try:
        valid, _request = endpoint.validate_request(
            url, http_method="POST", body=body, headers={"Content-Type": content_type}
        )
    except ValueError as exc:  # oauthlib raises on malformed OAuth parameters
        raise LaunchRefused(f"the launch's OAuth parameters are malformed: {exc}") from exc
    if not valid or validator.connection is None:
        raise LaunchRefused(
            "the launch's OAuth signature is not valid (consumer key, shared secret, a timestamp more than "
            "5 minutes off, or a nonce already used)",
            code="invalid_signature",
        )
    return validator.connection, validator.settings


def record_launch(
    session: Session, connection: LmsConnection, settings: Mapping[str, Any], params: Mapping[str, str]
) -> RecordedLaunch:
    """Check the message, then record the user, course, placement, and this student's sourcedid."""
    if params.get("lti_message_type") != "basic-lti-launch-request":
        raise LaunchRefused(f"unsupported lti_message_type {params.get('lti_message_type')!r}")
    if params.get("lti_version") not in LTI_VERSIONS:
        raise LaunchRefused(f"unsupported lti_version {params.get('lti_version')!r}")
    for name in ("resource_link_id", "user_id"):
        value = params.get(name)
        if not value or len(value) > 255:
            raise LaunchRefused(f"{name} is required, at most 255 characters")
    user = linked_user(
        session,
        connection,
        identity_issuer(connection, settings),
        params["user_id"],
        role=role_for(params.get("roles", "").split(",")),
        name=params.get("lis_person_name_full") or None,
        email=params.get("lis_person_contact_email_primary") or None,
    )
    link_id = params["resource_link_id"]
    context_id = params.get("context_id") or f"link:{link_id}"
    if len(context_id) > 255:
        raise LaunchRefused("context_id must be at most 255 characters")
    found, assignment = resolve_link_assignment(
        session,
        connection,
        link_id,
        params.get("custom_assignment") or params.get("assignment") or None,
        params.get("custom_app") or params.get("app") or None,
    )
    destination: dict[str, Any] = {
        "resource_link_id": link_id,
        "extensions": accepted_extensions(params),
        # The LMS's scale for resultTotalScore; None (not absent) so a relaunch without it forgets an old one.
        "points_possible": launch_points_possible(params),
    }
    if params.get("lis_outcome_service_url"):
        destination["outcome_service_url"] = params["lis_outcome_service_url"]
    for reason in drop_refused_urls(settings, destination, ("outcome_service_url",)):
        log.warning("LTI 1.1 launch: outcome URL not stored: %s", reason)
    placement = placement_for_link(
        session, connection, found, assignment, context_id, link_id, params.get("resource_link_title"), destination
    )
    enroll(session, connection, context_id, user, source="launch")
    # Recorded even without a sourcedid (an ungraded link, or a teacher): the launch happened, so grades stop
    # waiting for one and fail with the LMS's reason instead of "has not opened the link".
    sourcedid = params.get("lis_result_sourcedid") or None
    launch = record_link_launch(session, connection, placement, user)
    # Stored exactly as received: the sourcedid is opaque (Canvas signs it, Moodle hashes it). A relaunch
    # without one keeps the one an earlier launch gave.
    if sourcedid is not None or not (launch.data or {}).get("sourcedid"):
        launch.data = {"sourcedid": sourcedid}
    now = utcnow()  # one instant for the launch's rows and the grades it routes
    launch.updated_at = now
    session.flush()
    retire_unlaunched_links(session, user.id, placement, now=now)
    released = release_awaiting_launch(session, user.id, connection.id, placement_id=placement.id, now=now)
    routed = route_waiting_grades(session, connection.district_id, user_id=user.id, now=now)
    return RecordedLaunch(user, assignment, placement, connection.id, released, routed)
