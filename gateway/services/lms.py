"""LMS connections (adapter + encrypted settings) and placements of assignments in them."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from marshmallow import ValidationError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from adapters import REGISTRY
from adapters.base import DeliveryError, HealthReport
from gateway.crypto import SecretBox, SecretUndecryptable
from gateway.db import Database
from gateway.models import Assignment, Delivery, DeliveryStatus, LmsConnection, Placement, utcnow
from gateway.services.adapter_factory import AdapterFactory
from gateway.services.directory import get_app, get_district
from gateway.services.errors import Conflict, InvalidInput, NotFound, ServiceError
from gateway.services.routing import route_waiting_grades
from gateway.services.unit_of_work import UnitOfWork


def add_lms_connection(
    session: Session,
    box: SecretBox,
    district_id: str,
    name: str,
    adapter: str,
    settings: Mapping[str, Any],
    *,
    connection_id: str | None = None,
) -> LmsConnection:
    """Register an LMS for a district; settings are validated by the adapter's schema and stored encrypted."""
    get_district(session, district_id)
    adapter_cls = REGISTRY.get(adapter)
    if adapter_cls is None:
        raise InvalidInput(
            f"unknown adapter {adapter!r}; known: {', '.join(sorted(REGISTRY))}",
            fields={"adapter": [f"Must be one of {sorted(REGISTRY)}."]},
        )
    try:
        clean = adapter_cls.settings_schema().load(dict(settings))
    except ValidationError as exc:
        raise InvalidInput(f"invalid settings for adapter {adapter!r}", fields=exc.normalized_messages()) from exc
    if session.scalar(
        select(LmsConnection).where(LmsConnection.district_id == district_id, LmsConnection.name == name)
    ):
        raise Conflict(f"district already has an LMS connection named {name!r}")
    key = adapter_cls.registration_key(clean)
    if key is not None and session.scalar(select(LmsConnection.id).where(LmsConnection.registration_key == key)):
        raise Conflict("another LMS connection already registers this platform and client id")
    connection = LmsConnection(
        district_id=district_id,
        name=name,
        adapter=adapter,
        settings_encrypted=box.encrypt_json(clean),
        registration_key=key,
    )
    if connection_id is not None:
        connection.id = connection_id
    session.add(connection)
    session.flush()
    return connection


