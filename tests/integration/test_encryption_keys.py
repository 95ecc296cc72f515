"""GATEWAY_ENCRYPTION_KEYS: configured keys outside the embedded default, key files only the owner reads, and a
secret that cannot be decrypted (a database copied to a host with other keys) answered with a clear error on every
page, API call and delivery that needs it, never a 500."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.fernet import Fernet
from flask import Flask
from sqlalchemy import update

import gateway.config
from gateway import create_app
from gateway.cli import main as cli
from gateway.composition import services_of
from gateway.config import ConfigurationError, Settings
from gateway.crypto import SecretBox
from gateway.db import Database
from gateway.models import Delivery, LmsConnection, utcnow
from gateway.services.lms import add_lms_connection
from gateway.worker import DeliveryWorker
from tests.conftest import TEST_ENCRYPTION_KEY, LiveServer, make_settings
from tests.factories import World
from tests.fakes.lti11_consumer import Lti11Consumer
from tests.fakes.lti13_platform import Lti13Platform
from tests.integration.test_dashboard import csrf, signed_in, staff_of

UNREADABLE = "cannot be decrypted with the configured keys"
PG_URL = "postgresql://passback@db.example:5432/passback"


@dataclass
class Copy:
    """The same database served by a second Passback whose GATEWAY_ENCRYPTION_KEYS hold another key."""

    world: World  # the copy's world: same district, app and rows, the other app's URL
    app: Flask
    platform: Lti13Platform
    grade_id: str


@pytest.fixture
def copy(world: World, worker: DeliveryWorker, database_url: str, shared_database: Database) -> Iterator[Copy]:
    with Lti13Platform("https://lms.example", "passback-tool", session=world.http) as platform:
        with world.session() as session:
            add_lms_connection(
                session,
                services_of(world.app).box,
                world.district_id,
                "LMS",
                "lti13",
                platform.registration(),
            )
        assert world.http.get(world.url("/lti/jwks")).json()["keys"], "the tool key exists, encrypted"
        posted = world.post_grade({"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.5})
        worker.run_until_idle()
        assert world.get(posted.headers["Location"]).json()["status"] == "delivered"
        staff_of(world)
        other = create_app(
            make_settings(database_url, encryption_keys=Fernet.generate_key().decode()), database=shared_database
        )
        with LiveServer(other) as server:
            other.config["PASSBACK"].public_url = server.url
            yield Copy(replace(world, app=other, base_url=server.url), other, platform, posted.json()["id"])


def test_the_dashboard_names_the_undecryptable_secret(copy: Copy) -> None:
    browser = signed_in(copy.world, "admin@district.example")
    page = browser.get(copy.world.url("/dashboard/connections"))
    assert page.status_code == 200, page.text[:500]
    assert page.text.count("This connection's secret cannot be decrypted") == 2, "both connections say so"
    assert "the settings of LMS connection &#39;Sandbox&#39; cannot be decrypted" in page.text
    checked = browser.post(
        copy.world.url(f"/dashboard/connections/{copy.world.connection_id}/probe"), data={"csrf_token": csrf(page)}
    )
    assert checked.status_code == 200 and "Sandbox: does not work." in checked.text and UNREADABLE in checked.text


def test_the_worker_defers_with_the_reason_and_delivers_once_the_key_is_configured(
    copy: Copy, database_url: str, shared_database: Database
) -> None:
    world = copy.world
    posted = world.post_grade({"assignmentID": "quiz-1", "userID": world.students[1], "percentage": 0.9})
    assert posted.status_code == 202, "accepting a grade needs no secret"
    wrong = DeliveryWorker(shared_database, services_of(copy.app).box, copy.app.config["PASSBACK"])
    assert wrong.run_once() == 1
    status = world.get(posted.headers["Location"]).json()
    (delivery,) = status["deliveries"]
    assert delivery["status"] == "retrying" and UNREADABLE in delivery["lastError"], status
    with world.session() as session:
        connection = session.get(LmsConnection, world.connection_id)
        assert connection is not None and UNREADABLE in (connection.last_failure or "")
        session.execute(update(Delivery).values(next_attempt_at=utcnow()))

    # The operator adds the old key (the first key encrypts, all decrypt): the waiting grade goes out.
    fixed = make_settings(database_url, encryption_keys=f"{Fernet.generate_key().decode()},{TEST_ENCRYPTION_KEY}")
    fixed_app = create_app(fixed, database=shared_database)
    DeliveryWorker(shared_database, services_of(fixed_app).box, fixed).run_until_idle()
    assert world.get(posted.headers["Location"]).json()["status"] == "delivered"


def test_waiting_for_the_key_does_not_use_up_the_attempts(
    copy: Copy, database_url: str, shared_database: Database
) -> None:
    """A grade whose secret cannot be decrypted waits for the key however many rounds pass: no attempt is
    counted, so it never ends `failed` and still goes out once the old key is added."""
    world = copy.world
    posted = world.post_grade({"assignmentID": "quiz-1", "userID": world.students[1], "percentage": 0.9})
    few = replace(copy.app.config["PASSBACK"], max_attempts=2)
    wrong = DeliveryWorker(shared_database, services_of(copy.app).box, few)
    for _ in range(few.max_attempts + 3):
        with world.session() as session:
            session.execute(update(Delivery).values(next_attempt_at=utcnow()))
        assert wrong.run_once() >= 1
        (delivery,) = world.get(posted.headers["Location"]).json()["deliveries"]
        assert delivery["status"] == "retrying" and UNREADABLE in delivery["lastError"], delivery
    with world.session() as session:
        assert {d.attempts for d in session.query(Delivery).filter(Delivery.status == "retrying")} == {0}
        session.execute(update(Delivery).values(next_attempt_at=utcnow()))

    fixed = make_settings(
        database_url, encryption_keys=f"{Fernet.generate_key().decode()},{TEST_ENCRYPTION_KEY}", max_attempts=2
    )
    fixed_app = create_app(fixed, database=shared_database)
    DeliveryWorker(shared_database, services_of(fixed_app).box, fixed).run_until_idle()
    assert world.get(posted.headers["Location"]).json()["status"] == "delivered"


def test_api_and_lti_entry_points_answer_clearly(copy: Copy) -> None:
    world = copy.world
    readback = world.get(f"/v1/grades/{copy.grade_id}/lms")
    assert readback.status_code == 200, readback.text
    assert UNREADABLE in readback.text, "the grade's LMS says why it cannot be read"

    sandbox = world.http.get(
        world.url(f"/sandbox-lms/{world.connection_id}/gradebook"),
        headers={"Authorization": f"Bearer {world.sandbox_secret}"},
    )
    assert sandbox.status_code == 503 and sandbox.json()["error"]["code"] == "secret_undecryptable"

    jwks = world.http.get(world.url("/lti/jwks"))
    assert jwks.status_code == 200 and jwks.json()["keys"], "the public keys need no decryption"

    login = copy.platform.login_response(world.base_url)
    assert login.status_code == 503 and login.headers["Content-Type"].startswith("text/html")
    assert "the settings of LMS connection &#39;LMS&#39; cannot be decrypted" in login.text

    with Lti11Consumer("lti11-key", "lti11-secret", session=world.http) as consumer:
        with world.session() as session:
            box = SecretBox(TEST_ENCRYPTION_KEY)  # registered by the original installation
            settings = {"consumer_key": "lti11-key", "shared_secret": "lti11-secret", "allowed_hosts": ["127.0.0.1"]}
            add_lms_connection(session, box, world.district_id, "Canvas 1.1", "lti11", settings)
        launch = consumer.launch(world.url("/lti11/launch"))
    assert launch.status_code == 503 and "Location" not in launch.headers
    assert "the settings of LMS connection &#39;Canvas 1.1&#39; cannot be decrypted" in launch.text


# --- starting without keys ------------------------------------------------------------------------------------


@pytest.fixture
def no_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setattr(gateway.config, "INSTANCE_DIR", tmp_path)
    for name in ("GATEWAY_ENCRYPTION_KEYS", "GATEWAY_DATABASE_URL", "GATEWAY_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.mark.parametrize(
    "config",
    [{"database_url": PG_URL}, {"database_url": "sqlite:///x.db", "broker_url": "redis://127.0.0.1:6379/0"}],
    ids=["postgresql", "broker"],
)
def test_create_app_refuses_to_start_without_keys_outside_the_embedded_default(
    no_keys: Path, config: dict[str, str]
) -> None:
    with pytest.raises(ConfigurationError, match="GATEWAY_ENCRYPTION_KEYS is not set"):
        create_app(config)
    assert not (no_keys / "encryption_key").exists(), "no key was generated"


def test_the_refusal_names_the_key_generated_earlier(no_keys: Path) -> None:
    """An install that ran embedded (SQLite, generated key) and then moved to PostgreSQL: the refusal points to
    the key file that encrypted the stored secrets, so the operator does not generate a new one."""
    generated = Settings.from_env(database_url="").encryption_keys
    with pytest.raises(ConfigurationError) as refused:
        create_app({"database_url": PG_URL})
    message = str(refused.value)
    assert f"the key generated earlier is in {no_keys / 'encryption_key'}" in message
    assert "set GATEWAY_ENCRYPTION_KEYS to its contents" in message
    assert generated not in message, "the key itself is never shown"
    assert (no_keys / "encryption_key").read_text().strip() == generated, "the key file is left as it was"


@pytest.mark.parametrize("command", [["run", "--no-demo"], ["worker", "--once"], ["beat"], ["district", "create", "D"]])
def test_the_cli_refuses_with_one_line(no_keys: Path, command: list[str]) -> None:
    result = CliRunner(env={"GATEWAY_DATABASE_URL": PG_URL, "GATEWAY_ENCRYPTION_KEYS": None}).invoke(cli, command)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: GATEWAY_ENCRYPTION_KEYS is not set") and result.output.count("\n") == 1
    assert not (no_keys / "encryption_key").exists()


def test_wsgi_refuses_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(GATEWAY_DATABASE_URL=PG_URL, GATEWAY_INSTANCE_DIR=str(tmp_path))
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", "import wsgi"], cwd=root, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stderr.startswith("passback: GATEWAY_ENCRYPTION_KEYS is not set") and done.stderr.count("\n") == 1


def test_the_embedded_default_generates_owner_only_key_files(no_keys: Path) -> None:
    old = os.umask(0)  # even with a permissive umask
    try:
        settings = Settings.from_env(database_url="")
    finally:
        os.umask(old)
    assert settings.database_url.startswith("sqlite") and settings.encryption_keys
    for name in ("encryption_key", "secret_key"):
        assert stat.S_IMODE((no_keys / name).stat().st_mode) == 0o600, name
    assert Settings.from_env(database_url="").encryption_keys == settings.encryption_keys, "kept across restarts"


def test_a_cached_token_under_another_key_is_a_miss(copy: Copy) -> None:
    from gateway.services import token_cache

    database = services_of(copy.app).database
    token_cache.DatabaseTokenCache(database, SecretBox(TEST_ENCRYPTION_KEY)).put("k", "token-1", 60)
    # Another process's cache: only the database row is shared.
    assert token_cache.DatabaseTokenCache(database, services_of(copy.app).box).get("k") is None
