"""The OpenAPI document at /openapi.json, built from the same marshmallow schemas the views use."""

from __future__ import annotations

from functools import cache
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Response, jsonify

from schemas.assignments import (
    AssignmentFieldsSchema,
    AssignmentSchema,
    BulkAssignmentsSchema,
    BulkResultSchema,
    CatalogSchema,
)
from schemas.errors import ErrorSchema
from schemas.grades import (
    BulkGradeRequestSchema,
    BulkGradeResponseSchema,
    GradeListResponseSchema,
    GradeRequestSchema,
    GradeResponseSchema,
    LmsValuesSchema,
)
from schemas.me import MeSchema
from schemas.placements import PlacementsRequestSchema, PlacementsResponseSchema

openapi_bp = Blueprint("openapi", __name__)

ERRORS = {
    "400": "Malformed JSON or bad request",
    "401": "Missing, invalid, expired or revoked bearer token",
    "403": "The token may not do this",
    "404": "Not found in this district and app",
    "409": "Conflict (an older timestamp, a reused Idempotency-Key)",
    "415": "Content-Type is not application/json",
    "422": "A field broke a rule; `fields` names each one",
}


def _errors(*codes: str) -> dict[str, Any]:
    return {code: {"description": ERRORS[code], "content": {"application/json": {"schema": "Error"}}} for code in codes}


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


@cache
def build_spec() -> dict[str, Any]:
    spec = APISpec(
        title="Passback",
        version="0.1.0",
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
        info={"description": "Grade passback gateway: apps post grades, Passback delivers them to the LMS."},
    )
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    for name, schema in [
        ("Error", ErrorSchema),
        ("GradeRequest", GradeRequestSchema),
        ("Grade", GradeResponseSchema),
        ("GradeList", GradeListResponseSchema),
        ("LmsValues", LmsValuesSchema),
        ("Assignment", AssignmentSchema),
        ("Catalog", CatalogSchema),
        ("AssignmentFields", AssignmentFieldsSchema),
        ("BulkAssignments", BulkAssignmentsSchema),
        ("BulkResult", BulkResultSchema),
        ("Me", MeSchema),
        ("BulkGradeRequest", BulkGradeRequestSchema),
        ("BulkGradeResponse", BulkGradeResponseSchema),
        ("PlacementsRequest", PlacementsRequestSchema),
        ("Placements", PlacementsResponseSchema),
    ]:
        spec.components.schema(name, schema=schema)
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    spec.path(
        path="/v1/grades",
        operations={
            "post": {
                "summary": "Post up to 1,000 grades; each entry is validated and stored on its own",
                "security": secured,
                "requestBody": {"required": True, "content": {"application/json": {"schema": "BulkGradeRequest"}}},
                "responses": {
                    "200": _json("BulkGradeResponse", "One result per entry: 202 accepted, or its own error"),
                    **_errors("400", "401", "403", "415", "422"),
                },
            }
        },
    )
    spec.path(
        path="/v1/placements",
        operations={
            "post": {
                "summary": "Place catalog assignments in LMS courses or sections (e.g. Schoology), all or none",
                "security": secured,
                "requestBody": {"required": True, "content": {"application/json": {"schema": "PlacementsRequest"}}},
                "responses": {
                    "201": _json("Placements", "At least one placement was created"),
                    "200": _json("Placements", "Every placement already existed"),
                    **_errors("400", "401", "403", "404", "409", "415", "422"),
                },
            }
        },
    )
    assignment_id = {"name": "assignment_id", "in": "path", "required": True, "schema": {"type": "string"}}
    spec.path(
        path="/v1/grade",
        operations={
            "post": {
                "summary": "Post a grade (percentage, or scoreGiven with scoreMaximum)",
                "security": secured,
                "parameters": [
                    {"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string"}}
                ],
                "requestBody": {"required": True, "content": {"application/json": {"schema": "GradeRequest"}}},
                "responses": {
                    "202": _json("Grade", "Accepted and stored; delivery follows. Location: the status URL."),
                    **_errors("400", "401", "403", "404", "409", "415", "422"),
                },
            }
        },
    )
    spec.path(
        path="/v1/grades/{grade_id}",
        operations={
            "get": {
                "summary": "A grade and the status of each of its deliveries",
                "security": secured,
                "parameters": [{"name": "grade_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _json("Grade", "The grade"), **_errors("401", "403", "404")},
            },
            "delete": {
                "summary": "Clear the grade in every LMS that supports deletion; a later post revives it",
                "security": secured,
                "parameters": [{"name": "grade_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"202": _json("Grade", "Deletion queued"), **_errors("401", "403", "404")},
            },
        },
    )
    spec.path(
        path="/v1/grades/{grade_id}/lms",
        operations={
            "get": {
                "summary": "What each LMS that received the grade holds now (LTI 1.1 readResult)",
                "security": secured,
                "parameters": [{"name": "grade_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _json("LmsValues", "One value or error per LMS"), **_errors("401", "404")},
            }
        },
    )
    spec.path(
        path="/v1/grades",
        operations={
            "get": {
                "summary": "Grades of this app in this district, filtered, cursor-paged",
                "security": secured,
                "parameters": [
                    {"name": n, "in": "query", "required": False, "schema": {"type": t}}
                    for n, t in [
                        ("assignmentID", "string"),
                        ("userID", "string"),
                        ("status", "string"),
                        ("limit", "integer"),
                        ("cursor", "string"),
                    ]
                ],
                "responses": {"200": _json("GradeList", "A page of grades"), **_errors("401", "422")},
            }
        },
    )
    spec.path(
        path="/v1/assignments",
        operations={
            "get": {
                "summary": "The app's catalog, in Clever's shape",
                "security": secured,
                "responses": {"200": _json("Catalog", "The catalog"), **_errors("401")},
            },
            "post": {
                "summary": "Create or update many assignments at once (all or nothing)",
                "security": secured,
                "requestBody": {"required": True, "content": {"application/json": {"schema": "BulkAssignments"}}},
                "responses": {"200": _json("BulkResult", "Upserted"), **_errors("400", "401", "403", "415", "422")},
            },
        },
    )
    spec.path(
        path="/v1/assignments/{assignment_id}",
        operations={
            "put": {
                "summary": "Create or update one assignment",
                "security": secured,
                "parameters": [assignment_id],
                "requestBody": {"required": True, "content": {"application/json": {"schema": "AssignmentFields"}}},
                "responses": {
                    "200": _json("Assignment", "Updated"),
                    "201": _json("Assignment", "Created"),
                    **_errors("400", "401", "403", "415", "422"),
                },
            },
            "delete": {
                "summary": "Archive an assignment (its grades are kept)",
                "security": secured,
                "parameters": [assignment_id],
                "responses": {"200": _json("Assignment", "Archived"), **_errors("401", "403", "404", "422")},
            },
        },
    )
    spec.path(
        path="/v1/me",
        operations={
            "get": {
                "summary": "What this token is: district_app, student or teacher; its district and user",
                "security": secured,
                "responses": {"200": _json("Me", "The token's identity"), **_errors("401")},
            }
        },
    )
    return spec.to_dict()


@openapi_bp.get("/openapi.json")
def openapi_json() -> Response:
    return jsonify(build_spec())
