"""Districts, apps, their authorization, users and enrollments: what operators set up."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy import Select, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.crypto import SecretBox, generate_token, hash_token
from gateway.models import (
    ApiToken,
    App,
    District,
    DistrictApp,
    Enrollment,
    LmsConnection,
    LmsIdentity,
    TokenKind,
    User,
    UserRole,
    utcnow,
)
from gateway.services.auth import Principal
from gateway.services.errors import Conflict, Forbidden, InvalidInput, NotFound, ServiceError
from gateway.services.routing import release_awaiting_launch, route_waiting_grades

T = TypeVar("T")

DISTRICT_APP_SCOPES = "grades:write grades:read assignments:read assignments:write roster:read"


def create_district(session: Session, name: str) -> District:
    """Create a district; its id is generated and stable."""
    name = name.strip()
    if not name:
        raise InvalidInput("district name is required", fields={"name": ["Required."]})
    district = District(name=name)
    session.add(district)
    session.flush()
    return district


def get_district(session: Session, district_id: str) -> District:
    district = session.get(District, district_id)
    if district is None:
        raise NotFound(f"no district {district_id!r}")
    return district


@dataclass(frozen=True)
class CreatedApp:
    app: App
    client_secret: str


def create_app_partner(session: Session, name: str, redirect_uri: str, catalog_url: str | None = None) -> CreatedApp:
    """Register a learning app; the client secret is returned once and stored only as a hash."""
    if not redirect_uri.startswith(("https://", "http://")):
        raise InvalidInput("redirect URI must be an http(s) URL", fields={"redirect_uri": ["Must be a URL."]})
    client_secret = secrets.token_urlsafe(32)
    app = App(
        name=name.strip(),
        client_id=secrets.token_hex(10),
        client_secret_hash=hash_token(client_secret),
        redirect_uri=redirect_uri,
        catalog_url=catalog_url,
    )
    session.add(app)
    session.flush()
    return CreatedApp(app, client_secret)


def get_app(session: Session, app_ref: str) -> App:
    """Find an app by id or client id."""
    app = session.get(App, app_ref) or session.scalar(select(App).where(App.client_id == app_ref))
    if app is None:
        raise NotFound(f"no app {app_ref!r}")
    return app


@dataclass(frozen=True)
class IssuedToken:
    token: ApiToken
    raw: str


def authorize_app(session: Session, app_id: str, district_id: str) -> IssuedToken:
    """Authorize an app in a district and issue a district-app token (shown once)."""
    app = get_app(session, app_id)
    district = get_district(session, district_id)
    link = session.scalar(
        select(DistrictApp).where(DistrictApp.app_id == app.id, DistrictApp.district_id == district.id)
    )
    if link is None:
        session.add(DistrictApp(app_id=app.id, district_id=district.id))
    elif link.revoked_at is not None:
        link.revoked_at = None
    return issue_token(session, TokenKind.DISTRICT_APP, district.id, app.id, scopes=DISTRICT_APP_SCOPES)


def issue_token(
    session: Session,
    kind: TokenKind,
    district_id: str,
    app_id: str,
    *,
    user_id: str | None = None,
    scopes: str = "",
    label: str = "",
    lifetime_seconds: float | None = None,
    raw: str | None = None,
) -> IssuedToken:
    """Store a new token's hash (generating the token unless given) and return the token once."""
    raw = raw or generate_token()
    now = utcnow()
    token = ApiToken(
        token_hash=hash_token(raw),
        kind=kind,
        district_id=district_id,
        app_id=app_id,
        user_id=user_id,
        scopes=scopes,
        label=label,
        created_at=now,
        expires_at=now + timedelta(seconds=lifetime_seconds) if lifetime_seconds else None,
    )
    session.add(token)
    session.flush()
    return IssuedToken(token, raw)


def revoke_token(session: Session, token_ref: str) -> ApiToken:
    """Revoke a token by its id or by the token itself; revoking twice is harmless."""
    token = session.get(ApiToken, token_ref) or session.scalar(
        select(ApiToken).where(ApiToken.token_hash == hash_token(token_ref))
    )
    if token is None:
        raise NotFound("no such token")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
    return token


def create_user(
    session: Session,
    district_id: str,
    *,
    name: str = "",
    email: str | None = None,
    role: str = UserRole.STUDENT,
    user_id: str | None = None,
) -> User:
    if role not in {r.value for r in UserRole}:
        raise InvalidInput(f"role must be one of {[r.value for r in UserRole]}", fields={"role": ["Unknown."]})
    get_district(session, district_id)
    if user_id is not None and session.get(User, user_id) is not None:
        raise Conflict(f"user {user_id!r} exists")
    user = User(district_id=district_id, name=name, email=email, role=role)
    if user_id is not None:
        user.id = user_id
    session.add(user)
    session.flush()
    return user


