"""`gateway roster import`: a district's roster files in one call (gateway/services/roster_import.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from gateway.cli_admin import operator_option
from gateway.cli_data import refuse
from gateway.cli_progress import Progress
from gateway.services.admin_audit import Operator
from gateway.services.errors import ServiceError

# Exit codes: 0 no row refused; 1 nothing imported (a file, the district or the LMS refused); 2 click's usage
# errors; 3 imported, but some rows were refused (they are in the report).
EXIT_ROW_ERRORS = 3


@click.group()
def roster() -> None:
    """Roster files: users and enrollments in bulk."""


@roster.command("import")
@click.option("--district", "district_ref", required=True, help="The district's id or name.")
@click.option("--lms", "lms_ref", default=None, help="The LMS connection (id or name) to enroll into.")
@click.argument("path", type=click.Path(path_type=Path))  # the service says, in JSON too, when it is missing
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["oneroster", "csv"]),
    default=None,
    help="oneroster: a directory or .zip of OneRoster 1.1 CSV; csv: one file sis_id,email,name,role,course"
    "[,lms_user_id]. Default: by PATH (a directory or .zip is OneRoster).",
)
@click.option(
    "--sis-id",
    "sis_id",
    type=click.Choice(["sourcedId", "identifier"]),
    default="sourcedId",
    show_default=True,
    help="OneRoster: the users.csv column Passback's sisID is taken from.",
)
@click.option(
    "--course-id",
    "course_id",
    type=click.Choice(["sourcedId", "classCode"]),
    default="sourcedId",
    show_default=True,
    help="OneRoster: the classes.csv column that is the LMS's course id.",
)
@click.option("--dry-run", is_flag=True, help="Report what would change, and change nothing.")
@click.option("--verbose", is_flag=True, help="Text: list every row, not only refused and skipped ones.")
@operator_option
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def roster_import(
    district_ref: str,
    lms_ref: str | None,
    path: Path,
    fmt: str | None,
    sis_id: str,
    course_id: str,
    dry_run: bool,
    verbose: bool,
    operator_name: str,
    as_json: bool,
) -> None:
    """Import users and enrollments from PATH; re-importing the same files changes nothing."""
    from gateway.cli import _app, _services
    from gateway.services.roster_import import import_roster

    app = _app()
    services = _services(app)
    with Progress("importing rows") as progress:
        try:
            with app.app_context():
                report = import_roster(
                    services.unit_of_work(),
                    services.box,
                    district_ref,
                    path,
                    lms_ref=lms_ref,
                    fmt=fmt,  # type: ignore[arg-type]
                    sis_id=sis_id,  # type: ignore[arg-type]
                    course_id=course_id,  # type: ignore[arg-type]
                    dry_run=dry_run,
                    operator=Operator(operator_name).name,
                    progress=progress,
                )
        except ServiceError as exc:
            progress.close()
            refuse(exc, as_json, "nothing was imported")
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(_text(report, verbose))
    if report["errors"]:
        sys.exit(EXIT_ROW_ERRORS)


def _text(report: dict[str, Any], verbose: bool) -> str:
    lines = []
    for row in report["rows"]:
        if verbose or row["status"] in ("error", "skipped"):
            reason = f": {row['reason']}" if row["reason"] else ""
            lines.append(f"{row['file']}:{row['line']} {row['kind']} {row['key']} {row['status']}{reason}")
    summary = report["summary"]
    for kind in ("users", "enrollments"):
        counts = ", ".join(f"{n} {status}" for status, n in summary[kind].items() if n)
        lines.append(f"{kind}: {counts or 'none'}")
    refused = summary["classes"]["error"] + summary["rows"]["error"]
    if refused:
        lines.append(f"other rows refused: {refused}")
    lms = report["lms"]["name"] if report["lms"] else "no LMS connection"
    lines.append(
        f"district {report['district']['name']} ({report['district']['id']}), {lms}; "
        f"{report['deliveriesCreated']} waiting grades routed"
        + ("; dry run: nothing was changed" if report["dryRun"] else "")
    )
    return "\n".join(lines)
