"""`gateway lms|placement …`: listing, showing, renaming, rotating the secret of, disabling and removing LMS
connections and placements. Each function is one unit of work answering the dict the command prints; changes are
audited with the operator named. A connection's secrets are never part of an answer (only whether each is set)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from adapters import REGISTRY
from gateway.crypto import SecretBox, SecretUndecryptable
from gateway.models import App, Assignment, Delivery, LmsConnection, Placement
from gateway.services import dashboard_connections, lms
from gateway.services.admin_audit import Operator, find_app, find_connection, find_district, record, when
from gateway.services.errors import Conflict, InvalidInput, NotFound
from gateway.services.unit_of_work import UnitOfWork

MAX_LIST = 1000
HIDDEN = "(set)"


def _delivery_counts(session: Session, *where: Any) -> dict[str, int]:
    rows = session.execute(select(Delivery.status, func.count(Delivery.id)).where(*where).group_by(Delivery.status))
    return {str(status): int(n) for status, n in rows}


def _connection_row(session: Session, connection: LmsConnection) -> dict[str, Any]:
    return {
        "id": connection.id,
        "district": connection.district_id,
        "name": connection.name,
        "adapter": connection.adapter,
        "disabled": connection.paused,
        "rate_limit": connection.rate_limit,
        "concurrency_limit": connection.concurrency_limit,
        "created_at": when(connection.created_at),
        "last_success_at": when(connection.last_success_at),
        "last_failure_at": when(connection.last_failure_at),
        "last_failure": connection.last_failure,
        "placements": int(
            session.scalar(select(func.count(Placement.id)).where(Placement.lms_connection_id == connection.id)) or 0
        ),
    }


def shown_settings(box: SecretBox, connection: LmsConnection) -> dict[str, Any] | str:
    """The connection's settings with every secret replaced by "(set)"; the reason when they cannot be decrypted."""
    try:
        settings = lms.connection_settings(box, connection)
    except SecretUndecryptable as exc:
        return exc.message
    adapter = REGISTRY.get(connection.adapter)
    hidden = adapter.secret_settings if adapter is not None else frozenset(settings)
    return {key: (HIDDEN if key in hidden and value else value) for key, value in sorted(settings.items())}


def list_connections(uow: UnitOfWork, district_ref: str) -> dict[str, Any]:
    with uow:
        district = find_district(uow.session, district_ref)
        rows = [
            _connection_row(uow.session, c)
            for c in uow.session.scalars(
                select(LmsConnection).where(LmsConnection.district_id == district.id).order_by(LmsConnection.name)
            )
        ]
        uow.commit()
        return {"lms_connections": rows}


def show_connection(uow: UnitOfWork, box: SecretBox, district_ref: str, lms_ref: str) -> dict[str, Any]:
    with uow:
        district = find_district(uow.session, district_ref)
        connection = find_connection(uow.session, district.id, lms_ref)
        adapter = REGISTRY.get(connection.adapter)
        data = {
            **_connection_row(uow.session, connection),
            "settings": shown_settings(box, connection),
            "secret_settings": sorted(adapter.secret_settings) if adapter is not None else [],
            "deliveries": _delivery_counts(uow.session, Delivery.lms_connection_id == connection.id),
        }
        uow.commit()
        return data


def rename_connection(
    uow: UnitOfWork, operator: Operator, district_ref: str, lms_ref: str, *, name: str | None
) -> dict[str, Any]:
    with uow:
        district = find_district(uow.session, district_ref)
        connection = find_connection(uow.session, district.id, lms_ref)
        old = connection.name
        lms.rename_connection(uow.session, connection, name or "")
        new_name = connection.name
        record(uow.session, district.id, operator, "renamed an LMS connection", new_name, previous=old)
        data = {**_connection_row(uow.session, connection), "changed": ["name"]}
        uow.commit()
        return data


