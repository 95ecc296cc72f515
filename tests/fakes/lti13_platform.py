"""A small LTI 1.3 platform that launches Passback: the JWKS over real HTTP on 127.0.0.1, and the browser's part.

The platform publishes its RSA keys at `/jwks` (`{"keys": [...]}`, a `kid` on each, a counter of fetches)
and can rotate them. There is no `/auth` endpoint: a test plays the browser. `login()` calls Passback's
`/lti/login` as the platform's login initiation would, checks the authentication request Passback
redirects to (1EdTech Security Framework §5.1.1: all ten parameters), and remembers it; `launch_token()` builds and
signs the id_token answering it (a resource link launch, or a deep-linking request); `launch()` form-posts
it to Passback's `redirect_uri`, without following Passback's redirect to the app.

The launch message is built by the third-party `lti1p3platform` package (its message-launch builder, with
the AGS and NRPS claims; it also checks the authentication request: nonce, state, redirect_uri, client_id),
so the claims Passback parses do not come from Passback's own code. Tokens are RS256-signed with the
package's `Registration.encode_and_sign` (PyJWT), the `kid` from the package's JWK thumbprint; the forged
tokens it will not make (`alg: none`, HS256 keyed with the public key) are assembled by hand.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask, Response, jsonify
from lti1p3platform.deep_linking import LtiDeepLinking
from lti1p3platform.ltiplatform import LTI1P3PlatformConfAbstract
from lti1p3platform.message_launch import LTIAdvantageMessageLaunchAbstract
from lti1p3platform.registration import Registration
from lti1p3platform.request import Request, TRequest
from werkzeug.serving import make_server

CLAIM = "https://purl.imsglobal.org/spec/lti/claim/"
AGS_CLAIM = "https://purl.imsglobal.org/spec/lti-ags/claim/endpoint"
NRPS_CLAIM = "https://purl.imsglobal.org/spec/lti-nrps/claim/namesroleservice"
LEARNER = "http://purl.imsglobal.org/vocab/lis/v2/membership#Learner"
INSTRUCTOR = "http://purl.imsglobal.org/vocab/lis/v2/membership#Instructor"
AUTH_REQUEST_PARAMS = {
    "scope",
    "response_type",
    "response_mode",
    "prompt",
    "client_id",
    "redirect_uri",
    "login_hint",
    "lti_message_hint",
    "state",
    "nonce",
}

# Short names for the LTI claims a test overrides, so that `launch_token(nonce, version="1.2.0")` reads well.
ALIASES = {
    "message_type": CLAIM + "message_type",
    "version": CLAIM + "version",
    "deployment_id": CLAIM + "deployment_id",
    "target_link_uri": CLAIM + "target_link_uri",
    "resource_link": CLAIM + "resource_link",
    "context": CLAIM + "context",
    "roles": CLAIM + "roles",
    "custom": CLAIM + "custom",
    "ags": AGS_CLAIM,
    "nrps": NRPS_CLAIM,
}


class _Drop:
    def __repr__(self) -> str:
        return "DROP"


DROP: Any = _Drop()
"""A claim override that removes the claim from the token."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(value: dict[str, Any]) -> str:
    return _b64url(json.dumps(value, separators=(",", ":")).encode())


@dataclass
class PlatformKey:
    """An RSA key pair in PEM, with the kid and public JWK that `lti1p3platform` derives for it."""

    private_pem: str
    public_pem: str
    jwk: dict[str, Any]

    @property
    def kid(self) -> str:
        return str(self.jwk["kid"])

    @classmethod
    def generate(cls) -> PlatformKey:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private_pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        public_pem = (
            private.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )
        return cls(private_pem, public_pem, Registration.get_jwk(public_pem))


_KEY_POOL: list[PlatformKey] = []
_KEY_POOL_LOCK = threading.Lock()


def pooled_key(index: int) -> PlatformKey:
    """Keys shared by every platform of the run: RSA generation is the slow part of a launch test."""
    with _KEY_POOL_LOCK:
        while len(_KEY_POOL) <= index:
            _KEY_POOL.append(PlatformKey.generate())
        return _KEY_POOL[index]


# --- the lti1p3platform glue: a request carrying the authentication request, a config, a launch --------


class _AuthRequest(Request):
    def build_metadata(self, request: Any) -> TRequest:
        return {
            "method": "GET",
            "form_data": {},
            "get_data": dict(request),
            "headers": {},
            "content_type": None,
            "path": "/auth",
            "json": None,
        }


class _PlatformConfig(LTI1P3PlatformConfAbstract):
    def init_platform_config(self, **kwargs: Any) -> None:
        self._registration = kwargs["registration"]

    def get_registration_by_params(self, **kwargs: Any) -> Registration:
        return self._registration


