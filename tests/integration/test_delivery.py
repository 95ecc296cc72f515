"""Delivery semantics end to end (README "Delivery"): retries, Retry-After, permanent failures, supersession and
order, concurrent workers, routing and paused connections.

Every LMS here is a real HTTP server on 127.0.0.1: the sandbox LMS served by the live app, or the scripted fake
(tests/fakes/scripted_lms.py) that the world's sandbox connection is pointed at.
"""

from __future__ import annotations

import contextlib
import email.utils
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, select

from adapters.http import HttpClient
from gateway.clock import SYSTEM_CLOCK, Clock, FrozenClock
from gateway.composition import services_of
from gateway.models import Delivery, DeliveryStatus, GradeRevision, LmsConnection, utcnow
from gateway.services.directory import create_user, enroll, get_user
from gateway.services.errors import Conflict
from gateway.services.lms import add_placement
from gateway.services.routing import route_waiting_grades
from gateway.services.staff_retries import retry_delivery
from gateway.worker import DeliveryWorker
from tests.conftest import make_settings
from tests.factories import COURSE, World
from tests.fakes.scripted_lms import Close, Hang, Respond, ScriptedLms, Step, unused_port

# --- helpers -----------------------------------------------------------------------------------------------


def point_connection_at(world: World, base_url: str) -> None:
    """Re-point the world's sandbox connection (same secret, same placements and enrollments) at another LMS."""
    box = services_of(world.app).box
    with world.session() as session:
        connection = session.get(LmsConnection, world.connection_id)
        assert connection is not None
        connection.settings_encrypted = box.encrypt_json({"base_url": base_url, "secret": world.sandbox_secret})


@pytest.fixture
def lms(world: World) -> Iterator[ScriptedLms]:
    with ScriptedLms(world.sandbox_secret) as fake:
        point_connection_at(world, fake.base_url)
        yield fake
        assert fake.problems == [], "the gateway broke the LMS protocol"


def make_worker(
    world: World, database_url: str, *, http: HttpClient | None = None, clock: Clock | None = None, **settings: Any
) -> DeliveryWorker:
    return DeliveryWorker(
        services_of(world.app).database,
        services_of(world.app).box,
        make_settings(database_url, **settings),
        http=http,
        clock=clock or SYSTEM_CLOCK,
    )


def worker_an_hour_later(world: World, database_url: str) -> DeliveryWorker:
    """A worker whose clock has moved an hour on: past every retry time (at most 0.1 s here) and lease (30 s)
    the test has scheduled so far, without waiting for them."""
    clock = FrozenClock()
    clock.advance(3600)
    return make_worker(world, database_url, clock=clock)


