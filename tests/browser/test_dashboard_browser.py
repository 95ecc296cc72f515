"""The staff dashboard in a real browser: sign in, find a failed delivery, read the LMS's words, retry it after
the LMS recovers; one district's staff never see or touch another's data; copy buttons; screenshots."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import requests
from flask import Flask
from sqlalchemy import select

from gateway.models import App, Assignment, Delivery, LmsConnection, Placement, User
from gateway.worker import DeliveryWorker
from tests.browser.conftest import build_showcase, save_screenshot, sign_in, staff_account
from tests.conftest import LiveServer
from tests.factories import World, build_world

LMS_ERROR = "sandbox LMS is unavailable (injected fault, HTTP 422)"


def test_staff_find_a_failed_delivery_read_the_lms_error_and_retry_it(
    world: World, worker: DeliveryWorker, page: Any, artifacts_dir: Path
) -> None:
    world.inject_faults(1, status=422)
    posted = world.post_grade({"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.6})
    worker.run_until_idle()
    assert world.get(posted.headers["Location"]).json()["status"] == "failed"

    sign_in(page, staff_account(world))
    page.get_by_role("navigation", name="Dashboard").get_by_role("link", name="Failed deliveries").click()
    page.get_by_role("heading", name="Failed deliveries").wait_for()
    assert LMS_ERROR in page.get_by_role("table", name="Deliveries").inner_text()
    page.get_by_role("link", name="Details of the delivery of Quiz 1 for Ada").click()

    assert page.locator("#delivery-status").inner_text() == "failed"
    assert LMS_ERROR in page.locator("#lms-says").inner_text(), "the LMS's own words, on the delivery's page"
    page.screenshot(path=artifacts_dir / "delivery.png", full_page=True)

    world.inject_faults(0)  # the LMS has recovered
    page.get_by_role("button", name="Retry this delivery now").click()
    page.get_by_role("status").filter(has_text="Delivery queued again.").wait_for()
    assert page.locator("#delivery-status").inner_text() == "pending"
    assert worker.run_until_idle() == 1
    page.reload()

    assert page.locator("#delivery-status").inner_text() == "delivered"
    assert "Delivered, no error." in page.inner_text("main")
    assert [e["scoreGiven"] for e in world.gradebook()] == [6.0]
    page.get_by_role("link", name="Audit log").click()
    assert "retried delivery" in page.get_by_role("table", name="Audit log").inner_text()


def _rename_other_district(other: World) -> dict[str, str]:
    """Give district B names that cannot appear in A's pages by accident; return them with B's ids."""
    names = {"app": "Bravo Phonics", "assignment": "Bravo Secret Essay", "student": "Zebulon Quist"}
    with other.session() as session:
        session.get(App, other.app_id).name = names["app"]
        for assignment in session.scalars(select(Assignment).where(Assignment.app_id == other.app_id)):
            assignment.name = f"{names['assignment']} {assignment.external_id}"
        session.get(User, other.students[0]).name = names["student"]
        session.get(User, other.students[1]).name = names["student"] + " Jr"
        session.get(LmsConnection, other.connection_id).name = "Bravo Sandbox"
    return names


def test_staff_of_one_district_cannot_see_or_act_on_another_districts_data(
    app: Flask, world: World, worker: DeliveryWorker, live_server: LiveServer, http: requests.Session, page: Any
) -> None:
    other = build_world(app, live_server.url, http, district_name="Bravo District")
    names = _rename_other_district(other)
    other.inject_faults(1, status=422)
    other.post_grade({"assignmentID": "quiz-1", "userID": other.students[0], "percentage": 0.4})
    world.post_grade({"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.9})
    worker.run_until_idle()
    with other.session() as session:
        theirs = session.scalars(select(Delivery).where(Delivery.district_id == other.district_id)).one()
        their_placement = session.scalar(select(Placement.id).where(Placement.district_id == other.district_id))
        their_assignment = session.scalar(select(Placement.assignment_id).where(Placement.id == their_placement))
        before = (theirs.status, theirs.attempts, theirs.updated_at)
    assert before[0] == "failed"

    sign_in(page, staff_account(world))
    by_ui = [
        "/dashboard/",
        "/dashboard/deliveries",
        "/dashboard/deliveries?status=failed",
        "/dashboard/apps",
        f"/dashboard/apps/{world.app_id}",
        "/dashboard/connections",
        "/dashboard/sandbox",
        "/dashboard/audit",
    ]
    for path in by_ui:
        page.goto(path)
        html = page.content()
        for secret in (*names.values(), "Bravo", other.district_id, other.connection_id, theirs.id, LMS_ERROR):
            assert secret not in html, f"{secret!r} leaks into {path}"
    page.goto("/dashboard/deliveries?status=failed")
    assert "No deliveries here." in page.inner_text("main"), "B's failure is not in A's list"

    by_url = [
        f"/dashboard/deliveries/{theirs.id}",
        f"/dashboard/apps/{other.app_id}",
        f"/dashboard/assignments/{their_assignment}",
        f"/dashboard/placements/{their_placement}",
        f"/dashboard/sandbox?connection={other.connection_id}",
    ]
    for path in by_url:
        response = page.goto(path)
        assert response is not None and response.status == 404, path
        assert names["student"] not in page.content()

    page.goto("/dashboard/connections")
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    for path in (
        f"/dashboard/deliveries/{theirs.id}/retry",
        f"/dashboard/assignments/{their_assignment}/retry-failed",
        f"/dashboard/connections/{other.connection_id}/pause",
        f"/dashboard/connections/{other.connection_id}/retry-failed",
    ):
        answer = page.request.post(path, form={"csrf_token": token}, max_redirects=0)
        assert answer.status == 404, f"{path}: {answer.status} with A's valid CSRF token"
    with other.session() as session:
        after = session.get(Delivery, theirs.id)
        assert (after.status, after.attempts, after.updated_at) == before, "B's delivery is untouched"
        assert not session.get(LmsConnection, other.connection_id).paused
    assert worker.run_until_idle() == 0, "nothing of B's was queued again"


def test_overview_drill_down_and_copy_buttons_on_a_busy_district(
    app: Flask,
    world: World,
    worker: DeliveryWorker,
    http: requests.Session,
    context: Any,
    page: Any,
    artifacts_dir: Path,
    live_server: LiveServer,
) -> None:
    build_showcase(app, world, worker, http)
    sign_in(page, staff_account(world))

    statuses = page.get_by_role("table", name="Deliveries by status").inner_text()
    for status in ("delivered", "pending", "retrying", "failed"):
        assert re.search(rf"{status}\s+[1-9]", statuses), f"{status} has deliveries in the last 24 hours"
    by_app = page.get_by_role("table", name="By app (7 days)").inner_text()
    assert all(name in by_app for name in ("Quiz App", "Reading Ladder", "Fraction Tutor"))
    save_screenshot(page, "overview", artifacts_dir)

    page.get_by_role("link", name="By app").click()
    page.get_by_role("link", name="Reading Ladder").click()
    page.get_by_role("link", name="Chapter 1 check").click()
    page.get_by_role("link", name="course-101").click()
    students = page.get_by_role("table", name="Students").inner_text()
    assert "Ada Lovelace" in students and "Grace Hopper" in students
    assert "delivered" in students and "injected fault" in students, "statuses are written out, errors too"
    save_screenshot(page, "drilldown", artifacts_dir)

    # Copy buttons: keyboard-reachable real buttons, with the value copied to the clipboard.
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    page.get_by_role("link", name="LMS connections").click()
    button = page.get_by_role("button", name="Copy Tool configuration JSON URL (Canvas: Paste JSON) of Canvas")
    target = page.locator(f"#{button.get_attribute('data-copy-target')}")
    assert re.fullmatch(rf"{live_server.url}/lti/config/[0-9a-f]+", target.inner_text())
    button.focus()
    page.keyboard.press("Enter")
    page.get_by_role("status").filter(has_text="Copied.").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == target.inner_text()
    key_button = page.get_by_role("button", name="Copy Consumer key of Moodle (LTI 1.1)")
    assert page.locator(f"#{key_button.get_attribute('data-copy-target')}").inner_text() == "springfield-moodle"
    assert "a-shared-secret-never-shown" not in page.content()
    page.screenshot(path=artifacts_dir / "connections.png", full_page=True)
