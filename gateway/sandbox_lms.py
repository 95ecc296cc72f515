"""The sandbox LMS's HTTP side: a tiny gradebook service mounted inside Passback at /sandbox-lms/<gradebook>.

It behaves like a small real LMS: bearer-secret auth, JSON only, its own status codes. The sandbox adapter
reaches it over HTTP exactly as the other adapters reach real LMSs.
"""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, jsonify, request
from sqlalchemy import select

from gateway.api.common import json_object, load
from gateway.errors import error_response
from gateway.extensions import current_services, db, request_unit_of_work
from gateway.models import LmsConnection
from gateway.services import sandbox_lms
from gateway.services.errors import NotFound, Unauthenticated
from gateway.services.lms import connection_settings
from schemas.sandbox import SandboxEntrySchema, SandboxFaultSchema, SandboxScoreSchema

sandbox_lms_bp = Blueprint("sandbox_lms", __name__, url_prefix="/sandbox-lms/<gradebook>")


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
        response = error_response(written.status, "injected_fault", written.message)
        if written.retry_after is not None:
            response.headers["Retry-After"] = str(written.retry_after)
        return response
    return jsonify({"entry": SandboxEntrySchema().dump(written)})


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
    """Rehearse failures: the next `fail_next` score writes answer `status` (optionally with Retry-After)."""
    _authorize(gradebook)
    data = load(SandboxFaultSchema(), json_object())
    fault = sandbox_lms.inject_fault(request_unit_of_work(), gradebook, **data)
    return jsonify({"fail_next": fault.remaining, "status": fault.status, "retry_after": fault.retry_after})
