"""Alerts to district staff: configured on /dashboard/alerts over real HTTP, evaluated by housekeeping on a
frozen clock, mailed to a real SMTP server on 127.0.0.1 (aiosmtpd) and POSTed to a real loopback webhook
receiver, at most once per period, never to another district's staff."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator

import pytest
import requests
from flask import Flask
from sqlalchemy import event, select
from standardwebhooks import Webhook

from gateway.clock import SYSTEM_CLOCK, FrozenClock
from gateway.composition import services_of
from gateway.models import Alert, AlertSettings
from gateway.services.alert_sending import AlertSender
from gateway.services.alerts import evaluate_district
from gateway.services.staff import create_staff
from gateway.services.unit_of_work import UnitOfWork
from gateway.worker import DeliveryWorker
from tests.alert_receivers import SmtpServer, WebhookReceiver, free_port
from tests.conftest import LiveServer
from tests.factories import World, build_world

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


@pytest.fixture(autouse=True)
def empty_inbox(smtp: SmtpServer) -> None:
    smtp.inbox.mails.clear()


@pytest.fixture
def settings_overrides(smtp: SmtpServer) -> dict[str, object]:
    return {
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp.port,
        "smtp_starttls": False,
        "smtp_username": "",
        "alert_from": "passback@district.example",
        # The webhook receiver is on 127.0.0.1.
        "webhook_allow_private_addresses": True,
    }


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def frozen_worker(app: Flask, clock: FrozenClock) -> DeliveryWorker:
    return services_of(app).delivery_worker(clock=clock)


@pytest.fixture
def sender(app: Flask, clock: FrozenClock) -> AlertSender:
    services = services_of(app)
    return AlertSender(services.database, services.box, app.config["PASSBACK"], clock=clock)


def csrf(page: requests.Response) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match, page.text[:500]
    return match.group(1)


def staff_of(world: World, email: str) -> str:
    with world.session() as session:
        create_staff(session, world.district_id, email, PASSWORD)
    return email


def signed_in(world: World, email: str) -> requests.Session:
    browser = requests.Session()
    page = browser.get(world.url("/dashboard/login"))
    response = browser.post(
        world.url("/dashboard/login"),
        data={"email": email, "password": PASSWORD, "csrf_token": csrf(page)},
        allow_redirects=False,
    )
    assert response.status_code == 302, response.text
    return browser


def save_alerts(world: World, browser: requests.Session, **fields: str) -> requests.Response:
    page = browser.get(world.url("/dashboard/alerts"))
    form = {"enabled": "on", "recipients": "", "webhook_url": "", "failure_threshold": "100", "period_minutes": "60"}
    form.update(fields)
    return browser.post(world.url("/dashboard/alerts"), data={**form, "csrf_token": csrf(page)})


def deliver(worker: DeliveryWorker, clock: FrozenClock) -> None:
    """Grades posted just now (real time) are due once the frozen clock has caught up with them."""
    behind = (SYSTEM_CLOCK.now() - clock.now()).total_seconds()
    clock.advance(max(0.0, behind) + 1)
    worker.run_until_idle()


SCORES = iter(range(10_000))


def post_grades(world: World, count: int) -> None:
    """`count` new grades (each a new score, so each is a new delivery), alternating between the two students."""
    for n in range(count):
        body = {"assignmentID": "quiz-1", "userID": world.students[n % 2], "percentage": next(SCORES) / 10_000}
        assert world.post_grade(body).status_code == 202


def test_an_unhealthy_connection_mails_its_districts_staff_at_most_once_per_period(
    app: Flask,
    world: World,
    live_server: LiveServer,
    http: requests.Session,
    smtp: SmtpServer,
    clock: FrozenClock,
    frozen_worker: DeliveryWorker,
    sender: AlertSender,
) -> None:
    admin, second = staff_of(world, "admin@district.example"), staff_of(world, "second@district.example")
    other = build_world(app, live_server.url, http, district_name="Other District")
    outsider = staff_of(other, "staff@other.example")
    assert save_alerts(world, signed_in(world, admin)).status_code == 200
    assert save_alerts(other, signed_in(other, outsider)).status_code == 200

    world.inject_faults(20, status=503)
    post_grades(world, 1)
    deliver(frozen_worker, clock)
    assert sender.run_once() == (1, 1)
    [mail] = smtp.inbox.wait_for(1)
    assert sorted(mail.recipients) == [admin, second], "the district's staff, and only them"
    assert mail.sender == "passback@district.example"
    assert mail.subject == "[Passback] LMS connection Sandbox is failing"
    assert "'Sandbox'" in mail.body and "injected fault, HTTP 503" in mail.body, mail.body
    assert f"{live_server.url}/dashboard/alerts" in mail.body

    assert sender.run_once() == (0, 0), "one alert per episode"
    world.inject_faults(0)
    clock.advance(60)
    deliver(frozen_worker, clock)
    assert sender.run_once() == (0, 0), "healthy again: no alert"

    world.inject_faults(20, status=503)
    post_grades(world, 1)
    deliver(frozen_worker, clock)
    assert sender.run_once() == (0, 0), "failing again within the period: not yet"
    clock.advance(3600)
    assert sender.run_once() == (1, 1), "the period is over: the new episode is reported"
    mails = smtp.inbox.wait_for(2)
    assert len(mails) == 2
    assert all(outsider not in m.recipients for m in mails)

    page = signed_in(world, admin).get(world.url("/dashboard/alerts")).text
    assert page.count("status-delivered") == 2 and "injected fault, HTTP 503" in page
    theirs = signed_in(other, outsider).get(world.url("/dashboard/alerts")).text
    assert "No alerts yet." in theirs and "injected fault" not in theirs


def test_failures_past_the_threshold_reach_the_webhook_signed_and_the_mail_recipients(
    world: World,
    smtp: SmtpServer,
    clock: FrozenClock,
    frozen_worker: DeliveryWorker,
    sender: AlertSender,
    live_server: LiveServer,
) -> None:
    browser = signed_in(world, staff_of(world, "admin@district.example"))
    with WebhookReceiver() as receiver:
        saved = save_alerts(
            world,
            browser,
            recipients="oncall@district.example, oncall@district.example",
            webhook_url=receiver.url,
            failure_threshold="2",
            period_minutes="30",
        )
        assert saved.status_code == 200
        secret = re.search(r'<code id="webhook-secret">(whsec_[^<]+)</code>', saved.text).group(1)
        assert secret not in browser.get(world.url("/dashboard/alerts")).text, "the secret is shown once"

        world.inject_faults(20, status=503)
        post_grades(world, 2)
        deliver(frozen_worker, clock)
        assert sender.run_once() == (2, 2)
        bodies = [Webhook(secret).verify(r.body, r.headers) for r in receiver.requests]
        assert sorted(b["type"] for b in bodies) == ["connection.failures", "connection.unhealthy"]
        failures = next(b["data"] for b in bodies if b["type"] == "connection.failures")
        assert failures["failures"] == 2 and failures["threshold"] == 2 and failures["periodSeconds"] == 1800
        assert failures["connection"] == {"id": world.connection_id, "name": "Sandbox"}
        assert failures["dashboardUrl"] == f"{live_server.url}/dashboard/alerts"
        assert "injected fault" in failures["cause"]
        mails = smtp.inbox.wait_for(2)
        assert [m.recipients for m in mails] == [["oncall@district.example"]] * 2
        assert {m.subject for m in mails} == {
            "[Passback] LMS connection Sandbox is failing",
            "[Passback] LMS connection Sandbox: 2 deliveries failed in 30 minutes",
        }

        clock.advance(31 * 60)
        assert sender.run_once() == (0, 0), "no failures in the new window, no success since: nothing new"
        deliver(frozen_worker, clock)  # both deliveries are retried and fail again
        assert sender.run_once() == (1, 1)
        assert len(receiver.requests) == 3
        assert json.loads(receiver.requests[-1].body)["type"] == "connection.failures"


def test_a_failed_send_is_recorded_retried_and_given_up_on_without_raising(
    app: Flask, world: World, smtp: SmtpServer, clock: FrozenClock, frozen_worker: DeliveryWorker, sender: AlertSender
) -> None:
    browser = signed_in(world, staff_of(world, "admin@district.example"))
    app.config["PASSBACK"].smtp_port = free_port()  # nothing listens there
    with WebhookReceiver(status=500) as receiver:
        save_alerts(world, browser, webhook_url=receiver.url)
        world.inject_faults(20, status=503)
        post_grades(world, 1)
        deliver(frozen_worker, clock)
        assert sender.run_once() == (1, 0)
        with world.session() as session:
            alert = session.scalars(select(Alert)).one()
            assert alert.status == "pending" and alert.attempts == 1
            assert "email: ConnectionRefusedError" in alert.error
            assert "webhook: the webhook answered HTTP 500" in alert.error

        receiver.status = 204
        assert sender.run_once() == (0, 0), "not due again yet"
        clock.advance(61)
        assert sender.run_once() == (0, 0)
        assert len(receiver.requests) == 2
        for wait in (301, 901):
            clock.advance(wait)
            sender.run_once()
        assert len(receiver.requests) == 2, "a channel that was sent is not sent again"
    with world.session() as session:
        alert = session.scalars(select(Alert)).one()
        assert (alert.status, alert.attempts, alert.channels["webhook"]) == ("failed", 4, "sent")
        assert "email: ConnectionRefusedError" in alert.error
    page = browser.get(world.url("/dashboard/alerts")).text
    assert "status-failed" in page and "ConnectionRefusedError" in page
    assert smtp.inbox.mails == []


def test_bad_settings_are_refused_on_a_page_naming_each_field_and_nothing_changes(world: World) -> None:
    browser = signed_in(world, staff_of(world, "admin@district.example"))
    assert browser.get(world.url("/dashboard/alerts")).status_code == 200
    refused = browser.post(world.url("/dashboard/alerts"), data={"enabled": "on", "failure_threshold": "3"})
    assert refused.status_code == 400, "a form without the CSRF token is refused"

    bad = save_alerts(
        world,
        browser,
        recipients="ops@district.example, not-an-address",
        webhook_url="ftp://alerts.example/hook",
        failure_threshold="many",
        period_minutes="1",
    )
    assert bad.status_code == 422 and bad.headers["Content-Type"].startswith("text/html")
    for field, words in [
        ("recipients", "&#39;not-an-address&#39; is not an e-mail address."),
        ("webhook_url", "It must be an http(s) URL."),
        ("failure_threshold", "Enter a whole number"),
        ("period_minutes", "Must be from 5 to 10,080."),
    ]:
        assert f"<li>{field}: {words}" in bad.text, (field, bad.text)
    assert 'value="ftp://alerts.example/hook"' in bad.text, "what was typed is kept"
    with world.session() as session:
        assert session.get(AlertSettings, world.district_id) is None

    public_only = save_alerts(world, browser, webhook_url="http://10.0.0.5/hook")
    assert public_only.status_code == 200, "this installation allows private addresses (the tests' receivers)"
    services_of(world.app).settings.webhook_allow_private_addresses = False
    refused_private = save_alerts(world, browser, webhook_url="https://127.0.0.1/hook")
    assert refused_private.status_code == 422 and "<li>webhook_url: It is a loopback" in refused_private.text

    assert "Nothing was saved" not in browser.get(world.url("/dashboard/alerts")).text
    saved = save_alerts(world, browser, recipients="ops@district.example", failure_threshold="7")
    assert saved.status_code == 200 and "Alert settings saved." in saved.text
    assert "ops@district.example" in saved.text and 'value="7"' in saved.text
    audit = browser.get(world.url("/dashboard/audit")).text
    assert audit.count("changed alert settings") == 2


def test_paused_connections_and_districts_without_alerts_are_left_alone(
    world: World, smtp: SmtpServer, clock: FrozenClock, frozen_worker: DeliveryWorker, sender: AlertSender
) -> None:
    staff_of(world, "admin@district.example")
    world.inject_faults(20, status=503)
    post_grades(world, 1)
    deliver(frozen_worker, clock)
    assert sender.run_once() == (0, 0), "no alert settings: no alerts"
    browser = signed_in(world, "admin@district.example")
    save_alerts(world, browser, enabled="")
    assert sender.run_once() == (0, 0), "alerts saved but not switched on"
    save_alerts(world, browser)
    with world.session() as session:
        from gateway.models import LmsConnection

        session.get(LmsConnection, world.connection_id).paused = True
    assert sender.run_once() == (0, 0), "a paused connection is not alerted about"
    assert smtp.inbox.mails == []


def test_evaluations_running_at_once_decide_one_alert(
    app: Flask, world: World, clock: FrozenClock, frozen_worker: DeliveryWorker
) -> None:
    """Several workers evaluating one district at the same moment: the settings row's lock makes them take turns,
    and those after the first see its alert."""
    with world.session() as session:
        session.add(AlertSettings(district_id=world.district_id, enabled=True, recipients=["ops@district.example"]))
    world.inject_faults(20, status=503)
    post_grades(world, 1)
    deliver(frozen_worker, clock)
    database = services_of(app).database
    start = threading.Barrier(4)
    decided: list[list[str]] = []

    def evaluate() -> None:
        start.wait()
        assert database.sessionmaker is not None
        unit = UnitOfWork(database.sessionmaker(), close=True)
        decided.append(evaluate_district(unit, world.district_id, now=clock.now()))

    def slow_insert(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        # Widen the race: between reading the last alert and writing one, every evaluation waits a moment.
        if statement.lstrip().upper().startswith("INSERT INTO ALERTS"):
            time.sleep(0.3)

    event.listen(database.engine, "before_cursor_execute", slow_insert)
    try:
        threads = [threading.Thread(target=evaluate) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        event.remove(database.engine, "before_cursor_execute", slow_insert)
    assert len(decided) == 4 and sorted(len(ids) for ids in decided) == [0, 0, 0, 1]
    with world.session() as session:
        assert len(session.scalars(select(Alert)).all()) == 1


def test_a_viewer_sees_the_alert_settings_and_alerts_but_cannot_change_them(world: World) -> None:
    admin = signed_in(world, staff_of(world, "admin@district.example"))
    save_alerts(world, admin, recipients="ops@district.example", failure_threshold="7")
    with world.session() as session:
        create_staff(session, world.district_id, "viewer@district.example", PASSWORD, role="viewer")
    viewer = signed_in(world, "viewer@district.example")
    page = viewer.get(world.url("/dashboard/alerts"))
    assert page.status_code == 200 and "ops@district.example" in page.text and "7 failed deliveries" in page.text
    assert "Save alert settings" not in page.text and 'name="failure_threshold"' not in page.text
    form = {"enabled": "", "recipients": "", "failure_threshold": "1", "period_minutes": "5"}
    refused = viewer.post(world.url("/dashboard/alerts"), data={**form, "csrf_token": csrf(page)})
    assert refused.status_code == 403
    with world.session() as session:
        settings = session.get(AlertSettings, world.district_id)
        assert (settings.enabled, settings.failure_threshold) == (True, 7)
