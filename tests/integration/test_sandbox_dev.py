"""The sandbox as a development LMS, over real HTTP: `gateway demo --json` and the credentials it prints, the
demo token kept in GATEWAY_DEMO_TOKEN_FILE, simulated launches through the sign-in code flow (the sandbox's API and
the dashboard), faults injected and cleared from the dashboard, the gradebook page, and read-back."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import select

from gateway.cli import main
from gateway.composition import services_of
from gateway.crypto import hash_token
from gateway.models import ApiToken, App, LmsConnection, User
from gateway.services.directory import create_user, enroll
from gateway.services.lms import add_placement
from gateway.worker import DeliveryWorker
from tests.conftest import TEST_ENCRYPTION_KEY, LiveServer
from tests.factories import World, build_world
from tests.integration.test_dashboard import csrf, signed_in, staff_of

CLIENT_SECRET = "the-quiz-apps-client-secret-0123456789"
REDIRECT = "https://quiz.example/callback"


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    # Retries are not due within a test (a fault's effect stays visible); a hanging LMS is cut after 2 s.
    return {"backoff_base_seconds": 60.0, "backoff_max_seconds": 120.0, "http_request_deadline": 2.0}


def demo_cli(database_url: str, *args: str, token_file: Path | None = None) -> dict[str, Any]:
    env = {
        "GATEWAY_DATABASE_URL": database_url,
        "GATEWAY_ENCRYPTION_KEYS": TEST_ENCRYPTION_KEY,
        "GATEWAY_SECRET_KEY": "test-secret-key",
        "GATEWAY_DEMO_TOKEN_FILE": str(token_file) if token_file else "",
    }
    result = CliRunner(env=env).invoke(main, ["demo", "--json", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def exchange(base_url: str, client_id: str, secret: str, code: str, redirect_uri: str) -> requests.Response:
    return requests.post(
        f"{base_url}/oauth/tokens",
        auth=(client_id, secret),
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri},
        timeout=10,
    )


def code_and_state(redirect: str) -> tuple[str, str]:
    query = parse_qs(urlsplit(redirect).query)
    return query["code"][0], query["state"][0]


def world_client(world: World) -> str:
    """The world's app gets a known client secret (only its hash is stored); returns its client id."""
    with world.session() as session:
        app = session.get(App, world.app_id)
        app.client_secret_hash = hash_token(CLIENT_SECRET)
        return str(app.client_id)


def sandbox_launch(world: World, body: dict[str, Any], secret: str | None = None) -> requests.Response:
    return world.http.post(
        world.url(f"/sandbox-lms/{world.connection_id}/launches"),
        json=body,
        headers={"Authorization": f"Bearer {secret or world.sandbox_secret}"},
    )


# --- gateway demo --json -----------------------------------------------------------------------------------


