"""The whole LTI 1.3 path once: login, launch, app sign-in, a grade posted with the user token, and its
delivery by AGS to the line item the launch announced."""

from __future__ import annotations

import time
import uuid
from urllib.parse import parse_qs, urlsplit

from joserfc import jwt
from joserfc.jwk import RSAKey
from sqlalchemy import select

from adapters.lti13_ags import SCOPE_LINEITEM, SCOPE_SCORE
from gateway.composition import services_of
from gateway.models import LmsIdentity, Placement, User
from gateway.services.catalog import upsert_assignments
from gateway.services.directory import authorize_app, create_app_partner
from gateway.services.lms import add_lms_connection
from gateway.worker import DeliveryWorker
from tests.conftest import LiveServer
from tests.factories import World
from tests.fakes.ags_platform import AgsPlatform

ISS = "https://lms.example"
CLAIM = "https://purl.imsglobal.org/spec/lti/claim/"


def test_launch_signs_the_student_in_and_their_grade_reaches_the_line_item(
    world: World, live_server: LiveServer, worker: DeliveryWorker
) -> None:
    platform_key = RSAKey.generate_key(2048, parameters={"kid": "platform-1"}, auto_kid=False)
    platform = AgsPlatform("client-9", f"{live_server.url}/lti/jwks")
    with world.session() as session:
        box = services_of(world.app).box
        partner = create_app_partner(session, "Reader", "https://reader.example/oauth/callback?x=1")
        upsert_assignments(session, partner.app.id, [{"id": "chapter-3", "name": "Chapter 3", "scoreMaximum": 20}])
        authorize_app(session, partner.app.id, world.district_id)
        add_lms_connection(
            session,
            box,
            world.district_id,
            "Moodle",
            "lti13",
            {
                "issuer": ISS,
                "client_id": "client-9",
                "deployment_ids": ["dep-1"],
                "auth_url": f"{ISS}/auth",
                "token_url": platform.token_url,
                "public_jwk": platform_key.as_dict(private=False),
                "allow_private_addresses": True,
            },
        )
        client_id, client_secret = partner.app.client_id, partner.client_secret
        lineitem = platform.add_lineitem("chapter-3", "Chapter 3", 20)

    with platform:
        login = world.http.get(
            world.url("/lti/login"),
            params={
                "iss": ISS,
                "login_hint": "u-42",
                "target_link_uri": world.url("/lti/launch"),
                "client_id": "client-9",
                "lti_message_hint": "m",
            },
            allow_redirects=False,
        )
        assert login.status_code == 302, login.text
        auth = parse_qs(urlsplit(login.headers["Location"]).query)
        assert auth["redirect_uri"] == [world.url("/lti/launch")] and auth["response_mode"] == ["form_post"]
        now = int(time.time())
        claims = {
            "iss": ISS,
            "aud": "client-9",
            "sub": "u-42",
            "iat": now,
            "exp": now + 300,
            "nonce": auth["nonce"][0],
            "name": "Grace Hopper",
            "email": "grace@school.example",
            CLAIM + "message_type": "LtiResourceLinkRequest",
            CLAIM + "version": "1.3.0",
            CLAIM + "deployment_id": "dep-1",
            CLAIM + "target_link_uri": world.url("/lti/launch"),
            CLAIM + "resource_link": {"id": "rl-77", "title": "Chapter 3 quiz"},
            CLAIM + "context": {"id": "course-55", "title": "Reading"},
            CLAIM + "roles": ["http://purl.imsglobal.org/vocab/lis/v2/membership#Learner"],
            CLAIM + "custom": {"assignment": "chapter-3"},
            "https://purl.imsglobal.org/spec/lti-ags/claim/endpoint": {
                "scope": [SCOPE_LINEITEM, SCOPE_SCORE],
                "lineitem": lineitem,
                "lineitems": platform.lineitems_url,
            },
            "jti": str(uuid.uuid4()),
        }
        id_token = jwt.encode({"alg": "RS256", "kid": "platform-1"}, claims, platform_key)
        launched = world.http.post(
            world.url("/lti/launch"), data={"id_token": id_token, "state": auth["state"][0]}, allow_redirects=False
        )
        assert launched.status_code == 302, launched.text
        target = urlsplit(launched.headers["Location"])
        assert f"{target.scheme}://{target.netloc}{target.path}" == "https://reader.example/oauth/callback"
        query = parse_qs(target.query)
        assert query["state"] == ["assignment:chapter-3"] and query["x"] == ["1"]

        tokens = world.http.post(
            world.url("/oauth/tokens"),
            json={
                "grant_type": "authorization_code",
                "code": query["code"][0],
                "redirect_uri": "https://reader.example/oauth/callback?x=1",
            },
            auth=(client_id, client_secret),
        )
        assert tokens.status_code == 200, tokens.text
        user_token = tokens.json()["access_token"]
        me = world.get("/v1/me", token=user_token).json()
        assert me["type"] == "student"

        posted = world.post_grade({"assignmentID": "chapter-3", "scoreGiven": 17, "scoreMaximum": 20}, token=user_token)
        assert posted.status_code == 202, posted.text
        worker.run_until_idle()
        assert world.get(posted.headers["Location"], token=user_token).json()["status"] == "delivered"
        assert platform.score_of("u-42")["scoreGiven"] == 17.0

        again = world.http.post(
            world.url("/oauth/tokens"),
            data={
                "grant_type": "authorization_code",
                "code": query["code"][0],
                "redirect_uri": "https://reader.example/oauth/callback?x=1",
            },
            auth=(client_id, client_secret),
        )
        assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
        # RFC 6749 §4.1.2: the code was presented twice, so the token it bought is revoked.
        assert world.get("/v1/me", token=user_token).status_code == 401

    with world.session() as session:
        user = session.get(User, me["data"]["id"])
        assert user is not None and (user.name, user.email, user.role) == (
            "Grace Hopper",
            "grace@school.example",
            "student",
        )
        assert session.scalar(select(LmsIdentity.subject).where(LmsIdentity.user_id == user.id)) == "u-42"
        placement = session.scalar(select(Placement).where(Placement.resource_link_id == "rl-77"))
        assert placement is not None and placement.course_id == "course-55"
        assert placement.destination["lineitem"] == lineitem
