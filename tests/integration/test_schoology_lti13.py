"""Schoology as an LTI 1.3 platform: the `schoology` preset of the lti13 adapter, against an AGS platform fake
that refuses what Schoology refuses (Schoology docs "LTI Apps"; Simon-Initiative/lti_1p3#27): an `id` in a line
item's create body, a resource_link_id filter on the line item query, a token request with HTTP Basic, and any
NRPS Accept header but the exact membership container type."""

from __future__ import annotations

from sqlalchemy import select

from adapters.lti13_ags import PRESETS, SCOPE_LINEITEM, SCOPE_NRPS, SCOPE_SCORE, Lti13SettingsSchema
from gateway.composition import services_of
from gateway.models import Placement
from gateway.services.directory import create_user, enroll, get_user, link_identity
from gateway.services.lms import add_lms_connection, add_placement
from gateway.services.roster import sync_roster
from gateway.worker import DeliveryWorker
from tests.conftest import LiveServer
from tests.factories import World
from tests.fakes.ags_platform import AgsPlatform

SECTION = "2001450334"


def test_the_schoology_preset_fills_in_schoologys_endpoints() -> None:
    settings = Lti13SettingsSchema().load({"platform": "schoology", "client_id": "7152", "deployment_ids": "42"})
    assert settings["issuer"] == "https://schoology.schoology.com"
    assert settings["token_url"] == "https://lti-service.svc.schoology.com/lti-service/access-token"
    assert settings["auth_url"] == "https://lti-service.svc.schoology.com/lti-service/authorize-redirect"
    assert settings["jwks_url"] == "https://lti-service.svc.schoology.com/lti-service/.well-known/jwks"
    assert settings == {**settings, **PRESETS["schoology"]}


def test_a_grade_reaches_schoology_over_ags_within_its_rules(
    world: World, live_server: LiveServer, worker: DeliveryWorker
) -> None:
    with AgsPlatform("7152", f"{live_server.url}/lti/jwks", schoology_rules=True) as platform:
        with world.session() as session:
            connection = add_lms_connection(
                session,
                services_of(world.app).box,
                world.district_id,
                "Schoology LTI",
                "lti13",
                # The preset's issuer stays; the fake stands in for Schoology's token endpoint and services.
                {
                    "platform": "schoology",
                    "client_id": "7152",
                    "deployment_ids": ["42"],
                    "token_url": platform.token_url,
                    "jwks_url": f"{platform.url}/jwks",
                    "roster_match": "email",
                    "allow_private_addresses": True,
                },
            )
            for placement in session.scalars(select(Placement)):
                session.delete(placement)  # only Schoology receives grades in this test
            student = get_user(session, world.district_id, world.students[0])
            assert student is not None
            link_identity(session, student, connection, "schoology-sub-1", box=services_of(world.app).box)
            newcomer = create_user(session, world.district_id, name="Never launched", email="newcomer@school.example")
            platform.members = [{"user_id": "schoology-sub-2", "email": "newcomer@school.example", "status": "Active"}]
            placement = add_placement(
                session,
                world.district_id,
                connection.id,
                world.app_id,
                "quiz-1",
                SECTION,
                destination={
                    "lineitems": platform.lineitems_url,
                    "resource_link_id": "schoology-link-9",
                    "scopes": [SCOPE_LINEITEM, SCOPE_SCORE, SCOPE_NRPS],
                    "context_memberships_url": platform.memberships_url,
                },
            )
            enroll(session, connection, SECTION, student)
            ids = (connection.id, placement.id, newcomer.id)
            session.commit()

        # The roster comes over NRPS with Schoology's exact Accept header; the newcomer is matched by email.
        app = world.app
        result = sync_roster(
            services_of(app).database,
            services_of(app).box,
            services_of(app).adapters,
            world.district_id,
            "Schoology LTI",
        )
        assert (result.members, result.matched) == (1, 1)

        for user in (world.students[0], ids[2]):
            response = world.post_grade({"assignmentID": "quiz-1", "userID": user, "scoreGiven": 9, "scoreMaximum": 10})
            assert response.status_code == 202
        worker.run_until_idle()

        assert platform.assertion_errors == []
        [created] = platform.lineitem_posts
        assert "id" not in created, "Schoology refuses an id in the create body"
        assert all("resource_link_id" not in query for query in platform.lineitem_queries)
        assert platform.score_of("schoology-sub-1") is not None
        assert platform.score_of("schoology-sub-2") is not None
