# Passback's production image: the web process, `gateway worker` and `gateway beat` all run from it (see
# docker-compose.yml). Dependencies come from requirements.lock with their hashes checked, so a build installs
# exactly what was tested; Passback itself is installed on top without resolving anything again.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/passback
COPY requirements.lock /tmp/requirements.lock
RUN /opt/passback/bin/pip install --require-hashes -r /tmp/requirements.lock
COPY pyproject.toml README.md /src/
COPY gateway /src/gateway
COPY adapters /src/adapters
COPY schemas /src/schemas
RUN /opt/passback/bin/pip install --no-deps /src

FROM python:3.11-slim
ENV PATH=/opt/passback/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GATEWAY_INSTANCE_DIR=/srv/passback/instance
# A user of its own: nothing in the container runs as root.
RUN useradd --system --create-home --home-dir /srv/passback --uid 10001 passback
COPY --from=build /opt/passback /opt/passback
COPY wsgi.py gunicorn.conf.py /srv/passback/
WORKDIR /srv/passback
USER passback
# The instance directory holds the SQLite database and generated keys of the embedded default; in the
# PostgreSQL layout it stays empty. Never bake one into the image (.dockerignore keeps instance/ out).
VOLUME ["/srv/passback/instance"]
EXPOSE 8000
# Liveness only: /healthz answers while the process serves; readiness (/readyz) is for the orchestrator's checks.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["gunicorn", "--workers", "4", "--bind", "0.0.0.0:8000", "--graceful-timeout", "10", "wsgi:app"]
