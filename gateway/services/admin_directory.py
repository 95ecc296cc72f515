"""`gateway district|app|token|user|staff …`: listing, showing, changing and removing what operators set up.
Each function is one unit of work and answers the dict the command prints; every change is audited with the
operator named (gateway.services.admin_audit). Secrets are never part of an answer, except a new one shown once.

Remove or disable: rows that history points at (grades, deliveries, audit rows) are disabled or refused, never
deleted with it; docs/cli.md lists the choice per entity."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session
from werkzeug.security import generate_password_hash

from gateway.crypto import hash_token
from gateway.models import (
    ApiToken,
    App,
    Assignment,
    District,
    DistrictApp,
    Enrollment,
    Grade,
    LmsConnection,
    LmsIdentity,
    StaffSession,
    StaffUser,
    User,
    UserRole,
    utcnow,
)
from gateway.services import directory, local_time, staff
from gateway.services.admin_audit import Operator, find_app, find_connection, find_district, record, when
from gateway.services.errors import Conflict, InvalidInput, NotFound
from gateway.services.unit_of_work import UnitOfWork

MAX_LIST = 1000


def _count(session: Session, column: Any, *where: Any) -> int:
    return int(session.scalar(select(func.count(column)).where(*where)) or 0)


def _changed(**values: Any) -> dict[str, Any]:
    """The options an operator gave (None: left alone); at least one is needed."""
    given = {k: v for k, v in values.items() if v is not None}
    if not given:
        names = ", ".join(f"--{k.replace('_', '-')}" for k in values)
        raise InvalidInput(f"nothing to change: give one of {names}", fields={k: ["Nothing given."] for k in values})
    return given


# --- districts -----------------------------------------------------------------------------------------------


def _district_row(session: Session, district: District) -> dict[str, Any]:
    return {
        "id": district.id,
        "name": district.name,
        "time_zone": district.time_zone,
        "created_at": when(district.created_at),
        "lms_connections": _count(session, LmsConnection.id, LmsConnection.district_id == district.id),
        "apps": _count(
            session, DistrictApp.id, DistrictApp.district_id == district.id, DistrictApp.revoked_at.is_(None)
        ),
        "users": _count(session, User.id, User.district_id == district.id),
        "staff": _count(session, StaffUser.id, StaffUser.district_id == district.id),
    }


def list_districts(uow: UnitOfWork) -> dict[str, Any]:
    with uow:
        rows = [
            _district_row(uow.session, d)
            for d in uow.session.scalars(select(District).order_by(District.name, District.id).limit(MAX_LIST))
        ]
        uow.commit()
        return {"districts": rows}


def show_district(uow: UnitOfWork, district_ref: str) -> dict[str, Any]:
    with uow:
        data = _district_row(uow.session, find_district(uow.session, district_ref))
        uow.commit()
        return data


def update_district(
    uow: UnitOfWork, operator: Operator, district_ref: str, *, name: str | None, time_zone: str | None = None
) -> dict[str, Any]:
    """Rename a district, or set the time zone its staff read times in."""
    with uow:
        district = find_district(uow.session, district_ref)
        changes = _changed(name=name, time_zone=time_zone)
        changed = []
        if "name" in changes:
            new_name = str(changes["name"]).strip()
            if not new_name or len(new_name) > 200:
                raise InvalidInput(
                    "district name must be 1 to 200 characters", fields={"name": ["1 to 200 characters."]}
                )
            old = district.name
            district.name = new_name
            record(uow.session, district.id, operator, "renamed the district", new_name, previous=old)
            changed.append("name")
        if "time_zone" in changes:
            zone = local_time.zone_name(str(changes["time_zone"]))
            record(uow.session, district.id, operator, "set the time zone", zone, previous=district.time_zone)
            district.time_zone = zone
            changed.append("time_zone")
        data = {"id": district.id, "name": district.name, "time_zone": district.time_zone, "changed": changed}
        uow.commit()
        return data


def remove_district(uow: UnitOfWork, operator: Operator, district_ref: str) -> dict[str, Any]:
    """Delete a district that holds nothing yet (made by mistake); one with connections, users, grades or staff
    is refused: deleting it would take its history along."""
    with uow:
        district = find_district(uow.session, district_ref)
        held = {
            "lms_connections": _count(uow.session, LmsConnection.id, LmsConnection.district_id == district.id),
            "users": _count(uow.session, User.id, User.district_id == district.id),
            "grades": _count(uow.session, Grade.id, Grade.district_id == district.id),
            "staff": _count(uow.session, StaffUser.id, StaffUser.district_id == district.id),
        }
        if any(held.values()):
            what = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in held.items() if n)
            raise Conflict(
                f"district {district.name!r} holds {what}: only an empty district can be removed",
                fields={"district": ["Not empty."]},
            )
        uow.session.delete(district)
        data = {"id": district.id, "name": district.name, "removed": True}
        uow.commit()
        return data


# --- apps ----------------------------------------------------------------------------------------------------


def _app_row(session: Session, app: App, *, detail: bool = False) -> dict[str, Any]:
    links = session.scalars(select(DistrictApp).where(DistrictApp.app_id == app.id).order_by(DistrictApp.created_at))
    row: dict[str, Any] = {
        "id": app.id,
        "name": app.name,
        "client_id": app.client_id,
        "redirect_uri": app.redirect_uri,
        "catalog_url": app.catalog_url,
        "created_at": when(app.created_at),
        "districts": [
            {
                "id": link.district_id,
                "name": link.district.name,
                "authorized": link.revoked_at is None,
                "deauthorized_at": when(link.revoked_at),
            }
            for link in links
        ],
    }
    if detail:
        row["assignments"] = _count(session, Assignment.id, Assignment.app_id == app.id)
        row["grades"] = _count(session, Grade.id, Grade.app_id == app.id)
        row["active_tokens"] = _count(session, ApiToken.id, ApiToken.app_id == app.id, ApiToken.revoked_at.is_(None))
    return row


def _authorized_districts(session: Session, app: App) -> list[str]:
    return list(
        session.scalars(
            select(DistrictApp.district_id).where(DistrictApp.app_id == app.id, DistrictApp.revoked_at.is_(None))
        )
    )


def list_apps(uow: UnitOfWork, district_ref: str | None = None) -> dict[str, Any]:
    with uow:
        query = select(App).order_by(App.name, App.id).limit(MAX_LIST)
        if district_ref is not None:
            district = find_district(uow.session, district_ref)
            query = query.where(App.id.in_(select(DistrictApp.app_id).where(DistrictApp.district_id == district.id)))
        rows = [_app_row(uow.session, app) for app in uow.session.scalars(query)]
        uow.commit()
        return {"apps": rows}


def show_app(uow: UnitOfWork, app_ref: str) -> dict[str, Any]:
    with uow:
        data = _app_row(uow.session, find_app(uow.session, app_ref), detail=True)
        uow.commit()
        return data


def update_app(
    uow: UnitOfWork,
    operator: Operator,
    app_ref: str,
    *,
    name: str | None = None,
    redirect_uri: str | None = None,
    catalog_url: str | None = None,
) -> dict[str, Any]:
    """Rename an app or change its URLs (an empty catalog URL clears it). Apps belong to no district: the change is
    audited in every district that authorizes the app."""
    with uow:
        app = find_app(uow.session, app_ref)
        changes = _changed(name=name, redirect_uri=redirect_uri, catalog_url=catalog_url)
        if "name" in changes:
            if not changes["name"].strip() or len(changes["name"]) > 200:
                raise InvalidInput("app name must be 1 to 200 characters", fields={"name": ["1 to 200 characters."]})
            app.name = changes["name"].strip()
        if "redirect_uri" in changes:
            if not changes["redirect_uri"].startswith(("https://", "http://")):
                raise InvalidInput(
                    "redirect URI must be an http(s) URL", fields={"redirect_uri": ["Must be an http(s) URL."]}
                )
            app.redirect_uri = changes["redirect_uri"]
        if "catalog_url" in changes:
            url = changes["catalog_url"]
            if url and not url.startswith(("https://", "http://")):
                raise InvalidInput(
                    "catalog URL must be an http(s) URL", fields={"catalog_url": ["Must be an http(s) URL."]}
                )
            app.catalog_url = url or None
        for district_id in _authorized_districts(uow.session, app):
            record(uow.session, district_id, operator, "changed an app", app.name, changed=sorted(changes))
        data = {**_app_row(uow.session, app), "changed": sorted(changes)}
        uow.commit()
        return data


def rotate_app_secret(uow: UnitOfWork, operator: Operator, app_ref: str) -> dict[str, Any]:
    """A new client secret for an app's sign-in (OAuth) requests, shown once; the old one stops working now."""
    with uow:
        app = find_app(uow.session, app_ref)
        client_secret = secrets.token_urlsafe(32)
        app.client_secret_hash = hash_token(client_secret)
        for district_id in _authorized_districts(uow.session, app):
            record(uow.session, district_id, operator, "rotated an app's client secret", app.name)
        data = {"id": app.id, "name": app.name, "client_id": app.client_id, "client_secret": client_secret}
        uow.commit()
        return data


