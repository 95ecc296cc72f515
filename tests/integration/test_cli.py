"""The operator's path: set a district up with `gateway …` commands alone, then post and deliver a grade."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from flask import Flask

from gateway.cli import main
from gateway.composition import services_of
from gateway.worker import DeliveryWorker
from tests.conftest import LiveServer


@pytest.fixture
def gateway_cli(runner: CliRunner) -> Any:

    def run(*args: str) -> dict[str, Any]:
        result = runner.invoke(main, [*args, "--json"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    def run_failing(*args: str) -> str:
        result = runner.invoke(main, list(args), catch_exceptions=False)
        assert result.exit_code != 0
        return result.output

    run.failing = run_failing  # type: ignore[attr-defined]
    return run


def test_operator_sets_up_a_district_from_the_cli(
    gateway_cli: Any, app: Flask, live_server: LiveServer, worker: DeliveryWorker
) -> None:
    district = gateway_cli("district", "create", "Springfield USD")
    partner = gateway_cli("app", "create", "Quiz App", "--redirect-uri", "https://quiz.example/cb")
    assert partner["client_secret"] and partner["client_id"]
    authorized = gateway_cli("app", "authorize", partner["id"], district["id"])
    token = authorized["token"]
    assert token.startswith("pb_")

    headers = {"Authorization": f"Bearer {token}"}
    put = requests.put(
        f"{live_server.url}/v1/assignments/quiz-1", json={"name": "Quiz 1", "scoreMaximum": 20}, headers=headers
    )
    assert put.status_code == 201, put.text

    lms = gateway_cli(
        "lms",
        "add",
        "--district",
        district["id"],
        "--name",
        "Sandbox",
        "--adapter",
        "sandbox",
        "--setting",
        f"base_url={live_server.url}/sandbox-lms/pending",
        "--setting",
        "secret=0123456789abcdef0123",
    )
    student = gateway_cli("user", "add", "--district", district["id"], "--name", "Ada")
    gateway_cli(
        "user", "enroll", "--district", district["id"], "--lms", "Sandbox", "--course", "c1", "--user", student["id"]
    )
    gateway_cli(
        "placement",
        "add",
        "--district",
        district["id"],
        "--lms",
        lms["id"],
        "--app",
        partner["client_id"],
        "--assignment",
        "quiz-1",
        "--course",
        "c1",
    )

    posted = requests.post(
        f"{live_server.url}/v1/grade",
        json={"assignmentID": "quiz-1", "userID": student["id"], "percentage": 0.5},
        headers=headers,
    )
    assert posted.status_code == 202, posted.text
    assert posted.json()["normalized"] == {"fraction": 0.5, "scoreGiven": 10.0, "scoreMaximum": 20.0}

    gateway_cli("token", "revoke", authorized["token_id"])
    assert requests.get(f"{live_server.url}/v1/me", headers=headers).status_code == 401


def test_cli_errors_are_messages_not_tracebacks(gateway_cli: Any) -> None:
    district = gateway_cli("district", "create", "D")
    output = gateway_cli.failing("lms", "add", "--district", district["id"], "--name", "x", "--adapter", "nope")
    assert "unknown adapter 'nope'" in output and "Traceback" not in output
    output = gateway_cli.failing(
        "lms", "add", "--district", district["id"], "--name", "x", "--adapter", "sandbox", "--setting", "secret=short"
    )
    assert "base_url" in output and "secret" in output
    output = gateway_cli.failing("app", "authorize", "no-such-app", district["id"])
    assert "no app" in output


def test_lms_secrets_are_encrypted_at_rest(gateway_cli: Any, app: Flask) -> None:
    district = gateway_cli("district", "create", "D")
    gateway_cli(
        "lms",
        "add",
        "--district",
        district["id"],
        "--name",
        "S",
        "--adapter",
        "sandbox",
        "--setting",
        "base_url=http://127.0.0.1:1/x",
        "--setting",
        "secret=super-secret-value-123",
    )
    engine = services_of(app).database.engine
    with engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT settings_encrypted FROM lms_connections").scalar_one()
        tokens = [row[0] for row in conn.exec_driver_sql("SELECT token_hash FROM api_tokens")]
    assert "super-secret-value-123" not in stored
    assert all(not t.startswith("pb_") for t in tokens)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_gateway_run_seeds_the_sandbox_and_its_curl_line_delivers(tmp_path: Path) -> None:
    """What `make run` does, on a fresh instance directory: banner, token, curl line, delivered grade."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update({"GATEWAY_INSTANCE_DIR": str(tmp_path / "instance"), "PYTHONUNBUFFERED": "1"})
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "run", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        banner = ""
        deadline = time.monotonic() + 60
        assert process.stdout is not None
        while "listening on" not in banner and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            banner += line
        assert "listening on" in banner, banner
        curl = re.search(r"curl -sS -X POST (\S+) -H 'Authorization: Bearer (\S+)' .* -d '(.+)'", banner)
        assert curl, banner
        url, token, body = curl.group(1), curl.group(2), json.loads(curl.group(3))
        headers = {"Authorization": f"Bearer {token}"}
        deadline = time.monotonic() + 10
        while True:  # the server may still be binding its socket
            try:
                response = requests.post(url, json=body, headers=headers, timeout=5)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "the server never accepted a connection"
                time.sleep(0.1)
        assert response.status_code == 202, response.text
        status_url = f"http://127.0.0.1:{port}{response.headers['Location']}"
        deadline = time.monotonic() + 20
        status = requests.get(status_url, headers=headers, timeout=5).json()
        while status["status"] != "delivered" and time.monotonic() < deadline:
            time.sleep(0.1)  # the server's embedded worker delivers it
            status = requests.get(status_url, headers=headers, timeout=5).json()
        assert status["status"] == "delivered", status
        assert (tmp_path / "instance" / "passback.db").exists()
        assert oct((tmp_path / "instance" / "encryption_key").stat().st_mode & 0o777) == "0o600"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(10)


