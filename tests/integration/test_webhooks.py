"""Webhooks (issue 15): an app registers endpoints with its district-app token and hears what happened to each
grade, signed as the Standard Webhooks specification says. Every request reaches a real receiver on 127.0.0.1
that verifies it with the `standardwebhooks` package from PyPI (tests/fakes/webhook_receiver.py).

- The endpoints' API: register (the secret once), list, read, change, disable, rotate the secret, remove;
  scoped to the district and the app, refused to user tokens, URLs by the rules LMS URLs follow.
- Each event and what it says, written in the transaction of the change it reports, only to the endpoints of
  the grade's district and app that subscribed to it.
- Delivery: retried after the receiver fails (the injected clock, no sleeps), a grade's revisions in order,
  given up on after a day (the endpoint marked failing), both secrets signing after a rotation, nothing to a
  disabled endpoint, and a receiver that hangs holding only webhook threads, never an LMS delivery.
- Staff see an app's endpoints and disable one (CSRF, audited), in their own district only.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import select

from gateway import start_embedded_worker
from gateway.cli import main
from gateway.clock import SYSTEM_CLOCK, Clock, FrozenClock
from gateway.composition import services_of
from gateway.crypto import hash_token
from gateway.models import ApiToken, LmsConnection, User, WebhookMessage
from gateway.services.catalog import upsert_assignments
from gateway.services.directory import authorize_app, create_app_partner, create_district, create_user, enroll
from gateway.services.lms import add_lms_connection, add_placement
from gateway.webhook_sender import WebhookSender
from gateway.worker import DeliveryWorker
from tests.assertions import assert_error
from tests.conftest import LiveServer
from tests.factories import World, build_world
from tests.fakes.scripted_lms import Respond, ScriptedLms
from tests.fakes.webhook_receiver import Answer, WebhookReceiver
from tests.integration.test_dashboard import csrf, signed_in, staff_of
from tests.integration.test_lti11 import FAKE_HOSTS as LTI11_HOSTS
from tests.integration.test_lti11 import KEY as LTI11_KEY
from tests.integration.test_lti11 import SECRET as LTI11_SECRET

ALL_EVENTS = [
    "grade.delivered",
    "grade.failed",
    "grade.retrying",
    "grade.awaiting_launch",
    "grade.unroutable",
    "grade.superseded",
    "grade.lms_changed",
]


# The receiver listens on 127.0.0.1, which only tests (and on-site apps) may allow, as for LMS URLs.
ALLOW_LOOPBACK = {"webhook_allow_private_addresses": True}
# A receiver that never answers holds each webhook thread for its whole request deadline (60 s here: the lease
# is long enough), far longer than the test takes.
HANGING = {**ALLOW_LOOPBACK, "lease_seconds": 600.0, "webhook_timeout_seconds": 60.0, "webhook_threads": 2}


@pytest.fixture
def settings_overrides(request: pytest.FixtureRequest) -> dict[str, object]:
    return dict(getattr(request, "param", ALLOW_LOOPBACK))


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as fake:
        yield fake
        assert fake.problems == [], "a webhook request did not verify with standardwebhooks"


def register(world: World, url: str, events: list[str] | None = None, token: str | None = None) -> requests.Response:
    return world.http.post(
        world.url("/v1/webhooks"), json={"url": url, "events": events or ALL_EVENTS}, headers=world.headers(token)
    )


def registered(world: World, receiver: WebhookReceiver, events: list[str] | None = None) -> dict[str, Any]:
    response = register(world, receiver.url, events)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    receiver.secrets.append(created["secret"])
    return created


def other_world(world: World, *, same_app: bool) -> tuple[str, str]:
    """(district id, district-app token) of a second district: the same app authorized there, or another app in
    the world's district."""
    with world.session() as session:
        if same_app:
            district = create_district(session, "Other District")
            return district.id, authorize_app(session, world.app_id, district.id).raw
        partner = create_app_partner(session, "Other App", "https://other.example/callback").app
        return world.district_id, authorize_app(session, partner.id, world.district_id).raw


# --- the endpoints' API ---------------------------------------------------------------------------------------