def test_demo_json_prints_what_an_app_needs_and_every_credential_works(
    app: Flask, database_url: str, live_server: LiveServer, http: requests.Session
) -> None:
    demo = demo_cli(database_url, "--public-url", live_server.url)
    assert demo["redirect_uri"] == f"{live_server.url}/demo/callback"
    assert demo["sandbox_url"] == f"{live_server.url}/sandbox-lms/{demo['lms_connection_id']}"
    assert [(s["name"], s["sisID"]) for s in demo["students"]] == [
        ("Ada Lovelace", "S-1001"),
        ("Alan Turing", "S-1002"),
    ]
    assert demo["assignment_ids"] == ["fractions-quiz-1", "reading-check-1"] and not demo["token_kept"]

    token = {"Authorization": f"Bearer {demo['token']}"}
    assert http.get(f"{live_server.url}/v1/me", headers=token).json()["type"] == "district_app"
    sandbox = {"Authorization": f"Bearer {demo['sandbox_secret']}"}
    assert http.get(demo["sandbox_url"] + "/gradebook", headers=sandbox).json() == {"entries": []}

    # The demo redirect works: Passback's own page shows what the sign-in sent.
    launched = http.post(
        demo["sandbox_url"] + "/launches", json={"sisID": "S-1002", "assignmentID": "fractions-quiz-1"}, headers=sandbox
    )
    assert launched.status_code == 200, launched.text
    redirect = launched.json()["redirect"]
    assert redirect.startswith(demo["redirect_uri"] + "?")
    landing = http.get(redirect)
    code, _state = code_and_state(redirect)
    assert landing.status_code == 200 and code in landing.text and "assignment:fractions-quiz-1" in landing.text
    assert f"-d code={code}" in landing.text, "the page says how to exchange the code"
    signed_in_token = exchange(live_server.url, demo["client_id"], demo["client_secret"], code, demo["redirect_uri"])
    assert signed_in_token.status_code == 200, signed_in_token.text
    me = http.get(
        f"{live_server.url}/v1/me", headers={"Authorization": f"Bearer {signed_in_token.json()['access_token']}"}
    ).json()
    assert me["type"] == "student" and me["data"]["id"] == demo["students"][1]["userID"]

    # Without a token file every run issues a new token and secret; the old ones stop working.
    again = demo_cli(database_url, "--public-url", live_server.url)
    assert again["token"] != demo["token"] and again["client_secret"] != demo["client_secret"]
    assert http.get(f"{live_server.url}/v1/me", headers=token).status_code == 401
    launched = http.post(
        demo["sandbox_url"] + "/launches", json={"sisID": "S-1001", "assignmentID": "fractions-quiz-1"}, headers=sandbox
    )
    code, _ = code_and_state(launched.json()["redirect"])
    stale = exchange(live_server.url, demo["client_id"], demo["client_secret"], code, demo["redirect_uri"])
    assert stale.status_code == 401 and stale.json()["error"] == "invalid_client"


def test_the_token_file_keeps_the_demo_credentials_and_replaces_what_stopped_working(
    app: Flask, database_url: str, live_server: LiveServer, http: requests.Session, tmp_path: Path
) -> None:
    token_file = tmp_path / "state" / "demo-token.json"
    first = demo_cli(database_url, "--public-url", live_server.url, token_file=token_file)
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
    assert json.loads(token_file.read_text())["token"] == first["token"]
    second = demo_cli(database_url, "--public-url", live_server.url, token_file=token_file)
    assert (second["token"], second["client_secret"]) == (first["token"], first["client_secret"])
    assert second["token_kept"] and second["client_secret_kept"]
    with services_of(app).database.transaction() as session:
        hashes = list(session.scalars(select(ApiToken.token_hash)))
    assert hash_token(first["token"]) in hashes and first["token"] not in hashes, "stored as its hash only"

    # A revoked token is replaced (and the file with it); the still-good client secret is kept.
    with services_of(app).database.transaction() as session:
        session.scalar(
            select(ApiToken).where(ApiToken.token_hash == hash_token(first["token"]))
        ).revoked_at = datetime.now(UTC).replace(tzinfo=None)
    os.chmod(token_file, 0o644)
    third = demo_cli(database_url, "--public-url", live_server.url, token_file=token_file)
    assert third["token"] != first["token"] and not third["token_kept"]
    assert third["client_secret"] == first["client_secret"] and third["client_secret_kept"]
    assert json.loads(token_file.read_text())["token"] == third["token"]
    assert oct(token_file.stat().st_mode & 0o777) == "0o600", "rewritten with the owner's mode only"
    assert http.get(f"{live_server.url}/v1/me", headers={"Authorization": f"Bearer {third['token']}"}).ok

    # A file that is not ours is replaced, not trusted.
    token_file.write_text("not json")
    fourth = demo_cli(database_url, "--public-url", live_server.url, token_file=token_file)
    assert not fourth["token_kept"] and json.loads(token_file.read_text())["token"] == fourth["token"]


