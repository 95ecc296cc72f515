"""The dashboard's sandbox page in a real browser: a simulated launch lands on the app's redirect URI (another
origin, which the page's Content-Security-Policy must let the form's redirect reach) with a code the app can
exchange; faults are injected and cleared with the page's forms."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from gateway.crypto import hash_token
from gateway.models import App, User
from gateway.worker import DeliveryWorker
from tests.browser.conftest import save_screenshot, sign_in, staff_account
from tests.factories import World

CLIENT_SECRET = "the-quiz-apps-client-secret-0123456789"


class _Callback(BaseHTTPRequestHandler):
    """The app's redirect URI: records the query it was sent and shows it."""

    def do_GET(self) -> None:
        if urlsplit(self.path).path == "/callback":  # not the browser's favicon request
            self.server.seen.append(urlsplit(self.path).query)  # type: ignore[attr-defined]
        body = b"<!doctype html><title>App</title><h1>Signed in</h1>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        return None


@pytest.fixture
def app_callback() -> Iterator[tuple[str, list[str]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Callback)
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/callback", server.seen  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


def test_staff_launch_a_student_into_the_app_and_inject_faults(
    world: World, worker: DeliveryWorker, page: Any, app_callback: tuple[str, list[str]], artifacts_dir: Path
) -> None:
    redirect_uri, seen = app_callback
    with world.session() as session:
        app = session.get(App, world.app_id)
        app.redirect_uri = redirect_uri
        app.client_secret_hash = hash_token(CLIENT_SECRET)
        client_id = app.client_id
        session.get(User, world.students[1]).name = "Alan Turing"
        session.get(User, world.students[1]).sis_id = "S-1002"
        session.get(User, world.students[0]).name = "Ada Lovelace"
    world.post_grade({"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.8, "comment": "Well done"})
    worker.run_until_idle()

    sign_in(page, staff_account(world))
    page.get_by_role("link", name="Sandbox gradebook").click()
    page.get_by_role("heading", name="Sandbox LMS").wait_for()
    page.get_by_label("Student", exact=True).select_option(label="Alan Turing (SIS S-1002)")
    page.get_by_label("Assignment", exact=True).select_option(label="Quiz 2 (quiz-2) · Quiz App")
    page.get_by_role("button", name="Launch").click()
    page.get_by_role("heading", name="Signed in").wait_for()

    assert len(seen) == 1, seen
    query = parse_qs(seen[0])
    assert page.url.startswith(redirect_uri + "?") and query["state"] == ["assignment:quiz-2"]
    token = requests.post(
        world.url("/oauth/tokens"),
        auth=(client_id, CLIENT_SECRET),
        data={"grant_type": "authorization_code", "code": query["code"][0], "redirect_uri": redirect_uri},
        timeout=10,
    )
    assert token.status_code == 200, token.text
    assert world.get("/v1/me", token=token.json()["access_token"]).json()["data"]["id"] == world.students[1]

    page.goto("/dashboard/sandbox")
    page.get_by_label("The next writes").select_option(value="refuse")
    page.get_by_label("How many writes").fill("2")
    page.get_by_role("button", name="Inject faults").click()
    page.get_by_text(
        "The next 2 score writes will fail: sandbox LMS is unavailable (injected fault, HTTP 422)."
    ).wait_for()
    save_screenshot(page, "sandbox", artifacts_dir)
    page.get_by_role("button", name="Clear faults").click()
    page.get_by_text("No faults: the sandbox LMS stores every score write.").wait_for()
    assert page.get_by_role("button", name="Clear faults").count() == 0
