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
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from marshmallow import Schema, ValidationError, fields, pre_load

from adapters.base import PermanentDeliveryError, RetryableDeliveryError
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


class UrlRefused(PermanentDeliveryError):
    """An LMS-supplied URL outside the connection's policy: nothing was sent to it."""


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


_RESOLVED: dict[tuple[str, int], tuple[tuple[str, ...], float]] = {}
_RESOLVED_LOCK = threading.Lock()


def resolve(host: str, port: int) -> tuple[str, ...]:
    """Every address the host resolves to (an IP literal is itself), cached briefly."""
    try:
        return (str(ipaddress.ip_address(host.strip("[]"))),)
    except ValueError:
        pass
    now = time.monotonic()
    with _RESOLVED_LOCK:
        hit = _RESOLVED.get((host, port))
        if hit and hit[1] > now:
            return hit[0]
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise RetryableDeliveryError(f"could not resolve {host}: {exc}") from exc
    addresses = tuple(sorted({str(info[4][0]) for info in infos}))
    with _RESOLVED_LOCK:
        if len(_RESOLVED) > 10_000:
            _RESOLVED.clear()
        _RESOLVED[(host, port)] = (addresses, now + RESOLVE_CACHE_SECONDS)
    return addresses


@dataclass(frozen=True)
class UrlPolicy:
    """The hosts one connection may be called on, and whether private addresses (and http to them) are allowed."""

    registered: frozenset[tuple[str, int]]
    allowed_hosts: tuple[str, ...] = ()
    allow_private: bool = False
    frame_hosts: tuple[str, ...] = ()

    @classmethod
    def for_connection(cls, settings: Mapping[str, Any]) -> UrlPolicy:
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
        shown = url if len(url) <= MAX_SHOWN_URL else url[:MAX_SHOWN_URL] + "…"
        scheme = urlsplit(url).scheme.lower() if isinstance(url, str) else ""
        origin = _origin(url) if scheme in DEFAULT_PORTS else None
        if origin is None:
            return f"the LMS gave a URL that is not http(s): {shown}"
        if not self.host_allowed(*origin):
            return (
                f"the LMS gave a URL outside its registered hosts: {shown} "
                "(add its host to the connection's allowed_hosts if this LMS serves services from it)"
            )
        literal = _literal(origin[0])
        if literal is None and not resolve_dns:
            return None if scheme == "https" or self.allow_private else f"the LMS gave a URL without https: {shown}"
        addresses = (literal,) if literal is not None else resolve(*origin)
        private = [a for a in addresses if not is_public(a)]
        if private and not self.allow_private:
            return (
                f"the LMS gave a URL on a private, loopback or link-local address ({private[0]}): {shown} "
                "(set allow_private_addresses on the connection if this LMS is on your own network)"
            )
        if scheme != "https" and len(private) != len(addresses):
            return f"the LMS gave a URL without https: {shown}"
        return None

    def check(self, url: str) -> None:
        reason = self.refusal(url)
        if reason is not None:
            raise UrlRefused(reason)

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


def policed(http: HttpClient, settings: Mapping[str, Any]) -> HttpClient:
    """`http` bound to the connection's UrlPolicy (every LMS adapter's from_settings calls this)."""
    if http is None or isinstance(http, PolicedHttpClient):
        return http
    return PolicedHttpClient(http, UrlPolicy.for_connection(settings))


REFUSED_KEY = "refused_urls"


def drop_refused_urls(settings: Mapping[str, Any], data: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    """Launch time: remove from `data` each URL (under `keys`) the connection's policy refuses, noting why
    under `refused_urls` so a delivery can say so. Host names are not resolved here (the send checks them)."""
    policy = UrlPolicy.for_connection(settings)
    reasons: dict[str, str] = {}
    for key in keys:
        value = data.get(key)
        if isinstance(value, str) and (reason := policy.refusal(value, resolve_dns=False)) is not None:
            reasons[key] = reason
            del data[key]
    if reasons:
        data[REFUSED_KEY] = reasons
    return list(reasons.values())


def raise_if_refused_at_launch(data: Mapping[str, Any]) -> None:
    """A delivery with no usable URL says why the launch's URL was dropped, when it was."""
    reasons = data.get(REFUSED_KEY)
    if isinstance(reasons, Mapping) and reasons:
        raise UrlRefused(str(next(iter(reasons.values()))))
