"""Packaging (issue 16): the lock file pins every dependency of the server install, within pyproject.toml's
ranges and with hashes; the image never ships local state; the compose file restarts and checks its services.
No Docker engine runs in CI, so these read the files a build uses rather than building them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCKED_EXTRAS = ("server", "postgres", "celery")


def locked() -> dict[str, tuple[str, list[str]]]:
    """requirements.lock as {name: (version, hashes)}."""
    text = (ROOT / "requirements.lock").read_text().replace("\\\n", " ")
    pins: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        found = re.match(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;]+)", line)
        assert found, f"not a pinned requirement: {line!r}"
        pins[canonicalize_name(found.group(1))] = (found.group(3), re.findall(r"--hash=sha256:([0-9a-f]{64})", line))
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [req for extra in LOCKED_EXTRAS for req in project["optional-dependencies"][extra]]
    return [Requirement(req) for req in [*project["dependencies"], *extras]]


def test_the_lock_pins_every_declared_dependency_within_its_range() -> None:
    pins = locked()
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in requirements.lock: run `make lock`"
        version = pins[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements.lock has {name}=={version}, outside pyproject.toml's {requirement}: run `make lock`"
        )


def test_every_locked_package_has_a_hash() -> None:
    pins = locked()
    assert len(pins) > 20
    assert [name for name, (_, hashes) in pins.items() if not hashes] == []


@pytest.mark.parametrize("path", ["instance/", ".venv/", ".git/", "tests/", "*.db", ".env"])
def test_the_image_never_ships_local_state(path: str) -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert path in ignored


def test_the_image_installs_the_lock_with_hashes_and_runs_unprivileged() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install --require-hashes -r /tmp/requirements.lock" in dockerfile
    assert "pip install --no-deps /src" in dockerfile, "Passback itself resolves nothing again"
    assert re.search(r"^USER passback$", dockerfile, re.M)
    assert "HEALTHCHECK" in dockerfile and "/healthz" in dockerfile
    assert "COPY . " not in dockerfile, "only what the image needs is copied"


def test_compose_restarts_and_checks_its_long_running_services() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    for name in ("db", "redis", "web", "worker", "beat"):
        assert services[name]["restart"] == "unless-stopped", name
    for name in ("db", "redis", "web"):
        assert "test" in services[name]["healthcheck"], name
    assert "/readyz" in " ".join(services["web"]["healthcheck"]["test"])
    assert services["migrate"]["restart"] == "no"
    assert services["web"]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert services["web"]["build"] == "."
