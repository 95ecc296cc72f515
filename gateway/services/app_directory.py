"""What a district shares with an app, read with the district-app token: the users the app may see, the courses
where its assignments are placed with how many of their students Passback can deliver to now, each course's
enrollments, and where each assignment lives with its delivery health (docs/directory.md).

Every query is scoped to the token's district and app. An app sees a user only when the user is enrolled in a
course where one of the app's assignments is placed: Passback has no setting by which a district shares all its
users with its apps."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import CompoundSelect, Select, exists, func, or_, select, tuple_, union
from sqlalchemy.orm import Session, aliased

from gateway.models import (
    Assignment,
    Delivery,
    Enrollment,
    LaunchDestination,
    LmsConnection,
    LmsIdentity,
    Placement,
    TokenKind,
    User,
    UserRole,
)
from gateway.services.auth import Principal
from gateway.services.dashboard_counts import add_count, tallies, zero_counts
from gateway.services.errors import Forbidden, NotFound
from gateway.services.paging import Page, after_cursor, page_of, updated_since
from gateway.services.routing import WAITS_FOR_IDENTITY, WAITS_FOR_LAUNCH, receives, route_flags, waiting_for
from schemas.directory import Readiness

ROSTER_SCOPE = "roster:read"

# What a grade posted now for an enrolled user would do, from what its route waits for (routing.waiting_for).
_READINESS_OF_WAIT = {
    None: Readiness.DELIVERABLE,
    WAITS_FOR_IDENTITY: Readiness.AWAITING_ROSTER_MATCH,
    WAITS_FOR_LAUNCH: Readiness.AWAITING_LAUNCH,
}
# A user with several routes in a course is as ready as the one that waits longest.
_WAIT_ORDER = {Readiness.DELIVERABLE: 0, Readiness.AWAITING_LAUNCH: 1, Readiness.AWAITING_ROSTER_MATCH: 2}


def require_roster_reader(principal: Principal) -> None:
    """The district-app token with the roster scope; a user's sign-in token may not look anyone up."""
    if principal.kind != TokenKind.DISTRICT_APP:
        raise Forbidden(
            "the roster is read with the district-app token, not a user's sign-in token", code="insufficient_scope"
        )
    principal.require_scope(ROSTER_SCOPE)


# --- courses: an opaque id for (connection, LMS course id) ----------------------------------------------------


def course_ref(lms_connection_id: str, course_id: str) -> str:
    """The API's id of a course: the connection and the LMS's course id (which may hold any character), opaque."""
    return base64.urlsafe_b64encode(f"{lms_connection_id}:{course_id}".encode()).decode().rstrip("=")


def _course_key(ref: str) -> tuple[str, str] | None:
    try:
        raw = base64.urlsafe_b64decode(ref + "=" * (-len(ref) % 4)).decode()
    except (ValueError, binascii.Error):
        return None
    connection_id, colon, course_id = raw.partition(":")
    return (connection_id, course_id) if colon and course_id else None


def _app_placements(principal: Principal) -> Select[Any]:
    """The app's placements in the caller's district (the FROM and WHERE every read here starts from)."""
    return (
        select(Placement.id)
        .join(Assignment, Assignment.id == Placement.assignment_id)
        .where(Placement.district_id == principal.district_id, Assignment.app_id == principal.app_id)
    )


def _placed_enrollments(principal: Principal, *columns: Any) -> Select[Any]:
    """Enrollments of the district in courses where one of the app's assignments is placed: who the app sees."""
    return (
        select(*columns)
        .select_from(Enrollment)
        .join(
            Placement,
            (Placement.lms_connection_id == Enrollment.lms_connection_id)
            & (Placement.course_id == Enrollment.course_id),
        )
        .join(Assignment, Assignment.id == Placement.assignment_id)
        .where(
            Enrollment.district_id == principal.district_id,
            Placement.district_id == principal.district_id,
            Assignment.app_id == principal.app_id,
        )
    )


# --- users ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LmsIdentityView:
    lms_connection_id: str
    lms_name: str
    lms_user_id: str


@dataclass(frozen=True)
class UserView:
    user_id: str
    sis_id: str | None
    email: str | None
    name: str
    role: str
    lms_identities: list[LmsIdentityView]
    created_at: datetime
    updated_at: datetime