class _MessageLaunch(LTIAdvantageMessageLaunchAbstract):
    def render_launch_form(self, launch_data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return launch_data


@dataclass
class LoginResult:
    """What Passback's `/lti/login` answered: the authentication request it sends the browser to.

    Unpacks as `state, nonce, params = platform.login(...)`."""

    state: str
    nonce: str
    params: dict[str, str]
    location: str
    response: requests.Response = field(repr=False)

    def __iter__(self) -> Any:
        return iter((self.state, self.nonce, self.params))


class Lti13Platform:
    """Start with `with Lti13Platform(issuer, client_id) as platform:`; register `platform.registration()`."""

    def __init__(
        self,
        issuer: str = "https://lms.example",
        client_id: str = "passback-tool",
        deployment_id: str = "dep-1",
        *,
        key: PlatformKey | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self.issuer = issuer
        self.client_id = client_id
        self.deployment_id = deployment_id
        self.signing_key = key or pooled_key(0)
        self.published: list[PlatformKey] = [self.signing_key]
        self.jwks_requests = 0
        # When set, /jwks answers this HTTP status instead of the keys (a platform whose key URL is down).
        self.jwks_failure: int | None = None
        self.browser = session or requests.Session()
        self.auth_requests: dict[str, dict[str, str]] = {}  # by nonce
        self.target_link_uris: dict[str, str] = {}  # the login's target_link_uri, by nonce
        self.lock = threading.Lock()
        self.app = self._build()
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.auth_url = self.url + "/auth"
        self.jwks_url = self.url + "/jwks"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

    def __enter__(self) -> Lti13Platform:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.thread.join(5)

    def _build(self) -> Flask:
        app = Flask("fake-lti13-platform")

        @app.get("/jwks")
        def jwks() -> Response:
            with self.lock:
                self.jwks_requests += 1
                keys = [dict(k.jwk) for k in self.published]
                failure = self.jwks_failure
            if failure is not None:
                return Response("key service unavailable", status=failure)
            return jsonify(keys=keys)

        return app

    # --- registration and keys -----------------------------------------------------------------------

    def registration(self) -> dict[str, Any]:
        """The lti13 settings an operator would give Passback for this platform."""
        return {
            "platform": "generic",
            "issuer": self.issuer,
            "client_id": self.client_id,
            "deployment_ids": [self.deployment_id],
            "auth_url": self.auth_url,
            "token_url": self.url + "/token",
            "jwks_url": self.jwks_url,
            # This fake listens on loopback over http.
            "allow_private_addresses": True,
        }

    def rotate(self, new_key: PlatformKey | None = None, *, keep_old: bool = False) -> PlatformKey:
        """Sign with a new key from now on and publish it (with the old one too if `keep_old`)."""
        key = new_key or PlatformKey.generate()
        with self.lock:
            self.published = ([*self.published] if keep_old else []) + [key]
            self.signing_key = key
        return key

    # --- the browser: login initiation ---------------------------------------------------------------

    def login_params(self, passback_url: str, **overrides: Any) -> dict[str, str]:
        params: dict[str, Any] = {
            "iss": self.issuer,
            "login_hint": "user-hint-42",
            "target_link_uri": passback_url.rstrip("/") + "/lti/launch",
            "lti_message_hint": "msg-hint-7",
            "client_id": self.client_id,
            "lti_deployment_id": self.deployment_id,
        }
        params.update(overrides)
        return {k: v for k, v in params.items() if v is not None}

    def login_response(self, passback_url: str, method: str = "GET", **overrides: Any) -> requests.Response:
        """Passback's raw answer to a login initiation; `name=None` leaves a parameter out."""
        params = self.login_params(passback_url, **overrides)
        url = passback_url.rstrip("/") + "/lti/login"
        if method == "GET":
            return self.browser.get(url, params=params, allow_redirects=False, timeout=10)
        return self.browser.post(url, data=params, allow_redirects=False, timeout=10)

    def login(self, passback_url: str, method: str = "GET", **overrides: Any) -> LoginResult:
        """Initiate a login and return the authentication request Passback redirected to, checked and
        remembered so that `launch_token(nonce)` can answer it."""
        response = self.login_response(passback_url, method, **overrides)
        assert response.status_code == 302, (response.status_code, response.text[:500])
        location = response.headers["Location"]
        parts = urlsplit(location)
        base = urlunsplit(parts._replace(query="", fragment=""))
        assert base == self.auth_url, f"login redirected to {base}, not the platform's auth_url {self.auth_url}"
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        params = dict(pairs)
        assert len(params) == len(pairs), f"a parameter is repeated: {pairs}"
        assert params.get("state") and params.get("nonce"), params
        self.auth_requests[params["nonce"]] = params
        self.target_link_uris[params["nonce"]] = self.login_params(passback_url, **overrides)["target_link_uri"]
        return LoginResult(params["state"], params["nonce"], params, location, response)

    # --- the platform: the id_token ------------------------------------------------------------------

    def message(self, nonce: str, *, target_link_uri: str | None = None, deep_linking: bool = False) -> dict[str, Any]:
        """The default LtiResourceLinkRequest answering the authentication request with this nonce, built by
        `lti1p3platform` (which also checks that request when it is one `login()` saw); with `deep_linking`, an
        LtiDeepLinkingRequest whose settings claim is the package's, returning to `/deep_links/return`."""
        auth_request = self.auth_requests.get(nonce)
        registration = (
            Registration()
            .set_iss(self.issuer)
            .set_client_id(self.client_id)
            .set_deployment_id(self.deployment_id)
            .set_launch_url(
                target_link_uri or self.target_link_uris.get(nonce) or "https://passback.example/lti/launch"
            )
            .set_platform_private_key(self.signing_key.private_pem)
            .set_platform_public_key(self.signing_key.public_pem)
        )
        # A nonce no login gave out (a replay test): an authentication request that only carries it.
        preflight = auth_request or {
            "nonce": nonce,
            "state": "unknown",
            "redirect_uri": "unknown",
            "client_id": self.client_id,
        }
        launch = _MessageLaunch(_AuthRequest(preflight), _PlatformConfig(registration=registration))
        launch._registration = registration  # what lti_launch() sets before building
        launch.validate_preflight_response(preflight)
        launch.set_user_data(
            "student-sub-1",
            [LEARNER],
            full_name="Grace Hopper",
            email_address="grace@student.example",
        )
        launch.set_resource_link_claim("rl-1", title="Quiz 1 in the LMS")
        launch.set_launch_context_claim(
            "course-9",
            context_types=["http://purl.imsglobal.org/vocab/lis/v2/course#CourseOffering"],
            context_title="Algebra 9",
            context_label="ALG9",
        )
        launch.set_custom_parameters_claim({"assignment": "quiz-1"})
        launch.set_ags(
            lineitems_url=f"{self.url}/api/lti/courses/9/line_items",
            lineitem_url=f"{self.url}/api/lti/courses/9/line_items/1",
        )
        launch.set_nrps(f"{self.url}/api/lti/courses/9/names_and_roles")
        message, _state = launch.get_launch_data()
        if deep_linking:
            # What the package's generate_launch_request does for a deep-linking launch; it has no resource link.
            message.pop(CLAIM + "resource_link", None)
            message[CLAIM + "message_type"] = "LtiDeepLinkingRequest"
            message.update(
                LtiDeepLinking(self.url + "/deep_links/return").get_lti_deep_linking_launch_claim(
                    "Add an assignment", "", {"ltiResourceLink"}
                )
            )
        return message

    def launch_token(
        self,
        nonce: str,
        /,
        *,
        forge: str | None = None,
        key: PlatformKey | None = None,
        kid: str | None = None,
        iat_offset: int = 0,
        lifetime: int = 300,
        extra: dict[str, Any] | None = None,
        deep_linking: bool = False,
        **claims: Any,
    ) -> str:
        """A signed id_token for the authentication request with this nonce.

        `claims` override the defaults (OIDC names such as `aud`, `sub`, `exp`, or the ALIASES such as
        `version`, `custom`; `DROP` removes one); `extra` takes full claim URIs. `key` signs with another key
        (`kid` from it unless given). `forge` makes a token no honest platform sends: `other-key-same-kid`,
        `unpublished-key`, `none` (unsigned), `hs256-pem` / `hs256-jwk` (HMAC keyed with the public key)."""
        target = claims.get("target_link_uri")
        message = self.message(nonce, target_link_uri=None if target is DROP else target, deep_linking=deep_linking)
        now = int(time.time()) + iat_offset
        message["iat"] = now
        message["exp"] = now + lifetime
        for name, value in {**claims, **(extra or {})}.items():
            name = ALIASES.get(name, name)
            if value is DROP:
                message.pop(name, None)
            else:
                message[name] = value
        signer = key or self.signing_key
        header_kid = kid or signer.kid
        if forge == "other-key-same-kid":
            signer, header_kid = pooled_key(1), self.signing_key.kid
        elif forge == "unpublished-key":
            signer = PlatformKey.generate()
            header_kid = signer.kid
        elif forge == "none":
            header = {"alg": "none", "typ": "JWT", "kid": header_kid}
            return f"{_segment(header)}.{_segment(message)}."
        elif forge in ("hs256-pem", "hs256-jwk"):
            secret = (
                self.signing_key.public_pem.encode()
                if forge == "hs256-pem"
                else json.dumps(self.signing_key.jwk).encode()
            )
            header = {"alg": "HS256", "typ": "JWT", "kid": header_kid}
            signing_input = f"{_segment(header)}.{_segment(message)}"
            mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
            return f"{signing_input}.{_b64url(mac)}"
        elif forge is not None:
            raise ValueError(f"unknown forge {forge!r}")
        return Registration.encode_and_sign(message, signer.private_pem, headers={"kid": header_kid})

    # --- the browser: the form post ------------------------------------------------------------------

    def launch(self, passback_url: str, state: str | None, id_token: str | None, **form: str) -> requests.Response:
        """Form-post the authentication response to Passback's launch URL. `passback_url` is Passback's base URL
        or the full `redirect_uri` of the authentication request. The redirect is not followed."""
        target = passback_url if passback_url.rstrip("/").endswith("/lti/launch") else passback_url + "/lti/launch"
        data = {"state": state, "id_token": id_token, **form}
        body = {k: v for k, v in data.items() if v is not None}
        return self.browser.post(target, data=body, allow_redirects=False, timeout=10)
