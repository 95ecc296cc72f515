"""Staff accounts: creation, sign-in with lockout, one-time setup links, and the audit log."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from gateway.crypto import hash_token
from gateway.models import AuditEntry, SignInFailure, StaffRole, StaffSession, StaffUser, utcnow
from gateway.services.directory import get_district
from gateway.services.errors import Conflict, InvalidInput, ServiceError

MAX_FAILED_LOGINS = 5
LOCKOUT_SECONDS = 15 * 60
# Per network address, whatever the accounts tried: enough for a school's shared NAT, too few to guess or to
# lock a district's staff out one by one.
MAX_FAILURES_PER_ADDRESS = 20
ADDRESS_WINDOW_SECONDS = 15 * 60
# One answer for an unknown email, a wrong password and a locked account, so none can be told apart.
SIGN_IN_REFUSED = (
    "The email or password is incorrect, or the account is locked after too many attempts: "
    f"check them, or wait {LOCKOUT_SECONDS // 60} minutes and try again."
)
SETUP_LINK_SECONDS = 24 * 3600
MIN_PASSWORD_LENGTH = 12
# Checked against when the email is unknown, so a wrong email costs as much time as a wrong password.
_DUMMY_HASH = generate_password_hash("passback-dummy-password")


class SignInRefused(ServiceError):
    status = 401
    code = "sign_in_refused"


class TooManyAttempts(ServiceError):
    status = 429
    code = "too_many_attempts"


class SessionExpired(ServiceError):
    status = 401
    code = "session_expired"


@dataclass(frozen=True)
class CreatedStaff:
    staff: StaffUser
    setup_token: str | None


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(
            f"password must be at least {MIN_PASSWORD_LENGTH} characters",
            fields={"password": [f"At least {MIN_PASSWORD_LENGTH} characters."]},
        )


def create_staff(
    session: Session,
    district_id: str,
    email: str,
    password: str | None = None,
    *,
    role: str = StaffRole.ADMIN,
    now: datetime | None = None,
) -> CreatedStaff:
    """A staff member of one district. Without a password, a one-time setup token (24 h) is returned."""
    now = now or utcnow()
    role = parse_role(role)
    get_district(session, district_id)
    email = email.strip().lower()
    if "@" not in email or len(email) > 320:
        raise InvalidInput("a valid email is required", fields={"email": ["Not an email address."]})
    if session.scalar(select(StaffUser.id).where(func.lower(StaffUser.email) == email)):
        raise Conflict(f"a staff account for {email} exists")
    staff = StaffUser(district_id=district_id, email=email, role=role)
    token = None
    if password is not None:
        check_password(password)
        staff.password_hash = generate_password_hash(password)
    else:
        token = secrets.token_urlsafe(32)
        staff.setup_token_hash = hash_token(token)
        staff.setup_expires_at = now + timedelta(seconds=SETUP_LINK_SECONDS)
    session.add(staff)
    session.flush()
    return CreatedStaff(staff, token)


def parse_role(role: str) -> StaffRole:
    try:
        return StaffRole(role)
    except ValueError:
        roles = ", ".join(r.value for r in StaffRole)
        raise InvalidInput(f"role must be one of {roles}", fields={"role": [f"One of: {roles}."]}) from None


def sign_in(session: Session, email: str, password: str, *, now: datetime | None = None) -> StaffUser:
    """Check credentials. Five failures lock the account for 15 minutes. An unknown email, a wrong password
    and a locked account get the same answer and cost the same password-hash time."""
    now = now or utcnow()
    staff = session.scalar(
        select(StaffUser).where(func.lower(StaffUser.email) == email.strip().lower()).with_for_update()
    )
    if staff is None or staff.password_hash is None:
        check_password_hash(_DUMMY_HASH, password)
        raise SignInRefused(SIGN_IN_REFUSED)
    if staff.locked_until is not None and staff.locked_until > now:
        check_password_hash(_DUMMY_HASH, password)
        raise SignInRefused(SIGN_IN_REFUSED)
    if not check_password_hash(staff.password_hash, password):
        staff.failed_logins += 1
        if staff.failed_logins >= MAX_FAILED_LOGINS:
            staff.locked_until = now + timedelta(seconds=LOCKOUT_SECONDS)
            staff.failed_logins = 0
        raise SignInRefused(SIGN_IN_REFUSED)
    staff.failed_logins = 0
    staff.locked_until = None
    staff.last_login_at = now
    return staff


def check_address(session: Session, address: str, *, now: datetime | None = None) -> None:
    """Refuse (429) an address with too many failed sign-ins in the window, before any password is checked."""
    now = now or utcnow()
    since = now - timedelta(seconds=ADDRESS_WINDOW_SECONDS)
    failures = session.scalar(
        select(func.count())
        .select_from(SignInFailure)
        .where(SignInFailure.address == address[:64], SignInFailure.created_at > since)
    )
    if (failures or 0) >= MAX_FAILURES_PER_ADDRESS:
        raise TooManyAttempts(
            f"Too many failed sign-ins from your network address: wait {ADDRESS_WINDOW_SECONDS // 60} minutes "
            "and try again."
        )


def record_failure(session: Session, address: str, *, now: datetime | None = None) -> None:
    """Count a failed sign-in (or setup) of this address; rows older than the window are dropped."""
    now = now or utcnow()
    since = now - timedelta(seconds=ADDRESS_WINDOW_SECONDS)
    session.execute(
        delete(SignInFailure).where(SignInFailure.address == address[:64], SignInFailure.created_at <= since)
    )
    session.add(SignInFailure(address=address[:64], created_at=now))


def start_session(session: Session, staff: StaffUser, *, now: datetime | None = None) -> str:
    """A new server-side session; returns the token for the cookie (only its hash is stored)."""
    now = now or utcnow()
    raw = secrets.token_urlsafe(32)
    session.add(StaffSession(id=hash_token(raw), staff_id=staff.id, created_at=now, last_seen_at=now))
    return raw


def resume_session(
    session: Session, raw: str, *, lifetime_seconds: int, idle_seconds: int, now: datetime | None = None
) -> StaffUser | None:
    """The staff member of a live session, its last-seen time moved on; None for a token that names no session
    or a revoked one; SessionExpired (and revoked) once it is older than the lifetime or idle too long."""
    now = now or utcnow()
    row = session.get(StaffSession, hash_token(raw))
    if row is None or row.revoked_at is not None:
        return None
    if (now - row.created_at).total_seconds() > lifetime_seconds or (
        now - row.last_seen_at
    ).total_seconds() > idle_seconds:
        row.revoked_at = now
        raise SessionExpired("Your session has expired: please sign in again.")
    row.last_seen_at = now
    return session.get(StaffUser, row.staff_id)


def end_session(session: Session, raw: str, *, now: datetime | None = None) -> None:
    """Sign out: the session is revoked, so a copy of its cookie no longer works either."""
    row = session.get(StaffSession, hash_token(raw))
    if row is not None and row.revoked_at is None:
        row.revoked_at = now or utcnow()


def complete_setup(session: Session, token: str, password: str, *, now: datetime | None = None) -> StaffUser:
    """Use a one-time setup link: set the password and spend the link."""
    now = now or utcnow()
    staff = session.scalar(select(StaffUser).where(StaffUser.setup_token_hash == hash_token(token)))
    if staff is None or staff.setup_expires_at is None or staff.setup_expires_at < now:
        raise SignInRefused("this link has expired or was already used: ask for a new one")
    check_password(password)
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
