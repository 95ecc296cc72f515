"""How district staff enter and leave the dashboard, each one unit of work: sign-in (with its lockout counts and
audit row), the one-time setup link, resuming a session on each request, and sign-out. Sign-in and setup return
the new session's token for the cookie (only its hash is stored)."""

from __future__ import annotations

from gateway.models import StaffUser
from gateway.services import staff
from gateway.services.errors import ServiceError
from gateway.services.unit_of_work import UnitOfWork


def sign_in(uow: UnitOfWork, email: str, password: str, *, address: str, replaced_token: str | None) -> str:
    """Check the address's and the account's failed attempts, then the password. A refused password is counted
    (committed) before the refusal is raised; TooManyAttempts counts nothing."""
    with uow:
        try:
            staff.check_address(uow.session, address)
            signed_in = staff.sign_in(uow.session, email, password)
        except staff.TooManyAttempts:
            raise
        except ServiceError:
            staff.record_failure(uow.session, address)
            uow.commit()  # keep the failed-attempt counts
            raise
        staff.audit(uow.session, signed_in, "signed in")
        token = _replace_session(uow, signed_in, replaced_token)
        uow.commit()
        return token


def complete_setup(uow: UnitOfWork, setup_token: str, password: str, *, replaced_token: str | None) -> str:
    """Spend a one-time setup link: set the password and sign in."""
    with uow:
        signed_in = staff.complete_setup(uow.session, setup_token, password)
        staff.audit(uow.session, signed_in, "set password")
        token = _replace_session(uow, signed_in, replaced_token)
        uow.commit()
        return token


def resume(uow: UnitOfWork, token: str, *, lifetime_seconds: int, idle_seconds: int) -> StaffUser | None:
    """The staff member of a live session (its last-seen time moved on); SessionExpired once it is too old, the
    session then revoked."""
    with uow:
        try:
            resumed = staff.resume_session(
                uow.session, token, lifetime_seconds=lifetime_seconds, idle_seconds=idle_seconds
            )
        except staff.SessionExpired:
            uow.commit()  # keep the revocation
            raise
        uow.commit()
        return resumed


def sign_out(uow: UnitOfWork, token: str) -> None:
    with uow:
        staff.end_session(uow.session, token)
        uow.commit()


def _replace_session(uow: UnitOfWork, signed_in: StaffUser, replaced_token: str | None) -> str:
    if replaced_token:
        staff.end_session(uow.session, replaced_token)  # the browser's earlier session, replaced by this one
    return staff.start_session(uow.session, signed_in)