def post(world: World, percentage: float = 0.8, *, assignment: str = "quiz-1", student: str | None = None) -> str:
    response = world.post_grade(
        {"assignmentID": assignment, "userID": student or world.students[0], "percentage": percentage}
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def view(world: World, grade_id: str) -> dict[str, Any]:
    response = world.get(f"/v1/grades/{grade_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def only_delivery(world: World, grade_id: str) -> dict[str, Any]:
    deliveries = view(world, grade_id)["deliveries"]
    assert len(deliveries) == 1, deliveries
    return dict(deliveries[0])


def rows(world: World, grade_id: str) -> list[tuple[int, Delivery]]:
    """Every delivery row of the grade (superseded ones too), with the revision number it carries."""
    with world.session() as session:
        return [
            (revision, delivery)
            for delivery, revision in session.execute(
                select(Delivery, GradeRevision.revision)
                .join(GradeRevision, GradeRevision.id == Delivery.revision_id)
                .where(Delivery.grade_id == grade_id)
                .order_by(GradeRevision.revision, Delivery.created_at)
            )
        ]


def row_status(world: World, grade_id: str) -> dict[int, str]:
    return {revision: str(d.status) for revision, d in rows(world, grade_id)}


def new_student(world: World, name: str) -> str:
    """Another student enrolled in the world's course (one per table case, so cases do not share a grade)."""
    with world.session() as session:
        user = create_user(session, world.district_id, name=name)
        enroll(session, session.get(LmsConnection, world.connection_id), COURSE, user)
        return user.id


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).replace(tzinfo=None)


def drive(worker: DeliveryWorker, done: Callable[[], bool], timeout: float = 10.0) -> None:
    """Run the worker (as its loop would) until `done()` or the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        worker.run_once()
        if done():
            return
        time.sleep(0.005)
    raise AssertionError("deadline passed before the deliveries settled")


def delivered(world: World, grade_id: str) -> Callable[[], bool]:
    return lambda: only_delivery(world, grade_id)["status"] == "delivered"


def in_thread(fn: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Call fn in another thread; fail if it blocks (e.g. on a lock held during an LMS call)."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # reraised below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"{fn} blocked for {timeout} s"
    if errors:
        raise errors[0]
    return result[0]


SETTLED = {DeliveryStatus.DELIVERED, DeliveryStatus.SUPERSEDED, DeliveryStatus.FAILED}


# --- retries against the sandbox LMS ---------------------------------------------------------------------


def test_the_workers_clock_stamps_its_leases_retry_times_and_outcomes(world: World, database_url: str) -> None:
    """A worker's time is its clock's, not the system's: a retry comes due when the clock reaches it."""
    world.inject_faults(1, 503)
    grade_id = post(world, 0.8)
    clock = FrozenClock()
    clock.advance(3600)
    start = clock.now()
    worker = make_worker(world, database_url, clock=clock)

    [claim] = worker.claim()
    [(_, claimed)] = rows(world, grade_id)
    assert (claimed.updated_at, claimed.lease_expires_at) == (start, start + timedelta(seconds=30))
    assert worker.deliver_claimed(claim) == "retrying"
    [(_, retrying)] = rows(world, grade_id)
    assert retrying.updated_at == start and retrying.next_attempt_at is not None
    # The test backoff: 0.02 s for a first failure, half of it at least.
    assert start + timedelta(seconds=0.01) <= retrying.next_attempt_at <= start + timedelta(seconds=0.02)
    assert worker.run_once() == 0, "not due before the clock reaches the retry time"

    clock.advance(0.02)
    assert worker.run_once() == 1
    [(_, delivered)] = rows(world, grade_id)
    assert (delivered.status, delivered.delivered_at) == ("delivered", start + timedelta(seconds=0.02))


def test_no_grade_is_lost_when_the_lms_fails_ten_times_in_a_row(world: World, worker: DeliveryWorker) -> None:
    world.inject_faults(10, 503)
    grade_id = post(world, 0.8)

    snapshots: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        worker.run_once()
        delivery = only_delivery(world, grade_id)
        if delivery["status"] == "delivered":
            break
        assert delivery["status"] == "retrying", delivery
        snapshots.setdefault(delivery["attempts"], delivery)
        time.sleep(0.005)

    delivery = only_delivery(world, grade_id)
    assert delivery["status"] == "delivered"
    assert delivery["attempts"] == 11
    assert delivery["lmsStatus"] == 200
    assert delivery["lastError"] is None
    assert sorted(snapshots) == list(range(1, 11))
    for attempt, snapshot in snapshots.items():
        assert snapshot["lastError"] is not None
        assert "sandbox LMS is unavailable (injected fault, HTTP 503)" in snapshot["lastError"]
        assert snapshot["lmsStatus"] == 503
        assert snapshot["nextAttemptAt"] is not None
        # Exponential backoff with equal jitter: base 0.02 s doubling, capped at 0.1 s (conftest settings).
        backoff = min(0.1, 0.02 * 2 ** (attempt - 1))
        delay = (parse_time(snapshot["nextAttemptAt"]) - parse_time(snapshot["updatedAt"])).total_seconds()
        assert backoff / 2 - 1e-5 <= delay <= backoff + 1e-5, (attempt, delay)
    [entry] = world.gradebook()
    assert (entry["scoreGiven"], entry["scoreMaximum"], entry["writes"]) == (8.0, 10.0, 1)


def test_attempts_run_out_then_a_retry_delivers(world: World, database_url: str) -> None:
    worker = make_worker(world, database_url, max_attempts=3)
    world.inject_faults(10, 503)
    grade_id = post(world, 0.7)

    drive(worker, lambda: only_delivery(world, grade_id)["status"] == "failed")

    grade = view(world, grade_id)
    assert grade["status"] == "failed"
    # The grade itself is kept, with its normalized form, and listed among the failed ones.
    assert grade["percentage"] == 0.7
    assert grade["normalized"] == {"fraction": 0.7, "scoreGiven": 7.0, "scoreMaximum": 10.0}
    [delivery] = grade["deliveries"]
    assert delivery["attempts"] == 3
    assert delivery["lastError"].startswith("gave up after 3 attempts: ")
    assert "injected fault, HTTP 503" in delivery["lastError"]
    assert delivery["nextAttemptAt"] is None
    assert worker.run_once() == 0, "a failed delivery is not retried on its own"
    listed = world.get("/v1/grades", params={"status": "failed"}).json()["grades"]
    assert [g["id"] for g in listed] == [grade_id]
    assert world.gradebook() == []

    world.inject_faults(0)  # the LMS is fixed
    with world.session() as session:
        retry_delivery(session, world.district_id, delivery["id"])
    assert only_delivery(world, grade_id)["status"] == "pending"
    assert worker.run_until_idle() == 1

    delivery = only_delivery(world, grade_id)
    assert (delivery["status"], delivery["attempts"]) == ("delivered", 1)
    assert [(e["scoreGiven"], e["writes"]) for e in world.gradebook()] == [(7.0, 1)]


def test_retry_after_from_the_lms_is_honoured(world: World, worker: DeliveryWorker) -> None:
    world.inject_faults(1, 429, retry_after=30)
    grade_id = post(world, 0.8)
    before = utcnow()
    assert worker.run_once() == 1
    after = utcnow()

    delivery = only_delivery(world, grade_id)
    assert delivery["status"] == "retrying"
    assert delivery["lmsStatus"] == 429
    next_attempt = parse_time(delivery["nextAttemptAt"])
    # Not the 0.01-0.02 s backoff of attempt 1: the LMS asked for 30 s.
    assert before + timedelta(seconds=30) <= next_attempt <= after + timedelta(seconds=30.5)
    assert worker.run_once() == 0
    assert only_delivery(world, grade_id)["status"] == "retrying"
    assert world.gradebook() == []


def _http_date(seconds_ahead: float) -> str:
    return email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=seconds_ahead), usegmt=True)


