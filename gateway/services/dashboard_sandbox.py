"""The dashboard's sandbox page: one sandbox LMS connection's gradebook, the launches staff may simulate there,
and the faults it is told to inject."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gateway.models import (
    App,
    Assignment,
    DistrictApp,
    Enrollment,
    LmsConnection,
    Placement,
    SandboxFault,
    SandboxGradebookEntry,
    User,
    UserRole,
)
from gateway.services.errors import NotFound
from gateway.services.sandbox_lms import current_fault

GRADEBOOK_PAGE_SIZE = 100
# The launch form lists at most this many students and assignments: the sandbox is for trying things out.
LAUNCH_CHOICES = 500


@dataclass(frozen=True)
class LaunchChoice:
    """An authorized app's assignment placed in the sandbox, which a simulated launch opens (in the student's
    course, where it is placed in several)."""

    catalog_id: str
    assignment_id: str
    assignment_name: str
    app_name: str
    redirect_uri: str
    courses: int


@dataclass
class SandboxPage:
    connections: list[tuple[str, str]]
    connection_id: str | None
    entries: list[tuple[SandboxGradebookEntry, str]]
    more: bool
    # (user id, name, SIS id) of the students enrolled in this sandbox's courses.
    students: list[tuple[str, str, str | None]] = field(default_factory=list)
    placements: list[LaunchChoice] = field(default_factory=list)
    fault: SandboxFault | None = None


def sandbox_gradebook(
    session: Session, district_id: str, *, connection_id: str | None = None, page: int = 1
) -> SandboxPage:
    """One sandbox connection's page (the first by name unless one is asked for): its gradebook a page at a time in
    the order of its unique index (course, item, student), with the students' names where Passback knows them; the
    students and placed assignments a launch may name; the faults still to come.
    NotFound for a connection that is not one of this district's sandboxes."""
    sandboxes = [
        (cid, name)
        for cid, name in session.execute(
            select(LmsConnection.id, LmsConnection.name)
            .where(LmsConnection.district_id == district_id, LmsConnection.adapter == "sandbox")
            .order_by(LmsConnection.name)
        )
    ]
    if connection_id is None:
        connection_id = sandboxes[0][0] if sandboxes else None
    elif connection_id not in {cid for cid, _ in sandboxes}:
        raise NotFound("no such sandbox connection in this district")
    if connection_id is None:
        return SandboxPage([], None, [], False)
    rows = session.execute(
        select(SandboxGradebookEntry, User.name)
        .outerjoin(User, (User.id == SandboxGradebookEntry.student_id) & (User.district_id == district_id))
        .where(SandboxGradebookEntry.gradebook == connection_id)
        .order_by(SandboxGradebookEntry.course_id, SandboxGradebookEntry.item_id, SandboxGradebookEntry.student_id)
        .offset((page - 1) * GRADEBOOK_PAGE_SIZE)
        .limit(GRADEBOOK_PAGE_SIZE + 1)
    ).all()
    entries = [(entry, name or entry.student_id) for entry, name in rows[:GRADEBOOK_PAGE_SIZE]]
    return SandboxPage(
        sandboxes,
        connection_id,
        entries,
        len(rows) > GRADEBOOK_PAGE_SIZE,
        students=_students(session, district_id, connection_id),
        placements=_placements(session, district_id, connection_id),
        fault=current_fault(session, connection_id),
    )


def _students(session: Session, district_id: str, connection_id: str) -> list[tuple[str, str, str | None]]:
    rows = session.execute(
        select(User.id, User.name, User.sis_id)
        .where(
            User.district_id == district_id,
            User.role == UserRole.STUDENT,
            User.id.in_(select(Enrollment.user_id).where(Enrollment.lms_connection_id == connection_id)),
        )
        .order_by(User.name, User.id)
        .limit(LAUNCH_CHOICES)
    ).all()
    return [(user_id, name or user_id, sis_id) for user_id, name, sis_id in rows]


def _placements(session: Session, district_id: str, connection_id: str) -> list[LaunchChoice]:
    rows = session.execute(
        select(
            Assignment.id,
            Assignment.external_id,
            Assignment.name,
            App.name,
            App.redirect_uri,
            func.count(func.distinct(Placement.course_id)),
        )
        .join(Placement, Placement.assignment_id == Assignment.id)
        .join(App, App.id == Assignment.app_id)
        .join(DistrictApp, (DistrictApp.app_id == App.id) & (DistrictApp.district_id == district_id))
        .where(
            Placement.district_id == district_id,
            Placement.lms_connection_id == connection_id,
            DistrictApp.revoked_at.is_(None),
            Assignment.archived.is_(False),
        )
        .group_by(Assignment.id, Assignment.external_id, Assignment.name, App.name, App.redirect_uri)
        .order_by(App.name, Assignment.name, Assignment.id)
        .limit(LAUNCH_CHOICES)
    ).all()
    return [LaunchChoice(*row) for row in rows]
