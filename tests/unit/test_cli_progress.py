"""Long CLI commands show a bar on a terminal's stderr and nothing anywhere else (pipes, logs, --json)."""

from __future__ import annotations

import io

import pytest

from gateway.cli_progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_sees_the_bar_advance_and_close(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = Terminal()
    monkeypatch.setattr("sys.stderr", screen)
    with Progress("reading course rosters") as progress:
        progress(0, 4)
        progress(2, 4)
        progress(4, 4)
    shown = screen.getvalue()
    assert "reading course rosters" in shown and "100%" in shown


def test_a_pipe_sees_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = io.StringIO()
    monkeypatch.setattr("sys.stderr", pipe)
    with Progress("retrying") as progress:
        progress(1, 2)
        progress(2, 2)
    assert pipe.getvalue() == ""
