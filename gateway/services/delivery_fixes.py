"""What explains a delivery that cannot go out (unroutable, awaiting the student's launch) and the fix staff can
make from its page: where the assignment is placed against where the student is enrolled, and the enrollment
(or the LMS's id for the student) that would let the grade go."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.models import Assignment, Delivery, Enrollment, Grade, LmsConnection, Placement, User
from gateway.services.errors import NotFound
from gateway.services.routing import WAITS_FOR_IDENTITY, WAITS_FOR_LAUNCH, route_flags, waiting_for
from schemas.statuses import DeliveryStatus

FIXABLE = (DeliveryStatus.UNROUTABLE, DeliveryStatus.AWAITING_LAUNCH)


@dataclass(frozen=True)
class PlacedIn:
    """One placement of the delivery's assignment, as it stands for this student."""

    placement_id: str
    connection_id: str
    connection_name: str
    course_id: str
    section_id: str | None
    enrolled: bool
    # None: a grade can go there once the student is enrolled; else what it would still wait for.
    waits_for: str | None


@dataclass(frozen=True)
class DeliveryFix:
    delivery_id: str
    status: str
    user_id: str
    student: str
    placed_in: list[PlacedIn]
    # (connection name, course id) of every course the student is enrolled in, in this district.
    enrolled_in: list[tuple[str, str]]
    # (connection id, connection name, course id) of those courses where the assignment is not placed: placing
    # it there routes the grade.
    place_choices: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def enroll_choices(self) -> list[PlacedIn]:
        """Placements in courses the student is not enrolled in: enrolling them there routes the grade."""
        return [p for p in self.placed_in if not p.enrolled]

    @property
    def identity_choices(self) -> list[PlacedIn]:
        """Placements that wait only for the LMS's id for the student (which staff can enter)."""
        return [p for p in self.placed_in if p.enrolled and p.waits_for == WAITS_FOR_IDENTITY]

    @property
    def launch_only(self) -> list[PlacedIn]:
        """Placements that wait for the student's own launch (LTI 1.1's sourcedid): only the student can fix it."""
        return [p for p in self.placed_in if p.enrolled and p.waits_for == WAITS_FOR_LAUNCH]


def fix_for(session: Session, district_id: str, delivery_id: str) -> DeliveryFix | None:
    """The facts and fixes of a waiting delivery of this district (None when it is not waiting for one);
    NotFound for another district's."""
    row = session.execute(
        select(Delivery.status, Grade.user_id, Grade.assignment_id, User.name, User.email)
        .join(Grade, Grade.id == Delivery.grade_id)
        .join(User, User.id == Grade.user_id)
        .where(Delivery.id == delivery_id, Delivery.district_id == district_id)
    ).first()
    if row is None:
        raise NotFound("no such delivery in this district")
    status, user_id, assignment_id, name, email = row
    if status not in FIXABLE:
        return None
    has_identity, has_launch_data = route_flags(user_id)
    placements = session.execute(
        select(
            Placement.id,
            Placement.lms_connection_id,
            LmsConnection.name,
            LmsConnection.adapter,
            Placement.course_id,
            Placement.section_id,
            select(Enrollment.id)
            .where(
                Enrollment.lms_connection_id == Placement.lms_connection_id,
                Enrollment.course_id == Placement.course_id,
                Enrollment.user_id == user_id,
            )
            .exists()
            .label("enrolled"),
            has_identity,
            has_launch_data,
        )
        .join(LmsConnection, LmsConnection.id == Placement.lms_connection_id)
        .where(Placement.district_id == district_id, Placement.assignment_id == assignment_id)
        .order_by(LmsConnection.name, Placement.course_id, Placement.section_id)
        .limit(50)
    ).all()
    enrolled_in = session.execute(
        select(LmsConnection.name, Enrollment.course_id, Enrollment.lms_connection_id)
        .join(LmsConnection, LmsConnection.id == Enrollment.lms_connection_id)
        .where(Enrollment.district_id == district_id, Enrollment.user_id == user_id)
        .order_by(LmsConnection.name, Enrollment.course_id)
        .limit(50)
    ).all()
    placed = {(p.lms_connection_id, p.course_id) for p in placements}
    return DeliveryFix(
        delivery_id=delivery_id,
        status=status,
        user_id=user_id,
        student=name or email or user_id,
        placed_in=[
            PlacedIn(
                placement_id=p.id,
                connection_id=p.lms_connection_id,
                connection_name=p.name,
                course_id=p.course_id,
                section_id=p.section_id,
                enrolled=bool(p.enrolled),
                waits_for=waiting_for(p.adapter, bool(p.has_identity), bool(p.has_launch_data)),
            )
            for p in placements
        ],
        enrolled_in=[(r.name, r.course_id) for r in enrolled_in],
        place_choices=[
            (r.lms_connection_id, r.name, r.course_id)
            for r in enrolled_in
            if (r.lms_connection_id, r.course_id) not in placed
        ],
    )


def assignment_of(session: Session, delivery_id: str) -> tuple[str, str, str]:
    """(app id, the assignment's catalog id, its name) of a delivery's grade."""
    row = session.execute(
        select(Grade.app_id, Assignment.external_id, Assignment.name)
        .join(Delivery, Delivery.grade_id == Grade.id)
        .join(Assignment, Assignment.id == Grade.assignment_id)
        .where(Delivery.id == delivery_id)
    ).one()
    return str(row[0]), str(row[1]), str(row[2])
