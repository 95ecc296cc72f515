"""Passback: a self-hostable grade passback gateway."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask

from gateway.composition import EXTENSION_KEY, build_services, services_of
from gateway.config import Settings
from gateway.db import Database


def create_app(config: Settings | dict[str, Any] | None = None, *, database: Database | None = None) -> Flask:
    """The application factory. It never starts threads: see start_embedded_worker.

    `database` lets a caller share one engine between apps (the test suite does, per backend).
    """
    settings = config if isinstance(config, Settings) else Settings.from_env(**(config or {}))
    services = build_services(settings, database=database)
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

    app.extensions[EXTENSION_KEY] = services

    @app.teardown_appcontext
    def _remove_session(_exc: BaseException | None) -> None:
        assert services.database.session is not None
        services.database.session.remove()

    from flask_wtf.csrf import CSRFProtect

    from gateway.api import api
    from gateway.dashboard import dashboard_bp
    from gateway.errors import register_error_handlers
    from gateway.idempotency_keys import install_operation_conventions
    from gateway.input_guard import register_input_guard
    from gateway.lti import lti_bp
    from gateway.lti.lti11 import lti11_bp
    from gateway.oauth import init_oauth, oauth_bp
    from gateway.observability import init_observability
    from gateway.openapi import openapi_bp
    from gateway.rate_limits import init_rate_limits
    from gateway.request_ids import init_request_ids
    from gateway.sandbox_lms import demo_bp, sandbox_lms_bp

    app.register_blueprint(api)
    app.register_blueprint(openapi_bp)
    app.register_blueprint(sandbox_lms_bp)
    app.register_blueprint(demo_bp)
    app.register_blueprint(lti_bp)
    app.register_blueprint(lti11_bp)
    app.register_blueprint(oauth_bp)
    init_oauth(app)
    app.register_blueprint(dashboard_bp)
    init_request_ids(app)  # first of the before_request hooks: every answer, even a refusal, carries the id
    init_observability(app, services)  # the id bound for the logs, the access line, /metrics
    init_rate_limits(app)  # before any work: a refused request changes nothing
    register_input_guard(app)  # before the views: unstorable text reaches no view
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

    @app.get("/readyz")
    def readyz() -> tuple[dict[str, Any], int]:
        readiness = services.readiness()
        return readiness.as_json(), 200 if readiness.ready else 503

    logging.getLogger("passback").setLevel(settings.log_level.upper())
    # Last, once every view is registered: Idempotency-Key and body limits from each view's @operation.
    install_operation_conventions(app)
    return app


def start_embedded_worker(app: Flask) -> Any:
    """Run the delivery worker as a thread of this process (the embedded default)."""
    return services_of(app).start_embedded_worker()
