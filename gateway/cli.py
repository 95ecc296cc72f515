"""`gateway …`: the operator's commands. Every command takes --json for scripting."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import click
from flask import Flask
from sqlalchemy.orm import Session

from adapters.base import DeliveryError
from gateway import create_app
from gateway.cli_progress import Progress
from gateway.composition import Services, services_of
from gateway.services.demo import DemoDistrict, KeptCredentials
from gateway.services.errors import ServiceError
from gateway.services.unit_of_work import UnitOfWork

P = ParamSpec("P")
R = TypeVar("R")


def _app() -> Flask:
    return create_app()


def _services(app: Flask) -> Services:
    return services_of(app)


@contextmanager
def _session(app: Flask) -> Iterator[Session]:
    with app.app_context(), services_of(app).database.transaction() as session:
        yield session


def _call(app: Flask, service: Callable[Concatenate[UnitOfWork, P], R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """Run one service in a unit of work of its own (the service commits; the unit's nudges then wake delivery)."""
    with app.app_context():
        return service(services_of(app).unit_of_work(), *args, **kwargs)


def _emit(as_json: bool, data: dict[str, Any], text: Callable[[dict[str, Any]], str]) -> None:
    click.echo(json.dumps(data, indent=2, default=str) if as_json else text(data))


def _fail(exc: ServiceError) -> None:
    if click.get_current_context().params.get("as_json"):  # the error shape of docs/cli.md, exit code 1
        error = {"code": exc.code, "message": exc.message, **({"fields": exc.fields} if exc.fields else {})}
        click.echo(json.dumps({"error": error}, indent=2, default=str))
        raise click.exceptions.Exit(1)
    message = exc.message
    if exc.fields:
        message += "\n" + "\n".join(f"  {k}: {'; '.join(map(str, v))}" for k, v in exc.fields.items())
    raise click.ClickException(message)


json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


class _Main(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        from gateway.config import ConfigurationError

        try:
            return super().invoke(ctx)
        except ConfigurationError as exc:
            raise click.ClickException(str(exc)) from None  # one line, no traceback


@click.group(cls=_Main)
def main() -> None:
    """Passback: the grade passback gateway."""
    from gateway.config import logging_from_env
    from gateway.logs import configure_logging

    level, fmt = logging_from_env()
    configure_logging(level, fmt, if_unconfigured=True)  # JSON lines or text (GATEWAY_LOG_FORMAT), on stderr


# --- database ----------------------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply Alembic migrations up to REVISION."""
    from gateway.config import Settings
    from gateway.migrate import upgrade

    upgrade(Settings.from_env().database_url, revision)
    click.echo("database is up to date")


# --- districts, apps, tokens -------------------------------------------------------------------------------


@main.group()
def district() -> None:
    """Districts."""


@district.command("create")
@click.argument("name")
@json_option
def district_create(name: str, as_json: bool) -> None:
    from gateway.services.operator_actions import create_district

    try:
        data = _call(_app(), create_district, name)
    except ServiceError as exc:
        _fail(exc)
    _emit(as_json, data, lambda d: f"district {d['id']} ({d['name']})")


@main.group("app")
def app_group() -> None:
    """Learning apps."""


@app_group.command("create")
@click.argument("name")
@click.option("--redirect-uri", required=True, help="Where the app receives sign-in codes.")
@click.option("--catalog-url", default=None, help="URL the app serves its assignment list at (optional).")
@json_option
def app_create(name: str, redirect_uri: str, catalog_url: str | None, as_json: bool) -> None:
    """Register an app; prints its client id and secret once."""
    from gateway.services.operator_actions import create_app

    try:
        data = _call(_app(), create_app, name, redirect_uri, catalog_url)
    except ServiceError as exc:
        _fail(exc)
    _emit(
        as_json,
        data,
        lambda d: (
            f"app {d['id']} ({d['name']})\nclient_id: {d['client_id']}\n"
            f"client_secret: {d['client_secret']}  (shown once)"
        ),
    )


@app_group.command("authorize")
@click.argument("app_ref", metavar="APP")
@click.argument("district_id", metavar="DISTRICT")
@json_option
def app_authorize(app_ref: str, district_id: str, as_json: bool) -> None:
    """Authorize APP in DISTRICT and print a district-app token (shown once)."""
    from gateway.services.operator_actions import authorize_app

    try:
        data = _call(_app(), authorize_app, app_ref, district_id)
    except ServiceError as exc:
        _fail(exc)
    _emit(as_json, data, lambda d: f"district-app token (shown once): {d['token']}\ntoken id: {d['token_id']}")


@main.group()
def token() -> None:
    """API tokens."""


@token.command("revoke")
@click.argument("token_ref", metavar="TOKEN_OR_ID")
@json_option
def token_revoke(token_ref: str, as_json: bool) -> None:
    """Revoke a token, given the token itself or its id."""
    from gateway.services.operator_actions import revoke_token

    try:
        data = _call(_app(), revoke_token, token_ref)
    except ServiceError as exc:
        _fail(exc)
    _emit(as_json, data, lambda d: f"token {d['token_id']} revoked")


# --- users ------------------------------------------------------------------------------------------------


@main.group()
def user() -> None:
    """Users and their course enrollments."""


@user.command("add")
@click.option("--district", "district_id", required=True)
@click.option("--name", default="")
@click.option("--email", default=None)
@click.option("--role", type=click.Choice(["student", "teacher"]), default="student", show_default=True)
@click.option("--sis-id", default=None, help="The student information system's id (LIS person sourcedId).")
@json_option
def user_add(district_id: str, name: str, email: str | None, role: str, sis_id: str | None, as_json: bool) -> None:
    from gateway.services.operator_actions import add_user

    try:
        data = _call(_app(), add_user, district_id, name=name, email=email, role=role, sis_id=sis_id)
    except ServiceError as exc:
        _fail(exc)
    _emit(as_json, data, lambda d: f"user {d['id']} ({d['name'] or d['role']})")


@user.command("enroll")
@click.option("--district", "district_id", required=True)
@click.option("--lms", "lms_ref", required=True, help="LMS connection id or name.")
@click.option("--course", required=True, help="The LMS's course id.")
@click.option("--user", "user_id", required=True)
@click.option("--lms-user-id", default=None, help="How this LMS names the user, if not by Passback's id.")
@json_option
def user_enroll(
    district_id: str, lms_ref: str, course: str, user_id: str, lms_user_id: str | None, as_json: bool
) -> None:
    """Enroll a user in an LMS course: grades for assignments placed there then route to it."""
    from gateway.services.roster import enroll_user_in_course

    try:
        services = _services(_app())
        enrolled = enroll_user_in_course(
            services.unit_of_work(), services.box, district_id, lms_ref, course, user_id, lms_user_id
        )
        data = {"user": user_id, "course": course, "lms": enrolled.lms_name, "deliveries_created": enrolled.routed}
    except ServiceError as exc:
        _fail(exc)
    _emit(as_json, data, lambda d: f"enrolled {d['user']} in {d['course']} ({d['deliveries_created']} deliveries)")


# --- LMS connections and placements -----------------------------------------------------------------------


def _parse_settings(pairs: tuple[str, ...], settings_json: str | None) -> dict[str, Any]:
    settings: dict[str, Any] = json.loads(settings_json) if settings_json else {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--setting")
        settings[key.strip()] = value
    return settings


@main.group()
def lms() -> None:
    """LMS connections."""


@lms.command("add")
@click.option("--district", "district_id", required=True)
@click.option("--name", required=True, help="A name staff will recognise, e.g. 'Canvas production'.")
@click.option("--adapter", required=True, help="sandbox, lti13, lti11, schoology …")
@click.option("--setting", "pairs", multiple=True, metavar="KEY=VALUE", help="An adapter setting (repeatable).")
@click.option("--settings-json", default=None, help="All adapter settings as one JSON object.")
@json_option
def lms_add(
    district_id: str, name: str, adapter: str, pairs: tuple[str, ...], settings_json: str | None, as_json: bool
) -> None:
    """Add an LMS connection; its settings (secrets included) are stored encrypted."""
    from gateway.services.operator_actions import add_lms_connection

    settings = _parse_settings(pairs, settings_json)
    app = _app()
    try:
        data = _call(app, add_lms_connection, _services(app).box, district_id, name, adapter, settings)
    except ServiceError as exc:
        _fail(exc)
    _emit(as_json, data, lambda d: f"LMS connection {d['id']} ({d['name']}, adapter {d['adapter']})")


@lms.command("set")
@click.option("--district", "district_id", required=True)
@click.option("--lms", "lms_ref", required=True, help="The connection's id or name.")
@click.option("--setting", "pairs", multiple=True, metavar="KEY=VALUE", help="A setting to change (repeatable).")
@click.option("--settings-json", default=None, help="The settings to change as one JSON object.")
@json_option
def lms_set(district_id: str, lms_ref: str, pairs: tuple[str, ...], settings_json: str | None, as_json: bool) -> None:
    """Change settings of an LMS connection (e.g. allowed_hosts=lms.example.edu); the rest are kept."""
    from gateway.services.operator_actions import change_lms_settings

    changes = _parse_settings(pairs, settings_json)
    app = _app()
    try:
        data = _call(app, change_lms_settings, _services(app).box, district_id, lms_ref, changes)
    except ServiceError as exc:
        _fail(exc)
    _emit(as_json, data, lambda d: f"LMS connection {d['id']} ({d['name']}): changed {', '.join(d['changed'])}")


@lms.command("sync-roster")
@click.option("--district", "district_id", required=True)
@click.option("--lms", "lms_ref", required=True, help="LMS connection id or name.")
@json_option
def lms_sync_roster(district_id: str, lms_ref: str, as_json: bool) -> None:
    """Map placed courses' members (LTI NRPS) to Passback users, so grades reach students who never launched."""
    from gateway.services.roster import sync_roster

    app = _app()
    services = _services(app)
    try:
        with app.app_context(), Progress("reading course rosters") as progress:
            result = sync_roster(
                services.database,
                services.box,
                services.adapters,
                district_id,
                lms_ref,
                nudger=services.nudger,
                progress=progress,
            )
    except ServiceError as exc:
        _fail(exc)
    except DeliveryError as exc:
        raise click.ClickException(f"the LMS refused the roster request: {exc.message}") from exc
    data = dict(vars(result))
    _emit(
        as_json,
        data,
        lambda d: (
            f"{d['courses']} courses, {d['members']} members, {d['matched']} matched "
            f"({d['new_identities']} new), {len(d['unmatched'])} unmatched, {d['released']} grades released"
        ),
    )


@lms.command("limits")
@click.option("--district", "district_id", required=True)
@click.option("--lms", "lms_ref", required=True, help="LMS connection id or name.")
@click.option("--rate", type=click.FloatRange(min=0.1, max=10_000), default=None, help="Requests a second.")
@click.option("--concurrency", type=click.IntRange(min=1, max=256), default=None, help="Deliveries at once.")
@click.option("--default", "use_default", is_flag=True, help="Go back to the installation's defaults.")
@json_option
def lms_limits(
    district_id: str, lms_ref: str, rate: float | None, concurrency: int | None, use_default: bool, as_json: bool
) -> None:
    """Show or set one LMS connection's request rate and concurrency (shared by every worker)."""
    from gateway.services.operator_actions import set_lms_limits

    app = _app()
    settings = app.config["PASSBACK"]
    try:
        data = _call(
            app,
            set_lms_limits,
            district_id,
            lms_ref,
            rate=rate,
            concurrency=concurrency,
            use_default=use_default,
            default_rate=settings.connection_rate,
            default_concurrency=settings.connection_concurrency,
        )
    except ServiceError as exc:
        _fail(exc)
    _emit(
        as_json,
        data,
        lambda d: (
            f"{d['lms']}: {d['rate']:g} requests/s{'' if d['own_rate'] else ' (default)'}, "
            f"{d['concurrency']} at once{'' if d['own_concurrency'] else ' (default)'}"
        ),
    )


@lms.command("probe")
@click.option("--district", "district_id", required=True)
@click.option("--lms", "lms_ref", required=True, help="LMS connection id or name.")
@json_option
def lms_probe(district_id: str, lms_ref: str, as_json: bool) -> None:
    """Check that the LMS answers and accepts the connection's credentials, before any grade is sent."""
    app = _app()
    try:
        with app.app_context():
            report = _services(app).probe_connection(district_id, lms_ref)
    except ServiceError as exc:
        _fail(exc)
    data = {"ok": report.ok, "message": report.message}
    _emit(as_json, data, lambda d: ("ok: " if d["ok"] else "FAILED: ") + d["message"])
    if not report.ok:
        raise SystemExit(1)


@main.group()
def placement() -> None:
    """Placements: where an assignment lives in an LMS."""


@placement.command("add")
@click.option("--district", "district_id", required=True)
@click.option("--lms", "lms_ref", required=True, help="LMS connection id or name.")
@click.option("--app", "app_ref", required=True, help="App id or client id.")
@click.option("--assignment", required=True, help="The app's assignmentID.")
@click.option("--course", default=None, help="The LMS's course id (for Schoology, defaults to the section).")
@click.option("--section", default=None, help="The LMS's section id (Schoology: where the grades go).")
@click.option("--lms-assignment", default=None, help="The LMS's own assignment id (Schoology's grade column).")
@click.option("--destination-json", default=None, help="Adapter destination data, e.g. a line item URL.")
@json_option
def placement_add(
    district_id: str,
    lms_ref: str,
    app_ref: str,
    assignment: str,
    course: str | None,
    section: str | None,
    lms_assignment: str | None,
    destination_json: str | None,
    as_json: bool,
) -> None:
    """Place an app's assignment in an LMS course or section; grades for it are routed there."""
    from gateway.services.lms import place_assignment

    destination = json.loads(destination_json) if destination_json else {}
    if lms_assignment:
        destination["assignment_id"] = lms_assignment
    try:
        data = _call(
            _app(),
            place_assignment,
            district_id,
            lms_ref,
            app_ref,
            assignment,
            course,
            section_id=section,
            destination=destination,
        )
    except ServiceError as exc:
        _fail(exc)
    _emit(as_json, data, lambda d: f"placement {d['id']}: {d['assignment']} in course {d['course']}")


def _column_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option("--district", "district_id", required=True),
            click.option("--lms", "lms_ref", required=True, help="LMS connection id or name."),
            click.option("--app", "app_ref", required=True, help="App id or client id."),
            click.option("--section", required=True, help="The LMS's section id (Schoology)."),
            click.option("--lms-assignment", default=None, help="The LMS's assignment id; omit for the whole section."),
        ]
    ):
        command = option(command)
    return command


@placement.command("approve")
@_column_options
@json_option
def placement_approve(
    district_id: str, lms_ref: str, app_ref: str, section: str, lms_assignment: str | None, as_json: bool
) -> None:
    """Let an app place grades (POST /v1/placements) into this LMS assignment, or every assignment of the section."""
    from gateway.services.operator_actions import approve_column

    try:
        data = _call(_app(), approve_column, district_id, lms_ref, app_ref, section, lms_assignment)
    except ServiceError as exc:
        _fail(exc)
    column = f"assignment {lms_assignment}" if lms_assignment else "every assignment"
    _emit(as_json, data, lambda d: f"approved: app {d['app']} may place grades into {column} of section {section}")


@placement.command("revoke")
@_column_options
@json_option
def placement_revoke(
    district_id: str, lms_ref: str, app_ref: str, section: str, lms_assignment: str | None, as_json: bool
) -> None:
    """Withdraw an approval; placements already made stay (new ones into the column are refused)."""
    from gateway.services.operator_actions import revoke_column

    try:
        data = _call(_app(), revoke_column, district_id, lms_ref, app_ref, section, lms_assignment)
    except ServiceError as exc:
        _fail(exc)
    _emit(as_json, data, lambda d: f"{d['removed']} approval(s) withdrawn")


@placement.command("approvals")
@click.option("--district", "district_id", required=True)
@click.option("--lms", "lms_ref", default=None, help="Only this LMS connection (id or name).")
@json_option
def placement_approvals(district_id: str, lms_ref: str | None, as_json: bool) -> None:
    """The LMS columns each app may place grades into."""
    from gateway.services.operator_actions import list_approvals

    try:
        data = _call(_app(), list_approvals, district_id, lms_ref)
    except ServiceError as exc:
        _fail(exc)
    _emit(
        as_json,
        data,
        lambda d: (
            "\n".join(
                f"app {a['app']}: section {a['section']}, {a['lmsAssignment'] or 'all'} ({a['approvedBy']})"
                for a in d["approvals"]
            )
            or "no approvals"
        ),
    )


@main.group()
def staff() -> None:
    """District staff accounts for the dashboard."""


@staff.command("create")
@click.option("--district", "district_id", required=True)
@click.option("--email", required=True)
@click.option("--set-password", is_flag=True, help="Prompt for a password now instead of printing a one-time link.")
@click.option(
    "--role",
    type=click.Choice(["admin", "viewer"]),
    default="admin",
    show_default=True,
    help="admin: acts on the dashboard (retry, pause, fix); viewer: looks only.",
)
@json_option
def staff_create(district_id: str, email: str, set_password: bool, role: str, as_json: bool) -> None:
    """Create a staff account: with a password typed now, or with a one-time setup link (valid 24 hours)."""
    from gateway.services.operator_actions import create_staff

    password = click.prompt("Password", hide_input=True, confirmation_prompt=True) if set_password else None
    app = _app()
    try:
        data = _call(
            app, create_staff, district_id, email, password, role=role, public_url=app.config["PASSBACK"].public_url
        )
    except ServiceError as exc:
        _fail(exc)
    _emit(
        as_json,
        data,
        lambda d: (
            f"staff {d['email']} ({d['role']}) created"
            + (f"\none-time link to set the password (24 h): {d['setup_link']}" if "setup_link" in d else "")
        ),
    )


@main.group()
def keys() -> None:
    """Passback's LTI signing keys."""


@keys.command("rotate")
@json_option
def keys_rotate(as_json: bool) -> None:
    """Create a new current signing key; the old one stays published as previous until the next rotation."""
    from gateway.services.operator_actions import rotate_signing_keys

    app = _app()
    data = _call(app, rotate_signing_keys, _services(app).box)
    _emit(as_json, data, lambda d: f"current key {d['kid']}; published: {', '.join(d['published'])}")


# --- demo, worker, server ---------------------------------------------------------------------------------


def _demo_banner(demo: DemoDistrict, public_url: str, token_file: str) -> str:
    body = json.dumps({"assignmentID": demo.assignment_id, "sisID": demo.students[0].sis_id, "percentage": 0.8})
    if demo.token_kept:
        token_note = f"kept from {token_file}"
    elif token_file:
        token_note = f"new; kept in {token_file} for the next runs"
    else:
        token_note = "shown once; a new one is issued each run unless GATEWAY_DEMO_TOKEN_FILE is set"  # noqa: S105
    students = ", ".join(f"{s.name} (sisID {s.sis_id}, userID {s.user_id})" for s in demo.students)
    return "\n".join(
        [
            "",
            "Passback sandbox district" + (" created" if demo.created else "") + f": {demo.district_id}",
            f"  app token ({token_note}): {demo.token}",
            f"  students: {students}",
            f"  demo app sign-in: client id {demo.client_id}, client secret {demo.client_secret}, "
            f"redirect URI {demo.redirect_uri}",
            f"  sandbox LMS: {demo.sandbox_url} (bearer secret {demo.sandbox_secret})",
            f"  sandbox page (launch a student, inject faults, the gradebook): {public_url}/dashboard/sandbox "
            f"(an account: .venv/bin/gateway staff create --district {demo.district_id} --email you@example.com)",
            "  all of it as JSON: .venv/bin/gateway demo --json",
            "",
            "Post a grade:",
            f"  curl -sS -X POST {public_url}/v1/grade -H 'Authorization: Bearer {demo.token}' "
            f"-H 'Content-Type: application/json' -d '{body}'",
            "",
        ]
    )


def _read_demo_token_file(path: Path) -> KeptCredentials:
    """What an earlier run kept; nothing when the file is missing or unreadable (new credentials replace it)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return KeptCredentials()
    except (OSError, ValueError) as exc:
        click.echo(f"warning: {path} is not readable ({exc}); new demo credentials replace it", err=True)
        return KeptCredentials()
    if not isinstance(data, dict):
        return KeptCredentials()
    token, secret = data.get("token"), data.get("client_secret")
    return KeptCredentials(token if isinstance(token, str) else None, secret if isinstance(secret, str) else None)


def _write_demo_token_file(path: Path, demo: DemoDistrict) -> None:
    """Replace the file at once (a reader never sees half of it), created with mode 0600: it holds secrets."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "district_id": demo.district_id,
        "token": demo.token,
        "client_id": demo.client_id,
        "client_secret": demo.client_secret,
    }
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)  # a leftover would keep its own mode: create afresh, with 0600
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    os.replace(temporary, path)


