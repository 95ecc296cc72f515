"""The baseline of `make bench`: a bare Flask endpoint that parses a JSON grade and inserts one row.

Served as `gunicorn -w 2 bench.bare_app:app` next to Passback, with the same engine (gateway.db.make_engine:
SQLite in WAL with BEGIN IMMEDIATE, psycopg 3 on PostgreSQL) and the same session style (a scoped session
removed at teardown), so the ratio measures what Passback's request path adds on top of one insert.
The database URL is GATEWAY_DATABASE_URL; the table is created by the benchmark before gunicorn starts.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from flask import Flask, Response, jsonify, request
from sqlalchemy import Float, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, scoped_session, sessionmaker

from gateway.db import make_engine
from gateway.models.base import new_id, utcnow


class Base(DeclarativeBase):
    pass


class BareGrade(Base):
    __tablename__ = "bench_bare_grades"

    id: Mapped[str] = mapped_column(String(24), primary_key=True, default=new_id)
    assignment_id: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str] = mapped_column(String(64))
    percentage: Mapped[float] = mapped_column(Float)
    timestamp: Mapped[str | None] = mapped_column(String(40), default=None)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


def create_bare_app(database_url: str | None = None) -> Flask:
    url = database_url or os.environ["GATEWAY_DATABASE_URL"]
    engine = make_engine(url)
    session = scoped_session(sessionmaker(bind=engine, expire_on_commit=False))
    app = Flask(__name__)

    @app.teardown_appcontext
    def _remove_session(_exc: BaseException | None) -> None:
        session.remove()

    @app.post("/grade")
    def post_grade() -> tuple[Response, int]:
        body: Any = request.get_json()
        row = BareGrade(
            assignment_id=str(body["assignmentID"]),
            user_id=str(body["userID"]),
            percentage=float(body["percentage"]),
            timestamp=body.get("timestamp"),
        )
        session.add(row)
        session.commit()
        return jsonify({"id": row.id, "userID": row.user_id, "percentage": row.percentage}), 202

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def __getattr__(name: str) -> Any:
    # `bench.bare_app:app` builds the app on first access, so the benchmark can import BareGrade without a URL.
    if name == "app":
        app = create_bare_app()
        globals()["app"] = app
        return app
    raise AttributeError(name)