def deauthorize_app(uow: UnitOfWork, operator: Operator, app_ref: str, district_ref: str) -> dict[str, Any]:
    """Withdraw an app from a district: every token it holds there is refused at once (kept for the record, so
    `app authorize` can bring the app back). Grades it already sent are still delivered."""
    with uow:
        app = find_app(uow.session, app_ref)
        district = find_district(uow.session, district_ref)
        link = uow.session.scalar(
            select(DistrictApp).where(DistrictApp.app_id == app.id, DistrictApp.district_id == district.id)
        )
        if link is None:
            raise NotFound(f"app {app.name!r} is not authorized in district {district.name!r}")
        already = link.revoked_at is not None
        if not already:
            link.revoked_at = utcnow()
            record(uow.session, district.id, operator, "deauthorized an app", app.name)
        data = {
            "app": app.id,
            "district": district.id,
            "deauthorized_at": when(link.revoked_at),
            "already": already,
        }
        uow.commit()
        return data


def remove_app(uow: UnitOfWork, operator: Operator, app_ref: str) -> dict[str, Any]:
    """Delete an app registered by mistake. An app any district authorized is refused: its tokens, grades and
    placements are history (deauthorize it instead)."""
    with uow:
        app = find_app(uow.session, app_ref)
        districts = _count(uow.session, DistrictApp.id, DistrictApp.app_id == app.id)
        grades = _count(uow.session, Grade.id, Grade.app_id == app.id)
        if districts or grades:
            raise Conflict(
                f"app {app.name!r} was authorized in {districts} district(s) and has {grades} grade(s): "
                "deauthorize it instead (`gateway app deauthorize`)",
                fields={"app": ["Has history; deauthorize it instead."]},
            )
        uow.session.delete(app)
        data = {"id": app.id, "name": app.name, "removed": True}
        uow.commit()
        return data


