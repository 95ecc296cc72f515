"""The sandbox district that `make run` seeds: an app, a catalog, a sandbox LMS, a course and students."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from gateway.crypto import SecretBox
from gateway.models import ApiToken, App, District, LmsConnection, User, new_id, utcnow
from gateway.services.catalog import upsert_assignments
from gateway.services.directory import (
    authorize_app,
    create_app_partner,
    create_district,
    create_user,
    enroll,
)
from gateway.services.lms import add_lms_connection, add_placement, connection_settings

DEMO_DISTRICT = "Sandbox District"
DEMO_APP = "Demo Quiz App"
DEMO_COURSE = "sandbox-course-1"
DEMO_TOKEN_LABEL = "demo (make run)"  # noqa: S105 - a label, not a secret
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
DEMO_STUDENTS = [("Ada Lovelace", "ada@sandbox.example"), ("Alan Turing", "alan@sandbox.example")]


@dataclass(frozen=True)
class DemoDistrict:
    district_id: str
    app_id: str
    connection_id: str
    token: str
    student_ids: list[str]
    assignment_id: str
    created: bool


def seed_demo(session: Session, box: SecretBox, public_url: str) -> DemoDistrict:
    """Create the sandbox district once; on every call issue a fresh demo token and revoke the previous one
    (only token hashes are stored, so an old token cannot be shown again)."""
    district = session.scalar(select(District).where(District.name == DEMO_DISTRICT))
    created = district is None
    if district is None:
        district = create_district(session, DEMO_DISTRICT)
        app = create_app_partner(session, DEMO_APP, f"{public_url.rstrip('/')}/demo/callback").app
        upsert_assignments(session, app.id, DEMO_ASSIGNMENTS)
        connection_id = new_id()
        connection = add_lms_connection(
            session,
            box,
            district.id,
            "Sandbox LMS",
            "sandbox",
            {
                "base_url": f"{public_url.rstrip('/')}/sandbox-lms/{connection_id}",
                "secret": secrets.token_urlsafe(24),
            },
            # The gradebook URL names the connection, so its id is chosen before the row exists.
            connection_id=connection_id,
        )
        for name, email in DEMO_STUDENTS:
            user = create_user(session, district.id, name=name, email=email)
            enroll(session, connection, DEMO_COURSE, user, source="demo")
        for entry in DEMO_ASSIGNMENTS:
            add_placement(session, district.id, connection_id, app.id, entry["id"], DEMO_COURSE)
    app_row = session.scalar(select(App).where(App.name == DEMO_APP))
    connection_row = session.scalar(select(LmsConnection).where(LmsConnection.district_id == district.id))
    assert app_row is not None and connection_row is not None
    _point_sandbox_at(box, connection_row, public_url)
    session.execute(
        update(ApiToken)
        .where(ApiToken.district_id == district.id, ApiToken.label == DEMO_TOKEN_LABEL, ApiToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    issued = authorize_app(session, app_row.id, district.id)
    issued.token.label = DEMO_TOKEN_LABEL
    students = list(
        session.scalars(select(User.id).where(User.district_id == district.id).order_by(User.created_at, User.name))
    )
    return DemoDistrict(
        district_id=district.id,
        app_id=app_row.id,
        connection_id=connection_row.id,
        token=issued.raw,
        student_ids=students,
        assignment_id=DEMO_ASSIGNMENTS[0]["id"],
        created=created,
    )


def _point_sandbox_at(box: SecretBox, connection: LmsConnection, public_url: str) -> None:
    """The sandbox LMS is served by this Passback: follow it when it runs on another host or port."""
    settings = connection_settings(box, connection)
    base_url = f"{public_url.rstrip('/')}/sandbox-lms/{connection.id}"
    if settings.get("base_url") != base_url:
        settings["base_url"] = base_url
        connection.settings_encrypted = box.encrypt_json(settings)
