"""The sandbox district that `make run` seeds: an app, a catalog, a sandbox LMS, a course and students.

It is a development LMS for an app developer: `gateway demo --json` prints everything an app needs (the app token,
the demo app's client id and secret for the sign-in code flow, its redirect URI, the sandbox secret)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from gateway.crypto import SecretBox, hash_token
from gateway.models import ApiToken, App, District, LmsConnection, TokenKind, User, new_id, utcnow
from gateway.services.catalog import upsert_assignments
from gateway.services.directory import (
    authorize_app,
    create_app_partner,
    create_district,
    create_user,
    enroll,
)
from gateway.services.errors import InvalidInput
from gateway.services.lms import add_lms_connection, add_placement, connection_settings

DEMO_DISTRICT = "Sandbox District"
DEMO_APP = "Demo Quiz App"
DEMO_COURSE = "sandbox-course-1"
DEMO_TOKEN_LABEL = "demo (make run)"  # noqa: S105 - a label, not a secret
# The demo app's redirect URI by default: Passback's own page that shows what a sign-in sent.
DEMO_CALLBACK_PATH = "/demo/callback"
DEMO_ASSIGNMENTS: list[dict[str, Any]] = [
    {
        "id": "fractions-quiz-1",
        "name": "Fractions Quiz 1",
        "type": "assignment",
        "description": "Adding and comparing fractions",
        "standards": ["CCSS.MATH.CONTENT.4.NF.A.2"],
        "scoreMaximum": 10,
    },
    {
        "id": "reading-check-1",
        "name": "Reading Check: Charlotte's Web",
        "type": "assignment",
        "description": "Chapters 1-5",
        "standards": ["CCSS.ELA-LITERACY.RL.4.1"],
    },
]
# Name, email and SIS id: an app that knows its students from the district's SIS posts by the SIS id.
DEMO_STUDENTS = [
    ("Ada Lovelace", "ada@sandbox.example", "S-1001"),
    ("Alan Turing", "alan@sandbox.example", "S-1002"),
]


@dataclass(frozen=True)
class DemoStudent:
    user_id: str
    name: str
    email: str | None
    sis_id: str | None


@dataclass(frozen=True)
class KeptCredentials:
    """The demo credentials a previous run handed out (from GATEWAY_DEMO_TOKEN_FILE), to be kept if still good."""

    token: str | None = None
    client_secret: str | None = None


@dataclass(frozen=True)
class DemoDistrict:
    district_id: str
    app_id: str
    connection_id: str
    token: str
    student_ids: list[str]
    assignment_id: str
    created: bool
    client_id: str = ""
    client_secret: str = ""
    redirect_uri: str = ""
    sandbox_url: str = ""
    sandbox_secret: str = ""
    course_id: str = DEMO_COURSE
    students: tuple[DemoStudent, ...] = ()
    # Whether the token and the client secret are the ones a previous run handed out (else new ones were issued).
    token_kept: bool = False
    client_secret_kept: bool = False

    def as_json(self, public_url: str) -> dict[str, Any]:
        """What `gateway demo --json` prints: everything an app needs to develop against the sandbox."""
        return {
            "public_url": public_url,
            "district_id": self.district_id,
            "app_id": self.app_id,
            "token": self.token,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "redirect_uri": self.redirect_uri,
            "student_ids": self.student_ids,
            "students": [
                {"userID": s.user_id, "name": s.name, "email": s.email, "sisID": s.sis_id} for s in self.students
            ],
            "assignment_id": self.assignment_id,
            "assignment_ids": [a["id"] for a in DEMO_ASSIGNMENTS],
            "course_id": self.course_id,
            "lms_connection_id": self.connection_id,
            "sandbox_url": self.sandbox_url,
            "sandbox_secret": self.sandbox_secret,
            "token_kept": self.token_kept,
            "client_secret_kept": self.client_secret_kept,
        }


def seed_demo(
    session: Session,
    box: SecretBox,
    public_url: str,
    *,
    kept: KeptCredentials | None = None,
    redirect_uri: str | None = None,
) -> DemoDistrict:
    """Create the sandbox district once. On every call, keep the token and client secret of `kept` when they are
    still the demo's (unrevoked, matching the stored hashes), else issue new ones and revoke the previous demo
    tokens (only hashes are stored, so an old token cannot be shown again). `redirect_uri` points the demo app's
    sign-ins elsewhere (an app under development); else a redirect URI at Passback's own page follows the public
    URL."""
    base = public_url.rstrip("/")
    kept = kept or KeptCredentials()
    district = session.scalar(select(District).where(District.name == DEMO_DISTRICT))
    created = district is None
    client_secret: str | None = None
    if district is None:
        district = create_district(session, DEMO_DISTRICT)
        made = create_app_partner(session, DEMO_APP, base + DEMO_CALLBACK_PATH)
        client_secret = made.client_secret
        upsert_assignments(session, made.app.id, DEMO_ASSIGNMENTS)
        connection_id = new_id()
        connection = add_lms_connection(
            session,
            box,
            district.id,
            "Sandbox LMS",
            "sandbox",
            {"base_url": f"{base}/sandbox-lms/{connection_id}", "secret": secrets.token_urlsafe(24)},
            # The gradebook URL names the connection, so its id is chosen before the row exists.
            connection_id=connection_id,
        )
        for name, email, sis_id in DEMO_STUDENTS:
            user = create_user(session, district.id, name=name, email=email)
            user.sis_id = sis_id
            enroll(session, connection, DEMO_COURSE, user, source="demo")
        for entry in DEMO_ASSIGNMENTS:
            add_placement(session, district.id, connection_id, made.app.id, entry["id"], DEMO_COURSE)
    app_row = session.scalar(select(App).where(App.name == DEMO_APP))
    connection_row = session.scalar(select(LmsConnection).where(LmsConnection.district_id == district.id))
    assert app_row is not None and connection_row is not None
    settings = _point_sandbox_at(box, connection_row, base)
    _point_redirect_at(app_row, base, redirect_uri)
    _give_students_sis_ids(session, district.id)
    if client_secret is None:
        client_secret = _kept_or_new_client_secret(app_row, kept.client_secret)
    token = _kept_token(session, district.id, app_row.id, kept.token)
    token_kept = token is not None
    if token is None:
        session.execute(
            update(ApiToken)
            .where(
                ApiToken.district_id == district.id, ApiToken.label == DEMO_TOKEN_LABEL, ApiToken.revoked_at.is_(None)
            )
            .values(revoked_at=utcnow())
        )
        issued = authorize_app(session, app_row.id, district.id)
        issued.token.label = DEMO_TOKEN_LABEL
        token = issued.raw
    students = tuple(
        DemoStudent(user.id, user.name, user.email, user.sis_id)
        for user in session.scalars(
            select(User).where(User.district_id == district.id).order_by(User.created_at, User.name)
        )
    )
    return DemoDistrict(
        district_id=district.id,
        app_id=app_row.id,
        connection_id=connection_row.id,
        token=token,
        student_ids=[s.user_id for s in students],
        assignment_id=DEMO_ASSIGNMENTS[0]["id"],
        created=created,
        client_id=app_row.client_id,
        client_secret=client_secret,
        redirect_uri=app_row.redirect_uri,
        sandbox_url=str(settings["base_url"]),
        sandbox_secret=str(settings["secret"]),
        students=students,
        token_kept=token_kept,
        client_secret_kept=kept.client_secret is not None and client_secret == kept.client_secret,
    )


def _kept_token(session: Session, district_id: str, app_id: str, raw: str | None) -> str | None:
    """`raw` when it is still a live demo token of this district and app (stored as its hash only)."""
    if not raw:
        return None
    token = session.scalar(
        select(ApiToken).where(
            ApiToken.token_hash == hash_token(raw),
            ApiToken.district_id == district_id,
            ApiToken.app_id == app_id,
            ApiToken.kind == TokenKind.DISTRICT_APP,
            ApiToken.label == DEMO_TOKEN_LABEL,
            ApiToken.revoked_at.is_(None),
        )
    )
    if token is None or (token.expires_at is not None and token.expires_at <= utcnow()):
        return None
    return raw


def _kept_or_new_client_secret(app: App, kept: str | None) -> str:
    """The kept secret when it is still the app's; else a new one (the old stops working: only its hash was kept)."""
    if kept and secrets.compare_digest(hash_token(kept), app.client_secret_hash):
        return kept
    fresh = secrets.token_urlsafe(32)
    app.client_secret_hash = hash_token(fresh)
    return fresh


