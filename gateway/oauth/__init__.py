"""POST /oauth/tokens: the authorization_code grant for the app sign-in, on authlib's authorization server.

Client authentication: HTTP Basic (client_secret_basic) or form fields (client_secret_post), as Clever's
partners send either. Codes come from the launch (gateway/services/signin.py), single-use and 60 s long.
"""

from __future__ import annotations

import hmac
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, grants
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from flask import Blueprint, Flask, Response, g, request
from sqlalchemy import select

from gateway.composition import services_of
from gateway.contract import CACHE_CONTROL, FORM, JSON, Reply, operation
from gateway.crypto import generate_token, hash_token
from gateway.extensions import current_services, request_unit_of_work
from gateway.models import App, AuthorizationCode, User
from gateway.services import signin
from schemas.base import load_strict_json
from schemas.oauth import OAuthErrorSchema, TokenRequestSchema, TokenSchema

oauth_bp = Blueprint("oauth", __name__, url_prefix="/oauth")


class AppClient(ClientMixin):
    """authlib's view of a learning app."""

    def __init__(self, app: App) -> None:
        self.app = app

    def get_client_id(self) -> str:
        return self.app.client_id

    def get_default_redirect_uri(self) -> str:
        return self.app.redirect_uri

    def get_allowed_scope(self, scope: str) -> str:
        return scope

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri == self.app.redirect_uri

    def check_client_secret(self, client_secret: str) -> bool:
        return hmac.compare_digest(hash_token(client_secret), self.app.client_secret_hash)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return endpoint == "token" and method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


class CodeRecord:
    """authlib's view of a stored authorization code."""

    def __init__(self, code: AuthorizationCode) -> None:
        self.code = code

    def get_redirect_uri(self) -> str:
        return self.code.redirect_uri

    def get_scope(self) -> str:
        return self.code.scope


class SignInCodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    def query_authorization_code(self, code: str, client: AppClient) -> CodeRecord | None:
        found = signin.find_code(_session(), code, client.app.id)
        if found is None and signin.revoke_if_reused(_session(), code, client.app.id):
            g.passback_code_reused = True  # the view keeps the revocation although the exchange fails
        return CodeRecord(found) if found else None

    def delete_authorization_code(self, authorization_code: CodeRecord) -> None:
        # Marked used (not deleted) in save_token, in the same transaction as the token it buys.
        return None

    def authenticate_user(self, authorization_code: CodeRecord) -> User | None:
        return _session().get(User, authorization_code.code.user_id)


def _session() -> Any:
    scoped = current_services().database.session
    assert scoped is not None
    return scoped()


def _query_client(client_id: str) -> AppClient | None:
    app = _session().scalar(select(App).where(App.client_id == client_id))
    return AppClient(app) if app else None


def _save_token(token: dict[str, Any], oauth_request: Any) -> None:
    """authlib generated the response; store what it gave out (hash only) and spend the code."""
    session = _session()
    code = signin.find_code(
        session, oauth_request.form.get("code") or oauth_request.data.get("code", ""), oauth_request.client.app.id
    )
    if code is None:  # pragma: no cover - authlib already checked it under the same lock
        raise RuntimeError("authorization code vanished during the exchange")
    issued = signin.redeem_code(session, code, raw_token=token["access_token"])
    token["scope"] = issued.token.scopes


def init_oauth(app: Flask) -> None:
    server = AuthorizationServer(app, query_client=_query_client, save_token=_save_token)
    server.register_token_generator(
        "default",
        BearerTokenGenerator(
            access_token_generator=lambda *_a, **_k: generate_token(),
            expires_generator=lambda *_a, **_k: signin.USER_TOKEN_SECONDS,
        ),
    )
    server.register_grant(SignInCodeGrant)
    services_of(app).oauth_server = server


@oauth_bp.post("/tokens")
@operation(
    "postTokens",
    tag="auth",
    summary="Exchange a sign-in code for a user token (OAuth 2.0 authorization_code grant)",
    description="Authenticate the app with HTTP Basic (client_secret_basic) or with client_id and client_secret "
    "in the body (client_secret_post). The body may be a form or JSON. Errors follow RFC 6749 §5.2.",
    body=TokenRequestSchema,
    body_media_types=(FORM, JSON),
    security=(("clientBasic",), ()),
    replies=Reply(200, "The user token.", TokenSchema, (CACHE_CONTROL,)),
    errors=(
        Reply(400, "The request or the code is not valid (RFC 6749 §5.2).", OAuthErrorSchema, (CACHE_CONTROL,)),
        Reply(401, "The app's credentials are not valid (invalid_client).", OAuthErrorSchema, (CACHE_CONTROL,)),
    ),
)
def tokens() -> Response:
    """Exchange a sign-in code for a user token; errors follow RFC 6749 §5.2."""
    server: AuthorizationServer = current_services().oauth_server
    if request.is_json:
        # Clever's partners often send JSON; authlib reads form fields, so present the JSON as a form.
        try:
            body = load_strict_json(request.get_data(cache=True))
        except ValueError:
            body = None  # authlib then answers invalid_request for the missing fields
        if isinstance(body, dict):
            request.form = request.parameter_storage_class(  # type: ignore[misc,assignment]
                {k: str(v) for k, v in body.items() if isinstance(v, str | int)}
            )
    response: Response = signin.exchange_code(
        request_unit_of_work(),
        server.create_token_response,
        lambda answer: answer.status_code == 200 or bool(g.get("passback_code_reused")),
    )
    response.headers["Cache-Control"] = "no-store"
    return response
