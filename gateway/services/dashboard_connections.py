"""The dashboard's LMS connections: health, delivery counts, LMS-side configuration, cached access tokens,
pausing, and the assignment mappings of connections that need them. Secrets are never shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters import REGISTRY
from adapters.base import ConfigValue, LmsAdapter
from gateway.crypto import SecretBox, SecretUndecryptable
from gateway.models import App, Assignment, LmsConnection, Placement, utcnow
from gateway.services.dashboard_counts import sum_by, tallies, zero_counts
from gateway.services.dashboard_drilldown import MAX_ASSIGNMENTS, app_rows
from gateway.services.errors import InvalidInput, NotFound
from gateway.services.lms import connection_settings
from gateway.services.token_cache import token_expiries


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
    # The cached access tokens of an adapter that keeps them (LTI 1.3); None for the others.
    tokens: list[CachedTokenState] | None = None
    # Placements (catalog assignment → section and LMS assignment) are mapped here (Schoology REST).
    maps_assignments: bool = False
    # Why the connection's settings cannot be shown or used: they cannot be decrypted with the configured keys.
    secret_problem: str | None = None


def connections(session: Session, box: SecretBox, district_id: str, public_url: str) -> list[ConnectionView]:
    """The district's LMS connections with their health, delivery counts, cached access tokens and LMS-side
    configuration, each adapter saying what its row shows. Secrets are never part of it."""
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
        adapter_class = REGISTRY.get(connection.adapter)
        if adapter_class is not None:
            display = adapter_class.connection_display(settings, public_url=base, connection_id=connection.id)
            view.configuration = list(display.configuration)
            view.registration = list(display.registration)
            view.maps_assignments = display.maps_assignments
            if adapter_class.caches_access_tokens:
                view.tokens = cached_tokens(session, adapter_class, settings)
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


def cached_tokens(
    session: Session, adapter_class: type[LmsAdapter], settings: dict[str, Any], *, now: datetime | None = None
) -> list[CachedTokenState]:
    """The access tokens this connection's adapter keeps in the shared cache, by scope set, newest expiry first:
    the adapter names the keys it caches under, the cache says which hold a token and until when. Only presence
    and expiry are read, never the token."""
    now = now or utcnow()
    try:
        keys = adapter_class.token_cache_keys(settings)
    except KeyError:
        return []  # settings the adapter cannot be built from: nothing can have been cached under them
    return sorted(
        (
            CachedTokenState(keys[key], expires_at, expires_at <= now)
            for key, expires_at in token_expiries(session, keys).items()
        ),
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