def rotate_secret(
    uow: UnitOfWork,
    box: SecretBox,
    operator: Operator,
    district_ref: str,
    lms_ref: str,
    values: Mapping[str, str],
) -> dict[str, Any]:
    """Replace secret settings of a connection (the LMS issued new ones after a leak): only the adapter's secret
    settings are taken here, validated with the rest; the adapter uses them from the next delivery, and deliveries
    waiting to retry go at once. Neither the old nor the new value is part of the answer or the audit row."""
    with uow:
        district = find_district(uow.session, district_ref)
        connection = find_connection(uow.session, district.id, lms_ref)
        adapter = REGISTRY.get(connection.adapter)
        secret_keys = sorted(adapter.secret_settings) if adapter is not None else []
        if not secret_keys:
            raise InvalidInput(
                f"adapter {connection.adapter!r} holds no secret of its own"
                + (": it signs with Passback's keys (`gateway keys rotate`)" if connection.adapter == "lti13" else ""),
                fields={"setting": ["This adapter has no secret settings."]},
            )
        if not values:
            raise InvalidInput(
                f"give the new value of one of {', '.join(secret_keys)}",
                fields={"setting": [f"One of {secret_keys}."]},
            )
        unknown = sorted(set(values) - set(secret_keys))
        if unknown:
            raise InvalidInput(
                f"not a secret setting of adapter {connection.adapter!r}: {', '.join(unknown)} "
                f"(its secrets: {', '.join(secret_keys)}; other settings change with `gateway lms set`)",
                fields={key: [f"Not one of {secret_keys}."] for key in unknown},
            )
        lms.update_lms_settings(uow.session, box, district.id, connection.id, dict(values))
        record(
            uow.session,
            district.id,
            operator,
            "rotated an LMS connection's secret",
            connection.name,
            settings=sorted(values),
        )
        uow.nudge({connection.id})
        data = {"id": connection.id, "name": connection.name, "rotated": sorted(values)}
        uow.commit()
        return data


def set_disabled(
    uow: UnitOfWork, operator: Operator, district_ref: str, lms_ref: str, *, disabled: bool
) -> dict[str, Any]:
    """Disable (pause) or enable delivery to a connection, as the dashboard's pause does: grades are still
    accepted and wait in the outbox until it is enabled again."""
    with uow:
        district = find_district(uow.session, district_ref)
        found = find_connection(uow.session, district.id, lms_ref)
        connection = dashboard_connections.set_paused(uow.session, district.id, found.id, disabled)
        record(uow.session, district.id, operator, f"{'pause' if disabled else 'resume'}d delivery", connection.name)
        if not disabled:
            uow.nudge({connection.id})
        data = _connection_row(uow.session, connection)
        uow.commit()
        return data


def remove_connection(uow: UnitOfWork, operator: Operator, district_ref: str, lms_ref: str) -> dict[str, Any]:
    """Delete a connection no grade was ever routed to (its placements, enrollments and approvals go with it).
    One with deliveries is refused: they are the record of what was sent; disable it instead."""
    with uow:
        district = find_district(uow.session, district_ref)
        connection = find_connection(uow.session, district.id, lms_ref)
        counts = _delivery_counts(uow.session, Delivery.lms_connection_id == connection.id)
        if counts:
            raise Conflict(
                f"LMS connection {connection.name!r} has {sum(counts.values())} deliveries: disable it instead "
                "(`gateway lms disable`)",
                fields={"lms": ["Has deliveries; disable it instead."]},
            )
        record(uow.session, district.id, operator, "removed an LMS connection", connection.name)
        uow.session.delete(connection)
        data = {"id": connection.id, "name": connection.name, "removed": True}
        uow.commit()
        return data


# --- placements ----------------------------------------------------------------------------------------------


def _placement_row(placement: Placement, assignment: Assignment, app: App) -> dict[str, Any]:
    return {
        "id": placement.id,
        "lms": placement.lms_connection_id,
        "lms_name": placement.lms_connection.name,
        "app": app.id,
        "app_name": app.name,
        "assignment": assignment.external_id,
        "course": placement.course_id,
        "section": placement.section_id,
        "title": placement.title,
        "resource_link": placement.resource_link_id,
        "destination": placement.destination,
        "created_at": when(placement.created_at),
        "updated_at": when(placement.updated_at),
    }


def _placement_query(district_id: str) -> Any:
    return (
        select(Placement, Assignment, App)
        .join(Assignment, Assignment.id == Placement.assignment_id)
        .join(App, App.id == Assignment.app_id)
        .where(Placement.district_id == district_id)
    )


def _placement(session: Session, district_id: str, placement_id: str) -> tuple[Placement, Assignment, App]:
    row = session.execute(_placement_query(district_id).where(Placement.id == placement_id)).first()
    if row is None:
        raise NotFound(f"no placement {placement_id!r} in this district", fields={"placement": ["No such placement."]})
    return row[0], row[1], row[2]