def test_demo_redirect_uri_can_point_at_an_app_and_stays_there(
    app: Flask, database_url: str, live_server: LiveServer
) -> None:
    demo_cli(database_url, "--public-url", live_server.url, "--redirect-uri", "http://127.0.0.1:5001/callback")
    kept = demo_cli(database_url, "--public-url", "http://127.0.0.1:9")
    assert kept["redirect_uri"] == "http://127.0.0.1:5001/callback", "an app's redirect URI is not reset by a run"
    back = demo_cli(database_url, "--public-url", live_server.url, "--redirect-uri", f"{live_server.url}/demo/callback")
    moved = demo_cli(database_url, "--public-url", "http://127.0.0.1:9")
    assert back["redirect_uri"] == f"{live_server.url}/demo/callback"
    assert moved["redirect_uri"] == "http://127.0.0.1:9/demo/callback", "Passback's own page follows the public URL"
    result = CliRunner(
        env={"GATEWAY_DATABASE_URL": database_url, "GATEWAY_ENCRYPTION_KEYS": TEST_ENCRYPTION_KEY}
    ).invoke(main, ["demo", "--redirect-uri", "javascript:alert(1)"])
    assert result.exit_code != 0 and "redirect URI must be an http(s) URL" in result.output


def test_demo_callback_page_escapes_what_it_shows(live_server: LiveServer, http: requests.Session) -> None:
    hostile = http.get(
        f"{live_server.url}/demo/callback", params={"code": "<script>alert(1)</script>", "state": '"><img src=x>'}
    )
    assert hostile.status_code == 200 and hostile.headers["Content-Type"].startswith("text/html")
    assert "<script>alert(1)" not in hostile.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in hostile.text
    assert "<img src=x>" not in hostile.text
    assert "curl" not in hostile.text, "no command to paste into a shell for a code Passback would never mint"
    assert "default-src 'none'" in hostile.headers["Content-Security-Policy"]
    empty = http.get(f"{live_server.url}/demo/callback")
    assert empty.status_code == 200 and "No code in this request" in empty.text


# --- simulated launches ------------------------------------------------------------------------------------


def test_a_sandbox_launch_signs_the_student_in_through_the_code_flow(world: World, worker: DeliveryWorker) -> None:
    client_id = world_client(world)
    with world.session() as session:
        session.get(User, world.students[0]).sis_id = "S-1001"
    launched = sandbox_launch(world, {"sisID": "S-1001", "assignmentID": "quiz-1"})
    assert launched.status_code == 200, launched.text
    answer = launched.json()
    assert answer["userID"] == world.students[0] and answer["courseID"] == "course-101"
    code, state = code_and_state(answer["redirect"])
    assert answer["redirect"].startswith(REDIRECT + "?") and state == "assignment:quiz-1"

    token = exchange(world.base_url, client_id, CLIENT_SECRET, code, REDIRECT)
    assert token.status_code == 200, token.text
    student = token.json()["access_token"]
    assert world.get("/v1/me", token=student).json()["data"]["id"] == world.students[0]
    posted = world.post_grade({"assignmentID": "quiz-1", "percentage": 0.9}, token=student)
    assert posted.status_code == 202 and posted.json()["userID"] == world.students[0]
    assert exchange(world.base_url, client_id, CLIENT_SECRET, code, REDIRECT).json()["error"] == "invalid_grant"


def test_a_sandbox_launch_enrolls_the_student_and_routes_their_waiting_grade(
    world: World, worker: DeliveryWorker
) -> None:
    with world.session() as session:
        carol = create_user(session, world.district_id, name="Carol", email="carol@school.example").id
    waiting = world.post_grade({"assignmentID": "quiz-1", "userID": carol, "percentage": 0.5})
    assert world.get(waiting.headers["Location"]).json()["status"] == "unroutable"
    assert sandbox_launch(world, {"email": "carol@school.example", "assignmentID": "quiz-1"}).status_code == 200
    worker.run_until_idle()
    assert world.get(waiting.headers["Location"]).json()["status"] == "delivered"
    assert [(e["studentID"], e["scoreGiven"]) for e in world.gradebook()] == [(carol, 5.0)]


