"""The sandbox LMS's own rules: a gradebook keyed by course, item and student, and injected faults."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from gateway.models import SandboxFault, SandboxGradebookEntry, utcnow
from gateway.services.errors import Conflict
from gateway.services.unit_of_work import UnitOfWork


@dataclass(frozen=True)
class InjectedFault:
    status: int
    message: str
    retry_after: int | None


def take_fault(session: Session, gradebook: str) -> InjectedFault | None:
    """Consume one injected fault for this gradebook, if any are left."""
    fault = session.get(SandboxFault, gradebook, with_for_update=True)
    if fault is None or fault.remaining <= 0:
        return None
    fault.remaining -= 1
    return InjectedFault(fault.status, fault.message, fault.retry_after)


def set_fault(
    session: Session,
    gradebook: str,
    *,
    fail_next: int,
    status: int = 503,
    retry_after: int | None = None,
    message: str | None = None,
) -> SandboxFault:
    fault = session.get(SandboxFault, gradebook)
    if fault is None:
        fault = SandboxFault(gradebook=gradebook)
        session.add(fault)
    fault.remaining = fail_next
    fault.status = status
    fault.retry_after = retry_after
    fault.message = message or f"sandbox LMS is unavailable (injected fault, HTTP {status})"
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
) -> SandboxFault:
    """The next `fail_next` score writes answer `status`; returns the fault as stored."""
    with uow:
        fault = set_fault(
            uow.session, gradebook, fail_next=fail_next, status=status, retry_after=retry_after, message=message
        )
        uow.commit()
        return fault
