"""LTI 1.3 as a tool: OIDC third-party login, id_token validation, and what a resource-link launch records.

Validation follows the 1EdTech Security Framework 1.0 §5.1.3 and LTI Core 1.3 §5.3: RS256 only,
signature against the platform's JWKS (cached; refetched on an unknown kid at most once a minute), iss,
aud/azp, exp/iat with a small leeway, a nonce that is ours and used once, a registered deployment, message
type and version, then the LTI claims `target_link_uri` and `roles`.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jws import extract_compact
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from adapters.base import DeliveryError
from adapters.http import HttpClient
from adapters.url_policy import drop_refused_urls
from gateway.crypto import SecretBox
from gateway.models import (
    App,
    Assignment,
    DistrictApp,
    LaunchDestination,
    LaunchState,
    LmsConnection,
    LmsIdentity,
    Placement,
    UsedNonce,
    User,
    UserRole,
    new_id,
    utcnow,
)
from gateway.services.directory import enroll, get_or_create, identity_issuer
from gateway.services.errors import ServiceError
from gateway.services.lms import connection_settings
from gateway.services.routing import release_awaiting_launch, retire_unlaunched_links, route_waiting_grades

log = logging.getLogger("passback.lti")
CLAIM = "https://purl.imsglobal.org/spec/lti/claim/"
AGS_CLAIM = "https://purl.imsglobal.org/spec/lti-ags/claim/endpoint"
NRPS_CLAIM = "https://purl.imsglobal.org/spec/lti-nrps/claim/namesroleservice"
RESOURCE_LINK = "LtiResourceLinkRequest"
DEEP_LINKING = "LtiDeepLinkingRequest"
MESSAGE_TYPES = (RESOURCE_LINK, DEEP_LINKING)
LEEWAY_SECONDS = 60
STATE_SECONDS = 600
JWKS_CACHE_SECONDS = 3600
JWKS_REFETCH_SECONDS = 60
TEACHER_ROLES = ("instructor", "administrator", "contentdeveloper", "teachingassistant", "mentor")


class LaunchRefused(ServiceError):
    """A login or launch Passback will not accept; the message is safe to show (it never holds the token)."""

    status = 400
    code = "invalid_launch"


@dataclass(frozen=True)
class Registration:
    connection: LmsConnection
    settings: dict[str, Any]


def find_registration(session: Session, box: SecretBox, issuer: str, client_id: str | None) -> Registration:
    """The lti13 connection registered for this issuer (and client id, required when several share it)."""
    query = select(LmsConnection).where(LmsConnection.adapter == "lti13")
    if client_id:
        query = query.where(LmsConnection.registration_key == f"{issuer}|{client_id}")
    else:
        query = query.where(LmsConnection.registration_key.startswith(f"{issuer}|", autoescape=True))
    found = list(session.scalars(query.limit(2)))
    if not found:
        raise LaunchRefused(f"no LTI 1.3 platform is registered for issuer {issuer!r} and this client id")
    if len(found) > 1:
        raise LaunchRefused("several registrations share this issuer: the login must name its client_id")
    return Registration(found[0], connection_settings(box, found[0]))


def begin_login(
    session: Session, box: SecretBox, params: Mapping[str, str], launch_url: str, *, now: datetime | None = None
) -> str:
    """Answer an OIDC third-party login: remember a state and nonce, return the platform auth URL to go to."""
    now = now or utcnow()
    missing = [name for name in ("iss", "login_hint", "target_link_uri") if not params.get(name)]
    if missing:
        raise LaunchRefused(f"login initiation is missing {', '.join(missing)}")
    if not is_launch_url(params["target_link_uri"], launch_url):
        raise LaunchRefused(f"the login's target_link_uri must be Passback's launch URL {launch_url}")
    registration = find_registration(session, box, params["iss"], params.get("client_id"))
    settings = registration.settings
    deployment = params.get("lti_deployment_id") or params.get("deployment_id")
    if deployment and deployment not in settings["deployment_ids"]:
        raise LaunchRefused("this deployment of the tool is not registered with Passback")
    state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    session.add(
        LaunchState(
            state=state,
            nonce=nonce,
            lms_connection_id=registration.connection.id,
            target_link_uri=params["target_link_uri"],
            created_at=now,
            expires_at=now + timedelta(seconds=STATE_SECONDS),
        )
    )
    query = {
        "scope": "openid",
        "response_type": "id_token",
        "response_mode": "form_post",
        "prompt": "none",
        "client_id": settings["client_id"],
        "redirect_uri": launch_url,
        "login_hint": params["login_hint"],
        "state": state,
        "nonce": nonce,
    }
    if params.get("lti_message_hint"):
        query["lti_message_hint"] = params["lti_message_hint"]
    parts = urlsplit(str(settings["auth_url"]))
    merged = parse_qsl(parts.query, keep_blank_values=True) + list(query.items())
    return urlunsplit(parts._replace(query=urlencode(merged)))


class PlatformKeys:
    """Platform JWKS, fetched over HTTP and cached per URL in this process. An unknown kid refetches the JWKS
    (key rotation), but at most once per URL every `refetch_seconds`: anyone can start a login, and a token
    with a random kid must not make Passback hammer the platform. A failed fetch is remembered for as long:
    launches meanwhile are refused with its reason, without asking the failing URL again."""

    def __init__(
        self,
        http: HttpClient,
        cache_seconds: float = JWKS_CACHE_SECONDS,
        refetch_seconds: float = JWKS_REFETCH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.http = http
        self.cache_seconds = cache_seconds
        self.refetch_seconds = refetch_seconds
        self.clock = clock
        self._cache: dict[str, tuple[KeySet, float]] = {}
        self._refetched: dict[str, float] = {}
        # The last failed fetch per URL: when, and why.
        self._failed: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def key_set(self, settings: Mapping[str, Any]) -> tuple[KeySet, bool]:
        """The platform's keys and whether they were fetched just now (a cold or expired cache)."""
        if settings.get("public_jwk"):
            # A static key the admin registered wins over a preset's JWKS URL.
            return KeySet.import_key_set({"keys": [settings["public_jwk"]]}), True
        url = str(settings["jwks_url"])
        with self._lock:
            cached = self._cache.get(url)
            failed = self._failed.get(url)
        if cached and self.clock() - cached[1] < self.cache_seconds:
            return cached[0], False
        if failed is not None and self.clock() - failed[0] < self.refetch_seconds:
            raise LaunchRefused(f"{failed[1]} (asked again at most once every {self.refetch_seconds:g} s)")
        return self._fetch(url), True

    def refetched(self, settings: Mapping[str, Any]) -> KeySet | None:
        """The JWKS fetched again for an unknown kid, or None when this URL was refetched too recently."""
        url = str(settings["jwks_url"])
        with self._lock:
            last = self._refetched.get(url)
            if last is not None and self.clock() - last < self.refetch_seconds:
                return None
            # Claimed before fetching, so concurrent launches with unknown kids share one refetch.
            self._refetched[url] = self.clock()
        return self._fetch(url)

    def _fetch(self, url: str) -> KeySet:
        try:
            keys = self._download(url)
        except LaunchRefused as exc:
            with self._lock:
                self._failed[url] = (self.clock(), exc.message)
            raise
        with self._lock:
            self._cache[url] = (keys, self.clock())
            self._failed.pop(url, None)
        return keys

    def _download(self, url: str) -> KeySet:
        try:
            response = self.http.request("GET", url, headers={"Accept": "application/json"})
        except DeliveryError as exc:
            raise LaunchRefused(f"could not fetch the platform's keys: {exc.message}") from exc
        if response.status_code != 200:
            raise LaunchRefused(f"the platform's JWKS URL answered HTTP {response.status_code}")
        try:
            return KeySet.import_key_set(response.json())
        except (ValueError, JoseError, TypeError, KeyError) as exc:
            raise LaunchRefused("the platform's JWKS is not a valid key set") from exc


