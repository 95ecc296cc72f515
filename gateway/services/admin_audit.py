"""Who an operator is on the command line, how their actions are written to a district's audit log, and how
districts, apps and connections are found by id or name."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.models import App, AuditEntry, District, LmsConnection
from gateway.services.errors import Conflict, InvalidInput, NotFound
from gateway.services.lms import get_connection

MAX_OPERATOR_NAME = 100


@dataclass(frozen=True)
class Operator:
    """The person running `gateway …` (the OS user unless --operator names someone); audited as `cli:<name>`."""

    name: str

    def __post_init__(self) -> None:
        name = self.name.strip()
        if not name or len(name) > MAX_OPERATOR_NAME or any(c.isspace() or not c.isprintable() for c in name):
            raise InvalidInput(
                "the operator must be named: one word of printable characters, at most 100",
                fields={"operator": ["One word of printable characters, at most 100."]},
            )
        object.__setattr__(self, "name", name)

    @property
    def actor(self) -> str:
        return f"cli:{self.name}"


def record(
    session: Session, district_id: str, operator: Operator, action: str, target: str = "", **details: Any
) -> None:
    """Write an operator's action to the district's audit log, in the action's own transaction (as staff.audit
    does for the dashboard; no staff account, the actor is `cli:<name>`)."""
    session.add(
        AuditEntry(
            district_id=district_id,
            staff_id=None,
            staff_email=operator.actor,
            action=action[:60],
            target=target[:200],
            details=details,
        )
    )


def find_district(session: Session, ref: str) -> District:
    """A district by id, else by its name (a name two districts share must be given as an id)."""
    district = session.get(District, ref)
    if district is not None:
        return district
    named = list(session.scalars(select(District).where(District.name == ref.strip()).limit(2)))
    if len(named) > 1:
        raise Conflict(
            f"more than one district is named {ref!r}: give its id",
            fields={"district": ["Names more than one district; give the id."]},
        )
    if not named:
        raise NotFound(f"no district {ref!r}", fields={"district": ["No district with this id or name."]})
    return named[0]


def find_app(session: Session, ref: str) -> App:
    """An app by id, client id, else its name (a name two apps share must be given as an id)."""
    app = session.get(App, ref) or session.scalar(select(App).where(App.client_id == ref))
    if app is not None:
        return app
    named = list(session.scalars(select(App).where(App.name == ref.strip()).limit(2)))
    if len(named) > 1:
        raise Conflict(
            f"more than one app is named {ref!r}: give its id or client id",
            fields={"app": ["Names more than one app; give the id or client id."]},
        )
    if not named:
        raise NotFound(f"no app {ref!r}", fields={"app": ["No app with this id, client id or name."]})
    return named[0]


def when(value: datetime | None) -> str | None:
    """A timestamp for an answer: ISO 8601, UTC as stored."""
    return value.isoformat() if value is not None else None


def find_connection(session: Session, district_id: str, ref: str) -> LmsConnection:
    """A connection of this district by id or name (lms.get_connection), the refusal naming the field."""
    try:
        return get_connection(session, district_id, ref)
    except NotFound as exc:
        raise NotFound(
            exc.message, fields={"lms": ["No LMS connection with this id or name in this district."]}
        ) from None
