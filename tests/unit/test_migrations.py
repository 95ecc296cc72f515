"""The Alembic migrations build exactly the schema the models describe, on every backend."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from gateway.db import make_engine
from gateway.migrate import alembic_config, current_revision, upgrade
from gateway.models import Base


def test_migrated_schema_matches_models(database_url: str) -> None:
    engine = make_engine(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_database_is_at_the_single_head(database_url: str) -> None:
    script = ScriptDirectory.from_config(alembic_config(database_url))
    assert len(script.get_heads()) == 1, "migrations must form one line"
    assert current_revision(database_url) == script.get_current_head()


def test_0008_rekeys_lti_identities_linked_by_hand_and_keeps_placements(database_url: str, tmp_path: Path) -> None:
    """Identities `user enroll --lms-user-id` stored as `passback:<connection>` take the key launches use (the
    LTI 1.1 consumer key, the LTI 1.3 issuer) unless a launch already took it; placements are kept."""
    if database_url.startswith("sqlite"):
        url, schema = f"sqlite:///{tmp_path / 'mig.db'}", None
    else:
        schema = "mig0008"
        url = database_url + ("&" if "?" in database_url else "?") + f"options=-csearch_path%3D{schema}"
        _run(database_url, f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")
    try:
        upgrade(url, "0007")
        _run(
            url,
            "INSERT INTO districts (id, name, created_at) VALUES ('d1', 'D', '2026-01-01 00:00:00');"
            "INSERT INTO lms_connections (id, district_id, name, adapter, settings_encrypted, registration_key, "
            "paused, created_at) VALUES "
            "('c11', 'd1', 'LTI 1.1', 'lti11', 'x', 'lti11|key-1', false, '2026-01-01 00:00:00'),"
            "('c13', 'd1', 'LTI 1.3', 'lti13', 'x', 'https://lms.example|cid', false, '2026-01-01 00:00:00'),"
            "('cs', 'd1', 'Sandbox', 'sandbox', 'x', NULL, false, '2026-01-01 00:00:00');"
            "INSERT INTO users (id, district_id, role, name, created_at) VALUES "
            "('u1', 'd1', 'student', 'A', '2026-01-01 00:00:00'), ('u2', 'd1', 'student', 'B', '2026-01-01 00:00:00'),"
            "('u3', 'd1', 'student', 'C', '2026-01-01 00:00:00'), ('u4', 'd1', 'student', 'D', '2026-01-01 00:00:00');"
            "INSERT INTO lms_identities (id, district_id, user_id, lms_connection_id, issuer, subject, created_at) "
            "VALUES ('i1', 'd1', 'u1', 'c11', 'passback:c11', 's1', '2026-01-01 00:00:00'),"
            "('i2', 'd1', 'u2', 'c13', 'passback:c13', 's2', '2026-01-01 00:00:00'),"
            "('i3', 'd1', 'u3', 'c11', 'passback:c11', 's3', '2026-01-01 00:00:00'),"
            "('i3b', 'd1', 'u4', 'c11', 'lti11:key-1', 's3', '2026-01-01 00:00:00'),"
            "('i4', 'd1', 'u4', 'cs', 'passback:cs', 's4', '2026-01-01 00:00:00')",
        )
        upgrade(url, "0008")
        engine = make_engine(url)
        with engine.connect() as conn:
            issuers = dict(conn.execute(text("SELECT id, issuer FROM lms_identities")).all())
        engine.dispose()
        assert issuers == {
            "i1": "lti11:key-1",
            "i2": "https://lms.example",
            "i3": "passback:c11",  # the launch key is taken by the user the launch made: left for an operator
            "i3b": "lti11:key-1",
            "i4": "passback:cs",
        }
    finally:
        if schema is not None:
            _run(database_url, f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def _run(url: str, statements: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        for statement in filter(None, (s.strip() for s in statements.split(";"))):
            conn.execute(text(statement))
    engine.dispose()