# --- tokens --------------------------------------------------------------------------------------------------


def _token_row(token: ApiToken) -> dict[str, Any]:
    return {
        "id": token.id,
        "kind": token.kind,
        "district": token.district_id,
        "app": token.app_id,
        "user": token.user_id,
        "scopes": token.scopes.split(),
        "label": token.label,
        "created_at": when(token.created_at),
        "expires_at": when(token.expires_at),
        "revoked_at": when(token.revoked_at),
        "last_used_at": when(token.last_used_at),
        "active": token.revoked_at is None and (token.expires_at is None or token.expires_at > utcnow()),
    }


def list_tokens(
    uow: UnitOfWork,
    district_ref: str,
    *,
    app_ref: str | None = None,
    kind: str | None = None,
    include_inactive: bool = False,
) -> dict[str, Any]:
    """A district's tokens (never the tokens themselves: only their hashes are stored), newest first; active
    ones unless `include_inactive`."""
    with uow:
        district = find_district(uow.session, district_ref)
        query = select(ApiToken).where(ApiToken.district_id == district.id)
        if app_ref is not None:
            query = query.where(ApiToken.app_id == find_app(uow.session, app_ref).id)
        if kind is not None:
            query = query.where(ApiToken.kind == kind)
        if not include_inactive:
            now = utcnow()
            query = query.where(
                ApiToken.revoked_at.is_(None), (ApiToken.expires_at.is_(None)) | (ApiToken.expires_at > now)
            )
        rows = [
            _token_row(t)
            for t in uow.session.scalars(query.order_by(ApiToken.created_at.desc(), ApiToken.id).limit(MAX_LIST))
        ]
        uow.commit()
        return {"tokens": rows}


