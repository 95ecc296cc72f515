"""Which URLs Passback may call for one LMS connection: its registered hosts and allowlist, public addresses
over https, unless the connection explicitly allows private addresses (design: docs/outbound-urls-and-headers.md).

Every adapter's `from_settings` wraps its HttpClient in a PolicedHttpClient, so every request an adapter
sends (launch URLs, `Link: rel=next` pages, redirects it follows, Schoology's `links.next`) is checked here.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
from marshmallow import Schema, ValidationError, fields, pre_load

from adapters import causes
from adapters.base import AwaitingConfiguration, PermanentDeliveryError, RetryableDeliveryError
from adapters.http import HttpClient

DEFAULT_PORTS = {"https": 443, "http": 80}
# Settings (admin-entered) whose hosts are the connection's registered hosts.
REGISTERED_URL_SETTINGS = ("issuer", "auth_url", "token_url", "jwks_url", "base_url")
# Hosts a platform preset serves its services from besides its registered URLs (hosted Canvas answers AGS
# and NRPS on each school's own domain, not on canvas.instructure.com).
PRESET_ALLOWED_HOSTS: dict[str, tuple[str, ...]] = {"canvas": ("*.instructure.com",)}
# Hosts whose pages frame the tool (the picker) besides those: Schoology shows tools inside app.schoology.com or
# a district's *.schoology.com, while its LTI service lives on lti-service.svc.schoology.com. Framing only, no calls.
PRESET_FRAME_HOSTS: dict[str, tuple[str, ...]] = {"schoology": ("*.schoology.com",)}
RESOLVE_CACHE_SECONDS = 30.0
MAX_SHOWN_URL = 200


# Why a URL is refused. HOST and PRIVATE can be made acceptable by the connection's settings (allowed_hosts,
# allow_private_addresses), so a grade waits for them; SCHEME and PLAIN_HTTP (http to a public address) never.
SCHEME, HOST, PRIVATE, PLAIN_HTTP, UNRESOLVED_HTTP = "scheme", "host", "private", "plain_http", "unresolved_http"
CONFIGURABLE = frozenset({HOST, PRIVATE, UNRESOLVED_HTTP})
SET_HINT = "gateway lms set --district D --lms L --setting"


class UrlRefused(PermanentDeliveryError):
    """An LMS-supplied URL no connection setting can allow (not http(s), or http to a public address): nothing
    was sent to it."""

    def __init__(self, message: str, *, cause: str = causes.NEEDS_CONFIGURATION) -> None:
        super().__init__(message, cause=cause)


class UrlAwaitingApproval(AwaitingConfiguration):
    """An LMS-supplied URL the connection's settings do not allow yet: nothing was sent; the grade waits until an
    operator allows its host (or private addresses), then goes out by itself."""


def host_entries(values: list[str]) -> None:
    """Each entry a host name, `*.domain` or `host:port`: never a URL, a path or a bare `*`."""
    for value in values:
        name, colon, port = value.rpartition(":") if ":" in value else (value, "", "")
        name = name.removeprefix("*.")
        if not name or "/" in name or "*" in name or any(c.isspace() for c in value) or (colon and not port.isdigit()):
            raise ValidationError(f"{value!r} is not a host name (e.g. lms.example.edu, *.example.edu, host:8443).")


class UrlPolicySettings(Schema):
    """The settings every LMS connection has for the URLs the LMS hands Passback."""

    allowed_hosts = fields.List(
        fields.String(),
        validate=host_entries,
        load_default=list,
        metadata={"description": "Extra hosts the LMS serves its services from: host, host:port or *.domain."},
    )
    allow_private_addresses = fields.Boolean(
        load_default=False,
        metadata={
            "description": "Allow loopback/private/link-local addresses (and http to them): on-site LMSs, tests."
        },
    )

    @pre_load
    def _split_hosts(self, data: Any, **_: Any) -> Any:
        # `gateway lms add --setting allowed_hosts=a,b` arrives as one string.
        if isinstance(data, dict) and isinstance(data.get("allowed_hosts"), str):
            data = {**data, "allowed_hosts": [h.strip().lower() for h in data["allowed_hosts"].split(",") if h.strip()]}
        return data


def _origin(url: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(url)
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return None
    if not parts.hostname or port is None:
        return None
    return parts.hostname.lower().rstrip("."), port


def is_public(address: str) -> bool:
    """A globally routable unicast address (not loopback, private, link-local, multicast, reserved …)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_loopback or ip.is_link_local)


