"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from flask import Flask

from gateway.composition import services_of
from gateway.models import LmsConnection
from tests.conftest import TEST_ENCRYPTION_KEY
from tests.factories import World
from tests.fakes.scripted_lms import ScriptedLms


@pytest.fixture
def runner(app: Flask, database_url: str) -> CliRunner:
    """The `gateway` CLI against the test database (invoke it with `gateway.cli.main`)."""
    return CliRunner(
        env={
            "GATEWAY_DATABASE_URL": database_url,
            "GATEWAY_ENCRYPTION_KEYS": TEST_ENCRYPTION_KEY,
            "GATEWAY_SECRET_KEY": "test-secret-key",
        }
    )


@pytest.fixture
def lms(world: World) -> Iterator[ScriptedLms]:
    """A scripted sandbox-protocol LMS in place of the world's sandbox: it can hang, drop or refuse writes."""
    with ScriptedLms(world.sandbox_secret) as fake:
        box = services_of(world.app).box
        with world.session() as session:
            connection = session.get(LmsConnection, world.connection_id)
            assert connection is not None
            connection.settings_encrypted = box.encrypt_json(
                {"base_url": fake.base_url, "secret": world.sandbox_secret}
            )
        yield fake
        assert fake.problems == [], "the gateway broke the LMS protocol"
