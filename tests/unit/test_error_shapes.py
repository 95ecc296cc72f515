"""A database conflict that rolled the whole transaction back (PostgreSQL's deadlock_detected or
serialization_failure) is a 503 the client may simply repeat, never a 500; other database errors stay 500."""

from __future__ import annotations

from typing import Any

from flask import Flask
from sqlalchemy.exc import OperationalError

from gateway.errors import register_error_handlers


class DriverError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"driver error {sqlstate}")
        self.sqlstate = sqlstate


def app_raising(sqlstate: str) -> Any:
    app = Flask("errors")
    register_error_handlers(app)

    @app.post("/boom")
    def boom() -> None:
        raise OperationalError("UPDATE deliveries …", {}, DriverError(sqlstate))

    return app.test_client()


def test_a_deadlock_is_a_503_to_send_again() -> None:
    for sqlstate in ("40P01", "40001"):
        response = app_raising(sqlstate).post("/boom")
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert response.get_json()["error"]["code"] == "database_busy"


def test_another_database_error_is_still_a_500() -> None:
    response = app_raising("08006").post("/boom")
    assert response.status_code == 500
    assert response.get_json()["error"]["code"] == "internal_error"