def test_a_launch_opens_the_assignment_in_the_students_course(world: World) -> None:
    with world.session() as session:
        connection = session.get(LmsConnection, world.connection_id)
        add_placement(session, world.district_id, world.connection_id, world.app_id, "quiz-1", "course-102")
        carol = create_user(session, world.district_id, name="Carol")
        enroll(session, connection, "course-102", carol)
        dave = create_user(session, world.district_id, name="Dave")
        carol_id, dave_id = carol.id, dave.id
    launched = sandbox_launch(world, {"userID": carol_id, "assignmentID": "quiz-1"})
    assert launched.json()["courseID"] == "course-102", launched.text
    assert sandbox_launch(world, {"userID": world.students[0], "assignmentID": "quiz-1"}).json()["courseID"] == (
        "course-101"
    )
    unsettled = sandbox_launch(world, {"userID": dave_id, "assignmentID": "quiz-1"})
    assert unsettled.status_code == 409 and unsettled.json()["error"]["fields"] == {
        "courseID": ["Required: the assignment is placed in several courses."]
    }
    named = sandbox_launch(world, {"userID": dave_id, "assignmentID": "quiz-1", "courseID": "course-101"})
    assert named.json()["courseID"] == "course-101", "and the launch enrolled Dave there"
    assert sandbox_launch(world, {"userID": dave_id, "assignmentID": "quiz-1"}).json()["courseID"] == "course-101"


def test_sandbox_launches_are_refused_with_the_reason(
    world: World, live_server: LiveServer, http: requests.Session
) -> None:
    other = build_world(world.app, live_server.url, http, district_name="Other District")
    cases = [
        ({"userID": world.students[0], "assignmentID": "quiz-1"}, "wrong-secret-0123456789", 401, "invalid_token"),
        ({"assignmentID": "quiz-1"}, None, 400, "student_key_invalid"),
        ({"userID": world.students[0], "sisID": "S-1", "assignmentID": "quiz-1"}, None, 400, "student_key_invalid"),
        ({"sisID": "S-nobody", "assignmentID": "quiz-1"}, None, 404, "user_not_found"),
        ({"userID": other.students[0], "assignmentID": "quiz-1"}, None, 404, "user_not_found"),
        ({"userID": world.students[0], "assignmentID": "unplaced"}, None, 404, "not_found"),
        ({"userID": world.students[0], "assignmentID": "quiz-1", "app": "another-app"}, None, 404, "not_found"),
        ({"lmsUserID": "x", "assignmentID": "quiz-1"}, None, 422, "invalid_input"),
    ]
    for body, secret, status, code in cases:
        refused = sandbox_launch(world, body, secret)
        assert (refused.status_code, refused.json()["error"]["code"]) == (status, code), (body, refused.text)
    # Another district's sandbox secret opens only its own gradebook.
    assert (
        sandbox_launch(world, {"userID": world.students[0], "assignmentID": "quiz-1"}, other.sandbox_secret).status_code
        == 401
    )


