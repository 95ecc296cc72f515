"""LTI endpoints: the tool's JWKS and configuration now; launches, deep linking and LTI 1.1 as they land."""

from flask import Blueprint, Response, jsonify

from gateway.extensions import current_services
from gateway.services.keys import current_signing_key, published_jwks

lti_bp = Blueprint("lti", __name__, url_prefix="/lti")


@lti_bp.get("/jwks")
def jwks() -> Response:
    """Passback's public keys (current, and previous during a rotation), for platforms to verify us."""
    database = current_services().database
    with database.transaction() as session:
        body = published_jwks(session)
        if not body["keys"]:
            # First use: create the key so a platform fetching the JWKS right after setup finds one.
            current_signing_key(session, current_services().box)
            body = published_jwks(session)
    response = jsonify(body)
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


from gateway.lti import config, deep_linking, launch  # noqa: E402,F401  (views register on the blueprint)