class HostResolver:
    """Host names to addresses, each answer kept briefly: one per process, held by whoever builds the adapters
    (the gateway's adapter factory lends it through the AdapterContext), so sends to one LMS do not each ask DNS."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._answers: dict[tuple[str, int], tuple[tuple[str, ...], float]] = {}
        self._lock = threading.Lock()
        self.max_entries = max_entries

    def resolve(self, host: str, port: int) -> tuple[str, ...]:
        """Every address the host resolves to (an IP literal is itself), cached briefly."""
        try:
            return (str(ipaddress.ip_address(host.strip("[]"))),)
        except ValueError:
            pass
        now = time.monotonic()
        with self._lock:
            hit = self._answers.get((host, port))
            if hit and hit[1] > now:
                return hit[0]
        try:
            infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError) as exc:
            raise RetryableDeliveryError(
                f"could not resolve {host}: its name does not resolve ({exc.strerror or type(exc).__name__})"
                if isinstance(exc, OSError)
                else f"could not resolve {host}: the name is not valid",
                cause=causes.LMS_UNREACHABLE,
            ) from exc
        addresses = tuple(sorted({str(info[4][0]) for info in infos}))
        with self._lock:
            if len(self._answers) >= self.max_entries:
                # Crude but bounded: forget everything rather than grow without limit.
                self._answers.clear()
            self._answers[(host, port)] = (addresses, now + RESOLVE_CACHE_SECONDS)
        return addresses


@dataclass(frozen=True)
class UrlPolicy:
    """The hosts one connection may be called on, and whether private addresses (and http to them) are allowed."""

    registered: frozenset[tuple[str, int]]
    allowed_hosts: tuple[str, ...] = ()
    allow_private: bool = False
    frame_hosts: tuple[str, ...] = ()
    # Where host names are looked up; a policy built without one resolves afresh each time.
    resolver: HostResolver = field(default_factory=HostResolver, compare=False, repr=False)

    @classmethod
    def for_connection(cls, settings: Mapping[str, Any], resolver: HostResolver | None = None) -> UrlPolicy:
        """From a connection's settings: the hosts of its registered URLs, its `allowed_hosts` (or its platform
        preset's), and its `allow_private_addresses` switch."""
        registered = {
            origin
            for key in REGISTERED_URL_SETTINGS
            if isinstance(settings.get(key), str) and (origin := _origin(settings[key])) is not None
        }
        allowed = [
            *PRESET_ALLOWED_HOSTS.get(str(settings.get("platform") or ""), ()),
            *(settings.get("allowed_hosts") or []),
        ]
        return cls(
            frozenset(registered),
            tuple(str(h).lower() for h in allowed if isinstance(h, str)),
            settings.get("allow_private_addresses") is True,
            PRESET_FRAME_HOSTS.get(str(settings.get("platform") or ""), ()),
            resolver or HostResolver(),
        )

    def host_allowed(self, host: str, port: int) -> bool:
        if (host, port) in self.registered:
            return True
        for entry in self.allowed_hosts:
            name, _, entry_port = entry.rpartition(":") if ":" in entry else (entry, "", "")
            if entry_port and int(entry_port) != port:
                continue
            if (name.startswith("*.") and host.endswith(name[1:])) or name == host:
                return True
        return False

    def refusal(self, url: str, *, resolve_dns: bool = True) -> str | None:
        """Why this URL may not be called (None when it may). Without `resolve_dns`, host names are not looked up
        (launch time); IP literals are checked either way."""
        found = self.classify(url, resolve_dns=resolve_dns)
        return None if found is None else found[1]

    def classify(self, url: str, *, resolve_dns: bool = True) -> tuple[str, str] | None:
        """(kind, reason) for a URL that may not be called, kind being one of SCHEME, HOST, PRIVATE, PLAIN_HTTP,
        UNRESOLVED_HTTP; None when it may be called."""
        shown = url if len(url) <= MAX_SHOWN_URL else url[:MAX_SHOWN_URL] + "…"
        scheme = urlsplit(url).scheme.lower() if isinstance(url, str) else ""
        origin = _origin(url) if scheme in DEFAULT_PORTS else None
        if origin is None:
            return SCHEME, f"the LMS gave a URL that is not http(s): {shown}"
        if not self.host_allowed(*origin):
            if not self.registered and not self.allowed_hosts:
                return HOST, (
                    f"the LMS gave a URL on {origin[0]}, and this connection has no allowed_hosts yet: {shown} "
                    f"(the grade waits; name the LMS's host with {SET_HINT} allowed_hosts={origin[0]})"
                )
            return HOST, (
                f"the LMS gave a URL outside its registered hosts: {shown} (the grade waits; if this LMS serves "
                f"services from {origin[0]}, add it with {SET_HINT} allowed_hosts=…,{origin[0]})"
            )
        literal = _literal(origin[0])
        if literal is None and not resolve_dns:
            if scheme == "https" or self.allow_private:
                return None
            return UNRESOLVED_HTTP, f"the LMS gave a URL without https: {shown}"
        addresses = (literal,) if literal is not None else self.resolver.resolve(*origin)
        private = [a for a in addresses if not is_public(a)]
        if private and not self.allow_private:
            return PRIVATE, (
                f"the LMS gave a URL on a private, loopback or link-local address ({private[0]}): {shown} "
                f"(the grade waits; if this LMS is on your own network, {SET_HINT} allow_private_addresses=true)"
            )
        if scheme != "https" and len(private) != len(addresses):
            return PLAIN_HTTP, f"the LMS gave a URL without https: {shown}"
        return None

    def check(self, url: str) -> None:
        """Raise unless the URL may be called: UrlAwaitingApproval when the connection's settings could allow it,
        UrlRefused when nothing could."""
        found = self.classify(url)
        if found is not None:
            kind, reason = found
            raise UrlAwaitingApproval(reason) if kind in CONFIGURABLE else UrlRefused(reason)

    def origins(self) -> list[str]:
        """CSP source expressions for these hosts and the preset's framing hosts (frame-ancestors, form-action)."""
        sources = {f"https://{h}" + ("" if p == 443 else f":{p}") for h, p in self.registered}
        sources |= {f"https://{h}" for h in (*self.allowed_hosts, *self.frame_hosts)}
        if self.allow_private:
            sources |= {f"http://{h}" + ("" if p == 80 else f":{p}") for h, p in self.registered}
            sources |= {f"http://{h}" for h in self.allowed_hosts}
        return sorted(sources)


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


