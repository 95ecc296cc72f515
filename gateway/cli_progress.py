"""Progress of a long CLI command (retry, roster import, roster sync): a bar on stderr when it is a terminal,
nothing otherwise, so logs, pipes and `--json` output stay clean. The command prints its summary at the end."""

from __future__ import annotations

import sys
from typing import Any

import click


class Progress:
    """Call it with (done, total) as work advances; use it as a context manager so the bar is closed."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._bar: Any = None
        self._tty = sys.stderr.isatty()

    def __enter__(self) -> Progress:
        return self

    def __call__(self, done: int, total: int) -> None:
        if not self._tty or total == 0:
            return
        if self._bar is None:
            self._bar = click.progressbar(length=total, label=self.label, file=sys.stderr)
            self._bar.__enter__()
        self._bar.update(done - self._bar.pos)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None

    def __exit__(self, *_: object) -> None:
        self.close()
