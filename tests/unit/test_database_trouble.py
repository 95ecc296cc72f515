"""gateway.db.database_trouble, the one classification of database errors a client (or the worker) may simply
repeat, for each kind of error: psycopg's own exceptions, SQLAlchemy's wrappers, and a real SQLite lock."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pytest
from psycopg import errors as pg
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
)

from gateway.db import DatabaseTrouble, database_trouble

BUSY = DatabaseTrouble.BUSY
UNAVAILABLE = DatabaseTrouble.UNAVAILABLE


def wrapped(wrapper: type[DBAPIError], original: Exception, *, invalidated: bool = False) -> DBAPIError:
    """What SQLAlchemy raises for a driver error (connection_invalidated: it saw the connection die)."""
    return wrapper("UPDATE deliveries …", {}, original, connection_invalidated=invalidated)


@pytest.mark.parametrize(
    ("error", "trouble"),
    [
        pytest.param(wrapped(OperationalError, pg.DeadlockDetected()), BUSY, id="deadlock 40P01"),
        pytest.param(wrapped(OperationalError, pg.SerializationFailure()), BUSY, id="serialization 40001"),
        pytest.param(wrapped(OperationalError, pg.AdminShutdown()), UNAVAILABLE, id="admin shutdown 57P01"),
        pytest.param(wrapped(OperationalError, pg.CrashShutdown()), UNAVAILABLE, id="crash shutdown 57P02"),
        pytest.param(wrapped(OperationalError, pg.CannotConnectNow()), UNAVAILABLE, id="cannot connect now 57P03"),
        pytest.param(wrapped(OperationalError, pg.ConnectionFailure()), UNAVAILABLE, id="connection failure 08006"),
        pytest.param(
            wrapped(OperationalError, pg.SqlclientUnableToEstablishSqlconnection()),
            UNAVAILABLE,
            id="unable to connect 08001",
        ),
        pytest.param(
            wrapped(OperationalError, psycopg.OperationalError("connection failed: Connection refused")),
            UNAVAILABLE,
            id="refused by the client library (no SQLSTATE)",
        ),
        pytest.param(
            wrapped(OperationalError, psycopg.OperationalError("consuming input failed"), invalidated=True),
            UNAVAILABLE,
            id="OperationalError with connection_invalidated",
        ),
        pytest.param(
            wrapped(InterfaceError, psycopg.InterfaceError("the connection is lost"), invalidated=True),
            UNAVAILABLE,
            id="InterfaceError with connection_invalidated",
        ),
        pytest.param(DisconnectionError("pre-ping failed"), UNAVAILABLE, id="DisconnectionError"),
        pytest.param(wrapped(IntegrityError, pg.UniqueViolation()), None, id="unique violation 23505"),
        pytest.param(wrapped(ProgrammingError, pg.UndefinedTable()), None, id="undefined table 42P01"),
        pytest.param(wrapped(OperationalError, pg.DiskFull()), None, id="disk full 53100"),
        pytest.param(
            wrapped(InterfaceError, psycopg.InterfaceError("cursor already closed")),
            None,
            id="InterfaceError on a live connection",
        ),
        pytest.param(ValueError("not a database error"), None, id="ValueError"),
    ],
)
def test_each_kind_of_error_is_classified(error: BaseException, trouble: DatabaseTrouble | None) -> None:
    assert database_trouble(error) is trouble


def test_an_error_raised_from_a_lost_connection_is_classified_by_its_cause() -> None:
    try:
        try:
            raise wrapped(OperationalError, pg.AdminShutdown())
        except OperationalError as exc:
            raise RuntimeError("the service gave up") from exc
    except RuntimeError as exc:
        assert database_trouble(exc) is UNAVAILABLE


def test_sqlite_database_is_locked_is_busy(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    waiter = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError) as locked:
            waiter.execute("BEGIN IMMEDIATE")
        assert database_trouble(wrapped(OperationalError, locked.value)) is BUSY
        assert database_trouble(wrapped(OperationalError, sqlite3.OperationalError("no such table: x"))) is None
    finally:
        holder.close()
        waiter.close()