class PolicedHttpClient(HttpClient):
    """An HttpClient view that refuses, before anything is sent, a URL outside the connection's UrlPolicy."""

    def __init__(self, http: HttpClient, policy: UrlPolicy) -> None:
        # No super().__init__(): the view shares the wrapped client's sessions, throttle and lease keeper.
        self.http = http
        self.policy = policy
        self.timeout = http.timeout

    @property
    def session(self) -> requests.Session:
        return self.http.session

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        self.policy.check(url)
        return self.http.request(method, url, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # Whatever else the wrapped client offers (a throttle's `throttle`, `waited`) reads through.
        if "http" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["http"], name)


def policed(http: HttpClient, settings: Mapping[str, Any], resolver: HostResolver | None = None) -> HttpClient:
    """`http` bound to the connection's UrlPolicy (every LMS adapter's from_settings calls this)."""
    if http is None or isinstance(http, PolicedHttpClient):
        return http
    return PolicedHttpClient(http, UrlPolicy.for_connection(settings, resolver))


REFUSED_KEY = "refused_urls"


def drop_refused_urls(settings: Mapping[str, Any], data: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    """Launch time: remove from `data` each URL (under `keys`) the connection's policy refuses, noting why under
    `refused_urls` (None when this launch's URLs were all kept, so an old reason is cleared). Host names are not
    resolved here (the send checks them). A URL the settings could still allow is kept while the operator has
    not chosen: its host when the connection names no allowed_hosts yet (an LTI 1.1 connection from before they
    were required), its address or scheme always; every send checks it again, so nothing goes to it until then.
    Returns the reasons of the URLs dropped or kept-but-not-yet-allowed, for the log."""
    policy = UrlPolicy.for_connection(settings)
    undecided = not settings.get("allowed_hosts")
    reasons: dict[str, dict[str, Any]] = {}
    logged: list[str] = []
    for key in keys:
        value = data.get(key)
        if not isinstance(value, str) or (found := policy.classify(value, resolve_dns=False)) is None:
            continue
        kind, reason = found
        logged.append(reason)
        if kind in (PRIVATE, UNRESOLVED_HTTP) or (kind == HOST and undecided):
            continue
        reasons[key] = {"reason": reason, "waits": kind in CONFIGURABLE}
        del data[key]
    data[REFUSED_KEY] = reasons or None
    return logged


def raise_if_refused_at_launch(data: Mapping[str, Any]) -> None:
    """A delivery with no usable URL says why the launch's URL was dropped, when it was. A URL the settings could
    allow waits (once they do, the student's next launch stores it); one nothing could allow fails."""
    reasons = data.get(REFUSED_KEY)
    if not isinstance(reasons, Mapping) or not reasons:
        return
    refused = next(iter(reasons.values()))
    # Reasons stored before refusals were classified are plain strings: waiting never loses the grade.
    reason, waits = (refused["reason"], refused.get("waits", True)) if isinstance(refused, Mapping) else (refused, True)
    if not waits:
        raise UrlRefused(str(reason))
    raise UrlAwaitingApproval(f"{reason}; once it is allowed, the student must open the link again")