RETRY_AFTER_CASES = [
    # (case, Retry-After value, backoff base, expected wait range in seconds, counted from the answer)
    ("seconds", lambda: "120", 0.02, 120, 120),
    ("http-date", lambda: _http_date(45), 0.02, 43, 46),
    ("capped-at-a-day", lambda: "10000000", 0.02, 86400, 86400),
    # The backoff is longer than Retry-After: Retry-After is a floor, not a replacement.
    ("backoff-longer", lambda: "1", 100.0, 50, 100),
]


def test_retry_after_forms_and_bounds(world: World, lms: ScriptedLms, database_url: str) -> None:
    for case, retry_after, backoff_base, low, high in RETRY_AFTER_CASES:
        worker = make_worker(world, database_url, backoff_base_seconds=backoff_base, backoff_max_seconds=3600)
        lms.script(Respond(503, headers={"Retry-After": retry_after()}, message="maintenance"))
        grade_id = post(world, student=new_student(world, case))
        before = utcnow()
        assert worker.run_once() == 1, case
        after = utcnow()
        delivery = only_delivery(world, grade_id)
        assert delivery["status"] == "retrying", case
        # The answer came somewhere between `before` and `after`: bound the wait from both ends, so a slow
        # machine cannot make the check fail.
        next_attempt = parse_time(delivery["nextAttemptAt"])
        assert (next_attempt - before).total_seconds() >= low, (case, next_attempt, before)
        assert (next_attempt - after).total_seconds() <= high, (case, next_attempt, after)


def test_garbage_retry_after_keeps_the_lms_answer(world: World, lms: ScriptedLms, worker: DeliveryWorker) -> None:
    """A malformed Retry-After must not turn the LMS's answer into an 'internal error in adapter'."""
    # '²' is a Latin-1 character, so it travels in an HTTP header as the single byte 0xB2; str.isdigit accepts it.
    lms.script(Respond(503, headers={"Retry-After": "\u00b2"}, message="overloaded"))
    grade_id = post(world)
    worker.run_once()
    delivery = only_delivery(world, grade_id)
    assert delivery["status"] == "retrying"
    assert delivery["lmsStatus"] == 503
    assert "overloaded" in delivery["lastError"]
    assert "internal error" not in delivery["lastError"]


