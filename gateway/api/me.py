"""GET /v1/me: what a token is (district_app, student, teacher), its district and user."""

from __future__ import annotations

from flask import Response, jsonify

from gateway.api import api
from gateway.api.common import current_principal
from gateway.contract import Reply, operation
from gateway.extensions import db
from schemas.me import MeSchema


@api.get("/me")
@operation(
    "getMe",
    tag="auth",
    summary="What this token is: district_app, student or teacher; its district, app, user and scopes",
    replies=Reply(200, "The token's identity, in the shape of Clever's /me.", MeSchema),
)
def get_me() -> Response:
    principal = current_principal()
    db.session().commit()  # keeps authenticate's last-used touch of the token (teardown rolls back)
    payload = MeSchema().dump(
        {
            "type": principal.me_type,
            "data": {
                "id": principal.user_id,
                "district": principal.district_id,
                "app": principal.app_id,
                "type": principal.me_type,
                "scopes": sorted(principal.scopes),
            },
        }
    )
    return jsonify(payload)
