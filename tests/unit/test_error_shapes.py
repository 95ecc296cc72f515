"""A database conflict that rolled the whole transaction back (PostgreSQL's deadlock_detected or
serialization_failure), or a lost database connection (a restart, a failover), is a 503 with Retry-After the
client may simply repeat, never a 500: JSON for the API and OAuth, an HTML page on the dashboard and for LTI
launches. Other database errors stay 500."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Blueprint, Flask
from sqlalchemy.exc import OperationalError

from gateway.errors import register_error_handlers
from gateway.lti.launch import unexpected_error_page


class DriverError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"driver error {sqlstate}")
        self.sqlstate = sqlstate


def app_raising(sqlstate: str) -> Any:
    app = Flask("errors")
    register_error_handlers(app)
    # A blueprint with the LTI endpoints' own error handler (people see those pages in an LMS frame).
    lti = Blueprint("lti_errors", __name__, url_prefix="/lti")
    lti.register_error_handler(Exception, unexpected_error_page)

    @app.post("/boom")
    @app.post("/v1/boom")
    @app.post("/oauth/boom")
    @app.get("/dashboard/boom")
    @lti.post("/boom")
    def boom() -> None:
        raise OperationalError("UPDATE deliveries …", {}, DriverError(sqlstate))

    app.register_blueprint(lti)
    return app.test_client()


def test_a_deadlock_is_a_503_to_send_again() -> None:
    for sqlstate in ("40P01", "40001"):
        response = app_raising(sqlstate).post("/boom")
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert response.get_json()["error"]["code"] == "database_busy"


@pytest.mark.parametrize("sqlstate", ["57P01", "57P02", "57P03", "08006", "08001"])
def test_a_lost_database_connection_is_a_503_to_send_again(sqlstate: str) -> None:
    client = app_raising(sqlstate)
    for path in ("/v1/boom", "/oauth/boom"):
        response = client.post(path)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "2"
        assert response.get_json()["error"]["code"] == "database_unavailable"


def test_pages_answer_a_lost_database_connection_with_a_503_page() -> None:
    client = app_raising("57P01")
    for response in (client.get("/dashboard/boom"), client.post("/lti/boom")):
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "2"
        assert response.content_type.startswith("text/html")
        assert "database" in response.get_data(as_text=True)


def test_another_database_error_is_still_a_500() -> None:
    response = app_raising("53100").post("/boom")
    assert response.status_code == 500
    assert response.get_json()["error"]["code"] == "internal_error"