@dataclass(frozen=True)
class Launch:
    registration: Registration
    claims: dict[str, Any]

    @property
    def message_type(self) -> str:
        return str(self.claims[CLAIM + "message_type"])


def _header(id_token: str) -> dict[str, Any]:
    try:
        return dict(extract_compact(id_token.encode()).headers())
    except (JoseError, ValueError, TypeError) as exc:
        raise LaunchRefused("the id_token is not a signed JWT") from exc


def validate_launch(
    session: Session,
    box: SecretBox,
    keys: PlatformKeys,
    id_token: str,
    state: str,
    *,
    launch_url: str,
    now: datetime | None = None,
) -> Launch:
    """Check a launch completely; consume its state and nonce. Raises LaunchRefused naming the failed rule."""
    now = now or utcnow()
    if not id_token or not state:
        raise LaunchRefused("the launch is missing id_token or state")
    login = session.get(LaunchState, state, with_for_update=True)
    if login is None or login.used_at is not None or login.expires_at < now:
        raise LaunchRefused("unknown, expired or already used state: start the launch again from the LMS")
    login.used_at = now
    connection = session.get(LmsConnection, login.lms_connection_id)
    if connection is None:
        raise LaunchRefused("the platform registration was removed")
    settings = connection_settings(box, connection)
    header = _header(id_token)
    if header.get("alg") != "RS256":
        raise LaunchRefused(f"id_token algorithm {header.get('alg')!r} is not accepted; RS256 only")
    claims = _verified_claims(keys, settings, id_token)
    _check_claims(claims, settings, login.nonce, now)
    _check_target_and_roles(claims, launch_url, login.target_link_uri)
    try:
        with session.begin_nested():
            session.add(
                UsedNonce(
                    issuer=settings["issuer"],
                    nonce=str(claims["nonce"]),
                    expires_at=now + timedelta(seconds=STATE_SECONDS * 2),
                )
            )
    except IntegrityError as exc:
        raise LaunchRefused("this id_token's nonce was already used (a replayed launch)") from exc
    return Launch(Registration(connection, settings), claims)


