"""The sandbox LMS's own rules: a gradebook keyed by course, item and student, injected faults, and simulated
launches that sign a student into an app as a real LMS launch would (the code flow of gateway/services/signin.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from gateway.crypto import SecretBox
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
    utcnow,
)
from gateway.services import signin
from gateway.services.directory import StudentKey, StudentKeyInvalid, enroll_user, students_named
from gateway.services.errors import Conflict, NotFound
from gateway.services.unit_of_work import UnitOfWork

# A hang holds a server thread: bounded, and longer than the gateway's default request deadline (30 s).
MAX_HANG_SECONDS = 300


@dataclass(frozen=True)
class InjectedFault:
    status: int
    message: str
    retry_after: int | None
    # Hold the write this long before answering (the view waits, outside any transaction).
    hang_seconds: int | None = None


def take_fault(session: Session, gradebook: str) -> InjectedFault | None:
    """Consume one injected fault for this gradebook, if any are left."""
    fault = session.get(SandboxFault, gradebook, with_for_update=True)
    if fault is None or fault.remaining <= 0:
        return None
    fault.remaining -= 1
    return InjectedFault(fault.status, fault.message, fault.retry_after, fault.hang_seconds)


def current_fault(session: Session, gradebook: str) -> SandboxFault | None:
    """The faults still to be answered by this gradebook, if any."""
    fault = session.get(SandboxFault, gradebook)
    return fault if fault is not None and fault.remaining > 0 else None


def set_fault(
    session: Session,
    gradebook: str,
    *,
    fail_next: int,
    status: int = 503,
    retry_after: int | None = None,
    message: str | None = None,
    hang_seconds: int | None = None,
) -> SandboxFault:
    fault = session.get(SandboxFault, gradebook)
    if fault is None:
        fault = SandboxFault(gradebook=gradebook)
        session.add(fault)
    fault.remaining = fail_next
    fault.status = status
    fault.retry_after = retry_after
    fault.hang_seconds = min(hang_seconds, MAX_HANG_SECONDS) if hang_seconds else None
    default = (
        f"sandbox LMS did not answer for {fault.hang_seconds} s (injected hang, then HTTP {status})"
        if fault.hang_seconds
        else f"sandbox LMS is unavailable (injected fault, HTTP {status})"
    )
    fault.message = message or default
    return fault


def store_score(
    session: Session, gradebook: str, course_id: str, item_id: str, student_id: str, score: dict[str, Any]
) -> SandboxGradebookEntry:
    """Replace the student's score on the item; an older timestamp than the stored one is refused (409)."""
    timestamp = score["timestamp"].astimezone(UTC).replace(tzinfo=None)
    entry = session.scalar(
        select(SandboxGradebookEntry)
        .where(
            SandboxGradebookEntry.gradebook == gradebook,
            SandboxGradebookEntry.course_id == course_id,
            SandboxGradebookEntry.item_id == item_id,
            SandboxGradebookEntry.student_id == student_id,
        )
        .with_for_update()
    )
    if entry is not None and timestamp < entry.timestamp:
        raise Conflict("score is older than the one in the gradebook", code="stale_score")
    if entry is None:
        entry = SandboxGradebookEntry(
            gradebook=gradebook, course_id=course_id, item_id=item_id, student_id=student_id, writes=0
        )
        session.add(entry)
    entry.score_given = score["scoreGiven"]
    entry.score_maximum = score["scoreMaximum"]
    entry.comment = score.get("comment")
    entry.activity_progress = score.get("activityProgress")
    entry.grading_progress = score.get("gradingProgress")
    entry.timestamp = timestamp
    entry.updated_at = utcnow()
    entry.writes = (entry.writes or 0) + 1
    session.flush()
    return entry


def read_entry(
    session: Session, gradebook: str, course_id: str, item_id: str, student_id: str
) -> SandboxGradebookEntry | None:
    """The student's entry on the item, if the gradebook holds one (what read-back asks for)."""
    return session.scalar(
        select(SandboxGradebookEntry).where(
            SandboxGradebookEntry.gradebook == gradebook,
            SandboxGradebookEntry.course_id == course_id,
            SandboxGradebookEntry.item_id == item_id,
            SandboxGradebookEntry.student_id == student_id,
        )
    )