def list_users(session: Session, principal: Principal, query: Mapping[str, Any]) -> Page[UserView]:
    """The district's users the app may see, oldest first, filtered by sisID, email (exact, as stored), role and
    updatedSince, cursor-paged."""
    require_roster_reader(principal)
    district_id = principal.district_id
    stmt = select(User).where(
        User.district_id == district_id, User.id.in_(_placed_enrollments(principal, Enrollment.user_id))
    )
    if "sisID" in query:
        stmt = stmt.where(User.sis_id == query["sisID"])
    if "email" in query:
        stmt = stmt.where(User.email == query["email"])
    if "role" in query:
        stmt = stmt.where(User.role == query["role"])
    since = updated_since(query)
    if since is not None:
        # A user changed for this app when their row did, when an LMS identity was linked to them, or when they
        # came into view: enrolled in a placed course, or a course of theirs got the app's first placement.
        # Each branch is one index range of its table by district and time.
        changed = union(
            select(User.id).where(User.district_id == district_id, User.updated_at >= since),
            select(LmsIdentity.user_id).where(LmsIdentity.district_id == district_id, LmsIdentity.created_at >= since),
            _placed_enrollments(principal, Enrollment.user_id).where(Enrollment.updated_at >= since),
            _placed_enrollments(principal, Enrollment.user_id).where(Placement.created_at >= since),
        )
        stmt = stmt.where(User.id.in_(changed))
    rows = list(session.scalars(after_cursor(stmt, (User.created_at, User.id), query)))
    page = page_of(rows, query, lambda user: (user.created_at, user.id))
    identities = _identities(session, district_id, [user.id for user in page.items])
    return Page(
        [
            UserView(
                user.id,
                user.sis_id,
                user.email,
                user.name,
                user.role,
                identities.get(user.id, []),
                user.created_at,
                user.updated_at,
            )
            for user in page.items
        ],
        page.next_cursor,
    )


def _identities(session: Session, district_id: str, user_ids: list[str]) -> dict[str, list[LmsIdentityView]]:
    """How each LMS of the district names these users: connection and LMS user id, nothing else."""
    if not user_ids:
        return {}
    found: dict[str, list[LmsIdentityView]] = {}
    for user_id, connection_id, connection_name, subject in session.execute(
        select(LmsIdentity.user_id, LmsConnection.id, LmsConnection.name, LmsIdentity.subject)
        .join(LmsConnection, LmsConnection.id == LmsIdentity.lms_connection_id)
        .where(
            LmsIdentity.district_id == district_id,
            LmsConnection.district_id == district_id,
            LmsIdentity.user_id.in_(user_ids),
        )
        .order_by(LmsConnection.name, LmsIdentity.created_at, LmsIdentity.id)
    ):
        found.setdefault(user_id, []).append(LmsIdentityView(connection_id, connection_name, subject))
    return found


# --- who Passback can deliver to -----------------------------------------------------------------------------

CourseKey = tuple[str, str]  # (LMS connection id, the LMS's course id)


@dataclass(frozen=True)
class Member:
    role: str
    readiness: Readiness


def _readiness(
    session: Session, principal: Principal, courses: Sequence[CourseKey], user_ids: Sequence[str] | None = None
) -> dict[CourseKey, dict[str, Member]]:
    """For each enrolled user of these courses: what a grade posted now on any of the app's assignments placed
    there would do. It is routing's own answer, not a second rule: the same `receives` condition picks the links a
    student's grade goes to, and the same flags and `waiting_for` say whether each waits. A user is deliverable
    when none of their routes waits; otherwise waiting for the LMS's id for them (a roster match or their launch
    supplies it) counts before waiting for their own launch of a link (LTI 1.1's sourcedid)."""
    if not courses:
        return {}
    member = aliased(Enrollment)  # routing's conditions use Enrollment itself; an alias keeps them uncorrelated
    stmt = (
        select(
            member.lms_connection_id,
            member.course_id,
            member.user_id,
            member.role,
            LmsConnection.adapter,
            *route_flags(member.user_id),
        )
        .select_from(Placement)
        .join(LmsConnection, LmsConnection.id == Placement.lms_connection_id)
        .join(Assignment, Assignment.id == Placement.assignment_id)
        .join(
            member,
            (member.lms_connection_id == Placement.lms_connection_id) & (member.course_id == Placement.course_id),
        )
        .where(
            Placement.district_id == principal.district_id,
            Assignment.app_id == principal.app_id,
            member.district_id == principal.district_id,
            tuple_(Placement.lms_connection_id, Placement.course_id).in_(list(courses)),
            receives(member.user_id),
        )
        # One row per user and kind of route, not per placement: a course's placements mostly share the answer.
        .distinct()
    )
    if user_ids is not None:
        stmt = stmt.where(member.user_id.in_(list(user_ids)))
    found: dict[CourseKey, dict[str, Member]] = {course: {} for course in courses}
    for connection_id, course_id, user_id, role, adapter, has_identity, has_launch_data in session.execute(stmt):
        readiness = _READINESS_OF_WAIT[waiting_for(adapter, has_identity, has_launch_data)]
        users = found[(connection_id, course_id)]
        known = users.get(user_id)
        if known is None or _WAIT_ORDER[readiness] > _WAIT_ORDER[known.readiness]:
            users[user_id] = Member(role, readiness)
    return found


