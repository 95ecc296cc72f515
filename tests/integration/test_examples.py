"""The example app (examples/) run end to end against the gateway `make run` starts: the same `gateway run`
console script on a fresh instance directory (its own SQLite database) and a free port on 127.0.0.1, the example
app in a process of its own, and this test as the student's browser and the sandbox LMS."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import create_engine, text

# The entry point `make run` calls ($(BIN)/gateway run …), beside this interpreter in the same virtualenv.
GATEWAY = Path(sys.executable).with_name("gateway")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _make_run_env(tmp_path: Path) -> dict[str, str]:
    """`make run`'s environment on a fresh instance directory, keeping the demo credentials in a file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(
        {
            "GATEWAY_INSTANCE_DIR": str(tmp_path / "instance"),
            "GATEWAY_DEMO_TOKEN_FILE": str(tmp_path / "instance" / "demo-token.json"),
            # The example app hears webhooks on 127.0.0.1, which the operator must allow (as the README says).
            "GATEWAY_WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _read_until(process: subprocess.Popen[str], marker: str, seconds: float = 60) -> str:
    """What the process printed up to the line with `marker` (a startup banner)."""
    assert process.stdout is not None
    printed = ""
    deadline = time.monotonic() + seconds
    while marker not in printed and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        printed += line
    assert marker in printed, printed
    return printed


def _wait_accepting(url: str) -> None:
    deadline = time.monotonic() + 10
    while True:  # the server prints its banner just before it binds
        try:
            requests.get(url, timeout=5)
            return
        except requests.ConnectionError:
            assert time.monotonic() < deadline, f"{url} never accepted a connection"
            time.sleep(0.1)


@contextmanager
def _process(argv: list[str], env: dict[str, str], cwd: Path, marker: str) -> Iterator[str]:
    process = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        yield _read_until(process, marker)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(15)


@contextmanager
def make_run(tmp_path: Path, env: dict[str, str]) -> Iterator[tuple[str, str]]:
    """`make run`: `gateway run --host 127.0.0.1 --port P`; yields its URL and its banner."""
    port = _free_port()
    argv = [str(GATEWAY), "run", "--host", "127.0.0.1", "--port", str(port)]
    with _process(argv, env, tmp_path, "listening on") as banner:
        url = f"http://127.0.0.1:{port}"
        _wait_accepting(url + "/healthz")
        yield url, banner


def _until_settled(browser: requests.Session, grade_url: str) -> dict[str, Any]:
    """The example app's status page (as JSON) until the gateway's embedded worker has delivered the grade."""
    deadline = time.monotonic() + 30
    answer = browser.get(grade_url, headers={"Accept": "application/json"}, timeout=10).json()
    while answer["grade"]["status"] in {"pending", "delivering", "retrying"} and time.monotonic() < deadline:
        time.sleep(0.2)
        answer = browser.get(grade_url, headers={"Accept": "application/json"}, timeout=10).json()
    return dict(answer)


def _csrf(page: requests.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text[:500]
    return found.group(1)


def _heard(app_url: str, expected: int) -> list[dict[str, Any]]:
    """The events the example app verified and kept, once it holds `expected` of them (or 30 s have passed)."""
    deadline = time.monotonic() + 30
    events: list[dict[str, Any]] = requests.get(app_url + "/events", timeout=10).json()["events"]
    while len(events) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
        events = requests.get(app_url + "/events", timeout=10).json()["events"]
    return events


def test_example_app_signs_a_student_in_posts_by_sis_id_and_reads_the_grades_back(tmp_path: Path) -> None:
    env = _make_run_env(tmp_path)
    app_port = _free_port()
    with make_run(tmp_path, env) as (url, banner):
        demo_run = subprocess.run(
            [
                str(GATEWAY),
                "demo",
                "--json",
                "--public-url",
                url,
                "--redirect-uri",
                f"http://127.0.0.1:{app_port}/callback",
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        demo = json.loads(demo_run.stdout)
        assert demo["token_kept"] and demo["token"] in banner, "gateway demo reads the credentials make run kept"
        assert demo["client_secret_kept"] and demo["client_secret"] in banner
        config = tmp_path / "demo.json"
        config.write_text(demo_run.stdout)
        sandbox = {"Authorization": f"Bearer {demo['sandbox_secret']}"}
        example = [
            sys.executable,
            str(EXAMPLES / "example_app.py"),
            *("--config", str(config), "--port", str(app_port), "--webhooks"),
        ]
        district = {"Authorization": f"Bearer {demo['token']}"}
        with _process(example, env, tmp_path, "listening on") as started:
            assert "webhooks registered" in started, started
            [endpoint] = requests.get(url + "/v1/webhooks", headers=district, timeout=10).json()["webhooks"]
            assert endpoint["url"] == f"http://127.0.0.1:{app_port}/webhooks/passback"
            app_url = f"http://127.0.0.1:{app_port}"
            _wait_accepting(app_url + "/")
            browser = requests.Session()

            # Ada opens the quiz in the sandbox LMS: the LMS sends her browser to the app with a sign-in code.
            launched = requests.post(
                demo["sandbox_url"] + "/launches",
                json={"sisID": "S-1001", "assignmentID": demo["assignment_id"]},
                headers=sandbox,
                timeout=10,
            )
            assert launched.status_code == 200, launched.text
            redirect = launched.json()["redirect"]
            assert redirect.startswith(f"{app_url}/callback?code=")
            assert "state=assignment%3Afractions-quiz-1" in redirect
            quiz = browser.get(redirect, timeout=10)
            ada = next(s for s in demo["students"] if s["sisID"] == "S-1001")
            assert quiz.status_code == 200 and ada["userID"] in quiz.text, quiz.text

            # She hands the quiz in: the app posts with her own token, then reads the status back.
            handed_in = browser.post(app_url + "/quiz", data={"csrf": _csrf(quiz), "answer": "3/4"}, timeout=10)
            assert "/grades/" in handed_in.url, handed_in.text
            own = _until_settled(browser, handed_in.url)
            assert own["grade"]["status"] == "delivered", own
            assert own["grade"]["userID"] == ada["userID"]
            assert own["lms"] == [
                {"deliveryID": own["lms"][0]["deliveryID"], "lmsConnection": "Sandbox LMS", "value": 1.0, "error": None}
            ]

            # The app posts a score from its own records by SIS id with the district-app token.
            home = browser.get(app_url + "/", timeout=10)
            by_sis = browser.post(
                app_url + "/roster/grade", data={"csrf": _csrf(home), "sis_id": "S-1002", "score": "7"}, timeout=10
            )
            alan = _until_settled(browser, by_sis.url)
            assert alan["grade"]["status"] == "delivered", alan
            assert alan["grade"]["studentKey"] == {"sisID": "S-1002"}
            assert [v["value"] for v in alan["lms"]] == [pytest.approx(0.7)]

            # The app heard both deliveries by webhook, each verified with standardwebhooks against its secret.
            heard = _heard(app_url, 2)
            assert sorted((e["type"], e["data"]["gradeID"]) for e in heard) == sorted(
                [("grade.delivered", own["grade"]["id"]), ("grade.delivered", alan["grade"]["id"])]
            )
            assert {e["data"]["gradeID"]: e["data"]["studentKey"] for e in heard}[alan["grade"]["id"]] == {
                "sisID": "S-1002"
            }

            # A teacher lowers Alan's score in the sandbox gradebook; the app's status page reads it back, and
            # the app hears that the LMS now holds another value.
            alan_id = next(s["userID"] for s in demo["students"] if s["sisID"] == "S-1002")
            score_url = (
                f"{demo['sandbox_url']}/courses/{demo['course_id']}/items/{demo['assignment_id']}/scores/{alan_id}"
            )
            later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
            teacher = requests.put(
                score_url, json={"scoreGiven": 6, "scoreMaximum": 10, "timestamp": later}, headers=sandbox, timeout=10
            )
            assert teacher.status_code == 200, teacher.text
            assert [v["value"] for v in _until_settled(browser, by_sis.url)["lms"]] == [pytest.approx(0.6)]
            changed = _heard(app_url, 3)[2:]
            assert [(e["type"], e["data"]["lmsValue"], e["data"]["deliveredValue"]) for e in changed] == [
                ("grade.lms_changed", pytest.approx(0.6), pytest.approx(0.7))
            ]

            # A form without the app's CSRF token is refused; so is a webhook request Passback did not sign.
            assert browser.post(app_url + "/roster/grade", data={"sis_id": "S-1002", "score": "1"}).status_code == 403
            forged = requests.post(
                app_url + "/webhooks/passback",
                data=json.dumps(heard[0]).encode(),
                headers={
                    "webhook-id": "msg_x",
                    "webhook-timestamp": str(int(time.time())),
                    "webhook-signature": "v1,AAAA",
                },
                timeout=10,
            )
            assert forged.status_code == 401
            assert len(_heard(app_url, 3)) == 3

        # Stopped, the example app removed its endpoint.
        assert requests.get(url + "/v1/webhooks", headers=district, timeout=10).json()["webhooks"] == []

        # The sandbox gradebook holds both grades, as a teacher would see them.
        entries = requests.get(demo["sandbox_url"] + "/gradebook", headers=sandbox, timeout=10).json()["entries"]
        held = {(e["itemID"], e["studentID"]): (e["scoreGiven"], e["scoreMaximum"]) for e in entries}
        assert held == {("fractions-quiz-1", ada["userID"]): (10.0, 10.0), ("fractions-quiz-1", alan_id): (6.0, 10.0)}

    # Started again, make run keeps the token (and the app's secret) instead of revoking them.
    with make_run(tmp_path, env) as (url, banner):
        assert f"kept from {env['GATEWAY_DEMO_TOKEN_FILE']}): {demo['token']}" in banner, banner
        me = requests.get(url + "/v1/me", headers={"Authorization": f"Bearer {demo['token']}"}, timeout=10)
        assert me.status_code == 200 and me.json()["type"] == "district_app"
    token_file = Path(env["GATEWAY_DEMO_TOKEN_FILE"])
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
    assert json.loads(token_file.read_text())["token"] == demo["token"]
    engine = create_engine(f"sqlite:///{tmp_path / 'instance' / 'passback.db'}")
    with engine.connect() as conn:
        stored = [row[0] for row in conn.execute(text("SELECT token_hash FROM api_tokens"))]
    engine.dispose()
    assert demo["token"] not in stored, "the database keeps the token's hash only"
