"""The app sign-in after a launch: a short-lived, single-use authorization code for the app's redirect URI,
exchanged at POST /oauth/tokens for a user token (the flow Clever's Instant Login uses)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from gateway.crypto import generate_token, hash_token
from gateway.models import ApiToken, App, AuthorizationCode, TokenKind, utcnow
from gateway.services.directory import IssuedToken, issue_token
from gateway.services.unit_of_work import UnitOfWork

CODE_SECONDS = 60
USER_TOKEN_SECONDS = 8 * 3600
USER_TOKEN_SCOPES = "grades:write grades:read assignments:read"  # noqa: S105 - scope names


def sign_in_redirect(
    session: Session,
    app: App,
    district_id: str,
    user_id: str,
    assignment_external_id: str,
    *,
    now: datetime | None = None,
) -> str:
    """Mint a code for this user and app and return the app's redirect URI with `code` and
    `state=assignment:{id}`."""
    now = now or utcnow()
    raw = generate_token()
    session.add(
        AuthorizationCode(
            code_hash=hash_token(raw),
            app_id=app.id,
            district_id=district_id,
            user_id=user_id,
            redirect_uri=app.redirect_uri,
            scope=USER_TOKEN_SCOPES,
            created_at=now,
            expires_at=now + timedelta(seconds=CODE_SECONDS),
        )
    )
    parts = urlsplit(app.redirect_uri)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query += [("code", raw), ("scopes", USER_TOKEN_SCOPES), ("state", f"assignment:{assignment_external_id}")]
    return urlunsplit(parts._replace(query=urlencode(query)))


def find_code(session: Session, raw: str, app_id: str, *, now: datetime | None = None) -> AuthorizationCode | None:
    """The code if it exists, belongs to this app, is unused and unexpired; locked for the exchange."""
    now = now or utcnow()
    code = session.scalar(
        select(AuthorizationCode).where(AuthorizationCode.code_hash == hash_token(raw)).with_for_update()
    )
    if code is None or code.app_id != app_id or code.used_at is not None or code.expires_at < now:
        return None
    return code


def redeem_code(
    session: Session, code: AuthorizationCode, *, raw_token: str | None = None, now: datetime | None = None
) -> IssuedToken:
    """Use the code up and issue the user token (`raw_token` when the OAuth server generated it); the code
    remembers the token so that presenting the code again can revoke it."""
    code.used_at = now or utcnow()
    issued = issue_token(
        session,
        TokenKind.USER,
        code.district_id,
        code.app_id,
        user_id=code.user_id,
        scopes=code.scope,
        label="sign-in",
        lifetime_seconds=USER_TOKEN_SECONDS,
        raw=raw_token,
    )
    code.token_id = issued.token.id
    return issued


def revoke_if_reused(session: Session, raw: str, app_id: str, *, now: datetime | None = None) -> bool:
    """If this app presents a code it already exchanged, revoke the token that code bought (RFC 6749 §4.1.2:
    a reused code may have been stolen); returns whether it was a reuse. The exchange itself is refused."""
    now = now or utcnow()
    code = session.scalar(
        select(AuthorizationCode).where(AuthorizationCode.code_hash == hash_token(raw)).with_for_update()
    )
    if code is None or code.app_id != app_id or code.used_at is None:
        return False
    if code.token_id is not None:
        session.execute(
            update(ApiToken)
            .where(
                ApiToken.id == code.token_id,
                ApiToken.app_id == code.app_id,
                ApiToken.district_id == code.district_id,
                ApiToken.revoked_at.is_(None),
            )
            .values(revoked_at=now)
        )
    return True


Answer = TypeVar("Answer")


def exchange_code(uow: UnitOfWork, answer: Callable[[], Answer], keep: Callable[[Answer], bool]) -> Answer:
    """The token endpoint in one unit of work. authlib drives the exchange (`answer`), and its callbacks find the
    code, redeem it and store the token on the unit's session (the request's); the unit commits only when `keep`
    says so: the exchange succeeded, or a reused code revoked what it had bought."""
    with uow:
        result = answer()
        if keep(result):
            uow.commit()
        return result
