"""The OpenAPI document is generated from the views' @operation declarations: it covers every /v1 rule and
/oauth/tokens, says what the drifted hand-written one left out, is valid OpenAPI 3.0, and a client generated
from it with openapi-python-client posts a grade to a live gateway and reads it back. The Swagger UI page and its
assets come from the gateway itself."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from openapi_spec_validator import validate

from gateway import contract
from gateway.openapi import build_spec, openapi_path
from gateway.worker import DeliveryWorker
from tests.conftest import LiveServer
from tests.factories import World

# Published operationIds: a generated client names its functions after them, so renaming one breaks clients.
OPERATION_IDS = {
    ("POST", "/v1/grade"): "postGrade",
    ("POST", "/v1/grades"): "postGrades",
    ("GET", "/v1/grades"): "listGrades",
    ("GET", "/v1/grades/{grade_id}"): "getGrade",
    ("DELETE", "/v1/grades/{grade_id}"): "deleteGrade",
    ("GET", "/v1/grades/{grade_id}/lms"): "getGradeLms",
    ("GET", "/v1/assignments"): "listAssignments",
    ("POST", "/v1/assignments"): "postAssignments",
    ("PUT", "/v1/assignments/{assignment_id}"): "putAssignment",
    ("DELETE", "/v1/assignments/{assignment_id}"): "deleteAssignment",
    ("GET", "/v1/me"): "getMe",
    ("POST", "/v1/placements"): "postPlacements",
    ("GET", "/v1/placements"): "listPlacements",
    ("GET", "/v1/users"): "listUsers",
    ("GET", "/v1/courses"): "listCourses",
    ("GET", "/v1/courses/{course_id}/enrollments"): "listCourseEnrollments",
    ("POST", "/oauth/tokens"): "postTokens",
    ("POST", "/v1/webhooks"): "postWebhooks",
    ("GET", "/v1/webhooks"): "listWebhooks",
    ("GET", "/v1/webhooks/{webhook_id}"): "getWebhook",
    ("PATCH", "/v1/webhooks/{webhook_id}"): "patchWebhook",
    ("DELETE", "/v1/webhooks/{webhook_id}"): "deleteWebhook",
    ("POST", "/v1/webhooks/{webhook_id}/rotate-secret"): "postWebhookRotateSecret",
}


def api_operations(app: Flask) -> set[tuple[str, str]]:
    """(method, path) of every /v1 rule and of the token endpoint, as app.url_map has them."""
    return {
        (method, openapi_path(rule))
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/v1/") or rule.rule == "/oauth/tokens"
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    }


def documented_operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, operations in document["paths"].items() for method in operations}


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, by_method in document["paths"].items():
        for method, operation in by_method.items():
            yield method.upper(), path, operation


@pytest.fixture
def document(live_server: LiveServer, http: Any) -> dict[str, Any]:
    response = http.get(live_server.url + "/openapi.json")
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    return response.json()


# --- completeness ------------------------------------------------------------------------------------------


def test_every_v1_rule_and_the_token_endpoint_are_in_the_document(app: Flask, document: dict[str, Any]) -> None:
    expected = api_operations(app)
    assert ("POST", "/oauth/tokens") in expected and ("POST", "/v1/grade") in expected

    assert expected - documented_operations(document) == set()
    assert documented_operations(document) == expected  # and nothing that is not served


def test_a_v1_view_without_a_declaration_is_reported_missing(app: Flask) -> None:
    app.add_url_rule("/v1/undeclared/<thing_id>", "undeclared", lambda thing_id: thing_id, methods=["GET", "POST"])

    missing = api_operations(app) - documented_operations(build_spec(app))

    assert missing == {("GET", "/v1/undeclared/{thing_id}"), ("POST", "/v1/undeclared/{thing_id}")}


def test_operation_ids_are_the_published_ones_and_follow_the_rule(document: dict[str, Any]) -> None:
    ids = {(method, path): operation["operationId"] for method, path, operation in operations(document)}

    assert ids == OPERATION_IDS
    assert all(re.fullmatch(r"(get|list|post|put|patch|delete)[A-Z][A-Za-z]*", i) for i in ids.values())


def test_the_document_is_valid_openapi(document: dict[str, Any]) -> None:
    validate(document)  # raises OpenAPIValidationError naming what is wrong


# --- what the hand-written document had lost ---------------------------------------------------------------


def _walk(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for child in value.values():
            yield from _walk(child)
    elif isinstance(value, list):
        for child in value:
            yield from _walk(child)


def _query(document: dict[str, Any], path: str, name: str) -> dict[str, Any]:
    parameters = document["paths"][path]["get"]["parameters"]
    return next(p["schema"] for p in parameters if p["in"] == "query" and p["name"] == name)


def test_tags_security_and_every_operation_says_who_may_call_it(document: dict[str, Any]) -> None:
    tags = [tag["name"] for tag in document["tags"]]
    assert tags == ["grades", "assignments", "placements", "directory", "auth", "webhooks"]
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": document["components"]["securitySchemes"]["bearer"]["description"],
    }
    for method, path, operation in operations(document):
        assert len(operation["tags"]) == 1 and operation["tags"][0] in tags, (method, path)
        expected = [{"clientBasic": []}, {}] if path == "/oauth/tokens" else [{"bearer": []}]
        assert operation["security"] == expected, (method, path)


def test_query_parameters_keep_their_types_enums_and_ranges(document: dict[str, Any]) -> None:
    assert _query(document, "/v1/assignments", "includeArchived") == {"type": "boolean", "default": False}
    assert _query(document, "/v1/grades", "limit") == {"type": "integer", "default": 50, "minimum": 1, "maximum": 500}
    status = _query(document, "/v1/grades", "status")
    assert status["type"] == "string" and "delivered" in status["enum"] and "superseded" not in status["enum"]
    assert _query(document, "/v1/grades", "assignmentID")["pattern"] == "^[A-Za-z0-9._-]{1,64}$"


def test_numbers_have_a_type_and_real_bounds(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    grade = schemas["GradeRequest"]["properties"]
    assert grade["scoreGiven"] == {"type": "number", "minimum": 0}
    assert grade["scoreMaximum"] == {"type": "number", "minimum": 0, "exclusiveMinimum": True}
    assert (grade["percentage"]["type"], grade["percentage"]["minimum"], grade["percentage"]["maximum"]) == (
        "number",
        0,
        1,
    )
    assert schemas["AssignmentFields"]["properties"]["scoreMaximum"] == {
        "type": "number",
        "minimum": 0,
        "maximum": 1_000_000,
        "exclusiveMinimum": True,
    }
    # Each entry of a bulk post is a GradeRequest, though the view loads it on its own.
    assert schemas["BulkGradeRequest"]["properties"]["grades"]["items"] == {"$ref": "#/components/schemas/GradeRequest"}
    for node in _walk(document):
        assert not {"x-minimum", "x-maximum"} & node.keys(), node
        if "minimum" in node or "maximum" in node:
            assert node.get("type") in ("number", "integer"), node


def test_response_headers_and_errors_are_documented(document: dict[str, Any]) -> None:
    accepted = document["paths"]["/v1/grade"]["post"]["responses"]["202"]
    assert set(accepted["headers"]) == {"Location", "Idempotent-Replayed", *EVERY_ANSWER}
    parameters = document["paths"]["/v1/grade"]["post"]["parameters"]
    assert [(p["in"], p["name"]) for p in parameters] == [("header", "Idempotency-Key"), ("header", "X-Request-Id")]
    assert "Location" in document["paths"]["/v1/grades/{grade_id}"]["delete"]["responses"]["202"]["headers"]
    for method, path, operation in operations(document):
        responses = operation["responses"]
        assert "Retry-After" in responses["503"]["headers"], (method, path)
        if "requestBody" in operation:
            assert "413" in responses, (method, path)
        if path.startswith("/v1/"):
            assert "WWW-Authenticate" in responses["401"]["headers"], (method, path)
    post_grade = document["paths"]["/v1/grade"]["post"]["responses"]
    assert {"400", "401", "403", "404", "409", "413", "415", "422", "503"} <= set(post_grade)
    assert "502" in document["paths"]["/v1/assignments"]["get"]["responses"]
    token = document["paths"]["/oauth/tokens"]["post"]
    assert set(token["requestBody"]["content"]) == {"application/x-www-form-urlencoded", "application/json"}
    assert token["responses"]["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/OAuthError"
    }


# --- conventions every operation follows (gateway/openapi.py adds them; none is declared per view) ------------

EVERY_ANSWER = {"X-Request-Id", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"}
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


def assert_conventions(method: str, path: str, operation: dict[str, Any]) -> None:
    """X-Request-Id and the rate-limit headers on every answer, the 429, and for a mutating /v1 operation the
    Idempotency-Key with its replay header on each success and its 409."""
    where = (method, path)
    parameters = {(p["in"], p["name"]): p for p in operation.get("parameters", [])}
    assert parameters[("header", "X-Request-Id")]["schema"] == {"type": "string", "minLength": 1, "maxLength": 128}
    responses = operation["responses"]
    assert "Retry-After" in responses["429"]["headers"], where
    for status, response in responses.items():
        assert set(response["headers"]) >= EVERY_ANSWER, (where, status)
    keyed = method in MUTATING and path.startswith("/v1/")
    assert (("header", "Idempotency-Key") in parameters) is keyed, where
    if keyed:
        assert parameters[("header", "Idempotency-Key")]["schema"]["maxLength"] == 255
        for status, response in responses.items():
            if status.startswith("2"):
                assert "Idempotent-Replayed" in response["headers"], (where, status)
        assert "Idempotency-Key" in responses["409"]["description"], where


def test_every_operation_documents_request_ids_rate_limits_and_idempotency_keys(document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        assert_conventions(method, path, operation)
    error = document["components"]["schemas"]["ErrorBody"]["properties"]
    assert error["requestId"]["type"] == "string"
    assert document["components"]["schemas"]["OAuthError"]["properties"]["requestId"]["type"] == "string"
    # An operation with a 409 of its own also names the key's.
    placements = document["paths"]["/v1/placements"]["post"]["responses"]["409"]["description"]
    assert placements.startswith("The assignment is placed") and "idempotency_key_reused" in placements


def test_an_operation_added_later_gets_the_conventions_without_declaring_them(app: Flask) -> None:
    @contract.operation(
        "patchWidget", tag="grades", summary="A made-up operation", replies=contract.Reply(200, "Changed.")
    )
    def patch_widget(widget_id: str) -> str:
        return widget_id

    @contract.operation("listWidgets", tag="grades", summary="A made-up list", replies=contract.Reply(200, "Listed."))
    def list_widgets() -> str:
        return "[]"

    app.add_url_rule("/v1/widgets/<widget_id>", "patch_widget", patch_widget, methods=["PATCH"])
    app.add_url_rule("/v1/widgets", "list_widgets", list_widgets, methods=["GET"])
    document = build_spec(app)

    patch = document["paths"]["/v1/widgets/{widget_id}"]["patch"]
    assert_conventions("PATCH", "/v1/widgets/{widget_id}", patch)
    assert ("header", "Idempotency-Key") in {(p["in"], p["name"]) for p in patch["parameters"]}
    assert {"200", "409", "429"} <= set(patch["responses"])
    listed = document["paths"]["/v1/widgets"]["get"]
    assert_conventions("GET", "/v1/widgets", listed)
    assert "409" not in listed["responses"]


def test_what_a_webhook_endpoint_receives_is_documented(document: dict[str, Any]) -> None:
    callbacks = document["paths"]["/v1/webhooks"]["post"]["callbacks"]
    sent = callbacks["gradeEvent"]["{$request.body#/url}"]["post"]
    assert sent["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/WebhookEvent"}
    headers = {p["name"]: p["required"] for p in sent["parameters"] if p["in"] == "header"}
    assert headers == {"webhook-id": True, "webhook-timestamp": True, "webhook-signature": True}
    assert set(sent["responses"]) == {"2XX"}
    schemas = document["components"]["schemas"]
    event = schemas["WebhookEvent"]["properties"]
    assert set(event) == {"type", "timestamp", "data"}
    assert {"grade.delivered", "grade.lms_changed"} <= set(event["type"]["enum"])
    data = schemas["WebhookGradeData"]["properties"]
    assert {"gradeID", "revision", "assignmentID", "userID", "studentKey", "destination", "status", "reason"} <= set(
        data
    )
    assert "secret" in schemas["WebhookWithSecret"]["properties"]
    assert "secret" not in schemas["Webhook"]["properties"]


# --- a generated client ------------------------------------------------------------------------------------


@pytest.fixture
def generated_client(world: World, tmp_path: Any) -> Iterator[str]:
    """openapi-python-client's package for the served document (no post-hooks), importable; its name."""
    package = f"passback_client_{uuid.uuid4().hex[:8]}"
    spec = tmp_path / "openapi.json"
    spec.write_text(world.http.get(world.url("/openapi.json")).text)
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"package_name_override": package, "post_hooks": []}))  # JSON is YAML
    command = [sys.executable, "-m", "openapi_python_client", "generate", "--path", str(spec), "--meta", "none"]
    command += ["--config", str(config), "--output-path", str(tmp_path / package), "--fail-on-warning"]
    generated = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert generated.returncode == 0, generated.stdout + generated.stderr
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    try:
        yield package
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == package or m.startswith(f"{package}.")]:
            del sys.modules[name]


