"""The operator's administration commands (`gateway … list|show|update|remove`, `gateway retry`) through click's
CliRunner against the test database: answers, JSON shapes, refusals as JSON with their exit codes, district
scoping, audit rows naming the operator, and secrets never printed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from adapters.sandbox import SandboxAdapter
from gateway.cli import main
from gateway.composition import services_of
from gateway.models import ApiToken, AuditEntry, Delivery, DeliveryStatus, LmsConnection, Placement, StaffUser
from gateway.services.lms import connection_settings
from gateway.worker import DeliveryWorker
from tests.factories import World, build_world
from tests.integration.test_dashboard import signed_in


def invoke(runner: CliRunner, *args: str, input: str | None = None) -> Result:
    return runner.invoke(main, list(args), input=input, catch_exceptions=False)


def ok(runner: CliRunner, *args: str, input: str | None = None) -> dict[str, Any]:
    result = invoke(runner, *args, "--json", input=input)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def refused(runner: CliRunner, *args: str, exit_code: int = 1) -> dict[str, Any]:
    result = invoke(runner, *args, "--json")
    assert result.exit_code == exit_code, result.output
    error = json.loads(result.stdout)["error"]
    assert set(error) <= {"code", "message", "fields"} and error["message"]
    return error


def audit_rows(world: World, district_id: str | None = None) -> list[AuditEntry]:
    with world.session() as session:
        rows = session.scalars(
            select(AuditEntry)
            .where(AuditEntry.district_id == (district_id or world.district_id))
            .order_by(AuditEntry.created_at)
        )
        return [row for row in rows]


# --- districts, apps, tokens ---------------------------------------------------------------------------------


def test_districts_are_listed_shown_renamed_and_removed_only_when_empty(runner: CliRunner, world: World) -> None:
    listed = ok(runner, "district", "list")["districts"]
    assert [d["name"] for d in listed] == ["Test District"]
    assert listed[0]["lms_connections"] == 1 and listed[0]["users"] == 2 and listed[0]["apps"] == 1

    by_name = ok(runner, "district", "show", "Test District")
    assert by_name == ok(runner, "district", "show", world.district_id)

    renamed = ok(runner, "district", "update", world.district_id, "--name", "Springfield", "--operator", "alice")
    assert renamed["name"] == "Springfield"
    assert ok(runner, "district", "show", "Springfield")["id"] == world.district_id
    row = audit_rows(world)[-1]
    assert (row.staff_email, row.action, row.staff_id) == ("cli:alice", "renamed the district", None)

    error = refused(runner, "district", "remove", "Springfield")
    assert error["code"] == "conflict" and "only an empty district" in error["message"]
    empty = ok(runner, "district", "create", "Made by mistake")
    assert ok(runner, "district", "remove", "Made by mistake")["removed"] is True
    assert refused(runner, "district", "show", empty["id"])["code"] == "not_found"
    changed = refused(runner, "district", "update", "Springfield")["fields"].keys()
    assert changed == {"name", "time_zone"}, "nothing to change"


def test_existing_commands_take_district_and_app_names(runner: CliRunner, world: World) -> None:
    user = ok(runner, "user", "add", "--district", "Test District", "--name", "Grace")
    assert ok(runner, "user", "show", "--district", world.district_id, user["id"])["name"] == "Grace"
    connection = ok(runner, "lms", "list", "--district", "Test District")["lms_connections"][0]
    assert connection["id"] == world.connection_id and connection["name"] == "Sandbox"
    ok(runner, "district", "create", "Second")
    authorized = ok(runner, "app", "authorize", "Quiz App", "Second")
    assert authorized["token"].startswith("pb_")


def test_apps_are_updated_their_secret_rotated_and_deauthorized(runner: CliRunner, world: World) -> None:
    apps = ok(runner, "app", "list")["apps"]
    assert [a["name"] for a in apps] == ["Quiz App"]
    assert apps[0]["districts"] == [
        {"id": world.district_id, "name": "Test District", "authorized": True, "deauthorized_at": None}
    ]
    shown = ok(runner, "app", "show", "Quiz App")
    assert shown["id"] == world.app_id and shown["active_tokens"] == 1
    assert not any("secret" in key for key in shown), "no secret, not even its hash"

    changed = ok(runner, "app", "update", "Quiz App", "--redirect-uri", "https://quiz.example/new", "--operator", "bo")
    assert changed["redirect_uri"] == "https://quiz.example/new" and changed["changed"] == ["redirect_uri"]
    bad = refused(runner, "app", "update", "Quiz App", "--redirect-uri", "ftp://nope")
    assert bad["code"] == "invalid_input" and "redirect_uri" in bad["fields"]

    first = ok(runner, "app", "rotate-secret", world.app_id)["client_secret"]
    second = invoke(runner, "app", "rotate-secret", world.app_id)
    assert second.exit_code == 0 and "client_secret:" in second.stdout and first not in second.stdout

    assert world.get("/v1/me").status_code == 200
    deauthorized = ok(runner, "app", "deauthorize", "Quiz App", "Test District", "--operator", "bo")
    assert deauthorized["already"] is False and deauthorized["deauthorized_at"]
    assert world.get("/v1/me").status_code == 401, "its tokens are refused at once"
    assert ok(runner, "app", "deauthorize", "Quiz App", "Test District")["already"] is True
    assert ok(runner, "app", "show", "Quiz App")["districts"][0]["authorized"] is False
    actions = [(r.staff_email, r.action) for r in audit_rows(world)]
    assert ("cli:bo", "changed an app") in actions and ("cli:bo", "deauthorized an app") in actions

    removal = refused(runner, "app", "remove", "Quiz App")
    assert removal["code"] == "conflict" and "deauthorize" in removal["message"]
    spare = ok(runner, "app", "create", "Spare", "--redirect-uri", "https://spare.example/cb")
    assert ok(runner, "app", "remove", "Spare")["id"] == spare["id"]
    assert refused(runner, "app", "show", "Spare")["code"] == "not_found"


def test_tokens_are_listed_and_found_by_their_value_never_shown(runner: CliRunner, world: World) -> None:
    tokens = ok(runner, "token", "list", "--district", "Test District")["tokens"]
    assert len(tokens) == 1 and tokens[0]["kind"] == "district_app" and tokens[0]["active"] is True
    listing = invoke(runner, "token", "list", "--district", world.district_id, "--json").stdout
    assert world.token not in listing and "hash" not in listing
    assert ok(runner, "token", "show", world.token)["id"] == tokens[0]["id"], "a leaked token is traced"
    ok(runner, "token", "revoke", tokens[0]["id"])
    assert ok(runner, "token", "list", "--district", world.district_id)["tokens"] == []
    assert ok(runner, "token", "list", "--district", world.district_id, "--all")["tokens"][0]["revoked_at"]
    assert refused(runner, "token", "show", "pb_not-a-token")["code"] == "not_found"


# --- users, enrollments, staff -------------------------------------------------------------------------------


def test_users_and_enrollments(runner: CliRunner, world: World) -> None:
    users = ok(runner, "user", "list", "--district", world.district_id)["users"]
    assert [u["name"] for u in users] == ["Ada", "Alan"]
    assert [
        u["name"] for u in ok(runner, "user", "list", "--district", world.district_id, "--search", "ad")["users"]
    ] == ["Ada"]
    ada = world.students[0]
    shown = ok(runner, "user", "show", "--district", world.district_id, ada)
    assert [(e["lms_name"], e["course"]) for e in shown["enrollments"]] == [("Sandbox", "course-101")]

    updated = ok(runner, "user", "update", "--district", world.district_id, ada, "--sis-id", "S-1", "--role", "teacher")
    assert (updated["sis_id"], updated["role"], updated["changed"]) == ("S-1", "teacher", ["role", "sis_id"])
    bad = refused(runner, "user", "update", "--district", world.district_id, ada, "--email", "not-an-email")
    assert bad["fields"].keys() == {"email"}
    usage = refused(runner, "user", "update", "--district", world.district_id, ada, "--role", "admin", exit_code=2)
    assert usage["code"] == "usage" and "role" in usage["fields"]

    enrollments = ok(runner, "user", "enrollments", "--district", world.district_id, "--course", "course-101")
    assert len(enrollments["enrollments"]) == 2
    args = ["user", "unenroll", "--district", world.district_id, "--lms", "Sandbox", "--course", "course-101"]
    ok(runner, *args, "--user", ada)
    assert refused(runner, *args, "--user", ada)["code"] == "not_found"
    assert ok(runner, "user", "show", "--district", world.district_id, ada)["enrollments"] == []


def test_staff_password_reset_and_disable(runner: CliRunner, world: World) -> None:
    ok(runner, "staff", "create", "--district", world.district_id, "--email", "Pat@School.example")
    assert ok(runner, "staff", "list", "--district", world.district_id)["staff"][0]["status"] == "awaiting_setup"

    new_password = "a long new password"
    reset = ok(
        runner,
        "staff",
        "reset-password",
        "--district",
        world.district_id,
        "pat@school.example",
        "--set-password",
        "--operator",
        "root",
        input=f"{new_password}\n{new_password}\n",
    )
    assert "setup_link" not in reset and new_password not in json.dumps(reset)
    browser = signed_in(world, "pat@school.example", new_password)
    assert browser.get(world.url("/dashboard/"), allow_redirects=False).status_code == 200
    assert ok(runner, "staff", "show", "--district", world.district_id, "pat@school.example")["status"] == "active"

    disabled = ok(runner, "staff", "disable", "--district", world.district_id, "pat@school.example")
    assert disabled["status"] == "disabled" and disabled["sessions_ended"] == 1
    assert browser.get(world.url("/dashboard/"), allow_redirects=False).status_code != 200, "signed out at once"
    with world.session() as session:
        member = session.scalar(select(StaffUser))
        assert member is not None and member.password_hash is None
    link = ok(runner, "staff", "reset-password", "--district", world.district_id, "pat@school.example")
    assert link["setup_link"].startswith("http") and "#" in link["setup_link"] and link["status"] == "awaiting_setup"
    actions = [(r.staff_email, r.action) for r in audit_rows(world)]
    assert ("cli:root", "reset a staff password") in actions
    assert any(a == "disabled a staff account" for _, a in actions)
    assert refused(runner, "staff", "show", "--district", world.district_id, "nobody@x")["code"] == "not_found"


# --- LMS connections and placements --------------------------------------------------------------------------


def test_connection_rename_disable_and_removal(runner: CliRunner, world: World) -> None:
    shown = ok(runner, "lms", "show", "--district", world.district_id, "--lms", "Sandbox")
    assert shown["settings"]["secret"] == "(set)" and shown["secret_settings"] == ["secret"]
    assert (
        world.sandbox_secret
        not in invoke(runner, "lms", "show", "--district", world.district_id, "--lms", "Sandbox").stdout
    )

    renamed = ok(runner, "lms", "update", "--district", world.district_id, "--lms", "Sandbox", "--name", "Canvas")
    assert renamed["name"] == "Canvas"
    assert ok(runner, "lms", "show", "--district", world.district_id, "--lms", "Canvas")["id"] == world.connection_id

    assert ok(runner, "lms", "disable", "--district", world.district_id, "--lms", "Canvas")["disabled"] is True
    with world.session() as session:
        assert session.get(LmsConnection, world.connection_id).paused is True  # type: ignore[union-attr]
    assert ok(runner, "lms", "enable", "--district", world.district_id, "--lms", "Canvas")["disabled"] is False

    spare = ok(
        runner,
        "lms",
        "add",
        "--district",
        world.district_id,
        "--name",
        "Spare",
        "--adapter",
        "sandbox",
        "--setting",
        "base_url=http://127.0.0.1:9/x",
        "--setting",
        "secret=0123456789abcdef0",
    )
    assert ok(runner, "lms", "remove", "--district", world.district_id, "--lms", "Spare")["id"] == spare["id"]
    world.post_grade({"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.5})
    kept = refused(runner, "lms", "remove", "--district", world.district_id, "--lms", "Canvas")
    assert kept["code"] == "conflict" and "disable" in kept["message"]


def test_connections_of_another_district_are_not_reachable(runner: CliRunner, world: World) -> None:
    other = build_world(world.app, world.base_url, world.http, district_name="Other District")
    for command in (["lms", "show"], ["lms", "disable"], ["lms", "remove"]):
        error = refused(runner, *command, "--district", other.district_id, "--lms", world.connection_id)
        assert error["code"] == "not_found" and "lms" in error["fields"]
    assert refused(runner, "user", "show", "--district", other.district_id, world.students[0])["code"] == "not_found"
    placement = ok(runner, "placement", "list", "--district", world.district_id)["placements"][0]["id"]
    assert refused(runner, "placement", "show", "--district", other.district_id, placement)["code"] == "not_found"
    with world.session() as session:
        assert session.get(LmsConnection, world.connection_id).paused is False  # type: ignore[union-attr]
    assert [p["id"] for p in ok(runner, "placement", "list", "--district", "Other District")["placements"]] != [
        placement
    ]


def test_secret_rotation_reaches_the_adapter_and_is_never_printed(
    runner: CliRunner, world: World, worker: DeliveryWorker
) -> None:
    new_secret = "a-fresh-secret-from-the-lms-0123"
    result = invoke(
        runner,
        "lms",
        "rotate-secret",
        "--district",
        world.district_id,
        "--lms",
        "Sandbox",
        "--setting",
        "secret",
        "--operator",
        "carol",
        "--json",
        input=f"{new_secret}\n{new_secret}\n",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"id": world.connection_id, "name": "Sandbox", "rotated": ["secret"]}
    assert new_secret not in result.stdout and world.sandbox_secret not in result.output

    services = services_of(world.app)
    with world.session() as session:
        connection = session.get(LmsConnection, world.connection_id)
        assert connection is not None
        settings = connection_settings(services.box, connection)
    adapter = services.adapters.build("sandbox", settings, connection_id=world.connection_id)
    assert isinstance(adapter, SandboxAdapter) and adapter.secret == new_secret
    gradebook = world.url(f"/sandbox-lms/{world.connection_id}/gradebook")
    assert world.http.get(gradebook, headers={"Authorization": f"Bearer {world.sandbox_secret}"}).status_code == 401
    world.post_grade({"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.9})
    worker.run_until_idle()
    assert set(statuses(world).values()) == {DeliveryStatus.DELIVERED}, "the adapter sent the new secret"
    row = audit_rows(world)[-1]
    assert (row.staff_email, row.action) == ("cli:carol", "rotated an LMS connection's secret")
    assert new_secret not in json.dumps(row.details) and world.sandbox_secret not in json.dumps(row.details)

    rotate = ["lms", "rotate-secret", "--district", world.district_id, "--lms", "Sandbox", "--stdin"]
    not_secret = invoke(runner, *rotate, "--setting", "base_url", "--json", input="http://evil.example\n")
    assert not_secret.exit_code == 1 and "base_url" in json.loads(not_secret.stdout)["error"]["fields"]
    too_short = invoke(runner, *rotate, "--setting", "secret", "--json", input="short\n")
    assert too_short.exit_code == 1 and "secret" in json.loads(too_short.stdout)["error"]["fields"]
    with world.session() as session:
        connection = session.get(LmsConnection, world.connection_id)
        assert connection is not None
        assert connection_settings(services.box, connection)["secret"] == new_secret, "a refusal changes nothing"


def test_placements_listed_updated_and_removed_only_without_deliveries(runner: CliRunner, world: World) -> None:
    placements = ok(runner, "placement", "list", "--district", world.district_id, "--lms", "Sandbox")["placements"]
    assert sorted(p["assignment"] for p in placements) == ["quiz-1", "quiz-2"]
    quiz2 = next(p for p in placements if p["assignment"] == "quiz-2")
    only = ok(runner, "placement", "list", "--district", world.district_id, "--assignment", "quiz-2")["placements"]
    assert [p["id"] for p in only] == [quiz2["id"]]

    updated = ok(runner, "placement", "update", "--district", world.district_id, quiz2["id"], "--title", "Quiz Two")
    assert updated["title"] == "Quiz Two" and updated["changed"] == ["title"]
    bad = refused(
        runner,
        "placement",
        "update",
        "--district",
        world.district_id,
        quiz2["id"],
        "--destination-json",
        "[1]",
        exit_code=2,
    )
    assert bad["code"] == "usage"

    world.post_grade({"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.5})
    quiz1 = next(p for p in placements if p["assignment"] == "quiz-1")
    assert refused(runner, "placement", "remove", "--district", world.district_id, quiz1["id"])["code"] == "conflict"
    assert ok(runner, "placement", "remove", "--district", world.district_id, quiz2["id"])["removed"] is True
    with world.session() as session:
        assert session.get(Placement, quiz2["id"]) is None and session.get(Placement, quiz1["id"]) is not None


# --- retry ---------------------------------------------------------------------------------------------------


def failed_delivery(world: World, worker: DeliveryWorker, student: int = 0) -> str:
    world.inject_faults(1, status=400)
    posted = world.post_grade({"assignmentID": "quiz-1", "userID": world.students[student], "percentage": 0.6})
    assert posted.status_code in (200, 201, 202), posted.text
    worker.run_until_idle()
    with world.session() as session:
        delivery = session.scalar(select(Delivery).where(Delivery.status == DeliveryStatus.FAILED))
        assert delivery is not None
        return delivery.id


def statuses(world: World) -> dict[str, str]:
    with world.session() as session:
        return {d.id: d.status for d in session.scalars(select(Delivery))}


def test_retry_dry_run_changes_nothing(runner: CliRunner, world: World, worker: DeliveryWorker) -> None:
    delivery_id = failed_delivery(world, worker)
    before = statuses(world)
    planned = ok(runner, "retry", "--district", "Test District", "--lms", "Sandbox", "--dry-run")
    assert planned["dry_run"] is True and planned["selected"] == 1 and planned["deliveries"] == [delivery_id]
    assert planned["retried"] == 0
    assert statuses(world) == before
    assert audit_rows(world) == []


def test_retry_makes_a_failed_delivery_pending_and_names_the_operator(
    runner: CliRunner, world: World, worker: DeliveryWorker
) -> None:
    delivery_id = failed_delivery(world, worker)
    done = ok(runner, "retry", "--district", world.district_id, "--assignment", "quiz-1", "--operator", "dana")
    assert (done["selected"], done["retried"], done["skipped"]) == (1, 1, [])
    with world.session() as session:
        delivery = session.get(Delivery, delivery_id)
        assert delivery is not None and delivery.status == DeliveryStatus.PENDING and delivery.attempts == 0
    row = audit_rows(world)[-1]
    assert (row.staff_email, row.action, row.details) == ("cli:dana", "retried failed deliveries", {"count": 1})
    worker.run_until_idle()
    assert statuses(world)[delivery_id] == DeliveryStatus.DELIVERED

    again = ok(runner, "retry", "--district", world.district_id)
    assert again["selected"] == 0 and again["retried"] == 0
    text = invoke(runner, "retry", "--district", world.district_id)
    assert text.exit_code == 0 and "retried 0 of 0 deliveries" in text.stdout


def test_retry_of_one_delivery_and_its_refusals(runner: CliRunner, world: World, worker: DeliveryWorker) -> None:
    delivery_id = failed_delivery(world, worker)
    other = build_world(world.app, world.base_url, world.http, district_name="Other District")
    assert refused(runner, "retry", "--district", other.district_id, "--delivery", delivery_id)["code"] == "not_found"
    assert refused(runner, "retry", "--district", world.district_id, "--lms", "Nope")["fields"].keys() == {"lms"}
    assert refused(runner, "retry", "--district", world.district_id, "--status", "done", exit_code=2)["code"] == "usage"
    assert refused(runner, "retry", "--district", "No Such District")["code"] == "not_found"
    both = refused(runner, "retry", "--district", world.district_id, "--delivery", delivery_id, "--lms", "Sandbox")
    assert both["code"] == "invalid_input" and "delivery" in both["fields"]
    assert refused(runner, "retry", "--district", world.district_id, "--app", "Quiz App")["fields"].keys() == {
        "assignment"
    }
    with world.session() as session:
        grade_id = session.get(Delivery, delivery_id).grade_id  # type: ignore[union-attr]
    by_grade = ok(runner, "retry", "--district", world.district_id, "--grade", grade_id, "--dry-run")
    assert by_grade["deliveries"] == [delivery_id]
    assert refused(runner, "retry", "--district", other.district_id, "--grade", grade_id)["code"] == "not_found"
    assert statuses(world)[delivery_id] == DeliveryStatus.FAILED, "refusals and dry runs change nothing"

    one = ok(runner, "retry", "--district", world.district_id, "--delivery", delivery_id, "--operator", "eve")
    assert one["retried"] == 1
    row = audit_rows(world)[-1]
    assert (row.staff_email, row.action, row.target) == ("cli:eve", "retried delivery", delivery_id)
    conflict = refused(runner, "retry", "--district", world.district_id, "--delivery", delivery_id)
    assert conflict["code"] == "conflict" and "pending" in conflict["message"]


def test_retry_now_for_retrying_deliveries(runner: CliRunner, world: World, worker: DeliveryWorker) -> None:
    world.inject_faults(1, status=503, retry_after=3600)
    world.post_grade({"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.7})
    worker.run_until_idle()
    retrying = [i for i, s in statuses(world).items() if s == DeliveryStatus.RETRYING]
    assert len(retrying) == 1
    assert ok(runner, "retry", "--district", world.district_id)["selected"] == 0, "failed ones only by default"
    now = ok(runner, "retry", "--district", world.district_id, "--status", "retrying")
    assert now["retried"] == 1
    worker.run_until_idle()
    assert statuses(world)[retrying[0]] == DeliveryStatus.DELIVERED


@pytest.mark.parametrize("operator", ["", "two words"])
def test_an_unusable_operator_name_is_refused(runner: CliRunner, world: World, operator: str) -> None:
    error = refused(runner, "district", "update", world.district_id, "--name", "X", "--operator", operator)
    assert error["fields"].keys() == {"operator"}
    assert ok(runner, "district", "show", world.district_id)["name"] == "Test District"


def test_text_errors_and_usage_keep_click_exit_codes(runner: CliRunner, world: World) -> None:
    missing = invoke(runner, "lms", "show", "--district", world.district_id, "--lms", "Nope")
    assert missing.exit_code == 1 and "no LMS connection 'Nope'" in missing.output
    usage = invoke(runner, "lms", "show", "--district", world.district_id)
    assert usage.exit_code == 2 and "Missing option '--lms'" in usage.output
    with world.session() as session:
        assert session.scalar(select(ApiToken.id)) is not None


def test_the_older_commands_answer_errors_as_json_too(runner: CliRunner, world: World) -> None:
    unknown = refused(runner, "lms", "add", "--district", world.district_id, "--name", "X", "--adapter", "moodle")
    assert unknown["code"] == "invalid_input" and "adapter" in unknown["fields"]
    assert (
        refused(runner, "user", "add", "--district", world.district_id, "--role", "admin", exit_code=2)["code"]
        == "usage"
    )
    assert refused(runner, "token", "revoke", "no-such-token")["code"] == "not_found"
    text = invoke(runner, "token", "revoke", "no-such-token")
    assert text.exit_code == 1 and "no such token" in text.output and not text.stdout.startswith("{")
