"""Passback: a self-hostable grade passback gateway."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask

from adapters.http import HttpClient
from gateway.config import Settings
from gateway.crypto import SecretBox
from gateway.db import Database


def create_app(config: Settings | dict[str, Any] | None = None, *, database: Database | None = None) -> Flask:
    """The application factory. It never starts threads: see start_embedded_worker.

    `database` lets a caller share one engine between apps (the test suite does, per backend).
    """
    settings = config if isinstance(config, Settings) else Settings.from_env(**(config or {}))
    settings.require_encryption_keys()  # raises ConfigurationError: never start without a way to read secrets
    app = Flask(__name__)
    app.config["PASSBACK"] = settings
    app.config["SECRET_KEY"] = settings.secret_key
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    app.config["SESSION_COOKIE_SECURE"] = settings.public_url.startswith("https://")
    app.config["SESSION_COOKIE_NAME"] = "passback_session"
    # The cookie's lifetime; the dashboard also ends a session on its own clock (sign-in age, idle time).
    app.config["PERMANENT_SESSION_LIFETIME"] = settings.staff_session_seconds
    app.config["WTF_CSRF_TIME_LIMIT"] = None  # tied to the session, which expires on its own
    app.json.sort_keys = False  # type: ignore[attr-defined]
    if settings.trusted_proxies:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies)  # type: ignore[method-assign]

    if database is None:
        database = Database()
        database.configure(settings.database_url)
    app.extensions["passback_db"] = database
    app.extensions["passback_box"] = SecretBox(settings.encryption_keys)
    app.extensions["passback_http"] = HttpClient(
        settings.http_connect_timeout, settings.http_read_timeout, settings.request_deadline()
    )

    @app.teardown_appcontext
    def _remove_session(_exc: BaseException | None) -> None:
        assert database.session is not None
        database.session.remove()

    from flask_wtf.csrf import CSRFProtect

    from gateway.api import api
    from gateway.dashboard import dashboard_bp
    from gateway.errors import register_error_handlers
    from gateway.input_guard import register_input_guard
    from gateway.lti import lti_bp
    from gateway.lti.lti11 import lti11_bp
    from gateway.oauth import init_oauth, oauth_bp
    from gateway.openapi import openapi_bp
    from gateway.sandbox_lms import sandbox_lms_bp

    app.register_blueprint(api)
    app.register_blueprint(openapi_bp)
    app.register_blueprint(sandbox_lms_bp)
    app.register_blueprint(lti_bp)
    app.register_blueprint(lti11_bp)
    app.register_blueprint(oauth_bp)
    init_oauth(app)
    app.register_blueprint(dashboard_bp)
    register_input_guard(app)  # first of the before_request hooks: unstorable text reaches no view
    # CSRF tokens on every dashboard form; the machine-to-machine endpoints authenticate otherwise (bearer
    # tokens, signed LTI messages, client credentials) and are exempt.
    csrf = CSRFProtect(app)
    for blueprint in (api, lti_bp, lti11_bp, oauth_bp, sandbox_lms_bp, openapi_bp):
        csrf.exempt(blueprint)
    register_error_handlers(app)
    from gateway.security_headers import init_security_headers

    init_security_headers(app)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    if settings.broker_url:
        # Delivery runs on Celery workers: accepted grades wake them through the broker.
        from gateway.tasks import Dispatcher

        app.extensions["passback_dispatch"] = Dispatcher(settings)

    logging.getLogger("passback").setLevel(logging.INFO)
    return app


def start_embedded_worker(app: Flask) -> Any:
    """Run the delivery worker as a thread of this process (the embedded default)."""
    from gateway.worker import DeliveryWorker, EmbeddedWorker

    worker = DeliveryWorker(app.extensions["passback_db"], app.extensions["passback_box"], app.config["PASSBACK"])
    embedded = EmbeddedWorker(worker)
    embedded.start()
    app.extensions["passback_worker"] = embedded
    app.extensions["passback_worker_nudge"] = embedded.nudge
    return embedded
