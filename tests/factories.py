"""Small factories: build the rows a test needs through the same services the product uses."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import requests
from flask import Flask

from gateway.composition import services_of
from gateway.models import TokenKind
from gateway.services.catalog import upsert_assignments
from gateway.services.directory import (
    authorize_app,
    create_app_partner,
    create_district,
    create_user,
    enroll,
    issue_token,
)
from gateway.services.lms import add_lms_connection, add_placement

COURSE = "course-101"


@dataclass
class World:
    app: Flask
    base_url: str
    http: requests.Session
    district_id: str
    app_id: str
    token: str
    connection_id: str
    sandbox_secret: str
    students: list[str]
    assignments: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.base_url + path

    def headers(self, token: str | None = None, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}", **extra}

    def post_grade(self, body: Any, token: str | None = None, **headers: str) -> requests.Response:
        return self.http.post(self.url("/v1/grade"), json=body, headers=self.headers(token, **headers))

    def get(self, path: str, token: str | None = None, **kwargs: Any) -> requests.Response:
        return self.http.get(self.url(path), headers=self.headers(token), **kwargs)

    def session(self) -> Any:
        return services_of(self.app).database.transaction()

    def user_token(self, user_id: str) -> str:
        with self.session() as session:
            return issue_token(
                session,
                TokenKind.USER,
                self.district_id,
                self.app_id,
                user_id=user_id,
                scopes="grades:write grades:read assignments:read",
            ).raw

    def gradebook(self) -> list[dict[str, Any]]:
        response = self.http.get(
            self.url(f"/sandbox-lms/{self.connection_id}/gradebook"),
            headers={"Authorization": f"Bearer {self.sandbox_secret}"},
        )
        response.raise_for_status()
        return response.json()["entries"]

    def inject_faults(self, fail_next: int, status: int = 503, retry_after: int | None = None) -> None:
        response = self.http.post(
            self.url(f"/sandbox-lms/{self.connection_id}/faults"),
            json={"fail_next": fail_next, "status": status, "retry_after": retry_after},
            headers={"Authorization": f"Bearer {self.sandbox_secret}"},
        )
        response.raise_for_status()


def build_world(app: Flask, base_url: str, http: requests.Session, district_name: str = "Test District") -> World:
    box = services_of(app).box
    sandbox_secret = secrets.token_urlsafe(24)
    with services_of(app).database.transaction() as session:
        district = create_district(session, district_name)
        partner = create_app_partner(session, "Quiz App", "https://quiz.example/callback").app
        upsert_assignments(
            session,
            partner.id,
            [
                {"id": "quiz-1", "name": "Quiz 1", "scoreMaximum": 10},
                {"id": "quiz-2", "name": "Quiz 2"},
                {"id": "unplaced", "name": "Not placed anywhere"},
            ],
        )
        token = authorize_app(session, partner.id, district.id).raw
        connection = add_lms_connection(
            session,
            box,
            district.id,
            "Sandbox",
            "sandbox",
            {"base_url": "http://127.0.0.1:1/placeholder", "secret": sandbox_secret},
        )
        connection.settings_encrypted = box.encrypt_json(
            {"base_url": f"{base_url}/sandbox-lms/{connection.id}", "secret": sandbox_secret}
        )
        students = []
        for name in ("Ada", "Alan"):
            user = create_user(session, district.id, name=name)
            enroll(session, connection, COURSE, user)
            students.append(user.id)
        add_placement(session, district.id, connection.id, partner.id, "quiz-1", COURSE)
        add_placement(session, district.id, connection.id, partner.id, "quiz-2", COURSE)
        ids = (district.id, partner.id, connection.id)
    return World(
        app=app,
        base_url=base_url,
        http=http,
        district_id=ids[0],
        app_id=ids[1],
        token=token,
        connection_id=ids[2],
        sandbox_secret=sandbox_secret,
        students=students,
        assignments=["quiz-1", "quiz-2", "unplaced"],
    )
