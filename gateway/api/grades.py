"""POST /v1/grade, GET /v1/grades/{id}, GET /v1/grades."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify, request, url_for
from marshmallow import fields

from gateway.api import api
from gateway.api.common import current_principal, json_object, load, load_body, load_query
from gateway.contract import IDEMPOTENT_REPLAYED, LOCATION, Reply, operation
from gateway.extensions import current_services, db, request_unit_of_work
from gateway.services import grade_intake, idempotency
from gateway.services.errors import InvalidInput, ServiceError
from gateway.services.grades import (
    get_grade,
    grade_views,
    list_grades,
)
from gateway.services.readback import read_back
from schemas.errors import ErrorSchema
from schemas.grades import (
    BulkGradeRequestSchema,
    BulkGradeResponseSchema,
    GradeListQuerySchema,
    GradeListResponseSchema,
    GradeRequestSchema,
    GradeResponseSchema,
    LmsValuesSchema,
)

# Built once: marshmallow schemas keep no per-call state, and building one per request shows in the bench.
grade_request = GradeRequestSchema()
grade_response = GradeResponseSchema()
bulk_response = BulkGradeResponseSchema()
GRADE_ID = {"grade_id": fields.String(metadata={"description": "The grade's id, as POST /v1/grade answered it."})}
# A thousand grades with comments do not fit the single-grade body limit.
MAX_BULK_BODY_BYTES = 4 * 1024 * 1024


@api.post("/grades")
@operation(
    "postGrades",
    tag="grades",
    summary="Post up to 1,000 grades; each entry is validated and stored on its own",
    description="The body may be up to 4 MiB. One bad entry refuses only itself: its result carries the status "
    "and error it would get alone, and the other entries are stored.",
    body=BulkGradeRequestSchema,
    max_body_bytes=MAX_BULK_BODY_BYTES,
    replies=Reply(200, "One result per entry: 202 accepted, or the entry's own status and error.", bulk_response),
    errors=(403,),
)
def post_grades() -> Response:
    """Up to 1,000 grades in one request, each validated and stored on its own; 200 with a result per entry."""
    envelope: dict[str, Any] = {}
    input_error: ServiceError | None = None
    try:
        envelope = load_body()
    except ServiceError as exc:
        input_error = exc
    principal = current_principal()  # a bad token answers 401 before a bad body answers 4xx, as /v1/grade
    if input_error is not None:
        raise input_error
    entries: list[tuple[int, Any]] = []
    for index, entry in enumerate(envelope["grades"]):
        try:
            if not isinstance(entry, dict):
                raise InvalidInput("each grade must be a JSON object", fields={"_schema": ["Must be an object."]})
            entries.append((index, load(grade_request, entry)))
        except ServiceError as exc:
            entries.append((index, exc))
    outcomes = grade_intake.post_grades(request_unit_of_work(), principal, entries)
    results: list[dict[str, Any]] = []
    for outcome in outcomes:
        if outcome.accepted is not None:
            grade = outcome.accepted.grade
            results.append(
                {
                    "index": outcome.index,
                    "status": 202,
                    "id": grade.id,
                    "revision": grade.revision,
                    "changed": outcome.accepted.changed,
                    "userID": grade.user_id,
                    "studentKey": outcome.accepted.student_key,
                }
            )
        else:
            assert outcome.error is not None
            error: dict[str, Any] = {"code": outcome.error.code, "message": outcome.error.message}
            if outcome.error.fields:
                error["fields"] = outcome.error.fields
            results.append({"index": outcome.index, "status": outcome.error.status, "error": error})
    accepted = sum(1 for r in results if r["status"] == 202)
    return jsonify(bulk_response.dump({"accepted": accepted, "rejected": len(results) - accepted, "results": results}))


@api.post("/grade")
@operation(
    "postGrade",
    tag="grades",
    summary="Post a grade: percentage, or scoreGiven with scoreMaximum",
    body=grade_request,
    # The answer to an Idempotency-Key is stored with the grade, in its transaction (grade_intake.post_grade).
    idempotency_in_view=True,
    replies=Reply(
        202,
        "Accepted and stored; delivery to each LMS follows. `Location` is the grade's status URL.",
        grade_response,
        headers=(LOCATION, IDEMPOTENT_REPLAYED),
    ),
    errors=(
        Reply(
            400,
            "Malformed JSON, a body that is not a JSON object, or not exactly one student key (code "
            "`student_key_invalid`; `fields` names them).",
            ErrorSchema,
        ),
        Reply(403, "The token may not do this (a missing scope; a user token naming another student).", ErrorSchema),
        Reply(
            404,
            "The student key names no user in this district (code `user_not_found`, `fields` names the key), the "
            "`lms` no connection (`lms_connection_not_found`), or the assignment is not in the catalog.",
            ErrorSchema,
        ),
        Reply(
            409,
            "A grade with a later or equal timestamp is stored, the Idempotency-Key was used for another request, "
            "or the student key names more than one user (code `student_key_ambiguous`: send userID).",
            ErrorSchema,
        ),
    ),
)
def post_grade() -> Response:
    # Parse and validate before the first query: on SQLite that query takes the write lock, so CPU work done
    # first shortens every other writer's wait. A bad token still answers 401 before a bad body answers 4xx.
    body: dict | None = None
    data: dict | None = None
    input_error: ServiceError | None = None
    try:
        body = json_object()
        data = load_body(body)
    except ServiceError as exc:
        input_error = exc
    principal = current_principal()
    if input_error is not None:
        raise input_error
    assert body is not None and data is not None
    key = request.headers.get("Idempotency-Key")
    idempotent = None
    if key is not None:
        idempotent = grade_intake.IdempotentRequest(
            idempotency.check_key(key),
            idempotency.fingerprint("POST", request.path, body, principal),
            current_services().settings.idempotency_ttl_seconds,
        )
    reply = grade_intake.post_grade(
        request_unit_of_work(),
        principal,
        data,
        lambda grade_id: url_for("api.get_grade_status", grade_id=grade_id),
        idempotent,
    )
    return _respond(reply.payload, reply.status, reply.location, replayed=reply.replayed)


def _respond(payload: dict, status: int, location: str | None, replayed: bool = False) -> Response:
    response = jsonify(payload)
    response.status_code = status
    if location:
        response.headers["Location"] = location
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@api.get("/grades/<grade_id>")
@operation(
    "getGrade",
    tag="grades",
    summary="A grade and the status of each of its deliveries",
    path=GRADE_ID,
    replies=Reply(200, "The grade.", grade_response),
    errors=(403,),
)
def get_grade_status(grade_id: str) -> Response:
    principal = current_principal()
    session = db.session()
    grade = get_grade(session, principal, grade_id)
    payload = grade_response.dump(grade_views(session, [grade])[0])
    session.commit()  # keeps authenticate's last-used touch of the token (teardown rolls back)
    return jsonify(payload)


@api.delete("/grades/<grade_id>")
@operation(
    "deleteGrade",
    tag="grades",
    summary="Clear the grade in every LMS that supports deletion; a later post revives it",
    path=GRADE_ID,
    replies=Reply(202, "Deletion queued. `Location` is the grade's status URL.", grade_response, (LOCATION,)),
    errors=(403,),
)
def delete_grade_everywhere(grade_id: str) -> Response:
    """Clear the grade in every LMS that supports deletion; 202, deletion follows."""
    principal = current_principal()
    deleted_id, view = grade_intake.delete_grade_everywhere(request_unit_of_work(), principal, grade_id)
    return _respond(grade_response.dump(view), 202, url_for("api.get_grade_status", grade_id=deleted_id))


@api.get("/grades/<grade_id>/lms")
@operation(
    "getGradeLms",
    tag="grades",
    summary="What each LMS that received the grade holds now (LTI 1.1 readResult, the sandbox; others say they cannot)",
    path=GRADE_ID,
    replies=Reply(200, "One value, or the reason it could not be read, per LMS.", LmsValuesSchema),
    errors=(403,),
)
def read_grade_from_lms(grade_id: str) -> Response:
    """What each LMS that received the grade holds now (LTI 1.1 readResult, the sandbox; others say they cannot)."""
    principal = current_principal()
    db.session().commit()  # the LMS calls below must not hold a transaction open
    services = current_services()
    values = read_back(services.database, services.box, services.adapters, services.clock, principal, grade_id)
    return jsonify(LmsValuesSchema().dump({"lms": values}))


@api.get("/grades")
@operation(
    "listGrades",
    tag="grades",
    summary="Grades of this app in this district, oldest first, filtered, cursor-paged",
    query=GradeListQuerySchema,
    replies=Reply(200, "A page of grades; `nextCursor` fetches the next one.", GradeListResponseSchema),
    errors=(
        Reply(400, "Two student keys, or lms without lmsUserID (code `student_key_invalid`).", ErrorSchema),
        403,
    ),
)
def list_grade_statuses() -> Response:
    principal = current_principal()
    query = load_query()
    session = db.session()
    page = list_grades(session, principal, query)
    payload = GradeListResponseSchema().dump(
        {"grades": grade_views(session, page.grades), "next_cursor": page.next_cursor}
    )
    session.commit()  # keeps authenticate's last-used touch of the token (teardown rolls back)
    return jsonify(payload)
