"""`gateway backup` and `gateway restore` on the embedded default (docs/operations.md, "Backup and restore"): a
running gateway with grades backed up while it writes, restored into a fresh instance directory and started
there (the same `gateway run` console script `make run` calls), its pending grade then delivered and its old
grades readable with the old token; a corrupted or altered archive refused with nothing changed; PostgreSQL
refused with the documented procedure."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import sqlite3
import stat
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from gateway.cli import main
from gateway.migrate import upgrade
from tests.integration.test_examples import GATEWAY, _free_port, _wait_accepting

ENV_KEYS = ("GATEWAY_DATABASE_URL", "GATEWAY_ENCRYPTION_KEYS", "GATEWAY_SECRET_KEY", "GATEWAY_BROKER_URL")


def _env(instance: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update({"GATEWAY_INSTANCE_DIR": str(instance), "PYTHONUNBUFFERED": "1", **extra})
    return env


def _gateway(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(GATEWAY), *args], env=env, capture_output=True, text=True, timeout=120)


@contextmanager
def _serving(argv: list[str], env: dict[str, str], log: Path) -> Iterator[None]:
    """The process with its output in a file: a pipe nobody reads would stall it once its access lines fill it."""
    with log.open("w") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "listening on" not in log.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            time.sleep(0.1)
        assert "listening on" in log.read_text(), log.read_text()
        yield
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(15)


def _until_delivered(http: requests.Session, url: str, token: str, grade_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        grade: dict[str, Any] = http.get(f"{url}/v1/grades/{grade_id}", headers=_auth(token), timeout=10).json()
        if grade["status"] == "delivered" or time.monotonic() > deadline:
            return grade
        time.sleep(0.2)


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.slow
def test_a_running_gateway_backed_up_restores_into_a_fresh_instance_and_delivers_there(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    # The first instance delivers only when told (`gateway worker --once`), so a grade can be left pending.
    env1 = _env(
        first,
        GATEWAY_EMBEDDED_WORKER="false",
        GATEWAY_DEMO_TOKEN_FILE=str(first / "demo-token.json"),
    )
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    archive = tmp_path / "backup.tar.gz"
    run = [str(GATEWAY), "run", "--host", "127.0.0.1", "--port", str(port)]
    with requests.Session() as http, _serving(run, env1, tmp_path / "first.log"):
        _wait_accepting(url + "/healthz")
        seeded = _gateway(env1, "demo", "--json", "--public-url", url)
        assert seeded.returncode == 0, seeded.stderr
        demo = json.loads(seeded.stdout)
        token, (ada, alan) = demo["token"], demo["students"][:2]
        quiz, other_quiz = demo["assignment_ids"][:2]

        def post(body: dict[str, Any]) -> str:
            answer = http.post(f"{url}/v1/grade", json=body, headers=_auth(token), timeout=10)
            assert answer.status_code == 202, answer.text
            return str(answer.json()["id"])

        delivered = post({"assignmentID": quiz, "sisID": ada["sisID"], "percentage": 0.8})
        assert _gateway(env1, "worker", "--once").returncode == 0
        assert _until_delivered(http, url, token, delivered)["status"] == "delivered"
        pending = post({"assignmentID": quiz, "sisID": alan["sisID"], "percentage": 0.6})

        # The gateway keeps writing while the backup runs.
        stop, written = threading.Event(), []

        def keep_writing() -> None:
            while not stop.is_set():
                written.append(
                    post({"assignmentID": other_quiz, "sisID": ada["sisID"], "percentage": (len(written) % 100) / 100})
                )

        writer = threading.Thread(target=keep_writing)
        writer.start()
        try:
            while len(written) < 3:
                time.sleep(0.05)
            made = _gateway(env1, "backup", "--output", str(archive), "--json")
        finally:
            stop.set()
            writer.join(30)
        assert made.returncode == 0, made.stdout + made.stderr
        backup = json.loads(made.stdout)
        grades_then = http.get(f"{url}/v1/grades/{pending}", headers=_auth(token), timeout=10).json()
        assert grades_then["status"] == "pending"

    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    manifest = backup["manifest"]
    assert manifest["keys"] == {"encryption_key": "included", "secret_key": "included"}
    assert manifest["alembicRevision"] and manifest["passbackVersion"] and manifest["createdAt"].endswith("Z")
    assert set(manifest["members"]) == {"passback.db", "keys/encryption_key", "keys/secret_key"}

    env2 = _env(second)
    restored = _gateway(env2, "restore", str(archive), "--json")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert json.loads(restored.stdout)["keys"] == {"encryption_key": "restored", "secret_key": "restored"}
    for name in ("encryption_key", "secret_key"):
        assert (second / name).read_bytes() == (first / name).read_bytes()
        assert stat.S_IMODE((second / name).stat().st_mode) == 0o600
    # One consistent snapshot: every grade with exactly its revisions, though grades were written meanwhile.
    with sqlite3.connect(second / "passback.db") as copy:
        rows = copy.execute(
            "SELECT g.revision, (SELECT count(*) FROM grade_revisions r WHERE r.grade_id = g.id) FROM grades g"
        ).fetchall()
    assert rows and all(revision == count for revision, count in rows)

    # Restoring again over the restored instance is refused without --force.
    again = _gateway(env2, "restore", str(archive), "--json")
    assert again.returncode == 1 and json.loads(again.stdout)["error"]["code"] == "restore_would_overwrite"

    # The restored instance on the same address (the sandbox LMS it serves is at the URL the connection names).
    run2 = [str(GATEWAY), "run", "--host", "127.0.0.1", "--port", str(port), "--no-demo"]
    with requests.Session() as http, _serving(run2, env2, tmp_path / "second.log"):
        _wait_accepting(url + "/healthz")
        # The pending grade is delivered by the restored gateway: the LMS secret decrypted with the restored key.
        after = _until_delivered(http, url, token, pending)
        assert after["status"] == "delivered", after
        old = http.get(f"{url}/v1/grades/{delivered}", headers=_auth(token), timeout=10)
        assert old.status_code == 200 and old.json()["percentage"] == 0.8 and old.json()["status"] == "delivered"
        book = http.get(f"{demo['sandbox_url']}/gradebook", headers=_auth(demo["sandbox_secret"]), timeout=10)
        entries = [e for e in book.json()["entries"] if e["itemID"] == quiz]
        assert sorted(round(e["scoreGiven"] / e["scoreMaximum"], 2) for e in entries) == [0.6, 0.8]


# --- archives refused, PostgreSQL refused --------------------------------------------------------------------


def _runner(instance: Path, **env: str | None) -> CliRunner:
    return CliRunner(env={**dict.fromkeys(ENV_KEYS), "GATEWAY_INSTANCE_DIR": str(instance), **env})


@pytest.fixture
def instance(tmp_path: Path) -> Path:
    """An embedded instance directory: a migrated SQLite database and its two key files."""
    directory = tmp_path / "instance"
    directory.mkdir()
    upgrade(f"sqlite:///{directory / 'passback.db'}")
    (directory / "encryption_key").write_text("a" * 43 + "=")
    (directory / "secret_key").write_text("s" * 64)
    return directory


def _backup(instance: Path, output: Path) -> dict[str, Any]:
    result = _runner(instance).invoke(main, ["backup", "--output", str(output), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.output))


def _restore(instance: Path, archive: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = _runner(instance).invoke(main, ["restore", str(archive), "--json", *args], catch_exceptions=False)
    return result.exit_code, json.loads(result.output)


def _tree(directory: Path) -> dict[str, str]:
    if not directory.exists():
        return {}
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def _repack(archive: Path, target: Path, change: dict[str, bytes]) -> None:
    """The archive again with some members' bytes replaced and the manifest left as it was."""
    with tarfile.open(archive) as source, tarfile.open(target, "w:gz") as out:
        for info in source:
            data = source.extractfile(info).read()  # type: ignore[union-attr]
            data = change.get(info.name, data)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))


