"""Forgetting a user (a FERPA or state privacy request): every row Passback keeps about them, in one unit of work
with its audit row. What is deleted and why, table by table: docs/privacy.md."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Delete, delete, func, or_, select
from sqlalchemy.orm import Session

from gateway.crypto import SecretBox, SecretUndecryptable
from gateway.models import (
    ApiToken,
    AuditEntry,
    AuthorizationCode,
    CatalogSnapshot,
    DeepLinkSession,
    Delivery,
    Enrollment,
    Grade,
    GradeRevision,
    IdempotencyRecord,
    LaunchDestination,
    LmsConnection,
    LmsIdentity,
    SandboxGradebookEntry,
    User,
    WebhookMessage,
)
from gateway.services import admin_audit
from gateway.services.admin_audit import Operator, find_district
from gateway.services.errors import Conflict, InvalidInput, NotFound
from gateway.services.unit_of_work import UnitOfWork

FORGET_ACTION = "forgot a user"
# What stands in the audit log where a forgotten user's name or keys were.
FORGOTTEN = "[forgotten user]"


def forget_user(
    uow: UnitOfWork,
    box: SecretBox,
    district_ref: str | None,
    user_ref: str,
    *,
    operator: Operator,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Delete USER (by id, or sisID or email within the district) and everything Passback keeps about them.
    Without a district the user must be given by id. The answer counts the rows per table and names no personal
    data; with `dry_run` the same counts, then a rollback."""
    if not user_ref.strip():
        raise InvalidInput("a user is required", fields={"user": ["Give the user's id, sisID or email."]})
    with uow:
        session = uow.session
        if district_ref is None:
            user = _user_by_id(session, user_ref.strip())
            district = find_district(session, user.district_id)
        else:
            district = find_district(session, district_ref)
            user = _find_user(session, district.id, user_ref.strip())
        counts = _forget(session, box, district.id, user)
        report = {
            "district": {"id": district.id, "name": district.name},
            "user": {"id": user.id},
            "operator": operator.name,
            "dryRun": dry_run,
            "deleted": counts,
            "total": sum(counts.values()),
        }
        if dry_run:
            return report  # leaving the unit uncommitted rolls everything back
        # The audit row names the operator (cli:<name>) and the user's id (no longer anyone's), and holds counts.
        admin_audit.record(session, district.id, operator, FORGET_ACTION, user.id, deleted=counts)
        uow.commit()
    return report


def _user_by_id(session: Session, ref: str) -> User:
    user = session.get(User, ref)
    if user is None:
        raise NotFound(
            "no user with this id (give --district to find a user by sisID or email)",
            fields={"user": ["No user with this id; a sisID or email needs the district."]},
            code="user_not_found",
        )
    return user


def _find_user(session: Session, district_id: str, ref: str) -> User:
    user = session.scalar(select(User).where(User.district_id == district_id, User.id == ref))
    if user is not None:
        return user
    found = list(
        session.scalars(
            select(User)
            .where(
                User.district_id == district_id,
                or_(User.sis_id == ref, func.lower(User.email) == ref.lower()),
            )
            .limit(3)
        )
    )
    if len(found) > 1:
        raise Conflict(
            "the sisID or email names more than one user in this district: give the user's id",
            fields={"user": [f"Names {len(found)} or more users; ids: {', '.join(u.id for u in found)}."]},
            code="user_ambiguous",
        )
    if not found:
        raise NotFound(
            "no user with this id, sisID or email in this district",
            fields={"user": ["No user with this id, sisID or email in this district."]},
            code="user_not_found",
        )
    return found[0]


