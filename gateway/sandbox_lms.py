"""The sandbox LMS's HTTP side: a tiny gradebook service mounted inside Passback at /sandbox-lms/<gradebook>.

It behaves like a small real LMS: bearer-secret auth, JSON only, its own status codes. The sandbox adapter
reaches it over HTTP exactly as the other adapters reach real LMSs.
"""

from __future__ import annotations

import hmac
import re
import time

from flask import Blueprint, Response, current_app, jsonify, render_template, request
from sqlalchemy import select

from gateway.api.common import json_object, load
from gateway.errors import error_response
from gateway.extensions import current_services, db, request_unit_of_work
from gateway.models import LmsConnection
from gateway.services import sandbox_lms
from gateway.services.directory import student_key_of
from gateway.services.errors import NotFound, Unauthenticated
from gateway.services.lms import connection_settings
from schemas.sandbox import (
    SandboxEntrySchema,
    SandboxFaultSchema,
    SandboxFaultStateSchema,
    SandboxLaunchResultSchema,
    SandboxLaunchSchema,
    SandboxScoreSchema,
)

sandbox_lms_bp = Blueprint("sandbox_lms", __name__, url_prefix="/sandbox-lms/<gradebook>")
# The demo app's default redirect URI: a page that shows what a sign-in sent, until an app of one's own answers.
demo_bp = Blueprint("demo", __name__, url_prefix="/demo")
PLAIN_CODE = re.compile(r"[A-Za-z0-9_-]{1,200}")


def _authorize(gradebook: str) -> None:
    """The gradebook is the sandbox connection's id; its settings hold the shared secret."""
    connection = db.session().scalar(
        select(LmsConnection).where(LmsConnection.id == gradebook, LmsConnection.adapter == "sandbox")
    )
    if connection is None:
        raise NotFound("no such sandbox gradebook")
    expected = connection_settings(current_services().box, connection)["secret"]
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), expected.encode()):
        raise Unauthenticated("sandbox LMS: bad or missing bearer secret", code="invalid_token")


@sandbox_lms_bp.get("/health")
def health(gradebook: str) -> Response:
    _authorize(gradebook)
    return jsonify({"ok": True})


@sandbox_lms_bp.put("/courses/<course_id>/items/<item_id>/scores/<student_id>")
def put_score(gradebook: str, course_id: str, item_id: str, student_id: str) -> Response:
    _authorize(gradebook)
    written = sandbox_lms.put_score(
        request_unit_of_work(),
        gradebook,
        course_id,
        item_id,
        student_id,
        lambda: load(SandboxScoreSchema(), json_object()),
    )
    if isinstance(written, sandbox_lms.InjectedFault):
        if written.hang_seconds:
            time.sleep(written.hang_seconds)  # an LMS that hangs; the fault is committed, no transaction is held
        response = error_response(written.status, "injected_fault", written.message)
        if written.retry_after is not None:
            response.headers["Retry-After"] = str(written.retry_after)
        return response
    return jsonify({"entry": SandboxEntrySchema().dump(written)})


@sandbox_lms_bp.get("/courses/<course_id>/items/<item_id>/scores/<student_id>")
def get_score(gradebook: str, course_id: str, item_id: str, student_id: str) -> Response:
    """What the gradebook holds for the student on the item: the entry, or null (read-back asks this)."""
    _authorize(gradebook)
    entry = sandbox_lms.read_entry(db.session(), gradebook, course_id, item_id, student_id)
    return jsonify({"entry": SandboxEntrySchema().dump(entry) if entry is not None else None})


@sandbox_lms_bp.delete("/courses/<course_id>/items/<item_id>/scores/<student_id>")
def delete_score(gradebook: str, course_id: str, item_id: str, student_id: str) -> Response:
    _authorize(gradebook)
    removed = sandbox_lms.remove_score(request_unit_of_work(), gradebook, course_id, item_id, student_id)
    return jsonify({"removed": removed})


@sandbox_lms_bp.get("/gradebook")
def get_gradebook(gradebook: str) -> Response:
    _authorize(gradebook)
    entries = sandbox_lms.gradebook_entries(db.session(), gradebook, request.args.get("course"))
    return jsonify({"entries": SandboxEntrySchema(many=True).dump(entries)})


@sandbox_lms_bp.post("/faults")
def post_fault(gradebook: str) -> Response:
    """Rehearse failures: the next `fail_next` score writes answer `status` (optionally with Retry-After, or after
    hanging `hang_seconds`); `fail_next: 0` clears them."""
    _authorize(gradebook)
    data = load(SandboxFaultSchema(), json_object())
    fault = sandbox_lms.inject_fault(request_unit_of_work(), gradebook, **data)
    return jsonify(SandboxFaultStateSchema().dump(fault))


@sandbox_lms_bp.post("/launches")
def post_launch(gradebook: str) -> Response:
    """A student opens an assignment's link in the sandbox LMS: the answer's `redirect` is where the browser goes
    next, the app's redirect URI with a sign-in `code` and `state=assignment:{assignmentID}`."""
    _authorize(gradebook)
    data = load(SandboxLaunchSchema(), json_object())
    launched = sandbox_lms.launch(
        request_unit_of_work(),
        current_services().box,
        gradebook,
        student_key_of(data),
        data["assignmentID"],
        app=data["app"],
        course=data["courseID"],
    )
    return jsonify(SandboxLaunchResultSchema().dump(launched))


@demo_bp.get("/callback")
def demo_callback() -> Response:
    """The demo app's default redirect URI: shows the code and state a sign-in sent and how to exchange the code
    (the page holds no secret; the app's client secret is printed by `gateway demo`)."""
    public_url = current_app.config["PASSBACK"].public_url.rstrip("/")
    code = request.args.get("code", "")
    html = render_template(
        "sandbox/callback.html",
        code=code,
        # A command to copy into a shell only for a code shaped as Passback mints them (a link could carry any).
        shell_safe=PLAIN_CODE.fullmatch(code) is not None,
        state=request.args.get("state", ""),
        scopes=request.args.get("scopes", ""),
        redirect_uri=f"{public_url}/demo/callback",
        token_url=f"{public_url}/oauth/tokens",
    )
    return Response(html, content_type="text/html; charset=utf-8")