def test_register_read_list_change_and_remove_an_endpoint(world: World, receiver: WebhookReceiver) -> None:
    response = register(world, receiver.url, ["grade.failed", "grade.delivered"])

    assert response.status_code == 201, response.text
    created = response.json()
    assert created["url"] == receiver.url
    assert created["events"] == ["grade.delivered", "grade.failed"]
    assert created["secret"].startswith("whsec_") and len(created["secret"]) > 40
    assert (created["disabled"], created["failing"], created["pending"]) == (False, False, 0)
    hook = f"/v1/webhooks/{created['id']}"

    read = world.get(hook)
    assert read.status_code == 200, read.text
    assert "secret" not in read.json() and read.json()["events"] == ["grade.delivered", "grade.failed"]
    listed = world.get("/v1/webhooks").json()["webhooks"]
    assert [w["id"] for w in listed] == [created["id"]] and "secret" not in listed[0]

    patched = world.http.patch(
        world.url(hook), json={"events": ["grade.superseded"], "url": receiver.url + "/v2"}, headers=world.headers()
    )
    assert patched.status_code == 200, patched.text
    assert (patched.json()["events"], patched.json()["url"]) == (["grade.superseded"], receiver.url + "/v2")

    disabled = world.http.patch(world.url(hook), json={"disabled": True}, headers=world.headers())
    assert (disabled.json()["disabled"], disabled.json()["disabledBy"]) == (True, "app")
    enabled = world.http.patch(world.url(hook), json={"disabled": False}, headers=world.headers())
    assert (enabled.json()["disabled"], enabled.json()["disabledBy"]) == (False, None)

    removed = world.http.delete(world.url(hook), headers=world.headers())
    assert removed.status_code == 204 and removed.content == b""
    assert_error(world.get(hook), 404, "webhook_not_found")
    assert world.get("/v1/webhooks").json()["webhooks"] == []


def test_rotating_gives_a_new_secret_once(world: World, receiver: WebhookReceiver) -> None:
    created = registered(world, receiver)

    rotated = world.http.post(world.url(f"/v1/webhooks/{created['id']}/rotate-secret"), headers=world.headers())

    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["secret"].startswith("whsec_") and rotated.json()["secret"] != created["secret"]
    assert "secret" not in world.get(f"/v1/webhooks/{created['id']}").json()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"events": ["grade.delivered"]}, "url", id="no-url"),
        pytest.param({"url": "ftp://example.com/x", "events": ["grade.delivered"]}, "url", id="not-http"),
        pytest.param({"url": "https://example.com/x", "events": []}, "events", id="no-events"),
        pytest.param({"url": "https://example.com/x", "events": ["grade.eaten"]}, "events[0]", id="unknown-event"),
        pytest.param(
            {"url": "https://example.com/x", "events": ["grade.failed", "grade.failed"]}, "events", id="repeated"
        ),
        pytest.param({"url": "https://example.com/x", "events": ["grade.failed"], "secret": "x"}, "secret", id="extra"),
    ],
)
def test_a_bad_registration_names_the_field(world: World, body: dict[str, Any], field: str) -> None:
    response = world.http.post(world.url("/v1/webhooks"), json=body, headers=world.headers())

    assert_error(response, 422, "invalid_input", field)
    assert world.get("/v1/webhooks").json()["webhooks"] == []


def test_a_user_token_may_not_manage_webhooks(world: World, receiver: WebhookReceiver) -> None:
    created = registered(world, receiver)
    student = world.user_token(world.students[0])

    assert_error(register(world, receiver.url, token=student), 403)
    assert_error(world.get("/v1/webhooks", token=student), 403)
    assert_error(world.get(f"/v1/webhooks/{created['id']}", token=student), 403)
    patch = world.http.patch(
        world.url(f"/v1/webhooks/{created['id']}"), json={"disabled": True}, headers=world.headers(student)
    )
    assert_error(patch, 403)
    assert world.get(f"/v1/webhooks/{created['id']}").json()["disabled"] is False


