"""The dashboard's problems: deliveries not in a gradebook, grouped by their cause (adapters/causes.py) and LMS
connection, each group with its counts per status, so the same problem shows once however many grades it holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from adapters.causes import CATALOGUE, Cause
from gateway.models import Delivery, DeliveryStatus, LmsConnection

# The statuses a problem is counted in: what still needs the LMS, a person or a launch (not pending or in flight,
# which have no failure yet, nor delivered or superseded rows).
PROBLEM_STATUSES = (
    DeliveryStatus.FAILED,
    DeliveryStatus.RETRYING,
    DeliveryStatus.AWAITING_LAUNCH,
    DeliveryStatus.UNROUTABLE,
)
# A cause code this version does not know (written by a newer one) is shown under this title.
UNKNOWN = Cause("", "Other problem", "See the LMS's words on each delivery.")


@dataclass
class Problem:
    cause: Cause
    code: str
    connection_id: str | None
    # The connection's name; None for deliveries that have none (unroutable).
    connection: str | None
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def problems(session: Session, district_id: str) -> list[Problem]:
    """Each (cause, connection) with its deliveries per problem status, largest first. One grouped read of the
    (district, error_cause, lms_connection_id, status) index: delivered rows carry no cause and are never read,
    so it costs what the district's problems number, not its grades."""
    rows = session.execute(
        select(Delivery.error_cause, Delivery.lms_connection_id, Delivery.status, func.count())
        .where(
            Delivery.district_id == district_id,
            Delivery.error_cause.is_not(None),
            Delivery.status.in_(PROBLEM_STATUSES),
        )
        .group_by(Delivery.error_cause, Delivery.lms_connection_id, Delivery.status)
    ).all()
    found: dict[tuple[str, str | None], Problem] = {}
    for code, connection_id, status, count in rows:
        code = str(code)  # never None: the query reads rows with a cause only
        problem = found.get((code, connection_id))
        if problem is None:
            problem = Problem(CATALOGUE.get(code, UNKNOWN), code, connection_id, None)
            found[(code, connection_id)] = problem
        problem.counts[status] = problem.counts.get(status, 0) + int(count)
    ids = sorted({p.connection_id for p in found.values() if p.connection_id is not None})
    names: dict[str, str] = {}
    if ids:
        names = {
            key: name
            for key, name in session.execute(
                select(LmsConnection.id, LmsConnection.name).where(LmsConnection.id.in_(ids))
            )
        }
    for problem in found.values():
        problem.connection = names.get(problem.connection_id) if problem.connection_id else None
    return sorted(found.values(), key=lambda p: (-p.total, p.cause.title, p.connection or ""))
