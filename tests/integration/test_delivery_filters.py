"""Filters, totals and bulk actions on the delivery list (issue 16): every filter narrows the list and its total,
a bad filter is an HTML 400 naming the field, a filter never reaches another district, and a bulk retry acts on
exactly the deliveries the filter matches (audited)."""

from __future__ import annotations

import re
from datetime import datetime

import requests
from sqlalchemy import select, update

from gateway.models import AuditEntry, Delivery, User
from gateway.worker import DeliveryWorker
from tests.conftest import LiveServer
from tests.factories import World, build_world
from tests.integration.test_dashboard import csrf, signed_in, staff_of


def failed_grades(world: World, worker: DeliveryWorker) -> None:
    """Ada (SIS S-1) and Alan (SIS S-2) each fail on quiz-1 and quiz-2 (the LMS refused them)."""
    with world.session() as session:
        for user_id, sis, email in zip(
            world.students, ("S-1", "S-2"), ("ada@x.example", "alan@x.example"), strict=True
        ):
            user = session.get(User, user_id)
            assert user is not None
            user.sis_id, user.email = sis, email
    world.inject_faults(4, status=422)
    for student in world.students:
        for assignment in ("quiz-1", "quiz-2"):
            assert world.post_grade({"assignmentID": assignment, "userID": student, "percentage": 0.5}).ok
    worker.run_until_idle()


def listed(browser: requests.Session, world: World, **params: str) -> tuple[int, list[str]]:
    page = browser.get(world.url("/dashboard/deliveries"), params=params)
    assert page.status_code == 200, page.text[:500]
    total = re.search(r'<p id="total"><strong>(\d+)</strong>', page.text)
    assert total, page.text[:1000]
    rows = re.findall(r"<td>(Ada|Alan)</td>\s*<td>(Quiz \d)", page.text)
    return int(total.group(1)), sorted(f"{who} {what}" for who, what in rows)


def test_each_filter_narrows_the_list_and_its_total(world: World, worker: DeliveryWorker) -> None:
    failed_grades(world, worker)
    browser = signed_in(world, staff_of(world))
    everyone = ["Ada Quiz 1", "Ada Quiz 2", "Alan Quiz 1", "Alan Quiz 2"]
    assert listed(browser, world, status="failed") == (4, everyone)
    assert listed(browser, world, status="failed", student="ad") == (2, ["Ada Quiz 1", "Ada Quiz 2"])
    assert listed(browser, world, student="S-2") == (2, ["Alan Quiz 1", "Alan Quiz 2"]), "by SIS id"
    assert listed(browser, world, student="alan@x") == (2, ["Alan Quiz 1", "Alan Quiz 2"]), "by e-mail"
    assert listed(browser, world, student="%") == (0, []), "LIKE's wildcards are taken literally"
    assert listed(browser, world, assignment="quiz-2") == (2, ["Ada Quiz 2", "Alan Quiz 2"])
    assert listed(browser, world, course="course-101", connection=world.connection_id, app=world.app_id)[0] == 4
    assert listed(browser, world, course="another-course") == (0, [])
    assert listed(browser, world, status="delivered") == (0, [])
    with world.session() as session:
        session.execute(update(Delivery).values(updated_at=datetime(2026, 3, 14, 12, 0)))
    assert listed(browser, world, since="2026-03-14", until="2026-03-14")[0] == 4
    assert listed(browser, world, since="2026-03-15")[0] == 0
    assert listed(browser, world, until="2026-03-13")[0] == 0


def test_a_bad_filter_is_an_html_page_naming_the_field(world: World) -> None:
    browser = signed_in(world, staff_of(world))
    for params, field in (({"since": "last tuesday"}, "since"), ({"status": "lost"}, "status")):
        refused = browser.get(world.url("/dashboard/deliveries"), params=params)
        assert refused.status_code == 400
        assert refused.headers["Content-Type"].startswith("text/html")
        assert f"{field}:" in refused.text


