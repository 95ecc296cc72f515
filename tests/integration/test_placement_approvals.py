"""POST /v1/placements into Schoology: an app writes grades only into the columns (section + Schoology assignment)
its district approved for it; everything else is refused with 403, all or none, and no grade reaches the column.

The Schoology fake (tests/fakes/schoology_lms.py) checks every request's OAuth signature and records each grades
PUT, so "no grade reached the column" is read from what the LMS received.
"""

from __future__ import annotations

from typing import Any

from click.testing import CliRunner
from sqlalchemy import func, select

from gateway.cli import main as cli
from gateway.models import Placement
from gateway.services.catalog import upsert_assignments
from gateway.services.directory import authorize_app, create_app_partner
from gateway.worker import DeliveryWorker
from tests.integration import test_schoology
from tests.integration.test_schoology import COLUMN, SECTION, SchoologySetup, _add_students

schoology = test_schoology.schoology  # the Schoology fake and connection, as test_schoology sets them up

OTHER_SECTION, OTHER_COLUMN = "7009", "5009"


def _place(setup: SchoologySetup, *entries: dict[str, str], token: str | None = None) -> Any:
    body = {"placements": [{"assignmentID": "quiz-2", "lms": "Schoology", **entry} for entry in entries]}
    return setup.world.http.post(setup.world.url("/v1/placements"), json=body, headers=setup.world.headers(token))


def _placements(setup: SchoologySetup) -> int:
    with setup.world.session() as session:
        return int(session.scalar(select(func.count()).select_from(Placement)) or 0)


