"""The app's assignment catalog: GET/POST /v1/assignments, PUT/DELETE /v1/assignments/{id}."""

from __future__ import annotations

from flask import Response, current_app, jsonify

from gateway.api import api
from gateway.api.common import current_principal, load, load_body, load_query
from gateway.contract import Reply, operation
from gateway.extensions import current_services, db, request_unit_of_work
from gateway.models import TokenKind
from gateway.services.catalog import archive, catalog_view, require_catalog_writer, save_assignments
from schemas.assignments import (
    AssignmentFieldsSchema,
    AssignmentIdSchema,
    AssignmentSchema,
    BulkAssignmentsSchema,
    BulkResultSchema,
    CatalogQuerySchema,
    CatalogSchema,
)

ASSIGNMENT_ID = {"assignment_id": AssignmentIdSchema().fields["id"]}


@api.get("/assignments")
@operation(
    "listAssignments",
    tag="assignments",
    summary="The app's catalog, in Clever's shape",
    description="For an app with a catalog URL, a pull of it (cached); when a pull fails, the last good copy "
    "with `stale: true`.",
    query=CatalogQuerySchema,
    replies=Reply(200, "The catalog.", CatalogSchema),
    errors=(502,),
)
def get_catalog() -> Response:
    principal = current_principal()
    query = load_query()
    db.session().commit()  # end the request's transaction: a pull waits on the app, which may call /v1/me
    view = catalog_view(
        current_services().database,
        current_services().http,
        principal.app_id,
        principal.district_id,
        audience_user_id=principal.user_id if principal.kind == TokenKind.USER else None,
        cache_seconds=current_app.config["PASSBACK"].catalog_cache_seconds,
        include_archived=query["includeArchived"],
    )
    return jsonify(CatalogSchema().dump(view))


@api.post("/assignments")
@operation(
    "postAssignments",
    tag="assignments",
    summary="Create or update up to 1,000 assignments at once, all or nothing",
    body=BulkAssignmentsSchema,
    replies=Reply(200, "Created and updated.", BulkResultSchema),
    errors=(403,),
)
def bulk_upsert() -> Response:
    principal = current_principal()
    require_catalog_writer(principal)
    data = load_body()
    result = save_assignments(request_unit_of_work(), principal.app_id, data["assignments"])
    return jsonify(BulkResultSchema().dump(result))


@api.put("/assignments/<assignment_id>")
@operation(
    "putAssignment",
    tag="assignments",
    summary="Create or update one assignment",
    path=ASSIGNMENT_ID,
    body=AssignmentFieldsSchema,
    replies=(Reply(200, "Updated.", AssignmentSchema), Reply(201, "Created.", AssignmentSchema)),
    errors=(403,),
)
def put_assignment(assignment_id: str) -> Response:
    principal = current_principal()
    require_catalog_writer(principal)
    load(AssignmentIdSchema(), {"id": assignment_id})
    data = load_body()
    result = save_assignments(request_unit_of_work(), principal.app_id, [{**data, "id": assignment_id}])
    response = jsonify(AssignmentSchema().dump(result.assignments[0]))
    response.status_code = 201 if result.created else 200
    return response


@api.delete("/assignments/<assignment_id>")
@operation(
    "deleteAssignment",
    tag="assignments",
    summary="Archive an assignment: hidden from pickers; its grades and placements are kept",
    path=ASSIGNMENT_ID,
    replies=Reply(200, "Archived.", AssignmentSchema),
    errors=(403, 404),
)
def delete_assignment(assignment_id: str) -> Response:
    principal = current_principal()
    require_catalog_writer(principal)
    load(AssignmentIdSchema(), {"id": assignment_id})
    return jsonify(AssignmentSchema().dump(archive(request_unit_of_work(), principal.app_id, assignment_id)))
