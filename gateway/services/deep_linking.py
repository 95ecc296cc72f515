"""The assignment picker: an LtiDeepLinkingRequest opens it, the teacher chooses from the district's apps'
catalogs, and Passback answers with an LtiDeepLinkingResponse JWT signed with its own key
(1EdTech LTI Deep Linking 2.0)."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from joserfc import jwt
from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters.http import HttpClient
from adapters.url_policy import UrlPolicy
from gateway.crypto import SecretBox
from gateway.db import Database
from gateway.models import App, Assignment, DeepLinkSession, DistrictApp, LmsConnection, utcnow
from gateway.services.catalog import catalog_view
from gateway.services.errors import InvalidInput, ServiceError
from gateway.services.keys import current_signing_key
from gateway.services.lms import connection_settings
from gateway.services.lti13_launch import CLAIM, Launch, LaunchRefused, user_for_launch

DL_SETTINGS = "https://purl.imsglobal.org/spec/lti-dl/claim/deep_linking_settings"
DL_CLAIM = "https://purl.imsglobal.org/spec/lti-dl/claim/"
PICKER_SECONDS = 3600
RESPONSE_SECONDS = 300


MEMBERSHIP = "http://purl.imsglobal.org/vocab/lis/v2/membership"
# Context roles that may add assignments to a course (LTI Core App. A.2); institution and system roles say
# nothing about this course, and a Learner or Mentor may not.
PICKER_ROLES = ("Instructor", "Administrator", "ContentDeveloper")


class PickerClosed(ServiceError):
    status = 410
    code = "picker_closed"


class PickerForbidden(LaunchRefused):
    status = 403
    code = "picker_forbidden"


def may_open_picker(roles: Iterable[object]) -> bool:
    """An instructor-like context role, compared as a whole URI: `membership#Instructor` (or the deprecated
    bare `Instructor`), or a sub-role `membership/Instructor#TeachingAssistant`; never a substring match."""
    for role in roles:
        if not isinstance(role, str):
            continue
        if role in PICKER_ROLES or role in {f"{MEMBERSHIP}#{name}" for name in PICKER_ROLES}:
            return True
        principal, hash_sign, sub_role = role.removeprefix(MEMBERSHIP + "/").partition("#")
        # Sub-roles: older Canvas spells the principal in lower case (`membership/instructor#TeachingAssistant`).
        if (
            role.startswith(MEMBERSHIP + "/")
            and hash_sign
            and sub_role
            and principal.lower() in {name.lower() for name in PICKER_ROLES}
        ):
            return True
    return False


def open_picker(session: Session, launch: Launch, *, now: datetime | None = None) -> DeepLinkSession:
    """Remember what the platform asked for; the picker's random id is the capability for the next steps.
    Only an instructor-like role in the course may open it."""
    now = now or utcnow()
    roles = launch.claims.get(CLAIM + "roles")
    if not isinstance(roles, list) or not may_open_picker(roles):
        raise PickerForbidden(
            "only the course's instructors, administrators and content developers may add Passback assignments"
        )
    settings = launch.claims.get(DL_SETTINGS)
    if not isinstance(settings, Mapping) or not isinstance(settings.get("deep_link_return_url"), str):
        raise LaunchRefused("a deep linking request must carry deep_linking_settings.deep_link_return_url")
    refused = return_url_refusal(launch.registration.settings, settings["deep_link_return_url"])
    if refused is not None:
        raise LaunchRefused(refused)
    accept_types = settings.get("accept_types") or []
    if "ltiResourceLink" not in accept_types:
        raise LaunchRefused("this placement does not accept LTI resource links, which Passback assignments are")
    user_id = user_for_launch(session, launch.registration, launch.claims).id if launch.claims.get("sub") else None
    accept_multiple = settings.get("accept_multiple")
    picker = DeepLinkSession(
        id=secrets.token_urlsafe(32),
        lms_connection_id=launch.registration.connection.id,
        district_id=launch.registration.connection.district_id,
        user_id=user_id,
        deployment_id=str(launch.claims[CLAIM + "deployment_id"]),
        return_url=settings["deep_link_return_url"],
        data=settings.get("data") if isinstance(settings.get("data"), str) else None,
        # pylti1p3 has seen "true"/"false" strings here (its deep_link.py, TDeepLinkData).
        accept_multiple=accept_multiple is True or str(accept_multiple).lower() == "true",
        created_at=now,
        expires_at=now + timedelta(seconds=PICKER_SECONDS),
    )
    session.add(picker)
    return picker


def return_url_refusal(settings: Mapping[str, Any], return_url: str) -> str | None:
    """Why the picker may not post its answer to this URL: it must be https (or http to a private address, with
    allow_private_addresses) on the platform's registered hosts or allowed_hosts; a javascript: URL never."""
    refused = UrlPolicy.for_connection(settings).refusal(return_url, resolve_dns=False)
    return None if refused is None else f"deep_linking_settings.deep_link_return_url: {refused}"


def platform_origins(session: Session, box: SecretBox, picker_id: str) -> list[str]:
    """The origins that may frame this picker and receive its answer: its platform's hosts."""
    picker = session.get(DeepLinkSession, picker_id)
    connection = session.get(LmsConnection, picker.lms_connection_id) if picker is not None else None
    if connection is None:
        return []
    return UrlPolicy.for_connection(connection_settings(box, connection)).origins()


