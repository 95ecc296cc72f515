"""`gateway roster import`: OneRoster 1.1 CSV (directory and zip) and the plain CSV, through the CLI against the
real database, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import func, select, text

from gateway.cli import main
from gateway.composition import services_of
from gateway.models import AuditEntry, Delivery, Enrollment, LmsIdentity, User
from tests.factories import COURSE, World

USERS = (
    # A byte order mark, CRLF line ends, an unknown column (grades), quoted fields with a comma and a quote.
    "\ufeffsourcedId,status,dateLastModified,enabledUser,orgSourcedIds,role,username,userIds,givenName,familyName,"
    "middleName,identifier,email,sms,phone,agentSourcedIds,grades,password\r\n"
    "u1,,,true,org1,student,ada,{LDAP:ada},Ada,Lovelace,,S-1001,ada@school.example,,,,07,\r\n"
    'u2,,,true,org1,student,alan,,"Alan ""Al""","Turing, Jr.",,S-1002,alan@school.example,,,,07,\r\n'
    "t1,,,true,org1,teacher,grace,,Grace,Hopper,,T-1,grace@school.example,,,,,\r\n"
    "g1,,,true,org1,guardian,pat,,Pat,Parent,,G-1,pat@home.example,,,,,\r\n"
)
CLASSES = (
    "sourcedId,status,dateLastModified,title,grades,courseSourcedId,classCode,classType,location,"
    "schoolSourcedId,termSourcedIds,subjects,subjectCodes,periods\r\n"
    "c1,,,Math 7,07,crs1,MATH7-1,scheduled,,org1,term1,,,1\r\n"
    "c2,,,Science 7,07,crs2,SCI7-1,scheduled,,org1,term1,,,2\r\n"
)
ENROLLMENTS = (
    "sourcedId,status,dateLastModified,classSourcedId,schoolSourcedId,userSourcedId,role,primary,beginDate,endDate\r\n"
    "e1,,,c1,org1,u1,student,false,,\r\n"
    "e2,,,c1,org1,u2,student,false,,\r\n"
    "e3,,,c1,org1,t1,teacher,true,,\r\n"
    "e4,,,c2,org1,u1,student,false,,\r\n"
)
ORGS = (
    "sourcedId,status,dateLastModified,name,type,identifier,parentSourcedId\r\norg1,,,Springfield Middle,school,,\r\n"
)
MANIFEST = "propertyName,value\r\nmanifest.version,1.0\r\noneroster.version,1.1\r\nfile.users,bulk\r\n"


def write_oneroster(directory: Path, **overrides: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "users.csv": USERS,
        "classes.csv": CLASSES,
        "enrollments.csv": ENROLLMENTS,
        "orgs.csv": ORGS,
        "manifest.csv": MANIFEST,
    }
    files.update({f"{name}.csv": content for name, content in overrides.items()})
    for name, content in files.items():
        (directory / name).write_bytes(content.encode("utf-8"))
    return directory


