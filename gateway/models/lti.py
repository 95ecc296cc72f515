"""Passback's own LTI signing keys."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import String, Text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.models.base import Base, created_column


class ToolKeyStatus(StrEnum):
    CURRENT = "current"
    # Still published in the JWKS during rotation, so LMSs that cached it can verify in-flight messages.
    PREVIOUS = "previous"
    RETIRED = "retired"


class ToolKey(Base):
    """An RSA key Passback signs with (client assertions, deep-linking responses); the private half encrypted."""

    __tablename__ = "tool_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    private_key_encrypted: Mapped[str] = mapped_column(Text)
    public_jwk: Mapped[dict[str, Any]] = mapped_column()
    status: Mapped[str] = mapped_column(String(10), index=True)
    created_at: Mapped[datetime] = created_column()
    retired_at: Mapped[datetime | None] = mapped_column(default=None)


class CachedAccessToken(Base):
    """An LMS access token shared by every worker until shortly before it expires; stored encrypted."""

    __tablename__ = "cached_access_tokens"

    # SHA-256 of the adapter's cache key (platform, client id, scopes).
    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_encrypted: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column()
    created_at: Mapped[datetime] = created_column()
