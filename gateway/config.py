"""Settings from environment variables, with safe defaults for the embedded mode (SQLite, worker thread)."""

from __future__ import annotations

import difflib
import logging
import math
import os
import secrets
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

INSTANCE_DIR = Path(os.environ.get("GATEWAY_INSTANCE_DIR", Path.cwd() / "instance"))
log = logging.getLogger("passback.config")

# GATEWAY_* variables read outside Settings (before settings exist); they are known, not typos.
EXTRA_ENV_VARS = frozenset({"GATEWAY_INSTANCE_DIR"})
# Variables of the test suite and the benchmarks: never reported as unknown.
IGNORED_ENV_PREFIXES = ("GATEWAY_TEST_", "GATEWAY_BENCH_")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
# Numbers that must be above 0 (a zero would stop a loop, divide by zero or refuse everything); every other
# number of Settings must be at least 0 (0 has a documented meaning there: off, none, no limit).
_POSITIVE = frozenset(
    {
        "worker_poll_seconds",
        "worker_batch_size",
        "lease_seconds",
        "max_attempts",
        "backoff_base_seconds",
        "backoff_max_seconds",
        "http_connect_timeout",
        "http_read_timeout",
        "http_request_deadline",
        "worker_threads",
        "heartbeat_seconds",
        "sweep_seconds",
        "drain_seconds",
        "connection_concurrency",
        "connection_rate",
        "connection_burst",
        "webhook_batch_size",
        "webhook_timeout_seconds",
        "webhook_backoff_base_seconds",
        "webhook_backoff_max_seconds",
        "webhook_rate",
        "webhook_burst",
        "webhook_concurrency",
        "api_rate_window_seconds",
        "max_body_bytes",
        "staff_session_seconds",
        "staff_idle_seconds",
    }
)
_CHOICES = {"log_level": ("debug", "info", "warning", "error", "critical"), "log_format": ("auto", "json", "text")}
_reported_unknown: set[str] = set()


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value not in _TRUE | _FALSE:
        raise InvalidSetting(f"{name}={raw!r} must be true or false (1/0, yes/no, on/off)")
    return value in _TRUE


def env_name(field_name: str) -> str:
    return "GATEWAY_" + field_name.upper()


def known_env_vars() -> frozenset[str]:
    """Every GATEWAY_* variable Passback reads: one per setting, and those read before settings exist."""
    return frozenset(env_name(f.name) for f in fields(Settings) if f.name != "extra") | EXTRA_ENV_VARS


def unknown_env_vars(environ: dict[str, str] | None = None) -> list[tuple[str, str | None]]:
    """GATEWAY_* variables set but never read (a typo, or one an older release read), each with the closest known
    name (None: nothing close)."""
    environ = dict(os.environ if environ is None else environ)
    known = known_env_vars()
    unknown = []
    for name in sorted(environ):
        if not name.startswith("GATEWAY_") or name in known or name.startswith(IGNORED_ENV_PREFIXES):
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
        unknown.append((name, close[0] if close else None))
    return unknown


def logging_from_env() -> tuple[str, str]:
    """GATEWAY_LOG_LEVEL and GATEWAY_LOG_FORMAT, checked: logging is set up before the other settings are read."""
    values = {}
    for name, default in (("log_level", "info"), ("log_format", "auto")):
        raw = os.environ.get(env_name(name), default).strip().lower() or default
        if raw not in _CHOICES[name]:
            raise InvalidSetting(f"{env_name(name)}={raw!r} must be one of: {', '.join(_CHOICES[name])}")
        values[name] = raw
    return values["log_level"], values["log_format"]


def report_unknown_env_vars() -> None:
    """A warning per unknown GATEWAY_* variable (once per process): reported, not refused (see README,
    Configuration: a leftover variable must not stop a restart)."""
    for name, close in unknown_env_vars():
        if name in _reported_unknown:
            continue
        _reported_unknown.add(name)
        hint = f"; did you mean {close}?" if close else ""
        log.warning("%s is not a Passback setting and is ignored%s", name, hint)


