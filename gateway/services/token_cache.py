"""The database-backed AccessTokenCache: one LMS access token per platform and scope set, shared by all
workers and processes, encrypted at rest."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from sqlalchemy import delete

from gateway.crypto import SecretBox
from gateway.db import Database
from gateway.models import CachedAccessToken, utcnow


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class DatabaseTokenCache:
    def __init__(self, db: Database, box: SecretBox) -> None:
        self.db = db
        self.box = box

    def get(self, key: str) -> str | None:
        with self.db.transaction() as session:
            row = session.get(CachedAccessToken, _hash(key))
            if row is None or row.expires_at <= utcnow():
                return None
            return str(self.box.decrypt_json(row.token_encrypted))

    def put(self, key: str, token: str, expires_in: float) -> None:
        with self.db.transaction() as session:
            row = session.get(CachedAccessToken, _hash(key), with_for_update=True)
            if row is None:
                row = CachedAccessToken(key_hash=_hash(key))
                session.add(row)
            row.token_encrypted = self.box.encrypt_json(token)
            row.expires_at = utcnow() + timedelta(seconds=expires_in)

    def drop(self, key: str) -> None:
        with self.db.transaction() as session:
            session.execute(delete(CachedAccessToken).where(CachedAccessToken.key_hash == _hash(key)))
