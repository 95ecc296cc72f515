"""Webhook endpoints: an app registers, reads, changes, rotates and removes its endpoints in one district (the
district-app token's district and app, never another's); staff see a district's endpoints and disable one."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from adapters.base import DeliveryError
from adapters.url_policy import (
    DEFAULT_PORTS,
    HOST,
    PLAIN_HTTP,
    PRIVATE,
    SCHEME,
    UNRESOLVED_HTTP,
    HostResolver,
    UrlPolicy,
)
from gateway.crypto import SecretBox
from gateway.models import App, DistrictApp, TokenKind, WebhookEndpoint, WebhookMessage, WebhookSubscription, utcnow
from gateway.services.auth import Principal
from gateway.services.errors import Conflict, Forbidden, InvalidInput, NotFound
from gateway.services.unit_of_work import UnitOfWork
from schemas.statuses import DeliveryStatus
from schemas.webhooks import EVENT_NAMES, MAX_ENDPOINTS_PER_APP

SECRET_PREFIX = "whsec_"  # noqa: S105 - the Standard Webhooks prefix, not a secret
# 32 random bytes: the Standard Webhooks specification asks for 24 to 64.
SECRET_BYTES = 32
WAITING = (DeliveryStatus.PENDING, DeliveryStatus.RETRYING)
DISABLED_BY_APP = "app"
DISABLED_BY_STAFF = "staff"
DROPPED_WHEN_DISABLED = "not sent: the endpoint was disabled"


def new_secret() -> str:
    """A signing secret in the Standard Webhooks form: `whsec_` and the base64 of random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def require_webhook_owner(principal: Principal) -> None:
    """Endpoints belong to the app in the district: the district-app token manages them, a user token may not."""
    if principal.kind != TokenKind.DISTRICT_APP:
        raise Forbidden("webhooks are managed with the district-app token, not a user token", code="forbidden")
    principal.require_scope("grades:read")


def url_policy(url: str, *, allow_private: bool, resolver: HostResolver | None = None) -> UrlPolicy:
    """The address rules an endpoint's URL follows, those of LMS URLs: its own host only (no redirects are
    followed), https to a public address; loopback and private addresses only where the operator allows them."""
    parts = urlsplit(url)
    try:
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        port = None
    host = (parts.hostname or "").lower().rstrip(".")
    registered = frozenset({(host, port)}) if host and port else frozenset()
    return UrlPolicy(registered, allow_private=allow_private, resolver=resolver or HostResolver())


def refused_url(url: str, *, allow_private: bool) -> str | None:
    """Why Passback will not call this URL (None: it will). Host names are resolved when a message is sent and
    checked again then; at registration IP literals are checked, and `localhost` is refused at once."""
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    if not allow_private and (host == "localhost" or host.endswith(".localhost")):
        return "it names a loopback address; webhooks go to public addresses"
    found = url_policy(url, allow_private=allow_private).classify(url, resolve_dns=False)
    return None if found is None else REFUSALS.get(found[0], found[1])


def refused_at_send(url: str, *, allow_private: bool, resolver: HostResolver | None = None) -> str:
    """Why a send to this URL was refused (its host resolved now), in the words of webhook URLs."""
    try:
        found = url_policy(url, allow_private=allow_private, resolver=resolver).classify(url)
    except DeliveryError as exc:  # the host name does not resolve
        return exc.message
    return "its address is refused" if found is None else REFUSALS.get(found[0], found[1])


REFUSALS = {
    SCHEME: "it must be an http(s) URL",
    HOST: "it must name a host",
    PRIVATE: "it is a loopback, private or link-local address; webhooks go to public addresses",
    PLAIN_HTTP: "it must use https",
    UNRESOLVED_HTTP: "it must use https",
}