def list_placements(
    uow: UnitOfWork,
    district_ref: str,
    *,
    lms_ref: str | None = None,
    app_ref: str | None = None,
    assignment: str | None = None,
    course: str | None = None,
    limit: int = 100,
) -> dict[str, Any]:
    with uow:
        district = find_district(uow.session, district_ref)
        query = _placement_query(district.id)
        if lms_ref is not None:
            query = query.where(Placement.lms_connection_id == find_connection(uow.session, district.id, lms_ref).id)
        if app_ref is not None:
            query = query.where(App.id == find_app(uow.session, app_ref).id)
        if assignment is not None:
            query = query.where(Assignment.external_id == assignment)
        if course is not None:
            query = query.where(Placement.course_id == course)
        limit = max(1, min(limit, MAX_LIST))
        rows = [
            _placement_row(p, a, app)
            for p, a, app in uow.session.execute(query.order_by(Placement.created_at, Placement.id).limit(limit))
        ]
        uow.commit()
        return {"placements": rows}


def show_placement(uow: UnitOfWork, district_ref: str, placement_id: str) -> dict[str, Any]:
    with uow:
        district = find_district(uow.session, district_ref)
        placement, assignment, app = _placement(uow.session, district.id, placement_id)
        data = {
            **_placement_row(placement, assignment, app),
            "deliveries": _delivery_counts(
                uow.session, Delivery.district_id == district.id, Delivery.placement_id == placement.id
            ),
        }
        uow.commit()
        return data


def update_placement(
    uow: UnitOfWork,
    operator: Operator,
    district_ref: str,
    placement_id: str,
    *,
    title: str | None = None,
    section: str | None = None,
    destination: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Change a placement's title, section or destination data (e.g. a Schoology grade column that moved); the
    adapter checks the result as it does for a new placement. Grades already delivered are not sent again."""
    with uow:
        district = find_district(uow.session, district_ref)
        placement, assignment, app = _placement(uow.session, district.id, placement_id)
        changes = {
            k: v for k, v in {"title": title, "section": section, "destination": destination}.items() if v is not None
        }
        if not changes:
            raise InvalidInput(
                "nothing to change: give --title, --section or --destination-json",
                fields={"title": ["Nothing given."], "section": ["Nothing given."], "destination": ["Nothing given."]},
            )
        new_section = section if section is not None else placement.section_id
        new_destination = dict(destination) if destination is not None else dict(placement.destination or {})
        adapter = REGISTRY.get(placement.lms_connection.adapter)
        if adapter is not None and ("section" in changes or "destination" in changes):
            try:
                _course, new_section, new_destination = adapter.placement_destination(
                    placement.course_id, new_section or None, new_destination
                )
            except ValueError as exc:
                raise InvalidInput(str(exc), fields={"destination": [str(exc)]}) from exc
        if title is not None:
            if len(title) > 500:
                raise InvalidInput("title is longer than 500 characters", fields={"title": ["At most 500."]})
            placement.title = title or None
        placement.section_id = new_section or None
        placement.destination = new_destination
        record(
            uow.session,
            district.id,
            operator,
            "changed a placement",
            placement.id,
            assignment=assignment.external_id,
            changed=sorted(changes),
        )
        uow.session.flush()
        data = {**_placement_row(placement, assignment, app), "changed": sorted(changes)}
        uow.commit()
        return data


def remove_placement(uow: UnitOfWork, operator: Operator, district_ref: str, placement_id: str) -> dict[str, Any]:
    """Delete a placement made by mistake. One that grades were routed to is refused: its deliveries are the
    record of what went where (change it with `placement update` instead)."""
    with uow:
        district = find_district(uow.session, district_ref)
        placement, assignment, _app = _placement(uow.session, district.id, placement_id)
        counts = _delivery_counts(
            uow.session, Delivery.district_id == district.id, Delivery.placement_id == placement.id
        )
        if counts:
            raise Conflict(
                f"placement {placement.id!r} has {sum(counts.values())} deliveries: it stays as their record "
                "(change it with `gateway placement update`)",
                fields={"placement": ["Has deliveries."]},
            )
        record(
            uow.session,
            district.id,
            operator,
            "removed a placement",
            placement.id,
            assignment=assignment.external_id,
            course=placement.course_id,
        )
        uow.session.delete(placement)
        data = {"id": placement.id, "removed": True}
        uow.commit()
        return data