def _seed_demo(app: Flask, public_url: str, redirect_uri: str | None = None) -> DemoDistrict:
    """Seed the sandbox district, keeping the credentials of GATEWAY_DEMO_TOKEN_FILE while they are still good."""
    from gateway.services.operator_actions import seed_sandbox_district

    path = Path(app.config["PASSBACK"].demo_token_file) if app.config["PASSBACK"].demo_token_file else None
    kept = _read_demo_token_file(path) if path else None
    demo = _call(app, seed_sandbox_district, _services(app).box, public_url, kept=kept, redirect_uri=redirect_uri)
    if path is not None:
        if not (demo.token_kept and demo.client_secret_kept):
            _write_demo_token_file(path, demo)
        elif path.stat().st_mode & 0o077:
            path.chmod(0o600)  # the file holds secrets: readable by its owner only
    return demo


@main.command("demo")
@click.option("--public-url", default=None, help="Where this Passback is reachable (default GATEWAY_PUBLIC_URL).")
@click.option(
    "--redirect-uri",
    default=None,
    help="Send the demo app's sign-ins to this URL (your app's callback); default Passback's own /demo/callback page.",
)
@json_option
def demo_command(public_url: str | None, redirect_uri: str | None, as_json: bool) -> None:
    """Seed the sandbox district (once) and print what an app needs: the app token, the demo app's client id,
    secret and redirect URI, the sandbox LMS's URL and secret, the students. With GATEWAY_DEMO_TOKEN_FILE the token
    and secret are kept across runs; without it new ones are issued (the old token is revoked)."""
    app = _app()
    url = (public_url or app.config["PASSBACK"].public_url).rstrip("/")
    try:
        demo = _seed_demo(app, url, redirect_uri)
    except ServiceError as exc:
        _fail(exc)
    _emit(as_json, demo.as_json(url), lambda _d: _demo_banner(demo, url, app.config["PASSBACK"].demo_token_file))


