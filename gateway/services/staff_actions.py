"""What district staff do from the dashboard, each one unit of work: the change and its audit row commit
together, and deliveries it queued again go out once committed."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from adapters.base import HealthReport
from gateway.crypto import SecretBox
from gateway.models import DeliveryStatus, LmsConnection, SandboxFault, StaffUser
from gateway.services import (
    connection_settings,
    dashboard_connections,
    delivery_fixes,
    directory,
    lms,
    sandbox_lms,
    webhooks,
)
from gateway.services.dashboard_deliveries import DeliveryFilter, matching_ids
from gateway.services.errors import Conflict, InvalidInput, ServiceError
from gateway.services.lms import PlacementsResult, place_assignments
from gateway.services.local_time import district_zone
from gateway.services.staff import audit
from gateway.services.staff_retries import resolve_delivery, retry_delivery, retry_failed
from gateway.services.unit_of_work import UnitOfWork


def retry_one(uow: UnitOfWork, staff: StaffUser, delivery_id: str) -> None:
    """Send a failed delivery again (scoped by the staff member's district: another district's is not found)."""
    with uow:
        delivery = retry_delivery(uow.session, staff.district_id, delivery_id)
        audit(uow.session, staff, "retried delivery", delivery.id)
        uow.nudge({delivery.lms_connection_id})
        uow.commit()


def retry_all_failed(
    uow: UnitOfWork,
    staff: StaffUser,
    target: str,
    *,
    lms_connection_id: str | None = None,
    assignment_id: str | None = None,
) -> int:
    """Send a connection's or an assignment's failed deliveries again; returns how many."""
    with uow:
        count = retry_failed(
            uow.session, staff.district_id, lms_connection_id=lms_connection_id, assignment_id=assignment_id
        )
        audit(uow.session, staff, "retried failed deliveries", target, count=count)
        uow.nudge_if(count, None if lms_connection_id is None else {lms_connection_id})
        uow.commit()
        return count


def set_delivery_paused(uow: UnitOfWork, staff: StaffUser, connection_id: str, *, paused: bool) -> LmsConnection:
    with uow:
        connection = dashboard_connections.set_paused(uow.session, staff.district_id, connection_id, paused)
        audit(uow.session, staff, f"{'pause' if paused else 'resume'}d delivery", connection.name)
        uow.commit()
        return connection


def update_connection_settings(
    uow: UnitOfWork, box: SecretBox, staff: StaffUser, connection_id: str, name: str, form: Mapping[str, str]
) -> tuple[LmsConnection, list[str]]:
    """Staff rename a connection, change its settings or put in new credentials (the form's secret fields), all
    validated together by the adapter's schema; retrying deliveries go at once. The audit row names the settings
    that changed, never their values. Returns the connection and what changed."""
    with uow:
        connection = lms.get_connection(uow.session, staff.district_id, connection_id)
        changes, removed = connection_settings.changes_from_form(box, connection, form)
        changed = sorted([*changes, *removed])
        if lms.rename_connection(uow.session, connection, name):
            changed.insert(0, "name")
        if changes or removed:
            lms.update_lms_settings(uow.session, box, staff.district_id, connection.id, changes, removed=removed)
        if changed:
            audit(uow.session, staff, "changed LMS connection settings", connection.name, settings=changed)
            uow.nudge({connection.id})
        uow.commit()
        return connection, changed


def enroll_for_delivery(
    uow: UnitOfWork, box: SecretBox, staff: StaffUser, delivery_id: str, placement_id: str, lms_user_id: str
) -> tuple[int, int]:
    """From a waiting delivery's page: enroll its student in the course of one placement of its assignment (and,
    if given, record the LMS's id for them), so the grade routes there now. Returns (deliveries released that
    waited only for that id, deliveries created)."""
    with uow:
        fix = delivery_fixes.fix_for(uow.session, staff.district_id, delivery_id)
        if fix is None:
            raise Conflict("this delivery is not waiting for an enrollment any more")
        choice = next((p for p in fix.placed_in if p.placement_id == placement_id), None)
        if choice is None:
            raise InvalidInput(
                "choose a course where the assignment is placed", fields={"placement": ["Not a placement of it."]}
            )
        lms_user_id = lms_user_id.strip()
        if len(lms_user_id) > 255:
            raise InvalidInput("the LMS's id is too long", fields={"lms_user_id": ["At most 255 characters."]})
        connection = lms.get_connection(uow.session, staff.district_id, choice.connection_id)
        released, created = directory.enroll_user(
            uow.session, box, connection, choice.course_id, fix.user_id, lms_user_id or None
        )
        audit(
            uow.session,
            staff,
            "enrolled a student",
            f"{fix.student} in {connection.name} course {choice.course_id}",
            user_id=fix.user_id,
            lms_user_id_given=bool(lms_user_id),
            deliveries_created=created,
            deliveries_released=released,
        )
        uow.nudge({connection.id})
        uow.commit()
        return released, created


# One bulk action changes at most this many deliveries (the page says when more matched: run it again).
BULK_LIMIT = 5000


@dataclass(frozen=True)
class BulkResult:
    changed: int
    skipped: int  # replaced by a newer grade, or changed since the page was read
    more: bool  # more than BULK_LIMIT matched


# What each bulk action takes, and the single-delivery rule it applies to each.
BULK_ACTIONS: dict[str, tuple[tuple[DeliveryStatus, ...], Callable[[Any, str, str], Any], str]] = {
    "retry_failed": ((DeliveryStatus.FAILED,), retry_delivery, "retried deliveries in bulk"),
    "retry_now": ((DeliveryStatus.RETRYING,), retry_delivery, "retried deliveries in bulk"),
    "resolve": ((DeliveryStatus.FAILED,), resolve_delivery, "marked deliveries resolved"),
}


def bulk_act(uow: UnitOfWork, staff: StaffUser, narrowed: DeliveryFilter, action: str) -> BulkResult:
    """On the deliveries a list's filter matches: send the failed ones again with fresh attempts (retry_failed),
    the retrying ones now (retry_now), or mark the failed ones resolved (handled outside Passback), each by the
    single-delivery rule; one audit row, connections woken after a retry."""
    if action not in BULK_ACTIONS:
        raise InvalidInput("no such action", fields={"action": [f"One of: {', '.join(BULK_ACTIONS)}."]})
    statuses, rule, said = BULK_ACTIONS[action]
    with uow:
        zone = district_zone(uow.session, staff.district_id)
        ids = matching_ids(uow.session, staff.district_id, narrowed, zone, statuses, BULK_LIMIT + 1)
        retried, skipped, connections = 0, 0, set()
        for delivery_id in ids[:BULK_LIMIT]:
            try:
                delivery = rule(uow.session, staff.district_id, delivery_id)
            except ServiceError:
                skipped += 1
                continue
            retried += 1
            if delivery.lms_connection_id:
                connections.add(delivery.lms_connection_id)
        audit(uow.session, staff, said, action, filter=narrowed.query_args(), changed=retried, skipped=skipped)
        if rule is retry_delivery:
            uow.nudge(connections)
        uow.commit()
        return BulkResult(retried, skipped, more=len(ids) > BULK_LIMIT)


def place_for_delivery(uow: UnitOfWork, staff: StaffUser, delivery_id: str, choice: str) -> str:
    """From a waiting delivery's page: place its assignment in a course its student is enrolled in (`choice` is
    "connection id|course id" of one of them); placing routes the grades waiting for it (this one among them).
    Returns where, in words."""
    with uow:
        fix = delivery_fixes.fix_for(uow.session, staff.district_id, delivery_id)
        if fix is None:
            raise Conflict("this delivery is not waiting for a placement any more")
        picked = next((c for c in fix.place_choices if f"{c[0]}|{c[2]}" == choice), None)
        if picked is None:
            raise InvalidInput(
                "choose a course the student is enrolled in", fields={"course": ["Not one of the student's courses."]}
            )
        app_id, assignment_id, assignment_name = delivery_fixes.assignment_of(uow.session, delivery_id)
        placement = lms.add_placement(uow.session, staff.district_id, picked[0], app_id, assignment_id, picked[2])
        where = f"{assignment_name} in {picked[1]} course {picked[2]}"
        audit(uow.session, staff, "placed an assignment", where, placement_id=placement.id)
        uow.nudge({picked[0]})
        uow.commit()
        return where


def resolve_one(uow: UnitOfWork, staff: StaffUser, delivery_id: str) -> None:
    """Mark one failed delivery resolved (handled outside Passback), audited."""
    with uow:
        delivery = resolve_delivery(uow.session, staff.district_id, delivery_id)
        audit(uow.session, staff, "marked a delivery resolved", delivery.id)
        uow.commit()


def map_assignments(
    uow: UnitOfWork, staff: StaffUser, connection_name: str, app_id: str, entries: Sequence[Mapping[str, Any]]
) -> PlacementsResult:
    """Staff place catalog assignments (their mapping is the approval); grades that waited for them go out."""
    with uow:
        result = place_assignments(uow.session, staff.district_id, app_id, entries, by_staff=True)
        audit(
            uow.session,
            staff,
            "mapped assignments",
            connection_name,
            created=result.created,
            existing=result.existing,
        )
        uow.nudge({p.lms_connection_id for p in result.placements})
        uow.commit()
        return result


def record_probe(uow: UnitOfWork, staff: StaffUser, connection_name: str, *, ok: bool) -> None:
    with uow:
        audit(uow.session, staff, "checked the connection", connection_name, ok=ok)
        uow.commit()


def check_connection(
    uow: UnitOfWork, probe: Callable[[str, str], HealthReport], staff: StaffUser, connection_id: str
) -> tuple[str, HealthReport]:
    """Ask the LMS whether it accepts the connection's credentials (`probe`: district id, connection id), with
    no transaction open while it is called; the check is audited. Returns the connection's name and the report."""
    with uow:
        name = dashboard_connections.set_paused(uow.session, staff.district_id, connection_id, paused=None).name
        uow.commit()  # no transaction stays open while the LMS is called
    report = probe(staff.district_id, connection_id)
    record_probe(uow, staff, name, ok=report.ok)
    return name, report


