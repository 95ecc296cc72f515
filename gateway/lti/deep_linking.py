"""The assignment picker pages: thin views over gateway/services/deep_linking.py."""

from __future__ import annotations

from flask import Response, current_app, render_template, request

from gateway.extensions import current_services, request_unit_of_work
from gateway.lti import lti_bp
from gateway.lti.launch import error_page, launch_url
from gateway.security_headers import allow_form_action, allow_framing_by, origin_of
from gateway.services import deep_linking, launches
from gateway.services.errors import InvalidInput, ServiceError


def _picker_page(picker_id: str, query: str, error: str | None = None, status: int = 200) -> Response:
    database = current_services().database
    apps = deep_linking.picker_catalogs(
        database,
        current_services().http,
        picker_id,
        query,
        cache_seconds=current_app.config["PASSBACK"].catalog_cache_seconds,
    )
    with database.transaction() as session:
        multiple = deep_linking.live_picker(session, picker_id).accept_multiple
        allow_framing_by(deep_linking.platform_origins(session, current_services().box, picker_id))
    html = render_template("lti/picker.html", apps=apps, query=query, multiple=multiple, error=error)
    return Response(html, status=status, content_type="text/html; charset=utf-8")


@lti_bp.get("/picker/<picker_id>")
def picker(picker_id: str) -> Response:
    try:
        return _picker_page(picker_id, request.args.get("q", "")[:200])
    except ServiceError as exc:
        return error_page(exc.status, "The assignment picker is closed", exc.message)


@lti_bp.post("/picker/<picker_id>")
def pick(picker_id: str) -> Response:
    try:
        answer = launches.answer_picker(
            request_unit_of_work(),
            current_services().box,
            picker_id,
            request.form.getlist("assignment"),
            launch_url(),
        )
    except InvalidInput as exc:
        return _picker_page(picker_id, "", error=exc.message, status=422)
    except ServiceError as exc:
        return error_page(exc.status, "The assignment picker is closed", exc.message)
    allow_framing_by(answer.origins)
    # The platform's hosts too: Chrome checks form-action on the redirects that follow the post.
    allow_form_action(origin_of(answer.return_url), *answer.origins)
    html = render_template("lti/post_to_platform.html", return_url=answer.return_url, jwt=answer.token)
    return Response(html, content_type="text/html; charset=utf-8")
