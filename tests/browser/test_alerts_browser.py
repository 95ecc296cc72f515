"""Alerts in a real browser: staff switch alerts on at /dashboard/alerts, the LMS goes down, the embedded worker's
housekeeping raises the alert, the mail arrives at a real SMTP server on 127.0.0.1, and the page lists it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from gateway.composition import services_of
from tests.alert_receivers import SmtpServer
from tests.browser.conftest import sign_in, staff_account
from tests.factories import World


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


@pytest.fixture
def settings_overrides(smtp: SmtpServer) -> dict[str, object]:
    return {
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp.port,
        "smtp_starttls": False,
        "alert_from": "passback@district.example",
        # Housekeeping looks for connections in trouble often, so the test need not wait a minute.
        "alert_check_seconds": 0.2,
    }


def test_staff_switch_alerts_on_and_an_outage_mails_them_and_is_listed(
    app: Flask, world: World, page: Any, smtp: SmtpServer, artifacts_dir: Path
) -> None:
    email = staff_account(world)
    sign_in(page, email)
    page.get_by_role("navigation", name="Dashboard").get_by_role("link", name="Alerts").click()
    page.get_by_role("heading", name="Alerts", exact=True).wait_for()
    assert "No alerts yet." in page.get_by_role("table", name="Recent alerts").inner_text()
    page.get_by_label("Send alerts").check()
    page.get_by_label("E-mail recipients").fill("oncall@district.example")
    page.get_by_label("Failed deliveries of one connection within the period").fill("1")
    page.get_by_label("Period, in minutes").fill("abc")
    page.get_by_role("button", name="Save alert settings").click()
    assert "period_minutes: Enter a whole number" in page.get_by_role("alert").inner_text()
    page.get_by_label("Period, in minutes").fill("30")
    page.get_by_role("button", name="Save alert settings").click()
    page.get_by_role("status").filter(has_text="Alert settings saved.").wait_for()

    services_of(app).start_embedded_worker()
    world.inject_faults(50, status=503)  # the LMS is down
    posted = world.post_grade({"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.8})
    assert posted.status_code == 202

    mails = smtp.inbox.wait_for(2, timeout=15)
    assert {m.subject for m in mails} == {
        "[Passback] LMS connection Sandbox is failing",
        "[Passback] LMS connection Sandbox: 1 delivery failed in 30 minutes",
    }
    assert all(m.recipients == ["oncall@district.example"] for m in mails)
    assert all("injected fault, HTTP 503" in m.body and "/dashboard/alerts" in m.body for m in mails)

    deadline = time.monotonic() + 5
    while True:
        page.reload()
        table = page.get_by_role("table", name="Recent alerts").inner_text()
        if table.count("sent") >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert "Sandbox" in table and "unhealthy" in table and "failures" in table and table.count("sent") >= 2, table
    page.screenshot(path=artifacts_dir / "alerts.png", full_page=True)
