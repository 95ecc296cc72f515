"""Fixes in place on a connection (issue 16): staff edit its settings and put in new credentials from the
dashboard (validated together, nothing saved on a refusal, secrets never shown, audited without values), and
"Check the connection" answers inside the connection's own section, where the button was clicked."""

from __future__ import annotations

import re

import requests
from sqlalchemy import select

from gateway.composition import services_of
from gateway.models import AuditEntry, LmsConnection
from gateway.services.lms import connection_settings
from tests.conftest import LiveServer
from tests.factories import World, build_world
from tests.integration.test_dashboard import csrf, signed_in, staff_of


def stored(world: World) -> tuple[str, dict[str, object]]:
    with world.session() as session:
        connection = session.get(LmsConnection, world.connection_id)
        assert connection is not None
        return connection.name, connection_settings(services_of(world.app).box, connection)


def settings_url(world: World) -> str:
    return world.url(f"/dashboard/connections/{world.connection_id}/settings")


def test_staff_rename_a_connection_and_put_in_a_new_secret(world: World) -> None:
    browser = signed_in(world, staff_of(world))
    _, before = stored(world)
    page = browser.get(settings_url(world))
    assert page.status_code == 200
    assert str(before["secret"]) not in page.text, "a secret is never shown"
    assert re.search(r'<input id="s-secret" name="secret" type="password"[^>]*value=""', page.text)

    form = {"csrf_token": csrf(page), "name": "Sandbox (new key)", "base_url": str(before["base_url"])}
    saved = browser.post(settings_url(world), data={**form, "secret": "a-brand-new-secret-0123456789"})
    assert saved.status_code == 200 and "Settings saved (changed: name, secret)" in saved.text, saved.text[-800:]
    name, after = stored(world)
    assert (name, after["secret"], after["base_url"]) == (
        "Sandbox (new key)",
        "a-brand-new-secret-0123456789",
        before["base_url"],
    )

    # Left empty, the secret stays; nothing changed is said so.
    again = browser.post(settings_url(world), data={**form, "secret": ""})
    assert "nothing changed" in again.text
    assert stored(world)[1]["secret"] == "a-brand-new-secret-0123456789"

    with world.session() as session:
        [entry] = session.scalars(select(AuditEntry).where(AuditEntry.action == "changed LMS connection settings"))
        assert entry.details == {"settings": ["name", "secret"]}
        assert "a-brand-new-secret" not in str(entry.details) + entry.target


def test_a_refused_setting_is_named_on_the_page_and_nothing_is_saved(world: World) -> None:
    browser = signed_in(world, staff_of(world))
    before = stored(world)
    page = browser.get(settings_url(world))
    refused = browser.post(
        settings_url(world),
        data={
            "csrf_token": csrf(page),
            "name": "Renamed",
            "base_url": "not a url",
            "secret": "typed-secret-that-must-not-come-back",
        },
    )
    assert refused.status_code == 422
    assert refused.headers["Content-Type"].startswith("text/html")
    assert "Nothing was changed" in refused.text and "<code>base_url</code>" in refused.text
    assert "typed-secret-that-must-not-come-back" not in refused.text
    assert 'value="Renamed"' in refused.text, "what was typed stays in the form"
    assert stored(world) == before


def test_the_address_rules_are_not_lifted_from_the_dashboard(world: World) -> None:
    with world.session() as session:
        connection = session.get(LmsConnection, world.connection_id)
        assert connection is not None
    browser = signed_in(world, staff_of(world))
    page = browser.get(settings_url(world))
    assert 'name="allow_private_addresses"' not in page.text
    _, before = stored(world)
    browser.post(
        settings_url(world),
        data={
            "csrf_token": csrf(page),
            "name": "Sandbox",
            "base_url": str(before["base_url"]),
            "allow_private_addresses": "yes",
        },
    )
    assert stored(world)[1].get("allow_private_addresses") == before.get("allow_private_addresses")


def test_another_districts_connection_is_not_found(
    world: World, live_server: LiveServer, http: requests.Session
) -> None:
    other = build_world(world.app, live_server.url, http, district_name="Other District")
    outsider = signed_in(other, staff_of(other, "staff@other.example"))
    assert outsider.get(settings_url(world)).status_code == 404
    page = outsider.get(other.url("/dashboard/connections"))
    refused = outsider.post(settings_url(world), data={"csrf_token": csrf(page), "name": "Taken over"})
    assert refused.status_code == 404
    assert stored(world)[0] != "Taken over"


def test_a_check_answers_in_the_connections_own_section(world: World) -> None:
    browser = signed_in(world, staff_of(world))
    page = browser.get(world.url("/dashboard/connections"))
    checked = browser.post(
        world.url(f"/dashboard/connections/{world.connection_id}/probe"), data={"csrf_token": csrf(page)}
    )
    assert checked.status_code == 200
    section = re.search(
        rf'<section aria-labelledby="c-{world.connection_id}">(.*?)</section>', checked.text, flags=re.S
    )
    assert section is not None
    assert re.search(rf'id="said-{world.connection_id}">[^<]*works', section.group(1)), section.group(1)[:500]
    main = checked.text.split('<main id="main">', 1)[1]
    assert main.index(f'id="said-{world.connection_id}"') > main.index(
        f'<section aria-labelledby="c-{world.connection_id}">'
    )
