"""`gateway user forget`: a student's personal data removed from every table Passback keeps, scoped to the
district, audited, with a dry run that changes nothing (docs/privacy.md). On SQLite and PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from gateway.cli import main
from gateway.composition import services_of
from gateway.models import AuditEntry, Base, Grade, LmsConnection, User
from gateway.services.directory import link_identity
from gateway.worker import DeliveryWorker
from tests.factories import COURSE, World, build_world

NAME = "Zephyrine Quillfeather"
EMAIL = "zephyrine.q@school.example"
SIS_ID = "SIS-ZQ-4471"
SUBJECT = "lms-subject-zq-9921"


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"webhook_allow_private_addresses": True}


def _student(world: World, index: int = 0) -> str:
    """The world's first student, given a name, an email, a sisID and an LMS identity."""
    with world.session() as session:
        user = session.get(User, world.students[index])
        user.name, user.email, user.sis_id = NAME, EMAIL, SIS_ID
        link_identity(session, user, session.get(LmsConnection, world.connection_id), SUBJECT, box=world_box(world))
        return user.id


def world_box(world: World) -> Any:
    return services_of(world.app).box


def _populate(world: World, worker: DeliveryWorker) -> str:
    """Grades (delivered and pending), revisions, a user token, an idempotency record, webhook messages."""
    user_id = _student(world)
    hook = world.http.post(
        world.url("/v1/webhooks"),
        json={"url": "http://127.0.0.1:9/hook", "events": ["grade.delivered", "grade.failed"]},
        headers=world.headers(),
    )
    assert hook.status_code == 201, hook.text
    first = {
        "assignmentID": "quiz-1",
        "sisID": SIS_ID,
        "percentage": 0.5,
        "comment": f"Well done, {NAME} ({EMAIL})",
        "context": {"email": EMAIL, "name": NAME},
    }
    assert world.post_grade(first, **{"Idempotency-Key": "forget-key-1"}).status_code == 202
    assert world.post_grade({**first, "percentage": 0.9}).status_code == 202
    worker.run_until_idle()
    by_id = {"assignmentID": "quiz-2", "userID": user_id, "percentage": 0.4, "comment": f"Keep going, {NAME}"}
    assert world.post_grade(by_id).status_code == 202
    # The other student's grade stays.
    assert world.post_grade({"assignmentID": "quiz-1", "userID": world.students[1], "percentage": 0.7}).ok
    with world.session() as session:
        # What a staff fix writes when it enrolls the student (gateway/services/staff_actions.py): their name.
        session.add(
            AuditEntry(
                district_id=world.district_id,
                staff_email="staff@district.example",
                action="enrolled a student",
                target=f"{NAME} in Sandbox course {COURSE}",
                details={"user_id": user_id, "deliveries_created": 1},
            )
        )
    own = world.user_token(user_id)
    assert world.post_grade({"assignmentID": "quiz-2", "percentage": 0.6}, token=own).status_code == 202
    return user_id


def _table_texts(world: World) -> dict[str, str]:
    """Every row of every table, as text."""
    texts: dict[str, str] = {}
    with world.session() as session:
        for table in Base.metadata.sorted_tables:
            rows = session.execute(select(table)).all()
            texts[table.name] = "\n".join(json.dumps([str(v) for v in row]) for row in rows)
    return texts


def _counts(world: World) -> dict[str, int]:
    with world.session() as session:
        return {
            t.name: int(session.scalar(select(func.count()).select_from(t)) or 0) for t in Base.metadata.sorted_tables
        }


def _forget(runner: CliRunner, *args: str) -> Any:
    result = runner.invoke(main, ["user", "forget", *args, "--operator", "privacy-officer", "--json"])
    return result.exit_code, json.loads(result.output) if result.output.strip().startswith("{") else result.output


