"""Objects bound to the app in create_app. `db` resolves to the current app's Database, so several apps
(SQLite and PostgreSQL in one test run) can live in one process."""

from __future__ import annotations

from typing import Any

from flask import current_app

from gateway.db import Database


class _CurrentDatabase:
    def _get(self) -> Database:
        return current_app.extensions["passback_db"]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)


db: Any = _CurrentDatabase()
