"""LTI 1.3 login and launch endpoints: thin views over gateway/services/lti13_launch.py."""

from __future__ import annotations

import logging

from flask import Response, current_app, redirect, request, url_for
from markupsafe import escape
from werkzeug.exceptions import HTTPException

from gateway.errors import database_trouble_answer
from gateway.extensions import current_services, request_unit_of_work
from gateway.lti import lti_bp
from gateway.security_headers import ANY_FRAMER, allow_framing_by
from gateway.services import launches, lti13_launch
from gateway.services.errors import ServiceError

log = logging.getLogger("passback.lti")


def error_page(status: int, title: str, message: str) -> Response:
    """A small HTML page for the person in the LMS frame; never echoes the token."""
    allow_framing_by(ANY_FRAMER)
    body = (
        f"<!doctype html><html lang=en><meta charset=utf-8><title>Passback: {escape(title)}</title>"
        "<main style='font-family:system-ui;max-width:40rem;margin:2rem auto'>"
        f"<h1>{escape(title)}</h1><p>{escape(message)}</p>"
        "<p>If this keeps happening, show this page to your LMS administrator.</p></main>"
    )
    return Response(body, status=status, content_type="text/html; charset=utf-8")


def _keys() -> lti13_launch.PlatformKeys:
    return current_services().platform_keys


def launch_url() -> str:
    return current_app.config["PASSBACK"].public_url.rstrip("/") + "/lti/launch"


@lti_bp.route("/login", methods=["GET", "POST"])
def login() -> Response:
    """OIDC third-party initiated login: remember state and nonce, send the browser to the platform."""
    params = {k: v for k, v in request.values.items() if isinstance(v, str)}
    try:
        target = launches.begin_login(request_unit_of_work(), current_services().box, params, launch_url())
    except ServiceError as exc:
        log.warning("LTI login refused: %s (iss=%r)", exc.message, params.get("iss"))
        return error_page(exc.status, "This launch could not start", exc.message)
    return redirect(target, code=302)  # type: ignore[return-value]


@lti_bp.post("/launch")
def launch() -> Response:
    """Validate the id_token; a resource link launch then signs the student into the app, a deep linking
    request opens the assignment picker."""
    if request.form.get("error"):
        # Platforms post an OIDC error instead of a token when they refuse the login (Moodle: mod/lti/auth.php).
        message = f"{request.form.get('error')}: {request.form.get('error_description', '')}".strip(": ")
        log.warning("LTI platform answered the login with an error: %s", message)
        return error_page(400, "Your LMS refused the launch", message)
    try:
        outcome = launches.launch_lti13(
            request_unit_of_work(),
            current_services().box,
            _keys(),
            request.form.get("id_token", ""),
            request.form.get("state", ""),
            launch_url(),
        )
    except ServiceError as exc:
        log.warning("LTI launch refused: %s", exc.message)
        return error_page(exc.status, "This launch was refused", exc.message)
    if outcome.picker_id is not None:
        return redirect(url_for("lti.picker", picker_id=outcome.picker_id), code=303)  # type: ignore[return-value]
    assert outcome.sign_in_url is not None
    log.info("LTI launch accepted: %s", outcome.summary)
    return redirect(outcome.sign_in_url, code=302)  # type: ignore[return-value]


@lti_bp.errorhandler(Exception)
def unexpected_error_page(exc: Exception) -> Response:
    """People reach these endpoints in a browser frame: an unexpected error is a page too, and logged."""
    if isinstance(exc, HTTPException):
        return error_page(exc.code or 500, exc.name, exc.description or exc.name)
    if isinstance(exc, ServiceError):
        return error_page(exc.status, "Passback could not do this", exc.message)
    trouble = database_trouble_answer(exc)
    if trouble is not None:
        response = error_page(503, "Passback could not reach its database", "Please try the link again shortly.")
        response.headers["Retry-After"] = str(trouble.retry_after_seconds)
        return response
    log.exception("unexpected error in an LTI endpoint")
    return error_page(500, "Passback hit an unexpected error", "It has been logged; please try the link again.")
