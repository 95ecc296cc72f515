"""`gateway backup`, `gateway restore` and `gateway user forget`: an installation's data, kept and erased
(gateway/services/backup.py and privacy.py; docs/operations.md and docs/privacy.md)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from gateway.cli_admin import AdminCommand, json_option, operator_option
from gateway.services.errors import ServiceError


def _instance_dir() -> Path:
    """The instance directory as gateway/config.py names it, read now (the command may run in another cwd)."""
    return Path(os.environ.get("GATEWAY_INSTANCE_DIR", Path.cwd() / "instance"))


def refuse(exc: ServiceError, as_json: bool, nothing: str) -> NoReturn:
    """A service's refusal of a data command: JSON on stdout under --json (exit 1), else its message, the fields,
    and what was left undone."""
    if as_json:
        body = {"error": {"code": exc.code, "message": exc.message, "fields": exc.fields or {}}}
        click.echo(json.dumps(body, indent=2))
        sys.exit(1)
    message = exc.message
    if exc.fields:
        message += "\n" + "\n".join(f"  {k}: {'; '.join(map(str, v))}" for k, v in exc.fields.items())
    raise click.ClickException(message + f"\n{nothing}")


def _emit(as_json: bool, data: dict[str, Any], text: str) -> None:
    click.echo(json.dumps(data, indent=2, default=str) if as_json else text)


@click.command("backup", cls=AdminCommand)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The archive to write [default: passback-backup-<UTC time>.tar.gz here].",
)
@json_option
def backup_command(output: Path | None, as_json: bool) -> None:
    """Back up the embedded SQLite database and its generated keys into one archive (mode 0600), safely while
    the gateway runs. On PostgreSQL, says how to use pg_dump instead."""
    from importlib.metadata import PackageNotFoundError, version

    from gateway.clock import SYSTEM_CLOCK
    from gateway.services.backup import KEY_FILES, KeyPlan, create_backup

    instance_dir = _instance_dir()
    database_url = os.environ.get("GATEWAY_DATABASE_URL") or f"sqlite:///{instance_dir / 'passback.db'}"
    from_env = frozenset(v for v in KEY_FILES.values() if os.environ.get(v, "").strip())
    try:
        passback_version = version("passback")
    except PackageNotFoundError:  # run from a source tree that was never installed
        passback_version = "unknown"
    try:
        data = create_backup(
            database_url,
            KeyPlan(instance_dir, from_env),
            output=output,
            version=passback_version,
            now=SYSTEM_CLOCK.now(),
        )
    except ServiceError as exc:
        refuse(exc, as_json, "no backup was written")
    manifest = data["manifest"]
    lines = [
        f"backup written to {data['path']} ({data['size']} bytes, mode 0600), schema revision "
        f"{manifest['alembicRevision']}",
    ]
    lines += [f"  {name}: {status}" for name, status in manifest["keys"].items()]
    if data["keysFromEnvironment"]:
        lines.append(
            f"not in the archive: {', '.join(data['keysFromEnvironment'])} come from the environment; keep them "
            "with the backup, it cannot be read without them"
        )
    _emit(as_json, data, "\n".join(lines))


@click.command("restore", cls=AdminCommand)
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))  # the service says when it is missing
@click.option(
    "--instance-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Restore into this instance directory (its passback.db and key files) [default: GATEWAY_INSTANCE_DIR].",
)
@click.option("--force", is_flag=True, help="Replace an existing database and key files (stop the gateway first).")
@json_option
def restore_command(path: Path, instance_dir: Path | None, force: bool, as_json: bool) -> None:
    """Restore a `gateway backup` archive into a fresh instance; checksums and manifest are checked first, and a
    bad archive changes nothing. Then `gateway db upgrade` (or `gateway run`) brings it to this version."""
    from alembic.script import ScriptDirectory

    from gateway.migrate import alembic_config
    from gateway.services.backup import restore_backup, sqlite_path

    known = frozenset(s.revision for s in ScriptDirectory.from_config(alembic_config("sqlite://")).walk_revisions())
    try:
        if instance_dir is not None:
            database = instance_dir / "passback.db"
        elif os.environ.get("GATEWAY_DATABASE_URL"):
            database = sqlite_path(os.environ["GATEWAY_DATABASE_URL"])
        else:
            database = _instance_dir() / "passback.db"
        data = restore_backup(
            path,
            instance_dir=instance_dir or _instance_dir(),
            database=database,
            force=force,
            known_revisions=known,
        )
    except ServiceError as exc:
        refuse(exc, as_json, "nothing was restored")
    lines = [
        f"restored {data['database']} (schema revision {data['alembicRevision']}, backed up {data['createdAt']} "
        f"by Passback {data['passbackVersion']})",
        *(f"  {name}: {status}" for name, status in data["keys"].items()),
    ]
    if data["keysToSet"]:
        lines.append(f"set {', '.join(data['keysToSet'])} to the values kept with the backup")
    lines.append(f"next: GATEWAY_INSTANCE_DIR={data['instanceDir']} gateway db upgrade (gateway run does it too)")
    _emit(as_json, data, "\n".join(lines))


@click.command("forget", cls=AdminCommand)
@click.argument("user_ref", metavar="USER")
@click.option("--district", "district_ref", default=None, help="The district (id or name); needed for a sisID/email.")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted, and change nothing.")
@operator_option
@json_option
def user_forget(user_ref: str, district_ref: str | None, dry_run: bool, operator_name: str, as_json: bool) -> None:
    """Delete a user (by id, or sisID or email within --district) and every row Passback keeps about them: a
    privacy request. Audited; the LMS's own gradebook is not touched (docs/privacy.md)."""
    from gateway.cli import _app, _services
    from gateway.services.admin_audit import Operator
    from gateway.services.privacy import forget_user

    app = _app()
    services = _services(app)
    try:
        with app.app_context():
            report = forget_user(
                services.unit_of_work(),
                services.box,
                district_ref,
                user_ref,
                operator=Operator(operator_name),
                dry_run=dry_run,
            )
    except ServiceError as exc:
        refuse(exc, as_json, "nothing was deleted")
    counts = ", ".join(f"{table} {n}" for table, n in report["deleted"].items() if n)
    verb = "would delete" if dry_run else "deleted"
    text = (
        f"user {report['user']['id']} in district {report['district']['name']} ({report['district']['id']}): "
        f"{verb} {report['total']} rows ({counts or 'none'})" + ("; dry run: nothing was changed" if dry_run else "")
    )
    _emit(as_json, report, text)