def _verified_claims(keys: PlatformKeys, settings: Mapping[str, Any], id_token: str) -> dict[str, Any]:
    key_set, fresh = keys.key_set(settings)
    try:
        return dict(jwt.decode(id_token, key_set, algorithms=["RS256"]).claims)
    except JoseError as exc:
        if exc.error != "invalid_key_id":
            raise LaunchRefused(f"id_token signature check failed ({exc.error})") from exc
    # An unknown kid: the platform may have rotated its key, unless these keys are fresh or were just refetched.
    refetched = None if fresh else keys.refetched(settings)
    if refetched is None:
        raise LaunchRefused("id_token signed with a key the platform does not publish (unknown kid)")
    try:
        return dict(jwt.decode(id_token, refetched, algorithms=["RS256"]).claims)
    except JoseError as exc:
        if exc.error == "invalid_key_id":
            raise LaunchRefused("id_token signed with a key the platform does not publish (unknown kid)") from exc
        raise LaunchRefused(f"id_token signature check failed ({exc.error})") from exc


def _check_claims(claims: Mapping[str, Any], settings: Mapping[str, Any], nonce: str, now: datetime) -> None:
    client_id = settings["client_id"]
    if claims.get("iss") != settings["issuer"]:
        raise LaunchRefused("id_token issuer does not match the registered platform")
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    if client_id not in audiences:
        raise LaunchRefused("id_token audience does not include Passback's client id")
    if (len(audiences) > 1 or "azp" in claims) and claims.get("azp") != client_id:
        raise LaunchRefused("id_token authorized party (azp) is not Passback's client id")
    epoch = now.timestamp() if now.tzinfo else (now - datetime(1970, 1, 1)).total_seconds()
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, int | float):
        raise LaunchRefused("id_token has no expiry (exp)")
    if exp < epoch - LEEWAY_SECONDS:
        raise LaunchRefused("id_token has expired")
    if not isinstance(iat, int | float):
        raise LaunchRefused("id_token has no issue time (iat)")
    if iat > epoch + LEEWAY_SECONDS:
        raise LaunchRefused("id_token was issued in the future; check the platform's clock")
    if not secrets.compare_digest(str(claims.get("nonce", "")), nonce):
        raise LaunchRefused("id_token nonce does not match this login")
    deployment = claims.get(CLAIM + "deployment_id")
    if deployment not in settings["deployment_ids"]:
        raise LaunchRefused("this deployment of the tool is not registered with Passback")
    message_type = claims.get(CLAIM + "message_type")
    if message_type not in MESSAGE_TYPES:
        raise LaunchRefused(f"unsupported LTI message type {message_type!r}")
    if claims.get(CLAIM + "version") != "1.3.0":
        raise LaunchRefused("only LTI version 1.3.0 is accepted")
    _check_id_lengths(claims)
    if message_type == RESOURCE_LINK:
        if not claims.get("sub"):
            raise LaunchRefused("a resource link launch must identify the user (sub)")
        link = claims.get(CLAIM + "resource_link")
        if not isinstance(link, Mapping) or not link.get("id"):
            raise LaunchRefused("a resource link launch must carry resource_link.id")