# --- classification of LMS answers -----------------------------------------------------------------------


PERMANENT_CASES = [
    # (case, what the LMS answers, lmsStatus, text the delivery's lastError must carry)
    (
        "400",
        Respond(400, body={"error": "scoreMaximum must equal the item's points (25)"}),
        400,
        "scoreMaximum must equal the item's points (25)",
    ),
    (
        "403",
        Respond(403, body={"error": "this integration may not write grades here"}),
        403,
        "this integration may not write grades here",
    ),
    ("404", Respond(404, body={"error": "no item quiz-1 in course-101"}), 404, "no item quiz-1 in course-101"),
    # The sandbox's secret is shared: a 401 means it is wrong, and no retry fixes that (docs/adapters.md).
    ("401", Respond(401, body={"error": "bad bearer secret"}), 401, "bad bearer secret"),
    (
        "409",
        Respond(409, body={"error": "the gradebook is locked for the term"}),
        409,
        "the gradebook is locked for the term",
    ),
    ("422", Respond(422, body={"error": "student is not in this section"}), 422, "student is not in this section"),
    ("410-text", Respond(410, raw_body=b"course archived"), 410, "course archived"),
    # A redirect is not followed (the grade would be re-sent somewhere unchecked): the URL needs fixing.
    (
        "301",
        Respond(301, headers={"Location": "https://lms.example/new-api/scores"}),
        301,
        "https://lms.example/new-api/scores",
    ),
    # 2xx without the stored entry is not taken as delivered.
    ("200-no-entry", Respond(200, body={"ok": True}), 200, "without a stored entry"),
]


def test_permanent_refusals_fail_at_once_with_the_lms_text(
    world: World, lms: ScriptedLms, worker: DeliveryWorker, database_url: str
) -> None:
    for case, answer, lms_status, text in PERMANENT_CASES:
        lms.script(answer)
        grade_id = post(world, student=new_student(world, case))
        writes_before = len(lms.score_writes())
        assert worker.run_once() == 1, case

        delivery = only_delivery(world, grade_id)
        assert (delivery["status"], delivery["attempts"], delivery["lmsStatus"]) == ("failed", 1, lms_status), case
        assert text in delivery["lastError"], (case, delivery["lastError"])
        assert not delivery["lastError"].startswith("gave up"), case
        assert delivery["nextAttemptAt"] is None, case
        assert view(world, grade_id)["status"] == "failed", case
        assert len(lms.score_writes()) == writes_before + 1, case
    # Failed for good: past every backoff, still nothing is attempted again, and nothing was stored.
    assert worker_an_hour_later(world, database_url).run_once() == 0
    assert len(lms.score_writes()) == len(PERMANENT_CASES)
    assert lms.gradebook == {}


def test_a_wrong_sandbox_secret_fails_after_one_attempt(world: World, worker: DeliveryWorker) -> None:
    # Regression: the sandbox's 401 was retryable, so a wrong secret was sent again until attempts ran out.
    with ScriptedLms("not-" + world.sandbox_secret) as strict:
        point_connection_at(world, strict.base_url)
        grade_id = post(world)
        assert worker.run_once() == 1
        delivery = only_delivery(world, grade_id)
        assert (delivery["status"], delivery["attempts"], delivery["lmsStatus"]) == ("failed", 1, 401)
        assert delivery["nextAttemptAt"] is None
        assert "bad or missing bearer secret" in delivery["lastError"]
        assert worker.run_once() == 0
        assert len(strict.score_writes()) == 1
        assert strict.gradebook == {}


