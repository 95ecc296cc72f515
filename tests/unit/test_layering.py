"""The layers import downwards only: services never import the worker, the views, the CLI or the dashboard (which
all import services), so there is no import cycle between them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVICES = Path(__file__).resolve().parents[2] / "gateway" / "services"
ABOVE_SERVICES = ("gateway.worker", "gateway.tasks", "gateway.api", "gateway.cli", "gateway.dashboard", "gateway.lti")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", sorted(SERVICES.glob("*.py")), ids=lambda p: p.name)
def test_services_import_nothing_above_them(module: Path) -> None:
    above = {name for name in _imports(module) if name.startswith(ABOVE_SERVICES)}
    assert not above, f"{module.name} imports {sorted(above)}"