def test_staff_launch_a_student_from_the_sandbox_page(
    world: World, live_server: LiveServer, http: requests.Session
) -> None:
    client_id = world_client(world)
    browser = signed_in(world, staff_of(world))
    page = browser.get(world.url("/dashboard/sandbox"))
    assert page.status_code == 200
    assert "form-action 'self' https://quiz.example;" in page.headers["Content-Security-Policy"]
    assignment = re.search(r'<option value="([0-9a-f]+)">Quiz 1 \(quiz-1\) · Quiz App<', page.text).group(1)
    launch_url = world.url(f"/dashboard/sandbox/{world.connection_id}/launch")
    form = {"student": world.students[1], "assignment": assignment}
    assert browser.post(launch_url, data=form, allow_redirects=False).status_code == 400, "CSRF token required"

    launched = browser.post(launch_url, data={**form, "csrf_token": csrf(page)}, allow_redirects=False)
    assert launched.status_code == 303
    code, state = code_and_state(launched.headers["Location"])
    assert launched.headers["Location"].startswith(REDIRECT + "?") and state == "assignment:quiz-1"
    token = exchange(world.base_url, client_id, CLIENT_SECRET, code, REDIRECT)
    assert world.get("/v1/me", token=token.json()["access_token"]).json()["data"]["id"] == world.students[1]
    assert "started a sandbox launch" in browser.get(world.url("/dashboard/audit")).text

    # Another district's staff cannot launch here, nor launch this district's student or placement from theirs.
    other = build_world(world.app, live_server.url, http, district_name="Other District")
    outsider = signed_in(other, staff_of(other, "staff@other.example"))
    token_field = {"csrf_token": csrf(outsider.get(other.url("/dashboard/sandbox")))}
    for connection, body in [
        (world.connection_id, form),
        (other.connection_id, {"student": world.students[1], "assignment": assignment}),
    ]:
        refused = outsider.post(
            world.url(f"/dashboard/sandbox/{connection}/launch"), data={**body, **token_field}, allow_redirects=False
        )
        assert refused.status_code == 404 and refused.headers["Content-Type"].startswith("text/html")


# --- faults ------------------------------------------------------------------------------------------------


def _fault(browser: requests.Session, world: World, **form: str) -> str:
    page = browser.get(world.url("/dashboard/sandbox"))
    answer = browser.post(
        world.url(f"/dashboard/sandbox/{world.connection_id}/faults"), data={**form, "csrf_token": csrf(page)}
    )
    assert answer.status_code == 200, answer.text
    return answer.text


def _delivery(world: World, posted: requests.Response) -> dict[str, Any]:
    return dict(world.get(posted.headers["Location"]).json()["deliveries"][0])


