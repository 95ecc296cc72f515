"""Idempotency-Key: the same key with the same request replays the first answer; with another request, 409.

A key belongs to the token's district and app, and to its user for a user token (two students' keys never
meet). POST /v1/grade stores its answer itself, in the grade's transaction (grade_intake.post_grade); every
other mutating /v1 operation goes through `answer_once`, which runs the view inside one transaction that also
stores the answer, so the work and its remembered answer are committed together or not at all, and two
concurrent requests with one key do the work once."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.crypto import SecretBox
from gateway.models import IdempotencyRecord, utcnow
from gateway.services.auth import Principal
from gateway.services.errors import Conflict, InvalidInput
from gateway.services.unit_of_work import UnitOfWork

MAX_KEY_LENGTH = 255


def check_key(key: str) -> str:
    key = key.strip()
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidInput(
            "Idempotency-Key must be 1 to 255 printable characters",
            fields={"Idempotency-Key": ["Must be 1 to 255 printable characters."]},
        )
    return key


def fingerprint(method: str, path: str, body: Any, principal: Principal) -> str:
    canonical = json.dumps([method, path, principal.user_id, body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def key_scope(principal: Principal) -> str:
    """Within the district and app: the user of a user token, "" for the district-app token."""
    return principal.user_id or ""


@dataclass(frozen=True)
class KeyedRequest:
    """A request that carried an Idempotency-Key: the key, what identifies the request, how long it is kept."""

    key: str
    fingerprint: str
    ttl_seconds: float
    now: datetime | None = None


@dataclass(frozen=True)
class Replay:
    status: int
    body: dict[str, Any]
    location: str | None


@dataclass(frozen=True)
class StoredAnswer:
    """An answer as the client received it: status, body text and the headers the view set."""

    status: int
    body: str
    headers: Mapping[str, str] = field(default_factory=dict)
    keep: bool = True  # False for an answer that cannot be stored whole (a streamed body)

    def worth_keeping(self) -> bool:
        """Only a success is remembered: after a refusal, the corrected request may reuse the key."""
        return self.keep and 200 <= self.status < 300


def _find_record(
    session: Session, principal: Principal, key: str, request_fingerprint: str, ttl_seconds: float, now: datetime
) -> IdempotencyRecord | None:
    """The live record of this key, None if unseen (or expired, then deleted); Conflict if the key came with
    another request."""
    record = session.scalar(
        select(IdempotencyRecord).where(
            IdempotencyRecord.district_id == principal.district_id,
            IdempotencyRecord.app_id == principal.app_id,
            IdempotencyRecord.scope == key_scope(principal),
            IdempotencyRecord.key == key,
        )
    )
    if record is None:
        return None
    if record.created_at < now - timedelta(seconds=ttl_seconds):
        session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.id == record.id))
        session.flush()
        return None
    if record.request_fingerprint != request_fingerprint:
        raise Conflict(
            "this Idempotency-Key was already used with a different request",
            fields={"Idempotency-Key": ["Already used with a different request body."]},
            code="idempotency_key_reused",
        )
    return record


def find_replay(
    session: Session,
    principal: Principal,
    key: str,
    request_fingerprint: str,
    *,
    ttl_seconds: float,
    now: datetime | None = None,
) -> Replay | None:
    """POST /v1/grade's stored answer for this key, None if unseen (or expired); Conflict if the key came with
    another request."""
    record = _find_record(session, principal, key, request_fingerprint, ttl_seconds, now or utcnow())
    if record is None:
        return None
    assert record.response_body is not None  # a fingerprint of POST /v1/grade is only ever stored by it
    return Replay(record.response_status, record.response_body, record.response_location)


def remember(
    session: Session,
    principal: Principal,
    key: str,
    request_fingerprint: str,
    status: int,
    body: dict[str, Any],
    location: str | None,
) -> None:
    """Store POST /v1/grade's answer in the same transaction as the grade it describes."""
    session.add(
        IdempotencyRecord(
            district_id=principal.district_id,
            app_id=principal.app_id,
            scope=key_scope(principal),
            key=key,
            request_fingerprint=request_fingerprint,
            response_status=status,
            response_body=body,
            response_location=location,
        )
    )


def find_answer(session: Session, box: SecretBox, principal: Principal, keyed: KeyedRequest) -> StoredAnswer | None:
    """The stored answer for this key, whichever operation stored it; None if unseen or expired."""
    record = _find_record(session, principal, keyed.key, keyed.fingerprint, keyed.ttl_seconds, keyed.now or utcnow())
    if record is None:
        return None
    if record.response_sealed is not None:
        sealed = box.decrypt_json(record.response_sealed, "a stored Idempotency-Key answer")
        return StoredAnswer(record.response_status, sealed["body"], sealed["headers"])
    headers = {"Location": record.response_location} if record.response_location else {}
    body = json.dumps(record.response_body, separators=(",", ":"))
    return StoredAnswer(record.response_status, body, {"Content-Type": "application/json", **headers})


def store_answer(
    session: Session, box: SecretBox, principal: Principal, keyed: KeyedRequest, answer: StoredAnswer
) -> None:
    """Keep the answer encrypted: some answers show a secret once (a webhook's signing secret)."""
    session.add(
        IdempotencyRecord(
            district_id=principal.district_id,
            app_id=principal.app_id,
            scope=key_scope(principal),
            key=keyed.key,
            request_fingerprint=keyed.fingerprint,
            response_status=answer.status,
            response_sealed=box.encrypt_json({"body": answer.body, "headers": dict(answer.headers)}),
            created_at=keyed.now or utcnow(),
        )
    )


@dataclass(frozen=True)
class Answered:
    answer: StoredAnswer
    replayed: bool


def answer_once(
    uow: UnitOfWork,
    box: SecretBox,
    principal: Principal,
    keyed: KeyedRequest,
    respond: Callable[[UnitOfWork], StoredAnswer],
) -> Answered:
    """The stored answer to this key, or `respond`'s (the view, whose units of work run within `uow`) stored
    with its work in one commit. A request that fails (an exception) leaves nothing behind, and one that
    loses a race with the same key is answered with the winner's answer."""
    with uow:
        stored = find_answer(uow.session, box, principal, keyed)
        if stored is not None:
            uow.commit()
            return Answered(stored, replayed=True)
        try:
            answer = respond(uow)
        except IntegrityError:
            # The work collided with a concurrent request's: if that one had this key, its answer is this one's.
            replay = _winners_answer(uow, box, principal, keyed)
            if replay is None:
                raise
            return replay
        if answer.worth_keeping():
            store_answer(uow.session, box, principal, keyed, answer)
        try:
            uow.commit()
        except IntegrityError:
            # A concurrent request with the same key committed first: its work stands, this one's is undone.
            replay = _winners_answer(uow, box, principal, keyed)
            if replay is None:
                raise
            return replay
        return Answered(answer, replayed=False)


def _winners_answer(uow: UnitOfWork, box: SecretBox, principal: Principal, keyed: KeyedRequest) -> Answered | None:
    """After a unique-constraint collision: roll this request's work back, and answer with what a concurrent
    request with the same key stored, if it did."""
    uow.rollback()
    stored = find_answer(uow.session, box, principal, keyed)
    if stored is None:
        return None
    uow.commit()
    return Answered(stored, replayed=True)