RETRYABLE_CASES: list[tuple[str, Callable[[], Step], str, int | None]] = [
    # (case, what the LMS does, text the delivery's lastError must carry, lmsStatus); the behaviour is built fresh
    # for each use because a Hang, once released, stays released.
    ("408", lambda: Respond(408, message="request timeout"), "request timeout", 408),
    ("425", lambda: Respond(425, message="too early"), "too early", 425),
    ("429", lambda: Respond(429, message="slow down"), "slow down", 429),
    ("500", lambda: Respond(500, message="boom"), "boom", 500),
    ("502", lambda: Respond(502, message="bad gateway"), "bad gateway", 502),
    ("503", lambda: Respond(503, message="maintenance"), "maintenance", 503),
    ("504", lambda: Respond(504, message="upstream slow"), "upstream slow", 504),
    ("503-html", lambda: Respond(503, raw_body=b"<html>Service Unavailable</html>"), "Service Unavailable", 503),
    ("connection-closed", lambda: Close(), "could not connect", None),
    ("connection-reset", lambda: Close(reset=True), "could not connect", None),
    ("read-timeout", lambda: Hang(then=Close()), "timed out", None),
]


def test_transient_failures_retry_then_deliver(world: World, lms: ScriptedLms, database_url: str) -> None:
    worker = make_worker(world, database_url, http=HttpClient(1.0, 0.3))
    for case, behaviour, error_text, lms_status in RETRYABLE_CASES:
        lms.script(behaviour())
        student = new_student(world, case)
        grade_id = post(world, 0.9, student=student)
        assert worker.run_once() == 1, case

        delivery = only_delivery(world, grade_id)
        assert (delivery["status"], delivery["attempts"], delivery["lmsStatus"]) == ("retrying", 1, lms_status), case
        assert error_text in delivery["lastError"], (case, delivery["lastError"])
        assert delivery["nextAttemptAt"] is not None, case
        assert all(key[2] != student for key in lms.gradebook), case

        lms.release_all()
        drive(worker, delivered(world, grade_id))
        assert only_delivery(world, grade_id)["attempts"] == 2, case
        [entry] = [e for key, e in lms.gradebook.items() if key[2] == student]
        assert (entry.score_given, entry.writes) == (9.0, 1), case


def test_connection_refused_retries_then_delivers(world: World, lms: ScriptedLms, worker: DeliveryWorker) -> None:
    port = unused_port()
    point_connection_at(world, f"http://127.0.0.1:{port}/lms")
    grade_id = post(world)
    worker.run_once()
    delivery = only_delivery(world, grade_id)
    assert delivery["status"] == "retrying"
    assert f"could not connect to 127.0.0.1:{port}" in delivery["lastError"]
    assert delivery["lmsStatus"] is None

    point_connection_at(world, lms.base_url)
    drive(worker, delivered(world, grade_id))
    assert [s.score_given for s in lms.gradebook.values()] == [8.0]


def test_the_gateway_speaks_the_sandbox_protocol(world: World, lms: ScriptedLms, worker: DeliveryWorker) -> None:
    response = world.post_grade(
        {
            "assignmentID": "quiz-1",
            "userID": world.students[1],
            "scoreGiven": 7,
            "scoreMaximum": 10,
            "comment": "well done",
            "timestamp": "2024-03-01T10:00:00+01:00",
        }
    )
    assert response.status_code == 202, response.text
    worker.run_until_idle()
    [request] = lms.score_writes()
    assert request.path == f"/lms/courses/{COURSE}/items/quiz-1/scores/{world.students[1]}"
    assert request.headers["Authorization"] == f"Bearer {world.sandbox_secret}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.json == {
        "scoreGiven": 7.0,
        "scoreMaximum": 10.0,
        "comment": "well done",
        "timestamp": "2024-03-01T09:00:00Z",
        "activityProgress": "Completed",
        "gradingProgress": "FullyGraded",
    }
    assert request.outcome == "stored"


# --- supersession and order --------------------------------------------------------------------------------


def test_newer_grade_supersedes_a_pending_one(world: World, worker: DeliveryWorker) -> None:
    grade_id = post(world, 0.5)
    assert post(world, 0.9) == grade_id

    [(rev1, older), (rev2, newer)] = rows(world, grade_id)
    assert (rev1, older.status, older.next_attempt_at) == (1, "superseded", None)
    assert (rev2, newer.status) == (2, "pending")
    assert older.superseded_by is not None
    assert [d["status"] for d in view(world, grade_id)["deliveries"]] == ["pending"]

    assert worker.run_until_idle() == 1
    [entry] = world.gradebook()
    assert (entry["scoreGiven"], entry["writes"]) == (9.0, 1)
    assert row_status(world, grade_id) == {1: "superseded", 2: "delivered"}