def _forget(session: Session, box: SecretBox, district_id: str, user: User) -> dict[str, int]:
    """Delete, children first, and count per table. Every statement is scoped to the district."""
    grades = select(Grade.id).where(Grade.district_id == district_id, Grade.user_id == user.id)
    grade_ids = set(session.scalars(grades))
    subjects = set(session.scalars(select(LmsIdentity.subject).where(LmsIdentity.user_id == user.id)))
    connections = select(LmsConnection.id).where(LmsConnection.district_id == district_id)
    markers = {user.id, *grade_ids, *subjects, *(v for v in (user.email, user.sis_id) if v)}
    counts: dict[str, int] = {}

    def run(table: str, statement: Delete) -> None:
        result = session.execute(statement.execution_options(synchronize_session=False))
        counts[table] = int(getattr(result, "rowcount", 0) or 0)

    run(
        "webhook_messages",
        delete(WebhookMessage).where(WebhookMessage.district_id == district_id, WebhookMessage.grade_id.in_(grades)),
    )
    counts["idempotency_records"] = _forget_idempotency_records(session, box, district_id, user.id, markers)
    run("deliveries", delete(Delivery).where(Delivery.district_id == district_id, Delivery.grade_id.in_(grades)))
    run(
        "grade_revisions",
        delete(GradeRevision).where(GradeRevision.district_id == district_id, GradeRevision.grade_id.in_(grades)),
    )
    run("grades", delete(Grade).where(Grade.district_id == district_id, Grade.user_id == user.id))
    run(
        "launch_destinations",
        delete(LaunchDestination).where(
            LaunchDestination.district_id == district_id, LaunchDestination.user_id == user.id
        ),
    )
    run(
        "lti_deep_link_sessions",
        delete(DeepLinkSession).where(DeepLinkSession.district_id == district_id, DeepLinkSession.user_id == user.id),
    )
    run(
        "authorization_codes",
        delete(AuthorizationCode).where(
            AuthorizationCode.district_id == district_id, AuthorizationCode.user_id == user.id
        ),
    )
    run("api_tokens", delete(ApiToken).where(ApiToken.district_id == district_id, ApiToken.user_id == user.id))
    run(
        "catalog_snapshots",
        delete(CatalogSnapshot).where(CatalogSnapshot.district_id == district_id, CatalogSnapshot.audience == user.id),
    )
    # The sandbox LMS's gradebook lives in Passback's database (a real LMS's copy is the district's to erase).
    run(
        "sandbox_gradebook",
        delete(SandboxGradebookEntry).where(
            SandboxGradebookEntry.gradebook.in_(connections),
            SandboxGradebookEntry.student_id.in_(sorted({user.id, *subjects})),
        ),
    )
    run("enrollments", delete(Enrollment).where(Enrollment.district_id == district_id, Enrollment.user_id == user.id))
    run(
        "lms_identities",
        delete(LmsIdentity).where(LmsIdentity.district_id == district_id, LmsIdentity.user_id == user.id),
    )
    counts["audit_entries_redacted"] = _redact_audit_log(session, district_id, user, subjects)
    run("users", delete(User).where(User.district_id == district_id, User.id == user.id))
    return counts


def _redact_audit_log(session: Session, district_id: str, user: User, subjects: set[str]) -> int:
    """The audit log stays (who did what is the district's record), but the user's name, email, sisID and LMS
    ids are replaced in the rows about them: a staff fix names the student it enrolled."""
    keys = [k for k in (user.email, user.sis_id, *subjects) if k]
    # The name alone is too common a string to look for everywhere: only in rows that name the user another way.
    words = sorted({*keys, *((user.name,) if user.name.strip() else ())}, key=len, reverse=True)
    redacted = 0
    entries = select(AuditEntry).where(AuditEntry.district_id == district_id)
    for entry in session.scalars(entries.execution_options(yield_per=500)):
        text = entry.target + json.dumps(entry.details)
        about = (entry.details or {}).get("user_id") == user.id or any(json.dumps(k)[1:-1] in text for k in keys)
        if not about or not any(json.dumps(w)[1:-1] in text for w in words):
            continue
        target, details = entry.target, json.dumps(entry.details)
        for word in words:
            target = target.replace(word, FORGOTTEN)
            details = details.replace(json.dumps(word)[1:-1], FORGOTTEN)
        entry.target, entry.details = target, json.loads(details)
        redacted += 1
    session.flush()
    return redacted


def _forget_idempotency_records(
    session: Session, box: SecretBox, district_id: str, user_id: str, markers: Iterable[str]
) -> int:
    """Remembered answers of the user's own token, and any other remembered answer that names the user or one of
    their grades (a grade post's answer carries the user id and student key; others are sealed, so opened)."""
    quoted = [json.dumps(marker) for marker in markers]
    doomed = []
    # At most a day of the district's records (the TTL), read in batches rather than all at once.
    records = select(IdempotencyRecord).where(IdempotencyRecord.district_id == district_id)
    for record in session.scalars(records.execution_options(yield_per=500)):
        if record.scope == user_id or any(q in _answer_text(box, record) for q in quoted):
            doomed.append(record.id)
    for start in range(0, len(doomed), 500):  # bound the IN list
        session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.id.in_(doomed[start : start + 500])))
    return len(doomed)


def _answer_text(box: SecretBox, record: IdempotencyRecord) -> str:
    parts = [json.dumps(record.response_body), record.response_location or ""]
    if record.response_sealed is not None:
        # Sealed with a key since removed: no one can read it any more, and it expires with its TTL.
        with contextlib.suppress(SecretUndecryptable):
            parts.append(json.dumps(box.decrypt_json(record.response_sealed, "a stored Idempotency-Key answer")))
    return "".join(parts)
