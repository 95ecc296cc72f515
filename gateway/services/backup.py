"""`gateway backup` and `gateway restore` on the embedded default: the SQLite database, copied online with
SQLite's backup API (consistent while the gateway runs and writes), and the generated key files Passback needs to
read it, in one .tar.gz (mode 0600) whose manifest holds each member's SHA-256. On PostgreSQL the operator uses
pg_dump instead (docs/operations.md, "Backup and restore")."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy.engine import make_url

from gateway.services.errors import Conflict, InvalidInput, NotFound, ServiceError

FORMAT = "passback-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DATABASE_MEMBER = "passback.db"
# The generated key files of the instance directory (gateway/config.py) and the variables that replace them.
KEY_FILES: Mapping[str, str] = {"encryption_key": "GATEWAY_ENCRYPTION_KEYS", "secret_key": "GATEWAY_SECRET_KEY"}
ALLOWED_MEMBERS = frozenset({MANIFEST, DATABASE_MEMBER, *(f"keys/{name}" for name in KEY_FILES)})
POSTGRES_PROCEDURE = (
    "`gateway backup` copies the embedded SQLite database only; on PostgreSQL back up with "
    "`pg_dump -Fc --no-owner DATABASE > passback.dump` (restore with `pg_restore --clean --no-owner -d DATABASE`) "
    "and keep GATEWAY_ENCRYPTION_KEYS and GATEWAY_SECRET_KEY with it: without the keys the LMS secrets in the dump "
    "cannot be read (see docs/operations.md, Backup and restore)"
)
CHUNK = 1024 * 1024


class BackupRefused(ServiceError):
    status = 409
    code = "backup_refused"


@dataclass(frozen=True)
class KeyPlan:
    """Where each key comes from: the instance directory's file, or an environment variable (not written)."""

    instance_dir: Path
    from_environment: frozenset[str]


def sqlite_path(database_url: str) -> Path:
    """The SQLite file of `database_url`; any other backend is refused with the documented procedure."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        raise BackupRefused(POSTGRES_PROCEDURE, fields={"database": ["Not SQLite: use pg_dump (docs/operations.md)."]})
    if not url.database or url.database == ":memory:":
        raise BackupRefused("an in-memory SQLite database cannot be backed up", fields={"database": ["In memory."]})
    return Path(url.database)


def create_backup(
    database_url: str,
    keys: KeyPlan,
    *,
    output: Path | None,
    version: str,
    now: datetime,
) -> dict[str, Any]:
    """Write the archive to `output` (default: passback-backup-<UTC time>.tar.gz in the working directory) with
    mode 0600 and return what it holds. Nothing is written when it fails."""
    database = sqlite_path(database_url)
    if not database.is_file():
        raise NotFound(f"no SQLite database at {database}", fields={"database": ["No such file."]})
    output = output or Path.cwd() / f"passback-backup-{now:%Y%m%dT%H%M%SZ}.tar.gz"
    if output.exists():
        raise Conflict(f"{output} already exists: choose another --output", fields={"output": ["Already exists."]})
    if not output.parent.is_dir():
        raise NotFound(f"no directory {output.parent}", fields={"output": ["Its directory does not exist."]})
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".passback-backup-") as staging:
        members: dict[str, Path] = {DATABASE_MEMBER: Path(staging) / DATABASE_MEMBER}
        revision = _copy_database(database, members[DATABASE_MEMBER])
        key_status: dict[str, str] = {}
        for name, variable in KEY_FILES.items():
            if variable in keys.from_environment:
                key_status[name] = "environment"  # the operator keeps it; never written here
            elif (keys.instance_dir / name).is_file():
                members[f"keys/{name}"] = keys.instance_dir / name
                key_status[name] = "included"
            else:
                key_status[name] = "absent"
        manifest = {
            "format": FORMAT,
            "formatVersion": FORMAT_VERSION,
            "passbackVersion": version,
            "alembicRevision": revision,
            "createdAt": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "database": {"backend": "sqlite", "member": DATABASE_MEMBER},
            "keys": key_status,
            "members": {name: _digest(path) for name, path in members.items()},
        }
        partial = Path(staging) / "archive.tar.gz"
        _write_archive(partial, manifest, members, now)
        os.replace(partial, output)
    return {
        "path": str(output),
        "size": output.stat().st_size,
        "manifest": manifest,
        "keysFromEnvironment": sorted(KEY_FILES[n] for n, s in key_status.items() if s == "environment"),
    }


def _copy_database(source: Path, target: Path) -> str | None:
    """An online copy: SQLite's backup API in one step reads one consistent snapshot while writers go on (WAL)."""
    src = sqlite3.connect(str(source), timeout=30)
    try:
        dst = sqlite3.connect(str(target))
        try:
            src.backup(dst)
            check = dst.execute("PRAGMA integrity_check").fetchone()
            if not check or check[0] != "ok":
                raise BackupRefused(f"the database copy fails SQLite's integrity check: {check}")
            return _revision(dst)
        finally:
            dst.close()
    finally:
        src.close()


