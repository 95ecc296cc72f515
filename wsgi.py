"""WSGI entry point: `gunicorn wsgi:app`. Starts the embedded delivery worker unless GATEWAY_EMBEDDED_WORKER=false
or GATEWAY_BROKER_URL is set (then run `gateway worker` separately: on its own, or as Celery workers)."""

from gateway import create_app, start_embedded_worker
from gateway.config import ConfigurationError, logging_from_env
from gateway.logs import configure_logging

try:
    configure_logging(*logging_from_env())  # JSON lines or text (GATEWAY_LOG_FORMAT) on stderr
    app = create_app()
except ConfigurationError as exc:
    raise SystemExit(f"passback: {exc}") from None
if app.config["PASSBACK"].embedded_worker and not app.config["PASSBACK"].broker_url:
    start_embedded_worker(app)
