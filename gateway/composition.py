"""The composition root: the objects a Passback process is made of (settings, database, secret box, HTTP client,
limiter, platform keys, the delivery nudger), built once per process and handed to whatever needs them. The web
app (create_app), the delivery worker, the Celery tasks and every CLI command take them from here, by typed
attribute, instead of each wiring its own."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from adapters.base import HealthReport
from adapters.http import HttpClient
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config import Settings
from gateway.crypto import SecretBox
from gateway.db import Database
from gateway.services.adapter_factory import AdapterFactory
from gateway.services.heartbeats import Readiness, check_readiness
from gateway.services.lms import probe_connection
from gateway.services.unit_of_work import UnitOfWork
from gateway.throttle import Limiter, QuotaLimiter, make_limiter

if TYPE_CHECKING:
    from flask import Flask

    from gateway.services.lti13_launch import PlatformKeys
    from gateway.worker import DeliveryWorker, EmbeddedWorker

log = logging.getLogger("passback")
# The one key of Flask's app.extensions that Passback uses: read it through services_of(), never by string.
EXTENSION_KEY = "passback"


class DeliveryNudger:
    """The `Nudger` services are given: new or released outbox rows wake the embedded worker if this process
    runs one, and ask the Celery workers (through the broker) to drain those connections if one is configured,
    so the rows go out now rather than at the next poll or sweep. Neither waits: the broker is published to from
    a thread of its own (gateway.tasks.Dispatcher), so a slow or frozen broker never holds up a request."""

    def __init__(self, dispatch: Callable[[set[str] | None], None] | None = None) -> None:
        self.dispatch = dispatch
        self.embedded: EmbeddedWorker | None = None

    def __call__(self, connection_ids: set[str] | None) -> None:
        if self.embedded is not None:
            self.embedded.nudge()
        if self.dispatch is not None:
            self.dispatch(connection_ids)


@dataclass
class Services:
    """One process's objects, built by build_services."""

    settings: Settings
    database: Database
    box: SecretBox
    http: HttpClient
    nudger: DeliveryNudger
    embedded_worker: EmbeddedWorker | None = None
    # The time workers and /readyz read (tests hand a FrozenClock to both).
    clock: Clock = SYSTEM_CLOCK
    # Web-only objects the app builds on first use (authlib's server, the generated OpenAPI document).
    oauth_server: Any = None
    openapi_document: dict[str, Any] | None = None
    _platform_keys: PlatformKeys | None = field(default=None, repr=False)

    @cached_property
    def limiter(self) -> Limiter:
        """Per-connection request rates and pauses: in this process, or in Redis when a broker is configured."""
        return make_limiter(self.settings.broker_url)

    @cached_property
    def quotas(self) -> QuotaLimiter:
        """API request quotas (gateway/rate_limits.py): shared through Redis when the broker is Redis."""
        return QuotaLimiter(self.settings.broker_url)

    @property
    def platform_keys(self) -> PlatformKeys:
        """LTI platforms' public keys, fetched and cached for the life of the process."""
        if self._platform_keys is None:
            from gateway.services.lti13_launch import PlatformKeys

            self._platform_keys = PlatformKeys(self.http)
        return self._platform_keys

    @platform_keys.setter
    def platform_keys(self, keys: PlatformKeys) -> None:
        self._platform_keys = keys

    def unit_of_work(self, session: Session | None = None, *, within: UnitOfWork | None = None) -> UnitOfWork:
        """A unit of work on `session` (a request's scoped session, borrowed), or on a session of its own;
        `within` makes it part of that unit's transaction."""
        if session is not None:
            return UnitOfWork(session, self.nudger, within=within)
        assert self.database.sessionmaker is not None
        return UnitOfWork(self.database.sessionmaker(), self.nudger, close=True)

    @cached_property
    def adapters(self) -> AdapterFactory:
        """Adapters for the web app's and CLI's LMS calls (probe, read-back, roster sync); workers build their own."""
        return AdapterFactory(self.database, self.box, self.settings, http=self.http, limiter=self.limiter)

    def probe_connection(self, district_id: str, connection_ref: str) -> HealthReport:
        """Whether the connection's LMS answers and accepts its credentials (no grade is sent)."""
        return probe_connection(self.database, self.box, self.adapters, district_id, connection_ref)

    def delivery_worker(self, **options: Any) -> DeliveryWorker:
        """A delivery worker sharing this process's HTTP client and per-connection limits."""
        from gateway.worker import DeliveryWorker

        options.setdefault("http", self.http)
        options.setdefault("limiter", self.limiter)
        options.setdefault("clock", self.clock)
        return DeliveryWorker(self.database, self.box, self.settings, **options)

    def start_embedded_worker(self) -> EmbeddedWorker:
        """Run the delivery worker as a thread of this process; nudges wake it from then on, and it stops
        gracefully when the process exits."""
        from gateway.worker import EmbeddedWorker

        embedded = EmbeddedWorker(self.delivery_worker(role="embedded"))
        embedded.start()
        self.embedded_worker = self.nudger.embedded = embedded
        return embedded

    def readiness(self) -> Readiness:
        """For /readyz: the database answers at the newest schema, some delivery worker recorded a heartbeat
        recently, and the broker (if any) answers."""
        return check_readiness(
            self.database,
            max_heartbeat_age=self.settings.readyz_heartbeat_max_age_seconds,
            now=self.clock.now(),
            broker_url=self.settings.broker_url,
        )


def build_services(settings: Settings, *, database: Database | None = None) -> Services:
    """Everything a process needs from its settings. `database` lets a caller share one engine (the tests do)."""
    settings.require_encryption_keys()  # raises ConfigurationError: never start without a way to read secrets
    if database is None:
        database = Database()
        database.configure(settings.database_url)
    dispatch = None
    if settings.broker_url:
        # Delivery runs on Celery workers: committed outbox rows wake them through the broker.
        from gateway.tasks import Dispatcher

        dispatch = Dispatcher(settings)
    return Services(
        settings=settings,
        database=database,
        box=SecretBox(settings.encryption_keys),
        http=HttpClient(settings.http_connect_timeout, settings.http_read_timeout, settings.request_deadline()),
        nudger=DeliveryNudger(dispatch),
    )


def services_of(app: Flask) -> Services:
    services = app.extensions[EXTENSION_KEY]
    assert isinstance(services, Services)
    return services
