"""An app's assignment catalog: pushed by the app, or pulled from the URL it serves."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from marshmallow import EXCLUDE, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters.base import DeliveryError
from adapters.http import HttpClient
from gateway.db import Database
from gateway.models import DEFAULT_SCORE_MAXIMUM, App, Assignment, CatalogSnapshot, TokenKind, utcnow
from gateway.services.auth import Principal
from gateway.services.directory import issue_token
from gateway.services.errors import NotFound, ServiceError
from gateway.services.unit_of_work import UnitOfWork
from schemas.assignments import AssignmentEntrySchema
from schemas.base import load_strict_json


class PulledAssignmentSchema(AssignmentEntrySchema):
    """An entry of an app's served catalog: fields Passback does not know are ignored, not refused."""

    class Meta:
        unknown = EXCLUDE


@dataclass
class UpsertResult:
    assignments: list[Assignment]
    created: int = 0
    updated: int = 0


def upsert_assignments(
    session: Session, app_id: str, entries: Iterable[Mapping[str, Any]], *, source: str = "push"
) -> UpsertResult:
    """Create or update assignments by the app's own id; an upsert also un-archives."""
    entries = list(entries)
    existing = {
        a.external_id: a
        for a in session.scalars(
            select(Assignment).where(
                Assignment.app_id == app_id, Assignment.external_id.in_([e["id"] for e in entries])
            )
        )
    }
    result = UpsertResult([])
    now = utcnow()
    for entry in entries:
        assignment = existing.get(entry["id"])
        if assignment is None:
            assignment = Assignment(app_id=app_id, external_id=entry["id"], created_at=now)
            session.add(assignment)
            result.created += 1
        else:
            result.updated += 1
        assignment.name = entry["name"]
        assignment.description = entry.get("description")
        assignment.standards = list(entry.get("standards") or [])
        if "scoreMaximum" in entry:
            assignment.score_maximum = float(entry["scoreMaximum"])
        elif assignment.score_maximum is None:
            assignment.score_maximum = DEFAULT_SCORE_MAXIMUM
        assignment.archived = False
        assignment.source = source
        assignment.updated_at = now
        result.assignments.append(assignment)
    session.flush()
    return result


def save_assignments(uow: UnitOfWork, app_id: str, entries: Iterable[Mapping[str, Any]]) -> UpsertResult:
    """The app pushes assignments (POST /v1/assignments, PUT /v1/assignments/{id}): all of them, or none."""
    with uow:
        result = upsert_assignments(uow.session, app_id, entries)
        uow.commit()
        return result


def archive(uow: UnitOfWork, app_id: str, external_id: str) -> Assignment:
    """The app archives an assignment (DELETE /v1/assignments/{id})."""
    with uow:
        assignment = archive_assignment(uow.session, app_id, external_id)
        uow.commit()
        return assignment


def require_catalog_writer(principal: Principal) -> None:
    principal.require_scope("assignments:write")


def list_assignments(session: Session, app_id: str, *, include_archived: bool = False) -> list[Assignment]:
    query = select(Assignment).where(Assignment.app_id == app_id)
    if not include_archived:
        query = query.where(Assignment.archived.is_(False))
    return list(session.scalars(query.order_by(Assignment.created_at, Assignment.external_id)))


def archive_assignment(session: Session, app_id: str, external_id: str) -> Assignment:
    """Hide an assignment from pickers; its grades and placements are kept, and grades are still accepted."""
    assignment = session.scalar(
        select(Assignment).where(Assignment.app_id == app_id, Assignment.external_id == external_id)
    )
    if assignment is None:
        raise NotFound(f"no assignment {external_id!r} in this app's catalog", code="assignment_not_found")
    assignment.archived = True
    assignment.updated_at = utcnow()
    return assignment


@dataclass
class CatalogView:
    assignments: list[Any]
    source: str = "push"
    problems: list[dict[str, Any]] = field(default_factory=list)
    stale: bool = False


# --- pulled catalogs ---------------------------------------------------------------------------------------

DISTRICT_AUDIENCE = "district"
PULL_TOKEN_SECONDS = 300
MAX_CATALOG_BYTES = 2 * 1024 * 1024


class CatalogUnavailable(ServiceError):
    status = 502
    code = "catalog_unavailable"