def is_launch_url(value: object, launch_url: str) -> bool:
    """Whether `value` names Passback's launch URL: same scheme, host, port and path; any query string."""
    if not isinstance(value, str):
        return False
    try:
        given, ours = urlsplit(value), urlsplit(launch_url)
        ports = (given.port, ours.port)
    except ValueError:
        return False
    default_port = {"http": 80, "https": 443}

    def origin(parts: Any, port: int | None) -> tuple[str, str, int | None, str]:
        scheme = parts.scheme.lower()
        return scheme, parts.hostname or "", port or default_port.get(scheme), parts.path

    return bool(given.hostname) and origin(given, ports[0]) == origin(ours, ports[1])


def _check_target_and_roles(claims: Mapping[str, Any], launch_url: str, login_target: str | None) -> None:
    """LTI Core §5.3: `target_link_uri` and `roles` are required in every launch message; the target must be
    Passback's launch URL and repeat the login's parameter."""
    target = claims.get(CLAIM + "target_link_uri")
    if not isinstance(target, str) or not target:
        raise LaunchRefused("the id_token has no target_link_uri claim; LTI requires it")
    if not is_launch_url(target, launch_url):
        raise LaunchRefused(f"the id_token's target_link_uri is not Passback's launch URL {launch_url}")
    if login_target is not None and target != login_target:
        raise LaunchRefused("the id_token's target_link_uri differs from the one its login named")
    roles = claims.get(CLAIM + "roles")
    if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
        raise LaunchRefused("the id_token has no roles claim; LTI requires a list of role URIs (it may be empty)")


MAX_ID_LENGTH = 255  # LTI Core caps sub, resource_link.id and context.id at 255 characters


def _check_id_lengths(claims: Mapping[str, Any]) -> None:
    link = claims.get(CLAIM + "resource_link")
    context = claims.get(CLAIM + "context")
    values = {
        "sub": claims.get("sub"),
        "resource_link.id": link.get("id") if isinstance(link, Mapping) else None,
        "context.id": context.get("id") if isinstance(context, Mapping) else None,
    }
    for name, value in values.items():
        if value is not None and (not isinstance(value, str | int) or len(str(value)) > MAX_ID_LENGTH):
            raise LaunchRefused(f"{name} must be a string of at most {MAX_ID_LENGTH} characters")


# --- what a resource-link launch records ---------------------------------------------------------------------


def role_of(claims: Mapping[str, Any]) -> str:
    roles = claims.get(CLAIM + "roles") or []
    return role_for(r for r in roles if isinstance(r, str))


def role_for(roles: Iterable[str]) -> str:
    """For any LTI version: teacher for instructor-like LIS roles (URIs, URNs or bare names, compared
    case-insensitively, context or institution), else student."""
    names = [r.strip().rsplit("#", 1)[-1].rsplit("/", 1)[-1].lower() for r in roles if r.strip()]
    return UserRole.TEACHER if any(n in TEACHER_ROLES for n in names) else UserRole.STUDENT


def _custom(claims: Mapping[str, Any], name: str) -> str | None:
    custom = claims.get(CLAIM + "custom")
    if not isinstance(custom, Mapping):
        return None
    # Schoology lower-cases custom parameter keys (Schoology API docs: "LTI Apps"): match case-insensitively.
    for key, value in custom.items():
        if str(key).lower() == name and isinstance(value, str | int) and str(value) and not str(value).startswith("$"):
            return str(value)
    return None


def user_for_launch(session: Session, registration: Registration, claims: Mapping[str, Any]) -> User:
    """The Passback user this platform's `sub` maps to, created on first launch; name, email, role refreshed."""
    name = claims.get("name") or " ".join(filter(None, [claims.get("given_name"), claims.get("family_name")]))
    return linked_user(
        session,
        registration.connection,
        identity_issuer(registration.connection, registration.settings),
        str(claims["sub"]),
        role=role_of(claims),
        name=name if isinstance(name, str) else None,
        email=claims.get("email") if isinstance(claims.get("email"), str) else None,
    )