@main.command("purge")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted, and delete nothing.")
@json_option
def purge_command(dry_run: bool, as_json: bool) -> None:
    """Delete expired one-time records (nonces, launch states, codes, pickers, idempotency keys), old webhook
    messages and, with GATEWAY_RETENTION_DAYS, grade history older than that."""
    from gateway.services.operator_actions import purge_expired

    app = _app()
    settings = app.config["PASSBACK"]
    now = _services(app).clock.now()  # the process's clock (tests inject a frozen one)
    data = _call(
        app,
        purge_expired,
        idempotency_ttl_seconds=settings.idempotency_ttl_seconds,
        webhook_retention_seconds=settings.webhook_retention_seconds,
        retention_days=settings.retention_days,
        dry_run=dry_run,
        now=now,
    )
    counts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in data.items())
    data = {**data, "dry_run": dry_run, "retention_days": settings.retention_days}
    _emit(as_json, data, lambda _d: counts + (" would be purged (dry run)" if dry_run else " purged"))


def _warn_connections_without_hosts(app: Flask) -> None:
    """One line per LTI 1.1 connection whose grades wait because it names no allowed_hosts (made before they were
    required)."""
    from gateway.services.lms import connections_without_hosts

    with _session(app) as session:
        waiting = connections_without_hosts(session, _services(app).box)
        lines = [
            f"warning: LTI 1.1 connection {connection.name!r} (district {district!r}) has no allowed_hosts: its "
            f"grades wait until `gateway lms set --district {connection.district_id} --lms {connection.id} "
            "--setting allowed_hosts=LMS-HOST`"
            for district, connection in waiting
        ]
    for line in lines:
        click.echo(line, err=True)


