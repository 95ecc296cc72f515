"""GET /lti/config/<connection>: the tool configuration an admin pastes into the LMS (Canvas developer-key
JSON shape; the same URLs serve Moodle, Schoology, D2L and Blackboard, whose forms ask for them one by one)."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Response, current_app, jsonify
from sqlalchemy import select

from adapters.lti13_ags import SCOPE_LINEITEM, SCOPE_LINEITEM_READONLY, SCOPE_NRPS, SCOPE_RESULT_READONLY, SCOPE_SCORE
from gateway.extensions import db
from gateway.lti import lti_bp
from gateway.models import LmsConnection
from gateway.services.errors import NotFound


def tool_configuration(public_url: str) -> dict[str, object]:
    base = public_url.rstrip("/")
    launch = f"{base}/lti/launch"
    return {
        "title": "Passback",
        "description": "Grade passback: learning apps' assignments and grades, delivered to this gradebook.",
        "oidc_initiation_url": f"{base}/lti/login",
        "target_link_uri": launch,
        "public_jwk_url": f"{base}/lti/jwks",
        "scopes": [SCOPE_LINEITEM, SCOPE_LINEITEM_READONLY, SCOPE_RESULT_READONLY, SCOPE_SCORE, SCOPE_NRPS],
        "extensions": [
            {
                "platform": "canvas.instructure.com",
                "privacy_level": "public",
                "domain": urlsplit(base).netloc,
                "settings": {
                    "text": "Passback",
                    "placements": [
                        {
                            "placement": "assignment_selection",
                            "message_type": "LtiDeepLinkingRequest",
                            "target_link_uri": launch,
                            "text": "Passback assignment",
                        },
                        {
                            "placement": "link_selection",
                            "message_type": "LtiDeepLinkingRequest",
                            "target_link_uri": launch,
                            "text": "Passback assignment",
                        },
                    ],
                },
            }
        ],
        "custom_fields": {},
        # Not part of Canvas's JSON: the values other LMSs' forms ask for, and Canvas's "Redirect URIs" field.
        "redirect_uris": [launch],
        "login_url": f"{base}/lti/login",
        "jwks_url": f"{base}/lti/jwks",
    }


@lti_bp.get("/config/<connection_id>")
def config(connection_id: str) -> Response:
    connection = db.session().scalar(
        select(LmsConnection.id).where(LmsConnection.id == connection_id, LmsConnection.adapter == "lti13")
    )
    if connection is None:
        raise NotFound("no LTI 1.3 connection with this id")
    return jsonify(tool_configuration(current_app.config["PASSBACK"].public_url))