def get_user(session: Session, district_id: str, user_id: str) -> User | None:
    """A user of this district, or None: ids of other districts are invisible."""
    return session.scalar(select(User).where(User.id == user_id, User.district_id == district_id))


def identity_issuer(connection: LmsConnection, settings: Mapping[str, Any]) -> str:
    """The one key a connection's user identities are stored under, by launches, roster syncs and the CLI alike:
    LTI 1.1's consumer key, LTI 1.3's platform issuer, else the connection itself."""
    if connection.adapter == "lti11":
        return f"lti11:{settings['consumer_key']}"
    if settings.get("issuer"):
        return str(settings["issuer"])
    return f"passback:{connection.id}"


def link_identity(
    session: Session, user: User, connection: LmsConnection, subject: str, *, box: SecretBox
) -> LmsIdentity:
    """Record how this LMS names the user, under the key its launches use; linking twice is harmless."""
    issuer = identity_issuer(connection, box.decrypt_json(connection.settings_encrypted))
    known = session.scalar(
        select(LmsIdentity).where(
            LmsIdentity.district_id == user.district_id, LmsIdentity.issuer == issuer, LmsIdentity.subject == subject
        )
    )
    if known is not None:
        if known.user_id != user.id:
            raise Conflict(f"LMS user id {subject!r} is already linked to another user of this district")
        return known
    identity = LmsIdentity(
        district_id=user.district_id,
        user_id=user.id,
        lms_connection_id=connection.id,
        issuer=issuer,
        subject=subject,
    )
    session.add(identity)
    session.flush()
    return identity


def enroll(
    session: Session,
    connection: LmsConnection,
    course_id: str,
    user: User,
    *,
    role: str | None = None,
    source: str = "manual",
) -> Enrollment:
    """Record that a user belongs to an LMS course; grades for placements in that course then route to it."""
    if user.district_id != connection.district_id:
        raise NotFound("no such user in this district")
    return get_or_create(
        session,
        lambda: session.scalar(
            select(Enrollment).where(
                Enrollment.lms_connection_id == connection.id,
                Enrollment.course_id == course_id,
                Enrollment.user_id == user.id,
            )
        ),
        lambda: Enrollment(
            district_id=connection.district_id,
            lms_connection_id=connection.id,
            course_id=course_id,
            user_id=user.id,
            role=role or user.role,
            source=source,
        ),
    )


def enroll_user(
    session: Session, box: SecretBox, connection: LmsConnection, course_id: str, user_id: str, lms_user_id: str | None
) -> tuple[int, int]:
    """An operator's enrollment, with the LMS's name for the user if given: grades that waited only for that
    name are released (not those that still need the student's launch, as LTI 1.1's sourcedid does) and
    current grades are routed to the course. Returns the deliveries released and created."""
    user = get_user(session, connection.district_id, user_id)
    if user is None:
        raise NotFound(f"no user {user_id!r} in this district")
    released = 0
    if lms_user_id:
        link_identity(session, user, connection, lms_user_id, box=box)
        released = release_awaiting_launch(session, user.id, connection.id)
    enroll(session, connection, course_id, user)
    return released, route_waiting_grades(session, connection.district_id, user_id=user.id)


def get_or_create(session: Session, find: Callable[[], T | None], make: Callable[[], T]) -> T:
    """The row `find` returns, else a new one from `make`. Safe under concurrency: when another transaction
    inserts the same unique row first, the savepoint is rolled back and that row is found instead."""
    found = find()
    if found is not None:
        return found
    try:
        with session.begin_nested():
            made = make()
            session.add(made)
            session.flush()
    except IntegrityError:
        found = find()
        if found is None:
            raise
        return found
    return made


# --- addressing students by what an app knows --------------------------------------------------------------

# The keys an app may name a student by, in the order error messages list them; `lms` goes with lmsUserID.
STUDENT_KEYS = ("userID", "sisID", "email", "lmsUserID")
ONE_KEY_RULE = "Send exactly one of userID, sisID, email, or lmsUserID with lms."


class StudentKeyInvalid(ServiceError):
    """None, or more than one, student key where exactly one is needed (or lms without lmsUserID)."""

    status = 400
    code = "student_key_invalid"


@dataclass(frozen=True)
class StudentKey:
    """One way to name a student: `field` is one of STUDENT_KEYS; `lms` (a connection id or name) goes with
    lmsUserID only."""

    field: str
    value: str
    lms: str | None = None

    def echo(self) -> dict[str, str]:
        """The key as the app posted it, for `studentKey` in answers."""
        return {self.field: self.value, **({"lms": self.lms} if self.lms is not None else {})}

    def describe(self) -> str:
        return f"{self.field} {self.value!r}" + (f" on LMS {self.lms!r}" if self.lms is not None else "")


