"""POST /lti11/launch: LTI 1.1 launches, a thin view over gateway/services/lti11_launch.py."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app, redirect, request

from gateway.extensions import db
from gateway.lti.launch import error_page
from gateway.models import App
from gateway.services import lti11_launch, signin
from gateway.services.errors import ServiceError

log = logging.getLogger("passback.lti11")
lti11_bp = Blueprint("lti11", __name__, url_prefix="/lti11")


@lti11_bp.post("/launch")
def launch() -> Response:
    """Verify the signed form, record the launch, and sign the student into the app."""
    session = db.session()
    # The signature covers the URL the LMS posted to: Passback's public URL, not what a proxy forwarded.
    url = current_app.config["PASSBACK"].public_url.rstrip("/") + request.path
    if request.query_string:
        url += "?" + request.query_string.decode("latin-1")
    try:
        connection, settings = lti11_launch.verify_launch(
            session,
            current_app.extensions["passback_box"],
            url,
            request.get_data(as_text=True),
            request.content_type or "",
        )
        # Query parameters are signed too (the URL is in the base string): an LMS whose links cannot carry custom
        # parameters (Canvas 1.1 assignments) names the assignment as `?assignment=…` on the launch URL.
        params = {**request.args.to_dict(), **request.form.to_dict()}
        user, assignment, _placement = lti11_launch.record_launch(session, connection, settings, params)
        app = session.get(App, assignment.app_id)
        assert app is not None
        target = signin.sign_in_redirect(session, app, user.district_id, user.id, assignment.external_id)
    except ServiceError as exc:
        session.rollback()
        log.warning("LTI 1.1 launch refused: %s (consumer key %r)", exc.message, request.form.get("oauth_consumer_key"))
        status = 401 if exc.code == "invalid_signature" else exc.status
        return error_page(status, "This launch was refused", exc.message)
    session.commit()
    log.info("LTI 1.1 launch accepted: consumer %s, user %s", settings["consumer_key"], params.get("user_id"))
    return redirect(target, code=302)  # type: ignore[return-value]