def linked_user(
    session: Session,
    connection: LmsConnection,
    issuer: str,
    subject: str,
    *,
    role: str,
    name: str | None,
    email: str | None,
) -> User:
    """For any LTI version: the user an LMS identity maps to, created with it on first sight (once, even on a
    double-click); name, email and role refreshed from the launch."""

    def find() -> LmsIdentity | None:
        return session.scalar(
            select(LmsIdentity).where(
                LmsIdentity.district_id == connection.district_id,
                LmsIdentity.issuer == issuer,
                LmsIdentity.subject == subject,
            )
        )

    def make() -> LmsIdentity:
        user = User(id=new_id(), district_id=connection.district_id, role=role)
        session.add(user)
        session.flush()
        return LmsIdentity(
            district_id=connection.district_id,
            user_id=user.id,
            lms_connection_id=connection.id,
            issuer=issuer,
            subject=subject,
        )

    identity = get_or_create(session, find, make)
    user = session.get(User, identity.user_id)
    assert user is not None
    user.role = role
    if name:
        user.name = name[:200]
    if email:
        user.email = email[:320]
    return user


def assignment_for_launch(
    session: Session, registration: Registration, claims: Mapping[str, Any]
) -> tuple[Placement | None, Assignment]:
    """The placement of this resource link if Passback knows it, else the `assignment` custom parameter's."""
    return resolve_link_assignment(
        session,
        registration.connection,
        str(claims[CLAIM + "resource_link"]["id"]),
        _custom(claims, "assignment"),
        _custom(claims, "app"),
    )


def resolve_link_assignment(
    session: Session, connection: LmsConnection, link_id: str, wanted: str | None, app_hint: str | None
) -> tuple[Placement | None, Assignment]:
    """For any LTI version: the link's known placement, else the assignment named by the link's custom
    parameter among the apps authorized in the district (`app`, a client id, settles a shared id)."""
    for placement, assignment in session.execute(
        select(Placement, Assignment)
        .join(Assignment, Assignment.id == Placement.assignment_id)
        .where(Placement.lms_connection_id == connection.id, Placement.resource_link_id == link_id)
        .order_by(Placement.created_at.desc(), Placement.id)
    ):
        if wanted is None or assignment.external_id == wanted:
            return placement, assignment
    if wanted is None:
        raise LaunchRefused(
            "this link is not a Passback assignment yet: add it with the assignment picker, or give it the "
            "custom parameter assignment=<assignmentID>"
        )
    candidates = list(
        session.scalars(
            select(Assignment)
            .join(DistrictApp, DistrictApp.app_id == Assignment.app_id)
            .where(
                DistrictApp.district_id == connection.district_id,
                DistrictApp.revoked_at.is_(None),
                Assignment.external_id == wanted,
            )
        )
    )
    if app_hint:
        candidates = [a for a in candidates if app_hint in (a.app_id, _client_id(session, a.app_id))]
    if not candidates:
        raise LaunchRefused(f"no app authorized in this district has an assignment {wanted!r}")
    if len(candidates) > 1:
        raise LaunchRefused(f"several apps have an assignment {wanted!r}: add the custom parameter app=<client id>")
    return None, candidates[0]


def placement_for_link(
    session: Session,
    connection: LmsConnection,
    placement: Placement | None,
    assignment: Assignment,
    course_id: str,
    link_id: str,
    title: str | None,
    destination: Mapping[str, Any],
) -> Placement:
    """The link's own placement: each resource link is its own destination, with its own line item. A new link
    takes over the course's placement made without a link (by an operator or app), else gets a new one, created
    once even when a class launches it at the same moment. Its destination data is refreshed from this launch."""
    if placement is None:
        placement = _adopt_unlinked(session, connection, assignment, course_id, link_id) or get_or_create(
            session,
            lambda: session.scalar(
                select(Placement).where(
                    Placement.lms_connection_id == connection.id,
                    Placement.course_id == course_id,
                    Placement.assignment_id == assignment.id,
                    Placement.resource_link_id == link_id,
                )
            ),
            lambda: Placement(
                district_id=connection.district_id,
                lms_connection_id=connection.id,
                assignment_id=assignment.id,
                course_id=course_id,
                resource_link_id=link_id,
                destination={},
            ),
        )
    placement.title = str(title or assignment.name)[:500]
    merged = {**(placement.destination or {}), **destination}
    if "lineitem" in destination:
        merged.pop("lineitem_link", None)  # the launch names this link's own line item
    elif merged.get("lineitem_link") not in (None, link_id):
        # Learned for the placement before this link took it: another link's column, so this link finds its own.
        merged.pop("lineitem", None)
        merged.pop("lineitem_link", None)
    placement.destination = merged
    session.flush()
    return placement


