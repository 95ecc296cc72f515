"""`gateway …` administration: list, show, change, disable or remove districts, apps, tokens, users, enrollments,
staff, LMS connections and placements, and `gateway retry`. Each command parses, calls one service
(gateway/services/admin_*.py) and prints its answer; `register` adds them to the groups of gateway/cli.py.

Exit codes (docs/cli.md): 0 done, 1 refused (not found, invalid, conflict), 2 usage. Under --json an error is
`{"error": {"code", "message", "fields"?}}` on stdout."""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Concatenate, ParamSpec, TypeVar

import click
from flask import Flask

from gateway import create_app
from gateway.cli_progress import Progress
from gateway.composition import services_of
from gateway.services import admin_directory, admin_lms
from gateway.services.admin_audit import Operator, find_app, find_district
from gateway.services.admin_retries import STATUSES, RetrySelection, retry_deliveries
from gateway.services.errors import ServiceError
from gateway.services.unit_of_work import UnitOfWork

P = ParamSpec("P")
R = TypeVar("R")

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


class AdminCommand(click.Command):
    """A command whose usage errors are JSON too (exit 2) when --json is among its arguments."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        as_json = "--json" in args
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            if not as_json:
                raise
            hint = getattr(exc, "param_hint", None) or getattr(getattr(exc, "param", None), "name", None)
            error: dict[str, Any] = {"code": "usage", "message": exc.format_message()}
            if isinstance(hint, str):
                error["fields"] = {hint.strip("'\"").lstrip("-").replace("-", "_"): [exc.format_message()]}
            click.echo(json.dumps({"error": error}, indent=2))
            ctx.exit(EXIT_USAGE)


def _default_operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return "unknown"


json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON (errors too).")
operator_option = click.option(
    "--operator",
    "operator_name",
    envvar="GATEWAY_OPERATOR",
    default=_default_operator,
    show_default="the OS user",
    help="Who is acting, for the audit log (recorded as cli:NAME).",
)
district_option = click.option("--district", "district_ref", required=True, help="District id or name.")
lms_option = click.option("--lms", "lms_ref", required=True, help="LMS connection id or name.")


@contextmanager
def _context() -> Iterator[Flask]:
    app = create_app()
    with app.app_context():
        yield app


def _call(service: Callable[Concatenate[UnitOfWork, P], R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """Run one service in a unit of work of its own (it commits; its nudges then wake delivery)."""
    with _context() as app:
        return service(services_of(app).unit_of_work(), *args, **kwargs)


def _fail(as_json: bool, exc: ServiceError) -> None:
    if as_json:
        error: dict[str, Any] = {"code": exc.code, "message": exc.message}
        if exc.fields:
            error["fields"] = exc.fields
        click.echo(json.dumps({"error": error}, indent=2, default=str))
        raise click.exceptions.Exit(EXIT_REFUSED)
    message = exc.message
    if exc.fields:
        message += "\n" + "\n".join(f"  {k}: {'; '.join(map(str, v))}" for k, v in exc.fields.items())
    raise click.ClickException(message)  # exit 1


def _run(as_json: bool, produce: Callable[[], dict[str, Any]], text: Callable[[dict[str, Any]], str]) -> None:
    try:
        data = produce()
    except ServiceError as exc:
        _fail(as_json, exc)
        return
    click.echo(json.dumps(data, indent=2, default=str) if as_json else text(data))


def _operator(name: str) -> Operator:
    return Operator(name)  # InvalidInput for an unusable name, reported like any refusal


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str], empty: str) -> str:
    if not rows:
        return empty
    cells = [[str(row.get(c) if row.get(c) is not None else "-") for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def _fields(data: dict[str, Any], skip: Sequence[str] = ()) -> str:
    return "\n".join(
        f"{k}: {json.dumps(v, default=str) if isinstance(v, dict | list) else v}"
        for k, v in data.items()
        if k not in skip
    )


# --- districts -----------------------------------------------------------------------------------------------


@click.command("list", cls=AdminCommand)
@json_option
def district_list(as_json: bool) -> None:
    """Every district, with what it holds."""
    _run(
        as_json,
        lambda: _call(admin_directory.list_districts),
        lambda d: _table(d["districts"], ["id", "name", "lms_connections", "apps", "users", "staff"], "no districts"),
    )


@click.command("show", cls=AdminCommand)
@click.argument("district_ref", metavar="DISTRICT")
@json_option
def district_show(district_ref: str, as_json: bool) -> None:
    """One district (by id or name)."""
    _run(as_json, lambda: _call(admin_directory.show_district, district_ref), _fields)


@click.command("update", cls=AdminCommand)
@click.argument("district_ref", metavar="DISTRICT")
@click.option("--name", default=None, help="The new name.")
@click.option("--time-zone", default=None, help="The IANA time zone staff read times in, e.g. America/Chicago.")
@operator_option
@json_option
def district_update(
    district_ref: str, name: str | None, time_zone: str | None, operator_name: str, as_json: bool
) -> None:
    """Rename a district, or set its time zone."""
    _run(
        as_json,
        lambda: _call(
            admin_directory.update_district, _operator(operator_name), district_ref, name=name, time_zone=time_zone
        ),
        lambda d: f"district {d['id']} is {d['name']!r}, times shown in {d['time_zone']}",
    )


@click.command("remove", cls=AdminCommand)
@click.argument("district_ref", metavar="DISTRICT")
@operator_option
@json_option
def district_remove(district_ref: str, operator_name: str, as_json: bool) -> None:
    """Delete an empty district (one made by mistake); a district holding anything is refused."""
    _run(
        as_json,
        lambda: _call(admin_directory.remove_district, _operator(operator_name), district_ref),
        lambda d: f"district {d['id']} ({d['name']}) removed",
    )


# --- apps ----------------------------------------------------------------------------------------------------


@click.command("list", cls=AdminCommand)
@click.option("--district", "district_ref", default=None, help="Only apps authorized (once) in this district.")
@json_option
def app_list(district_ref: str | None, as_json: bool) -> None:
    """Registered apps and the districts that authorize them."""

    def text(d: dict[str, Any]) -> str:
        rows = [
            {
                **a,
                "districts": ", ".join(
                    x["name"] + ("" if x["authorized"] else " (deauthorized)") for x in a["districts"]
                ),
            }
            for a in d["apps"]
        ]
        return _table(rows, ["id", "name", "client_id", "districts"], "no apps")

    _run(as_json, lambda: _call(admin_directory.list_apps, district_ref), text)


@click.command("show", cls=AdminCommand)
@click.argument("app_ref", metavar="APP")
@json_option
def app_show(app_ref: str, as_json: bool) -> None:
    """One app (by id, client id or name); never its secret."""
    _run(as_json, lambda: _call(admin_directory.show_app, app_ref), _fields)


@click.command("update", cls=AdminCommand)
@click.argument("app_ref", metavar="APP")
@click.option("--name", default=None)
@click.option("--redirect-uri", default=None, help="Where the app receives sign-in codes.")
@click.option("--catalog-url", default=None, help="The app's assignment list URL ('' clears it).")
@operator_option
@json_option
def app_update(
    app_ref: str,
    name: str | None,
    redirect_uri: str | None,
    catalog_url: str | None,
    operator_name: str,
    as_json: bool,
) -> None:
    """Rename an app or change its URLs."""
    _run(
        as_json,
        lambda: _call(
            admin_directory.update_app,
            _operator(operator_name),
            app_ref,
            name=name,
            redirect_uri=redirect_uri,
            catalog_url=catalog_url,
        ),
        lambda d: f"app {d['id']} ({d['name']}): changed {', '.join(d['changed'])}",
    )


@click.command("rotate-secret", cls=AdminCommand)
@click.argument("app_ref", metavar="APP")
@operator_option
@json_option
def app_rotate_secret(app_ref: str, operator_name: str, as_json: bool) -> None:
    """Issue a new client secret (shown once); the old one stops working at once."""
    _run(
        as_json,
        lambda: _call(admin_directory.rotate_app_secret, _operator(operator_name), app_ref),
        lambda d: (
            f"app {d['id']} ({d['name']})\nclient_id: {d['client_id']}\n"
            f"client_secret: {d['client_secret']}  (shown once)"
        ),
    )


@click.command("deauthorize", cls=AdminCommand)
@click.argument("app_ref", metavar="APP")
@click.argument("district_ref", metavar="DISTRICT")
@operator_option
@json_option
def app_deauthorize(app_ref: str, district_ref: str, operator_name: str, as_json: bool) -> None:
    """Withdraw APP from DISTRICT: its tokens there are refused at once (`app authorize` brings it back)."""
    _run(
        as_json,
        lambda: _call(admin_directory.deauthorize_app, _operator(operator_name), app_ref, district_ref),
        lambda d: (
            f"app {d['app']} deauthorized in district {d['district']}" + (" (it already was)" if d["already"] else "")
        ),
    )


@click.command("remove", cls=AdminCommand)
@click.argument("app_ref", metavar="APP")
@operator_option
@json_option
def app_remove(app_ref: str, operator_name: str, as_json: bool) -> None:
    """Delete an app no district ever authorized (registered by mistake); otherwise deauthorize it."""
    _run(
        as_json,
        lambda: _call(admin_directory.remove_app, _operator(operator_name), app_ref),
        lambda d: f"app {d['id']} ({d['name']}) removed",
    )


# --- tokens --------------------------------------------------------------------------------------------------


@click.command("list", cls=AdminCommand)
@district_option
@click.option("--app", "app_ref", default=None, help="Only this app's tokens (id, client id or name).")
@click.option("--kind", type=click.Choice(["district_app", "user"]), default=None)
@click.option("--all", "include_inactive", is_flag=True, help="Also revoked and expired tokens.")
@json_option
def token_list(district_ref: str, app_ref: str | None, kind: str | None, include_inactive: bool, as_json: bool) -> None:
    """A district's tokens, newest first (ids and metadata: the tokens themselves are never stored)."""
    _run(
        as_json,
        lambda: _call(
            admin_directory.list_tokens, district_ref, app_ref=app_ref, kind=kind, include_inactive=include_inactive
        ),
        lambda d: _table(
            d["tokens"], ["id", "kind", "app", "user", "created_at", "last_used_at", "active"], "no tokens"
        ),
    )