@dataclass(frozen=True)
class EndpointView:
    """An endpoint as the API and the dashboard show it (never its secret)."""

    id: str
    app_id: str
    url: str
    events: list[str]
    disabled: bool
    disabled_by: str | None
    disabled_at: datetime | None
    failing_since: datetime | None
    last_error: str | None
    last_success_at: datetime | None
    last_failure_at: datetime | None
    pending: int
    created_at: datetime
    updated_at: datetime

    @property
    def failing(self) -> bool:
        return self.failing_since is not None


@dataclass(frozen=True)
class CreatedEndpoint:
    view: EndpointView
    # Shown once, in the answer to registering or rotating; only its encryption is stored.
    secret: str

    def as_reply(self) -> dict[str, Any]:
        return {**vars(self.view), "failing": self.view.failing, "secret": self.secret}


def as_reply(view: EndpointView) -> dict[str, Any]:
    return {**vars(view), "failing": view.failing}


def _views(session: Session, endpoints: Sequence[WebhookEndpoint]) -> list[EndpointView]:
    """Views of these endpoints, with their events and waiting messages (two queries for any number)."""
    ids = [e.id for e in endpoints]
    events: dict[str, set[str]] = {i: set() for i in ids}
    pending: dict[str, int] = {}
    if ids:
        for endpoint_id, event in session.execute(
            select(WebhookSubscription.endpoint_id, WebhookSubscription.event).where(
                WebhookSubscription.endpoint_id.in_(ids)
            )
        ):
            events[endpoint_id].add(event)
        pending = dict(
            session.execute(
                select(WebhookMessage.endpoint_id, func.count())
                .where(
                    WebhookMessage.endpoint_id.in_(ids),
                    WebhookMessage.status.in_((*WAITING, DeliveryStatus.DELIVERING)),
                )
                .group_by(WebhookMessage.endpoint_id)
            ).all()
        )
    return [
        EndpointView(
            id=e.id,
            app_id=e.app_id,
            url=e.url,
            events=[name for name in EVENT_NAMES if name in events[e.id]],
            disabled=e.disabled,
            disabled_by=e.disabled_by,
            disabled_at=e.disabled_at,
            failing_since=e.failing_since,
            last_error=e.last_error,
            last_success_at=e.last_success_at,
            last_failure_at=e.last_failure_at,
            pending=int(pending.get(e.id, 0)),
            created_at=e.created_at,
            updated_at=e.updated_at,
        )
        for e in endpoints
    ]


def _owned(session: Session, principal: Principal, endpoint_id: str, *, lock: bool = False) -> WebhookEndpoint:
    """The endpoint if it is this district's and this app's; another's is not found, as if it did not exist."""
    query = select(WebhookEndpoint).where(
        WebhookEndpoint.id == endpoint_id,
        WebhookEndpoint.district_id == principal.district_id,
        WebhookEndpoint.app_id == principal.app_id,
    )
    # FOR NO KEY UPDATE: deliveries writing this endpoint's messages meanwhile are not held up.
    endpoint = session.scalar(query.with_for_update(key_share=True) if lock else query)
    if endpoint is None:
        raise NotFound(f"no webhook endpoint {endpoint_id!r}", code="webhook_not_found")
    return endpoint


def _check_url(url: str, allow_private: bool) -> None:
    reason = refused_url(url, allow_private=allow_private)
    if reason is not None:
        raise InvalidInput(f"url: {reason}", fields={"url": [reason[0].upper() + reason[1:] + "."]})


def _subscribe(session: Session, endpoint_id: str, events: Sequence[str]) -> None:
    session.execute(delete(WebhookSubscription).where(WebhookSubscription.endpoint_id == endpoint_id))
    session.add_all(WebhookSubscription(endpoint_id=endpoint_id, event=event) for event in events)


