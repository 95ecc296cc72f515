"""The dashboard's drill-down: app → assignment → placement → student, with delivery counts at each level."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, exists, select
from sqlalchemy.orm import Session

from gateway.models import App, Assignment, Delivery, DistrictApp, Grade, GradeRevision, LmsConnection, Placement, User
from gateway.services.dashboard_counts import sum_by, tallies, zero_counts
from gateway.services.errors import NotFound

STUDENT_PAGE_SIZE = 100
# The drill-down lists an app's assignments on one page; catalogs are far smaller than this.
MAX_ASSIGNMENTS = 1000


def _authorized_app(session: Session, district_id: str, app_id: str) -> App | None:
    return session.scalar(
        select(App)
        .join(DistrictApp, DistrictApp.app_id == App.id)
        .where(App.id == app_id, DistrictApp.district_id == district_id)
    )


def app_rows(session: Session, district_id: str) -> list[tuple[App, dict[str, int]]]:
    """The apps authorized in the district, with their deliveries by status."""
    apps = session.scalars(
        select(App)
        .join(DistrictApp, DistrictApp.app_id == App.id)
        .where(DistrictApp.district_id == district_id)
        .order_by(App.name)
    ).all()
    counts = sum_by(tallies(session, district_id), lambda t: t.app_id)
    return [(app, counts.get(app.id, zero_counts())) for app in apps]


def assignment_rows(
    session: Session, district_id: str, app_id: str
) -> tuple[App, list[tuple[Assignment, dict[str, Any]]]]:
    """An authorized app's assignments with their deliveries in this district; NotFound for any other app."""
    app = _authorized_app(session, district_id, app_id)
    if app is None:
        raise NotFound("no such app in this district")
    assignments = session.scalars(
        select(Assignment).where(Assignment.app_id == app.id).order_by(Assignment.name).limit(MAX_ASSIGNMENTS)
    ).all()
    counts = sum_by(tallies(session, district_id), lambda t: t.assignment_id if t.app_id == app.id else None)
    return app, [(a, counts.get(a.id, zero_counts())) for a in assignments]


def district_assignment(session: Session, district_id: str, assignment_id: str) -> tuple[App, Assignment]:
    """An assignment of an app authorized in this district, with its app; NotFound for any other."""
    found = session.execute(
        select(App, Assignment)
        .join(Assignment, Assignment.app_id == App.id)
        .where(
            Assignment.id == assignment_id,
            exists().where(DistrictApp.app_id == App.id, DistrictApp.district_id == district_id),
        )
    ).first()
    if found is None:
        raise NotFound("no such assignment in this district")
    return found[0], found[1]


def placement_rows(
    session: Session, district_id: str, assignment_id: str
) -> tuple[App, Assignment, list[tuple[Placement, str, dict[str, int]]]]:
    """Where an assignment is placed in this district's LMSs (each LMS link its own row), with each
    placement's deliveries."""
    app, assignment = district_assignment(session, district_id, assignment_id)
    placements = session.execute(
        select(Placement, LmsConnection.name)
        .join(LmsConnection, LmsConnection.id == Placement.lms_connection_id)
        .where(Placement.district_id == district_id, Placement.assignment_id == assignment.id)
        .order_by(LmsConnection.name, Placement.course_id, Placement.created_at, Placement.id)
    ).all()
    counted = tallies(session, district_id, placement_ids=[placement.id for placement, _ in placements])
    counts = sum_by(counted, lambda t: t.placement_id)
    return app, assignment, [(p, name, counts.get(p.id, zero_counts())) for p, name in placements]


@dataclass
class StudentPage:
    placement: Placement
    assignment: Assignment
    app_name: str
    connection_name: str
    rows: list[tuple[User, Grade, Delivery]]
    more: bool


def student_rows(session: Session, district_id: str, placement_id: str, *, page: int = 1) -> StudentPage:
    """Each student's current grade at one placement and the delivery that carries it there, a page at a time
    by name; found from the placement's deliveries (index on district and placement), not from the grades."""
    found = session.execute(
        select(Placement, Assignment, App.name, LmsConnection.name)
        .join(Assignment, Assignment.id == Placement.assignment_id)
        .join(App, App.id == Assignment.app_id)
        .join(LmsConnection, LmsConnection.id == Placement.lms_connection_id)
        .where(Placement.id == placement_id, Placement.district_id == district_id)
    ).first()
    if found is None:
        raise NotFound("no such placement in this district")
    placement, assignment, app_name, connection_name = found
    rows = session.execute(
        select(User, Grade, Delivery)
        .select_from(Delivery)
        .join(GradeRevision, GradeRevision.id == Delivery.revision_id)
        .join(Grade, and_(Grade.id == GradeRevision.grade_id, Grade.revision == GradeRevision.revision))
        .join(User, User.id == Grade.user_id)
        .where(Delivery.district_id == district_id, Delivery.placement_id == placement.id)
        .order_by(User.name, User.id, Delivery.created_at, Delivery.id)
        .offset((page - 1) * STUDENT_PAGE_SIZE)
        .limit(STUDENT_PAGE_SIZE + 1)
    ).all()
    return StudentPage(
        placement,
        assignment,
        app_name,
        connection_name,
        [(user, grade, delivery) for user, grade, delivery in rows[:STUDENT_PAGE_SIZE]],
        len(rows) > STUDENT_PAGE_SIZE,
    )