@main.command("worker")
@click.option("--once", is_flag=True, help="Deliver what is due now, then exit (without a broker).")
@click.option("--district", "district_id", default=None, help="Only this district's deliveries (without a broker).")
@click.option("--concurrency", default=8, show_default=True, help="Celery: deliveries in parallel in this process.")
@click.option("--beat", is_flag=True, help="Celery: also run the periodic sweep here (one beat per installation).")
@click.option(
    "--webhooks-only",
    is_flag=True,
    help="Send webhooks to apps and nothing else (a process of their own; set GATEWAY_WEBHOOK_THREADS=0 on the "
    "delivery workers).",
)
def worker_command(once: bool, district_id: str | None, concurrency: int, beat: bool, webhooks_only: bool) -> None:
    """Run delivery on its own: a Celery worker when GATEWAY_BROKER_URL is set, else the outbox polling worker
    (set GATEWAY_EMBEDDED_WORKER=false on the web servers). SIGTERM or Ctrl-C stops it gracefully (a second
    Ctrl-C at once)."""
    import threading

    from gateway.worker import on_stop_signals

    app = _app()
    settings = app.config["PASSBACK"]
    if webhooks_only:
        sender = _services(app).delivery_worker().webhooks
        if once:
            click.echo(f"{sender.run_until_idle()} webhook messages attempted")
            return
        on_stop_signals(sender.request_stop, lambda: sender.request_stop(at_once=True))
        sender.run_forever(threading.Event())
        return
    _warn_connections_without_hosts(app)
    if settings.broker_url and not once:
        from celery.signals import worker_shutting_down

        from gateway.tasks import configure_celery

        argv = ["worker", "--pool", "threads", "--concurrency", str(concurrency), "--loglevel", "INFO"]
        argv += ["-Q", "passback", "--without-gossip", "--without-mingle"]
        if beat:
            argv += ["--beat", "--schedule", settings.beat_schedule_path()]
        # Deliveries run in Celery's tasks; a thread of this process records its heartbeat for /readyz, and
        # webhooks go out on threads of their own beside Celery's pool, so they never take a drain's place.
        stop_beating = threading.Event()
        celery_beats = _services(app).delivery_worker(role="celery")
        threading.Thread(
            target=celery_beats.beat_until, args=(stop_beating,), name="passback-heartbeat", daemon=True
        ).start()
        webhooks = threading.Thread(
            target=celery_beats.webhooks.run_forever, args=(stop_beating,), name="passback-webhooks", daemon=True
        )
        if settings.webhook_threads > 0:
            webhooks.start()
        # When Celery starts its shutdown (which cuts the process's requests in flight), send nothing more: a cut
        # send is given back unspent rather than counted as the endpoint's failure.
        worker_shutting_down.connect(lambda **_: celery_beats.webhooks.request_stop(), weak=False)
        try:
            _run_celery_worker(configure_celery(settings), argv)
        finally:
            stop_beating.set()
            celery_beats.webhooks.request_stop()
            if webhooks.ident is not None:
                webhooks.join(settings.stop_grace() + 5.0)
        return
    worker = _services(app).delivery_worker(district_id=district_id)
    if once:
        click.echo(f"{worker.run_until_idle()} deliveries attempted")
        if settings.webhook_threads > 0:
            click.echo(f"{worker.webhooks.run_until_idle()} webhook messages attempted")
        return
    on_stop_signals(worker.request_stop, lambda: worker.request_stop(at_once=True))
    worker.run_forever(threading.Event())