def test_newer_grade_supersedes_a_retrying_one(world: World, worker: DeliveryWorker, database_url: str) -> None:
    world.inject_faults(1, 503)
    grade_id = post(world, 0.5)
    worker.run_once()
    assert only_delivery(world, grade_id)["status"] == "retrying"

    post(world, 0.9)
    assert row_status(world, grade_id) == {1: "superseded", 2: "pending"}
    # Past the superseded row's retry time: only the newer grade goes.
    worker_an_hour_later(world, database_url).run_until_idle()
    [entry] = world.gradebook()
    assert (entry["scoreGiven"], entry["writes"]) == (9.0, 1)


def test_newer_grade_waits_while_the_older_is_in_flight(
    world: World, lms: ScriptedLms, worker: DeliveryWorker, database_url: str
) -> None:
    [hang] = lms.script(Hang())
    grade_id = post(world, 0.5)
    first = threading.Thread(target=worker.run_once, daemon=True)
    first.start()
    assert isinstance(hang, Hang) and hang.arrived.wait(5)

    post(world, 0.9)
    # In flight: not superseded, it finishes on its own.
    assert row_status(world, grade_id) == {1: "delivering", 2: "pending"}
    other = make_worker(world, database_url)
    # A second worker looking now (and not blocked by any lock held across the LMS call) must not take it.
    assert in_thread(other.claim) == []
    assert row_status(world, grade_id) == {1: "delivering", 2: "pending"}

    hang.release()
    first.join(5)
    assert row_status(world, grade_id) == {1: "delivered", 2: "pending"}
    assert other.run_until_idle() == 1
    assert row_status(world, grade_id) == {1: "delivered", 2: "delivered"}
    assert [w[3] for w in lms.write_log] == [5.0, 9.0]
    assert [s.score_given for s in lms.gradebook.values()] == [9.0]


def _older_in_flight_then_refused(world: World, lms: ScriptedLms, worker: DeliveryWorker, answer: Respond) -> str:
    """Revision 1 is in flight when revision 2 arrives; then the LMS refuses revision 1 with `answer`."""
    [hang] = lms.script(Hang(then=answer))
    grade_id = post(world, 0.5)
    first = threading.Thread(target=worker.run_once, daemon=True)
    first.start()
    assert isinstance(hang, Hang) and hang.arrived.wait(5)
    post(world, 0.9)
    hang.release()
    first.join(5)
    assert not first.is_alive()
    return grade_id


def test_failed_attempt_of_an_older_revision_never_lands_after_the_newer(
    world: World, lms: ScriptedLms, worker: DeliveryWorker
) -> None:
    grade_id = _older_in_flight_then_refused(world, lms, worker, Respond(503, message="busy"))

    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and set(row_status(world, grade_id).values()) - SETTLED:
        worker.run_once()
        time.sleep(0.01)

    assert [s.score_given for s in lms.gradebook.values()] == [9.0], f"LMS writes in order: {lms.write_log}"
    assert row_status(world, grade_id) == {1: "superseded", 2: "delivered"}


def test_retrying_a_failed_older_revision_does_not_resend_the_old_score(
    world: World, lms: ScriptedLms, worker: DeliveryWorker, database_url: str
) -> None:
    grade_id = _older_in_flight_then_refused(world, lms, worker, Respond(422, message="item closed"))
    worker.run_until_idle()
    assert [w[3] for w in lms.write_log] == [9.0]
    [(_, older), _] = rows(world, grade_id)

    with world.session() as session, contextlib.suppress(Conflict):  # refusing is one correct answer
        retry_delivery(session, world.district_id, older.id)
    worker_an_hour_later(world, database_url).run_until_idle()
    assert [s.score_given for s in lms.gradebook.values()] == [9.0], f"LMS writes in order: {lms.write_log}"