def show_token(uow: UnitOfWork, token_ref: str) -> dict[str, Any]:
    """A token by its id or by the token itself (to learn whose a leaked token is)."""
    with uow:
        token = uow.session.get(ApiToken, token_ref) or uow.session.scalar(
            select(ApiToken).where(ApiToken.token_hash == hash_token(token_ref))
        )
        if token is None:
            raise NotFound("no such token", fields={"token": ["No token with this id or value."]})
        data = _token_row(token)
        uow.commit()
        return data


# --- users and enrollments -----------------------------------------------------------------------------------


def _user_row(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "district": user.district_id,
        "name": user.name,
        "email": user.email,
        "sis_id": user.sis_id,
        "role": user.role,
        "created_at": when(user.created_at),
        "updated_at": when(user.updated_at),
    }


def _user(session: Session, district_id: str, user_id: str) -> User:
    user = directory.get_user(session, district_id, user_id)
    if user is None:
        raise NotFound(f"no user {user_id!r} in this district", fields={"user": ["No such user in this district."]})
    return user


def list_users(
    uow: UnitOfWork, district_ref: str, *, role: str | None = None, search: str | None = None, limit: int = 100
) -> dict[str, Any]:
    """A district's users, oldest first; `search` matches a part of the name or email, or the whole SIS id."""
    with uow:
        district = find_district(uow.session, district_ref)
        query = select(User).where(User.district_id == district.id)
        if role is not None:
            query = query.where(User.role == role)
        if search:
            pattern = f"%{search.lower()}%"
            query = query.where(
                func.lower(User.name).like(pattern) | func.lower(User.email).like(pattern) | (User.sis_id == search)
            )
        limit = max(1, min(limit, MAX_LIST))
        rows = [_user_row(u) for u in uow.session.scalars(query.order_by(User.created_at, User.id).limit(limit))]
        uow.commit()
        return {"users": rows}


def _enrollment_row(enrollment: Enrollment, names: dict[str, str]) -> dict[str, Any]:
    return {
        "id": enrollment.id,
        "user": enrollment.user_id,
        "lms": enrollment.lms_connection_id,
        "lms_name": names.get(enrollment.lms_connection_id),
        "course": enrollment.course_id,
        "role": enrollment.role,
        "source": enrollment.source,
        "created_at": when(enrollment.created_at),
    }


def _connection_names(session: Session, district_id: str) -> dict[str, str]:
    rows = session.execute(select(LmsConnection.id, LmsConnection.name).where(LmsConnection.district_id == district_id))
    return {connection_id: name for connection_id, name in rows}


def show_user(uow: UnitOfWork, district_ref: str, user_id: str) -> dict[str, Any]:
    """A user with their enrollments and the LMS identities that map to them."""
    with uow:
        district = find_district(uow.session, district_ref)
        user = _user(uow.session, district.id, user_id)
        names = _connection_names(uow.session, district.id)
        enrollments = uow.session.scalars(
            select(Enrollment).where(Enrollment.district_id == district.id, Enrollment.user_id == user.id)
        )
        identities = uow.session.scalars(
            select(LmsIdentity).where(LmsIdentity.district_id == district.id, LmsIdentity.user_id == user.id)
        )
        data = {
            **_user_row(user),
            "enrollments": [_enrollment_row(e, names) for e in enrollments],
            "lms_identities": [
                {"lms": i.lms_connection_id, "issuer": i.issuer, "lms_user_id": i.subject} for i in identities
            ],
            "grades": _count(uow.session, Grade.id, Grade.district_id == district.id, Grade.user_id == user.id),
        }
        uow.commit()
        return data


