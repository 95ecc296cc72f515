"""Fixing what the dashboard shows, in a real browser (issue 16): an unroutable delivery fixed by enrolling the
student from its page; a viewer who cannot act."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.services.directory import create_user
from gateway.services.staff import create_staff
from gateway.worker import DeliveryWorker
from tests.browser.conftest import PASSWORD, sign_in, staff_account
from tests.factories import World


def test_staff_fix_an_unroutable_delivery_by_enrolling_the_student(
    world: World, worker: DeliveryWorker, page: Any, artifacts_dir: Path
) -> None:
    with world.session() as session:
        grace = create_user(session, world.district_id, name="Grace Hopper").id
    posted = world.post_grade({"assignmentID": "quiz-1", "userID": grace, "percentage": 0.9})
    assert world.get(posted.headers["Location"]).json()["status"] == "unroutable"

    sign_in(page, staff_account(world))
    page.goto("/dashboard/deliveries?status=unroutable")
    page.get_by_role("link", name="Details of the delivery of Quiz 1 for Grace Hopper").click()
    fix = page.get_by_role("region", name="Why it waits, and how to fix it")
    assert "course-101" in fix.locator("#placed-in").inner_text()
    assert "not enrolled here" in fix.locator("#placed-in").inner_text()
    assert "In no course" in fix.locator("#enrolled-in").inner_text()
    page.screenshot(path=artifacts_dir / "fix-unroutable.png", full_page=True)

    page.get_by_label("Enroll the student in").select_option(label="Sandbox: course course-101")
    page.get_by_role("button", name="Enroll and send the grade").click()
    page.get_by_role("status").filter(has_text="Enrolled: 1 new deliveries").wait_for()
    assert worker.run_until_idle() == 1
    assert world.get(posted.headers["Location"]).json()["status"] == "delivered"
    assert [e["scoreGiven"] for e in world.gradebook()] == [9.0]
    page.get_by_role("link", name="Audit log").click()
    assert "enrolled a student" in page.get_by_role("table", name="Audit log").inner_text()


def test_a_viewer_sees_the_fix_explained_but_has_no_button(world: World, page: Any) -> None:
    with world.session() as session:
        grace = create_user(session, world.district_id, name="Grace Hopper").id
        create_staff(session, world.district_id, "viewer@district.example", PASSWORD, role="viewer")
    world.post_grade({"assignmentID": "quiz-1", "userID": grace, "percentage": 0.9})

    sign_in(page, "viewer@district.example")
    assert "You are a viewer" in page.inner_text("main")
    page.goto("/dashboard/deliveries?status=unroutable")
    page.get_by_role("link", name="Details of the delivery of Quiz 1 for Grace Hopper").click()
    assert "course-101" in page.locator("#placed-in").inner_text()
    assert page.get_by_role("button", name="Enroll and send the grade").count() == 0
    assert page.get_by_role("button", name="Sign out").count() == 1


def test_staff_filter_and_bulk_retry_after_an_outage(world: World, worker: DeliveryWorker, page: Any) -> None:
    world.inject_faults(3, status=422)  # the LMS refuses everything for a while
    for student in world.students:
        world.post_grade({"assignmentID": "quiz-1", "userID": student, "percentage": 0.7})
    world.post_grade({"assignmentID": "quiz-2", "userID": world.students[0], "percentage": 0.4})
    worker.run_until_idle()
    world.inject_faults(0)  # it is back

    sign_in(page, staff_account(world))
    page.goto("/dashboard/deliveries")
    filters = page.get_by_role("form", name="Filter the deliveries")
    filters.get_by_label("Status").select_option("failed")
    filters.get_by_label("Assignment id").fill("quiz-1")
    filters.get_by_role("button", name="Filter").click()
    assert page.locator("#total").inner_text().startswith("2 deliveries match")
    page.get_by_role("button", name="Retry every failed delivery that matches").click()
    page.get_by_role("status").filter(has_text="2 deliveries queued again.").wait_for()
    assert worker.run_until_idle() == 2
    assert sorted(e["itemID"] for e in world.gradebook()) == ["quiz-1", "quiz-1"]
    page.get_by_role("form", name="Filter the deliveries").get_by_label("Assignment id").fill("")
    page.get_by_role("form", name="Filter the deliveries").get_by_role("button", name="Filter").click()
    assert page.locator("#total").inner_text().startswith("1 delivery matches"), "quiz-2 still waits for its own retry"