def _point_sandbox_at(box: SecretBox, connection: LmsConnection, base: str) -> dict[str, Any]:
    """The sandbox LMS is served by this Passback: follow it when it runs on another host or port."""
    settings = connection_settings(box, connection)
    base_url = f"{base}/sandbox-lms/{connection.id}"
    if settings.get("base_url") != base_url:
        settings["base_url"] = base_url
        connection.settings_encrypted = box.encrypt_json(settings)
    return settings


def _point_redirect_at(app: App, base: str, redirect_uri: str | None) -> None:
    """An explicit redirect URI is kept until changed again; Passback's own page follows the public URL."""
    if redirect_uri is not None:
        if not redirect_uri.startswith(("https://", "http://")):
            raise InvalidInput("redirect URI must be an http(s) URL", fields={"redirect_uri": ["Must be a URL."]})
        app.redirect_uri = redirect_uri
    elif app.redirect_uri.endswith(DEMO_CALLBACK_PATH):
        app.redirect_uri = base + DEMO_CALLBACK_PATH


def _give_students_sis_ids(session: Session, district_id: str) -> None:
    """Districts seeded before the demo students had SIS ids get them (matched by email, never overwritten)."""
    for _name, email, sis_id in DEMO_STUDENTS:
        user = session.scalar(select(User).where(User.district_id == district_id, User.email == email))
        if user is not None and user.sis_id is None:
            user.sis_id = sis_id