def update_user(
    uow: UnitOfWork,
    operator: Operator,
    district_ref: str,
    user_id: str,
    *,
    name: str | None = None,
    email: str | None = None,
    sis_id: str | None = None,
    role: str | None = None,
) -> dict[str, Any]:
    """Change a user's name, email, SIS id or role; an empty email or SIS id clears it."""
    with uow:
        district = find_district(uow.session, district_ref)
        user = _user(uow.session, district.id, user_id)
        changes = _changed(name=name, email=email, sis_id=sis_id, role=role)
        if "role" in changes and changes["role"] not in {r.value for r in UserRole}:
            raise InvalidInput(f"role must be one of {[r.value for r in UserRole]}", fields={"role": ["Unknown role."]})
        limits = {"name": 200, "email": 320, "sis_id": 255}
        for key, limit in limits.items():
            if key in changes and len(changes[key]) > limit:
                raise InvalidInput(f"{key} is longer than {limit} characters", fields={key: [f"At most {limit}."]})
        if "email" in changes and changes["email"] and "@" not in changes["email"]:
            raise InvalidInput("email is not an email address", fields={"email": ["Not an email address."]})
        for key, value in changes.items():
            setattr(user, key, (value or None) if key in ("email", "sis_id") else value)
        record(uow.session, district.id, operator, "changed a user", user.id, changed=sorted(changes))
        uow.session.flush()
        data = {**_user_row(user), "changed": sorted(changes)}
        uow.commit()
        return data


def list_enrollments(
    uow: UnitOfWork,
    district_ref: str,
    *,
    user_id: str | None = None,
    lms_ref: str | None = None,
    course: str | None = None,
    limit: int = 100,
) -> dict[str, Any]:
    with uow:
        district = find_district(uow.session, district_ref)
        query = select(Enrollment).where(Enrollment.district_id == district.id)
        if user_id is not None:
            query = query.where(Enrollment.user_id == _user(uow.session, district.id, user_id).id)
        if lms_ref is not None:
            query = query.where(Enrollment.lms_connection_id == find_connection(uow.session, district.id, lms_ref).id)
        if course is not None:
            query = query.where(Enrollment.course_id == course)
        names = _connection_names(uow.session, district.id)
        limit = max(1, min(limit, MAX_LIST))
        rows = [
            _enrollment_row(e, names)
            for e in uow.session.scalars(query.order_by(Enrollment.created_at, Enrollment.id).limit(limit))
        ]
        uow.commit()
        return {"enrollments": rows}


def unenroll(
    uow: UnitOfWork, operator: Operator, district_ref: str, lms_ref: str, course: str, user_id: str
) -> dict[str, Any]:
    """Take a user out of an LMS course: new grades no longer route there (deliveries already made stay)."""
    with uow:
        district = find_district(uow.session, district_ref)
        connection = find_connection(uow.session, district.id, lms_ref)
        user = _user(uow.session, district.id, user_id)
        result = uow.session.execute(
            delete(Enrollment).where(
                Enrollment.district_id == district.id,
                Enrollment.lms_connection_id == connection.id,
                Enrollment.course_id == course,
                Enrollment.user_id == user.id,
            )
        )
        removed = int(result.rowcount or 0)  # type: ignore[attr-defined]
        if not removed:
            raise NotFound(
                f"user {user.id!r} is not enrolled in course {course!r} of {connection.name!r}",
                fields={"course": ["No such enrollment."]},
            )
        record(uow.session, district.id, operator, "unenrolled a user", user.id, lms=connection.name, course=course)
        data = {"user": user.id, "lms": connection.id, "course": course, "removed": True}
        uow.commit()
        return data


# --- staff ---------------------------------------------------------------------------------------------------


def _staff_status(member: StaffUser) -> str:
    now = utcnow()
    if member.password_hash is None:
        if member.setup_token_hash is not None and member.setup_expires_at and member.setup_expires_at > now:
            return "awaiting_setup"
        return "disabled"
    if member.locked_until is not None and member.locked_until > now:
        return "locked"
    return "active"


def _staff_row(member: StaffUser) -> dict[str, Any]:
    return {
        "id": member.id,
        "district": member.district_id,
        "email": member.email,
        "role": member.role,
        "status": _staff_status(member),
        "last_login_at": when(member.last_login_at),
        "created_at": when(member.created_at),
    }