def student_key_of(data: Mapping[str, Any]) -> StudentKey | None:
    """The one student key in a loaded body or query, or None. StudentKeyInvalid (400) names the fields when
    two are sent, or lms and lmsUserID are not sent together."""
    sent = [name for name in STUDENT_KEYS if data.get(name) is not None]
    if ("lms" in data) != ("lmsUserID" in data):
        missing, other = ("lms", "lmsUserID") if "lmsUserID" in data else ("lmsUserID", "lms")
        raise StudentKeyInvalid(f"{missing} is required with {other}", fields={missing: [f"Required with {other}."]})
    if len(sent) > 1:
        raise StudentKeyInvalid(
            f"send one student key, not {', '.join(sent)}", fields={name: [ONE_KEY_RULE] for name in sent}
        )
    if not sent:
        return None
    name = sent[0]
    return StudentKey(name, str(data[name]), str(data["lms"]) if name == "lmsUserID" else None)


def students_named(district_id: str, key: StudentKey) -> Select[str]:
    """The ids of the users of a district a key names: one indexed lookup (users by district and sis_id or
    email; identities by connection and subject). Emails match exactly as stored."""
    if key.field == "userID":
        return select(User.id).where(User.district_id == district_id, User.id == key.value)
    if key.field == "sisID":
        return select(User.id).where(User.district_id == district_id, User.sis_id == key.value)
    if key.field == "email":
        return select(User.id).where(User.district_id == district_id, User.email == key.value)
    return (
        select(LmsIdentity.user_id)
        .join(LmsConnection, LmsConnection.id == LmsIdentity.lms_connection_id)
        .where(
            LmsConnection.district_id == district_id,
            or_(LmsConnection.id == key.lms, LmsConnection.name == key.lms),
            LmsIdentity.district_id == district_id,
            LmsIdentity.subject == key.value,
        )
    )


def resolve_student(session: Session, principal: Principal, key: StudentKey | None) -> str:
    """The id of the one student `key` names in the caller's district.

    A district-app token must send a key; a userID is taken as sent (the grade's own lookup checks it, so that
    path costs no extra query) and any other key costs one indexed query. A user token names only its own user:
    no key, or any key that names it; any other key is 403, whether it names another user or nobody, so a
    student cannot probe who exists. Raises StudentKeyInvalid (400), Forbidden (403), NotFound (404, naming the
    key) or Conflict (409: the key names more than one user; nothing about them is listed)."""
    if principal.kind != TokenKind.DISTRICT_APP:
        assert principal.user_id is not None
        if key is None:
            return principal.user_id
        if key.field == "userID":
            names_self = key.value == principal.user_id
        else:
            own = students_named(principal.district_id, key).where(_user_id_column(key) == principal.user_id)
            names_self = session.execute(own.limit(1)).first() is not None
        if not names_self:
            raise Forbidden(
                f"{key.field} does not name the signed-in user of this token",
                fields={key.field: ["Must name the token's user, or be left out."]},
                code="user_mismatch",
            )
        return principal.user_id
    if key is None:
        raise StudentKeyInvalid(
            "a student key is required with a district-app token",
            fields={name: [ONE_KEY_RULE] for name in STUDENT_KEYS},
        )
    if key.field == "userID":
        return key.value
    found = list(session.scalars(students_named(principal.district_id, key).limit(2)))
    if len(found) == 1:
        return found[0]
    if found:
        raise Conflict(
            f"{key.field} names more than one user in this district: send userID instead",
            fields={key.field: ["Names more than one user in this district; send userID instead."]},
            code="student_key_ambiguous",
        )
    if key.lms is not None and not _connection_known(session, principal.district_id, key.lms):
        raise NotFound(
            f"no LMS connection {key.lms!r} in this district",
            fields={"lms": ["No LMS connection with this id or name in this district."]},
            code="lms_connection_not_found",
        )
    raise NotFound(
        f"no user with {key.describe()} in this district",
        fields={key.field: [f"No user with this {key.field} in this district."]},
        code="user_not_found",
    )


def _user_id_column(key: StudentKey) -> Any:
    return LmsIdentity.user_id if key.field == "lmsUserID" else User.id


def _connection_known(session: Session, district_id: str, lms: str) -> bool:
    found = session.scalar(
        select(LmsConnection.id).where(
            LmsConnection.district_id == district_id, or_(LmsConnection.id == lms, LmsConnection.name == lms)
        )
    )
    return found is not None
