"""Browser tests: Playwright's sync API driving Debian's Chromium (/usr/bin/chromium, `apt-get install chromium`)
against the live server of tests/conftest.py. Never `playwright install`: no browser is downloaded.

Without /usr/bin/chromium (or the playwright package) these tests are skipped, with the reason; with
PASSBACK_REQUIRE_BROWSER=1 (as CI sets) they fail instead. One browser serves the whole session; each test gets
a fresh context (cookies, storage, permissions) and page.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from gateway.composition import services_of
from gateway.services.catalog import upsert_assignments
from gateway.services.directory import authorize_app, create_app_partner, create_user, enroll
from gateway.services.lms import add_lms_connection, add_placement
from gateway.services.staff import create_staff
from gateway.worker import DeliveryWorker
from tests.conftest import LiveServer
from tests.factories import COURSE, World

CHROMIUM = Path(os.environ.get("PASSBACK_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
REQUIRE_BROWSER = os.environ.get("PASSBACK_REQUIRE_BROWSER") == "1"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
PASSWORD = "correct horse battery"


def _unavailable(reason: str) -> None:
    if REQUIRE_BROWSER:
        pytest.fail(f"{reason}, and PASSBACK_REQUIRE_BROWSER=1 says the browser tests must run")
    pytest.skip(f"{reason}: browser tests skipped (install Debian's chromium package to run them)")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        _unavailable(f"no Chromium at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def context(browser: Any, live_server: LiveServer) -> Iterator[Any]:
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1200, "height": 640})
    context.set_default_timeout(5_000)
    yield context
    context.close()


@pytest.fixture
def page(context: Any) -> Any:
    return context.new_page()


def staff_account(world: World, email: str = "admin@district.example") -> str:
    with world.session() as session:
        create_staff(session, world.district_id, email, PASSWORD)
    return email


def sign_in(page: Any, email: str) -> None:
    """Through the login form, as a person would: labels, typing, the button."""
    page.goto("/dashboard/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Grade deliveries").wait_for()


def save_screenshot(page: Any, name: str, artifacts_dir: Path) -> None:
    """Every run keeps its screenshot in tests/artifacts/; docs/screenshots/ (committed) is written when the
    file is missing or PASSBACK_UPDATE_SCREENSHOTS=1, so a test run does not rewrite a committed image."""
    shot = page.screenshot(full_page=True, type="png")
    (artifacts_dir / f"{name}.png").write_bytes(shot)
    target = SCREENSHOTS / f"{name}.png"
    if os.environ.get("PASSBACK_UPDATE_SCREENSHOTS") == "1" or not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(shot)


@dataclass
class Showcase:
    """A district with a few apps, assignments, courses and students, and deliveries in every usual state."""

    world: World
    placement_ids: dict[tuple[str, str], str] = field(default_factory=dict)


STUDENTS = ["Ada Lovelace", "Alan Turing", "Grace Hopper", "Katherine Johnson", "Edsger Dijkstra", "Barbara Liskov"]
SECOND_COURSE = "course-102"
APPS = {
    "Reading Ladder": [("chapter-1", "Chapter 1 check", 20), ("chapter-2", "Chapter 2 check", 20)],
    "Fraction Tutor": [("adding", "Adding fractions", 100), ("comparing", "Comparing fractions", 100)],
}


def build_showcase(app: Flask, world: World, worker: DeliveryWorker, http: requests.Session) -> Showcase:
    """Grades posted through the API and delivered by the worker to the sandbox LMS, which fails some of them
    on purpose; a few are left pending. Plus an LTI 1.3 and an LTI 1.1 connection for the connections page."""
    box = services_of(app).box
    tokens = {"Quiz App": world.token}
    students = list(world.students)
    with world.session() as session:
        from gateway.models import LmsConnection, User

        connection = session.get(LmsConnection, world.connection_id)
        session.get(User, students[0]).name, session.get(User, students[1]).name = STUDENTS[0], STUDENTS[1]
        for name in STUDENTS[2:]:
            user = create_user(session, world.district_id, name=name)
            enroll(session, connection, COURSE if len(students) < 4 else SECOND_COURSE, user)
            students.append(user.id)
        add_placement(session, world.district_id, world.connection_id, world.app_id, "quiz-1", SECOND_COURSE)
        for app_name, assignments in APPS.items():
            partner = create_app_partner(session, app_name, "https://apps.example/callback").app
            upsert_assignments(
                session, partner.id, [{"id": a, "name": n, "scoreMaximum": m} for a, n, m in assignments]
            )
            tokens[app_name] = authorize_app(session, partner.id, world.district_id).raw
            for assignment_id, _, _ in assignments:
                for course in (COURSE, SECOND_COURSE):
                    add_placement(session, world.district_id, world.connection_id, partner.id, assignment_id, course)
        add_lms_connection(
            session,
            box,
            world.district_id,
            "Canvas",
            "lti13",
            {"platform": "canvas", "client_id": "10000000000123", "deployment_ids": "7:a1b2c3"},
        )
        add_lms_connection(
            session,
            box,
            world.district_id,
            "Moodle (LTI 1.1)",
            "lti11",
            {
                "consumer_key": "springfield-moodle",
                "shared_secret": "a-shared-secret-never-shown",
                "allowed_hosts": ["moodle.springfield.example"],
            },
        )

    def post(app_name: str, assignment: str, student: str, percentage: float) -> None:
        body = {"assignmentID": assignment, "userID": student, "percentage": percentage}
        response = http.post(world.url("/v1/grade"), json=body, headers=world.headers(tokens[app_name]))
        assert response.status_code == 202, response.text

    scores = [0.92, 0.75, 0.88, 0.61, 0.97, 0.83]
    for offset, student in enumerate(students):
        post("Quiz App", "quiz-1", student, scores[offset])
        post("Reading Ladder", "chapter-1", student, scores[-offset - 1])
        post("Fraction Tutor", "adding", student, scores[(offset + 2) % 6])
    world.inject_faults(3, status=422)
    worker.run_until_idle()
    for offset, student in enumerate(students[:4]):
        post("Reading Ladder", "chapter-2", student, scores[offset])
    world.inject_faults(2, status=503, retry_after=3600)
    worker.run_until_idle()
    for student in students[4:]:
        post("Fraction Tutor", "comparing", student, 0.7)  # left pending: the worker has not run since
    _spread_over_the_week(world)
    return Showcase(world)


def _spread_over_the_week(world: World) -> None:
    """Two thirds of the delivered grades move back one to six days, so the week's chart has a shape."""
    from datetime import timedelta

    from sqlalchemy import select

    from gateway.models import Delivery, Grade

    with world.session() as session:
        delivered = session.scalars(
            select(Delivery)
            .where(Delivery.district_id == world.district_id, Delivery.status == "delivered")
            .order_by(Delivery.created_at, Delivery.id)
        ).all()
        for n, delivery in enumerate(delivered):
            if n % 3 == 0:
                continue
            shift = timedelta(days=1 + n % 6, hours=n % 5, minutes=7 * n)
            delivery.created_at -= shift
            delivery.updated_at -= shift
            delivery.delivered_at -= shift
            grade = session.get(Grade, delivery.grade_id)
            grade.created_at -= shift
            grade.updated_at -= shift
