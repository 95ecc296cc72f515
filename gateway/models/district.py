"""Districts, learning apps, their authorization, tokens and users."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from gateway.models.base import Base, created_column, id_column, utcnow


class District(Base):
    __tablename__ = "districts"

    id: Mapped[str] = id_column()
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = created_column()
    # The IANA zone (e.g. America/Chicago) staff read times in; everything is stored in UTC.
    time_zone: Mapped[str] = mapped_column(String(64), default="UTC", server_default="UTC")


class App(Base):
    """A learning-app partner. Apps are global; what they may do in a district goes through DistrictApp."""

    __tablename__ = "apps"

    id: Mapped[str] = id_column()
    name: Mapped[str] = mapped_column(String(200))
    client_id: Mapped[str] = mapped_column(String(64), unique=True)
    client_secret_hash: Mapped[str] = mapped_column(String(200))
    redirect_uri: Mapped[str] = mapped_column(Text)
    catalog_url: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = created_column()


class DistrictApp(Base):
    __tablename__ = "district_apps"
    __table_args__ = (UniqueConstraint("district_id", "app_id"),)

    id: Mapped[str] = id_column()
    district_id: Mapped[str] = mapped_column(ForeignKey("districts.id", ondelete="CASCADE"))
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = created_column()
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)

    app: Mapped[App] = relationship(lazy="joined")
    district: Mapped[District] = relationship(lazy="joined")


class TokenKind(StrEnum):
    DISTRICT_APP = "district_app"
    USER = "user"


class ApiToken(Base):
    """A bearer token. Only its SHA-256 is stored: tokens are 256-bit random, so a fast hash is enough."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = id_column()
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(20))
    district_id: Mapped[str] = mapped_column(ForeignKey("districts.id", ondelete="CASCADE"), index=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), default=None)
    scopes: Mapped[str] = mapped_column(String(500), default="")
    label: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = created_column()
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)

    @property
    def scope_set(self) -> frozenset[str]:
        return frozenset(self.scopes.split())


class UserRole(StrEnum):
    STUDENT = "student"
    TEACHER = "teacher"


class User(Base):
    """A Passback user: a stable id in one district, with the LMS identities that map to it."""

    __tablename__ = "users"
    # Apps address students by sisID or email within one district (gateway/services/directory.py): one index seek.
    __table_args__ = (
        Index("ix_users_district_sis_id", "district_id", "sis_id"),
        Index("ix_users_district_email", "district_id", "email"),
        # GET /v1/users pages a district's users oldest first, and `updatedSince` finds the recently changed ones.
        Index("ix_users_district_created", "district_id", "created_at", "id"),
        Index("ix_users_district_updated", "district_id", "updated_at"),
    )

    id: Mapped[str] = id_column()
    district_id: Mapped[str] = mapped_column(ForeignKey("districts.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(20), default=UserRole.STUDENT)
    name: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str | None] = mapped_column(String(320), default=None)
    # The student information system's id (LIS person sourcedId), for roster matching.
    sis_id: Mapped[str | None] = mapped_column(String(255), default=None)
    created_at: Mapped[datetime] = created_column()
    # Any change of the row's own columns (a launch refreshing the name, an operator setting the SIS id).
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class LmsIdentity(Base):
    """How one LMS names a Passback user: (issuer, subject) is unique within a district."""

    __tablename__ = "lms_identities"
    __table_args__ = (
        UniqueConstraint("district_id", "issuer", "subject"),
        # An app addresses a student by the id one connection knows them by (lmsUserID with lms).
        Index("ix_lms_identities_connection_subject", "lms_connection_id", "subject"),
        # `updatedSince` on GET /v1/users: users who got an LMS identity since.
        Index("ix_lms_identities_district_created", "district_id", "created_at"),
    )

    id: Mapped[str] = id_column()
    district_id: Mapped[str] = mapped_column(ForeignKey("districts.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    lms_connection_id: Mapped[str | None] = mapped_column(
        ForeignKey("lms_connections.id", ondelete="SET NULL"), default=None
    )
    issuer: Mapped[str] = mapped_column(String(500))
    subject: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = created_column()


class Enrollment(Base):
    """A user's membership in an LMS course, learned at launch, from a roster, or added by an operator."""

    __tablename__ = "enrollments"
    __table_args__ = (
        UniqueConstraint("lms_connection_id", "course_id", "user_id"),
        Index("ix_enrollments_user", "district_id", "user_id"),
        # `updatedSince` on GET /v1/users: users enrolled (so shown to an app) since.
        Index("ix_enrollments_district_updated", "district_id", "updated_at"),
    )

    id: Mapped[str] = id_column()
    district_id: Mapped[str] = mapped_column(ForeignKey("districts.id", ondelete="CASCADE"))
    lms_connection_id: Mapped[str] = mapped_column(ForeignKey("lms_connections.id", ondelete="CASCADE"))
    course_id: Mapped[str] = mapped_column(String(255))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(20), default=UserRole.STUDENT)
    source: Mapped[str] = mapped_column(String(20), default="manual")
    created_at: Mapped[datetime] = created_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
