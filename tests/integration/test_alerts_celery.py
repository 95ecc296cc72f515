"""Alerts under Celery: `gateway beat` schedules the `passback.alerts` task, a real Celery worker process (over the
real Redis on 127.0.0.1) evaluates and mails the alert to a real SMTP server on 127.0.0.1. Skipped, with the
reason, where no Redis answers (as tests/integration/test_celery.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.models import AlertSettings
from gateway.tasks import celery_app, configure_celery
from tests.alert_receivers import SmtpServer
from tests.factories import World
from tests.integration.test_celery import REDIS_URL, CeleryWorker, broker, post  # noqa: F401 - broker: a fixture

pytestmark = pytest.mark.slow


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"lease_seconds": 3.0, "broker_url": REDIS_URL}


def test_beat_schedules_the_alert_round_at_the_configured_interval() -> None:
    schedule = configure_celery(Settings(broker_url=REDIS_URL, alert_check_seconds=42.0)).conf.beat_schedule
    assert schedule["passback-alerts"] == {"task": "passback.alerts", "schedule": 42.0}
    assert "passback.alerts" in celery_app.tasks


def test_a_celery_worker_mails_the_alert_of_a_failing_connection(
    world: World, smtp: SmtpServer, database_url: str, tmp_path: Path
) -> None:
    with world.session() as session:
        session.add(AlertSettings(district_id=world.district_id, enabled=True, recipients=["oncall@district.example"]))
    world.inject_faults(50, status=503)
    post(world, 0.7)
    worker = CeleryWorker(
        database_url,
        tmp_path,
        "celery-alerts",
        environment={
            "GATEWAY_SMTP_HOST": "127.0.0.1",
            "GATEWAY_SMTP_PORT": str(smtp.port),
            "GATEWAY_SMTP_STARTTLS": "false",
            "GATEWAY_ALERT_CHECK_SECONDS": "0.5",
            "GATEWAY_PUBLIC_URL": world.base_url,
        },
    )
    try:
        mails = smtp.inbox.wait_for(1, timeout=60)
    finally:
        worker.stop()
    assert len(mails) == 1, worker.log()
    [mail] = mails
    assert mail.recipients == ["oncall@district.example"]
    assert mail.subject == "[Passback] LMS connection Sandbox is failing"
    assert f"{world.base_url}/dashboard/alerts" in mail.body
