"""A stalled round (issue 18): a send that hangs past its batch-mates' leases costs them no attempt, and a
connection's new grades are claimed before its retries (docs/delivery.md, Attempts and Claim order).

The workers read a FrozenClock: a lease runs out when the test moves the clock past it, never by waiting."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from adapters.http import HttpClient
from gateway.clock import FrozenClock
from gateway.composition import services_of
from gateway.models import Delivery
from gateway.worker import DeliveryWorker
from tests.conftest import make_settings
from tests.factories import World
from tests.fakes.scripted_lms import Hang, ScriptedLms

LEASE_SECONDS = 30.0


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"lease_seconds": LEASE_SECONDS}


def post(world: World, student: str, percentage: float) -> str:
    response = world.post_grade({"assignmentID": "quiz-1", "userID": student, "percentage": percentage})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def deliveries(world: World) -> dict[str, Delivery]:
    """Every delivery, by grade id."""
    with world.session() as session:
        return {d.grade_id: d for d in session.scalars(select(Delivery))}


def test_batch_mates_whose_lease_ran_out_behind_a_hanging_send_spend_no_attempt(
    world: World, lms: ScriptedLms, database_url: str
) -> None:
    """Regression: one round claims two grades; the first send hangs past the second's lease, so the second
    is never sent. It used to be counted as an attempt all the same (attempts were counted at claim time)."""
    db, box = services_of(world.app).database, services_of(world.app).box
    ada, alan = world.students
    [hang] = lms.script(Hang())
    assert isinstance(hang, Hang)
    first = post(world, ada, 0.1)
    second = post(world, alan, 0.5)
    clock = FrozenClock()  # after the posts: their deliveries are due on this clock
    settings = make_settings(database_url, lease_seconds=LEASE_SECONDS)
    # A request outliving the lease (a stalled LMS; the deadline normally caps it at a third of the lease).
    slow = DeliveryWorker(db, box, settings, http=HttpClient(2, 5, deadline=30), clock=clock)
    claims = slow.claim()
    assert [c.delivery_id for c in claims] == [deliveries(world)[g].id for g in (first, second)]
    results: dict[str, str | None] = {}
    thread = threading.Thread(target=lambda: results.update(slow.deliver_claims(claims)), daemon=True)
    thread.start()
    assert hang.arrived.wait(5), "the first send reached the LMS and hangs there"
    in_flight = deliveries(world)
    assert (in_flight[first].status, in_flight[first].attempts) == ("delivering", 1), "its request went out"
    assert (in_flight[second].status, in_flight[second].attempts) == ("delivering", 0), "claimed, not sent"
    lease_end = in_flight[second].lease_expires_at
    assert lease_end is not None
    clock.advance((lease_end - clock.now()).total_seconds() + 1)  # the second's lease runs out meanwhile

    hang.release()
    thread.join(10)
    assert not thread.is_alive()
    assert results[in_flight[second].id] is None, "the second claim was lost before its send"
    after = deliveries(world)
    assert after[first].attempts == 1
    assert (after[second].status, after[second].attempts) == ("delivering", 0), "not sent: not an attempt"
    assert lms.writes_for(alan, "quiz-1") == 0

    # Taken again and delivered: one attempt, the one that was sent.
    assert slow.run_until_idle() == 1
    delivered = deliveries(world)[second]
    assert (delivered.status, delivered.attempts) == ("delivered", 1)
    assert lms.writes_for(alan, "quiz-1") == 1


def test_a_connections_new_grades_are_claimed_before_its_retries(world: World, database_url: str) -> None:
    """Regression: claims were taken in due order, so retries (due earliest) went first in every round and a
    timing-out LMS held the round's new grades behind a full timeout per retry."""
    db, box = services_of(world.app).database, services_of(world.app).box
    ada, alan = world.students
    retried = post(world, ada, 0.3)
    fresh = post(world, alan, 0.7)
    clock = FrozenClock()
    with world.session() as session:
        # Ada's grade failed once a minute ago and is due again: it has waited longest.
        session.execute(
            update(Delivery)
            .where(Delivery.grade_id == retried)
            .values(status="retrying", attempts=1, next_attempt_at=clock.now() - timedelta(seconds=60))
        )
        session.commit()
    worker = DeliveryWorker(db, box, make_settings(database_url), clock=clock)
    [first_claim] = worker.claim(limit=1)
    assert first_claim.delivery_id == deliveries(world)[fresh].id
    [second_claim] = worker.claim(limit=1)
    assert second_claim.delivery_id == deliveries(world)[retried].id
