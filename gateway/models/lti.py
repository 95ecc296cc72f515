"""Passback's own LTI signing keys."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Boolean, ForeignKey, String, Text
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


class LaunchState(Base):
    """An OIDC login in progress: the state and nonce Passback sent to the platform, used once."""

    __tablename__ = "lti_launch_states"

    state: Mapped[str] = mapped_column(String(64), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(64))
    lms_connection_id: Mapped[str] = mapped_column(ForeignKey("lms_connections.id", ondelete="CASCADE"))
    # The login's target_link_uri: the id_token's claim of the same name must repeat it (LTI Core §5.3.4).
    target_link_uri: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = created_column()
    expires_at: Mapped[datetime] = mapped_column(index=True)
    used_at: Mapped[datetime | None] = mapped_column(default=None)


class UsedNonce(Base):
    """An id_token nonce already accepted from a platform: a second launch with it is a replay."""

    __tablename__ = "lti_used_nonces"

    issuer: Mapped[str] = mapped_column(String(500), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(255), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class AuthorizationCode(Base):
    """An OAuth 2 authorization code for the app sign-in after a launch: single use, short-lived, hashed."""

    __tablename__ = "authorization_codes"

    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    district_id: Mapped[str] = mapped_column(ForeignKey("districts.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    redirect_uri: Mapped[str] = mapped_column(Text)
    scope: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = created_column()
    expires_at: Mapped[datetime] = mapped_column()
    used_at: Mapped[datetime | None] = mapped_column(default=None)
    # The token this code bought, revoked if the code is presented again (RFC 6749 §4.1.2).
    token_id: Mapped[str | None] = mapped_column(ForeignKey("api_tokens.id", ondelete="SET NULL"), default=None)


class DeepLinkSession(Base):
    """A teacher's assignment picker, opened by an LtiDeepLinkingRequest and closed by the signed response."""

    __tablename__ = "lti_deep_link_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    lms_connection_id: Mapped[str] = mapped_column(ForeignKey("lms_connections.id", ondelete="CASCADE"))
    district_id: Mapped[str] = mapped_column(ForeignKey("districts.id", ondelete="CASCADE"))
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), default=None)
    deployment_id: Mapped[str] = mapped_column(String(255))
    return_url: Mapped[str] = mapped_column(Text)
    data: Mapped[str | None] = mapped_column(Text, default=None)
    accept_multiple: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = created_column()
    expires_at: Mapped[datetime] = mapped_column()
    used_at: Mapped[datetime | None] = mapped_column(default=None)
