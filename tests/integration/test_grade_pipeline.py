"""A grade posted over HTTP is stored, answered 202 at once, and delivered to the sandbox LMS after."""

from __future__ import annotations

import time

from gateway import start_embedded_worker
from gateway.worker import DeliveryWorker
from tests.factories import World


def test_percentage_grade_is_accepted_then_delivered(world: World, worker: DeliveryWorker) -> None:
    response = world.post_grade({"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.8})

    assert response.status_code == 202, response.text
    body = response.json()
    assert body["normalized"] == {"fraction": 0.8, "scoreGiven": 8.0, "scoreMaximum": 10.0}
    assert body["status"] == "pending"
    assert response.headers["Location"] == f"/v1/grades/{body['id']}"
    # Delivery happens after the response, never inside the request.
    assert world.gradebook() == []

    assert worker.run_until_idle() == 1

    status = world.get(response.headers["Location"]).json()
    assert status["status"] == "delivered"
    [delivery] = status["deliveries"]
    assert delivery["status"] == "delivered"
    assert delivery["attempts"] == 1
    assert delivery["lmsStatus"] == 200
    [entry] = world.gradebook()
    assert (entry["studentID"], entry["itemID"], entry["courseID"]) == (world.students[0], "quiz-1", "course-101")
    assert (entry["scoreGiven"], entry["scoreMaximum"]) == (8.0, 10.0)


def test_score_pair_is_kept_as_given(world: World, worker: DeliveryWorker) -> None:
    response = world.post_grade(
        {
            "assignmentID": "quiz-2",
            "userID": world.students[1],
            "scoreGiven": 12,
            "scoreMaximum": 10,
            "comment": "extra credit",
            "context": {"attempt": 2},
        }
    )
    assert response.status_code == 202, response.text
    assert response.json()["normalized"] == {"fraction": 1.2, "scoreGiven": 12.0, "scoreMaximum": 10.0}
    worker.run_until_idle()
    [entry] = world.gradebook()
    assert (entry["scoreGiven"], entry["scoreMaximum"], entry["comment"]) == (12.0, 10.0, "extra credit")


def test_embedded_worker_thread_delivers_without_help(world: World) -> None:
    start_embedded_worker(world.app)
    response = world.post_grade({"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.5})
    assert response.status_code == 202
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if world.get(response.headers["Location"]).json()["status"] == "delivered":
            break
        time.sleep(0.05)
    assert world.get(response.headers["Location"]).json()["status"] == "delivered"
    assert [e["scoreGiven"] for e in world.gradebook()] == [5.0]


def test_delete_clears_the_grade_in_the_lms_and_a_new_post_revives_it(world: World, worker: DeliveryWorker) -> None:
    body = {"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.8}
    posted = world.post_grade(body)
    worker.run_until_idle()
    assert [e["scoreGiven"] for e in world.gradebook()] == [8.0]

    deleted = world.http.delete(world.url(posted.headers["Location"]), headers=world.headers())
    assert deleted.status_code == 202, deleted.text
    assert deleted.json()["deletedAt"] is not None
    assert worker.run_until_idle() == 1
    assert world.gradebook() == []
    status = world.get(posted.headers["Location"]).json()
    assert [(d["operation"], d["status"]) for d in status["deliveries"]] == [
        ("replace", "delivered"),
        ("delete", "delivered"),
    ]
    again = world.http.delete(world.url(posted.headers["Location"]), headers=world.headers())
    assert again.status_code == 202 and worker.run_until_idle() == 0, "deleting twice queues nothing more"

    revived = world.post_grade(body)
    assert revived.status_code == 202 and revived.json()["revision"] == 2 and revived.json()["deletedAt"] is None
    worker.run_until_idle()
    assert [e["scoreGiven"] for e in world.gradebook()] == [8.0]


def test_delete_of_another_districts_grade_is_404(world: World) -> None:
    assert (
        world.http.delete(world.url("/v1/grades/0123456789abcdef01234567"), headers=world.headers()).status_code == 404
    )