@pytest.mark.parametrize("same_app", [True, False], ids=["same-app-other-district", "other-app-same-district"])
def test_endpoints_are_scoped_to_the_district_and_the_app(
    world: World, receiver: WebhookReceiver, same_app: bool
) -> None:
    created = registered(world, receiver)
    _district, token = other_world(world, same_app=same_app)
    hook = f"/v1/webhooks/{created['id']}"

    assert world.get("/v1/webhooks", token=token).json()["webhooks"] == []
    assert_error(world.get(hook, token=token), 404, "webhook_not_found")
    patch = world.http.patch(world.url(hook), json={"url": "https://evil.example/x"}, headers=world.headers(token))
    assert_error(patch, 404, "webhook_not_found")
    assert_error(world.http.post(world.url(hook + "/rotate-secret"), headers=world.headers(token)), 404)
    assert_error(world.http.delete(world.url(hook), headers=world.headers(token)), 404)
    assert world.get(hook).json()["url"] == receiver.url


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/hooks",
        "https://127.0.0.1/hooks",
        "https://10.1.2.3/hooks",
        "https://[::1]/hooks",
        "https://169.254.169.254/latest",
        "https://localhost/hooks",
    ],
)
def test_webhook_urls_follow_the_address_rules_of_lms_urls(app: Any, live_server: Any, http: Any, url: str) -> None:
    app.config["PASSBACK"].webhook_allow_private_addresses = False
    world = build_world(app, live_server.url, http)

    assert_error(register(world, url), 422, "invalid_input", "url")
    assert register(world, "https://hooks.example.com/passback").status_code == 201


# --- what each event says -----------------------------------------------------------------------------------


def sender_for(world: World, clock: Clock = SYSTEM_CLOCK) -> WebhookSender:
    services = services_of(world.app)
    return WebhookSender(services.database, services.box, world.app.config["PASSBACK"], clock=clock)


def worker_for(world: World, clock: Clock = SYSTEM_CLOCK) -> DeliveryWorker:
    services = services_of(world.app)
    return DeliveryWorker(services.database, services.box, world.app.config["PASSBACK"], clock=clock)