def launch_in_sandbox(
    uow: UnitOfWork, box: SecretBox, staff: StaffUser, connection_id: str, user_id: str, catalog_id: str
) -> sandbox_lms.SimulatedLaunch:
    """Staff try the sign-in as a student would: a simulated launch of an assignment (its catalog row's id) placed in
    one of the district's sandbox LMSs (never another LMS: a real LMS's launches come from the LMS). Audited; grades
    it routed go out."""
    with uow:
        connection = sandbox_lms.sandbox_connection(uow.session, connection_id, staff.district_id)
        placements = sandbox_lms.placements_in_sandbox(uow.session, connection, catalog_id=catalog_id)
        placement = sandbox_lms.placement_for_student(uow.session, connection, user_id, placements)
        launched = sandbox_lms.launch_student(uow.session, box, connection, user_id, placement)
        audit(
            uow.session,
            staff,
            "started a sandbox launch",
            connection.name,
            student=launched.user_id,
            assignment=launched.assignment_id,
            app=launched.app_name,
        )
        uow.nudge_if(launched.routed)
        uow.commit()
        return launched


def set_sandbox_faults(
    uow: UnitOfWork,
    staff: StaffUser,
    connection_id: str,
    *,
    fail_next: int,
    status: int = 503,
    retry_after: int | None = None,
    hang_seconds: int | None = None,
) -> SandboxFault:
    """Make one of the district's sandbox LMSs fail its next `fail_next` score writes (0: clear); audited."""
    with uow:
        connection = sandbox_lms.sandbox_connection(uow.session, connection_id, staff.district_id)
        fault = sandbox_lms.set_fault(
            uow.session,
            connection.id,
            fail_next=fail_next,
            status=status,
            retry_after=retry_after,
            hang_seconds=hang_seconds,
        )
        if fail_next:
            details = {"count": fail_next, "status": status, "retry_after": retry_after, "hang_seconds": hang_seconds}
            audit(uow.session, staff, "injected sandbox faults", connection.name, **details)
        else:
            audit(uow.session, staff, "cleared sandbox faults", connection.name)
        uow.commit()
        return fault


def set_webhook_disabled(uow: UnitOfWork, staff: StaffUser, endpoint_id: str, *, disabled: bool) -> str:
    """Staff switch an app's webhook endpoint off (what waits for it is dropped) or on again; audited. Returns
    its URL."""
    with uow:
        endpoint = webhooks.set_disabled_by_staff(uow.session, staff.district_id, endpoint_id, disabled=disabled)
        audit(uow.session, staff, f"{'dis' if disabled else 'en'}abled a webhook endpoint", endpoint.url)
        uow.commit()
        return endpoint.url
