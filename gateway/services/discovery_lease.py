"""One worker at a time discovers a placement's destination in its LMS: a short lease on the placement."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, update
from sqlalchemy.orm import Session

from gateway.models import Placement, utcnow

DISCOVERY_LEASE_SECONDS = 120
DISCOVERY_WAIT_SECONDS = 2.0


def take_discovery_lease(session: Session, placement_id: str, *, now: datetime | None = None) -> bool:
    """Reserve the placement's destination discovery for this worker; False if another worker holds it."""
    now = now or utcnow()
    result = session.execute(
        update(Placement)
        .where(
            Placement.id == placement_id,
            or_(Placement.discovery_lease_until.is_(None), Placement.discovery_lease_until < now),
        )
        # The lease is bookkeeping, not a change an app sees: updated_at keeps its value (no onupdate).
        .values(discovery_lease_until=now + timedelta(seconds=DISCOVERY_LEASE_SECONDS), updated_at=Placement.updated_at)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def release_discovery_lease(session: Session, placement_id: str) -> None:
    session.execute(
        update(Placement)
        .where(Placement.id == placement_id)
        .values(discovery_lease_until=None, updated_at=Placement.updated_at)
        .execution_options(synchronize_session=False)
    )