def update_lms_settings(
    session: Session,
    box: SecretBox,
    district_id: str,
    connection_ref: str,
    changes: Mapping[str, Any],
    *,
    removed: Collection[str] = (),
) -> LmsConnection:
    """Change some settings of a connection (e.g. `allowed_hosts` after an upgrade) and drop the optional ones in
    `removed`; the whole result is validated again by the adapter's schema, and a changed registration must not
    collide with another one."""
    connection = get_connection(session, district_id, connection_ref)
    adapter_cls = REGISTRY.get(connection.adapter)
    if adapter_cls is None:
        raise InvalidInput(f"no adapter named {connection.adapter!r} is installed")
    merged = {**connection_settings(box, connection), **changes}
    for name in removed:
        merged.pop(name, None)
    try:
        clean = adapter_cls.settings_schema().load(merged)
    except ValidationError as exc:
        raise InvalidInput(
            f"invalid settings for adapter {connection.adapter!r}", fields=exc.normalized_messages()
        ) from exc
    key = adapter_cls.registration_key(clean)
    if key is not None and session.scalar(
        select(LmsConnection.id).where(LmsConnection.registration_key == key, LmsConnection.id != connection.id)
    ):
        raise Conflict("another LMS connection already registers this platform and client id")
    connection.settings_encrypted = box.encrypt_json(clean)
    connection.registration_key = key
    # Grades waiting for this change (e.g. a host now in allowed_hosts) go out now, not at their next look.
    now = utcnow()
    session.execute(
        update(Delivery)
        .where(Delivery.lms_connection_id == connection.id, Delivery.status == DeliveryStatus.RETRYING)
        .values(next_attempt_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    session.flush()
    return connection


def connections_without_hosts(session: Session, box: SecretBox) -> list[tuple[str, LmsConnection]]:
    """Every LTI 1.1 connection (with its district's name) that names no allowed_hosts: its grades wait until an
    operator sets them. A connection whose settings cannot be decrypted is reported elsewhere."""
    found = []
    for connection in session.scalars(select(LmsConnection).where(LmsConnection.adapter == "lti11")):
        try:
            settings = connection_settings(box, connection)
        except SecretUndecryptable:
            continue
        if not settings.get("allowed_hosts"):
            found.append((get_district(session, connection.district_id).name, connection))
    return found


def connection_settings(box: SecretBox, connection: LmsConnection) -> dict[str, Any]:
    return dict(box.decrypt_json(connection.settings_encrypted, f"the settings of LMS connection {connection.name!r}"))


def rename_connection(session: Session, connection: LmsConnection, name: str) -> bool:
    """Give the connection a new name, unique in its district. Returns whether it changed."""
    new_name = name.strip()
    if not new_name or len(new_name) > 200:
        raise InvalidInput("the name must be 1 to 200 characters", fields={"name": ["1 to 200 characters."]})
    taken = session.scalar(
        select(LmsConnection.id).where(
            LmsConnection.district_id == connection.district_id,
            LmsConnection.name == new_name,
            LmsConnection.id != connection.id,
        )
    )
    if taken is not None:
        raise Conflict(
            f"the district already has an LMS connection named {new_name!r}", fields={"name": ["Already used."]}
        )
    changed = connection.name != new_name
    connection.name = new_name
    return changed


def get_connection(session: Session, district_id: str, ref: str) -> LmsConnection:
    """A connection of this district by id or name."""
    connection = session.scalar(
        select(LmsConnection).where(
            LmsConnection.district_id == district_id, (LmsConnection.id == ref) | (LmsConnection.name == ref)
        )
    )
    if connection is None:
        raise NotFound(f"no LMS connection {ref!r} in this district")
    return connection


def add_placement(
    session: Session,
    district_id: str,
    connection_ref: str,
    app_id: str,
    assignment_external_id: str,
    course_id: str | None,
    *,
    section_id: str | None = None,
    destination: Mapping[str, Any] | None = None,
    title: str | None = None,
) -> Placement:
    """Place an assignment in an LMS course; grades already waiting for a destination are routed to it."""
    connection = get_connection(session, district_id, connection_ref)
    adapter_cls = REGISTRY.get(connection.adapter)
    if adapter_cls is not None:
        # The adapter checks and completes what a placement must name (Schoology: section and assignment).
        try:
            course_id, section_id, destination = adapter_cls.placement_destination(
                course_id, section_id, dict(destination or {})
            )
        except ValueError as exc:
            raise InvalidInput(str(exc), fields={"destination": [str(exc)]}) from exc
    if not course_id:
        raise InvalidInput("a placement needs the LMS's course id", fields={"course": ["Missing data."]})
    assignment = session.scalar(
        select(Assignment).where(Assignment.app_id == app_id, Assignment.external_id == assignment_external_id)
    )
    if assignment is None:
        raise NotFound(f"no assignment {assignment_external_id!r} for this app")
    existing = session.scalar(
        select(Placement).where(
            Placement.lms_connection_id == connection.id,
            Placement.course_id == course_id,
            Placement.assignment_id == assignment.id,
        )
    )
    if existing is not None:
        raise Conflict("this assignment is already placed in that course")
    placement = Placement(
        district_id=district_id,
        lms_connection_id=connection.id,
        assignment_id=assignment.id,
        course_id=course_id,
        section_id=section_id,
        destination=dict(destination or {}),
        title=title or assignment.name,
    )
    try:
        # A savepoint: two requests placing the same assignment at once meet at the unique constraint, and
        # the loser is told so (409) instead of failing the whole transaction.
        with session.begin_nested():
            session.add(placement)
            session.flush()
    except IntegrityError as exc:
        raise Conflict("this assignment is already placed in that course") from exc
    route_waiting_grades(session, district_id, assignment_id=assignment.id)
    return placement


def place_assignment(
    uow: UnitOfWork,
    district_id: str,
    connection_ref: str,
    app_ref: str,
    assignment_external_id: str,
    course_id: str | None,
    *,
    section_id: str | None = None,
    destination: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An operator places an app's assignment (`gateway placement add`); grades that waited for a destination are
    routed to it and go out once the placement is committed."""
    with uow:
        app = get_app(uow.session, app_ref)
        placement = add_placement(
            uow.session,
            district_id,
            connection_ref,
            app.id,
            assignment_external_id,
            course_id,
            section_id=section_id,
            destination=destination,
        )
        placed = {
            "id": placement.id,
            "course": placement.course_id,
            "section": placement.section_id,
            "assignment": assignment_external_id,
        }
        uow.nudge({placement.lms_connection_id})
        uow.commit()
        return placed


def probe_connection(
    database: Database, box: SecretBox, adapters: AdapterFactory, district_id: str, connection_ref: str
) -> HealthReport:
    """Ask the connection's adapter whether the LMS answers and accepts its credentials (no grade is sent)."""
    with database.transaction() as session:
        connection = get_connection(session, district_id, connection_ref)
        try:
            adapter_name, settings = connection.adapter, connection_settings(box, connection)
        except SecretUndecryptable as exc:
            return HealthReport(False, exc.message)
        connection_id = connection.id
    try:
        return adapters.build(adapter_name, settings, connection_id=connection_id).probe()
    except DeliveryError as exc:
        return HealthReport(False, exc.message)
    except Exception as exc:  # a probe must report, never fail the page that asked for it
        return HealthReport(False, f"the check itself failed: {type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class PlacementView:
    id: str
    assignment_id: str
    lms_name: str
    lms_connection_id: str
    course_id: str
    section_id: str | None
    lms_assignment_id: str | None
    created: bool


@dataclass
class PlacementsResult:
    created: int = 0
    existing: int = 0
    placements: list[PlacementView] = field(default_factory=list)


def place_assignments(
    session: Session,
    district_id: str,
    app_id: str,
    entries: Sequence[Mapping[str, Any]],
    *,
    by_staff: bool = False,
) -> PlacementsResult:
    """Map an app's catalog assignments to LMS courses or sections, all or none: asking again for a placement
    that exists returns it (so a script can run twice); any bad entry refuses the whole request. Unless district
    staff ask (`by_staff`: their mapping is the approval), a new placement into an existing LMS column needs the
    district's approval of that column for the app (gateway.services.approvals)."""
    from gateway.services.approvals import require_approved

    result = PlacementsResult()
    for index, entry in enumerate(entries):
        destination = {"assignment_id": entry["lmsAssignmentID"]} if entry.get("lmsAssignmentID") else {}
        try:
            placement, created = _place_one(session, district_id, app_id, entry, destination)
            if created and not by_staff:
                require_approved(session, district_id, app_id, placement)
        except ServiceError as exc:
            fields = {f"placements[{index}].{name}": messages for name, messages in (exc.fields or {}).items()}
            raise type(exc)(f"placements[{index}]: {exc.message}", fields=fields or None, code=exc.code) from exc
        result.created += created
        result.existing += not created
        result.placements.append(
            PlacementView(
                placement.id,
                entry["assignmentID"],
                placement.lms_connection.name,
                placement.lms_connection_id,
                placement.course_id,
                placement.section_id,
                (placement.destination or {}).get("assignment_id"),
                created,
            )
        )
    return result


def _place_one(
    session: Session, district_id: str, app_id: str, entry: Mapping[str, Any], destination: dict[str, Any]
) -> tuple[Placement, bool]:
    try:
        return add_placement(
            session,
            district_id,
            entry["lms"],
            app_id,
            entry["assignmentID"],
            entry.get("course"),
            section_id=entry.get("section"),
            destination=destination,
        ), True
    except Conflict:
        connection = get_connection(session, district_id, entry["lms"])
        existing = session.scalar(
            select(Placement)
            .join(Assignment, Assignment.id == Placement.assignment_id)
            .where(
                Placement.lms_connection_id == connection.id,
                Assignment.app_id == app_id,
                Assignment.external_id == entry["assignmentID"],
                Placement.course_id == (entry.get("course") or entry.get("section")),
            )
        )
        if existing is None:
            raise
        wanted = destination.get("assignment_id")
        if wanted and (existing.destination or {}).get("assignment_id") != wanted:
            raise Conflict(
                f"assignment {entry['assignmentID']!r} is already placed in that course with another LMS assignment"
            ) from None
        return existing, False
