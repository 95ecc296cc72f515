"""gunicorn's settings file, read from the directory gunicorn starts in (`gunicorn wsgi:app` here, the image's
/srv/passback): /metrics in multiprocess mode without further setup (docs/operations.md, Metrics).

prometheus_client decides at import whether counts go to files shared by every worker; this module runs in the
master before any worker (or a --preload) imports it, so the directory is chosen here: PROMETHEUS_MULTIPROC_DIR
when set (emptied once: counts of an earlier run must not add to this one's), else a new temporary directory
removed at exit."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

_OWN = "PASSBACK_METRICS_DIR_OWNER"  # this master's pid: a config reload (HUP) must not empty the directory again

if os.environ.get(_OWN) != str(os.getpid()):
    os.environ[_OWN] = str(os.getpid())
    _given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if _given:
        Path(_given).mkdir(parents=True, exist_ok=True)
        for _file in Path(_given).glob("*.db"):
            _file.unlink()
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="passback-metrics-")
        os.environ["PASSBACK_METRICS_DIR_MADE"] = os.environ["PROMETHEUS_MULTIPROC_DIR"]


def child_exit(server: Any, worker: Any) -> None:
    """A worker that ended: its live gauges stop counting (Passback keeps none today; cheap and future-proof)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    made = os.environ.get("PASSBACK_METRICS_DIR_MADE")
    if made:
        shutil.rmtree(made, ignore_errors=True)
