"""The dashboard's LMS connections: health, delivery counts, LMS-side configuration, cached access tokens,
pausing, and the assignment mappings of connections that need them. Secrets are never shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from itertools import permutations
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters import REGISTRY
from adapters.lti13_ags import SCOPE_LINEITEM, SCOPE_LINEITEM_READONLY, SCOPE_NRPS, SCOPE_RESULT_READONLY, SCOPE_SCORE
from gateway.crypto import SecretBox, SecretUndecryptable
from gateway.models import App, Assignment, CachedAccessToken, LmsConnection, Placement, utcnow
from gateway.services.dashboard_counts import sum_by, tallies, zero_counts
from gateway.services.dashboard_drilldown import MAX_ASSIGNMENTS, app_rows
from gateway.services.errors import InvalidInput, NotFound
from gateway.services.lms import connection_settings
from gateway.services.token_cache import _hash as cache_key_hash

# The scopes Passback's LTI 1.3 adapter asks platforms for; a cached token is kept per subset it used.
LTI13_SCOPES = (SCOPE_LINEITEM, SCOPE_LINEITEM_READONLY, SCOPE_RESULT_READONLY, SCOPE_SCORE, SCOPE_NRPS)


@dataclass(frozen=True)
class ConfigValue:
    """A value an admin enters on the LMS side; `copy` is False for what is not shown (secrets)."""

    label: str
    value: str
    copy: bool = True


@dataclass(frozen=True)
class CachedTokenState:
    """That Passback holds an LMS access token, for which scopes and until when; never the token."""

    scopes: tuple[str, ...]
    expires_at: datetime
    expired: bool


@dataclass
class ConnectionView:
    connection: LmsConnection
    counts: dict[str, int]
    # What an admin enters on the LMS side, without secrets.
    configuration: list[ConfigValue]
    # What Passback was told about the platform (issuer, client id …): to compare with the LMS's own page.
    registration: list[tuple[str, str]] = field(default_factory=list)
    # LTI 1.3 only: the cached access tokens (None for other adapters).
    tokens: list[CachedTokenState] | None = None
    # Schoology REST: placements (catalog assignment → section and Schoology assignment) are mapped here.
    maps_assignments: bool = False
    # Why the connection's settings cannot be shown or used: they cannot be decrypted with the configured keys.
    secret_problem: str | None = None


def connections(session: Session, box: SecretBox, district_id: str, public_url: str) -> list[ConnectionView]:
    """The district's LMS connections with their health, delivery counts, cached access tokens (LTI 1.3) and
    LMS-side configuration. Secrets are never part of it."""
    base = public_url.rstrip("/")
    counts = sum_by(tallies(session, district_id), lambda t: t.connection_id)
    result = []
    for connection in session.scalars(
        select(LmsConnection).where(LmsConnection.district_id == district_id).order_by(LmsConnection.name)
    ):
        view = ConnectionView(connection, counts.get(connection.id, zero_counts()), [])
        try:
            settings = connection_settings(box, connection)
        except SecretUndecryptable as exc:
            view.secret_problem = exc.message
            result.append(view)
            continue
        if connection.adapter == "lti13":
            view.configuration = [
                ConfigValue("Tool configuration JSON URL (Canvas: Paste JSON)", f"{base}/lti/config/{connection.id}"),
                ConfigValue("OIDC login / initiation URL", f"{base}/lti/login"),
                ConfigValue("Target link URI / launch / redirect URI", f"{base}/lti/launch"),
                ConfigValue("Deep linking URL", f"{base}/lti/launch"),
                ConfigValue("Public keyset (JWKS) URL", f"{base}/lti/jwks"),
            ]
            view.registration = [
                ("Platform", str(settings.get("platform", ""))),
                ("Issuer", str(settings.get("issuer", ""))),
                ("Client ID", str(settings.get("client_id", ""))),
                ("Deployment IDs", ", ".join(settings.get("deployment_ids") or [])),
            ]
            view.tokens = cached_tokens(session, settings)
        elif connection.adapter == "lti11":
            view.configuration = [
                ConfigValue("Launch URL", f"{base}/lti11/launch"),
                ConfigValue("Consumer key", str(settings.get("consumer_key", ""))),
                ConfigValue("Shared secret", "set when the connection was added; never shown", copy=False),
            ]
        elif connection.adapter == "sandbox":
            view.configuration = [ConfigValue("Sandbox gradebook", str(settings.get("base_url", "")) + "/gradebook")]
        elif connection.adapter == "schoology":
            # Nothing to enter on Schoology's side: the key was made there. What Passback uses, to compare.
            view.registration = [
                ("API base URL", str(settings.get("base_url", ""))),
                ("Consumer key", str(settings.get("consumer_key", ""))),
                ("Students found by", str(settings.get("roster_match", "uid"))),
            ]
            view.maps_assignments = True
        result.append(view)
    return result


@dataclass(frozen=True)
class MappingRow:
    """One placement of a catalog assignment in an LMS section, for the mapping page."""

    app_name: str
    assignment_id: str
    assignment_name: str
    section_id: str | None
    lms_assignment_id: str | None


def connection_mappings(
    session: Session, district_id: str, connection_id: str
) -> tuple[LmsConnection, list[App], list[MappingRow]]:
    """A connection of this district, the apps authorized in the district, and the connection's placements
    (catalog assignment → section and LMS assignment); NotFound for another district's connection."""
    connection = session.scalar(
        select(LmsConnection).where(LmsConnection.id == connection_id, LmsConnection.district_id == district_id)
    )
    if connection is None:
        raise NotFound("no such LMS connection in this district")
    apps = [app for app, _ in app_rows(session, district_id)]
    rows = session.execute(
        select(App.name, Assignment.external_id, Assignment.name, Placement.section_id, Placement.destination)
        .join(Assignment, Assignment.id == Placement.assignment_id)
        .join(App, App.id == Assignment.app_id)
        .where(Placement.lms_connection_id == connection.id, Placement.district_id == district_id)
        .order_by(App.name, Assignment.name, Placement.section_id)
        .limit(MAX_ASSIGNMENTS)
    ).all()
    mappings = [
        MappingRow(app_name, external_id, name, section, (destination or {}).get("assignment_id"))
        for app_name, external_id, name, section, destination in rows
    ]
    return connection, apps, mappings