def test_a_corrupted_or_altered_archive_is_refused_and_changes_nothing(instance: Path, tmp_path: Path) -> None:
    archive = tmp_path / "good.tar.gz"
    members = _backup(instance, archive)["manifest"]["members"]
    flipped = tmp_path / "flipped.tar.gz"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(archive.read_bytes()[: len(data) // 3])
    altered = tmp_path / "altered.tar.gz"
    with tarfile.open(archive) as source:
        database = bytearray(source.extractfile("passback.db").read())  # type: ignore[union-attr]
    database[200] ^= 0x01
    _repack(archive, altered, {"passback.db": bytes(database)})
    swapped_key = tmp_path / "swapped-key.tar.gz"
    _repack(archive, swapped_key, {"keys/encryption_key": b"b" * 43 + b"="})
    not_ours = tmp_path / "not-ours.tar.gz"
    with tarfile.open(not_ours, "w:gz") as out:
        body = b"hello"
        info = tarfile.TarInfo("../escape.txt")
        info.size = len(body)
        out.addfile(info, io.BytesIO(body))

    fresh = tmp_path / "fresh"
    existing_before = _tree(instance)
    for bad in (flipped, truncated, altered, swapped_key, not_ours, tmp_path / "missing.tar.gz"):
        for target in (fresh, instance):
            code, answer = _restore(target, bad, "--instance-dir", str(target), "--force")
            assert code == 1, (bad.name, answer)
            assert answer["error"]["code"] in ("backup_invalid", "not_found"), answer
            assert "path" in answer["error"]["fields"]
        assert not fresh.exists(), bad.name
        assert _tree(instance) == existing_before, bad.name
        assert not list(tmp_path.glob(".passback-restore-*"))
    # The good one restores.
    code, answer = _restore(fresh, archive, "--instance-dir", str(fresh))
    assert code == 0, answer
    assert _tree(fresh) == {
        "passback.db": members["passback.db"]["sha256"],
        "encryption_key": members["keys/encryption_key"]["sha256"],
        "secret_key": members["keys/secret_key"]["sha256"],
    }


def test_keys_from_the_environment_are_not_written_and_are_named(instance: Path, tmp_path: Path) -> None:
    archive = tmp_path / "env.tar.gz"
    env = {"GATEWAY_ENCRYPTION_KEYS": "k" * 43 + "=", "GATEWAY_SECRET_KEY": "from-env"}
    result = _runner(instance, **env).invoke(main, ["backup", "--output", str(archive)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "GATEWAY_ENCRYPTION_KEYS, GATEWAY_SECRET_KEY come from the environment" in result.output
    with tarfile.open(archive) as tar:
        assert tar.getnames() == ["manifest.json", "passback.db"]
        assert b"from-env" not in b"".join(tar.extractfile(m).read() for m in tar.getmembers())  # type: ignore[union-attr]
    fresh = tmp_path / "fresh"
    code, answer = _restore(fresh, archive, "--instance-dir", str(fresh))
    assert code == 0 and answer["keysToSet"] == ["GATEWAY_ENCRYPTION_KEYS", "GATEWAY_SECRET_KEY"]
    assert sorted(p.name for p in fresh.iterdir()) == ["passback.db"]


def test_restore_with_force_replaces_a_database_and_its_stale_write_ahead_log(instance: Path, tmp_path: Path) -> None:
    archive = tmp_path / "b.tar.gz"
    members = _backup(instance, archive)["manifest"]["members"]
    target = tmp_path / "target"
    target.mkdir()
    (target / "passback.db").write_bytes(b"an older database")
    (target / "passback.db-wal").write_bytes(b"its write-ahead log")
    code, answer = _restore(target, archive, "--instance-dir", str(target))
    assert code == 1 and answer["error"]["code"] == "restore_would_overwrite"
    assert (target / "passback.db").read_bytes() == b"an older database"
    code, answer = _restore(target, archive, "--instance-dir", str(target), "--force")
    assert code == 0, answer
    assert not (target / "passback.db-wal").exists()
    assert _tree(target)["passback.db"] == members["passback.db"]["sha256"]


def test_a_second_backup_never_overwrites_the_first(instance: Path, tmp_path: Path) -> None:
    archive = tmp_path / "b.tar.gz"
    _backup(instance, archive)
    before = archive.read_bytes()
    result = _runner(instance).invoke(main, ["backup", "--output", str(archive), "--json"])
    assert result.exit_code == 1 and json.loads(result.output)["error"]["fields"] == {"output": ["Already exists."]}
    assert archive.read_bytes() == before


def test_postgresql_is_refused_with_the_documented_procedure(tmp_path: Path) -> None:
    runner = _runner(tmp_path, GATEWAY_DATABASE_URL="postgresql://passback@127.0.0.1:1/passback")
    result = runner.invoke(main, ["backup", "--output", str(tmp_path / "b.tar.gz"), "--json"])
    assert result.exit_code == 1
    error = json.loads(result.output)["error"]
    assert error["code"] == "backup_refused"
    for needed in ("pg_dump -Fc", "GATEWAY_ENCRYPTION_KEYS", "GATEWAY_SECRET_KEY", "docs/operations.md"):
        assert needed in error["message"]
    assert list(tmp_path.iterdir()) == []
    text = runner.invoke(main, ["restore", str(tmp_path / "b.tar.gz")])
    assert text.exit_code == 1 and "nothing was restored" in text.output


def test_a_backup_from_a_newer_schema_is_refused(instance: Path, tmp_path: Path) -> None:
    with sqlite3.connect(instance / "passback.db") as database:
        database.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    archive = tmp_path / "newer.tar.gz"
    assert _backup(instance, archive)["manifest"]["alembicRevision"] == "9999_from_the_future"
    fresh = tmp_path / "fresh"
    code, answer = _restore(fresh, archive, "--instance-dir", str(fresh))
    assert code == 1 and answer["error"]["code"] == "backup_invalid"
    assert "9999_from_the_future" in answer["error"]["message"] and not fresh.exists()