def gradebook_entries(session: Session, gradebook: str, course_id: str | None = None) -> list[SandboxGradebookEntry]:
    query = select(SandboxGradebookEntry).where(SandboxGradebookEntry.gradebook == gradebook)
    if course_id is not None:
        query = query.where(SandboxGradebookEntry.course_id == course_id)
    return list(
        session.scalars(
            query.order_by(
                SandboxGradebookEntry.course_id, SandboxGradebookEntry.item_id, SandboxGradebookEntry.student_id
            )
        )
    )


def delete_score(session: Session, gradebook: str, course_id: str, item_id: str, student_id: str) -> bool:
    """Remove a student's score on an item; True if there was one."""
    result = session.execute(
        delete(SandboxGradebookEntry).where(
            SandboxGradebookEntry.gradebook == gradebook,
            SandboxGradebookEntry.course_id == course_id,
            SandboxGradebookEntry.item_id == item_id,
            SandboxGradebookEntry.student_id == student_id,
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def put_score(
    uow: UnitOfWork,
    gradebook: str,
    course_id: str,
    item_id: str,
    student_id: str,
    read_score: Callable[[], dict[str, Any]],
) -> InjectedFault | SandboxGradebookEntry:
    """A score write: an injected fault, when one is left, answers instead (the body is then not read, as an
    unavailable LMS would not); else the score read by `read_score` is stored."""
    with uow:
        fault = take_fault(uow.session, gradebook)
        if fault is not None:
            uow.commit()
            return fault
        entry = store_score(uow.session, gradebook, course_id, item_id, student_id, read_score())
        uow.commit()
        return entry


def remove_score(uow: UnitOfWork, gradebook: str, course_id: str, item_id: str, student_id: str) -> bool:
    with uow:
        removed = delete_score(uow.session, gradebook, course_id, item_id, student_id)
        uow.commit()
        return removed


def inject_fault(
    uow: UnitOfWork,
    gradebook: str,
    *,
    fail_next: int,
    status: int = 503,
    retry_after: int | None = None,
    message: str | None = None,
    hang_seconds: int | None = None,
) -> SandboxFault:
    """The next `fail_next` score writes answer `status` (after `hang_seconds`, if given); `fail_next=0` clears
    the faults. Returns the fault as stored."""
    with uow:
        fault = set_fault(
            uow.session,
            gradebook,
            fail_next=fail_next,
            status=status,
            retry_after=retry_after,
            message=message,
            hang_seconds=hang_seconds,
        )
        uow.commit()
        return fault


# --- simulated launches ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulatedLaunch:
    """Where the student's browser goes next (the app's redirect URI with `code` and `state`), and what the launch
    recorded."""

    redirect_url: str
    user_id: str
    assignment_id: str
    course_id: str
    app_name: str
    routed: int


def sandbox_connection(session: Session, gradebook: str, district_id: str | None = None) -> LmsConnection:
    """The sandbox connection a gradebook is (within `district_id` when given); NotFound for any other."""
    query = select(LmsConnection).where(LmsConnection.id == gradebook, LmsConnection.adapter == "sandbox")
    if district_id is not None:
        query = query.where(LmsConnection.district_id == district_id)
    connection = session.scalar(query)
    if connection is None:
        raise NotFound("no such sandbox LMS connection")
    return connection


def placements_in_sandbox(
    session: Session,
    connection: LmsConnection,
    *,
    assignment_id: str | None = None,
    catalog_id: str | None = None,
    app: str | None = None,
) -> list[Placement]:
    """The placements in this sandbox of an authorized app's assignment, named by its assignmentID (with `app`, an
    id or client id, when apps share it) or by its catalog row's id (the dashboard's form), oldest first."""
    query = (
        select(Placement, App)
        .join(Assignment, Assignment.id == Placement.assignment_id)
        .join(App, App.id == Assignment.app_id)
        .join(DistrictApp, (DistrictApp.app_id == App.id) & (DistrictApp.district_id == connection.district_id))
        .where(Placement.lms_connection_id == connection.id, DistrictApp.revoked_at.is_(None))
        .order_by(Placement.created_at, Placement.id)
    )
    if assignment_id is not None:
        query = query.where(Assignment.external_id == assignment_id)
    if catalog_id is not None:
        query = query.where(Assignment.id == catalog_id)
    found = [
        placement for placement, owner in session.execute(query) if app is None or app in (owner.id, owner.client_id)
    ]
    if not found:
        raise NotFound(
            f"no assignment {assignment_id or catalog_id!r} of an authorized app is placed in this sandbox LMS",
            fields={"assignmentID": ["Not placed in this sandbox LMS."]},
        )
    if len({p.assignment_id for p in found}) > 1:
        raise Conflict(
            f"several apps have an assignment {assignment_id!r} here: name the app by its client id",
            fields={"app": ["Required: several apps have this assignmentID."]},
        )
    return found


def placement_for_student(
    session: Session, connection: LmsConnection, user_id: str, placements: list[Placement], course: str | None = None
) -> Placement:
    """Which of an assignment's placements the student's launch opens: the one in `course` when named, else the one
    course it is placed in, else the one of those the student is enrolled in (their link, as in a real LMS)."""
    if course is not None:
        placements = [p for p in placements if p.course_id == course]
        if not placements:
            raise NotFound("the assignment is not placed in this course", fields={"courseID": ["Not placed here."]})
    courses = {p.course_id for p in placements}
    if len(courses) > 1:
        enrolled = set(
            session.scalars(
                select(Enrollment.course_id).where(
                    Enrollment.lms_connection_id == connection.id,
                    Enrollment.user_id == user_id,
                    Enrollment.course_id.in_(courses),
                )
            )
        )
        if len(enrolled) != 1:
            raise Conflict(
                "the assignment is placed in several courses here: name the course",
                fields={"courseID": ["Required: the assignment is placed in several courses."]},
            )
        placements = [p for p in placements if p.course_id in enrolled]
    return placements[0]


def launch_student(
    session: Session, box: SecretBox, connection: LmsConnection, user_id: str, placement: Placement
) -> SimulatedLaunch:
    """What an LMS launch does for the student: enroll them in the placement's course (routing their waiting grades
    there), then sign them into the app: a single-use code for the app's redirect URI."""
    user = session.scalar(select(User).where(User.id == user_id, User.district_id == connection.district_id))
    if user is None:
        raise NotFound("no such user in this district", fields={"userID": ["No user with this id in this district."]})
    assignment = session.get(Assignment, placement.assignment_id)
    app = session.get(App, assignment.app_id) if assignment is not None else None
    if assignment is None or app is None or placement.lms_connection_id != connection.id:
        raise NotFound("no such placement in this sandbox LMS")
    _released, routed = enroll_user(session, box, connection, placement.course_id, user.id, None)
    url = signin.sign_in_redirect(session, app, connection.district_id, user.id, assignment.external_id)
    return SimulatedLaunch(url, user.id, assignment.external_id, placement.course_id, app.name, routed)


def find_student(session: Session, district_id: str, key: StudentKey) -> str:
    """The one user of the district the key names (userID, sisID or email)."""
    found = list(session.scalars(students_named(district_id, key).limit(2)))
    if len(found) > 1:
        raise Conflict(
            f"{key.field} names more than one user in this district: send userID instead",
            fields={key.field: ["Names more than one user in this district; send userID instead."]},
            code="student_key_ambiguous",
        )
    if not found:
        raise NotFound(
            f"no user with {key.describe()} in this district",
            fields={key.field: [f"No user with this {key.field} in this district."]},
            code="user_not_found",
        )
    return found[0]


def launch(
    uow: UnitOfWork,
    box: SecretBox,
    gradebook: str,
    student: StudentKey | None,
    assignment_id: str,
    *,
    app: str | None = None,
    course: str | None = None,
) -> SimulatedLaunch:
    """A launch the sandbox LMS itself starts (its API, for scripts): the student (exactly one key: userID, sisID
    or email) and the assignment as an LMS names them; grades the enrollment routed go out once committed."""
    if student is None:
        raise StudentKeyInvalid(
            "name the student by one of userID, sisID or email",
            fields={name: ["Send exactly one of userID, sisID or email."] for name in ("userID", "sisID", "email")},
        )
    with uow:
        connection = sandbox_connection(uow.session, gradebook)
        user_id = find_student(uow.session, connection.district_id, student)
        placements = placements_in_sandbox(uow.session, connection, assignment_id=assignment_id, app=app)
        placement = placement_for_student(uow.session, connection, user_id, placements, course)
        launched = launch_student(uow.session, box, connection, user_id, placement)
        uow.nudge_if(launched.routed)
        uow.commit()
        return launched
