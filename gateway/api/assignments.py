"""The app's assignment catalog: GET/POST /v1/assignments, PUT/DELETE /v1/assignments/{id}."""

from __future__ import annotations

from flask import Response, jsonify, request

from gateway.api import api
from gateway.api.common import current_principal, json_object, load
from gateway.extensions import db
from gateway.services.catalog import (
    CatalogView,
    archive_assignment,
    list_assignments,
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
    session = db.session()
    view = CatalogView(list_assignments(session, principal.app_id, include_archived=query["includeArchived"]))
    payload = CatalogSchema().dump(view)
    session.commit()
    return jsonify(payload)


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