def create_endpoint(
    uow: UnitOfWork,
    principal: Principal,
    box: SecretBox,
    data: Mapping[str, Any],
    *,
    allow_private: bool,
    now: datetime | None = None,
) -> CreatedEndpoint:
    """Register an endpoint for the token's district and app; its secret is returned once."""
    require_webhook_owner(principal)
    _check_url(data["url"], allow_private)
    now = now or utcnow()
    with uow:
        session = uow.session
        count = session.scalar(
            select(func.count()).where(
                WebhookEndpoint.district_id == principal.district_id, WebhookEndpoint.app_id == principal.app_id
            )
        )
        if (count or 0) >= MAX_ENDPOINTS_PER_APP:
            raise Conflict(
                f"an app may register at most {MAX_ENDPOINTS_PER_APP} webhook endpoints in a district",
                code="too_many_webhooks",
            )
        secret = new_secret()
        endpoint = WebhookEndpoint(
            district_id=principal.district_id,
            app_id=principal.app_id,
            url=data["url"],
            secret_encrypted=box.encrypt_json(secret),
            disabled=False,
            created_at=now,
            updated_at=now,
        )
        session.add(endpoint)
        session.flush()
        _subscribe(session, endpoint.id, data["events"])
        view = _views(session, [endpoint])[0]
        uow.commit()
        return CreatedEndpoint(view, secret)


def list_endpoints(session: Session, principal: Principal) -> list[EndpointView]:
    """The token's app's endpoints in its district, oldest first."""
    require_webhook_owner(principal)
    endpoints = session.scalars(
        select(WebhookEndpoint)
        .where(WebhookEndpoint.district_id == principal.district_id, WebhookEndpoint.app_id == principal.app_id)
        .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
    ).all()
    return _views(session, endpoints)


def get_endpoint(session: Session, principal: Principal, endpoint_id: str) -> EndpointView:
    require_webhook_owner(principal)
    return _views(session, [_owned(session, principal, endpoint_id)])[0]


