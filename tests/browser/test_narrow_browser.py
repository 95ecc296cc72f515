"""The dashboard on a phone (issue 16): at 390 px wide no page scrolls sideways (a wide table scrolls in its own
box), and the overview's rows lead to their lists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests
from flask import Flask
from sqlalchemy import select

from gateway.models import Delivery
from gateway.worker import DeliveryWorker
from tests.browser.conftest import build_showcase, save_screenshot, sign_in, staff_account
from tests.factories import World

PHONE = {"width": 390, "height": 844}


def test_every_page_fits_a_phone_and_the_overview_leads_to_its_lists(
    app: Flask, world: World, worker: DeliveryWorker, http: requests.Session, browser: Any, artifacts_dir: Path
) -> None:
    build_showcase(app, world, worker, http)
    with world.session() as session:
        delivery_id = session.scalar(select(Delivery.id).where(Delivery.status == "failed"))
    context = browser.new_context(base_url=world.base_url, viewport=PHONE, is_mobile=True)
    context.set_default_timeout(5_000)
    page = context.new_page()
    try:
        sign_in(page, staff_account(world))
        pages = [
            "/dashboard/",
            "/dashboard/deliveries",
            "/dashboard/deliveries?status=failed",
            f"/dashboard/deliveries/{delivery_id}",
            "/dashboard/connections",
            f"/dashboard/connections/{world.connection_id}/settings",
            "/dashboard/apps",
            "/dashboard/webhooks",
            "/dashboard/sandbox",
            "/dashboard/audit",
        ]
        for path in pages:
            page.goto(path)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= PHONE["width"], f"{path} is {width} px wide at {PHONE['width']} px"
        page.goto("/dashboard/")
        save_screenshot(page, "overview-phone", artifacts_dir)

        # The chart counts grades that could not be sent, and each overview row opens its list.
        chart = page.get_by_role("table", name="Deliveries per day")
        assert "Not sent: unroutable or awaiting a launch" in chart.inner_text()
        page.get_by_role("table", name="By app (7 days)").get_by_role("link", name="Reading Ladder", exact=True).click()
        page.get_by_role("link", name="Chapter 1 check").wait_for()
        page.goto("/dashboard/")
        page.get_by_role("table", name="By LMS connection (7 days)").get_by_role(
            "link", name="Sandbox", exact=True
        ).click()
        page.wait_for_url(f"**/dashboard/connections#c-{world.connection_id}")
    finally:
        context.close()


def test_an_overview_count_opens_the_list_it_counts(
    app: Flask, world: World, worker: DeliveryWorker, http: requests.Session, page: Any
) -> None:
    build_showcase(app, world, worker, http)
    sign_in(page, staff_account(world))
    table = page.get_by_role("table", name="By app (7 days)")
    link = table.get_by_role("link", name="failed of Reading Ladder")
    counted = int(link.inner_text())
    link.click()
    page.get_by_role("heading", name="Failed deliveries").wait_for()
    assert page.locator("#total").inner_text().startswith(f"{counted} deliver")
    assert page.get_by_role("form", name="Filter the deliveries").get_by_label("App").input_value() != ""
