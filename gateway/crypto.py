"""Hashing of bearer tokens and client secrets, and encryption of LMS secrets at rest."""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from gateway.services.errors import ServiceError

TOKEN_PREFIX = "pb_"  # noqa: S105 - a public prefix, not a secret


def generate_token() -> str:
    """A bearer token: 256 random bits, prefixed so leaked tokens are easy to recognise in scans."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(raw: str) -> str:
    # Tokens carry 256 bits of entropy, so a plain SHA-256 cannot be brute-forced; a slow hash would only
    # slow every request down.
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


class SecretUndecryptable(ServiceError):
    """A stored secret was encrypted with a key that is not among the configured ones (e.g. a database copied
    to a host with other keys). Nothing is wrong with the request: Passback cannot act until a person fixes the
    keys, so the API answers 503 and pages say so."""

    status = 503
    code = "secret_undecryptable"

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what} cannot be decrypted with the configured keys: add the key it was encrypted with to "
            "GATEWAY_ENCRYPTION_KEYS, or enter the secret again"
        )


class SecretBox:
    """Fernet encryption of JSON values. Several keys: the first encrypts, all decrypt (key rotation)."""

    def __init__(self, keys: str) -> None:
        parts = [k.strip() for k in keys.split(",") if k.strip()]
        if not parts:
            raise ValueError("GATEWAY_ENCRYPTION_KEYS is empty")
        self._fernet = MultiFernet([Fernet(k.encode()) for k in parts])

    def encrypt_json(self, value: Any) -> str:
        return self._fernet.encrypt(json.dumps(value, separators=(",", ":")).encode()).decode()

    def decrypt_json(self, token: str, what: str = "a stored secret") -> Any:
        """`what` names the secret in the error a wrong key raises (SecretUndecryptable)."""
        try:
            return json.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken as exc:
            raise SecretUndecryptable(what) from exc