def _approve(runner: CliRunner, setup: SchoologySetup, *args: str, app: str | None = None) -> Any:
    result = runner.invoke(
        cli,
        ["placement", "approve", "--district", setup.world.district_id, "--lms", "Schoology",
         "--app", app or setup.world.app_id, "--json", *args],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return result


def test_an_unapproved_column_is_refused_and_receives_no_grade(
    schoology: SchoologySetup, worker: DeliveryWorker
) -> None:
    world, fake = schoology.world, schoology.fake
    fake.add_assignment(OTHER_SECTION, OTHER_COLUMN, max_points=10)
    (student,) = _add_students(schoology, OTHER_SECTION, 1, 900)
    before = _placements(schoology)

    refused = _place(schoology, {"section": OTHER_SECTION, "lmsAssignmentID": OTHER_COLUMN})
    assert refused.status_code == 403, refused.text
    error = refused.json()["error"]
    assert error["code"] == "placement_not_approved"
    assert error["message"].startswith("placements[0]: The district has not approved LMS assignment '5009'")
    assert "only into columns the district approved" in error["fields"]["placements[0].lmsAssignmentID"][0]
    assert _placements(schoology) == before, "nothing was placed"

    world.post_grade({"assignmentID": "quiz-2", "userID": student, "percentage": 1})
    worker.run_until_idle()
    assert not [put for put in fake.grade_puts if put[0] == OTHER_SECTION], "no grade reached the column"


def test_all_or_none_an_approved_entry_is_not_placed_beside_a_refused_one(
    schoology: SchoologySetup, runner: CliRunner
) -> None:
    _approve(runner, schoology, "--section", "7003", "--lms-assignment", "5003")
    before = _placements(schoology)
    response = _place(
        schoology,
        {"section": "7003", "lmsAssignmentID": "5003"},
        {"section": OTHER_SECTION, "lmsAssignmentID": OTHER_COLUMN, "assignmentID": "quiz-1"},
    )
    assert response.status_code == 403 and response.json()["error"]["message"].startswith("placements[1]: ")
    assert _placements(schoology) == before


def test_an_approved_column_or_section_is_placed_and_graded(
    schoology: SchoologySetup, runner: CliRunner, worker: DeliveryWorker
) -> None:
    world, fake = schoology.world, schoology.fake
    fake.add_assignment(OTHER_SECTION, OTHER_COLUMN, max_points=10)
    (student,) = _add_students(schoology, OTHER_SECTION, 1, 900)
    approved = _approve(runner, schoology, "--section", OTHER_SECTION, "--lms-assignment", OTHER_COLUMN)
    assert '"created": true' in approved.output
    assert (
        '"created": false'
        in _approve(runner, schoology, "--section", OTHER_SECTION, "--lms-assignment", OTHER_COLUMN).output
    ), "approving twice keeps one approval"

    placed = _place(schoology, {"section": OTHER_SECTION, "lmsAssignmentID": OTHER_COLUMN})
    assert placed.status_code == 201, placed.text
    world.post_grade({"assignmentID": "quiz-2", "userID": student, "percentage": 1})
    worker.run_until_idle()
    assert any(section == OTHER_SECTION and items[0]["grade"] == 10 for section, items in fake.grade_puts)

    # A whole section: any of its assignments, and no other section.
    _approve(runner, schoology, "--section", "7010")
    whole = [{"section": "7010", "lmsAssignmentID": "5010"}, {"section": "7010", "lmsAssignmentID": "5011"}]
    whole[1]["assignmentID"] = "quiz-1"
    assert _place(schoology, *whole).status_code == 201
    assert _place(schoology, {"section": "7011", "lmsAssignmentID": "5010"}).status_code == 403


def test_an_approval_is_for_one_app_and_can_be_withdrawn(schoology: SchoologySetup, runner: CliRunner) -> None:
    world = schoology.world
    with world.session() as session:
        other = create_app_partner(session, "Other App", "https://other.example/callback").app
        upsert_assignments(session, other.id, [{"id": "quiz-2", "name": "Other quiz"}])
        other_token = authorize_app(session, other.id, world.district_id).raw
        other_id = other.id
    _approve(runner, schoology, "--section", OTHER_SECTION, "--lms-assignment", OTHER_COLUMN)
    entry = {"section": OTHER_SECTION, "lmsAssignmentID": OTHER_COLUMN}
    assert _place(schoology, entry, token=other_token).status_code == 403, "approved for the first app only"

    _approve(runner, schoology, "--section", OTHER_SECTION, app=other_id)
    listed = runner.invoke(cli, ["placement", "approvals", "--district", world.district_id, "--json"])
    assert listed.exit_code == 0 and listed.output.count('"section": "7009"') == 2, listed.output
    revoked = runner.invoke(
        cli,
        ["placement", "revoke", "--district", world.district_id, "--lms", "Schoology", "--app", other_id,
         "--section", OTHER_SECTION],
    )  # fmt: skip
    assert revoked.exit_code == 0 and "1 approval(s) withdrawn" in revoked.output
    assert _place(schoology, entry, token=other_token).status_code == 403
    assert _place(schoology, entry).status_code == 201, "the first app's approval stays"


def test_a_placement_staff_made_is_returned_but_its_column_is_not_open_to_other_assignments(
    schoology: SchoologySetup,
) -> None:
    # The fixture's placement (quiz-1 -> SECTION / COLUMN) was made by an operator: asking for it again returns it.
    again = _place(schoology, {"section": SECTION, "lmsAssignmentID": COLUMN, "assignmentID": "quiz-1"})
    assert again.status_code == 200 and again.json()["existing"] == 1
    other = _place(schoology, {"section": SECTION, "lmsAssignmentID": COLUMN})
    assert other.status_code == 403, "another of the app's assignments may not write into that column"


def test_approving_for_an_app_the_district_has_not_authorized_is_refused(
    schoology: SchoologySetup, runner: CliRunner
) -> None:
    with schoology.world.session() as session:
        stranger = create_app_partner(session, "Stranger", "https://stranger.example/callback").app.id
    result = runner.invoke(
        cli,
        ["placement", "approve", "--district", schoology.world.district_id, "--lms", "Schoology", "--app", stranger,
         "--section", OTHER_SECTION],
    )  # fmt: skip
    assert result.exit_code == 1 and "is not authorized in this district" in result.output
