"""District staff accounts for the dashboard, and the audit log of what they did."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.models.base import Base, created_column, id_column


class StaffRole(StrEnum):
    """What a staff member may do on the dashboard: admins act (retry, pause, fix, configure); viewers look."""

    ADMIN = "admin"
    VIEWER = "viewer"


class StaffUser(Base):
    __tablename__ = "staff_users"

    id: Mapped[str] = id_column()
    district_id: Mapped[str] = mapped_column(ForeignKey("districts.id", ondelete="CASCADE"), index=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    # werkzeug's current default (scrypt); None until the one-time link sets it.
    password_hash: Mapped[str | None] = mapped_column(Text, default=None)
    # SHA-256 of a one-time sign-in link's token, and when it stops working.
    setup_token_hash: Mapped[str | None] = mapped_column(String(64), default=None, unique=True)
    setup_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(default=None)
    last_login_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = created_column()
    role: Mapped[str] = mapped_column(String(20), default=StaffRole.ADMIN, server_default=StaffRole.ADMIN.value)

    @property
    def can_act(self) -> bool:
        return self.role == StaffRole.ADMIN


class StaffSession(Base):
    """A signed-in dashboard session. The cookie carries only a random token; this row, found by the token's
    SHA-256, is what makes it valid, so signing out (revoked_at) ends it for every copy of the cookie."""

    __tablename__ = "staff_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # SHA-256 of the cookie's session token
    staff_id: Mapped[str] = mapped_column(ForeignKey("staff_users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = created_column()
    last_seen_at: Mapped[datetime] = created_column()
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class SignInFailure(Base):
    """One failed dashboard sign-in from a network address: counted to limit guessing per address."""

    __tablename__ = "sign_in_failures"
    __table_args__ = (Index("ix_sign_in_failures_address_created", "address", "created_at"),)

    id: Mapped[str] = id_column()
    address: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = created_column()


class AuditEntry(Base):
    """Who did what, when: every dashboard action is written here, in the same transaction as the action."""

    __tablename__ = "audit_entries"
    __table_args__ = (Index("ix_audit_district_created", "district_id", "created_at"),)

    id: Mapped[str] = id_column()
    district_id: Mapped[str] = mapped_column(ForeignKey("districts.id", ondelete="CASCADE"))
    staff_id: Mapped[str | None] = mapped_column(ForeignKey("staff_users.id", ondelete="SET NULL"), default=None)
    staff_email: Mapped[str] = mapped_column(String(320))
    action: Mapped[str] = mapped_column(String(60))
    target: Mapped[str] = mapped_column(String(200), default="")
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = created_column()
