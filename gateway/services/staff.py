"""Staff accounts: creation, sign-in with lockout, one-time setup links, and the audit log."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from gateway.crypto import hash_token
from gateway.models import AuditEntry, StaffUser, utcnow
from gateway.services.directory import get_district
from gateway.services.errors import Conflict, InvalidInput, ServiceError

MAX_FAILED_LOGINS = 5
LOCKOUT_SECONDS = 15 * 60
SETUP_LINK_SECONDS = 24 * 3600
MIN_PASSWORD_LENGTH = 12
# Checked against when the email is unknown, so a wrong email costs as much time as a wrong password.
_DUMMY_HASH = generate_password_hash("passback-dummy-password")


class SignInRefused(ServiceError):
    status = 401
    code = "sign_in_refused"


@dataclass(frozen=True)
class CreatedStaff:
    staff: StaffUser
    setup_token: str | None


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(
            f"password must be at least {MIN_PASSWORD_LENGTH} characters",
            fields={"password": [f"At least {MIN_PASSWORD_LENGTH} characters."]},
        )


def create_staff(
    session: Session, district_id: str, email: str, password: str | None = None, *, now: datetime | None = None
) -> CreatedStaff:
    """A staff member of one district. Without a password, a one-time setup token (24 h) is returned."""
    now = now or utcnow()
    get_district(session, district_id)
    email = email.strip().lower()
    if "@" not in email or len(email) > 320:
        raise InvalidInput("a valid email is required", fields={"email": ["Not an email address."]})
    if session.scalar(select(StaffUser.id).where(func.lower(StaffUser.email) == email)):
        raise Conflict(f"a staff account for {email} exists")
    staff = StaffUser(district_id=district_id, email=email)
    token = None
    if password is not None:
        _check_password(password)
        staff.password_hash = generate_password_hash(password)
    else:
        token = secrets.token_urlsafe(32)
        staff.setup_token_hash = hash_token(token)
        staff.setup_expires_at = now + timedelta(seconds=SETUP_LINK_SECONDS)
    session.add(staff)
    session.flush()
    return CreatedStaff(staff, token)


def sign_in(session: Session, email: str, password: str, *, now: datetime | None = None) -> StaffUser:
    """Check credentials. Five failures lock the account for 15 minutes; the error never says which part
    was wrong."""
    now = now or utcnow()
    staff = session.scalar(
        select(StaffUser).where(func.lower(StaffUser.email) == email.strip().lower()).with_for_update()
    )
    if staff is None or staff.password_hash is None:
        check_password_hash(_DUMMY_HASH, password)
        raise SignInRefused("email or password is not right")
    if staff.locked_until is not None and staff.locked_until > now:
        raise SignInRefused("too many failed attempts: this account is locked for a while, try again later")
    if not check_password_hash(staff.password_hash, password):
        staff.failed_logins += 1
        if staff.failed_logins >= MAX_FAILED_LOGINS:
            staff.locked_until = now + timedelta(seconds=LOCKOUT_SECONDS)
            staff.failed_logins = 0
        raise SignInRefused("email or password is not right")
    staff.failed_logins = 0
    staff.locked_until = None
    staff.last_login_at = now
    return staff


def complete_setup(session: Session, token: str, password: str, *, now: datetime | None = None) -> StaffUser:
    """Use a one-time setup link: set the password and spend the link."""
    now = now or utcnow()
    staff = session.scalar(select(StaffUser).where(StaffUser.setup_token_hash == hash_token(token)))
    if staff is None or staff.setup_expires_at is None or staff.setup_expires_at < now:
        raise SignInRefused("this link has expired or was already used: ask for a new one")
    _check_password(password)
    staff.password_hash = generate_password_hash(password)
    staff.setup_token_hash = None
    staff.setup_expires_at = None
    staff.last_login_at = now
    return staff


def audit(session: Session, staff: StaffUser, action: str, target: str = "", **details: Any) -> None:
    """Record a staff action in the district's audit log (same transaction as the action)."""
    session.add(
        AuditEntry(
            district_id=staff.district_id,
            staff_id=staff.id,
            staff_email=staff.email,
            action=action,
            target=target[:200],
            details=details,
        )
    )