@pytest.mark.slow
def test_a_generated_client_posts_a_grade_and_reads_it_back(
    world: World, worker: DeliveryWorker, generated_client: str
) -> None:
    client_module = importlib.import_module(f"{generated_client}.client")
    models = importlib.import_module(f"{generated_client}.models")
    post_grade = importlib.import_module(f"{generated_client}.api.grades.post_grade")
    get_grade = importlib.import_module(f"{generated_client}.api.grades.get_grade")
    list_grades = importlib.import_module(f"{generated_client}.api.grades.list_grades")
    body = models.GradeRequest(assignment_id="quiz-1", user_id=world.students[0], score_given=8, score_maximum=10)

    with client_module.AuthenticatedClient(base_url=world.base_url, token=world.token) as client:
        posted = post_grade.sync_detailed(client=client, body=body, idempotency_key="client-test-1")
        assert posted.status_code == 202, posted.content
        grade = posted.parsed
        assert isinstance(grade, models.GradeResponse)
        assert posted.headers["Location"] == f"/v1/grades/{grade.id}"
        assert grade.normalized.fraction == 0.8

        replayed = post_grade.sync_detailed(client=client, body=body, idempotency_key="client-test-1")
        assert replayed.status_code == 202 and replayed.headers["Idempotent-Replayed"] == "true"

        worker.run_until_idle()
        read = get_grade.sync(grade_id=grade.id, client=client)
        assert isinstance(read, models.GradeResponse)
        assert (read.id, read.score_given, read.score_maximum, read.user_id) == (grade.id, 8, 10, world.students[0])
        assert [d.status for d in read.deliveries] == [models.DeliveryStatusStatus.DELIVERED]
        assert isinstance(read.deliveries[0].placement, models.PlacementRef)

        page = list_grades.sync(client=client, status=models.ListGradesStatus.DELIVERED, limit=10)
        assert isinstance(page, models.GradeListResponse) and [g.id for g in page.grades] == [grade.id]

        refused = post_grade.sync_detailed(
            client=client, body=models.GradeRequest(assignment_id="quiz-1", user_id=world.students[0], percentage=80)
        )
        assert refused.status_code == 422 and isinstance(refused.parsed, models.Error)
        assert refused.parsed.error.code == "invalid_input"
    assert world.gradebook()[0]["scoreGiven"] == 8.0


