"""Staff roles (issue 16): district admins act, viewers look. A viewer sees every page without a form that acts,
and every form post of the dashboard (derived from its routes, so a new form cannot forget the rule) is refused
with an HTML 403 that changes nothing; the CLI creates viewers and changes roles, audited."""

from __future__ import annotations

import json
import re

import requests
from click.testing import CliRunner
from sqlalchemy import func, select

from gateway.cli import main
from gateway.models import AuditEntry, Delivery, StaffUser
from gateway.services.staff import create_staff
from gateway.worker import DeliveryWorker
from tests.factories import World
from tests.integration.test_dashboard import PASSWORD, csrf, signed_in, staff_of

# Forms anyone may post (signing in and out); every other POST route of the dashboard acts.
OPEN_FORMS = {"dashboard.login", "dashboard.setup", "dashboard.logout"}


def viewer_of(world: World, email: str = "viewer@district.example") -> str:
    with world.session() as session:
        create_staff(session, world.district_id, email, PASSWORD, role="viewer")
    return email


def failed_delivery(world: World, worker: DeliveryWorker) -> str:
    world.inject_faults(1, status=422)
    posted = world.post_grade({"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.6})
    assert posted.status_code == 202, posted.text
    worker.run_until_idle()
    with world.session() as session:
        delivery_id = session.scalar(select(Delivery.id).where(Delivery.status == "failed"))
    assert delivery_id is not None
    return str(delivery_id)


def acting_forms(page: requests.Response) -> list[str]:
    """The actions of the page's POST forms, but signing out."""
    actions = re.findall(r'<form method="post"(?: action="([^"]*)")?', page.text)
    return [a for a in actions if not a.endswith("/dashboard/logout")]


def test_a_viewer_sees_every_page_without_a_form_that_acts(world: World, worker: DeliveryWorker) -> None:
    delivery_id = failed_delivery(world, worker)
    admin = signed_in(world, staff_of(world))
    viewer = signed_in(world, viewer_of(world))
    pages = [
        "/dashboard/",
        "/dashboard/deliveries?status=failed",
        f"/dashboard/deliveries/{delivery_id}",
        "/dashboard/connections",
        "/dashboard/webhooks",
        "/dashboard/sandbox",
        "/dashboard/audit",
    ]
    for path in pages:
        seen = viewer.get(world.url(path))
        assert seen.status_code == 200, (path, seen.text[:300])
        assert acting_forms(seen) == [], f"{path} offers a viewer a form that acts"
        assert "You are a viewer" in seen.text
    # The same pages offer an admin the forms (so the check above could fail).
    acting = [path for path in pages if acting_forms(admin.get(world.url(path)))]
    assert set(acting) >= {"/dashboard/deliveries?status=failed", f"/dashboard/deliveries/{delivery_id}"}
    assert "/dashboard/connections" in acting


def test_every_form_post_of_a_viewer_is_refused_and_changes_nothing(world: World, worker: DeliveryWorker) -> None:
    delivery_id = failed_delivery(world, worker)
    viewer = signed_in(world, viewer_of(world))
    token = csrf(viewer.get(world.url("/dashboard/")))
    with world.session() as session:
        audit_rows = session.scalar(select(func.count()).select_from(AuditEntry))
    ids = {"delivery_id": delivery_id, "connection_id": world.connection_id}
    rules = [
        r
        for r in world.app.url_map.iter_rules()
        if r.endpoint.startswith("dashboard.") and "POST" in (r.methods or set()) and r.endpoint not in OPEN_FORMS
    ]
    assert len(rules) >= 8, [r.rule for r in rules]
    for rule in rules:
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", lambda m: ids.get(m.group(1), "pause"), rule.rule)
        refused = viewer.post(world.url(path), data={"csrf_token": token}, allow_redirects=False)
        assert refused.status_code == 403, (rule.rule, refused.status_code, refused.text[:200])
        assert refused.headers["Content-Type"].startswith("text/html")
        assert "can look but not act" in refused.text
    with world.session() as session:
        assert session.get(Delivery, delivery_id).status == "failed"  # type: ignore[union-attr]
        assert session.scalar(select(func.count()).select_from(AuditEntry)) == audit_rows


def test_an_admin_made_a_viewer_can_no_longer_act_and_back(
    world: World, worker: DeliveryWorker, runner: CliRunner
) -> None:
    delivery_id = failed_delivery(world, worker)
    email = staff_of(world)
    browser = signed_in(world, email)
    made = runner.invoke(
        main, ["staff", "set-role", "--district", world.district_id, email, "viewer", "--operator", "it-lead", "--json"]
    )
    assert made.exit_code == 0, made.output
    assert json.loads(made.output)["role"] == "viewer"
    page = browser.get(world.url(f"/dashboard/deliveries/{delivery_id}"))
    assert acting_forms(page) == [], "the role holds from the next page on, in the open session"
    refused = browser.post(world.url(f"/dashboard/deliveries/{delivery_id}/retry"), data={"csrf_token": csrf(page)})
    assert refused.status_code == 403

    back = runner.invoke(main, ["staff", "set-role", "--district", world.district_id, email, "admin", "--json"])
    assert back.exit_code == 0 and json.loads(back.output)["changed"] is True
    page = browser.get(world.url(f"/dashboard/deliveries/{delivery_id}"))
    retried = browser.post(
        world.url(f"/dashboard/deliveries/{delivery_id}/retry"), data={"csrf_token": csrf(page)}, allow_redirects=False
    )
    assert retried.status_code == 302
    with world.session() as session:
        roles = [
            (entry.staff_email, entry.details.get("role"))
            for entry in session.scalars(
                select(AuditEntry).where(AuditEntry.action == "changed a staff role").order_by(AuditEntry.created_at)
            )
        ]
    assert [role for _, role in roles] == ["viewer", "admin"]
    assert roles[0][0] == "cli:it-lead"


def test_the_cli_creates_viewers_and_refuses_an_unknown_role(world: World, runner: CliRunner) -> None:
    created = runner.invoke(
        main,
        [
            "staff",
            "create",
            "--district",
            world.district_id,
            "--email",
            "Look@District.example",
            "--role",
            "viewer",
            "--json",
        ],
    )
    assert created.exit_code == 0, created.output
    assert json.loads(created.output)["role"] == "viewer"
    listed = runner.invoke(main, ["staff", "list", "--district", world.district_id, "--json"])
    assert [(s["email"], s["role"]) for s in json.loads(listed.output)["staff"]] == [
        ("look@district.example", "viewer")
    ]
    wrong = runner.invoke(
        main, ["staff", "set-role", "--district", world.district_id, "look@district.example", "owner", "--json"]
    )
    assert wrong.exit_code == 2
    assert "role" in json.loads(wrong.output)["error"]["message"].lower()
    with world.session() as session:
        assert session.scalar(select(StaffUser.role).where(StaffUser.email == "look@district.example")) == "viewer"