def test_forget_leaves_no_trace_of_the_student_in_any_table(
    world: World, worker: DeliveryWorker, runner: CliRunner
) -> None:
    user_id = _populate(world, worker)
    before = _table_texts(world)
    for marker in (NAME, EMAIL, SIS_ID, SUBJECT):
        # The check below must be able to fail: the student is in the tables that hold personal data.
        holding = {t for t, text in before.items() if marker in text}
        assert holding, marker
    assert {"grades", "grade_revisions", "webhook_messages", "sandbox_gradebook"} <= {
        t for t, text in before.items() if NAME in text or EMAIL in text or SIS_ID in text
    }

    code, report = _forget(runner, SIS_ID, "--district", world.district_id)
    assert code == 0, report
    assert report["user"] == {"id": user_id} and report["dryRun"] is False
    deleted = report["deleted"]
    assert deleted["users"] == 1 and deleted["grades"] == 2 and deleted["grade_revisions"] == 4
    assert deleted["lms_identities"] == 1 and deleted["enrollments"] == 1 and deleted["api_tokens"] == 1
    assert deleted["idempotency_records"] >= 1 and deleted["webhook_messages"] >= 1
    assert deleted["sandbox_gradebook"] == 1 and deleted["deliveries"] >= 3 and deleted["audit_entries_redacted"] == 1
    for marker in (NAME, EMAIL, SIS_ID, SUBJECT, user_id):
        holding = {t for t, text in _table_texts(world).items() if marker in text}
        # The audit row names the user's id (no longer anyone's) and nothing else about them.
        assert holding == ({"audit_entries"} if marker == user_id else set()), (marker, holding)
    with world.session() as session:
        audit = session.scalars(select(AuditEntry).where(AuditEntry.action == "forgot a user")).one()
        assert (audit.staff_email, audit.target, audit.district_id) == (
            "cli:privacy-officer",
            user_id,
            world.district_id,
        )
        assert audit.details == {"deleted": deleted}
        fix = session.scalars(select(AuditEntry).where(AuditEntry.action == "enrolled a student")).one()
        assert fix.target == f"[forgotten user] in Sandbox course {COURSE}" and fix.details["user_id"] == user_id
        # The other student's grade is untouched.
        assert session.scalar(select(func.count()).select_from(Grade).where(Grade.user_id == world.students[1])) == 1

    # A grade for the forgotten student is refused: by any key, the user is not found.
    for key in ({"sisID": SIS_ID}, {"email": EMAIL}, {"userID": user_id}):
        answer = world.post_grade({"assignmentID": "quiz-1", "percentage": 0.4, **key})
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"]["code"] == "user_not_found"
    # Forgetting again: nothing left to find.
    code, again = _forget(runner, user_id)
    assert code == 1 and again["error"]["code"] == "user_not_found"


def test_a_dry_run_counts_and_changes_nothing(world: World, worker: DeliveryWorker, runner: CliRunner) -> None:
    _populate(world, worker)
    before_counts, before_texts = _counts(world), _table_texts(world)
    code, report = _forget(runner, EMAIL.upper(), "--district", world.district_id, "--dry-run")
    assert code == 0, report
    assert report["dryRun"] is True and report["deleted"]["grades"] == 2 and report["total"] > 5
    assert _counts(world) == before_counts
    assert _table_texts(world) == before_texts  # no audit row either


def test_forget_is_scoped_to_the_district(world: World, worker: DeliveryWorker, runner: CliRunner) -> None:
    user_id = _populate(world, worker)
    other = build_world(world.app, world.base_url, world.http, district_name="Other District")
    with other.session() as session:
        twin = session.get(User, other.students[0])
        twin.sis_id, twin.email = SIS_ID, EMAIL  # the same keys, another district's student
        twin_id = twin.id
    assert other.post_grade({"assignmentID": "quiz-1", "sisID": SIS_ID, "percentage": 0.3}).status_code == 202

    # A user id of another district is not found there.
    code, refused = _forget(runner, twin_id, "--district", world.district_id)
    assert code == 1 and refused["error"]["code"] == "user_not_found"
    code, report = _forget(runner, SIS_ID, "--district", world.district_id)
    assert code == 0 and report["user"]["id"] == user_id

    with world.session() as session:
        assert session.get(User, user_id) is None
        kept = session.get(User, twin_id)
        assert kept is not None and (kept.sis_id, kept.email) == (SIS_ID, EMAIL)
        assert session.scalar(select(func.count()).select_from(Grade).where(Grade.user_id == twin_id)) == 1
    assert other.post_grade({"assignmentID": "quiz-1", "sisID": SIS_ID, "percentage": 0.35}).status_code == 202


def test_bad_references_are_refused_in_json_and_change_nothing(world: World, runner: CliRunner) -> None:
    before = _counts(world)
    code, answer = _forget(runner, "nobody@example.org", "--district", world.district_id)
    assert code == 1 and answer["error"]["code"] == "user_not_found" and "user" in answer["error"]["fields"]
    code, answer = _forget(runner, "nobody@example.org")
    assert code == 1 and answer["error"]["code"] == "user_not_found"
    code, answer = _forget(runner, world.students[0], "--district", "no-such-district")
    assert code == 1 and answer["error"]["code"] == "not_found"
    with world.session() as session:
        for user_id in world.students:
            session.get(User, user_id).email = "same@school.example"
    code, answer = _forget(runner, "same@school.example", "--district", world.district_id)
    assert code == 1 and answer["error"]["code"] == "user_ambiguous"
    assert _counts(world) == before