def test_claim_racing_a_newer_grade_keeps_the_order(
    world: World, lms: ScriptedLms, worker: DeliveryWorker, database_url: str, request: pytest.FixtureRequest
) -> None:
    """A worker claims revision 1 after the POST of revision 2 has read it as pending, just before the POST writes
    it superseded.

    The claim runs from a hook on the engine, right before the POST's UPDATE of the deliveries table that marks
    rows superseded, so the interleaving is deterministic whatever form that UPDATE takes.
    """
    grade_id = post(world, 0.5)
    claims: list[Any] = []
    racer: list[threading.Thread] = []

    def claim_before_supersede(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        writes_superseded = statement.lstrip().upper().startswith("UPDATE DELIVERIES") and "superseded" in str(
            parameters
        )
        if racer or not writes_superseded:
            return
        thread = threading.Thread(target=lambda: claims.extend(worker.claim()), daemon=True)
        racer.append(thread)
        thread.start()
        # On PostgreSQL the claim commits at once unless the POST holds a lock on the row; on SQLite the POST
        # holds the write lock, so the claim waits for the POST to commit.
        thread.join(0.5)

    engine = services_of(world.app).database.engine
    event.listen(engine, "before_cursor_execute", claim_before_supersede)
    try:
        post(world, 0.9)
    finally:
        event.remove(engine, "before_cursor_execute", claim_before_supersede)
    assert racer, "the POST never superseded the older delivery"
    racer[0].join(10)

    # A second worker, then the racing worker finishes what it claimed, then everything due.
    statuses_after_post = row_status(world, grade_id)
    other = make_worker(world, database_url)
    claimed_by_other = other.claim()
    for claim in claimed_by_other:
        other.deliver_claimed(claim)
    for claim in claims:
        worker.deliver_claimed(claim)
    worker_an_hour_later(world, database_url).run_until_idle()

    assert [s.score_given for s in lms.gradebook.values()] == [9.0], (
        f"LMS writes in order: {lms.write_log}; racing claim: {len(claims)} row(s); rows after the POST: "
        f"{statuses_after_post}; claimed by a second worker meanwhile: {len(claimed_by_other)} row(s)"
    )
    assert row_status(world, grade_id)[2] == "delivered"


# --- many workers ----------------------------------------------------------------------------------------


def _twenty_due_grades(world: World) -> list[str]:
    with world.session() as session:
        connection = session.get(LmsConnection, world.connection_id)
        students = list(world.students)
        for i in range(8):
            user = create_user(session, world.district_id, name=f"Student {i}")
            enroll(session, connection, COURSE, user)
            students.append(user.id)
    grade_ids = [
        post(world, 0.1 * (i % 10), assignment=a, student=s)
        for i, s in enumerate(students)
        for a in ("quiz-1", "quiz-2")
    ]
    assert len(grade_ids) == 20
    return grade_ids


def test_two_workers_deliver_each_grade_exactly_once(world: World, database_url: str) -> None:
    with ScriptedLms(world.sandbox_secret, write_delay=0.01) as lms:
        point_connection_at(world, lms.base_url)
        grade_ids = _twenty_due_grades(world)
        workers = [make_worker(world, database_url) for _ in range(2)]
        start = threading.Barrier(2)
        errors: list[BaseException] = []

        def loop(worker: DeliveryWorker) -> None:
            try:
                start.wait(5)
                while worker.run_once(limit=2):
                    pass
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=loop, args=(w,), daemon=True) for w in workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert errors == []
        assert lms.problems == []

        for grade_id in grade_ids:
            [delivery] = view(world, grade_id)["deliveries"]
            assert (delivery["status"], delivery["attempts"]) == ("delivered", 1)
        assert len(lms.score_writes()) == 20
        assert len(lms.gradebook) == 20
        assert all(entry.writes == 1 for entry in lms.gradebook.values())


