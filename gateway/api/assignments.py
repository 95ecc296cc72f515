"""The app's assignment catalog: GET/POST /v1/assignments, PUT/DELETE /v1/assignments/{id}."""

from __future__ import annotations

from flask import Response, current_app, jsonify, request

from gateway.api import api
from gateway.api.common import current_principal, json_object, load
from gateway.extensions import db
from gateway.models import TokenKind
from gateway.services.catalog import (
    archive_assignment,
    catalog_view,
    require_catalog_writer,
    upsert_assignments,
)
from schemas.assignments import (
    AssignmentFieldsSchema,
    AssignmentIdSchema,
    AssignmentSchema,
    BulkAssignmentsSchema,
    BulkResultSchema,
    CatalogQuerySchema,
    CatalogSchema,
)


@api.get("/assignments")
def get_catalog() -> Response:
    principal = current_principal()
    query = load(CatalogQuerySchema(), request.args.to_dict())
    # End the request's transaction first: a pull waits on the app, which may call back into /v1/me.
    db.session().commit()
    view = catalog_view(
        current_app.extensions["passback_db"],
        current_app.extensions["passback_http"],
        principal.app_id,
        principal.district_id,
        audience_user_id=principal.user_id if principal.kind == TokenKind.USER else None,
        cache_seconds=current_app.config["PASSBACK"].catalog_cache_seconds,
        include_archived=query["includeArchived"],
    )
    return jsonify(CatalogSchema().dump(view))


@api.post("/assignments")
def bulk_upsert() -> Response:
    principal = current_principal()
    require_catalog_writer(principal)
    data = load(BulkAssignmentsSchema(), json_object())
    session = db.session()
    result = upsert_assignments(session, principal.app_id, data["assignments"])
    payload = BulkResultSchema().dump(result)
    session.commit()
    return jsonify(payload)


@api.put("/assignments/<assignment_id>")
def put_assignment(assignment_id: str) -> Response:
    principal = current_principal()
    require_catalog_writer(principal)
    load(AssignmentIdSchema(), {"id": assignment_id})
    data = load(AssignmentFieldsSchema(), json_object())
    session = db.session()
    result = upsert_assignments(session, principal.app_id, [{**data, "id": assignment_id}])
    payload = AssignmentSchema().dump(result.assignments[0])
    session.commit()
    response = jsonify(payload)
    response.status_code = 201 if result.created else 200
    return response


@api.delete("/assignments/<assignment_id>")
def delete_assignment(assignment_id: str) -> Response:
    principal = current_principal()
    require_catalog_writer(principal)
    load(AssignmentIdSchema(), {"id": assignment_id})
    session = db.session()
    payload = AssignmentSchema().dump(archive_assignment(session, principal.app_id, assignment_id))
    session.commit()
    return jsonify(payload)
