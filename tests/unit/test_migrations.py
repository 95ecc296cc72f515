"""The Alembic migrations build exactly the schema the models describe, on every backend."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
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
    with scratch_database(database_url, tmp_path, "mig0008") as url:
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


def test_0008_marks_lti13_launches_recorded_before_it_as_of_unknown_link(database_url: str, tmp_path: Path) -> None:
    """Before 0008 every launch of any link of an assignment in a course rebound its one placement, so an LTI 1.3
    launch row does not say which link the student opened: 0008 marks those rows link-unknown. LTI 1.1 rows
    (their sourcedid names the link) are not."""
    with scratch_database(database_url, tmp_path, "mig0008l") as url:
        upgrade(url, "0007")
        _run(
            url,
            "INSERT INTO districts (id, name, created_at) VALUES ('d1', 'D', '2026-01-01 00:00:00');"
            "INSERT INTO lms_connections (id, district_id, name, adapter, settings_encrypted, registration_key, "
            "paused, created_at) VALUES "
            "('c11', 'd1', 'LTI 1.1', 'lti11', 'x', 'lti11|key-1', false, '2026-01-01 00:00:00'),"
            "('c13', 'd1', 'LTI 1.3', 'lti13', 'x', 'https://lms.example|cid', false, '2026-01-01 00:00:00');"
            "INSERT INTO apps (id, name, client_id, client_secret_hash, redirect_uri, created_at) VALUES "
            "('a1', 'App', 'cid-1', 'h', 'https://app.example/cb', '2026-01-01 00:00:00');"
            "INSERT INTO assignments (id, app_id, external_id, name, standards, score_maximum, archived, source, "
            "created_at, updated_at) VALUES ('as1', 'a1', 'quiz-1', 'Quiz 1', '[]', 10, false, 'api', "
            "'2026-01-01 00:00:00', '2026-01-01 00:00:00');"
            "INSERT INTO placements (id, district_id, lms_connection_id, assignment_id, course_id, resource_link_id, "
            "destination, created_at) VALUES "
            "('p11', 'd1', 'c11', 'as1', 'course-9', 'rl-1', '{}', '2026-01-01 00:00:00'),"
            "('p13', 'd1', 'c13', 'as1', 'course-9', 'rl-b', '{}', '2026-01-01 00:00:00');"
            "INSERT INTO users (id, district_id, role, name, created_at) VALUES "
            "('u1', 'd1', 'student', 'A', '2026-01-01 00:00:00');"
            "INSERT INTO launch_destinations (id, district_id, placement_id, user_id, data, updated_at) VALUES "
            "('l11', 'd1', 'p11', 'u1', '{\"lis_result_sourcedid\": \"s\"}', '2026-01-01 00:00:00'),"
            "('l13', 'd1', 'p13', 'u1', '{}', '2026-01-01 00:00:00')",
        )
        upgrade(url, "0008")
        engine = make_engine(url)
        with engine.connect() as conn:
            marked = dict(conn.execute(text("SELECT id, link_unknown FROM launch_destinations")).all())
        engine.dispose()
        assert marked == {"l11": False, "l13": True}


def test_0015_dates_existing_rows_by_creation_and_lets_full_district_tokens_read_the_roster(
    database_url: str, tmp_path: Path
) -> None:
    """Rows from before 0015 changed last when they were created; district-app tokens issued with the full scope set
    gain roster:read, a catalog pull's me:read token does not, and the downgrade takes it back."""
    full = "grades:write grades:read assignments:read assignments:write"
    with scratch_database(database_url, tmp_path, "mig0015") as url:
        upgrade(url, "0014")
        _run(
            url,
            "INSERT INTO districts (id, name, created_at) VALUES ('d1', 'D', '2026-01-01 00:00:00');"
            "INSERT INTO lms_connections (id, district_id, name, adapter, settings_encrypted, paused, created_at) "
            "VALUES ('c1', 'd1', 'Sandbox', 'sandbox', 'x', false, '2026-01-01 00:00:00');"
            "INSERT INTO apps (id, name, client_id, client_secret_hash, redirect_uri, created_at) VALUES "
            "('a1', 'App', 'cid-1', 'h', 'https://app.example/cb', '2026-01-01 00:00:00');"
            "INSERT INTO assignments (id, app_id, external_id, name, standards, score_maximum, archived, source, "
            "created_at, updated_at) VALUES ('as1', 'a1', 'quiz-1', 'Quiz 1', '[]', 10, false, 'api', "
            "'2026-01-01 00:00:00', '2026-01-01 00:00:00');"
            "INSERT INTO users (id, district_id, role, name, created_at) VALUES "
            "('u1', 'd1', 'student', 'A', '2026-01-01 00:00:00');"
            "INSERT INTO enrollments (id, district_id, lms_connection_id, course_id, user_id, role, source, "
            "created_at) VALUES ('e1', 'd1', 'c1', 'course-1', 'u1', 'student', 'manual', '2026-01-01 00:00:00');"
            "INSERT INTO placements (id, district_id, lms_connection_id, assignment_id, course_id, destination, "
            "created_at) VALUES ('p1', 'd1', 'c1', 'as1', 'course-1', '{}', '2026-01-01 00:00:00');"
            "INSERT INTO api_tokens (id, token_hash, kind, district_id, app_id, scopes, label, created_at) VALUES "
            "('t1', 'h1', 'district_app', 'd1', 'a1', 'grades:write grades:read assignments:read "
            "assignments:write', '', '2026-01-01 00:00:00'),"
            "('t2', 'h2', 'district_app', 'd1', 'a1', 'me:read', 'catalog pull', '2026-01-01 00:00:00'),"
            "('t3', 'h3', 'user', 'd1', 'a1', 'grades:write grades:read assignments:read', '', '2026-01-01 00:00:00')",
        )
        upgrade(url, "0015")
        engine = make_engine(url)
        with engine.connect() as conn:
            dated = [
                conn.execute(text(f"SELECT updated_at = created_at FROM {table}")).scalar_one()  # noqa: S608
                for table in ("users", "enrollments", "placements")
            ]
            scopes = dict(conn.execute(text("SELECT id, scopes FROM api_tokens")).all())
        engine.dispose()
        assert dated == [True, True, True]
        assert scopes == {
            "t1": f"{full} roster:read",
            "t2": "me:read",
            "t3": "grades:write grades:read assignments:read",
        }
        command.downgrade(alembic_config(url), "0014")
        engine = make_engine(url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT scopes FROM api_tokens WHERE id = 't1'")).scalar_one() == full
        engine.dispose()


@contextmanager
def scratch_database(database_url: str, tmp_path: Path, schema: str) -> Iterator[str]:
    """An empty database to migrate a file on SQLite, a schema of its own on PostgreSQL, dropped after."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'mig.db'}"
        return
    _run(database_url, f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")
    try:
        yield database_url + ("&" if "?" in database_url else "?") + f"options=-csearch_path%3D{schema}"
    finally:
        _run(database_url, f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def _run(url: str, statements: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        for statement in filter(None, (s.strip() for s in statements.split(";"))):
            conn.execute(text(statement))
    engine.dispose()
