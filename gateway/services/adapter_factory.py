"""The adapter factory: an LMS connection's adapter class and settings in, a configured adapter out, its HTTP
client bound to the connection's URL policy and throttled to the connection's limits, with what it borrows from
Passback (signing key, token cache, lookups). The worker, read-back, roster sync, the connection probe and the
dashboard all build adapters here, and the process state adapters share lives in the objects it holds."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from adapters import REGISTRY, AdapterContext, LmsAdapter, causes
from adapters.base import KeyedLocks, LookupCache, PermanentDeliveryError
from adapters.http import BucketViews, HttpClient, Throttle, ThrottledHttpClient
from adapters.url_policy import HostResolver
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config import Settings
from gateway.crypto import SecretBox, SecretUndecryptable
from gateway.db import Database
from gateway.metrics import observe_lms_request
from gateway.services.keys import current_signing_key
from gateway.services.token_cache import DatabaseTokenCache
from gateway.throttle import Limiter, make_limiter

# The signing key is read again this often, so a `gateway keys rotate` in another process is picked up.
CONTEXT_REFRESH_SECONDS = 60.0


class AdapterFactory:
    """Builds every adapter of one process. One factory per process (or per worker, which keeps its own LMS
    lookups); what adapters share between requests (the token cache's memory, LMS lookups, per-key locks,
    resolved host names, what is learnt of each LMS's rate-limit bucket) is held here, not in module globals."""

    def __init__(
        self,
        db: Database,
        box: SecretBox,
        settings: Settings,
        *,
        http: HttpClient | None = None,
        limiter: Limiter | None = None,
        registry: Mapping[str, type[LmsAdapter]] = REGISTRY,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.db = db
        self.box = box
        self.settings = settings
        self.http = http or HttpClient(
            settings.http_connect_timeout, settings.http_read_timeout, settings.request_deadline()
        )
        # Per-connection request rates and pauses: in this process, or in Redis when a broker is configured.
        self.limiter = limiter or make_limiter(settings.broker_url)
        self.registry = registry
        self.clock = clock
        # What the adapters it builds share from one request to the next, held here rather than in module globals.
        self.token_cache = DatabaseTokenCache(db, box)
        self.lookups = LookupCache()
        self.locks = KeyedLocks()
        self.resolver = HostResolver()
        self.buckets = BucketViews()
        self._context: AdapterContext | None = None
        self._context_loaded = 0.0

    def adapter_class(self, kind: str) -> type[LmsAdapter] | None:
        """The installed adapter of this kind (None: not installed here)."""
        return self.registry.get(kind)

    def context(self) -> AdapterContext:
        """Passback's current signing key (re-read at most once a minute, so a rotation is picked up), the
        database-backed token cache and this factory's lookups."""
        now = self.clock.monotonic()
        if self._context is None or now - self._context_loaded > CONTEXT_REFRESH_SECONDS:
            problem = None
            with self.db.transaction() as session:
                try:
                    key = current_signing_key(session, self.box)
                except SecretUndecryptable as exc:
                    # Only LTI 1.3 signs; the other adapters still deliver, and LTI 1.3 deliveries wait with the reason.
                    key, problem = None, exc.message
            self._context = AdapterContext(
                signing_key=key,
                token_cache=self.token_cache,
                lookups=self.lookups,
                signing_key_problem=problem,
                locks=self.locks,
                resolver=self.resolver,
            )
            self._context_loaded = now
        return self._context

    def http_for(
        self,
        connection_id: str,
        rate: float | None = None,
        before_request: Callable[[], None] | None = None,
        *,
        adapter: str = "",
    ) -> ThrottledHttpClient:
        """The shared HTTP client, throttled for one LMS connection (its own rate, or the default); each request's
        time and answer are counted under `adapter` (passback_lms_request_seconds, passback_lms_throttled)."""
        settings = self.settings
        rate = rate or settings.connection_rate
        throttle = Throttle(
            key=connection_id,
            rate=rate,
            # A connection slowed below the default burst must not be allowed the default burst either.
            burst=max(1, min(settings.connection_burst, int(rate))),
            default_pause=settings.connection_pause_seconds,
            headroom=settings.connection_concurrency,
        )

        def observe(seconds: float, status: int | None, refused: bool) -> None:
            observe_lms_request(adapter, seconds, status, refused)

        return ThrottledHttpClient(
            self.http, self.limiter, throttle, before_request=before_request, buckets=self.buckets, observe=observe
        )

    def build(
        self,
        kind: str,
        settings: Mapping[str, Any],
        *,
        connection_id: str,
        rate: float | None = None,
        before_request: Callable[[], None] | None = None,
    ) -> LmsAdapter:
        """The connection's adapter, ready to call its LMS; an adapter not installed here is a permanent
        failure (a person must install it or move the connection)."""
        adapter_cls = self.adapter_class(kind)
        if adapter_cls is None:
            raise PermanentDeliveryError(f"no adapter named {kind!r} is installed", cause=causes.NEEDS_CONFIGURATION)
        http = self.http_for(connection_id, rate, before_request, adapter=kind)
        return adapter_cls.from_settings(settings, http, self.context())