@click.command("show", cls=AdminCommand)
@click.argument("token_ref", metavar="TOKEN_OR_ID")
@json_option
def token_show(token_ref: str, as_json: bool) -> None:
    """One token, given its id or the token itself (whose is this leaked token?)."""
    _run(as_json, lambda: _call(admin_directory.show_token, token_ref), _fields)


# --- users and enrollments -----------------------------------------------------------------------------------


@click.command("list", cls=AdminCommand)
@district_option
@click.option("--role", type=click.Choice(["student", "teacher"]), default=None)
@click.option("--search", default=None, help="Part of a name or email, or a whole SIS id.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@json_option
def user_list(district_ref: str, role: str | None, search: str | None, limit: int, as_json: bool) -> None:
    """A district's users, oldest first."""
    _run(
        as_json,
        lambda: _call(admin_directory.list_users, district_ref, role=role, search=search, limit=limit),
        lambda d: _table(d["users"], ["id", "name", "email", "sis_id", "role"], "no users"),
    )


@click.command("show", cls=AdminCommand)
@district_option
@click.argument("user_id", metavar="USER")
@json_option
def user_show(district_ref: str, user_id: str, as_json: bool) -> None:
    """A user, their enrollments and LMS identities."""
    _run(as_json, lambda: _call(admin_directory.show_user, district_ref, user_id), _fields)


@click.command("update", cls=AdminCommand)
@district_option
@click.argument("user_id", metavar="USER")
@click.option("--name", default=None)
@click.option("--email", default=None, help="'' clears it.")
@click.option("--sis-id", default=None, help="'' clears it.")
@click.option("--role", type=click.Choice(["student", "teacher"]), default=None)
@operator_option
@json_option
def user_update(
    district_ref: str,
    user_id: str,
    name: str | None,
    email: str | None,
    sis_id: str | None,
    role: str | None,
    operator_name: str,
    as_json: bool,
) -> None:
    """Change a user's name, email, SIS id or role."""
    _run(
        as_json,
        lambda: _call(
            admin_directory.update_user,
            _operator(operator_name),
            district_ref,
            user_id,
            name=name,
            email=email,
            sis_id=sis_id,
            role=role,
        ),
        lambda d: f"user {d['id']}: changed {', '.join(d['changed'])}",
    )


@click.command("enrollments", cls=AdminCommand)
@district_option
@click.option("--user", "user_id", default=None)
@click.option("--lms", "lms_ref", default=None, help="LMS connection id or name.")
@click.option("--course", default=None)
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@json_option
def user_enrollments(
    district_ref: str, user_id: str | None, lms_ref: str | None, course: str | None, limit: int, as_json: bool
) -> None:
    """Course enrollments, by user, connection or course."""
    _run(
        as_json,
        lambda: _call(
            admin_directory.list_enrollments, district_ref, user_id=user_id, lms_ref=lms_ref, course=course, limit=limit
        ),
        lambda d: _table(d["enrollments"], ["user", "lms_name", "course", "role", "source"], "no enrollments"),
    )


@click.command("unenroll", cls=AdminCommand)
@district_option
@lms_option
@click.option("--course", required=True)
@click.option("--user", "user_id", required=True)
@operator_option
@json_option
def user_unenroll(
    district_ref: str, lms_ref: str, course: str, user_id: str, operator_name: str, as_json: bool
) -> None:
    """Take a user out of a course: new grades stop routing there (deliveries made stay)."""
    _run(
        as_json,
        lambda: _call(admin_directory.unenroll, _operator(operator_name), district_ref, lms_ref, course, user_id),
        lambda d: f"user {d['user']} unenrolled from {d['course']}",
    )


# --- staff ---------------------------------------------------------------------------------------------------


@click.command("list", cls=AdminCommand)
@district_option
@json_option
def staff_list(district_ref: str, as_json: bool) -> None:
    """A district's staff accounts and whether each can sign in."""
    _run(
        as_json,
        lambda: _call(admin_directory.list_staff, district_ref),
        lambda d: _table(d["staff"], ["id", "email", "role", "status", "last_login_at"], "no staff accounts"),
    )


@click.command("show", cls=AdminCommand)
@district_option
@click.argument("staff_ref", metavar="STAFF")
@json_option
def staff_show(district_ref: str, staff_ref: str, as_json: bool) -> None:
    """One staff account (by id or email)."""
    _run(as_json, lambda: _call(admin_directory.show_staff, district_ref, staff_ref), _fields)


@click.command("reset-password", cls=AdminCommand)
@district_option
@click.argument("staff_ref", metavar="STAFF")
@click.option("--set-password", is_flag=True, help="Prompt for the new password instead of printing a one-time link.")
@operator_option
@json_option
def staff_reset_password(
    district_ref: str, staff_ref: str, set_password: bool, operator_name: str, as_json: bool
) -> None:
    """Replace a password (or let a disabled account back in): a one-time link (24 h) or a password typed now.
    Open sessions end and a lockout is lifted."""
    password = (
        click.prompt("New password", hide_input=True, confirmation_prompt=True, err=True) if set_password else None
    )
    with _context() as app:
        public_url = app.config["PASSBACK"].public_url
    _run(
        as_json,
        lambda: _call(
            admin_directory.reset_staff_password,
            _operator(operator_name),
            district_ref,
            staff_ref,
            password,
            public_url=public_url,
        ),
        lambda d: (
            f"staff {d['email']}: password reset, {d['sessions_ended']} session(s) ended"
            + (f"\none-time link to set the password (24 h): {d['setup_link']}" if "setup_link" in d else "")
        ),
    )


@click.command("disable", cls=AdminCommand)
@district_option
@click.argument("staff_ref", metavar="STAFF")
@operator_option
@json_option
def staff_disable(district_ref: str, staff_ref: str, operator_name: str, as_json: bool) -> None:
    """Shut an account out (password and sessions gone; the account and its audit rows stay)."""
    _run(
        as_json,
        lambda: _call(admin_directory.disable_staff, _operator(operator_name), district_ref, staff_ref),
        lambda d: f"staff {d['email']} disabled, {d['sessions_ended']} session(s) ended",
    )


@click.command("set-role", cls=AdminCommand)
@district_option
@click.argument("staff_ref", metavar="STAFF")
@click.argument("role", metavar="ROLE", type=click.Choice(["admin", "viewer"]))
@operator_option
@json_option
def staff_set_role(district_ref: str, staff_ref: str, role: str, operator_name: str, as_json: bool) -> None:
    """Make an account a district admin (acts on the dashboard) or a viewer (looks only)."""
    _run(
        as_json,
        lambda: _call(admin_directory.set_staff_role, _operator(operator_name), district_ref, staff_ref, role),
        lambda d: f"staff {d['email']} is {'now' if d['changed'] else 'already'} {d['role']}",
    )


# --- LMS connections -----------------------------------------------------------------------------------------


@click.command("list", cls=AdminCommand)
@district_option
@json_option
def lms_list(district_ref: str, as_json: bool) -> None:
    """A district's LMS connections (never their secrets)."""
    _run(
        as_json,
        lambda: _call(admin_lms.list_connections, district_ref),
        lambda d: _table(
            d["lms_connections"],
            ["id", "name", "adapter", "disabled", "placements", "last_success_at"],
            "no LMS connections",
        ),
    )


@click.command("show", cls=AdminCommand)
@district_option
@lms_option
@json_option
def lms_show(district_ref: str, lms_ref: str, as_json: bool) -> None:
    """One connection: settings (secrets shown only as "(set)"), delivery counts."""

    def produce() -> dict[str, Any]:
        with _context() as app:
            services = services_of(app)
            return admin_lms.show_connection(services.unit_of_work(), services.box, district_ref, lms_ref)

    _run(as_json, produce, _fields)


@click.command("update", cls=AdminCommand)
@district_option
@lms_option
@click.option("--name", default=None, help="The new name.")
@operator_option
@json_option
def lms_update(district_ref: str, lms_ref: str, name: str | None, operator_name: str, as_json: bool) -> None:
    """Rename a connection (settings change with `gateway lms set`, secrets with `gateway lms rotate-secret`)."""
    _run(
        as_json,
        lambda: _call(admin_lms.rename_connection, _operator(operator_name), district_ref, lms_ref, name=name),
        lambda d: f"LMS connection {d['id']} is now {d['name']!r}",
    )


@click.command("rotate-secret", cls=AdminCommand)
@district_option
@lms_option
@click.option("--setting", "setting", required=True, help="Which secret setting, e.g. shared_secret.")
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the new value from standard input (one line).")
@operator_option
@json_option
def lms_rotate_secret(
    district_ref: str, lms_ref: str, setting: str, from_stdin: bool, operator_name: str, as_json: bool
) -> None:
    """Replace a connection's secret with the new one the LMS issued; typed at a hidden prompt (or --stdin), never
    on the command line, and never printed."""
    if from_stdin:
        value = sys.stdin.readline().rstrip("\r\n")
    else:
        value = click.prompt(f"New {setting}", hide_input=True, confirmation_prompt=True, err=True)

    def produce() -> dict[str, Any]:
        with _context() as app:
            services = services_of(app)
            return admin_lms.rotate_secret(
                services.unit_of_work(), services.box, _operator(operator_name), district_ref, lms_ref, {setting: value}
            )

    _run(as_json, produce, lambda d: f"LMS connection {d['name']}: rotated {', '.join(d['rotated'])}")


def _lms_disable_command(name: str, *, disabled: bool, doc: str) -> click.Command:
    @click.command(name, cls=AdminCommand, help=doc)
    @district_option
    @lms_option
    @operator_option
    @json_option
    def command(district_ref: str, lms_ref: str, operator_name: str, as_json: bool) -> None:
        _run(
            as_json,
            lambda: _call(admin_lms.set_disabled, _operator(operator_name), district_ref, lms_ref, disabled=disabled),
            lambda d: f"LMS connection {d['name']}: delivery {'disabled' if d['disabled'] else 'enabled'}",
        )

    return command


@click.command("remove", cls=AdminCommand)
@district_option
@lms_option
@operator_option
@json_option
def lms_remove(district_ref: str, lms_ref: str, operator_name: str, as_json: bool) -> None:
    """Delete a connection no grade was ever routed to; otherwise disable it."""
    _run(
        as_json,
        lambda: _call(admin_lms.remove_connection, _operator(operator_name), district_ref, lms_ref),
        lambda d: f"LMS connection {d['id']} ({d['name']}) removed",
    )


# --- placements ----------------------------------------------------------------------------------------------


@click.command("list", cls=AdminCommand)
@district_option
@click.option("--lms", "lms_ref", default=None, help="LMS connection id or name.")
@click.option("--app", "app_ref", default=None, help="App id, client id or name.")
@click.option("--assignment", default=None, help="The app's assignmentID.")
@click.option("--course", default=None)
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@json_option
def placement_list(
    district_ref: str,
    lms_ref: str | None,
    app_ref: str | None,
    assignment: str | None,
    course: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Where assignments are placed."""
    _run(
        as_json,
        lambda: _call(
            admin_lms.list_placements,
            district_ref,
            lms_ref=lms_ref,
            app_ref=app_ref,
            assignment=assignment,
            course=course,
            limit=limit,
        ),
        lambda d: _table(
            d["placements"], ["id", "lms_name", "app_name", "assignment", "course", "section"], "no placements"
        ),
    )


@click.command("show", cls=AdminCommand)
@district_option
@click.argument("placement_id", metavar="PLACEMENT")
@json_option
def placement_show(district_ref: str, placement_id: str, as_json: bool) -> None:
    """One placement and its delivery counts."""
    _run(as_json, lambda: _call(admin_lms.show_placement, district_ref, placement_id), _fields)


@click.command("update", cls=AdminCommand)
@district_option
@click.argument("placement_id", metavar="PLACEMENT")
@click.option("--title", default=None)
@click.option("--section", default=None, help="The LMS's section id.")
@click.option(
    "--destination-json",
    "destination",
    default=None,
    callback=lambda _ctx, _param, value: _json_object(value),
    help="Adapter destination data as a JSON object (replaces it).",
)
@operator_option
@json_option
def placement_update(
    district_ref: str,
    placement_id: str,
    title: str | None,
    section: str | None,
    destination: dict[str, Any] | None,
    operator_name: str,
    as_json: bool,
) -> None:
    """Change a placement's title, section or destination data."""
    _run(
        as_json,
        lambda: _call(
            admin_lms.update_placement,
            _operator(operator_name),
            district_ref,
            placement_id,
            title=title,
            section=section,
            destination=destination,
        ),
        lambda d: f"placement {d['id']}: changed {', '.join(d['changed'])}",
    )


def _json_object(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--destination-json")
    return value


@click.command("remove", cls=AdminCommand)
@district_option
@click.argument("placement_id", metavar="PLACEMENT")
@operator_option
@json_option
def placement_remove(district_ref: str, placement_id: str, operator_name: str, as_json: bool) -> None:
    """Delete a placement no grade was routed to (made by mistake)."""
    _run(
        as_json,
        lambda: _call(admin_lms.remove_placement, _operator(operator_name), district_ref, placement_id),
        lambda d: f"placement {d['id']} removed",
    )


# --- retry ---------------------------------------------------------------------------------------------------


@click.command("retry", cls=AdminCommand)
@district_option
@click.option("--delivery", default=None, help="One delivery (failed or retrying).")
@click.option("--grade", default=None, help="A grade's deliveries.")
@click.option("--assignment", default=None, help="An assignment's deliveries (the app's assignmentID).")
@click.option("--app", "app_ref", default=None, help="With --assignment, when two apps share the id.")
@click.option("--lms", "lms_ref", default=None, help="A connection's deliveries (id or name).")
@click.option(
    "--status",
    type=click.Choice(sorted(STATUSES)),
    default=None,
    help="failed (the default), retrying (retry now, not at the next backoff) or any.",
)
@click.option("--dry-run", is_flag=True, help="Only report what would be retried.")
@operator_option
@json_option
def retry_command(
    district_ref: str,
    delivery: str | None,
    grade: str | None,
    assignment: str | None,
    app_ref: str | None,
    lms_ref: str | None,
    status: str | None,
    dry_run: bool,
    operator_name: str,
    as_json: bool,
) -> None:
    """Send failed deliveries again with a fresh count of attempts (after a fix), or retrying ones now; the
    options narrow the district's deliveries (they combine). Audited as the dashboard's retry is."""
    selection = RetrySelection(
        delivery=delivery, grade=grade, assignment=assignment, app=app_ref, lms=lms_ref, status=status
    )

    def produce() -> dict[str, Any]:
        with _context() as app, Progress("retrying") as progress:
            services = services_of(app)
            return retry_deliveries(
                services.unit_of_work,
                _operator(operator_name),
                district_ref,
                selection,
                dry_run=dry_run,
                progress=progress,
            )

    _run(as_json, produce, _retry_summary)


def _retry_summary(d: dict[str, Any]) -> str:
    listed = ", ".join(d["deliveries"][:20]) + (" …" if d["selected"] > 20 else "")
    if d["dry_run"]:
        return f"would retry {d['selected']} deliveries ({d['selection']})" + (f": {listed}" if listed else "")
    lines = [f"retried {d['retried']} of {d['selected']} deliveries ({d['selection']})"]
    lines += [f"  skipped {s['id']}: {s['reason']}" for s in d["skipped"]]
    return "\n".join(lines)


# --- registration --------------------------------------------------------------------------------------------


def _resolving(kind: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A parameter callback turning a district's or app's name into its id, for the commands of gateway/cli.py
    whose services take ids; a value that names nothing is passed on, for the service to refuse as before."""
    finder = find_district if kind == "district" else find_app

    def resolve(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if not isinstance(value, str) or not value:
            return value
        with _context() as app, services_of(app).database.transaction() as session:
            try:
                return finder(session, value).id
            except ServiceError:
                return value

    return resolve


_RESOLVED = {"district_id": "district", "app_ref": "app"}


def _accept_names(group: click.Group) -> None:
    for command in group.commands.values():
        if isinstance(command, click.Group):
            _accept_names(command)
            continue
        if isinstance(command, AdminCommand):
            continue
        if type(command) is click.Command and any(p.name == "as_json" for p in command.params):
            command.__class__ = AdminCommand  # only parse_args differs: its usage errors become JSON under --json
        for param in command.params:
            kind = _RESOLVED.get(param.name or "")
            if kind is not None and param.callback is None:
                param.callback = _resolving(kind)


def register(main: click.Group) -> None:
    """Add the administration commands to gateway/cli.py's groups, and let its commands take district and app
    names where they took ids and answer usage errors as JSON under --json."""
    _accept_names(main)
    groups: dict[str, list[click.Command]] = {
        "district": [district_list, district_show, district_update, district_remove],
        "app": [app_list, app_show, app_update, app_rotate_secret, app_deauthorize, app_remove],
        "token": [token_list, token_show],
        "user": [user_list, user_show, user_update, user_enrollments, user_unenroll],
        "staff": [staff_list, staff_show, staff_reset_password, staff_disable, staff_set_role],
        "lms": [
            lms_list,
            lms_show,
            lms_update,
            lms_rotate_secret,
            _lms_disable_command("disable", disabled=True, doc="Stop delivering to a connection; grades wait."),
            _lms_disable_command("enable", disabled=False, doc="Deliver to a disabled connection again."),
            lms_remove,
        ],
        "placement": [placement_list, placement_show, placement_update, placement_remove],
    }
    for group_name, commands in groups.items():
        group = main.commands[group_name]
        assert isinstance(group, click.Group)
        for command in commands:
            group.add_command(command)
    main.add_command(retry_command)