def _adopt_unlinked(
    session: Session, connection: LmsConnection, assignment: Assignment, course_id: str, link_id: str
) -> Placement | None:
    """The course's placement of this assignment made without a link, now claimed by this link. The claim is
    one conditional UPDATE, so two links launched at once cannot both take it."""
    unlinked = session.scalar(
        select(Placement.id).where(
            Placement.lms_connection_id == connection.id,
            Placement.course_id == course_id,
            Placement.assignment_id == assignment.id,
            Placement.resource_link_id.is_(None),
        )
    )
    if unlinked is None:
        return None
    claimed = session.execute(
        update(Placement)
        .where(Placement.id == unlinked, Placement.resource_link_id.is_(None))
        .values(resource_link_id=link_id)
        .execution_options(synchronize_session=False)
    )
    if not claimed.rowcount:  # type: ignore[attr-defined]
        return None
    return session.get(Placement, unlinked, populate_existing=True)


def record_link_launch(
    session: Session, connection: LmsConnection, placement: Placement, user: User
) -> LaunchDestination:
    """Remember that this user launched this link: their grades go to the links they launched (routing)."""
    return get_or_create(
        session,
        lambda: session.scalar(
            select(LaunchDestination).where(
                LaunchDestination.placement_id == placement.id, LaunchDestination.user_id == user.id
            )
        ),
        lambda: LaunchDestination(
            district_id=connection.district_id, placement_id=placement.id, user_id=user.id, data={}
        ),
    )


def _client_id(session: Session, app_id: str) -> str | None:
    return session.scalar(select(App.client_id).where(App.id == app_id))


@dataclass(frozen=True)
class RecordedLaunch:
    """Who launched what, and how many outbox rows the launch released (awaiting it) or routed (new)."""

    user: User
    assignment: Assignment
    placement: Placement
    lms_connection_id: str
    released: int
    routed: int


def record_resource_link_launch(session: Session, launch: Launch) -> RecordedLaunch:
    """Record who launched, where (course, enrollment) and the placement with its AGS/NRPS endpoints, refreshed
    on every launch (platforms may change the URLs, AGS §3.1). Grades waiting for this student are routed."""
    claims = launch.claims
    connection = launch.registration.connection
    user = user_for_launch(session, launch.registration, claims)
    context = claims.get(CLAIM + "context")
    link = claims[CLAIM + "resource_link"]
    course_id = str(context["id"]) if isinstance(context, Mapping) and context.get("id") else f"link:{link['id']}"
    placement, assignment = assignment_for_launch(session, launch.registration, claims)
    placement = placement_for_link(
        session,
        connection,
        placement,
        assignment,
        course_id,
        str(link["id"]),
        link.get("title"),
        _destination_claims(claims, launch.registration.settings),
    )
    enroll(session, connection, course_id, user, source="launch")
    launched = record_link_launch(session, connection, placement, user)
    now = utcnow()  # one instant for the launch's rows and the grades it routes
    launched.updated_at, launched.link_unknown = now, False
    session.flush()
    retire_unlaunched_links(session, user.id, placement, now=now)
    released = release_awaiting_launch(session, user.id, connection.id, now=now)
    routed = route_waiting_grades(session, connection.district_id, user_id=user.id, now=now)
    return RecordedLaunch(user, assignment, placement, connection.id, released, routed)


def _destination_claims(claims: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    destination: dict[str, Any] = {"resource_link_id": str(claims[CLAIM + "resource_link"]["id"])}
    ags = claims.get(AGS_CLAIM)
    if isinstance(ags, Mapping):
        for key in ("lineitem", "lineitems"):
            if isinstance(ags.get(key), str):
                destination[key] = ags[key]
        if isinstance(ags.get("scope"), list):
            destination["scopes"] = [s for s in ags["scope"] if isinstance(s, str)]
    nrps = claims.get(NRPS_CLAIM)
    if isinstance(nrps, Mapping) and isinstance(nrps.get("context_memberships_url"), str):
        destination["context_memberships_url"] = nrps["context_memberships_url"]
    for reason in drop_refused_urls(settings, destination, ("lineitem", "lineitems", "context_memberships_url")):
        log.warning("LTI launch: service URL not stored: %s", reason)
    return destination


def safe_summary(claims: Mapping[str, Any]) -> str:
    """A log line about a launch without any token or personal data beyond ids."""
    return json.dumps(
        {
            "iss": claims.get("iss"),
            "sub": claims.get("sub"),
            "message_type": claims.get(CLAIM + "message_type"),
            "deployment_id": claims.get(CLAIM + "deployment_id"),
        }
    )