@pytest.fixture
def district(runner: CliRunner) -> dict[str, str]:
    def made(*args: str) -> dict[str, Any]:
        result = runner.invoke(main, [*args, "--json"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    created = made("district", "create", "Springfield USD")
    lms = made(
        "lms",
        "add",
        "--district",
        created["id"],
        "--name",
        "Canvas",
        "--adapter",
        "sandbox",
        "--setting",
        "base_url=http://127.0.0.1:9/sandbox-lms/x",
        "--setting",
        "secret=0123456789abcdef0123",
    )
    return {"id": created["id"], "lms": lms["id"]}


def run_import(runner: CliRunner, *args: str, code: int = 0) -> dict[str, Any]:
    result = runner.invoke(main, ["roster", "import", *args, "--json"], catch_exceptions=False)
    assert result.exit_code == code, result.output
    return json.loads(result.output)


def by_key(report: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {row["key"]: row for row in report["rows"] if row["kind"] == kind}


def db_state(app: Flask, district_id: str) -> tuple[dict[str, tuple[Any, ...]], set[tuple[str, str, str]]]:
    with services_of(app).database.transaction() as session:
        users = {
            u.sis_id: (u.id, u.name, u.email, u.role, u.updated_at)
            for u in session.scalars(select(User).where(User.district_id == district_id))
        }
        names = {u.id: u.sis_id for u in session.scalars(select(User).where(User.district_id == district_id))}
        enrollments = {
            (e.course_id, names[e.user_id], e.role)
            for e in session.scalars(select(Enrollment).where(Enrollment.district_id == district_id))
        }
    return users, enrollments


def test_oneroster_directory_imports_and_reimport_changes_nothing(
    runner: CliRunner, app: Flask, district: dict[str, str], tmp_path: Path
) -> None:
    path = write_oneroster(tmp_path / "oneroster")
    first = run_import(runner, "--district", district["id"], str(path), "--operator", "maria")

    assert first["format"] == "oneroster" and first["dryRun"] is False and first["lms"]["name"] == "Canvas"
    assert first["summary"]["users"] == {
        "created": 3,
        "updated": 0,
        "unchanged": 0,
        "deleted": 0,
        "skipped": 1,
        "error": 0,
    }
    assert first["summary"]["enrollments"]["created"] == 4
    users = by_key(first, "user")
    assert users["u1"] == {
        "file": "users.csv",
        "line": 2,
        "kind": "user",
        "key": "u1",
        "status": "created",
        "reason": "",
        "changes": [],
    }
    assert users["g1"]["status"] == "skipped" and "role: 'guardian'" in users["g1"]["reason"]
    assert by_key(first, "enrollment")["e4"]["line"] == 5

    saved, enrollments = db_state(app, district["id"])
    assert set(saved) == {"u1", "u2", "t1"}  # sisID is the OneRoster sourcedId by default
    assert saved["u2"][1:4] == ('Alan "Al" Turing, Jr.', "alan@school.example", "student")
    assert saved["t1"][3] == "teacher"
    assert enrollments == {
        ("c1", "u1", "student"),
        ("c1", "u2", "student"),
        ("c1", "t1", "teacher"),
        ("c2", "u1", "student"),
    }

    again = run_import(runner, "--district", "Springfield USD", "--lms", "Canvas", str(path), "--operator", "maria")
    assert again["summary"]["users"]["unchanged"] == 3 and again["summary"]["users"]["created"] == 0
    assert again["summary"]["enrollments"]["unchanged"] == 4
    assert {r["status"] for r in again["rows"]} == {"unchanged", "skipped"}
    assert db_state(app, district["id"]) == (saved, enrollments)  # updated_at included: no row was written

    with services_of(app).database.transaction() as session:
        audits = list(session.scalars(select(AuditEntry).where(AuditEntry.district_id == district["id"])))
    assert [(a.staff_email, a.action, a.target) for a in audits] == [
        ("cli:maria", "imported a roster", "oneroster")
    ] * 2
    assert audits[0].details["summary"]["users"]["created"] == 3


def test_oneroster_zip_with_class_codes_and_identifiers(
    runner: CliRunner, app: Flask, district: dict[str, str], tmp_path: Path
) -> None:
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, content in (("users", USERS), ("classes", CLASSES), ("enrollments", ENROLLMENTS), ("orgs", ORGS)):
            zf.writestr(f"sis-export/{name}.csv", content)
    report = run_import(
        runner, "--district", district["id"], str(archive), "--course-id", "classCode", "--sis-id", "identifier"
    )
    assert report["summary"]["enrollments"]["created"] == 4
    saved, enrollments = db_state(app, district["id"])
    assert set(saved) == {"S-1001", "S-1002", "T-1"}
    assert ("MATH7-1", "S-1001", "student") in enrollments and ("SCI7-1", "S-1001", "student") in enrollments


def test_changed_rows_are_updated_and_tobedeleted_removes_enrollments(
    runner: CliRunner, app: Flask, district: dict[str, str], tmp_path: Path
) -> None:
    run_import(runner, "--district", district["id"], str(write_oneroster(tmp_path / "v1")))
    delta = write_oneroster(
        tmp_path / "v2",
        users=USERS.replace("ada@school.example", "ada.l@school.example").replace("t1,,,true", "t1,tobedeleted,,true"),
        classes=CLASSES.replace("c2,,,", "c2,tobedeleted,,"),
        enrollments=ENROLLMENTS.replace("e2,,,c1,org1,u2,student", "e2,,,c1,org1,u2,teacher"),
    )
    report = run_import(runner, "--district", district["id"], str(delta))
    users, enrollments = by_key(report, "user"), by_key(report, "enrollment")
    assert users["u1"]["status"] == "updated" and users["u1"]["changes"] == ["email"]
    assert users["u2"]["status"] == "unchanged"
    assert users["t1"]["status"] == "skipped" and users["t1"]["reason"].startswith("status: tobedeleted")
    assert enrollments["e2"]["status"] == "updated" and enrollments["e2"]["changes"] == ["role"]
    assert enrollments["e4"]["status"] == "deleted"  # its class is tobedeleted
    # The teacher's row was skipped, so their enrollment is too (and stays as it was).
    assert enrollments["e3"]["status"] == "skipped" and "users.csv line 4" in enrollments["e3"]["reason"]

    saved, rows = db_state(app, district["id"])
    assert saved["u1"][2] == "ada.l@school.example" and "t1" in saved  # users are never deleted
    assert rows == {("c1", "u1", "student"), ("c1", "u2", "teacher"), ("c1", "t1", "teacher")}

    again = run_import(runner, "--district", district["id"], str(delta))
    assert by_key(again, "enrollment")["e4"]["status"] == "unchanged"
    assert again["summary"]["users"]["updated"] == again["summary"]["enrollments"]["updated"] == 0


def test_bad_rows_are_reported_and_the_others_imported(
    runner: CliRunner, app: Flask, district: dict[str, str], tmp_path: Path
) -> None:
    users = USERS + (
        "u3,,,true,org1,wizard,x,,X,Y,,,x@school.example,,,,,\r\n"  # line 6: unknown role
        "u4,,,true,org1,student,y,,Y,Z,,,not-an-email,,,,,\r\n"  # line 7
        "u1,,,true,org1,student,dup,,D,U,,,d@school.example,,,,,\r\n"  # line 8: repeats u1
        "u5,,,true,org1,student,too,many,fields,here,,,,,,,,,\r\n"  # line 9: 19 fields
    )
    enrollments = (
        ENROLLMENTS + "e5,,,c9,org1,u1,student,,,\r\ne6,,,c1,org1,u3,student,,,\r\ne7,,,c1,org1,u9,student,,,\r\n"
    )
    path = write_oneroster(tmp_path / "bad", users=users, enrollments=enrollments)
    report = run_import(runner, "--district", district["id"], str(path), code=3)

    rows = {(r["file"], r["line"]): r for r in report["rows"]}
    assert rows["users.csv", 6]["status"] == "error" and rows["users.csv", 6]["reason"].startswith("role: 'wizard'")
    assert rows["users.csv", 7]["reason"] == "email: 'not-an-email' is not an email address"
    assert rows["users.csv", 8]["reason"] == "sourcedId: 'u1' repeats line 2"
    assert "row has 19 fields, the header 18" in rows["users.csv", 9]["reason"]
    assert rows["enrollments.csv", 6]["reason"] == "classSourcedId: no class 'c9' in classes.csv"
    assert rows["enrollments.csv", 7]["status"] == "skipped"
    assert rows["enrollments.csv", 8]["reason"].startswith("userSourcedId: no user 'u9'")
    assert report["errors"] == 6
    saved, enrollments_saved = db_state(app, district["id"])
    assert set(saved) == {"u1", "u2", "t1"} and len(enrollments_saved) == 4

    printed = runner.invoke(main, ["roster", "import", "--district", district["id"], str(path)])
    assert printed.exit_code == 3
    assert "users.csv:6 user u3 error: role: 'wizard' is not a OneRoster role" in printed.output
    assert "users: 3 unchanged, 1 skipped, 3 error" in printed.output


def test_a_missing_column_or_file_changes_nothing(
    runner: CliRunner, app: Flask, district: dict[str, str], tmp_path: Path
) -> None:
    no_given = USERS.replace("givenName,", "first,")
    path = write_oneroster(tmp_path / "cols", users=no_given)
    result = runner.invoke(main, ["roster", "import", "--district", district["id"], str(path), "--json"])
    assert result.exit_code == 1
    error = json.loads(result.output)["error"]
    assert error["code"] == "roster_file_invalid"
    assert error["fields"] == {"users.csv": ["Missing required column 'givenName'."]}

    (path / "users.csv").write_text(USERS)
    (path / "enrollments.csv").unlink()
    printed = runner.invoke(main, ["roster", "import", "--district", district["id"], str(path)])
    assert (
        printed.exit_code == 1 and "no enrollments.csv" in printed.output and "nothing was imported" in printed.output
    )
    assert db_state(app, district["id"]) == ({}, set())


def test_dry_run_reports_and_changes_nothing(
    runner: CliRunner, app: Flask, district: dict[str, str], tmp_path: Path
) -> None:
    report = run_import(runner, "--district", district["id"], str(write_oneroster(tmp_path / "d")), "--dry-run")
    assert report["dryRun"] is True and report["summary"]["users"]["created"] == 3
    assert report["summary"]["enrollments"]["created"] == 4
    assert db_state(app, district["id"]) == ({}, set())
    with services_of(app).database.transaction() as session:
        assert session.scalar(select(func.count()).select_from(AuditEntry)) == 0


def test_import_is_scoped_to_its_district(
    runner: CliRunner, app: Flask, district: dict[str, str], tmp_path: Path
) -> None:
    other = json.loads(runner.invoke(main, ["district", "create", "Shelbyville USD", "--json"]).output)
    plain = tmp_path / "other.csv"
    plain.write_text("sis_id,email,name,role,course\nu1,ada@elsewhere.example,Ada Elsewhere,student,\n")
    run_import(runner, "--district", other["id"], str(plain))

    path = write_oneroster(tmp_path / "scoped")
    # The other district has no connection: naming this district's connection from there is not found.
    refused = runner.invoke(
        main, ["roster", "import", "--district", other["id"], "--lms", district["lms"], str(path), "--json"]
    )
    assert refused.exit_code == 1 and json.loads(refused.output)["error"]["code"] == "not_found"

    report = run_import(runner, "--district", district["id"], str(path))
    assert by_key(report, "user")["u1"]["status"] == "created"  # the other district's u1 is not this one's
    theirs, _ = db_state(app, other["id"])
    assert theirs["u1"][1:3] == ("Ada Elsewhere", "ada@elsewhere.example")
    ours, _ = db_state(app, district["id"])
    assert ours["u1"][0] != theirs["u1"][0]

    missing = runner.invoke(main, ["roster", "import", "--district", "Nowhere USD", str(path), "--json"])
    assert missing.exit_code == 1 and json.loads(missing.output)["error"]["fields"] == {
        "district": ["No district with this id or name."]
    }


def test_plain_csv_links_lms_ids_and_checks_repeated_users(
    runner: CliRunner, app: Flask, district: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "roster.csv"
    path.write_text(
        "sis_id,email,name,role,course,lms_user_id\n"
        "S-1,ada@school.example,Ada Lovelace,student,math-7,canvas-11\n"
        "S-1,ada@school.example,Ada Lovelace,student,science-7,canvas-11\n"
        "S-2,alan@school.example,Alan Turing,student,math-7,\n"
        "S-2,alan@school.example,Alan T.,student,science-7,\n"  # differs from line 4
        "T-1,grace@school.example,Grace Hopper,teacher,math-7,\n"
        "S-3,,,pupil,math-7,\n"
    )
    report = run_import(runner, "--district", district["id"], "--format", "csv", str(path), code=3)
    assert report["format"] == "csv"
    assert report["summary"]["users"] == {
        "created": 3,
        "updated": 0,
        "unchanged": 0,
        "deleted": 0,
        "skipped": 0,
        "error": 1,
    }
    rows = {r["line"]: r for r in report["rows"] if r["status"] == "error"}
    assert rows[5]["reason"] == "name: differs from line 4 for the same sis_id"
    assert rows[7]["reason"] == "role: 'pupil' is not student or teacher"
    _, enrollments = db_state(app, district["id"])
    assert enrollments == {
        ("math-7", "S-1", "student"),
        ("science-7", "S-1", "student"),
        ("math-7", "S-2", "student"),
        ("math-7", "T-1", "teacher"),
    }
    with services_of(app).database.transaction() as session:
        identities = [(i.subject, i.lms_connection_id) for i in session.scalars(select(LmsIdentity))]
    assert identities == [("canvas-11", district["lms"])]

    again = run_import(runner, "--district", district["id"], str(path), code=3)
    assert again["summary"]["users"]["unchanged"] == 3 and again["summary"]["enrollments"]["created"] == 0


def test_existing_user_without_sis_id_is_adopted_by_email(
    runner: CliRunner, app: Flask, district: dict[str, str], tmp_path: Path
) -> None:
    made = runner.invoke(
        main, ["user", "add", "--district", district["id"], "--name", "Ada", "--email", "ada@school.example", "--json"]
    )
    launched = json.loads(made.output)["id"]
    report = run_import(runner, "--district", district["id"], str(write_oneroster(tmp_path / "a")))
    assert by_key(report, "user")["u1"]["status"] == "updated"
    assert by_key(report, "user")["u1"]["changes"] == ["sisID", "name"]
    saved, _ = db_state(app, district["id"])
    assert saved["u1"][0] == launched and saved["u1"][1] == "Ada Lovelace"


def test_enrolling_routes_grades_that_waited(runner: CliRunner, world: World, tmp_path: Path) -> None:
    path = tmp_path / "roster.csv"
    path.write_text("sis_id,email,name,role,course\nS-9,nina@school.example,Nina,student,\n")
    run_import(runner, "--district", world.district_id, str(path))
    posted = world.post_grade({"assignmentID": "quiz-1", "sisID": "S-9", "percentage": 0.5})
    assert posted.status_code == 202, posted.text

    def placed_deliveries() -> int:
        with world.session() as session:
            query = select(func.count()).where(
                Delivery.grade_id == posted.json()["id"], Delivery.placement_id.is_not(None)
            )
            return int(session.scalar(query) or 0)

    assert placed_deliveries() == 0  # not enrolled in the course where quiz-1 is placed
    path.write_text(f"sis_id,email,name,role,course\nS-9,nina@school.example,Nina,student,{COURSE}\n")
    report = run_import(runner, "--district", world.district_id, "--lms", "Sandbox", str(path))
    assert report["summary"]["enrollments"]["created"] == 1 and report["deliveriesCreated"] == 1
    assert placed_deliveries() == 1


def test_a_large_import_refreshes_postgresql_statistics(
    runner: CliRunner, app: Flask, district: dict[str, str], database_url: str, tmp_path: Path
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("planner statistics are PostgreSQL's")
    database = services_of(app).database
    with database.transaction() as session:
        before = session.scalar(text("SELECT now()"))
    path = tmp_path / "big.csv"
    path.write_text("sis_id,email,name,role,course\n" + "".join(f"S-{n},,Student {n},student,\n" for n in range(1000)))
    assert run_import(runner, "--district", district["id"], str(path))["summary"]["users"]["created"] == 1000
    deadline = time.monotonic() + 5
    while True:  # the statistics views may lag the ANALYZE by a moment
        with database.transaction() as session:
            analyzed = session.scalar(text("SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'users'"))
        if (analyzed is not None and analyzed >= before) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert analyzed is not None and analyzed >= before


def test_several_connections_need_lms_and_a_missing_path_is_a_json_error(
    runner: CliRunner, app: Flask, district: dict[str, str], tmp_path: Path
) -> None:
    added = runner.invoke(
        main,
        [
            *("lms", "add", "--district", district["id"], "--name", "Schoology", "--adapter", "sandbox"),
            *("--setting", "base_url=http://127.0.0.1:9/sandbox-lms/y", "--setting", "secret=0123456789abcdef0123"),
        ],
    )
    assert added.exit_code == 0, added.output
    path = write_oneroster(tmp_path / "two")
    refused = runner.invoke(main, ["roster", "import", "--district", district["id"], str(path), "--json"])
    assert refused.exit_code == 1
    assert json.loads(refused.output)["error"]["fields"] == {
        "lms": ["Required when the district has several LMS connections."]
    }
    assert db_state(app, district["id"]) == ({}, set())

    report = run_import(runner, "--district", district["id"], "--lms", "Schoology", str(path))
    assert report["lms"]["name"] == "Schoology" and report["summary"]["enrollments"]["created"] == 4

    missing = runner.invoke(
        main, ["roster", "import", "--district", district["id"], str(tmp_path / "nope.zip"), "--json"]
    )
    assert missing.exit_code == 1
    assert json.loads(missing.output)["error"] == {
        "code": "roster_file_invalid",
        "message": f"{tmp_path / 'nope.zip'} does not exist",
        "fields": {"path": ["No such file or directory."]},
    }
