"""The dashboard's view of a sandbox LMS connection's gradebook."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.models import LmsConnection, SandboxGradebookEntry, User
from gateway.services.errors import NotFound

GRADEBOOK_PAGE_SIZE = 100


@dataclass
class SandboxPage:
    connections: list[tuple[str, str]]
    connection_id: str | None
    entries: list[tuple[SandboxGradebookEntry, str]]
    more: bool


def sandbox_gradebook(
    session: Session, district_id: str, *, connection_id: str | None = None, page: int = 1
) -> SandboxPage:
    """One sandbox connection's gradebook (the first by name unless one is asked for), a page at a time in
    the order of its unique index (course, item, student), with the students' names where Passback knows them.
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
    return SandboxPage(sandboxes, connection_id, entries, len(rows) > GRADEBOOK_PAGE_SIZE)