def test_concurrent_claims_never_share_a_row(world: World, lms: ScriptedLms, database_url: str) -> None:
    _twenty_due_grades(world)
    workers = [make_worker(world, database_url) for _ in range(4)]
    start = threading.Barrier(len(workers))
    results: list[list[str]] = [[] for _ in workers]
    errors: list[BaseException] = []

    def claim(index: int) -> None:
        try:
            start.wait(5)
            results[index] = [c.delivery_id for c in workers[index].claim(limit=20)]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claim, args=(i,), daemon=True) for i in range(len(workers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    claimed = [d for r in results for d in r]
    assert len(claimed) == 20
    assert len(set(claimed)) == 20, "a delivery was claimed by two workers"
    with world.session() as session:
        statuses = session.scalars(select(Delivery.status)).all()
    assert sorted(statuses) == ["delivering"] * 20


# --- routing ---------------------------------------------------------------------------------------------


def test_unplaced_assignment_is_unroutable_until_placed(world: World, worker: DeliveryWorker) -> None:
    grade_id = post(world, 0.6, assignment="unplaced")
    [(_, placeholder)] = rows(world, grade_id)
    assert (placeholder.status, placeholder.placement_id) == ("unroutable", None)
    assert placeholder.last_error == "the assignment is not placed in any LMS course of this district yet"
    assert worker.run_once() == 0

    with world.session() as session:
        add_placement(session, world.district_id, world.connection_id, world.app_id, "unplaced", COURSE)
    assert sorted(str(d.status) for _, d in rows(world, grade_id)) == ["pending", "superseded"]
    assert worker.run_until_idle() == 1

    assert view(world, grade_id)["status"] == "delivered"
    assert [d["status"] for d in view(world, grade_id)["deliveries"]] == ["delivered"]
    [entry] = world.gradebook()
    assert (entry["itemID"], entry["studentID"], entry["scoreGiven"]) == ("unplaced", world.students[0], 60.0)


def test_student_not_enrolled_is_unroutable_until_enrolled(world: World, worker: DeliveryWorker) -> None:
    with world.session() as session:
        newcomer = create_user(session, world.district_id, name="Grace").id
    grade_id = post(world, 0.4, student=newcomer)
    [(_, placeholder)] = rows(world, grade_id)
    assert placeholder.status == "unroutable"
    assert placeholder.last_error == "the student is not enrolled in any LMS course where this assignment is placed"
    assert worker.run_once() == 0

    with world.session() as session:
        connection = session.get(LmsConnection, world.connection_id)
        user = get_user(session, world.district_id, newcomer)
        assert connection is not None and user is not None
        enroll(session, connection, COURSE, user)
        assert route_waiting_grades(session, world.district_id, user_id=newcomer) == 1
    assert worker.run_until_idle() == 1

    assert view(world, grade_id)["status"] == "delivered"
    assert [(e["studentID"], e["scoreGiven"]) for e in world.gradebook()] == [(newcomer, 4.0)]


def test_unroutable_grade_shows_the_reason_in_its_status(world: World) -> None:
    grade_id = post(world, 0.6, assignment="unplaced")
    grade = view(world, grade_id)
    assert grade["status"] == "unroutable"
    [delivery] = grade["deliveries"]
    assert delivery["status"] == "unroutable"
    assert delivery["lastError"] == "the assignment is not placed in any LMS course of this district yet"
    assert delivery["placement"] is None
    listed = world.get("/v1/grades", params={"status": "unroutable"}).json()["grades"]
    assert [(g["id"], g["status"]) for g in listed] == [(grade_id, "unroutable")]


# --- paused connections ----------------------------------------------------------------------------------


def _set_paused(world: World, paused: bool) -> None:
    with world.session() as session:
        connection = session.get(LmsConnection, world.connection_id)
        assert connection is not None
        connection.paused = paused


def test_paused_connection_holds_deliveries_until_unpaused(
    world: World, worker: DeliveryWorker, database_url: str
) -> None:
    _set_paused(world, True)
    grade_id = post(world, 0.8)
    assert worker.run_once() == 0
    assert worker_an_hour_later(world, database_url).run_once() == 0
    assert only_delivery(world, grade_id)["status"] == "pending"
    assert world.gradebook() == []

    _set_paused(world, False)
    assert worker.run_until_idle() == 1
    assert only_delivery(world, grade_id)["status"] == "delivered"
    assert [e["scoreGiven"] for e in world.gradebook()] == [8.0]


def test_paused_connection_holds_retries_too(world: World, worker: DeliveryWorker, database_url: str) -> None:
    world.inject_faults(1, 503)
    grade_id = post(world, 0.8)
    worker.run_once()
    assert only_delivery(world, grade_id)["status"] == "retrying"
    _set_paused(world, True)
    later = worker_an_hour_later(world, database_url)  # past the retry time
    assert later.run_once() == 0
    _set_paused(world, False)
    assert later.run_until_idle() == 1
    assert only_delivery(world, grade_id)["status"] == "delivered"
