"""POST /oauth/tokens, for the document only: authlib's authorization server reads and checks these fields
(RFC 6749 §4.1.3 and §5), so no view loads them with these schemas."""

from __future__ import annotations

from marshmallow import Schema, fields, validate


class TokenRequestSchema(Schema):
    grant_type = fields.String(required=True, validate=validate.OneOf(["authorization_code"]))
    code = fields.String(required=True, metadata={"description": "The sign-in code; single use, valid 60 s."})
    redirect_uri = fields.String(metadata={"description": "The redirect URI the code was sent to, when it had one."})
    client_id = fields.String(metadata={"description": "With client_secret_post, instead of HTTP Basic."})
    client_secret = fields.String(metadata={"description": "With client_secret_post, instead of HTTP Basic."})


class TokenSchema(Schema):
    access_token = fields.String(required=True, metadata={"description": "A user token: send it as a Bearer."})
    token_type = fields.String(required=True, metadata={"enum": ["Bearer"]})
    expires_in = fields.Integer(metadata={"description": "Seconds until the token expires."})
    scope = fields.String(metadata={"description": "The token's scopes, separated by spaces."})


class OAuthErrorSchema(Schema):
    """RFC 6749 §5.2, not Passback's error shape: OAuth clients expect this one."""

    error = fields.String(
        required=True,
        metadata={
            "enum": [
                "invalid_request",
                "invalid_client",
                "invalid_grant",
                "unauthorized_client",
                "unsupported_grant_type",
                "invalid_scope",
            ]
        },
    )
    error_description = fields.String()
    request_id = fields.String(
        data_key="requestId",
        metadata={"description": "The answer's X-Request-Id (a member RFC 6749 leaves to the server)."},
    )