def test_faults_set_on_the_sandbox_page_take_effect_and_are_cleared(world: World, worker: DeliveryWorker) -> None:
    browser = signed_in(world, staff_of(world))
    page = _fault(browser, world, kind="refuse", count="1")
    assert "The next 1 score writes will fail" in page and "HTTP 422" in page
    refused = world.post_grade({"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.5})
    worker.run_until_idle()
    assert _delivery(world, refused)["status"] == "failed" and "HTTP 422" in _delivery(world, refused)["lastError"]

    _fault(browser, world, kind="500", count="1")
    server_error = world.post_grade({"assignmentID": "quiz-1", "userID": world.students[1], "percentage": 0.5})
    worker.run_until_idle()
    delivery = _delivery(world, server_error)
    assert (delivery["status"], delivery["attempts"], delivery["lmsStatus"]) == ("retrying", 1, 500), delivery

    page = _fault(browser, world, kind="hang", count="1", hang_seconds="5")
    assert "did not answer for 5 s" in page
    hung = world.post_grade({"assignmentID": "quiz-2", "userID": world.students[1], "percentage": 0.5})
    worker.run_until_idle()
    delivery = _delivery(world, hung)
    assert delivery["status"] == "retrying" and delivery["lmsStatus"] is None, "cut by the request deadline"

    page = _fault(browser, world, kind="500", count="3")
    assert "The next 3 score writes will fail" in page
    cleared = _fault(browser, world, clear="1")
    assert "Faults cleared" in cleared and "No faults: the sandbox LMS stores every score write." in cleared
    fine = world.post_grade({"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.7})
    worker.run_until_idle()
    assert _delivery(world, fine)["status"] == "delivered"

    # Last: a 429 with Retry-After pauses every delivery to this LMS host for that long.
    _fault(browser, world, kind="429", count="1", retry_after="600")
    limited = world.post_grade({"assignmentID": "quiz-2", "userID": world.students[0], "percentage": 0.5})
    worker.run_until_idle()
    delivery = _delivery(world, limited)
    next_attempt = datetime.fromisoformat(delivery["nextAttemptAt"].replace("Z", "+00:00"))
    assert delivery["status"] == "retrying" and delivery["lmsStatus"] == 429
    assert next_attempt - datetime.now(UTC) > timedelta(seconds=590), "Retry-After is honoured"

    rejected = _fault(browser, world, kind="500", count="0")
    assert "No fault set." in rejected and "No faults:" in rejected
    audit = browser.get(world.url("/dashboard/audit")).text
    assert "injected sandbox faults" in audit and "cleared sandbox faults" in audit


def test_the_sandbox_fault_api_takes_a_hang(world: World) -> None:
    answer = world.http.post(
        world.url(f"/sandbox-lms/{world.connection_id}/faults"),
        json={"fail_next": 2, "status": 503, "hang_seconds": 3},
        headers={"Authorization": f"Bearer {world.sandbox_secret}"},
    )
    assert answer.json() == {
        "fail_next": 2,
        "status": 503,
        "retry_after": None,
        "hang_seconds": 3,
        "message": "sandbox LMS did not answer for 3 s (injected hang, then HTTP 503)",
    }


# --- the gradebook page ------------------------------------------------------------------------------------


def test_the_sandbox_page_shows_the_gradebook_escaped(world: World, worker: DeliveryWorker) -> None:
    with world.session() as session:
        session.get(User, world.students[0]).name = "<b>Ada</b>"
    world.post_grade(
        {"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.8, "comment": "<script>x()</script>"}
    )
    worker.run_until_idle()
    page = signed_in(world, staff_of(world)).get(world.url("/dashboard/sandbox")).text
    gradebook = page[page.index('aria-label="Sandbox gradebook"') :]
    assert "8/10" in gradebook and "course-101" in gradebook
    assert "&lt;script&gt;x()&lt;/script&gt;" in gradebook and "<script>x()" not in page
    assert "&lt;b&gt;Ada&lt;/b&gt;" in gradebook and "<b>Ada</b>" not in page, "in the table and the launch form"


# --- read-back ---------------------------------------------------------------------------------------------


def test_get_grade_lms_reads_back_what_the_sandbox_holds(world: World, worker: DeliveryWorker) -> None:
    posted = world.post_grade({"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.8})
    worker.run_until_idle()
    read_url = posted.headers["Location"] + "/lms"
    read = world.get(read_url).json()["lms"]
    assert [(r["lmsConnection"], r["value"], r["error"]) for r in read] == [("Sandbox", 0.8, None)]

    # A teacher changes the grade in the gradebook: read-back sees the LMS's value, not Passback's.
    score_url = world.url(
        f"/sandbox-lms/{world.connection_id}/courses/course-101/items/quiz-1/scores/{world.students[0]}"
    )
    sandbox = {"Authorization": f"Bearer {world.sandbox_secret}"}
    later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    overridden = world.http.put(
        score_url, json={"scoreGiven": 5, "scoreMaximum": 10, "timestamp": later}, headers=sandbox
    )
    assert overridden.status_code == 200, overridden.text
    assert world.get(read_url).json()["lms"][0]["value"] == 0.5
    assert world.http.delete(score_url, headers=sandbox).json() == {"removed": True}
    assert world.get(read_url).json()["lms"][0] == {**read[0], "value": None}


def test_read_back_is_scoped_to_the_token(
    world: World, worker: DeliveryWorker, live_server: LiveServer, http: requests.Session
) -> None:
    posted = world.post_grade({"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.8})
    worker.run_until_idle()
    other = build_world(world.app, live_server.url, http, district_name="Other District")
    assert world.get(posted.headers["Location"] + "/lms", token=other.token).status_code == 404
    another_student = world.user_token(world.students[1])
    assert world.get(posted.headers["Location"] + "/lms", token=another_student).status_code == 404
