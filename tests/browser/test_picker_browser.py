"""The assignment picker in a real browser, under Passback's Content-Security-Policy: its answer page's one
script (allowed by nonce) posts the choice to the platform's return URL, which the CSP's form-action allows."""

from __future__ import annotations

from typing import Any

from joserfc.jwk import RSAKey
from sqlalchemy import select

from gateway.composition import services_of
from gateway.models import LmsConnection
from gateway.services.lms import connection_settings
from tests.conftest import LiveServer
from tests.factories import World
from tests.fakes.foreign_host import ForeignHost
from tests.integration.test_lti13_deep_linking import deep_linking_launch, platform_key

__all__ = ["platform_key"]  # the fixture, shared with the picker's own tests


def test_the_answer_page_posts_the_choice_to_the_platform_under_the_csp(
    world: World, live_server: LiveServer, platform_key: RSAKey, page: Any
) -> None:
    violations: list[str] = []
    page.on("console", lambda message: violations.append(message.text) if "Content Security" in message.text else None)
    with ForeignHost() as platform_return:
        # The platform's return endpoint is on loopback here: the connection names that host and allows it.
        box = services_of(world.app).box
        with world.session() as session:
            connection = session.scalars(select(LmsConnection).where(LmsConnection.name == "Canvas")).one()
            settings = {**connection_settings(box, connection), "allowed_hosts": ["127.0.0.1"]}
            connection.settings_encrypted = box.encrypt_json({**settings, "allow_private_addresses": True})
        return_url = f"{platform_return.url('127.0.0.1')}/courses/3/deep_linking_response"
        launched = deep_linking_launch(world, platform_key, accept_multiple=False, return_url=return_url)
        assert launched.status_code == 303, launched.text

        page.goto(launched.headers["Location"])
        page.get_by_label("Quiz 1").check()
        page.get_by_role("button", name="Add to the course").click()
        # The answer page submits itself: the browser lands on the platform's return URL.
        page.wait_for_url(return_url)
        posts = [h.path for h in platform_return.hits if h.method == "POST"]
        assert posts == ["/courses/3/deep_linking_response"]
    assert violations == []