def parse_mapping_lines(text: str) -> list[dict[str, str]]:
    """`assignmentID, section, LMS assignment id` per line (commas or tabs, as pasted from a spreadsheet);
    blank lines and lines starting with # are skipped. InvalidInput names the first bad line."""
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = [part.strip() for part in line.replace("\t", ",").split(",")]
        if len(parts) != 3 or not all(parts) or any(len(part) > 255 for part in parts):
            raise InvalidInput(
                f"line {number}: expected three values of at most 255 characters, assignmentID, section and "
                "Schoology assignment id",
                fields={"mappings": [f"Line {number} is {raw.strip()!r}."]},
            )
        entries.append({"assignmentID": parts[0], "section": parts[1], "lmsAssignmentID": parts[2]})
    if not entries:
        raise InvalidInput("no mappings given", fields={"mappings": ["Enter at least one line."]})
    if len(entries) > 1000:
        raise InvalidInput("at most 1,000 mappings at once", fields={"mappings": ["Split the list."]})
    return entries


def cached_tokens(session: Session, settings: dict[str, Any], *, now: datetime | None = None) -> list[CachedTokenState]:
    """The access tokens the LTI 1.3 adapter has cached for this registration, by scope set; the cache is
    keyed by a hash of the adapter's key, so the candidates (every ordering of every subset of the scopes it
    asks for) are hashed and looked up. Only presence and expiry are read, never the token."""
    now = now or utcnow()
    try:
        adapter: Any = REGISTRY["lti13"].from_settings(settings, None)  # type: ignore[arg-type]
        # The adapter's own cache key, so the two never drift apart.
        token_key = adapter._token_key
    except (KeyError, AttributeError, TypeError):
        return []
    candidates: dict[str, tuple[str, ...]] = {}
    for size in range(1, len(LTI13_SCOPES) + 1):
        for scopes in permutations(LTI13_SCOPES, size):
            candidates[cache_key_hash(token_key(list(scopes)))] = scopes
    rows = session.execute(
        select(CachedAccessToken.key_hash, CachedAccessToken.expires_at).where(
            CachedAccessToken.key_hash.in_(list(candidates))
        )
    ).all()
    return sorted(
        (CachedTokenState(candidates[key_hash], expires_at, expires_at <= now) for key_hash, expires_at in rows),
        key=lambda state: state.expires_at,
        reverse=True,
    )


def set_paused(session: Session, district_id: str, connection_id: str, paused: bool | None) -> LmsConnection:
    """Pause or resume delivery to one connection (None: just find it, in this district); grades keep being
    accepted and wait in the outbox."""
    connection = session.scalar(
        select(LmsConnection).where(LmsConnection.id == connection_id, LmsConnection.district_id == district_id)
    )
    if connection is None:
        raise NotFound("no such LMS connection in this district")
    if paused is not None:
        connection.paused = paused
    return connection