def catalog_view(
    db: Database,
    http: HttpClient,
    app_id: str,
    district_id: str,
    *,
    audience_user_id: str | None = None,
    cache_seconds: float = 300.0,
    include_archived: bool = False,
    now: datetime | None = None,
) -> CatalogView:
    """The catalog a picker shows: the pushed assignments, or, for an app with a catalog URL, a pull of it.

    A pull sends `Authorization: Bearer` a short-lived, read-only Passback token of the audience (the
    teacher, or the district) which the app may present to GET /v1/me to tailor the list. Good entries are
    served (and upserted, so grades can be posted for them), bad ones are reported in `problems`. The answer
    is cached for `cache_seconds`; when a pull fails, the last good copy is served with `stale`. Each step
    is its own transaction: the app calls back into Passback while we wait for it.
    """
    now = now or utcnow()
    with db.transaction() as session:
        app = session.get(App, app_id)
        if app is None:
            raise NotFound(f"no app {app_id!r}")
        if not app.catalog_url:
            return CatalogView(list_assignments(session, app_id, include_archived=include_archived))
        catalog_url = app.catalog_url
        audience = audience_user_id or DISTRICT_AUDIENCE
        snapshot = _snapshot(session, app_id, district_id, audience)
        fresh_until = now - timedelta(seconds=cache_seconds)
        if snapshot.fetched_at is not None and snapshot.fetched_at > fresh_until:
            return _view_of(snapshot, stale=False)
        if snapshot.last_error_at is not None and snapshot.last_error_at > fresh_until:
            # A failing catalog URL is asked again only once per cache period.
            return _stale_or_raise(snapshot)
        token = issue_token(
            session,
            TokenKind.USER if audience_user_id else TokenKind.DISTRICT_APP,
            district_id,
            app_id,
            user_id=audience_user_id,
            scopes="me:read",
            label="catalog pull",
            lifetime_seconds=PULL_TOKEN_SECONDS,
        ).raw
    try:
        entries, problems = _fetch_catalog(http, catalog_url, token)
    except CatalogFetchError as exc:
        with db.transaction() as session:
            snapshot = _snapshot(session, app_id, district_id, audience)
            snapshot.last_error = str(exc)
            snapshot.last_error_at = now
            return _stale_or_raise(snapshot)
    with db.transaction() as session:
        upsert_assignments(session, app_id, entries, source="pull")
        snapshot = _snapshot(session, app_id, district_id, audience)
        snapshot.assignments = [_catalog_entry(e) for e in entries]
        snapshot.problems = problems
        snapshot.fetched_at = now
        snapshot.last_error = None
        snapshot.last_error_at = None
        return _view_of(snapshot, stale=False)


class CatalogFetchError(Exception):
    pass


def _fetch_catalog(http: HttpClient, url: str, token: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    try:
        # The whole body is read under the request deadline, so a trickling catalog cannot hold the picker.
        response = http.request(
            "GET",
            url,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            max_body=MAX_CATALOG_BYTES,
        )
    except DeliveryError as exc:
        raise CatalogFetchError(exc.message) from exc
    if response.status_code != 200:
        raise CatalogFetchError(f"catalog URL answered HTTP {response.status_code}")
    raw = response.content
    try:
        body = load_strict_json(raw)
    except ValueError as exc:
        raise CatalogFetchError(f"catalog is not valid JSON: {exc}") from exc
    if not isinstance(body, dict) or not isinstance(body.get("assignments"), list):
        raise CatalogFetchError('catalog must be a JSON object with an "assignments" array')
    schema = PulledAssignmentSchema()
    entries: list[dict[str, Any]] = []
    problems: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, item in enumerate(body["assignments"]):
        try:
            entry = schema.load(item)
        except ValidationError as exc:
            item_id = item.get("id") if isinstance(item, dict) else None
            problems.append({"index": index, "id": item_id, "errors": exc.normalized_messages()})
            continue
        if entry["id"] in seen:
            problems.append({"index": index, "id": entry["id"], "errors": {"id": ["Duplicate id in the catalog."]}})
            continue
        seen.add(entry["id"])
        entries.append(entry)
    return entries, problems


def _snapshot(session: Session, app_id: str, district_id: str, audience: str) -> CatalogSnapshot:
    snapshot = session.scalar(
        select(CatalogSnapshot).where(
            CatalogSnapshot.app_id == app_id,
            CatalogSnapshot.district_id == district_id,
            CatalogSnapshot.audience == audience,
        )
    )
    if snapshot is None:
        snapshot = CatalogSnapshot(app_id=app_id, district_id=district_id, audience=audience)
        session.add(snapshot)
        session.flush()
    return snapshot


def _catalog_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": entry["name"],
        "external_id": entry["id"],
        "description": entry.get("description"),
        "standards": list(entry.get("standards") or []),
        "score_maximum": float(entry.get("scoreMaximum", DEFAULT_SCORE_MAXIMUM)),
        "archived": False,
    }


def _view_of(snapshot: CatalogSnapshot, *, stale: bool) -> CatalogView:
    return CatalogView(list(snapshot.assignments), source="pull", problems=list(snapshot.problems), stale=stale)


def _stale_or_raise(snapshot: CatalogSnapshot) -> CatalogView:
    if snapshot.fetched_at is None:
        raise CatalogUnavailable(f"the app's catalog could not be fetched: {snapshot.last_error}")
    return _view_of(snapshot, stale=True)
