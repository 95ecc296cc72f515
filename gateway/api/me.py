"""GET /v1/me: what a token is (district_app, student, teacher), its district and user."""

from __future__ import annotations

from flask import Response, jsonify

from gateway.api import api
from gateway.api.common import current_principal
from gateway.extensions import db
from schemas.me import MeSchema


@api.get("/me")
def get_me() -> Response:
    principal = current_principal()
    db.session().commit()
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