def live_picker(session: Session, picker_id: str, *, now: datetime | None = None) -> DeepLinkSession:
    now = now or utcnow()
    picker = session.get(DeepLinkSession, picker_id)
    if picker is None or picker.used_at is not None or picker.expires_at < now:
        raise PickerClosed("this assignment picker has expired or was used: open it again from the LMS")
    return picker


@dataclass(frozen=True)
class PickerApp:
    app_id: str
    name: str
    client_id: str
    assignments: list[dict[str, Any]]
    problem: str | None = None


def picker_catalogs(
    db: Database, http: HttpClient, picker_id: str, query: str = "", *, cache_seconds: float = 300.0
) -> list[PickerApp]:
    """Each authorized app's catalog (pulled ones with the teacher's short-lived token), filtered by `query`."""
    with db.transaction() as session:
        picker = live_picker(session, picker_id)
        apps = [
            (a.id, a.name, a.client_id)
            for a in session.scalars(
                select(App)
                .join(DistrictApp, DistrictApp.app_id == App.id)
                .where(DistrictApp.district_id == picker.district_id, DistrictApp.revoked_at.is_(None))
                .order_by(App.name)
            )
        ]
        district_id, user_id = picker.district_id, picker.user_id
    words = [w for w in query.lower().split() if w]
    result = []
    for app_id, name, client_id in apps:
        try:
            view = catalog_view(db, http, app_id, district_id, audience_user_id=user_id, cache_seconds=cache_seconds)
        except ServiceError as exc:
            result.append(PickerApp(app_id, name, client_id, [], problem=exc.message))
            continue
        entries = [_entry(a) for a in view.assignments]
        if words:
            entries = [e for e in entries if all(w in e["haystack"] for w in words)]
        result.append(PickerApp(app_id, name, client_id, entries, "showing the last good copy" if view.stale else None))
    return result


def _entry(assignment: Any) -> dict[str, Any]:
    get = assignment.get if isinstance(assignment, dict) else lambda k: getattr(assignment, k)
    standards = [str(s) for s in get("standards") or []]
    entry: dict[str, Any] = {
        "id": str(get("external_id")),
        "name": str(get("name")),
        "description": str(get("description") or ""),
        "standards": standards,
        "score_maximum": get("score_maximum"),
    }
    entry["haystack"] = " ".join([entry["id"], entry["name"], entry["description"], *standards]).lower()
    return entry


def respond(
    session: Session,
    box: SecretBox,
    picker_id: str,
    choices: Iterable[str],
    launch_url: str,
    *,
    now: datetime | None = None,
) -> tuple[str, str]:
    """Close the picker with the chosen assignments (`app_id:assignmentID` each); returns (return URL, JWT)."""
    picker = live_picker(session, picker_id, now=now)
    chosen = list(dict.fromkeys(c for c in choices if c))
    if not chosen:
        raise InvalidInput("choose at least one assignment", fields={"assignment": ["Choose at least one."]})
    if len(chosen) > 1 and not picker.accept_multiple:
        raise InvalidInput("this LMS placement takes one assignment at a time", fields={"assignment": ["Choose one."]})
    items = []
    for choice in chosen:
        app_id, _, external_id = choice.partition(":")
        row = session.execute(
            select(Assignment, App.client_id)
            .join(App, App.id == Assignment.app_id)
            .join(DistrictApp, DistrictApp.app_id == App.id)
            .where(
                DistrictApp.district_id == picker.district_id,
                DistrictApp.revoked_at.is_(None),
                Assignment.app_id == app_id,
                Assignment.external_id == external_id,
            )
        ).first()
        if row is None:
            raise InvalidInput(f"no assignment {external_id!r} for that app", fields={"assignment": ["Unknown."]})
        assignment, client_id = row
        items.append(_resource_link(assignment, client_id, launch_url))
    connection = session.get(LmsConnection, picker.lms_connection_id)
    if connection is None:
        raise PickerClosed("the platform registration was removed")
    settings = connection_settings(box, connection)
    refused = return_url_refusal(settings, picker.return_url)
    if refused is not None:
        # A picker opened before the return URL was checked at launch.
        raise PickerClosed(refused)
    picker.used_at = now or utcnow()
    issued = int(time.time())
    claims: dict[str, Any] = {
        "iss": settings["client_id"],
        "aud": [settings["issuer"]],
        "iat": issued,
        "exp": issued + RESPONSE_SECONDS,
        "nonce": str(uuid.uuid4()),
        CLAIM + "deployment_id": picker.deployment_id,
        CLAIM + "message_type": "LtiDeepLinkingResponse",
        CLAIM + "version": "1.3.0",
        DL_CLAIM + "content_items": items,
        DL_CLAIM + "msg": f"Added {len(items)} Passback assignment{'s' if len(items) != 1 else ''}.",
    }
    if picker.data is not None:
        claims[DL_CLAIM + "data"] = picker.data
    key = current_signing_key(session, box)
    token = jwt.encode({"alg": "RS256", "kid": key.kid, "typ": "JWT"}, claims, key)
    return picker.return_url, token


def _resource_link(assignment: Assignment, client_id: str, launch_url: str) -> dict[str, Any]:
    item: dict[str, Any] = {
        "type": "ltiResourceLink",
        "title": assignment.name,
        "url": launch_url,
        "lineItem": {
            "scoreMaximum": float(assignment.score_maximum),
            "label": assignment.name,
            "resourceId": assignment.external_id,
            "tag": "passback",
        },
        # Lower-case keys: Schoology lower-cases custom parameter names (Schoology API docs: "LTI Apps").
        "custom": {"assignment": assignment.external_id, "app": client_id},
    }
    if assignment.description:
        item["text"] = assignment.description
    return item