def test_a_filter_never_reaches_another_district(
    world: World, worker: DeliveryWorker, live_server: LiveServer, http: requests.Session
) -> None:
    failed_grades(world, worker)
    other = build_world(world.app, live_server.url, http, district_name="Other District")
    outsider = signed_in(other, staff_of(other, "staff@other.example"))
    assert listed(outsider, other, connection=world.connection_id) == (0, [])
    page = outsider.get(other.url("/dashboard/deliveries"))
    outsider.post(
        other.url("/dashboard/deliveries/bulk"),
        data={"csrf_token": csrf(page), "action": "retry_failed", "connection": world.connection_id},
    )
    with world.session() as session:
        statuses = set(session.scalars(select(Delivery.status).where(Delivery.district_id == world.district_id)))
    assert statuses == {"failed"}


def test_a_bulk_retry_acts_on_exactly_what_the_filter_matches(world: World, worker: DeliveryWorker) -> None:
    failed_grades(world, worker)
    browser = signed_in(world, staff_of(world))
    page = browser.get(world.url("/dashboard/deliveries"), params={"status": "failed", "assignment": "quiz-2"})
    assert "Retry every failed delivery that matches" in page.text
    done = browser.post(
        world.url("/dashboard/deliveries/bulk"),
        data={"csrf_token": csrf(page), "action": "retry_failed", "status": "failed", "assignment": "quiz-2"},
    )
    assert "2 deliveries queued again." in done.text
    assert "assignment=quiz-2" in done.url, "back on the same filtered list"
    assert worker.run_until_idle() == 2
    assert sorted(e["itemID"] for e in world.gradebook()) == ["quiz-2", "quiz-2"]
    assert listed(browser, world, status="failed") == (2, ["Ada Quiz 1", "Alan Quiz 1"])
    with world.session() as session:
        [entry] = session.scalars(select(AuditEntry).where(AuditEntry.action == "retried deliveries in bulk"))
        assert entry.details["filter"] == {"status": "failed", "assignment": "quiz-2"}
        assert (entry.details["changed"], entry.details["skipped"]) == (2, 0)
    refused = browser.post(
        world.url("/dashboard/deliveries/bulk"), data={"csrf_token": csrf(page), "action": "delete_everything"}
    )
    assert refused.status_code == 422 and "action" in refused.text


def test_failures_handled_outside_passback_are_marked_resolved(world: World, worker: DeliveryWorker) -> None:
    failed_grades(world, worker)
    browser = signed_in(world, staff_of(world))
    page = browser.get(world.url("/dashboard/deliveries"), params={"status": "failed", "student": "Alan"})
    done = browser.post(
        world.url("/dashboard/deliveries/bulk"),
        data={"csrf_token": csrf(page), "action": "resolve", "status": "failed", "student": "Alan"},
    )
    assert "2 deliveries marked resolved." in done.text
    assert listed(browser, world, status="failed") == (2, ["Ada Quiz 1", "Ada Quiz 2"])
    assert listed(browser, world, status="resolved") == (2, ["Alan Quiz 1", "Alan Quiz 2"])
    assert worker.run_until_idle() == 0, "a resolved delivery is never sent"
    overview = browser.get(world.url("/dashboard/")).text
    assert re.search(r'status-resolved" href="[^"]+">resolved</a></th>\s*<td class="num">2</td>', overview)

    # One at a time from the delivery's page; the API says so too; a retry takes it up again.
    with world.session() as session:
        ada = session.scalar(select(Delivery).where(Delivery.status == "failed").order_by(Delivery.created_at).limit(1))
        assert ada is not None
        ada_id, grade_id = ada.id, ada.grade_id
    page = browser.get(world.url(f"/dashboard/deliveries/{ada_id}"))
    resolved = browser.post(world.url(f"/dashboard/deliveries/{ada_id}/resolve"), data={"csrf_token": csrf(page)})
    assert "Marked resolved" in resolved.text and 'id="delivery-status">resolved<' in resolved.text
    assert world.get(f"/v1/grades/{grade_id}").json()["status"] == "resolved"
    again = browser.post(world.url(f"/dashboard/deliveries/{ada_id}/resolve"), data={"csrf_token": csrf(page)})
    assert "only failed deliveries can be marked resolved" in again.text
    browser.post(world.url(f"/dashboard/deliveries/{ada_id}/retry"), data={"csrf_token": csrf(page)})
    assert worker.run_until_idle() == 1
    assert world.get(f"/v1/grades/{grade_id}").json()["status"] == "delivered"
    with world.session() as session:
        actions = sorted(session.scalars(select(AuditEntry.action).where(AuditEntry.action.like("marked%"))))
    assert actions == ["marked a delivery resolved", "marked deliveries resolved"]