def _read_or_create_key_file(path: Path, make: Any) -> str:
    """Keep a generated development key beside the SQLite database so restarts can read old secrets."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = make()
    # 0600: the file is a secret; create it with that mode rather than chmod afterwards.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    return value


class ConfigurationError(RuntimeError):
    """Passback must not start with these settings; the one-line message says what to set."""


class InvalidSetting(ConfigurationError, ValueError):
    """A variable's value breaks its rule (not a number, negative, out of range); the message names both."""


@dataclass
class Settings:
    database_url: str = ""
    secret_key: str = ""
    # Fernet key(s) for LMS secrets at rest; comma-separated, first one encrypts, all decrypt (rotation).
    encryption_keys: str = ""
    public_url: str = "http://127.0.0.1:8000"
    embedded_worker: bool = True
    worker_poll_seconds: float = 1.0
    worker_batch_size: int = 20
    lease_seconds: float = 120.0
    max_attempts: int = 15
    backoff_base_seconds: float = 15.0
    backoff_max_seconds: float = 3600.0
    retry_after_max_seconds: float = 86400.0
    http_connect_timeout: float = 5.0
    http_read_timeout: float = 30.0
    # Every LMS request ends within this many seconds, answer read or not; at most a third of the lease, so a
    # request started under a checked lease ends while that lease still holds (see request_deadline()).
    http_request_deadline: float = 30.0
    # The embedded/polling worker delivers to this many LMS connections at once (one thread per connection).
    worker_threads: int = 4
    # Every delivery worker records a heartbeat this often; /readyz answers 503 when the newest is older than
    # readyz_heartbeat_max_age_seconds (0: no worker required, e.g. a database-only check).
    heartbeat_seconds: float = 10.0
    readyz_heartbeat_max_age_seconds: float = 60.0
    # On SIGTERM/SIGINT a worker claims nothing more and gives the LMS requests in flight this long to finish
    # (never longer than one request may take), then gives back every claim it still holds.
    stop_grace_seconds: float = 5.0
    # Celery over this broker (redis://…) instead of the embedded worker; Redis also shares the throttles.
    broker_url: str = ""
    # How often the sweep re-enqueues connections with due deliveries (a lost message only delays a grade).
    sweep_seconds: float = 15.0
    # One Celery task delivers to one connection for at most this long, then hands on to a new task.
    drain_seconds: float = 30.0
    # Per LMS connection, shared by all workers: concurrent deliveries, requests a second, burst.
    connection_concurrency: int = 4
    connection_rate: float = 10.0
    connection_burst: int = 10
    # After a 429 or a rate-limit 403 without Retry-After, nobody sends to that connection for this long.
    connection_pause_seconds: float = 10.0
    # Webhooks to apps: sent on threads of their own (this many endpoints at once), never on the LMS's; 0: not
    # from this process (a `gateway worker --webhooks-only` process sends them).
    webhook_threads: int = 4
    webhook_batch_size: int = 20
    # One webhook request ends within this many seconds (never more than a third of the lease).
    webhook_timeout_seconds: float = 15.0
    # Backoff between attempts, and how long an event is retried before it is given up on and its endpoint
    # marked failing (at least a day).
    webhook_backoff_base_seconds: float = 5.0
    webhook_backoff_max_seconds: float = 3600.0
    webhook_retry_seconds: float = 86400.0
    # Per endpoint, shared by all workers: requests a second, burst, requests at once.
    webhook_rate: float = 10.0
    webhook_burst: int = 10
    webhook_concurrency: int = 2
    # After a secret rotation the old secret signs too for this long, so receivers can switch over.
    webhook_secret_overlap_seconds: float = 86400.0
    # Webhook messages delivered or given up on are dropped after this long.
    webhook_retention_seconds: float = 30 * 86400.0
    # Loopback and private addresses (and http to them) as webhook URLs: tests and on-site apps only.
    webhook_allow_private_addresses: bool = False
    idempotency_ttl_seconds: float = 86400.0
    # Delivered, failed and superseded deliveries, and the grade revisions only they still point at, are purged by
    # housekeeping this many days after their last change (docs/privacy.md); 0 keeps them forever.
    retention_days: int = 0
    # Per bearer token (or app client id, or client address without either), on every operation of the API
    # document (/v1 and /oauth/tokens; not LTI, the dashboard or the sandbox LMS): a token bucket holding
    # api_rate_limit requests, refilled over api_rate_window_seconds. Shared through Redis when the broker is
    # Redis, else counted by each process. 0 switches the limit off.
    api_rate_limit: int = 6000
    api_rate_window_seconds: float = 60.0
    catalog_cache_seconds: float = 300.0
    token_touch_seconds: float = 60.0
    max_body_bytes: int = 64 * 1024
    # How many reverse proxies in front set X-Forwarded-For: the client address (the sign-in limit's key) is
    # taken that many hops back. 0: the connecting address is the client's.
    trusted_proxies: int = 0
    # A staff dashboard session ends this long after sign-in, however busy, and after this long unused.
    staff_session_seconds: int = 8 * 3600
    staff_idle_seconds: int = 3600
    # Where `gateway run`/`gateway demo` keep the demo token and the demo app's client secret (mode 0600), so a
    # restart keeps them instead of issuing new ones; empty: new ones each run (the database keeps only hashes).
    demo_token_file: str = ""
    # Logs: the lowest level written, and json, text, or auto (text when stderr is a terminal, else JSON lines).
    log_level: str = "info"
    log_format: str = "auto"
    # GET /metrics: with a token, only requests with `Authorization: Bearer <token>`; without, only requests from
    # this host (loopback, not forwarded by a proxy).
    metrics_token: str = ""
    # Alerts to district staff (docs/alerts.md): the SMTP server they are mailed through (no host: no e-mail),
    # the From address, and how often a worker looks for connections in trouble. The password is never logged.
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_username: str = ""
    smtp_password: str = field(default="", repr=False)
    smtp_starttls: bool = True
    smtp_timeout_seconds: float = 10.0
    alert_from: str = "passback@localhost"
    alert_check_seconds: float = 60.0
    extra: dict[str, Any] = field(default_factory=dict)

    def request_deadline(self) -> float:
        """The total time one LMS request may take: the configured deadline, never more than a third of the
        lease (the worker re-checks its lease before a request once a third of it has passed)."""
        return min(self.http_request_deadline, self.lease_seconds / 3)

    def webhook_deadline(self) -> float:
        """The total time one webhook request may take: inside the lease, as an LMS request."""
        return max(0.1, min(self.webhook_timeout_seconds, self.lease_seconds / 3))

    def stop_grace(self) -> float:
        """How long a stopping worker waits for its LMS requests in flight: the configured grace, never longer
        than a request may take (by then every request has ended anyway)."""
        return max(0.0, min(self.stop_grace_seconds, self.request_deadline()))

    def validate(self, deadline_given: bool = True) -> None:
        """Refuse settings that break a rule, naming the variable and the rule (InvalidSetting, one line)."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", "float") and not isinstance(value, bool):
                if not math.isfinite(value):
                    raise InvalidSetting(f"{env_name(f.name)} must be a finite number")
                if f.name in _POSITIVE and value <= 0:
                    raise InvalidSetting(f"{env_name(f.name)} must be a number > 0 (it is {value:g})")
                if value < 0:
                    raise InvalidSetting(f"{env_name(f.name)} must be a number >= 0 (it is {value:g})")
            if f.name in _CHOICES and str(value).lower() not in _CHOICES[f.name]:
                raise InvalidSetting(f"{env_name(f.name)}={value!r} must be one of: {', '.join(_CHOICES[f.name])}")
        if self.http_request_deadline <= 0:
            raise InvalidSetting("GATEWAY_HTTP_REQUEST_DEADLINE must be a number of seconds > 0")
        if deadline_given and self.http_request_deadline > self.lease_seconds / 3:
            raise InvalidSetting(
                f"GATEWAY_HTTP_REQUEST_DEADLINE ({self.http_request_deadline:g} s) must be at most a third of "
                f"GATEWAY_LEASE_SECONDS ({self.lease_seconds:g} s), so an LMS request always ends inside its lease"
            )
        if self.stop_grace_seconds < 0:
            raise InvalidSetting("GATEWAY_STOP_GRACE_SECONDS must be a number of seconds >= 0")
        if self.worker_threads < 1:
            raise InvalidSetting("GATEWAY_WORKER_THREADS must be at least 1")
        if self.api_rate_limit < 0:
            raise InvalidSetting("GATEWAY_API_RATE_LIMIT must be a number of requests >= 0 (0: no limit)")
        if self.api_rate_window_seconds <= 0:
            raise InvalidSetting("GATEWAY_API_RATE_WINDOW_SECONDS must be a number of seconds > 0")
        if self.webhook_threads < 0:
            raise InvalidSetting("GATEWAY_WEBHOOK_THREADS must be 0 (no webhooks from this process) or more")
        if self.webhook_retry_seconds < 86400:
            raise InvalidSetting("GATEWAY_WEBHOOK_RETRY_SECONDS must be at least 86400: an event is retried for a day")

    def beat_schedule_path(self) -> str:
        """Where celery beat keeps its schedule state (beside the instance's other files)."""
        INSTANCE_DIR.mkdir(parents=True, exist_ok=True)
        return str(INSTANCE_DIR / "celerybeat-schedule")

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        report_unknown_env_vars()
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "extra":
                continue
            name = env_name(f.name)
            raw = os.environ.get(name)
            if raw is None:
                continue
            if f.type == "bool":
                values[f.name] = _env_bool(name, False)
            elif f.type == "int":
                try:
                    values[f.name] = int(raw.strip())
                except ValueError:
                    raise InvalidSetting(f"{name}={raw!r} must be a whole number") from None
            elif f.type == "float":
                try:
                    values[f.name] = float(raw.strip())
                except ValueError:
                    raise InvalidSetting(f"{name}={raw!r} must be a number") from None
            else:
                values[f.name] = raw
        values.update(overrides)
        settings = cls(**values)
        # A deadline left at its default follows a short lease down (request_deadline()); one set explicitly
        # must respect the lease.
        settings.validate(deadline_given="http_request_deadline" in values)
        settings.fill_development_defaults()
        return settings

    def embedded_default(self) -> bool:
        """One process on one host: a SQLite database and no broker (what `make run` starts)."""
        return self.database_url.startswith("sqlite") and not self.broker_url

    def require_encryption_keys(self) -> None:
        """Outside the embedded default, keys must be configured: a key generated on one host would leave the
        other hosts (and any restored copy of the database) unable to read the secrets it encrypted."""
        if not self.encryption_keys.strip():
            generated = INSTANCE_DIR / "encryption_key"
            # The key an earlier embedded run generated encrypted the secrets already stored: point to it, so the
            # operator does not make a new key that cannot read them.
            earlier = (
                f"; the key generated earlier is in {generated}: set GATEWAY_ENCRYPTION_KEYS to its contents"
                if generated.is_file()
                else ""
            )
            raise ConfigurationError(
                "GATEWAY_ENCRYPTION_KEYS is not set: with a database other than SQLite or with a broker, Passback "
                "does not generate one; set the same Fernet key(s) on every host (see README, Encryption keys)"
                + earlier
            )

    def fill_development_defaults(self) -> None:
        """Local defaults: a SQLite file and generated keys under ./instance, never shared between installs."""
        if not self.database_url:
            INSTANCE_DIR.mkdir(parents=True, exist_ok=True)
            self.database_url = f"sqlite:///{INSTANCE_DIR / 'passback.db'}"
        if not self.secret_key:
            self.secret_key = _read_or_create_key_file(INSTANCE_DIR / "secret_key", lambda: secrets.token_urlsafe(48))
        if not self.encryption_keys and self.embedded_default():
            from cryptography.fernet import Fernet

            self.encryption_keys = _read_or_create_key_file(
                INSTANCE_DIR / "encryption_key", lambda: Fernet.generate_key().decode()
            )