def _staff_member(session: Session, district_id: str, ref: str) -> StaffUser:
    member = session.scalar(
        select(StaffUser).where(
            StaffUser.district_id == district_id,
            (StaffUser.id == ref) | (func.lower(StaffUser.email) == ref.strip().lower()),
        )
    )
    if member is None:
        raise NotFound(
            f"no staff account {ref!r} in this district", fields={"staff": ["No staff account with this id or email."]}
        )
    return member


def list_staff(uow: UnitOfWork, district_ref: str) -> dict[str, Any]:
    with uow:
        district = find_district(uow.session, district_ref)
        rows = [
            _staff_row(m)
            for m in uow.session.scalars(
                select(StaffUser).where(StaffUser.district_id == district.id).order_by(StaffUser.email)
            )
        ]
        uow.commit()
        return {"staff": rows}


def show_staff(uow: UnitOfWork, district_ref: str, staff_ref: str) -> dict[str, Any]:
    with uow:
        district = find_district(uow.session, district_ref)
        member = _staff_member(uow.session, district.id, staff_ref)
        data = {
            **_staff_row(member),
            "open_sessions": _count(
                uow.session, StaffSession.id, StaffSession.staff_id == member.id, StaffSession.revoked_at.is_(None)
            ),
        }
        uow.commit()
        return data


def _end_sessions(session: Session, member: StaffUser) -> int:
    result = session.execute(
        update(StaffSession)
        .where(StaffSession.staff_id == member.id, StaffSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def reset_staff_password(
    uow: UnitOfWork,
    operator: Operator,
    district_ref: str,
    staff_ref: str,
    password: str | None,
    *,
    public_url: str,
) -> dict[str, Any]:
    """Replace a staff member's password (a forgotten one, a leaked one, or a disabled account coming back): with
    the password given, or a one-time setup link (24 hours). Their open sessions end and any lockout is lifted."""
    with uow:
        district = find_district(uow.session, district_ref)
        member = _staff_member(uow.session, district.id, staff_ref)
        data: dict[str, Any] = {"id": member.id, "email": member.email}
        member.failed_logins = 0
        member.locked_until = None
        if password is not None:
            staff.check_password(password)
            member.password_hash = generate_password_hash(password)
            member.setup_token_hash = member.setup_expires_at = None
        else:
            token = secrets.token_urlsafe(32)
            member.password_hash = None  # the old password stops working now, not when the link is used
            member.setup_token_hash = hash_token(token)
            member.setup_expires_at = utcnow() + timedelta(seconds=staff.SETUP_LINK_SECONDS)
            # After "#": a browser never sends it, so no access log or proxy records the token.
            data["setup_link"] = f"{public_url.rstrip('/')}/dashboard/setup#{token}"
        data["sessions_ended"] = _end_sessions(uow.session, member)
        record(
            uow.session,
            district.id,
            operator,
            "reset a staff password",
            member.email,
            by="password" if password is not None else "setup link",
        )
        data["status"] = _staff_status(member)
        uow.commit()
        return data


def disable_staff(uow: UnitOfWork, operator: Operator, district_ref: str, staff_ref: str) -> dict[str, Any]:
    """Shut a staff account out: no password, no setup link, every session ended. The account and its audit rows
    stay; `staff reset-password` lets it in again."""
    with uow:
        district = find_district(uow.session, district_ref)
        member = _staff_member(uow.session, district.id, staff_ref)
        member.password_hash = None
        member.setup_token_hash = member.setup_expires_at = None
        ended = _end_sessions(uow.session, member)
        record(uow.session, district.id, operator, "disabled a staff account", member.email)
        data = {**_staff_row(member), "sessions_ended": ended}
        uow.commit()
        return data


def set_staff_role(uow: UnitOfWork, operator: Operator, district_ref: str, staff_ref: str, role: str) -> dict[str, Any]:
    """Make a staff member a district admin (acts) or a viewer (looks only); takes effect on their next page."""
    with uow:
        district = find_district(uow.session, district_ref)
        member = _staff_member(uow.session, district.id, staff_ref)
        new_role = staff.parse_role(role)
        changed = member.role != new_role
        if changed:
            record(uow.session, district.id, operator, "changed a staff role", member.email, role=new_role.value)
            member.role = new_role
        data = {**_staff_row(member), "changed": changed}
        uow.commit()
        return data
