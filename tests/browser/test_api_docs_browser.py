"""The Swagger UI page in a real browser, under Passback's unchanged Content-Security-Policy: it renders every
documented operation, logs no error (a CSP violation would be one) and asks no other host for anything."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from tests.conftest import LiveServer


def test_swagger_ui_renders_every_operation_under_the_csp(live_server: LiveServer, page: Any) -> None:
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    hosts: set[str] = set()
    page.on("request", lambda request: hosts.add(urlsplit(request.url).netloc))
    document = page.request.get("/openapi.json").json()

    page.goto("/api-docs")
    page.locator(".opblock").first.wait_for()

    shown = sorted(page.locator(".opblock-summary-path").all_inner_texts())
    assert shown == sorted(path for path, methods in document["paths"].items() for _ in methods)
    page.get_by_text("Post a grade: percentage, or scoreGiven with scoreMaximum").click()
    page.get_by_text("Idempotent-Replayed", exact=True).first.wait_for()
    assert errors == []
    assert hosts == {urlsplit(live_server.url).netloc}