def _run_celery_worker(celery_app: Any, argv: list[str]) -> None:
    """Run a Celery worker and exit with its exit code: `worker_main` drops it, so an "Unrecoverable error"
    (Celery's exit code 1) would end the process with 0, and a supervisor restarting on failure would not."""
    from celery.signals import worker_shutdown

    exit_codes: list[int | str | None] = []

    def record_exit_code(sender: Any, **_: Any) -> None:
        exit_codes.append(sender.exitcode)

    worker_shutdown.connect(record_exit_code, weak=False)
    celery_app.worker_main(argv)
    failure = next((code for code in exit_codes if code), None)
    if failure is not None:
        raise SystemExit(failure)


@main.command("beat")
def beat_command() -> None:
    """Celery beat: the periodic sweep that re-enqueues connections with due deliveries (run exactly one)."""
    from gateway.tasks import configure_celery

    settings = _app().config["PASSBACK"]
    if not settings.broker_url:
        raise click.ClickException("set GATEWAY_BROKER_URL: without a broker the worker polls the outbox itself")
    configure_celery(settings).start(["beat", "--loglevel", "INFO", "--schedule", settings.beat_schedule_path()])


@main.command("run")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--no-demo", is_flag=True, help="Do not seed or print the sandbox district.")
def run_command(host: str, port: int, no_demo: bool) -> None:
    """Migrate, seed the sandbox district, and serve with the embedded delivery worker (make run). SIGTERM or
    Ctrl-C stops it gracefully (a second Ctrl-C at once)."""
    from werkzeug.serving import run_simple

    from gateway import start_embedded_worker
    from gateway.config import Settings
    from gateway.migrate import upgrade
    from gateway.worker import on_stop_signals

    settings = Settings.from_env()
    settings.require_encryption_keys()  # before touching the database
    upgrade(settings.database_url)
    public_url = settings.public_url.rstrip("/")
    if "GATEWAY_PUBLIC_URL" not in os.environ:
        public_url = f"http://{host}:{port}"
        settings.public_url = public_url
    app = create_app(settings)
    _warn_connections_without_hosts(app)
    if not no_demo:
        click.echo(_demo_banner(_seed_demo(app, public_url), public_url, settings.demo_token_file))
    embedded = start_embedded_worker(app) if settings.embedded_worker and not settings.broker_url else None

    def _stop_serving() -> None:
        raise KeyboardInterrupt  # ends run_simple's loop; the embedded worker is stopped below

    on_stop_signals(_stop_serving, lambda: embedded.stop_at_once() if embedded is not None else None)
    click.echo(f"Passback listening on {public_url} (Ctrl-C to stop)")
    sys.stdout.flush()
    run_simple(host, port, app, threaded=True, use_reloader=False)
    if embedded is not None:
        click.echo("Passback stopping: deliveries in flight may finish, the others are given back")
        embedded.stop()


# Commands kept in modules of their own; imported last, since they use this module's helpers and groups.
from gateway.cli_admin import register as _register_admin  # noqa: E402
from gateway.cli_data import backup_command, restore_command, user_forget  # noqa: E402
from gateway.cli_roster import roster  # noqa: E402

_register_admin(main)
main.add_command(roster)
main.add_command(backup_command)
main.add_command(restore_command)
user.add_command(user_forget)

if __name__ == "__main__":
    main()