@dataclass
class Coverage:
    """How many of a course's enrolled students Passback can deliver to now, and how many wait."""

    students: int = 0
    deliverable: int = 0
    awaiting_launch: int = 0
    awaiting_roster_match: int = 0

    def count(self, readiness: Readiness) -> None:
        self.students += 1
        setattr(self, readiness.value, getattr(self, readiness.value) + 1)


# --- courses -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CourseView:
    id: str
    lms_connection_id: str
    lms_name: str
    adapter: str
    course_id: str
    sections: list[str]
    assignment_ids: list[str]
    coverage: Coverage
    first_placed_at: datetime


def list_courses(session: Session, principal: Principal, query: Mapping[str, Any]) -> Page[CourseView]:
    """Courses (with their sections) where the app's assignments are placed, in the order they were first placed,
    each with its LMS and its students' coverage; cursor-paged."""
    require_roster_reader(principal)
    placed = (
        _app_placements(principal)
        .with_only_columns(
            Placement.lms_connection_id,
            Placement.course_id,
            func.min(Placement.created_at).label("first_placed_at"),
            # Unique per course (each placement is in one course), so (first placed, first id) orders courses.
            func.min(Placement.id).label("first_placement_id"),
        )
        .group_by(Placement.lms_connection_id, Placement.course_id)
        .subquery()
    )
    stmt = select(placed)
    rows = session.execute(after_cursor(stmt, (placed.c.first_placed_at, placed.c.first_placement_id), query)).all()
    page = page_of(rows, query, lambda row: (row.first_placed_at, row.first_placement_id))
    first_placed = {(row.lms_connection_id, row.course_id): row.first_placed_at for row in page.items}
    return Page(_course_views(session, principal, first_placed), page.next_cursor)


def _placed_course(session: Session, principal: Principal, ref: str) -> CourseKey:
    key = _course_key(ref)
    placed = key is not None and session.scalar(
        _app_placements(principal).where(Placement.lms_connection_id == key[0], Placement.course_id == key[1]).limit(1)
    )
    if key is None or not placed:
        raise NotFound(
            f"no course {ref!r} where this app's assignments are placed in this district", code="course_not_found"
        )
    return key


def _course_views(
    session: Session, principal: Principal, first_placed: Mapping[CourseKey, datetime]
) -> list[CourseView]:
    courses = list(first_placed)
    if not courses:
        return []
    details: dict[CourseKey, tuple[str, str, set[str], set[str]]] = {}
    for connection_id, course_id, section_id, name, adapter, external_id in session.execute(
        _app_placements(principal)
        .with_only_columns(
            Placement.lms_connection_id,
            Placement.course_id,
            Placement.section_id,
            LmsConnection.name,
            LmsConnection.adapter,
            Assignment.external_id,
        )
        .join(LmsConnection, LmsConnection.id == Placement.lms_connection_id)
        .where(tuple_(Placement.lms_connection_id, Placement.course_id).in_(courses))
    ):
        _, _, sections, assignments = details.setdefault((connection_id, course_id), (name, adapter, set(), set()))
        if section_id:
            sections.add(section_id)
        assignments.add(external_id)
    members = _readiness(session, principal, courses)
    views = []
    for key in courses:
        name, adapter, sections, assignments = details[key]
        coverage = Coverage()
        for member in members[key].values():
            if member.role == UserRole.STUDENT:
                coverage.count(member.readiness)
        views.append(
            CourseView(
                course_ref(*key),
                key[0],
                name,
                adapter,
                key[1],
                sorted(sections),
                sorted(assignments),
                coverage,
                first_placed[key],
            )
        )
    return views


# --- enrollments ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnrollmentView:
    id: str
    user_id: str
    role: str
    source: str
    readiness: Readiness
    created_at: datetime
    updated_at: datetime


