"""The district's time zone (issue 16): set from the CLI (an unknown zone refused, naming the field), and every
dashboard time shown in it with its abbreviation; the overview's days are the district's calendar days."""

from __future__ import annotations

import json
import re
from datetime import datetime

from click.testing import CliRunner
from sqlalchemy import select, update

from gateway.cli import main
from gateway.models import AuditEntry, Delivery, District
from gateway.services.dashboard_overview import overview
from gateway.services.local_time import local_midnight_utc
from gateway.worker import DeliveryWorker
from tests.factories import World
from tests.integration.test_dashboard import signed_in, staff_of


def test_staff_read_times_in_the_districts_zone(world: World, worker: DeliveryWorker, runner: CliRunner) -> None:
    done = runner.invoke(
        main, ["district", "update", world.district_id, "--time-zone", "America/New_York", "--operator", "it", "--json"]
    )
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["time_zone"] == "America/New_York"
    world.post_grade({"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.6})
    worker.run_until_idle()
    with world.session() as session:
        session.execute(update(Delivery).values(delivered_at=datetime(2026, 12, 7, 14, 3)))  # 09:03 in New York
        session.execute(update(AuditEntry).values(created_at=datetime(2026, 7, 4, 16, 0, 5)))  # 12:00:05 EDT

    browser = signed_in(world, staff_of(world))
    listed = browser.get(world.url("/dashboard/deliveries"), params={"status": "delivered"}).text
    assert "2026-12-07 09:03 EST" in listed
    assert "2026-12-07 14:03" not in listed and " UTC" not in listed
    audit = browser.get(world.url("/dashboard/audit")).text
    assert "2026-07-04 12:00:05 EDT" in audit, "daylight saving time is the zone's, not a fixed offset"


def test_an_unknown_zone_is_refused_and_changes_nothing(world: World, runner: CliRunner) -> None:
    refused = runner.invoke(main, ["district", "update", world.district_id, "--time-zone", "Mars/Olympus", "--json"])
    assert refused.exit_code == 1
    error = json.loads(refused.output)["error"]
    assert "time_zone" in error["fields"] and "Mars/Olympus" in error["message"]
    with world.session() as session:
        assert session.scalar(select(District.time_zone).where(District.id == world.district_id)) == "UTC"


def test_the_overviews_days_are_the_districts_calendar_days(world: World, worker: DeliveryWorker) -> None:
    with world.session() as session:
        session.execute(update(District).where(District.id == world.district_id).values(time_zone="Pacific/Auckland"))
    world.post_grade({"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.6})
    worker.run_until_idle()
    now = datetime(2026, 12, 7, 11, 30)  # 00:30 on Tuesday 8 December in Auckland (UTC+13)
    with world.session() as session:
        session.execute(update(Delivery).values(created_at=datetime(2026, 12, 7, 10, 45)))  # 23:45 Monday there
        seen = overview(session, world.district_id, now=now)
    days = {day: good for day, good, _, _ in seen.daily}
    assert days["Mon 07"] == 1 and days["Tue 08"] == 0, seen.daily
    assert local_midnight_utc(now, "Pacific/Auckland", 0) == datetime(2026, 12, 7, 11, 0)
    assert re.fullmatch(r"[A-Z][a-z]{2} \d\d", seen.daily[0][0])
