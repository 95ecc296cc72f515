"""Settings from GATEWAY_* variables (README, Configuration): a bad value stops the start with one line naming
the variable and its rule; an unknown variable is reported with the closest known name; the README's table
names every setting with its default."""

from __future__ import annotations

import logging
import re
from dataclasses import MISSING, fields
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.config import (
    ConfigurationError,
    InvalidSetting,
    Settings,
    known_env_vars,
    logging_from_env,
    unknown_env_vars,
)

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """A clean GATEWAY_* environment with what from_env needs to finish (a database, keys)."""
    import os

    for name in list(os.environ):
        if name.startswith("GATEWAY_") and not name.startswith(("GATEWAY_TEST_", "GATEWAY_BENCH_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("GATEWAY_DATABASE_URL", f"sqlite:///{tmp_path / 'passback.db'}")
    monkeypatch.setenv("GATEWAY_SECRET_KEY", "test-secret")
    monkeypatch.setenv("GATEWAY_ENCRYPTION_KEYS", "")
    return monkeypatch


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("GATEWAY_WORKER_THREADS", "abc", "GATEWAY_WORKER_THREADS='abc' must be a whole number"),
        ("GATEWAY_WORKER_THREADS", "2.5", "GATEWAY_WORKER_THREADS='2.5' must be a whole number"),
        ("GATEWAY_HTTP_READ_TIMEOUT", "-1", "GATEWAY_HTTP_READ_TIMEOUT must be a number > 0 (it is -1)"),
        ("GATEWAY_HTTP_CONNECT_TIMEOUT", "0", "GATEWAY_HTTP_CONNECT_TIMEOUT must be a number > 0 (it is 0)"),
        ("GATEWAY_LEASE_SECONDS", "soon", "GATEWAY_LEASE_SECONDS='soon' must be a number"),
        ("GATEWAY_STOP_GRACE_SECONDS", "-2", "GATEWAY_STOP_GRACE_SECONDS must be a number >= 0 (it is -2)"),
        ("GATEWAY_CATALOG_CACHE_SECONDS", "nan", "GATEWAY_CATALOG_CACHE_SECONDS must be a finite number"),
        ("GATEWAY_EMBEDDED_WORKER", "ture", "GATEWAY_EMBEDDED_WORKER='ture' must be true or false"),
        ("GATEWAY_LOG_FORMAT", "xml", "GATEWAY_LOG_FORMAT='xml' must be one of: auto, json, text"),
    ],
)
def test_a_bad_value_stops_the_start_naming_the_variable_and_rule(
    env: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    env.setenv(name, value)
    with pytest.raises(InvalidSetting) as refused:
        Settings.from_env()
    assert str(refused.value).startswith(message)
    assert "\n" not in str(refused.value)
    assert isinstance(refused.value, ConfigurationError) and isinstance(refused.value, ValueError)


def test_the_cli_refuses_in_one_line_without_a_traceback(env: pytest.MonkeyPatch) -> None:
    env.setenv("GATEWAY_WORKER_THREADS", "abc")
    result = CliRunner().invoke(main, ["db", "upgrade"])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: GATEWAY_WORKER_THREADS='abc' must be a whole number"
    env.delenv("GATEWAY_WORKER_THREADS")
    env.setenv("GATEWAY_LOG_LEVEL", "loud")
    result = CliRunner().invoke(main, ["db", "upgrade"])
    assert result.exit_code == 1
    assert "GATEWAY_LOG_LEVEL='loud' must be one of: debug, info, warning, error, critical" in result.output


def test_good_values_are_read(env: pytest.MonkeyPatch) -> None:
    env.setenv("GATEWAY_WORKER_THREADS", " 8 ")
    env.setenv("GATEWAY_EMBEDDED_WORKER", "off")
    env.setenv("GATEWAY_HTTP_READ_TIMEOUT", "2.5")
    env.setenv("GATEWAY_LOG_LEVEL", "DEBUG")
    settings = Settings.from_env()
    assert (settings.worker_threads, settings.embedded_worker, settings.http_read_timeout) == (8, False, 2.5)
    assert logging_from_env() == ("debug", "auto")


def test_an_unknown_variable_is_reported_with_the_closest_name(
    env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    env.setenv("GATEWAY_BROKER_URLL", "redis://x")
    env.setenv("GATEWAY_WORKERTHREADS", "3")
    env.setenv("GATEWAY_SOMETHING_ELSE_ENTIRELY", "1")
    env.setenv("GATEWAY_TEST_WHATEVER", "1")
    env.setenv("GATEWAY_BENCH_WHATEVER", "1")
    env.setenv("GATEWAY_INSTANCE_DIR", str(tmp_path))  # read outside Settings, but known
    assert unknown_env_vars() == [
        ("GATEWAY_BROKER_URLL", "GATEWAY_BROKER_URL"),
        ("GATEWAY_SOMETHING_ELSE_ENTIRELY", None),
        ("GATEWAY_WORKERTHREADS", "GATEWAY_WORKER_THREADS"),
    ]
    with caplog.at_level(logging.WARNING, logger="passback.config"):
        settings = Settings.from_env()  # reported, not refused
    assert settings.broker_url == ""
    warned = [r.getMessage() for r in caplog.records if r.name == "passback.config"]
    assert "GATEWAY_BROKER_URLL is not a Passback setting and is ignored; did you mean GATEWAY_BROKER_URL?" in warned
    assert not any("GATEWAY_TEST_" in m or "GATEWAY_BENCH_" in m or "INSTANCE_DIR" in m for m in warned)


def _readme_table() -> dict[str, str]:
    """Variable -> default as the README's Configuration table writes them (a row may name several: `A` / `B`)."""
    text = README.read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    table: dict[str, str] = {}
    for line in section.splitlines():
        if not line.startswith("| `GATEWAY_"):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        names = re.findall(r"`(GATEWAY_[A-Z0-9_]+)`", cells[0])
        defaults = [d.strip() for d in cells[1].split(" / ")] if len(names) > 1 else [cells[1]]
        assert len(defaults) == len(names), f"one default per variable: {line}"
        for name, default in zip(names, defaults, strict=True):
            assert name not in table, f"{name} twice in the README's table"
            table[name] = default
    return table


def _written(default: object) -> str:
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


def test_the_readme_table_names_every_setting_with_its_default() -> None:
    table = _readme_table()
    assert set(table) == known_env_vars(), "README's Configuration table and the settings differ"
    for f in fields(Settings):
        if f.name == "extra":
            continue
        name = "GATEWAY_" + f.name.upper()
        assert f.default is not MISSING, f.name
        if f.default == "":
            continue  # computed or unset: the README says in words (generated, unset, …)
        assert table[name] == f"`{_written(f.default)}`", f"{name}: README says {table[name]}, Settings {f.default!r}"