# --- the page for people -----------------------------------------------------------------------------------

CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}


def test_the_api_docs_page_and_its_assets_come_from_the_gateway(world: World) -> None:
    page = world.http.get(world.url("/api-docs"))

    assert page.status_code == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert not re.search(r"(https?:)?//", page.text), "the page names another host"
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and re.search(r"script-src 'self' 'nonce-[^']+';", csp)
    linked = re.findall(r'(?:src|href|data-spec-url)="([^"]+)"', page.text)
    assert len(linked) == 5, linked  # favicon, stylesheet, two scripts, the document
    for url in linked:
        assert url.startswith("/"), url
        asset = world.http.get(world.url(url))
        assert asset.status_code == 200, url
        suffix = url[url.rfind(".") :]
        assert asset.headers["Content-Type"].split(";")[0] == CONTENT_TYPES[suffix], url
        assert asset.headers["X-Content-Type-Options"] == "nosniff"
    initializer = world.http.get(world.url("/static/api-docs.js")).text
    assert not re.search(r"https?://", initializer)


def test_only_swagger_ui_files_are_served_from_its_package(world: World) -> None:
    for name in ("index.html", "swagger-initializer.js", "..%2F__init__.py", "oauth2-redirect.html"):
        response = world.http.get(world.url(f"/api-docs/assets/{name}"))
        assert response.status_code == 404, name
        assert response.json()["error"]["code"] == "not_found"
