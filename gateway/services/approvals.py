"""Which LMS columns a district lets each app write into through POST /v1/placements.

An app naming an existing LMS assignment (Schoology: a section and one of its assignments) may place grades there
only when the district approved that column, or the whole section, for that app. A placement district staff make
(the dashboard's mapping page, `gateway placement add`) is approved by being made, and an app asking for it again
gets it back. Passback never creates Schoology assignments, so no column is the app's by having been created for it.
"""

from __future__ import annotations

from sqlalchemy import Select, delete, or_, select
from sqlalchemy.orm import Session

from gateway.models import DistrictApp, Placement, PlacementApproval
from gateway.services.errors import Forbidden, InvalidInput, NotFound
from gateway.services.lms import get_connection

MAX_LMS_ID = 255


def _check_ids(section_id: str, lms_assignment_id: str | None) -> None:
    for name, value in (("section", section_id), ("lms_assignment", lms_assignment_id)):
        if value is not None and not 1 <= len(value.strip()) <= MAX_LMS_ID:
            rule = f"Between 1 and {MAX_LMS_ID} characters."
            raise InvalidInput(f"{name}: {rule.lower()}", fields={name: [rule]})


def _require_authorized(session: Session, district_id: str, app_id: str) -> None:
    authorized = session.scalar(
        select(DistrictApp.id).where(
            DistrictApp.district_id == district_id, DistrictApp.app_id == app_id, DistrictApp.revoked_at.is_(None)
        )
    )
    if authorized is None:
        raise NotFound(f"app {app_id!r} is not authorized in this district")


def approve_column(
    session: Session,
    district_id: str,
    connection_ref: str,
    app_id: str,
    section_id: str,
    lms_assignment_id: str | None,
    approved_by: str,
) -> tuple[PlacementApproval, bool]:
    """Let the app place grades into this LMS assignment of the section (every assignment of it when
    `lms_assignment_id` is None). Approving twice returns the first approval; False says it already existed."""
    _check_ids(section_id, lms_assignment_id)
    connection = get_connection(session, district_id, connection_ref)
    _require_authorized(session, district_id, app_id)
    existing = session.scalar(_approval_query(district_id, connection.id, app_id, section_id, lms_assignment_id))
    if existing is not None:
        return existing, False
    approval = PlacementApproval(
        district_id=district_id,
        lms_connection_id=connection.id,
        app_id=app_id,
        section_id=section_id,
        lms_assignment_id=lms_assignment_id,
        approved_by=approved_by,
    )
    session.add(approval)
    session.flush()
    return approval, True


def revoke_column(
    session: Session, district_id: str, connection_ref: str, app_id: str, section_id: str, lms_assignment_id: str | None
) -> int:
    """Withdraw an approval (placements already made stay; remove those separately). Returns how many went."""
    connection = get_connection(session, district_id, connection_ref)
    query = _approval_query(district_id, connection.id, app_id, section_id, lms_assignment_id)
    ids = list(session.scalars(query.with_only_columns(PlacementApproval.id)))
    if ids:
        session.execute(delete(PlacementApproval).where(PlacementApproval.id.in_(ids)))
    return len(ids)


def list_approvals(
    session: Session, district_id: str, connection_ref: str | None = None, app_id: str | None = None
) -> list[PlacementApproval]:
    query = select(PlacementApproval).where(PlacementApproval.district_id == district_id)
    if connection_ref is not None:
        connection = get_connection(session, district_id, connection_ref)
        query = query.where(PlacementApproval.lms_connection_id == connection.id)
    if app_id is not None:
        query = query.where(PlacementApproval.app_id == app_id)
    order = (PlacementApproval.lms_connection_id, PlacementApproval.section_id, PlacementApproval.lms_assignment_id)
    return list(session.scalars(query.order_by(*order)))


def require_approved(session: Session, district_id: str, app_id: str, placement: Placement) -> None:
    """Refuse (403) a placement an app asked for into an LMS column the district has not approved for it."""
    column = (placement.destination or {}).get("assignment_id")
    if not column:
        return  # no existing LMS column is named: the adapter finds or creates the app's own (LTI line items)
    section = placement.section_id or placement.course_id
    approved = session.scalar(
        select(PlacementApproval.id).where(
            PlacementApproval.district_id == district_id,
            PlacementApproval.lms_connection_id == placement.lms_connection_id,
            PlacementApproval.app_id == app_id,
            PlacementApproval.section_id == section,
            or_(PlacementApproval.lms_assignment_id.is_(None), PlacementApproval.lms_assignment_id == column),
        )
    )
    if approved is not None:
        return
    rule = (
        f"The district has not approved LMS assignment {column!r} in section {section!r} for this app: an app may "
        "place grades only into columns the district approved for it (gateway placement approve, or staff mapping "
        "the assignment on the dashboard)."
    )
    raise Forbidden(rule, fields={"lmsAssignmentID": [rule]}, code="placement_not_approved")


def _approval_query(
    district_id: str, connection_id: str, app_id: str, section_id: str, lms_assignment_id: str | None
) -> Select[PlacementApproval]:
    column = (
        PlacementApproval.lms_assignment_id.is_(None)
        if lms_assignment_id is None
        else PlacementApproval.lms_assignment_id == lms_assignment_id
    )
    return select(PlacementApproval).where(
        PlacementApproval.district_id == district_id,
        PlacementApproval.lms_connection_id == connection_id,
        PlacementApproval.app_id == app_id,
        PlacementApproval.section_id == section_id,
        column,
    )
