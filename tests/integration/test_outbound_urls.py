"""URLs an LMS hands Passback (launch claims, `Link: rel=next` pages, LTI 1.1 outcome URLs) are called only on
the connection's registered hosts and allowlist, and on private addresses only when the connection allows them.
A second server, `ForeignHost`, stands for anything else reachable from Passback: it must never be called."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select

from adapters.lti13_ags import SCOPE_LINEITEM, SCOPE_SCORE
from gateway.composition import services_of
from gateway.models import LmsIdentity, Placement
from gateway.services.directory import enroll, get_user, link_identity
from gateway.services.lms import add_lms_connection, add_placement
from gateway.services.lti13_launch import AGS_CLAIM
from gateway.worker import DeliveryWorker
from tests.conftest import LiveServer
from tests.factories import World
from tests.fakes.ags_platform import AgsPlatform
from tests.fakes.foreign_host import SECRET_BODY, ForeignHost
from tests.fakes.lti11_consumer import Lti11Consumer
from tests.fakes.lti13_platform import Lti13Platform
from tests.integration.test_cli import gateway_cli

__all__ = ["gateway_cli"]  # the CLI fixture, shared with the CLI's own tests

ISS = "https://lms.example"
CID = "passback-on-lms-1"
OUTSIDE = "outside its registered hosts"


@dataclass
class Fakes:
    world: World
    platform: Lti13Platform
    ags: AgsPlatform
    foreign: ForeignHost
    passback: str

    def connect(self, **overrides: Any) -> str:
        """An lti13 connection: the launch platform's registration, the AGS fake's token endpoint."""
        settings = {**self.platform.registration(), "token_url": self.ags.token_url, **overrides}
        with self.world.session() as session:
            connection = add_lms_connection(
                session, services_of(self.world.app).box, self.world.district_id, "LMS", "lti13", settings
            )
            return connection.id

    def launch_with_ags(self, lineitem: str, lineitems: str) -> str:
        """A student's launch whose AGS claim names these URLs; returns the launched user's id."""
        state, nonce, params = self.platform.login(self.passback)
        claim = {"scope": [SCOPE_LINEITEM, SCOPE_SCORE], "lineitem": lineitem, "lineitems": lineitems}
        token = self.platform.launch_token(nonce, extra={AGS_CLAIM: claim})
        response = self.platform.launch(params["redirect_uri"], state, token)
        assert response.status_code == 302, response.text[:500]
        with self.world.session() as session:
            user_id = session.scalar(
                select(LmsIdentity.user_id).where(LmsIdentity.issuer == ISS, LmsIdentity.subject == "student-sub-1")
            )
        assert user_id is not None
        return str(user_id)

    def failed_delivery(self, user_id: str, worker: DeliveryWorker) -> tuple[dict[str, Any], str]:
        response = self.world.post_grade({"assignmentID": "quiz-1", "userID": user_id, "percentage": 0.8})
        assert response.status_code == 202, response.text
        worker.run_until_idle()
        answer = self.world.get(response.headers["Location"])
        [delivery] = answer.json()["deliveries"]
        return delivery, answer.text


@pytest.fixture
def fakes(world: World, live_server: LiveServer) -> Iterator[Fakes]:
    with (
        Lti13Platform(ISS, CID, "dep-1", session=world.http) as platform,
        AgsPlatform(CID, f"{live_server.url}/lti/jwks") as ags,
        ForeignHost() as foreign,
    ):
        yield Fakes(world, platform, ags, foreign, live_server.url)


def _sandbox_off(world: World) -> None:
    with world.session() as session:
        for placement in session.scalars(select(Placement).where(Placement.course_id == "course-101")):
            session.delete(placement)


def test_a_launch_line_item_on_another_host_is_never_called(fakes: Fakes, worker: DeliveryWorker) -> None:
    fakes.connect()
    base = fakes.foreign.url("localhost")
    user_id = fakes.launch_with_ags(f"{base}/api/lti/courses/9/line_items/1", f"{base}/api/lti/courses/9/line_items")

    with fakes.world.session() as session:
        placement = session.scalar(select(Placement).where(Placement.course_id == "course-9"))
        assert placement is not None
        # Kept while the connection names no allowed_hosts (the operator may yet approve the host); never called.
        assert placement.destination["lineitem"].startswith(base) and placement.destination["refused_urls"] is None
    delivery, text = fakes.failed_delivery(user_id, worker)
    assert fakes.foreign.hits == [], "the platform's bearer token went to another host"
    assert delivery["status"] == "retrying", "the grade waits for the operator"
    assert delivery["lastError"].startswith("the LMS gave a URL outside its registered hosts: http://localhost:")
    assert "allowed_hosts=…,localhost" in delivery["lastError"]
    assert SECRET_BODY not in text


def test_a_launch_line_item_on_loopback_is_refused_without_the_switch(fakes: Fakes, worker: DeliveryWorker) -> None:
    # The host is allowed by name: only the address (loopback) refuses it.
    fakes.connect(allow_private_addresses=False, allowed_hosts=["127.0.0.1"])
    base = fakes.foreign.url("127.0.0.1")
    user_id = fakes.launch_with_ags(f"{base}/line_items/1", f"{base}/line_items")

    delivery, text = fakes.failed_delivery(user_id, worker)
    assert fakes.foreign.hits == []
    assert delivery["status"] == "retrying", "waits: allow_private_addresses could allow it"
    assert "private, loopback or link-local address (127.0.0.1)" in delivery["lastError"]
    assert "allow_private_addresses" in delivery["lastError"]
    assert SECRET_BODY not in text


def test_a_next_page_on_another_host_is_not_followed(fakes: Fakes, worker: DeliveryWorker) -> None:
    world, ags = fakes.world, fakes.ags
    connection_id = fakes.connect(
        issuer="https://canvas.example", auth_url=f"{ags.url}/auth", jwks_url=f"{ags.url}/jwks"
    )
    with world.session() as session:
        user = get_user(session, world.district_id, world.students[0])
        assert user is not None
        from gateway.models import LmsConnection

        connection = session.get(LmsConnection, connection_id)
        assert connection is not None
        link_identity(session, user, connection, "sub-ada", box=services_of(world.app).box)
        enroll(session, connection, "canvas-course-7", user)
        add_placement(
            session,
            world.district_id,
            connection_id,
            world.app_id,
            "quiz-1",
            "canvas-course-7",
            destination={"lineitems": ags.lineitems_url, "resource_link_id": "rl-1"},
        )
    _sandbox_off(world)
    # A first page of line items for other links, and a next page on another host.
    ags.add_lineitem("quiz-1", resource_link_id="other-link-1")
    ags.add_lineitem("quiz-1", resource_link_id="other-link-2")
    ags.add_lineitem("quiz-1", resource_link_id="other-link-3")
    ags.page_base = fakes.foreign.url("localhost")
    ags.ignores_link_filter = True

    delivery, text = fakes.failed_delivery(world.students[0], worker)
    assert fakes.foreign.hits == []
    assert ags.lineitem_posts == [], "a line item was created after an unreadable page"
    assert delivery["status"] == "retrying"
    assert OUTSIDE in delivery["lastError"]
    assert SECRET_BODY not in text


def test_an_lti11_outcome_url_on_another_host_receives_nothing(
    world: World, live_server: LiveServer, worker: DeliveryWorker
) -> None:
    with Lti11Consumer("key-1", "shared-secret-0123456789", session=world.http) as consumer, ForeignHost() as foreign:
        with world.session() as session:
            add_lms_connection(
                session,
                services_of(world.app).box,
                world.district_id,
                "Moodle 1.1",
                "lti11",
                {
                    "consumer_key": "key-1",
                    "shared_secret": "shared-secret-0123456789",
                    "allowed_hosts": ["127.0.0.1"],
                    "allow_private_addresses": True,
                },
            )
        response = consumer.launch(
            f"{live_server.url}/lti11/launch", lis_outcome_service_url=f"{foreign.url('localhost')}/grade_passback"
        )
        assert response.status_code == 302, response.text[:500]
        with world.session() as session:
            user_id = session.scalar(select(LmsIdentity.user_id).where(LmsIdentity.issuer == "lti11:key-1"))
        response = world.post_grade({"assignmentID": "quiz-1", "userID": user_id, "percentage": 0.8})
        assert response.status_code == 202
        worker.run_until_idle()
        answer = world.get(response.headers["Location"])
        [delivery] = answer.json()["deliveries"]
        assert foreign.hits == [], "a signed outcome request went to another host"
        assert consumer.requests_for(None, "replaceResult") == []
        assert delivery["status"] == "retrying"
        assert OUTSIDE in delivery["lastError"]
        assert SECRET_BODY not in answer.text


def test_lti11_connections_must_name_their_lms_hosts(world: World) -> None:
    from gateway.services.errors import InvalidInput

    with world.session() as session, pytest.raises(InvalidInput) as refused:
        add_lms_connection(
            session,
            services_of(world.app).box,
            world.district_id,
            "No hosts",
            "lti11",
            {"consumer_key": "key-2", "shared_secret": "shared-secret-0123456789"},
        )
    assert "allowed_hosts" in (refused.value.fields or {})


def test_lms_set_names_the_hosts_of_an_existing_connection(gateway_cli: Any, app: Any) -> None:
    from gateway.models import LmsConnection
    from gateway.services.lms import connection_settings

    district = gateway_cli("district", "create", "D")
    base = ["--district", district["id"]]
    refused = gateway_cli.failing(
        "lms", "add", *base, "--name", "Moodle", "--adapter", "lti11",
        "--setting", "consumer_key=k1", "--setting", "shared_secret=shared-secret-123",
    )  # fmt: skip
    assert "allowed_hosts" in refused and "Traceback" not in refused
    added = gateway_cli(
        "lms", "add", *base, "--name", "Moodle", "--adapter", "lti11", "--setting", "consumer_key=k1",
        "--setting", "shared_secret=shared-secret-123", "--setting", "allowed_hosts=moodle.example.edu",
    )  # fmt: skip
    changed = gateway_cli(
        "lms", "set", *base, "--lms", "Moodle",
        "--setting", "allowed_hosts=moodle.example.edu, *.moodle.example.edu:8443",
        "--setting", "allow_private_addresses=true",
    )  # fmt: skip
    assert changed["changed"] == ["allow_private_addresses", "allowed_hosts"]
    bad = gateway_cli.failing("lms", "set", *base, "--lms", "Moodle", "--setting", "allowed_hosts=https://x/y")
    assert "allowed_hosts" in bad and "not a host name" in bad
    database, box = services_of(app).database, services_of(app).box
    with database.transaction() as session:
        connection = session.get(LmsConnection, added["id"])
        settings = connection_settings(box, connection)
    assert settings["allowed_hosts"] == ["moodle.example.edu", "*.moodle.example.edu:8443"]
    assert settings["allow_private_addresses"] is True and settings["shared_secret"] == "shared-secret-123"


def _legacy_lti11_connection(world: World, key: str) -> str:
    """An lti11 connection stored before allowed_hosts were required: its settings name none."""
    from gateway.models import LmsConnection

    box = services_of(world.app).box
    with world.session() as session:
        connection = add_lms_connection(
            session, box, world.district_id, "Old Moodle 1.1", "lti11",
            {"consumer_key": key, "shared_secret": "shared-secret-0123456789", "allowed_hosts": ["x.example"]},
        )  # fmt: skip
        row = session.get(LmsConnection, connection.id)
        assert row is not None
        row.settings_encrypted = box.encrypt_json({"consumer_key": key, "shared_secret": "shared-secret-0123456789"})
        return connection.id


def _delivery_row(world: World, delivery_id: str) -> Any:
    from gateway.models import Delivery

    with world.session() as session:
        row = session.get(Delivery, delivery_id)
        session.expunge(row)
        return row


def test_an_lti11_connection_from_before_allowed_hosts_keeps_its_grades_until_lms_set(
    world: World, live_server: LiveServer, worker: DeliveryWorker, runner: Any, gateway_cli: Any
) -> None:
    """Nothing is sent to an unapproved host, yet no grade is lost: it waits (its attempts not spent) and goes
    out by itself once the operator names the host with `gateway lms set`."""
    from datetime import timedelta

    from gateway.cli import main
    from gateway.models import Delivery, utcnow

    with Lti11Consumer("old-key", "shared-secret-0123456789", session=world.http) as consumer:
        connection_id = _legacy_lti11_connection(world, "old-key")
        warned = runner.invoke(main, ["worker", "--once"])
        assert warned.exit_code == 0, warned.output
        assert "'Old Moodle 1.1'" in warned.output and "has no allowed_hosts" in warned.output
        assert f"gateway lms set --district {world.district_id} --lms {connection_id}" in warned.output

        # A link first opened after the upgrade, before `lms set`: its outcome URL is kept (not yet called).
        response = consumer.launch(f"{live_server.url}/lti11/launch")
        assert response.status_code == 302, response.text[:500]
        with world.session() as session:
            placement = session.scalar(select(Placement).where(Placement.lms_connection_id == connection_id))
            assert placement is not None and placement.destination["outcome_service_url"] == consumer.outcome_url
            user_id = session.scalar(select(LmsIdentity.user_id).where(LmsIdentity.issuer == "lti11:old-key"))
        posted = world.post_grade({"assignmentID": "quiz-1", "userID": user_id, "percentage": 0.8})
        assert posted.status_code == 202
        worker.run_until_idle()
        [delivery] = world.get(posted.headers["Location"]).json()["deliveries"]
        assert consumer.requests_for(None, "replaceResult") == [], "sent to a host nobody approved"
        assert delivery["status"] == "retrying"
        assert "no allowed_hosts yet" in delivery["lastError"] and "gateway lms set" in delivery["lastError"]

        # However long the operator takes, the grade keeps waiting: no attempt is spent.
        for _ in range(world.app.config["PASSBACK"].max_attempts + 2):
            with world.session() as session:
                row = session.get(Delivery, delivery["id"])
                row.next_attempt_at = utcnow() - timedelta(seconds=1)
            worker.run_until_idle()
        waiting = _delivery_row(world, delivery["id"])
        assert waiting.status == "retrying" and waiting.attempts == 0
        assert consumer.requests_for(None, "replaceResult") == []

        gateway_cli(
            "lms", "set", "--district", world.district_id, "--lms", connection_id,
            "--setting", "allowed_hosts=127.0.0.1", "--setting", "allow_private_addresses=true",
        )  # fmt: skip
        worker.run_until_idle()  # no clock moved: the settings change woke the grade
        [delivery] = world.get(posted.headers["Location"]).json()["deliveries"]
        assert delivery["status"] == "delivered", delivery
        assert len(consumer.requests_for(None, "replaceResult")) == 1
        quiet = runner.invoke(main, ["worker", "--once"])
        assert "has no allowed_hosts" not in quiet.output


def test_a_launch_url_dropped_by_the_allowlist_waits_and_a_later_good_launch_clears_the_refusal(
    world: World, live_server: LiveServer, worker: DeliveryWorker
) -> None:
    from gateway.models import Delivery, utcnow

    with Lti11Consumer("key-3", "shared-secret-0123456789", session=world.http) as consumer, ForeignHost() as foreign:
        with world.session() as session:
            connection_id = add_lms_connection(
                session, services_of(world.app).box, world.district_id, "Moodle 1.1", "lti11",
                {"consumer_key": "key-3", "shared_secret": "shared-secret-0123456789",
                 "allowed_hosts": ["127.0.0.1"], "allow_private_addresses": True},
            ).id  # fmt: skip
        bad = consumer.launch(
            f"{live_server.url}/lti11/launch", lis_outcome_service_url=f"{foreign.url('localhost')}/x"
        )
        assert bad.status_code == 302
        with world.session() as session:
            placement = session.scalar(select(Placement).where(Placement.lms_connection_id == connection_id))
            assert "outcome_service_url" not in placement.destination
            assert placement.destination["refused_urls"]["outcome_service_url"]["waits"] is True
            user_id = session.scalar(select(LmsIdentity.user_id).where(LmsIdentity.issuer == "lti11:key-3"))
        posted = world.post_grade({"assignmentID": "quiz-1", "userID": user_id, "percentage": 0.8})
        worker.run_until_idle()
        [delivery] = world.get(posted.headers["Location"]).json()["deliveries"]
        assert delivery["status"] == "retrying", "a refused launch URL does not lose the grade"
        assert OUTSIDE in delivery["lastError"] and "open the link again" in delivery["lastError"]
        assert foreign.hits == []

        good = consumer.launch(f"{live_server.url}/lti11/launch")
        assert good.status_code == 302
        with world.session() as session:
            placement = session.scalar(select(Placement).where(Placement.lms_connection_id == connection_id))
            assert placement.destination["outcome_service_url"] == consumer.outcome_url
            assert placement.destination.get("refused_urls") is None, "the old refusal is cleared"
            # The grade's next look (an hour later) is due now.
            session.get(Delivery, delivery["id"]).next_attempt_at = utcnow()
        worker.run_until_idle()
        [delivery] = world.get(posted.headers["Location"]).json()["deliveries"]
        assert delivery["status"] == "delivered", delivery
        assert foreign.hits == []