def _disable(session: Session, endpoint: WebhookEndpoint, by: str, now: datetime) -> int:
    """Stop sending to the endpoint: what waits for it is dropped (a message in flight finishes). Returns how
    many messages were dropped."""
    endpoint.disabled = True
    endpoint.disabled_by = by
    endpoint.disabled_at = now
    endpoint.updated_at = now
    result = session.execute(
        update(WebhookMessage)
        .where(WebhookMessage.endpoint_id == endpoint.id, WebhookMessage.status.in_(WAITING))
        .values(
            status=DeliveryStatus.FAILED,
            last_error=DROPPED_WHEN_DISABLED,
            next_attempt_at=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _enable(endpoint: WebhookEndpoint, now: datetime) -> None:
    if endpoint.disabled_by == DISABLED_BY_STAFF:
        raise Conflict(
            "district staff disabled this endpoint; they can enable it again on the dashboard",
            fields={"disabled": ["Disabled by district staff."]},
            code="webhook_disabled_by_staff",
        )
    endpoint.disabled = False
    endpoint.disabled_by = None
    endpoint.disabled_at = None
    endpoint.updated_at = now


def update_endpoint(
    uow: UnitOfWork,
    principal: Principal,
    endpoint_id: str,
    data: Mapping[str, Any],
    *,
    allow_private: bool,
    now: datetime | None = None,
) -> EndpointView:
    """Change an endpoint's url, events or disabled switch (the secret stays)."""
    require_webhook_owner(principal)
    if "url" in data:
        _check_url(data["url"], allow_private)
    now = now or utcnow()
    with uow:
        session = uow.session
        endpoint = _owned(session, principal, endpoint_id, lock=True)
        if "url" in data:
            endpoint.url = data["url"]
        if "events" in data:
            _subscribe(session, endpoint.id, data["events"])
        if data.get("disabled") is True and not endpoint.disabled:
            _disable(session, endpoint, DISABLED_BY_APP, now)
        elif data.get("disabled") is False and endpoint.disabled:
            _enable(endpoint, now)
        endpoint.updated_at = now
        view = _views(session, [endpoint])[0]
        uow.commit()
        return view


def delete_endpoint(uow: UnitOfWork, principal: Principal, endpoint_id: str) -> None:
    """Remove an endpoint and every message waiting for it."""
    require_webhook_owner(principal)
    with uow:
        endpoint = _owned(uow.session, principal, endpoint_id, lock=True)
        uow.session.delete(endpoint)
        uow.commit()


def rotate_secret(
    uow: UnitOfWork,
    principal: Principal,
    box: SecretBox,
    endpoint_id: str,
    *,
    overlap_seconds: float,
    now: datetime | None = None,
) -> CreatedEndpoint:
    """A new secret, returned once; the old one keeps signing beside it for `overlap_seconds`, so a receiver
    that has not switched yet still verifies (the signature header carries both)."""
    require_webhook_owner(principal)
    now = now or utcnow()
    with uow:
        endpoint = _owned(uow.session, principal, endpoint_id, lock=True)
        secret = new_secret()
        endpoint.previous_secret_encrypted = endpoint.secret_encrypted if overlap_seconds > 0 else None
        endpoint.previous_secret_expires_at = now + timedelta(seconds=overlap_seconds) if overlap_seconds > 0 else None
        endpoint.secret_encrypted = box.encrypt_json(secret)
        endpoint.updated_at = now
        view = _views(uow.session, [endpoint])[0]
        uow.commit()
        return CreatedEndpoint(view, secret)


# --- staff --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StaffWebhooks:
    """The dashboard's webhooks page: the district's endpoints (of one app, when `app_name` is set), failing
    ones first, each with its app's name."""

    rows: list[tuple[str, EndpointView]]
    app_id: str | None = None
    app_name: str | None = None


def district_endpoints(session: Session, district_id: str, app_id: str | None = None) -> StaffWebhooks:
    """Every endpoint of the district's apps (or of one of them), failing ones first, then oldest first."""
    query = (
        select(WebhookEndpoint, App.name)
        .join(App, App.id == WebhookEndpoint.app_id)
        .where(WebhookEndpoint.district_id == district_id)
    )
    app_name = None
    if app_id is not None:
        app_name = session.scalar(
            select(App.name)
            .join(DistrictApp, DistrictApp.app_id == App.id)
            .where(App.id == app_id, DistrictApp.district_id == district_id)
        )
        if app_name is None:
            raise NotFound("no such app in this district")
        query = query.where(WebhookEndpoint.app_id == app_id)
    found = session.execute(
        query.order_by(WebhookEndpoint.failing_since.is_(None), WebhookEndpoint.created_at, WebhookEndpoint.id)
    ).all()
    views = _views(session, [endpoint for endpoint, _ in found])
    return StaffWebhooks([(name, view) for (_, name), view in zip(found, views, strict=True)], app_id, app_name)


def failing_count(session: Session, district_id: str) -> int:
    """How many of the district's enabled endpoints are marked failing (the overview's warning)."""
    return int(
        session.scalar(
            select(func.count()).where(
                WebhookEndpoint.district_id == district_id,
                WebhookEndpoint.failing_since.is_not(None),
                WebhookEndpoint.disabled.is_(False),
            )
        )
        or 0
    )


def set_disabled_by_staff(
    session: Session, district_id: str, endpoint_id: str, *, disabled: bool, now: datetime | None = None
) -> WebhookEndpoint:
    """Staff switch an endpoint of their district off (what waits for it is dropped) or back on."""
    now = now or utcnow()
    endpoint = session.scalar(
        select(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.district_id == district_id)
        .with_for_update(key_share=True)
    )
    if endpoint is None:
        raise NotFound(f"no webhook endpoint {endpoint_id!r}", code="webhook_not_found")
    if disabled and not endpoint.disabled:
        _disable(session, endpoint, DISABLED_BY_STAFF, now)
    elif not disabled and endpoint.disabled:
        endpoint.disabled_by = None  # staff may enable what anyone disabled
        _enable(endpoint, now)
    return endpoint
