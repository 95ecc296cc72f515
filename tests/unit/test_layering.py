"""The layering lives in one place: the import-linter contracts in pyproject.toml ([tool.importlinter]), which
`make lint` runs. These tests run the same `lint-imports` on the real tree, and on a copy with one forbidden import
planted, so a contract that stopped checking anything fails here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sysconfig.get_path("scripts")) / "lint-imports"


def _lint_imports(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Wide columns: rich wraps the report at 80, which would split the import chains the tests look for.
    env = {**os.environ, "COLUMNS": "400", "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_tree_keeps_every_contract() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("contract", "package_init", "planted"),
    [
        ("adapters-framework-free", "adapters/__init__.py", "import flask"),
        ("adapters-framework-free", "adapters/__init__.py", "import gateway.models"),
        ("schemas-framework-free", "schemas/__init__.py", "from flask import request"),
        ("schemas-framework-free", "schemas/__init__.py", "import gateway.services.errors"),
        ("services-below-entry-points", "gateway/services/__init__.py", "import flask"),
        ("services-below-entry-points", "gateway/services/__init__.py", "import gateway.worker"),
        ("services-below-entry-points", "gateway/services/__init__.py", "import gateway.tasks"),
        ("services-below-entry-points", "gateway/services/__init__.py", "import gateway.cli"),
        ("services-below-entry-points", "gateway/services/__init__.py", "import gateway.api.grades"),
        ("services-below-entry-points", "gateway/services/__init__.py", "import gateway.dashboard"),
        ("services-below-entry-points", "gateway/services/__init__.py", "import gateway.lti.launch"),
        ("services-not-composition-root", "gateway/services/__init__.py", "from gateway import create_app"),
        ("models-below-services", "gateway/models/__init__.py", "import gateway.services.errors"),
    ],
)
def test_a_planted_forbidden_import_breaks_its_contract(
    tmp_path: Path, contract: str, package_init: str, planted: str
) -> None:
    for package in ("gateway", "adapters", "schemas"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with (tmp_path / package_init).open("a") as init:
        init.write(f"\n{planted}  # planted by the test\n")

    result = _lint_imports(tmp_path, "--contract", contract)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 broken" in result.stdout, result.stdout
    importer = package_init.removesuffix("/__init__.py").replace("/", ".")
    assert f"{importer} ->" in result.stdout, result.stdout
