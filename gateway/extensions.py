"""The current app's objects for the web layer. `db` resolves to the current app's Database, so several apps
(SQLite and PostgreSQL in one test run) can live in one process."""

from __future__ import annotations

from typing import Any

from flask import current_app, g, has_request_context
from sqlalchemy.orm import Session

from gateway.composition import Services, services_of
from gateway.db import Database
from gateway.services.unit_of_work import UnitOfWork


def current_services() -> Services:
    return services_of(current_app)


def request_unit_of_work() -> UnitOfWork:
    """A unit of work on this request's session (removed when the request ends), nudging this app's workers.
    In a request with an Idempotency-Key it is part of the request's own unit (gateway/idempotency_keys.py),
    which commits the work together with the stored answer."""
    services = current_services()
    assert services.database.session is not None
    session: Session = services.database.session()
    return services.unit_of_work(session, within=g.get("idempotent_unit") if has_request_context() else None)


class _CurrentDatabase:
    def _get(self) -> Database:
        return current_services().database

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)


db: Any = _CurrentDatabase()