def _revision(connection: sqlite3.Connection) -> str | None:
    try:
        row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        return None  # never migrated
    return str(row[0]) if row else None


def _digest(path: Path) -> dict[str, Any]:
    sha = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return {"sha256": sha.hexdigest(), "size": size}


def _write_archive(path: Path, manifest: dict[str, Any], members: Mapping[str, Path], now: datetime) -> None:
    # 0600 from the start: the archive holds the keys that decrypt the LMS secrets.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as archive:
        body = json.dumps(manifest, indent=2, sort_keys=True).encode()
        archive.addfile(_info(MANIFEST, len(body), now), io.BytesIO(body))
        for name, source in members.items():
            with source.open("rb") as fh:
                archive.addfile(_info(name, source.stat().st_size, now), fh)
        raw.flush()
        os.fsync(raw.fileno())


def _info(name: str, size: int, now: datetime) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o600
    info.mtime = int(now.timestamp())
    return info


# --- restore ----------------------------------------------------------------------------------------------


def restore_backup(
    archive: Path,
    *,
    instance_dir: Path,
    database: Path,
    force: bool = False,
    known_revisions: frozenset[str] | None = None,
) -> dict[str, Any]:
    """Check the archive whole (manifest, members, checksums, a known schema revision), then put the database at
    `database` and the key files in `instance_dir`. Refuses to replace an existing database or a different key
    file without `force`; a refused or corrupted archive changes nothing."""
    if not archive.is_file():
        raise NotFound(f"no file {archive}", fields={"path": ["No such file."]})
    staging_parent = _existing_parent(instance_dir)
    with tempfile.TemporaryDirectory(dir=staging_parent, prefix=".passback-restore-") as staging:
        manifest, staged = _unpack(archive, Path(staging))
        revision = manifest.get("alembicRevision")
        if known_revisions is not None and revision is not None and revision not in known_revisions:
            raise _corrupt(
                f"the backup's schema revision {revision!r} is unknown to this Passback: restore it with "
                f"the version that made it ({manifest.get('passbackVersion')}) or a newer one"
            )
        keys = {f"keys/{name}": instance_dir / name for name in KEY_FILES}
        _refuse_overwrites(database, {keys[m]: p for m, p in staged.items() if m in keys}, force)
        instance_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        database.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        for member, path in staged.items():
            if member in keys:
                os.replace(path, keys[member])
        # A replaced database's write-ahead log and shared memory belong to the old file: SQLite would replay them.
        for suffix in ("-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{database}{suffix}")
        _move(staged[DATABASE_MEMBER], database)
    key_status = dict(manifest.get("keys") or {})
    return {
        "database": str(database),
        "instanceDir": str(instance_dir),
        "alembicRevision": revision,
        "passbackVersion": manifest.get("passbackVersion"),
        "createdAt": manifest.get("createdAt"),
        "keys": {name: ("restored" if s == "included" else s) for name, s in key_status.items()},
        "keysToSet": sorted(KEY_FILES[n] for n, s in key_status.items() if s == "environment" and n in KEY_FILES),
    }


def _existing_parent(path: Path) -> Path:
    """The nearest existing directory at or above `path`: where the staging directory goes (same file system)."""
    path = path.absolute()
    while not path.is_dir():
        path = path.parent
    return path