def list_enrollments(
    session: Session, principal: Principal, ref: str, query: Mapping[str, Any]
) -> Page[EnrollmentView]:
    """The enrollments of one course where the app's assignments are placed, oldest first, each with what a grade
    posted now would do; filtered by role and updatedSince, cursor-paged."""
    require_roster_reader(principal)
    connection_id, course_id = key = _placed_course(session, principal, ref)
    stmt = select(Enrollment).where(
        Enrollment.district_id == principal.district_id,
        Enrollment.lms_connection_id == connection_id,
        Enrollment.course_id == course_id,
    )
    if "role" in query:
        stmt = stmt.where(Enrollment.role == query["role"])
    since = updated_since(query)
    if since is not None:
        # An enrollment changed when its row did, or when what its grades would do may have: the LMS's id for the
        # user was linked, the user launched a link in the course, or the app placed another assignment there.
        stmt = stmt.where(
            or_(
                Enrollment.updated_at >= since,
                exists().where(
                    LmsIdentity.user_id == Enrollment.user_id,
                    LmsIdentity.lms_connection_id == connection_id,
                    LmsIdentity.created_at >= since,
                ),
                exists().where(
                    LaunchDestination.user_id == Enrollment.user_id,
                    LaunchDestination.placement_id == Placement.id,
                    Placement.lms_connection_id == connection_id,
                    Placement.course_id == course_id,
                    LaunchDestination.updated_at >= since,
                ),
                _app_placements(principal)
                .where(
                    Placement.lms_connection_id == connection_id,
                    Placement.course_id == course_id,
                    Placement.created_at >= since,
                )
                .exists(),
            )
        )
    rows = list(session.scalars(after_cursor(stmt, (Enrollment.created_at, Enrollment.id), query)))
    page = page_of(rows, query, lambda enrollment: (enrollment.created_at, enrollment.id))
    members = _readiness(session, principal, [key], [e.user_id for e in page.items]) if page.items else {key: {}}
    return Page(
        [
            EnrollmentView(
                e.id,
                e.user_id,
                e.role,
                e.source,
                # Every enrolled user receives at least one link of each placed assignment (routing's rule 3).
                members[key][e.user_id].readiness if e.user_id in members[key] else Readiness.DELIVERABLE,
                e.created_at,
                e.updated_at,
            )
            for e in page.items
        ],
        page.next_cursor,
    )


# --- placements ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlacementDetail:
    id: str
    assignment_id: str
    lms_connection_id: str
    lms_name: str
    adapter: str
    course_ref: str
    course_id: str
    section_id: str | None
    link_id: str | None
    title: str | None
    lms_assignment_id: str | None
    line_item: str | None
    deliveries: dict[str, int] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


def list_placements(session: Session, principal: Principal, query: Mapping[str, Any]) -> Page[PlacementDetail]:
    """Where the app's assignments live in the district's LMSs, oldest first, each with its deliveries counted by
    status; filtered by assignmentID and updatedSince, cursor-paged."""
    require_roster_reader(principal)
    district_id = principal.district_id
    stmt = (
        select(Placement, Assignment.external_id)
        .join(Assignment, Assignment.id == Placement.assignment_id)
        .where(Placement.district_id == district_id, Assignment.app_id == principal.app_id)
    )
    if "assignmentID" in query:
        stmt = stmt.where(Assignment.external_id == query["assignmentID"])
    since = updated_since(query)
    if since is not None:
        # A placement changed when it did (its link, title, line item) or when one of its deliveries moved on.
        changed: CompoundSelect[str | None] = union(
            select(Placement.id).where(Placement.district_id == district_id, Placement.updated_at >= since),
            select(Delivery.placement_id).where(
                Delivery.district_id == district_id,
                Delivery.updated_at >= since,
                Delivery.placement_id.is_not(None),
            ),
        )
        stmt = stmt.where(Placement.id.in_(changed))
    rows = session.execute(after_cursor(stmt, (Placement.created_at, Placement.id), query)).all()
    page = page_of(rows, query, lambda row: (row[0].created_at, row[0].id))
    counts = {row[0].id: zero_counts() for row in page.items}
    if counts:
        # The dashboard's counts: score sends by status, superseded ones left out.
        for tally in tallies(session, district_id, placement_ids=list(counts)):
            if tally.placement_id is not None:
                add_count(counts[tally.placement_id], tally.status, tally.count)
    return Page([_placement_detail(p, external_id, counts[p.id]) for p, external_id in page.items], page.next_cursor)


def _placement_detail(placement: Placement, external_id: str, counts: dict[str, int]) -> PlacementDetail:
    """The placement as an app may see it: where it points, never the adapter's other destination data."""
    destination = placement.destination or {}
    lms_assignment_id = destination.get("assignment_id")
    line_item = destination.get("lineitem")
    return PlacementDetail(
        placement.id,
        external_id,
        placement.lms_connection_id,
        placement.lms_connection.name,
        placement.lms_connection.adapter,
        course_ref(placement.lms_connection_id, placement.course_id),
        placement.course_id,
        placement.section_id,
        placement.resource_link_id,
        placement.title,
        str(lms_assignment_id) if lms_assignment_id is not None else None,
        line_item if isinstance(line_item, str) else None,
        counts,
        placement.created_at,
        placement.updated_at,
    )