def post(world: World, assignment: str = "quiz-1", student: int = 0, percentage: float = 0.8, **key: str) -> str:
    body = {"assignmentID": assignment, "percentage": percentage, **(key or {"userID": world.students[student]})}
    response = world.post_grade(body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def ahead() -> FrozenClock:
    """A test clock a minute ahead of the API's (which stamps posted grades): what they wrote is due on it."""
    return FrozenClock(SYSTEM_CLOCK.now() + timedelta(minutes=1))


def status(world: World, grade_id: str) -> str:
    return str(world.get(f"/v1/grades/{grade_id}").json()["status"])


def types(receiver: WebhookReceiver) -> list[str]:
    return [event["type"] for event in receiver.events()]


def messages(world: World) -> list[WebhookMessage]:
    with world.session() as session:
        return list(session.scalars(select(WebhookMessage).order_by(WebhookMessage.seq)))


def test_a_delivered_grade_is_heard_with_what_the_app_needs(world: World, receiver: WebhookReceiver) -> None:
    registered(world, receiver)
    with world.session() as session:
        user = session.get(User, world.students[0])
        assert user is not None
        user.sis_id = "S-1001"
    grade_id = post(world, sisID="S-1001")

    worker_for(world).run_until_idle()
    assert receiver.requests == [], "nothing goes out before the sender runs"
    assert sender_for(world).run_until_idle() == 1

    [event] = receiver.events()
    assert event["type"] == "grade.delivered"
    assert event["timestamp"].endswith("Z")
    data = event["data"]
    assert (data["gradeID"], data["revision"], data["assignmentID"]) == (grade_id, 1, "quiz-1")
    assert (data["userID"], data["studentKey"]) == (world.students[0], {"sisID": "S-1001"})
    assert (data["status"], data["reason"], data["lmsStatus"]) == ("delivered", None, 200)
    destination = data["destination"]
    assert (destination["lmsConnectionID"], destination["lms"]) == (world.connection_id, "Sandbox")
    assert (destination["courseID"], destination["sectionID"], destination["operation"]) == (
        "course-101",
        None,
        "replace",
    )
    [delivery] = world.get(f"/v1/grades/{grade_id}").json()["deliveries"]
    assert (destination["deliveryID"], destination["placementID"]) == (delivery["id"], delivery["placement"]["id"])
    [request] = receiver.requests
    assert request.headers["webhook-id"].startswith("msg_")
    assert request.headers["content-type"] == "application/json"
    assert [m.status for m in messages(world)] == ["delivered"]


def test_a_refused_grade_is_heard_failed_with_the_lms_reason(
    world: World, lms: ScriptedLms, receiver: WebhookReceiver
) -> None:
    registered(world, receiver)
    lms.script(Respond(400, body={"error": "scoreMaximum must equal the item's points (25)"}))
    post(world)

    worker_for(world).run_until_idle()
    sender_for(world).run_until_idle()

    [event] = receiver.events()
    assert (event["type"], event["data"]["status"], event["data"]["lmsStatus"]) == ("grade.failed", "failed", 400)
    assert "scoreMaximum must equal the item's points (25)" in event["data"]["reason"]


def test_a_retry_is_heard_once_then_the_delivery(world: World, lms: ScriptedLms, receiver: WebhookReceiver) -> None:
    registered(world, receiver)
    lms.script(Respond(503, message="maintenance"), Respond(503, message="maintenance"))
    post(world)
    clock = ahead()
    worker = worker_for(world, clock)

    for _ in range(3):  # refused, refused, stored
        worker.run_until_idle()
        clock.advance(3600)
    sender_for(world, clock).run_until_idle()

    assert types(receiver) == ["grade.retrying", "grade.delivered"]
    retrying = receiver.events()[0]["data"]
    assert (retrying["status"], retrying["lmsStatus"]) == ("retrying", 503)
    assert "maintenance" in retrying["reason"]


def test_unroutable_and_awaiting_launch_are_heard_when_the_grade_is_posted(
    world: World, receiver: WebhookReceiver
) -> None:
    registered(world, receiver)
    with world.session() as session:
        connection = add_lms_connection(
            session,
            services_of(world.app).box,
            world.district_id,
            "Canvas 1.1",
            "lti11",
            {"consumer_key": LTI11_KEY, "shared_secret": LTI11_SECRET, **LTI11_HOSTS},
        )
        student = session.get(User, world.students[0])
        assert student is not None
        enroll(session, connection, "canvas-course-1", student)
        add_placement(session, world.district_id, connection.id, world.app_id, "quiz-2", "canvas-course-1")
        lti11_id = connection.id

    unplaced = post(world, assignment="unplaced")
    waiting = post(world, assignment="quiz-2")
    sender_for(world).run_until_idle()  # no worker ran: these events come from posting alone

    by_grade = {(e["data"]["gradeID"], e["type"]) for e in receiver.events()}
    assert by_grade == {(unplaced, "grade.unroutable"), (waiting, "grade.awaiting_launch")}
    unroutable = next(e["data"] for e in receiver.events() if e["type"] == "grade.unroutable")
    assert unroutable["status"] == "unroutable" and "not placed in any LMS course" in unroutable["reason"]
    assert unroutable["destination"]["lmsConnectionID"] is None and unroutable["destination"]["placementID"] is None
    awaiting = next(e["data"] for e in receiver.events() if e["type"] == "grade.awaiting_launch")
    assert (awaiting["status"], awaiting["destination"]["lmsConnectionID"]) == ("awaiting_launch", lti11_id)
    assert "open the link" in awaiting["reason"]


def test_a_replaced_revision_is_heard_superseded(world: World, receiver: WebhookReceiver) -> None:
    registered(world, receiver)
    first = post(world, percentage=0.5)
    second = post(world, percentage=0.6)  # before any worker ran: the first revision never left
    assert first == second

    worker_for(world).run_until_idle()
    sender_for(world).run_until_idle()

    assert [(e["type"], e["data"]["revision"]) for e in receiver.events()] == [
        ("grade.superseded", 1),
        ("grade.delivered", 2),
    ]
    assert "newer revision" in receiver.events()[0]["data"]["reason"]


def test_a_read_back_that_finds_another_value_in_the_lms_is_heard_once(world: World, receiver: WebhookReceiver) -> None:
    registered(world, receiver)
    grade_id = post(world, percentage=0.8)
    worker_for(world).run_until_idle()
    read_url = f"/v1/grades/{grade_id}/lms"
    assert world.get(read_url).json()["lms"][0]["value"] == 0.8
    sender_for(world).run_until_idle()
    assert [e["type"] for e in receiver.events()] == ["grade.delivered"], "the LMS holds what was sent: no change"

    # A teacher overrides the grade in the gradebook (the sandbox LMS's own API, as its UI would).
    score_url = world.url(
        f"/sandbox-lms/{world.connection_id}/courses/course-101/items/quiz-1/scores/{world.students[0]}"
    )
    sandbox = {"Authorization": f"Bearer {world.sandbox_secret}"}
    later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    put = world.http.put(score_url, json={"scoreGiven": 5, "scoreMaximum": 10, "timestamp": later}, headers=sandbox)
    assert put.status_code == 200, put.text
    for _ in range(2):  # reading the same value again is not a new change
        assert world.get(read_url).json()["lms"][0]["value"] == 0.5
    sender_for(world).run_until_idle()
    changed = receiver.events()[1:]
    assert [e["type"] for e in changed] == ["grade.lms_changed"]
    data = changed[0]["data"]
    assert (data["gradeID"], data["revision"], data["status"]) == (grade_id, 1, "delivered")
    assert (data["deliveredValue"], data["lmsValue"]) == (0.8, 0.5)
    assert "another value" in data["reason"]
    assert "deliveredValue" not in receiver.events()[0]["data"], "only grade.lms_changed carries the values"

    # The grade is cleared in the LMS: a change again, to no grade.
    assert world.http.delete(score_url, headers=sandbox).json() == {"removed": True}
    assert world.get(read_url).json()["lms"][0]["value"] is None
    sender_for(world).run_until_idle()
    assert [(e["type"], e["data"]["lmsValue"]) for e in receiver.events()[2:]] == [("grade.lms_changed", None)]


def test_an_lms_change_is_heard_only_by_endpoints_that_subscribed(world: World, receiver: WebhookReceiver) -> None:
    registered(world, receiver, ["grade.delivered"])
    grade_id = post(world, percentage=0.8)
    worker_for(world).run_until_idle()
    score_url = world.url(
        f"/sandbox-lms/{world.connection_id}/courses/course-101/items/quiz-1/scores/{world.students[0]}"
    )
    assert world.http.delete(score_url, headers={"Authorization": f"Bearer {world.sandbox_secret}"}).ok
    assert world.get(f"/v1/grades/{grade_id}/lms").json()["lms"][0]["value"] is None
    sender_for(world).run_until_idle()
    assert [e["type"] for e in receiver.events()] == ["grade.delivered"]


def test_an_endpoint_hears_only_the_events_it_subscribed_to(world: World, receiver: WebhookReceiver) -> None:
    registered(world, receiver, ["grade.unroutable"])
    post(world)
    post(world, assignment="unplaced")

    worker_for(world).run_until_idle()
    sender_for(world).run_until_idle()

    assert types(receiver) == ["grade.unroutable"]
    assert len(messages(world)) == 1


def test_events_are_written_with_the_change_and_never_for_a_refused_post(
    world: World, receiver: WebhookReceiver
) -> None:
    registered(world, receiver)
    post(world, assignment="unplaced")
    assert [(m.event, m.status) for m in messages(world)] == [("grade.unroutable", "pending")]

    stale = world.post_grade(
        {
            "assignmentID": "unplaced",
            "userID": world.students[0],
            "percentage": 0.1,
            "timestamp": "2020-01-01T00:00:00Z",
        }
    )
    assert_error(stale, 409, "stale_grade")
    assert len(messages(world)) == 1, "a refused post's transaction wrote no event"


@pytest.mark.parametrize("same_app", [True, False], ids=["same-app-other-district", "other-app-same-district"])
def test_an_endpoint_hears_only_its_own_district_and_app(
    world: World, receiver: WebhookReceiver, same_app: bool
) -> None:
    registered(world, receiver)
    district_id, token = other_world(world, same_app=same_app)
    with world.session() as session:
        if same_app:
            student_id = create_user(session, district_id, name="Other").id
        else:
            other_app = session.scalar(select(ApiToken.app_id).where(ApiToken.token_hash == hash_token(token)))
            upsert_assignments(session, other_app, [{"id": "unplaced", "name": "Theirs"}])
            student_id = world.students[0]
    theirs = world.post_grade({"assignmentID": "unplaced", "userID": student_id, "percentage": 0.3}, token=token)
    assert theirs.status_code == 202, theirs.text
    ours = post(world, assignment="unplaced")

    sender_for(world).run_until_idle()

    assert [e["data"]["gradeID"] for e in receiver.events()] == [ours]


# --- how events are delivered -------------------------------------------------------------------------------


def hook(world: World, created: dict[str, Any]) -> dict[str, Any]:
    response = world.get(f"/v1/webhooks/{created['id']}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_failing_receiver_gets_the_same_event_again_until_it_takes_it(
    world: World, receiver: WebhookReceiver
) -> None:
    created = registered(world, receiver)
    receiver.script(Answer(500), Answer(503))
    post(world, assignment="unplaced")
    clock = ahead()
    sender = sender_for(world, clock)

    assert sender.run_until_idle() == 1
    assert receiver.events() == []
    state = hook(world, created)
    assert (state["pending"], state["failing"]) == (1, False)
    assert state["lastError"] == 'the endpoint answered HTTP 500: {"ok": false}'
    assert sender.run_until_idle() == 0, "not again before its backoff"

    clock.advance(3600)
    sender.run_until_idle()
    clock.advance(3600)
    sender.run_until_idle()

    assert [r.answered for r in receiver.requests] == [500, 503, 204]
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1, "one event, one id on every attempt"
    assert len({r.body for r in receiver.requests}) == 1, "the same bytes on every attempt"
    assert types(receiver) == ["grade.unroutable"]
    [message] = messages(world)
    assert (message.status, message.attempts, message.last_status) == ("delivered", 3, 204)
    state = hook(world, created)
    assert (state["pending"], state["failing"], state["lastSuccessAt"] is not None) == (0, False, True)


def test_a_grades_revisions_are_heard_in_the_order_they_were_received(world: World, receiver: WebhookReceiver) -> None:
    registered(world, receiver, ["grade.delivered"])
    clock = ahead()
    worker = worker_for(world, clock)
    for percentage in (0.5, 0.6, 0.7):
        post(world, percentage=percentage)
        worker.run_until_idle()
    receiver.script(Answer(500))  # the first revision's event is refused once
    sender = sender_for(world, clock)

    sender.run_until_idle()
    assert len(receiver.requests) == 1, "the later revisions wait for the first one's event"

    clock.advance(3600)
    sender.run_until_idle()

    assert [e["data"]["revision"] for e in receiver.events()] == [1, 2, 3]
    assert [r.payload["data"]["revision"] for r in receiver.requests] == [1, 1, 2, 3]


def test_an_endpoint_that_fails_for_a_day_is_marked_failing_and_staff_see_it(
    world: World, receiver: WebhookReceiver
) -> None:
    created = registered(world, receiver)
    receiver.default_status = 500
    post(world, assignment="unplaced")
    clock = ahead()
    sender = sender_for(world, clock)

    attempts = 0
    while messages(world)[0].status != "failed":
        sender.run_until_idle()
        attempts += 1
        assert hook(world, created)["failing"] is (messages(world)[0].status == "failed")
        clock.advance(3600)
        assert attempts < 40, "still retried after more than a day"

    [message] = messages(world)
    assert message.delivered_at is None and message.attempts >= 24, "retried for at least a day"
    assert message.last_error.startswith("gave up after a day of failures at the endpoint (its last error: the ")
    assert "answered HTTP 500" in message.last_error
    state = hook(world, created)
    assert (state["failing"], state["failingSince"] is not None) == (True, True)
    assert state["lastError"].startswith("the endpoint answered HTTP 500")

    receiver.default_status = 204  # it answers again: the next event clears the mark
    post(world, assignment="unplaced", student=1)
    sender.run_until_idle()
    assert (hook(world, created)["failing"], types(receiver)) == (False, ["grade.unroutable"])


def test_an_endpoint_that_is_down_gets_one_request_per_backoff_not_one_per_event(
    world: World, receiver: WebhookReceiver
) -> None:
    created = registered(world, receiver, ["grade.unroutable"])
    receiver.default_status = 503
    with world.session() as session:
        connection = session.get(LmsConnection, world.connection_id)
        for n in range(8):
            enroll(session, connection, "course-9", create_user(session, world.district_id, name=f"S{n}"))
        students = list(session.scalars(select(User.id).where(User.district_id == world.district_id)))
    for student in students:  # ten grades, ten events waiting for the endpoint
        assert world.post_grade({"assignmentID": "unplaced", "userID": student, "percentage": 0.5}).status_code == 202
    clock = ahead()
    sender = sender_for(world, clock)

    sender.run_until_idle()
    assert len(receiver.requests) == 1, "the first refusal pauses the endpoint: the other events wait, unspent"
    assert sorted(m.attempts for m in messages(world)) == [0] * 9 + [1]
    clock.advance(4)  # still within the first pause (2.5 to 5 s)
    sender.run_until_idle()
    assert len(receiver.requests) <= 2

    hours = 0
    while not hook(world, created)["failing"]:
        clock.advance(3600)
        hours += 1
        sender.run_until_idle()
        assert hours <= 26, "given up on within a little over a day"
    assert hours >= 24, "tried for at least a day"
    assert {m.status for m in messages(world)} == {"failed"}, "every event that waited a day is given up on together"
    assert len(receiver.requests) <= hours + 2, "about one request an hour, however many events wait"

    receiver.default_status = 204  # back: the next event goes out once the endpoint's pause ends
    post(world, assignment="unplaced")
    clock.advance(3600)
    sender.run_until_idle()
    assert (types(receiver), hook(world, created)["failing"]) == (["grade.unroutable"], False)


def test_after_a_rotation_both_secrets_sign_until_the_overlap_ends(world: World, receiver: WebhookReceiver) -> None:
    created = registered(world, receiver)
    rotated = world.http.post(world.url(f"/v1/webhooks/{created['id']}/rotate-secret"), headers=world.headers())
    receiver.secrets = [created["secret"], rotated.json()["secret"]]
    clock = ahead()
    sender = sender_for(world, clock)

    post(world, assignment="unplaced")
    sender.run_until_idle()
    clock.advance(world.app.config["PASSBACK"].webhook_secret_overlap_seconds + 1)
    post(world, assignment="unplaced", student=1)
    sender.run_until_idle()

    assert [r.verified_with for r in receiver.requests] == [[0, 1], [1]]
    assert [len(r.headers["webhook-signature"].split()) for r in receiver.requests] == [2, 1]


def test_a_disabled_endpoint_receives_nothing(world: World, receiver: WebhookReceiver) -> None:
    with WebhookReceiver() as other:
        created = registered(world, receiver)
        registered(world, other)
        post(world, assignment="unplaced")  # waits for both endpoints

        disabled = world.http.patch(
            world.url(f"/v1/webhooks/{created['id']}"), json={"disabled": True}, headers=world.headers()
        )
        assert disabled.status_code == 200, disabled.text
        post(world, assignment="unplaced", student=1)
        worker_for(world).run_until_idle()
        sender_for(world).run_until_idle()

        assert receiver.requests == [], "neither what waited for it nor what came after"
        assert types(other) == ["grade.unroutable", "grade.unroutable"]
        assert hook(world, created)["pending"] == 0
        assert other.problems == []


def test_the_address_rules_are_checked_again_at_each_send(world: World, receiver: WebhookReceiver) -> None:
    created = registered(world, receiver)
    world.app.config["PASSBACK"].webhook_allow_private_addresses = False  # as outside tests
    post(world, assignment="unplaced")

    sender_for(world).run_until_idle()

    assert receiver.requests == []
    [message] = messages(world)
    assert message.status == "retrying"
    assert message.last_error == "not sent, the URL's address is refused: it is a loopback, private or link-local " + (
        "address; webhooks go to public addresses"
    )
    assert hook(world, created)["lastError"] == message.last_error


def test_the_embedded_worker_sends_webhooks(world: World, receiver: WebhookReceiver) -> None:
    registered(world, receiver, ["grade.delivered"])
    start_embedded_worker(world.app)

    post(world)

    assert receiver.wait_for(1), "the embedded worker's webhook sender posted the event"
    assert types(receiver) == ["grade.delivered"]


def test_webhooks_can_go_out_from_a_process_of_their_own(
    world: World, receiver: WebhookReceiver, runner: CliRunner
) -> None:
    registered(world, receiver)
    post(world, assignment="unplaced")
    allow = {"GATEWAY_WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true"}

    delivery_only = runner.invoke(main, ["worker", "--once"], env={**allow, "GATEWAY_WEBHOOK_THREADS": "0"})
    assert delivery_only.exit_code == 0, delivery_only.output
    assert "webhook" not in delivery_only.output and receiver.requests == []

    webhooks_only = runner.invoke(main, ["worker", "--webhooks-only", "--once"], env=allow)
    assert webhooks_only.exit_code == 0, webhooks_only.output
    assert "1 webhook messages attempted" in webhooks_only.output
    assert types(receiver) == ["grade.unroutable"]


@pytest.mark.parametrize("settings_overrides", [HANGING], indirect=True)
def test_a_hanging_receiver_never_delays_lms_delivery(world: World, lms: ScriptedLms) -> None:
    with WebhookReceiver(hang_everything=True) as hanging:
        threads = world.app.config["PASSBACK"].webhook_threads
        for _ in range(threads + 1):  # more hanging endpoints than webhook threads: every one of them is held
            registered(world, hanging)
        start_embedded_worker(world.app)
        post(world, assignment="unplaced")  # an event for each endpoint at once
        assert hanging.wait_for(threads, timeout=20), "the webhook threads are all held by the receiver"

        grades = [post(world, assignment=a, student=s) for a in ("quiz-1", "quiz-2") for s in (0, 1)]

        assert lms.wait_for_score_writes(len(grades), timeout=20), "the LMS got every grade meanwhile"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(status(world, g) != "delivered" for g in grades):
            time.sleep(0.05)  # the embedded worker records them
        assert [status(world, g) for g in grades] == ["delivered"] * len(grades)
        assert len(hanging.requests) == threads, "the webhook side was still held the whole time"
        assert all(r.answered is None for r in hanging.requests)
        hanging.release_all()


# --- staff ----------------------------------------------------------------------------------------------------


def test_staff_see_a_failing_endpoint_and_disable_it_with_an_audited_form(
    world: World, receiver: WebhookReceiver, live_server: LiveServer, http: requests.Session
) -> None:
    created = registered(world, receiver, ["grade.unroutable", "grade.delivered"])
    receiver.default_status = 503
    post(world, assignment="unplaced")
    clock = ahead()
    sender = sender_for(world, clock)
    while hook(world, created)["failing"] is False:
        sender.run_until_idle()
        clock.advance(3 * 3600)
    email = staff_of(world)
    browser = signed_in(world, email)

    overview = browser.get(world.url("/dashboard/"))
    assert "1 webhook endpoint is failing" in overview.text
    app_page = browser.get(world.url(f"/dashboard/apps/{world.app_id}")).text
    assert f"/dashboard/webhooks?app={world.app_id}" in app_page
    page = browser.get(world.url("/dashboard/webhooks"), params={"app": world.app_id})
    assert page.status_code == 200
    row = page.text[page.text.index(f'id="w-{created["id"]}"') :]
    assert receiver.url in row and "grade.delivered, grade.unroutable" in row
    assert "failing" in row and "the endpoint answered HTTP 503" in row

    action = f"/dashboard/webhooks/{created['id']}/disable"
    assert browser.post(world.url(action), data={}, allow_redirects=False).status_code == 400, "CSRF token needed"
    disabled = browser.post(world.url(action), data={"csrf_token": csrf(page)}, allow_redirects=False)
    assert disabled.status_code == 302

    state = hook(world, created)
    assert (state["disabled"], state["disabledBy"]) == (True, "staff")
    audit = browser.get(world.url("/dashboard/audit")).text
    assert "disabled a webhook endpoint" in audit and receiver.url in audit and email in audit
    enable = world.http.patch(
        world.url(f"/v1/webhooks/{created['id']}"), json={"disabled": False}, headers=world.headers()
    )
    assert_error(enable, 409, "webhook_disabled_by_staff")
    before = len(receiver.requests)
    post(world, assignment="unplaced", student=1)
    sender.run_until_idle()
    assert len(receiver.requests) == before, "a disabled endpoint receives nothing"

    # Another district's staff cannot see or touch it.
    other = build_world(world.app, live_server.url, http, district_name="Other District")
    intruder = signed_in(other, staff_of(other, "intruder@other.example"))
    listing = intruder.get(world.url("/dashboard/webhooks"))
    assert receiver.url not in listing.text
    enable_url = world.url(f"/dashboard/webhooks/{created['id']}/enable")
    assert intruder.post(enable_url, data={"csrf_token": csrf(listing)}).status_code == 404
    assert hook(world, created)["disabled"] is True
