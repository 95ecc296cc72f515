"""Fixes in place on a waiting delivery (issue 16): its page says where the assignment is placed against where
the student is enrolled, and an admin enrolls the student from there; the grade then goes out. Viewers see the
facts without the form; a wrong choice or another district's delivery changes nothing."""

from __future__ import annotations

import re

import requests
from sqlalchemy import func, select

from gateway.models import AuditEntry, Delivery, Enrollment
from gateway.services.directory import create_user, enroll
from gateway.worker import DeliveryWorker
from tests.conftest import LiveServer
from tests.factories import World, build_world
from tests.integration.test_dashboard import csrf, signed_in, staff_of
from tests.integration.test_staff_roles import viewer_of


def unroutable_grade(world: World, name: str = "Grace") -> tuple[str, str]:
    """(user id, the unroutable delivery's id) of a new student, not enrolled anywhere, graded on quiz-1."""
    with world.session() as session:
        user_id = create_user(session, world.district_id, name=name).id
    posted = world.post_grade({"assignmentID": "quiz-1", "userID": user_id, "percentage": 0.9})
    assert posted.status_code == 202, posted.text
    with world.session() as session:
        delivery_id = session.scalar(select(Delivery.id).where(Delivery.status == "unroutable"))
    assert delivery_id is not None
    return user_id, str(delivery_id)


def placement_choice(page: requests.Response) -> str:
    found = re.search(r'<select id="fix-placement" name="placement" required>\s*<option value="([^"]+)"', page.text)
    assert found, page.text[-2000:]
    return found.group(1)


def test_staff_enroll_the_student_from_an_unroutable_delivery_and_the_grade_goes_out(
    world: World, worker: DeliveryWorker
) -> None:
    user_id, delivery_id = unroutable_grade(world)
    browser = signed_in(world, staff_of(world))
    page = browser.get(world.url(f"/dashboard/deliveries/{delivery_id}"))
    placed = re.search(r'<ul id="placed-in">(.*?)</ul>', page.text, flags=re.S)
    assert placed and "course-101" in placed.group(1) and "not enrolled here" in placed.group(1)
    assert re.search(r'<p id="enrolled-in">In no course', page.text), "the fact that explains it, side by side"

    done = browser.post(
        world.url(f"/dashboard/deliveries/{delivery_id}/enroll"),
        data={"csrf_token": csrf(page), "placement": placement_choice(page), "lms_user_id": ""},
    )
    assert done.status_code == 200
    assert re.search(r'id="fix-said">Enrolled: 1 new deliveries', done.text), done.text[-1500:]
    assert worker.run_until_idle() == 1
    assert [(e["studentID"], e["scoreGiven"]) for e in world.gradebook()] == [(user_id, 9.0)]
    with world.session() as session:
        assert session.get(Delivery, delivery_id).status == "superseded"  # type: ignore[union-attr]
        [entry] = session.scalars(select(AuditEntry).where(AuditEntry.action == "enrolled a student"))
        assert entry.target == "Grace in Sandbox course course-101"
        assert entry.details["deliveries_created"] == 1


def test_a_viewer_sees_why_but_cannot_enroll(world: World) -> None:
    _, delivery_id = unroutable_grade(world)
    viewer = signed_in(world, viewer_of(world))
    page = viewer.get(world.url(f"/dashboard/deliveries/{delivery_id}"))
    assert '<ul id="placed-in">' in page.text
    assert 'id="fix-placement"' not in page.text


def test_a_choice_that_is_not_a_placement_of_the_assignment_changes_nothing(world: World) -> None:
    _, delivery_id = unroutable_grade(world)
    browser = signed_in(world, staff_of(world))
    page = browser.get(world.url(f"/dashboard/deliveries/{delivery_id}"))
    with world.session() as session:
        enrollments = session.scalar(select(func.count()).select_from(Enrollment))
    refused = browser.post(
        world.url(f"/dashboard/deliveries/{delivery_id}/enroll"),
        data={"csrf_token": csrf(page), "placement": "not-a-placement", "lms_user_id": ""},
    )
    assert "Nothing was changed: choose a course where the assignment is placed" in refused.text
    with world.session() as session:
        assert session.scalar(select(func.count()).select_from(Enrollment)) == enrollments
        assert session.get(Delivery, delivery_id).status == "unroutable"  # type: ignore[union-attr]


def test_another_districts_delivery_is_not_found(world: World, live_server: LiveServer, http: requests.Session) -> None:
    _, delivery_id = unroutable_grade(world)
    other = build_world(world.app, live_server.url, http, district_name="Other District")
    outsider = signed_in(other, staff_of(other, "staff@other.example"))
    assert outsider.get(world.url(f"/dashboard/deliveries/{delivery_id}")).status_code == 404
    page = outsider.get(other.url("/dashboard/"))
    refused = outsider.post(
        world.url(f"/dashboard/deliveries/{delivery_id}/enroll"), data={"csrf_token": csrf(page), "placement": "x"}
    )
    assert refused.status_code == 404
    with world.session() as session:
        assert session.get(Delivery, delivery_id).status == "unroutable"  # type: ignore[union-attr]


def test_staff_place_the_assignment_where_the_student_is_enrolled(world: World, worker: DeliveryWorker) -> None:
    with world.session() as session:
        from gateway.models import LmsConnection

        grace = create_user(session, world.district_id, name="Grace")
        connection = session.get(LmsConnection, world.connection_id)
        assert connection is not None
        enroll(session, connection, "course-202", grace)
        user_id = grace.id
    posted = world.post_grade({"assignmentID": "quiz-1", "userID": user_id, "percentage": 0.9})
    assert posted.json()["status"] == "unroutable"
    with world.session() as session:
        delivery_id = session.scalar(select(Delivery.id).where(Delivery.status == "unroutable"))
    browser = signed_in(world, staff_of(world))
    page = browser.get(world.url(f"/dashboard/deliveries/{delivery_id}"))
    enrolled = re.search(r'<ul id="enrolled-in">(.*?)</ul>', page.text, flags=re.S)
    assert enrolled and "course-202" in enrolled.group(1)
    choice = f"{world.connection_id}|course-202"
    assert f'<option value="{choice}">Sandbox: course course-202</option>' in page.text

    wrong = browser.post(
        world.url(f"/dashboard/deliveries/{delivery_id}/place"),
        data={"csrf_token": csrf(page), "course": f"{world.connection_id}|course-101"},
    )
    assert "Nothing was changed: choose a course the student is enrolled in" in wrong.text
    placed = browser.post(
        world.url(f"/dashboard/deliveries/{delivery_id}/place"), data={"csrf_token": csrf(page), "course": choice}
    )
    assert "Placed Quiz 1 in Sandbox course course-202" in placed.text
    assert worker.run_until_idle() == 1
    assert [(e["courseID"], e["studentID"]) for e in world.gradebook()] == [("course-202", user_id)]
    with world.session() as session:
        assert session.scalar(select(AuditEntry.target).where(AuditEntry.action == "placed an assignment")) == (
            "Quiz 1 in Sandbox course course-202"
        )
