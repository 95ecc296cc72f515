"""The database-backed AccessTokenCache: one LMS access token per platform and scope set, shared by all
workers and processes, encrypted at rest."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from gateway.crypto import SecretBox, SecretUndecryptable
from gateway.db import Database
from gateway.metrics import count_token_fetch
from gateway.models import CachedAccessToken, utcnow


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def token_expiries(session: Session, keys: Iterable[str]) -> dict[str, datetime]:
    """When the tokens cached under these keys expire (keys with no token left out, expired ones kept); only
    presence and expiry are read, never a token."""
    by_hash = {_hash(key): key for key in keys}
    if not by_hash:
        return {}
    rows = session.execute(
        select(CachedAccessToken.key_hash, CachedAccessToken.expires_at).where(
            CachedAccessToken.key_hash.in_(list(by_hash))
        )
    )
    return {by_hash[key_hash]: expires_at for key_hash, expires_at in rows}


class DatabaseTokenCache:
    """Tokens in the database, shared by every process; each cache also keeps those it has read or written in
    memory, so that a delivery does not read the database for one every time. Another cache's drop (after a
    401) reaches this one at its own 401, which drops the token here too. The adapter factory holds one per
    process (or worker)."""

    def __init__(self, db: Database, box: SecretBox) -> None:
        self.db = db
        self.box = box
        self._memory: dict[str, tuple[str, float]] = {}
        self._memory_lock = threading.Lock()

    def _remember(self, key_hash: str, token: str, seconds_left: float) -> None:
        with self._memory_lock:
            self._memory[key_hash] = (token, time.monotonic() + seconds_left)

    def _forget(self, key_hash: str) -> None:
        with self._memory_lock:
            self._memory.pop(key_hash, None)

    def get(self, key: str) -> str | None:
        key_hash = _hash(key)
        with self._memory_lock:
            found = self._memory.get(key_hash)
        if found is not None and found[1] > time.monotonic():
            return found[0]
        with self.db.transaction() as session:
            row = session.get(CachedAccessToken, key_hash)
            now = utcnow()
            if row is None or row.expires_at <= now:
                return None
            try:
                token = str(self.box.decrypt_json(row.token_encrypted))
            except SecretUndecryptable:
                return None  # cached under a key not configured here: a new token replaces it (put)
            self._remember(key_hash, token, (row.expires_at - now).total_seconds())
            return token

    def put(self, key: str, token: str, expires_in: float) -> None:
        count_token_fetch()  # a token is put only when one was fetched
        with self.db.transaction() as session:
            row = session.get(CachedAccessToken, _hash(key), with_for_update=True)
            if row is None:
                row = CachedAccessToken(key_hash=_hash(key))
                session.add(row)
            row.token_encrypted = self.box.encrypt_json(token)
            row.expires_at = utcnow() + timedelta(seconds=expires_in)
        self._remember(_hash(key), token, expires_in)

    def drop(self, key: str) -> None:
        self._forget(_hash(key))
        with self.db.transaction() as session:
            session.execute(delete(CachedAccessToken).where(CachedAccessToken.key_hash == _hash(key)))
