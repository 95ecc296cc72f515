"""POST /v1/placements: an app (or a district's script with the app's token) maps catalog assignments to LMS
courses or sections, e.g. Schoology sections and their assignments, in bulk."""

from __future__ import annotations

from flask import Response, jsonify

from gateway.api import api
from gateway.api.common import current_principal, load_body, load_query
from gateway.api.directory import USER_TOKEN_REFUSED
from gateway.contract import Reply, operation
from gateway.extensions import db, request_unit_of_work
from gateway.services import grade_intake
from gateway.services.app_directory import list_placements
from gateway.services.catalog import require_catalog_writer
from schemas.errors import ErrorSchema
from schemas.placements import (
    PlacementListQuerySchema,
    PlacementListResponseSchema,
    PlacementsRequestSchema,
    PlacementsResponseSchema,
)


@api.post("/placements")
@operation(
    "postPlacements",
    tag="placements",
    summary="Place catalog assignments in LMS courses or sections (e.g. Schoology), all or none",
    description="Needs the district-app token. Repeating a placement that exists returns it.",
    body=PlacementsRequestSchema,
    replies=(
        Reply(201, "At least one placement was created.", PlacementsResponseSchema),
        Reply(200, "Every placement already existed.", PlacementsResponseSchema),
    ),
    errors=(
        403,
        404,
        Reply(409, "The assignment is placed in that course already, in another way.", ErrorSchema),
    ),
)
def post_placements() -> Response:
    principal = current_principal()
    # Placing is catalog work: the district-app token may, a student's sign-in token may not.
    require_catalog_writer(principal)
    data = load_body()
    result = grade_intake.place_for_app(request_unit_of_work(), principal, data["placements"])
    payload = PlacementsResponseSchema().dump(result)
    response = jsonify(payload)
    response.status_code = 201 if result.created else 200
    return response


@api.get("/placements")
@operation(
    "listPlacements",
    tag="placements",
    summary="Where this app's assignments live in the district's LMSs, with their deliveries counted by status",
    query=PlacementListQuerySchema,
    replies=Reply(200, "A page of placements; `nextCursor` fetches the next one.", PlacementListResponseSchema),
    errors=(USER_TOKEN_REFUSED,),
)
def list_app_placements() -> Response:
    principal = current_principal()
    query = load_query()
    session = db.session()
    page = list_placements(session, principal, query)
    payload = PlacementListResponseSchema().dump({"placements": page.items, "next_cursor": page.next_cursor})
    session.commit()  # keeps authenticate's last-used touch of the token (teardown rolls back)
    return jsonify(payload)
