"""The adapter boundary (`LmsAdapter`): one LMS per module, no Flask, no database, no sleeping, no retrying.

`deliver` returns a DeliveryReceipt or raises RetryableDeliveryError / PermanentDeliveryError; the worker owns
time, retries and persistence.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self

from marshmallow import Schema

from adapters import causes
from adapters.answers import DEFAULT_ANSWERS, AnswerTable

if TYPE_CHECKING:
    from adapters.http import HttpClient
    from adapters.url_policy import HostResolver


@dataclass(frozen=True)
class NormalizedGrade:
    """A grade as every adapter sees it: the fraction and the score pair, plus what the app added."""

    grade_id: str
    revision: int
    user_id: str
    assignment_id: str
    assignment_name: str
    fraction: float
    score_given: float
    score_maximum: float
    timestamp: datetime
    activity_progress: str = "Completed"
    grading_progress: str = "FullyGraded"
    comment: str | None = None
    context: Mapping[str, Any] | None = None
    # With a gradingProgress the LMS does not count: keep the score it holds (True) or clear it (False).
    preserve_score: bool = True


@dataclass(frozen=True)
class Destination:
    """Where the grade goes: the placement (course, section, adapter data) and the user as that LMS names them."""

    placement_id: str
    course_id: str
    section_id: str | None
    data: Mapping[str, Any]
    lms_user_id: str
    user_data: Mapping[str, Any] = field(default_factory=dict)
    # The app's assignmentID placed here (for LMSs that key their gradebook on it, like the sandbox).
    assignment_id: str = ""
    # Whether `lms_user_id` is the LMS's own id for the student (an LMS identity is linked) rather than
    # Passback's user id as a fallback; and the keys an adapter may look the student up by instead.
    lms_user_known: bool = True
    user_email: str | None = None
    user_sis_id: str | None = None
    # The details of the last receipt for this grade at this placement (what was sent, what the gradebook
    # held), so an adapter can order its timestamps after it; empty when nothing was delivered there yet.
    last_receipt: Mapping[str, Any] = field(default_factory=dict)
    # The LMS links of this course that have their own placement in Passback (a placement without a link must
    # not take their gradebook columns).
    placed_links: frozenset[str] = frozenset()


@dataclass(frozen=True)
class DeliveryReceipt:
    """What the LMS answered to a successful delivery, kept on the delivery row.

    `destination_update` holds what the adapter learned about the placement (e.g. the line item it found
    or created); the worker stores it on the placement so the next delivery need not look again.
    """

    lms_status: int | None
    summary: str
    details: Mapping[str, Any] = field(default_factory=dict)
    destination_update: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class HealthReport:
    ok: bool
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)


class DeliveryError(Exception):
    """Why a delivery did not go out: the message (the LMS's own words where it gave any) and `cause`, a code of
    the catalogue in adapters/causes.py that says in plain language what went wrong and what to do. Every raise
    names its cause (a required keyword, so mypy finds one that does not)."""

    def __init__(self, message: str, lms_status: int | None = None, lms_body: str | None = None, *, cause: str) -> None:
        super().__init__(message)
        self.message = message
        self.lms_status = lms_status
        self.lms_body = lms_body
        self.cause = cause


class RetryableDeliveryError(DeliveryError):
    """The LMS could not take the grade now (timeout, 5xx, 429 …); try again later."""

    def __init__(
        self,
        message: str,
        retry_after: float | None = None,
        lms_status: int | None = None,
        lms_body: str | None = None,
        *,
        cause: str,
    ) -> None:
        super().__init__(message, lms_status, lms_body, cause=cause)
        self.retry_after = retry_after


class AwaitingConfiguration(RetryableDeliveryError):
    """The connection's own settings do not allow this delivery yet (e.g. an LMS host not in `allowed_hosts`):
    nothing was sent, and the grade waits, its attempts not counted, until a person changes the settings."""

    # How often a waiting grade looks again (a settings change makes it due at once).
    wait_seconds: ClassVar[float] = 3600.0
    default_cause: ClassVar[str] = causes.NEEDS_CONFIGURATION

    def __init__(self, message: str, *, cause: str | None = None) -> None:
        super().__init__(message, cause=cause or self.default_cause)


class SecretUnreadableError(AwaitingConfiguration):
    """A secret Passback holds cannot be decrypted with the configured keys: the grade waits for a person to add
    the key, and the wait is not an attempt (it must not run out the delivery's attempts)."""

    # A cheap check (no LMS request), and adding a key wakes nothing: look more often.
    wait_seconds: ClassVar[float] = 300.0
    default_cause: ClassVar[str] = causes.SECRET_UNREADABLE


class PermanentDeliveryError(DeliveryError):
    """The LMS refused the grade for a reason a retry cannot fix; a person must act."""


class AccessTokenCache(Protocol):
    """Access tokens shared by every worker (the worker supplies one backed by the database)."""

    def get(self, key: str) -> str | None: ...

    def put(self, key: str, token: str, expires_in: float) -> None: ...

    def drop(self, key: str) -> None: ...


class MemoryTokenCache:
    """A per-process AccessTokenCache, for tools and tests that have no database."""

    def __init__(self) -> None:
        self._tokens: dict[str, tuple[str, float]] = {}

    def get(self, key: str) -> str | None:
        found = self._tokens.get(key)
        return found[0] if found and found[1] > time.monotonic() else None

    def put(self, key: str, token: str, expires_in: float) -> None:
        self._tokens[key] = (token, time.monotonic() + expires_in)

    def drop(self, key: str) -> None:
        self._tokens.pop(key, None)


class LookupCache:
    """Short-lived answers to LMS lookups (a section's enrollment ids, an assignment's maximum points), shared
    by the adapters of one worker process. Thread-safe; entries expire so an LMS-side change is seen."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._entries: dict[str, tuple[Any, float]] = {}
        self._lock = threading.Lock()
        self.max_entries = max_entries

    def get(self, key: str) -> Any | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            if found[1] <= time.monotonic():
                del self._entries[key]
                return None
            return found[0]

    def put(self, key: str, value: Any, ttl: float) -> None:
        with self._lock:
            if len(self._entries) >= self.max_entries:
                # Crude but bounded: forget everything rather than grow without limit.
                self._entries.clear()
            self._entries[key] = (value, time.monotonic() + ttl)

    def drop(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)


class KeyedLocks:
    """One lock per key, made on first use: threads of one process that need the same thing (an access token
    from one platform) wait for one of them to fetch it."""

    def __init__(self) -> None:
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def __call__(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())


def _host_resolver() -> HostResolver:
    from adapters.url_policy import HostResolver  # url_policy imports this module

    return HostResolver()


@dataclass(frozen=True)
class AdapterContext:
    """What the gateway lends an adapter besides its settings: Passback's signing key, the token cache, and the
    state adapters of one process share (LMS lookups, per-key locks, resolved host names). The gateway's adapter
    factory holds one of each and lends them to every adapter it builds; the defaults serve tools and tests."""

    signing_key: Any | None = None
    token_cache: AccessTokenCache = field(default_factory=MemoryTokenCache)
    lookups: LookupCache = field(default_factory=LookupCache)
    # Why there is no signing key although Passback has one (it cannot be decrypted here): said, not guessed.
    signing_key_problem: str | None = None
    locks: KeyedLocks = field(default_factory=KeyedLocks)
    resolver: HostResolver = field(default_factory=_host_resolver)


class LmsAdapter(ABC):
    """The one adapter boundary: every capability the gateway may use is declared here with its default, and an
    adapter overrides what its LMS can do. Callers read these attributes; nothing outside `adapters/` probes an
    adapter with `hasattr`/`getattr` (tests/unit/test_adapter_capabilities.py checks it). The table of
    capabilities, their defaults and which adapters set them is in docs/adapters.md.

    Unsupported operations (`read_result`, `delete_result`, `memberships`) raise NotImplementedError rather than
    answer None, which would read as "the LMS holds no grade" or "the course has no members"; callers check
    `supports_read` / `supports_delete` / `supports_roster` first.
    """

    # The registry name (`adapters.REGISTRY` key, the connection's `adapter` column).
    kind: ClassVar[str]
    settings_schema: ClassVar[type[Schema]]
    # Settings keys that are secrets: never shown back in full by the CLI or dashboard.
    secret_settings: ClassVar[frozenset[str]] = frozenset()

    # Routing: a grade waits for a launch or roster sync when the LMS addresses students by its own id (LTI 1.3's
    # `sub`), or by data learned only when this student launches this link (LTI 1.1's sourcedid).
    needs_lms_identity: ClassVar[bool] = False
    needs_launch_data: ClassVar[bool] = False

    # Batching: how many grades one request may carry (an instance may set it from its settings).
    max_batch: int = 1

    # Outbound requests go through the connection's URL policy (adapters/url_policy.py), with these settings
    # assumed when the connection leaves them out; False only for an adapter whose settings have no policy.
    url_policed: ClassVar[bool] = True
    policy_defaults: ClassVar[Mapping[str, Any]] = {}

    supports_read: ClassVar[bool] = False
    supports_delete: ClassVar[bool] = False
    supports_roster: ClassVar[bool] = False

    # What each LMS answer means (retry, refresh the token then retry once, fail), read by
    # `adapters.answers.classify`; an adapter extends the default with its LMS's own answers (docs/adapters.md).
    answer_table: ClassVar[AnswerTable] = DEFAULT_ANSWERS

    def __init__(self, settings: Mapping[str, Any], http: HttpClient, context: AdapterContext) -> None:
        self.settings = settings
        self.http = http
        self.context = context

    @classmethod
    def from_settings(
        cls, settings: Mapping[str, Any], http: HttpClient, context: AdapterContext | None = None
    ) -> Self:
        """The adapter for a connection's validated settings, its HTTP client bound to the connection's URL policy
        (the one place that binding happens)."""
        context = context or AdapterContext()
        if cls.url_policed:
            from adapters.url_policy import policed  # url_policy imports this module

            http = policed(http, {**cls.policy_defaults, **settings}, context.resolver)
        return cls._from_validated(settings, http, context)

    @classmethod
    def _from_validated(cls, settings: Mapping[str, Any], http: HttpClient, context: AdapterContext) -> Self:
        """Build the adapter from what `from_settings` prepared; override when the constructor differs."""
        return cls(settings, http, context)

    @staticmethod
    def registration_key(settings: Mapping[str, Any]) -> str | None:
        """How a launch finds this connection (unique across connections); None: launches do not name it."""
        return None

    @classmethod
    def placement_destination(
        cls, course_id: str | None, section_id: str | None, destination: dict[str, Any]
    ) -> tuple[str | None, str | None, dict[str, Any]]:
        """Check and complete what a placement names (course, section, destination data); raise ValueError with
        the reason when it is incomplete. By default the placement is taken as given."""
        return course_id, section_id, destination

    @staticmethod
    def needs_discovery(destination_data: Mapping[str, Any]) -> bool:
        """Whether the destination must be looked up first under the placement's lease (one worker at a time)."""
        return False

    @classmethod
    def batch_key(cls, destination: Destination) -> str | None:
        """Deliveries with the same key (and connection) go to `deliver_batch` together; None: send alone."""
        return None

    @abstractmethod
    def deliver(self, grade: NormalizedGrade, destination: Destination) -> DeliveryReceipt: ...

    def deliver_batch(
        self, items: Sequence[tuple[NormalizedGrade, Destination]]
    ) -> list[DeliveryReceipt | DeliveryError]:
        """One outcome per item, in order: a receipt, or the error for that item alone. By default each item is
        delivered on its own; an adapter whose LMS takes many grades in one request overrides this."""
        outcomes: list[DeliveryReceipt | DeliveryError] = []
        for grade, destination in items:
            try:
                outcomes.append(self.deliver(grade, destination))
            except DeliveryError as exc:
                outcomes.append(exc)
        return outcomes

    def read_result(self, destination: Destination) -> float | None:
        """What the LMS gradebook holds now (None: no grade); only when `supports_read`."""
        raise NotImplementedError(f"the {self.kind} adapter cannot read grades back")

    def delete_result(self, destination: Destination) -> DeliveryReceipt:
        """Clear the student's grade in the LMS; only when `supports_delete`."""
        raise NotImplementedError(f"the {self.kind} adapter cannot delete grades")

    @classmethod
    def roster_source(cls, destination: Mapping[str, Any], section_id: str | None) -> str | None:
        """What `memberships` reads for a placement (an NRPS URL, a section id); None: nothing to read."""
        return None

    def memberships(self, source: str) -> list[dict[str, Any]]:
        """The members at `roster_source`, in NRPS's shape; only when `supports_roster`."""
        raise NotImplementedError(f"the {self.kind} adapter has no roster service")

    @abstractmethod
    def probe(self) -> HealthReport:
        """Check the connection's credentials against the LMS."""

    # --- what the dashboard shows of a connection ----------------------------------------------------------

    # The connection keeps LMS access tokens in the shared token cache: its dashboard row says which, until when.
    caches_access_tokens: ClassVar[bool] = False

    @classmethod
    def connection_display(
        cls, settings: Mapping[str, Any], *, public_url: str, connection_id: str
    ) -> ConnectionDisplay:
        """What the dashboard shows of a connection with these settings besides its health, never a secret:
        what an admin enters on the LMS side, and what Passback was told. By default nothing LMS-specific."""
        return ConnectionDisplay()

    @classmethod
    def token_cache_keys(cls, settings: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
        """Every key under which the token cache may hold the access tokens of a connection with these settings,
        with the scopes of the token kept under it; only when `caches_access_tokens`."""
        raise NotImplementedError(f"the {cls.kind} adapter keeps no access tokens")


@dataclass(frozen=True)
class ConfigValue:
    """A value an admin enters on the LMS side; `copy` is False for what is not shown (secrets)."""

    label: str
    value: str
    copy: bool = True


@dataclass(frozen=True)
class ConnectionDisplay:
    """What the dashboard shows of one connection, as its adapter describes it (`connection_display`)."""

    # What an admin enters on the LMS side, without secrets.
    configuration: tuple[ConfigValue, ...] = ()
    # What Passback was told about the platform (issuer, client id …): to compare with the LMS's own page.
    registration: tuple[tuple[str, str], ...] = ()
    # Placements (catalog assignment → section and LMS assignment) are mapped on the dashboard.
    maps_assignments: bool = False
