"""WSGI entry point: `gunicorn wsgi:app`. Starts the embedded delivery worker unless
GATEWAY_EMBEDDED_WORKER=false (then run `gateway worker` separately)."""

from gateway import create_app, start_embedded_worker

app = create_app()
if app.config["PASSBACK"].embedded_worker:
    start_embedded_worker(app)