def test_lti13_platform_is_registered_from_the_cli(gateway_cli: Any, live_server: LiveServer) -> None:
    rotated = gateway_cli("keys", "rotate")
    assert rotated["published"] == [rotated["kid"]]
    district = gateway_cli("district", "create", "LTI district")
    lms = gateway_cli(
        "lms",
        "add",
        "--district",
        district["id"],
        "--name",
        "Canvas",
        "--adapter",
        "lti13",
        "--setting",
        "platform=canvas",
        "--setting",
        "client_id=10000000000042",
        "--setting",
        "deployment_ids=7:abc, 8:def",
    )
    config = requests.get(f"{live_server.url}/lti/config/{lms['id']}", timeout=5).json()
    assert config["oidc_initiation_url"] == f"{live_server.url}/lti/login"
    assert config["public_jwk_url"] == f"{live_server.url}/lti/jwks"
    placements = {p["placement"] for p in config["extensions"][0]["settings"]["placements"]}
    assert placements == {"assignment_selection", "link_selection"}
    assert "https://purl.imsglobal.org/spec/lti-ags/scope/score" in config["scopes"]
    login = requests.get(
        f"{live_server.url}/lti/login",
        params={
            "iss": "https://canvas.instructure.com",
            "login_hint": "x",
            "target_link_uri": f"{live_server.url}/lti/launch",
            "client_id": "10000000000042",
            "lti_deployment_id": "8:def",
        },
        allow_redirects=False,
        timeout=5,
    )
    assert login.status_code == 302 and login.headers["Location"].startswith(
        "https://sso.canvaslms.com/api/lti/authorize_redirect?"
    )
    duplicate = gateway_cli.failing(
        "lms",
        "add",
        "--district",
        district["id"],
        "--name",
        "Canvas 2",
        "--adapter",
        "lti13",
        "--setting",
        "platform=canvas",
        "--setting",
        "client_id=10000000000042",
        "--setting",
        "deployment_ids=1",
    )
    assert "already registers this platform" in duplicate
    assert requests.get(f"{live_server.url}/lti/config/nope", timeout=5).status_code == 404
