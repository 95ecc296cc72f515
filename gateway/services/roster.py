"""Roster sync by LTI Names and Role Provisioning Services: map Passback users to the platform's `sub` so that
grades reach students who have not launched the link, and enroll them in the placement's course."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gateway.crypto import SecretBox
from gateway.db import Database
from gateway.models import LmsConnection, LmsIdentity, Placement, User
from gateway.services.adapter_factory import AdapterFactory
from gateway.services.directory import enroll, enroll_user, identity_issuer
from gateway.services.errors import InvalidInput, NotFound
from gateway.services.lms import connection_settings, get_connection
from gateway.services.routing import release_awaiting_launch, route_waiting_grades
from gateway.services.unit_of_work import Nudger, UnitOfWork, no_nudge


@dataclass(frozen=True)
class EnrolledUser:
    lms_name: str
    routed: int


def enroll_user_in_course(
    uow: UnitOfWork,
    box: SecretBox,
    district_id: str,
    lms_ref: str,
    course_id: str,
    user_id: str,
    lms_user_id: str | None,
) -> EnrolledUser:
    """An operator enrolls a user in an LMS course (see enroll_user); what was released or routed goes out now."""
    with uow:
        connection = get_connection(uow.session, district_id, lms_ref)
        released, routed = enroll_user(uow.session, box, connection, course_id, user_id, lms_user_id)
        uow.nudge_if(released, {connection.id})
        # Routing looks at every destination of the user's grades: wake delivery everywhere.
        uow.nudge_if(routed)
        enrolled = EnrolledUser(connection.name, routed)
        uow.commit()
    return enrolled


@dataclass
class RosterSync:
    courses: int = 0
    members: int = 0
    matched: int = 0
    new_identities: int = 0
    released: int = 0
    unmatched: list[str] = field(default_factory=list)


def sync_roster(
    db: Database,
    box: SecretBox,
    adapters: AdapterFactory,
    district_id: str,
    connection_ref: str,
    *,
    nudger: Nudger = no_nudge,
    progress: Callable[[int, int], None] | None = None,
) -> RosterSync:
    """Fetch each placed course's membership and link members to Passback users by the connection's
    `roster_match` rule (email or LIS person sourcedId). Unmatched members are reported, not invented. Each
    course is one unit of work: what it released or routed goes out once it is committed."""
    with db.transaction() as session:
        connection = session.scalar(
            select(LmsConnection).where(
                LmsConnection.district_id == district_id,
                (LmsConnection.id == connection_ref) | (LmsConnection.name == connection_ref),
            )
        )
        if connection is None:
            raise NotFound(f"no LMS connection {connection_ref!r} in this district")
        adapter_cls = adapters.adapter_class(connection.adapter)
        if adapter_cls is None or not adapter_cls.supports_roster:
            raise InvalidInput(f"the {connection.adapter} adapter has no roster service")
        settings = connection_settings(box, connection)
        courses: dict[str, str] = {}
        for placement in session.scalars(select(Placement).where(Placement.lms_connection_id == connection.id)):
            destination = placement.destination or {}
            # What the adapter reads a course's members from: LTI's NRPS URL, Schoology's section id.
            source = adapter_cls.roster_source(destination, placement.section_id)
            if source:
                courses[placement.course_id] = str(source)
        connection_id = connection.id
        issuer = identity_issuer(connection, settings)
    adapter = adapters.build(connection.adapter, settings, connection_id=connection_id)
    result = RosterSync(courses=len(courses))
    for done, (course_id, url) in enumerate(courses.items()):
        if progress is not None:
            progress(done, len(courses))
        members = adapter.memberships(url)  # the LMS call, outside any transaction
        assert db.sessionmaker is not None
        with UnitOfWork(db.sessionmaker(), nudger, close=True) as uow:
            session = uow.session
            connection = session.get(LmsConnection, connection_id)
            assert connection is not None
            for member in members:
                if str(member.get("status", "Active")) != "Active" or not member.get("user_id"):
                    continue
                result.members += 1
                user = _match(session, district_id, issuer, settings, member)
                if user is None:
                    result.unmatched.append(str(member["user_id"]))
                    continue
                result.matched += 1
                subject = str(member["user_id"])
                known = session.scalar(
                    select(LmsIdentity).where(
                        LmsIdentity.district_id == district_id,
                        LmsIdentity.issuer == issuer,
                        LmsIdentity.subject == subject,
                    )
                )
                if known is None:
                    session.add(
                        LmsIdentity(
                            district_id=district_id,
                            user_id=user.id,
                            lms_connection_id=connection_id,
                            issuer=issuer,
                            subject=subject,
                        )
                    )
                    session.flush()
                    result.new_identities += 1
                enroll(session, connection, course_id, user, source="roster")
                result.released += uow.nudge_if(
                    release_awaiting_launch(session, user.id, connection_id), {connection_id}
                )
                uow.nudge_if(route_waiting_grades(session, district_id, user_id=user.id))
            uow.commit()
    return result


def _match(
    session: Session, district_id: str, issuer: str, settings: dict[str, Any], member: dict[str, Any]
) -> User | None:
    existing = session.scalar(
        select(User)
        .join(LmsIdentity, LmsIdentity.user_id == User.id)
        .where(
            LmsIdentity.district_id == district_id,
            LmsIdentity.issuer == issuer,
            LmsIdentity.subject == str(member["user_id"]),
        )
    )
    if existing is not None:
        return existing
    rule = settings.get("roster_match", "email")
    if rule == "uid":
        # Matching by the LMS's own user id: only identities linked before (by an operator) count.
        return None
    if rule in ("sourcedid", "school_uid"):
        sourcedid = member.get("lis_person_sourcedid")
        if not sourcedid or str(sourcedid).startswith("$"):
            return None
        return session.scalar(select(User).where(User.district_id == district_id, User.sis_id == str(sourcedid)))
    email = member.get("email")
    if not isinstance(email, str) or "@" not in email:
        return None
    matches = list(
        session.scalars(
            select(User).where(User.district_id == district_id, func.lower(User.email) == email.lower()).limit(2)
        )
    )
    # Two Passback users with one email cannot be told apart: leave both unmatched rather than guess.
    return matches[0] if len(matches) == 1 else None
