"""Who is calling: bearer tokens to principals."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from gateway.crypto import hash_token
from gateway.models import ApiToken, DistrictApp, TokenKind, User, utcnow
from gateway.services.errors import Forbidden, Unauthenticated


@dataclass(frozen=True)
class Principal:
    token_id: str
    kind: str
    district_id: str
    app_id: str
    user_id: str | None
    user_role: str | None
    scopes: frozenset[str]

    @property
    def me_type(self) -> str:
        """`district_app`, or the user's role (`student`, `teacher`) for a user token."""
        return self.kind if self.kind == TokenKind.DISTRICT_APP else (self.user_role or "student")

    def require_scope(self, scope: str) -> None:
        if scope not in self.scopes:
            raise Forbidden(f"this token lacks the scope {scope!r}", code="insufficient_scope")


# Built once with bind parameters: every API request runs it, and building the expression costs more than the
# query itself on SQLite.
_TOKEN_LOOKUP = (
    select(
        ApiToken.id,
        ApiToken.kind,
        ApiToken.district_id,
        ApiToken.app_id,
        ApiToken.user_id,
        ApiToken.scopes,
        ApiToken.revoked_at,
        ApiToken.expires_at,
        ApiToken.last_used_at,
        DistrictApp.revoked_at,
        User.role,
    )
    .join(DistrictApp, (DistrictApp.app_id == ApiToken.app_id) & (DistrictApp.district_id == ApiToken.district_id))
    .outerjoin(User, User.id == ApiToken.user_id)
    .where(ApiToken.token_hash == bindparam("token_hash"))
)
_TOUCH = update(ApiToken).where(ApiToken.id == bindparam("touched_id")).values(last_used_at=bindparam("used_at"))


def authenticate(
    session: Session, raw_token: str, *, now: datetime | None = None, touch_after_seconds: float = 60.0
) -> Principal:
    """Resolve a bearer token; revoked, expired and de-authorized tokens are all refused alike."""
    now = now or utcnow()
    row = session.execute(_TOKEN_LOOKUP, {"token_hash": hash_token(raw_token)}).first()
    if row is None:
        raise Unauthenticated("the bearer token is not valid", code="invalid_token")
    (
        token_id,
        kind,
        district_id,
        app_id,
        user_id,
        scopes,
        revoked_at,
        expires_at,
        last_used_at,
        app_revoked_at,
        user_role,
    ) = row
    if revoked_at is not None or app_revoked_at is not None:
        raise Unauthenticated("the bearer token has been revoked", code="invalid_token")
    if expires_at is not None and expires_at <= now:
        raise Unauthenticated("the bearer token has expired", code="invalid_token")
    # Write last-used at most once a minute per token, so reads and grade posts don't all become writes.
    if last_used_at is None or now - last_used_at > timedelta(seconds=touch_after_seconds):
        session.execute(_TOUCH, {"touched_id": token_id, "used_at": now})
    return Principal(
        token_id=token_id,
        kind=kind,
        district_id=district_id,
        app_id=app_id,
        user_id=user_id,
        user_role=user_role,
        scopes=frozenset(scopes.split()),
    )
