"""POST /lti11/launch: LTI 1.1 launches, a thin view over gateway/services/lti11_launch.py."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, redirect, request

from gateway.extensions import current_services, request_unit_of_work
from gateway.lti.launch import error_page
from gateway.services import launches
from gateway.services.errors import ServiceError

log = logging.getLogger("passback.lti11")
lti11_bp = Blueprint("lti11", __name__, url_prefix="/lti11")


@lti11_bp.post("/launch")
def launch() -> Response:
    """Verify the signed form, record the launch, and sign the student into the app."""
    # The signature covers the URL the LMS posted to: Passback's public URL, not what a proxy forwarded.
    url = current_services().settings.public_url.rstrip("/") + request.path
    if request.query_string:
        url += "?" + request.query_string.decode("latin-1")
    # Query parameters are signed too (the URL is in the base string): an LMS whose links cannot carry custom
    # parameters (Canvas 1.1 assignments) names the assignment as `?assignment=…` on the launch URL.
    params = {**request.args.to_dict(), **request.form.to_dict()}
    try:
        outcome = launches.launch_lti11(
            request_unit_of_work(),
            current_services().box,
            url,
            request.get_data(as_text=True),
            request.content_type or "",
            params,
        )
    except ServiceError as exc:
        log.warning("LTI 1.1 launch refused: %s (consumer key %r)", exc.message, request.form.get("oauth_consumer_key"))
        status = 401 if exc.code == "invalid_signature" else exc.status
        return error_page(status, "This launch was refused", exc.message)
    assert outcome.sign_in_url is not None
    log.info("LTI 1.1 launch accepted: %s", outcome.summary)
    return redirect(outcome.sign_in_url, code=302)  # type: ignore[return-value]