def _corrupt(message: str) -> InvalidInput:
    return InvalidInput(
        message + "; nothing was restored", fields={"path": ["Not a usable Passback backup."]}, code="backup_invalid"
    )


def _unpack(archive: Path, staging: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """The manifest and every member, written under `staging` (mode 0600) and checked against the manifest."""
    staged: dict[str, Path] = {}
    manifest: dict[str, Any] | None = None
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            for info in tar:
                if info.name not in ALLOWED_MEMBERS or not info.isreg():
                    raise _corrupt(f"unexpected member {info.name!r} in the archive")
                if info.name == MANIFEST and manifest is None and not staged:
                    manifest = _read_manifest(_extract(tar, info))
                    continue
                if manifest is None or info.name in staged or info.name == MANIFEST:
                    raise _corrupt(f"member {info.name!r} out of place (the manifest comes first, each member once)")
                target = staging / info.name.replace("/", "_")
                _stream_checked(_extract(tar, info), target, manifest["members"].get(info.name), info.name)
                staged[info.name] = target
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise _corrupt(f"the archive cannot be read ({exc.__class__.__name__}: {exc})") from exc
    if manifest is None:
        raise _corrupt("the archive has no manifest")
    missing = sorted(set(manifest["members"]) - set(staged))
    if missing:
        raise _corrupt(f"members listed in the manifest are missing: {', '.join(missing)}")
    if DATABASE_MEMBER not in staged:
        raise _corrupt("the archive holds no database")
    return manifest, staged


def _extract(tar: tarfile.TarFile, info: tarfile.TarInfo) -> IO[bytes]:
    handle = tar.extractfile(info)
    if handle is None:
        raise _corrupt(f"member {info.name!r} cannot be read")
    return handle


def _read_manifest(handle: IO[bytes]) -> dict[str, Any]:
    try:
        manifest = json.loads(handle.read(1024 * 1024))
    except ValueError as exc:
        raise _corrupt("the manifest is not JSON") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _corrupt("not a Passback backup (the manifest's format is not passback-backup)")
    if manifest.get("formatVersion") != FORMAT_VERSION:
        raise _corrupt(f"backup format version {manifest.get('formatVersion')!r} is not {FORMAT_VERSION}")
    members = manifest.get("members")
    if not isinstance(members, dict) or not all(
        name in ALLOWED_MEMBERS and isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
        for name, entry in members.items()
    ):
        raise _corrupt("the manifest's member list is malformed")
    return manifest


def _stream_checked(handle: IO[bytes], target: Path, expected: Any, name: str) -> None:
    if not isinstance(expected, dict):
        raise _corrupt(f"member {name!r} is not listed in the manifest")
    sha = hashlib.sha256()
    size = 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        for chunk in _chunks(handle):
            sha.update(chunk)
            size += len(chunk)
            out.write(chunk)
    if sha.hexdigest() != expected.get("sha256") or size != expected.get("size"):
        raise _corrupt(f"member {name!r} does not match its checksum in the manifest (corrupted or altered)")


def _chunks(handle: IO[bytes]) -> Iterator[bytes]:
    while chunk := handle.read(CHUNK):
        yield chunk


def _refuse_overwrites(database: Path, keys: Mapping[Path, Path], force: bool) -> None:
    if force:
        return
    if database.exists():
        raise Conflict(
            f"a database already exists at {database}: restore into a fresh instance directory, or stop the "
            "gateway and pass --force to replace it",
            fields={"database": ["Already exists; --force replaces it."]},
            code="restore_would_overwrite",
        )
    for target, staged in keys.items():
        if target.exists() and target.read_bytes().strip() != staged.read_bytes().strip():
            raise Conflict(
                f"{target} holds a different key: restore into a fresh instance directory, or pass --force",
                fields={"instanceDir": [f"{target.name} differs from the backup's; --force replaces it."]},
                code="restore_would_overwrite",
            )


def _move(source: Path, target: Path) -> None:
    try:
        os.replace(source, target)
    except OSError:  # another file system: copy, then rename within the target's
        partial = target.with_name(target.name + ".restoring")
        shutil.copyfile(source, partial)
        os.chmod(partial, 0o600)
        os.replace(partial, target)
