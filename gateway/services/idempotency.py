"""Idempotency-Key: the same key with the same request replays the first answer; with another request, 409."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from gateway.models import IdempotencyRecord, utcnow
from gateway.services.auth import Principal
from gateway.services.errors import Conflict, InvalidInput

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


@dataclass(frozen=True)
class Replay:
    status: int
    body: dict[str, Any]
    location: str | None


def find_replay(
    session: Session,
    principal: Principal,
    key: str,
    request_fingerprint: str,
    *,
    ttl_seconds: float,
    now: datetime | None = None,
) -> Replay | None:
    """The stored answer for this key, None if unseen (or expired); Conflict if the key came with another body."""
    now = now or utcnow()
    record = session.scalar(
        select(IdempotencyRecord).where(
            IdempotencyRecord.district_id == principal.district_id,
            IdempotencyRecord.app_id == principal.app_id,
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
    """Store the answer in the same transaction as the work it describes."""
    session.add(
        IdempotencyRecord(
            district_id=principal.district_id,
            app_id=principal.app_id,
            key=key,
            request_fingerprint=request_fingerprint,
            response_status=status,
            response_body=body,
            response_location=location,
        )
    )
