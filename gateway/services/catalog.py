"""An app's assignment catalog: pushed by the app, or pulled from the URL it serves."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.models import DEFAULT_SCORE_MAXIMUM, Assignment, utcnow
from gateway.services.auth import Principal
from gateway.services.errors import NotFound


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
