"""Roster import at district scale (issue 16): `gateway roster import` of a OneRoster 1.1 CSV export of --users
(10,000) users in --classes (300) classes with --enrollments (30,000) enrollments, written to a temporary
directory. Timed: the first import (everything created), the same files again (everything unchanged), and an
export where 1% of the users changed their email (those updated, the rest unchanged). Each run is the service
`import_roster` in one unit of work, as the command calls it, on the benchmark's own PostgreSQL database when
GATEWAY_BENCH_DATABASE_URL or GATEWAY_TEST_DATABASE_URL names one, else SQLite. Aim: each well under a minute.

Exits 1 when a check fails (a count that is not what the files say), never on speed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cryptography.fernet import Fernet  # noqa: E402

from bench.backfill import bench_settings, database  # noqa: E402
from gateway import create_app  # noqa: E402
from gateway.composition import services_of  # noqa: E402
from gateway.services.directory import create_district  # noqa: E402
from gateway.services.lms import add_lms_connection  # noqa: E402
from gateway.services.roster_import import import_roster  # noqa: E402


def write_export(directory: Path, users: int, classes: int, enrollments: int, changed: int = 0) -> None:
    """A OneRoster 1.1 bulk export: teachers first (one per 5 classes), then students; each student in
    enrollments / students classes, every class with its teacher. `changed` students get a new email."""
    rng = random.Random(16)
    directory.mkdir(parents=True, exist_ok=True)
    teachers = max(1, classes // 5)
    students = users - teachers
    header = "sourcedId,status,dateLastModified,enabledUser,orgSourcedIds,role,username,userIds,givenName,"
    header += "familyName,middleName,identifier,email,sms,phone,agentSourcedIds,grades,password\n"
    rows = [header]
    for t in range(teachers):
        rows.append(f"t{t},,,true,org1,teacher,t{t},,Teacher,No{t},,T-{t},t{t}@school.example,,,,,\n")
    for s in range(students):
        email = f"s{s}{'.new' if s < changed else ''}@school.example"
        rows.append(f's{s},,,true,org1,student,s{s},,Student,"No{s}, Jr.",,S-{s},{email},,,,07,\n')
    (directory / "users.csv").write_text("".join(rows))
    rows = ["sourcedId,status,dateLastModified,title,grades,courseSourcedId,classCode,classType,location,"]
    rows[0] += "schoolSourcedId,termSourcedIds,subjects,subjectCodes,periods\n"
    rows += [f"c{c},,,Class {c},07,crs{c % 20},C-{c},scheduled,,org1,term1,,,1\n" for c in range(classes)]
    (directory / "classes.csv").write_text("".join(rows))
    rows = ["sourcedId,status,dateLastModified,classSourcedId,schoolSourcedId,userSourcedId,role,primary,"]
    rows[0] += "beginDate,endDate\n"
    rows += [f"e-t{c},,,c{c},org1,t{c % teachers},teacher,true,,\n" for c in range(classes)]
    base, extra = divmod(max(0, enrollments - classes), students)
    for s in range(students):
        for c in rng.sample(range(classes), min(classes, base + (s < extra))):
            rows.append(f"e-{s}-{c},,,c{c},org1,s{s},student,false,,\n")
    (directory / "enrollments.csv").write_text("".join(rows))
    (directory / "orgs.csv").write_text("sourcedId,status,dateLastModified,name,type,identifier,parentSourcedId\n")


def timed(app: Any, district_id: str, path: Path) -> tuple[float, dict[str, Any]]:
    services = services_of(app)
    started = time.perf_counter()
    report = import_roster(services.unit_of_work(), services.box, district_id, path, lms_ref="Canvas", operator="bench")
    return time.perf_counter() - started, report


def run(args: argparse.Namespace, url: str, tmp: Path) -> dict[str, Any]:
    app = create_app(bench_settings(url, Fernet.generate_key().decode()))
    services = services_of(app)
    with services.database.transaction() as session:
        district_id = create_district(session, "Bench USD").id
        add_lms_connection(
            session,
            services.box,
            district_id,
            "Canvas",
            "sandbox",
            {"base_url": "http://127.0.0.1:9/sandbox-lms/x", "secret": "0123456789abcdef0123"},
        )
    export, changed_export = tmp / "export", tmp / "changed"
    write_export(export, args.users, args.classes, args.enrollments)
    changed = args.users // 100
    write_export(changed_export, args.users, args.classes, args.enrollments, changed=changed)
    rows = sum(len(p.read_text().splitlines()) - 1 for p in export.glob("*.csv"))
    report: dict[str, Any] = {"database": url.split(":", 1)[0], "rows": rows, "problems": []}
    with app.app_context():
        for label, path in (("first", export), ("again", export), ("changed", changed_export)):
            seconds, result = timed(app, district_id, path)
            summary = result["summary"]
            report[label] = {
                "seconds": round(seconds, 2),
                "users": summary["users"],
                "enrollments": summary["enrollments"],
            }
            expect = {
                "first": ("created", args.users),
                "again": ("unchanged", args.users),
                "changed": ("updated", changed),
            }[label]
            if summary["users"][expect[0]] != expect[1] or result["errors"]:
                report["problems"].append(f"{label}: users {summary['users']}, {result['errors']} errors")
    services.database.dispose()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--classes", type=int, default=300)
    parser.add_argument("--enrollments", type=int, default=30_000)
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures to this file.")
    args = parser.parse_args(argv)
    postgres_url = os.environ.get("GATEWAY_BENCH_DATABASE_URL") or os.environ.get("GATEWAY_TEST_DATABASE_URL")
    if postgres_url and not postgres_url.startswith("postgresql"):
        postgres_url = None
    with tempfile.TemporaryDirectory() as tmp, database(postgres_url, Path(tmp), "roster") as url:
        print(
            f"roster import: {args.users} users, {args.classes} classes, {args.enrollments} enrollments …", flush=True
        )
        report = run(args, url, Path(tmp))
    report["when"] = datetime.now(UTC).isoformat()
    report["args"] = {k: str(v) for k, v in vars(args).items()}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    for label, what in (("first", "first import"), ("again", "same files again"), ("changed", "1% of emails changed")):
        figures = report[label]
        print(
            f"  {what} ({report['database']}, {report['rows']} rows): {figures['seconds']:.2f} s; "
            f"users {figures['users']['created']} created, {figures['users']['updated']} updated, "
            f"{figures['users']['unchanged']} unchanged; enrollments {figures['enrollments']['created']} created, "
            f"{figures['enrollments']['unchanged']} unchanged",
            flush=True,
        )
    for problem in report["problems"]:
        print(f"  FAILED: {problem}", flush=True)
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
