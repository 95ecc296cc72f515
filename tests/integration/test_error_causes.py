"""Error causes end to end (docs/error-causes.md): scripted LMSs on 127.0.0.1 refuse grades in their own words,
the worker records the catalogued cause beside them, and the dashboard (its HTML parsed) and the API show the
cause's title and what to do, grouped with counts per connection; a timeout or a refused connection is stored as
a sentence, never requests' repr chain."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import lxml.html
import pytest
import requests
from sqlalchemy import select

from adapters import causes
from adapters.http import HttpClient
from gateway.models import Delivery
from gateway.worker import DeliveryWorker
from tests.factories import World
from tests.fakes.scripted_lms import Hang, Respond, ScriptedLms, unused_port
from tests.integration.test_dashboard import signed_in, staff_of
from tests.integration.test_delivery import make_worker, new_student, point_connection_at, worker_an_hour_later
from tests.integration.test_lti13_delivery import AgsSetup, _sandbox_off, ags  # noqa: F401 (a fixture)

CANVAS_NOT_ENROLLED = "User not found in course or is not a student"
REPR_NOISE = ("ConnectionPool", "HTTPPool", "object at 0x", "Max retries exceeded", "Caused by", "urllib3")


def page(browser: requests.Session, world: World, path: str, **params: str) -> Any:
    response = browser.get(world.url(path), params=params)
    assert response.status_code == 200, response.text[:500]
    return lxml.html.fromstring(response.text)


def text_of(element: Any) -> str:
    return " ".join(element.text_content().split())


def problems(tree: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """The overview's Problems table: (cause code, connection) → its counts per status, title, advice and link."""
    [table] = tree.xpath('//table[@aria-label="Problems by cause"]')
    statuses = [text_of(th) for th in table.xpath("./thead/tr/th")][2:-1]
    found = {}
    for row in table.xpath("./tbody/tr"):
        cells = [text_of(td) for td in row.xpath("./td")]
        link = row.xpath('.//a[@class="cause"]')[0]
        found[(row.get("data-cause"), cells[0])] = {
            "counts": dict(zip(statuses, (int(c) for c in cells[1:-1]), strict=True)),
            "title": text_of(link),
            "href": link.get("href"),
            "action": cells[-1],
        }
    return found


def deliver_one(world: World, worker: DeliveryWorker, lms: ScriptedLms, step: Any, **grade: Any) -> str:
    """Post one grade with the LMS scripted to answer it with `step`; returns the grade's id."""
    if step is not None:
        lms.script(step)
    response = world.post_grade({"assignmentID": "quiz-1", "percentage": 0.5, **grade})
    assert response.status_code == 202, response.text
    # One round: a retry would take the next step of the script (or store the grade).
    worker.run_once()
    return str(response.json()["id"])


def delivery_of(world: World, grade_id: str) -> dict[str, Any]:
    [delivery] = world.get(f"/v1/grades/{grade_id}").json()["deliveries"]
    return dict(delivery)


def test_causes_are_shown_in_plain_words_and_grouped_per_connection(
    world: World, lms: ScriptedLms, worker: DeliveryWorker
) -> None:
    not_enrolled = Respond(400, message=CANVAS_NOT_ENROLLED)
    first = deliver_one(world, worker, lms, not_enrolled, userID=world.students[0])
    deliver_one(world, worker, lms, not_enrolled, userID=world.students[1])
    refused = deliver_one(world, worker, lms, Respond(401, message="bad bearer secret"), userID=new_student(world, "C"))
    throttled = deliver_one(
        world,
        worker,
        lms,
        Respond(429, message="slow down", headers={"Retry-After": "3600"}),
        userID=new_student(world, "D"),
    )
    unplaced = world.post_grade({"assignmentID": "unplaced", "userID": world.students[0], "percentage": 1})
    assert unplaced.status_code == 202

    # The API: each delivery carries its cause's code beside the LMS's own words.
    assert delivery_of(world, first)["cause"] == causes.NOT_ENROLLED
    assert CANVAS_NOT_ENROLLED in delivery_of(world, first)["lastError"]
    assert delivery_of(world, refused)["cause"] == causes.CREDENTIALS_REFUSED
    assert (delivery_of(world, throttled)["status"], delivery_of(world, throttled)["cause"]) == (
        "retrying",
        causes.RATE_LIMITED,
    )
    assert delivery_of(world, str(unplaced.json()["id"]))["cause"] == causes.UNROUTABLE

    browser = signed_in(world, staff_of(world))
    found = problems(page(browser, world, "/dashboard/"))
    assert found[(causes.NOT_ENROLLED, "Sandbox")]["counts"] == {
        "failed": 2,
        "retrying": 0,
        "awaiting launch": 0,
        "unroutable": 0,
    }, "two refusals of one kind at one connection are one row"
    assert found[(causes.NOT_ENROLLED, "Sandbox")]["title"] == "Student not enrolled in the course"
    assert "gateway lms sync-roster" in found[(causes.NOT_ENROLLED, "Sandbox")]["action"]
    assert found[(causes.CREDENTIALS_REFUSED, "Sandbox")]["counts"]["failed"] == 1
    assert found[(causes.RATE_LIMITED, "Sandbox")]["counts"]["retrying"] == 1
    assert found[(causes.UNROUTABLE, "—")]["counts"]["unroutable"] == 1
    assert next(iter(found)) == (causes.NOT_ENROLLED, "Sandbox"), "the largest problem first"

    # Each row links to the delivery list filtered to it.
    href = found[(causes.NOT_ENROLLED, "Sandbox")]["href"]
    query = parse_qs(urlsplit(href).query)
    assert query == {"cause": [causes.NOT_ENROLLED], "connection": [world.connection_id]}
    listed = page(browser, world, urlsplit(href).path, cause=causes.NOT_ENROLLED, connection=world.connection_id)
    rows = listed.xpath('//table[@aria-label="Deliveries"]/tbody/tr')
    assert len(rows) == 2
    for row in rows:
        [why] = row.xpath('.//td[@class="why"]')
        assert text_of(why.xpath('.//strong[@class="cause"]')[0]) == "Student not enrolled in the course"
        assert "gateway lms sync-roster" in text_of(why.xpath('.//*[@class="cause-action"]')[0])
        assert CANVAS_NOT_ENROLLED in text_of(why.xpath('.//*[@class="lms-says"]')[0]), "the LMS's words beside it"
    assert "gateway lms sync-roster" in text_of(listed.get_element_by_id("cause-action"))
    csv = browser.get(world.url("/dashboard/deliveries.csv"), params={"cause": causes.NOT_ENROLLED})
    assert csv.text.count(f",{causes.NOT_ENROLLED},") == 2

    # One delivery's page: the cause, what to do, and the LMS's words.
    detail_href = rows[0].xpath('.//a[text()="Details"]')[0].get("href")
    detail = page(browser, world, detail_href)
    assert text_of(detail.get_element_by_id("cause")) == "Student not enrolled in the course"
    assert "gateway lms sync-roster" in text_of(detail.get_element_by_id("cause-action"))
    assert CANVAS_NOT_ENROLLED in text_of(detail.get_element_by_id("lms-says"))

    # An unknown cause is a 404, not an empty list.
    unknown = browser.get(world.url("/dashboard/deliveries"), params={"cause": "nonsense"})
    assert unknown.status_code == 400 and "cause:" in unknown.text, "an unknown cause is named, not a blank list"


def test_a_delivered_retry_clears_the_cause(
    world: World, lms: ScriptedLms, worker: DeliveryWorker, database_url: str
) -> None:
    lms.script(Respond(503, message="down for maintenance"))
    posted = world.post_grade({"assignmentID": "quiz-1", "percentage": 0.5, "userID": world.students[0]})
    grade = str(posted.json()["id"])
    worker.run_once()
    assert (delivery_of(world, grade)["status"], delivery_of(world, grade)["cause"]) == ("retrying", causes.LMS_ERROR)
    # An hour on, past the retry time: the empty script stores it.
    worker_an_hour_later(world, database_url).run_until_idle()
    with world.session() as session:
        [delivery] = session.scalars(select(Delivery).where(Delivery.grade_id == grade)).all()
        assert (delivery.status, delivery.error_cause, delivery.last_error) == ("delivered", None, None)


@pytest.fixture
def quick_timeouts(world: World, database_url: str) -> Iterator[DeliveryWorker]:
    yield make_worker(world, database_url, http=HttpClient(connect_timeout=1.0, read_timeout=0.3, deadline=5.0))


def test_a_timeout_and_a_refused_connection_are_stored_as_sentences(
    world: World, lms: ScriptedLms, quick_timeouts: DeliveryWorker
) -> None:
    hang = Hang(max_seconds=3.0)
    slow = deliver_one(world, quick_timeouts, lms, hang, userID=world.students[0])
    hang.release()
    with world.session() as session:
        delivery = session.scalars(select(Delivery).where(Delivery.grade_id == slow)).one()
        assert delivery.error_cause == causes.TIMED_OUT
        assert delivery.last_error is not None and delivery.last_error.startswith("timed out talking to 127.0.0.1")
        assert delivery.last_error.endswith("no answer came in time")
        for noise in REPR_NOISE:
            assert noise not in delivery.last_error

    port = unused_port()
    point_connection_at(world, f"http://127.0.0.1:{port}/lms")
    gone = deliver_one(world, quick_timeouts, lms, None, userID=world.students[1])
    shown = delivery_of(world, gone)
    assert shown["cause"] == causes.LMS_UNREACHABLE
    assert shown["lastError"] == f"could not connect to 127.0.0.1:{port}: it refused the connection"
    browser = signed_in(world, staff_of(world))
    found = problems(page(browser, world, "/dashboard/"))
    assert found[(causes.LMS_UNREACHABLE, "Sandbox")]["title"] == "LMS unreachable"
    with world.session() as session:
        for (text,) in session.execute(select(Delivery.last_error).where(Delivery.last_error.is_not(None))):
            for noise in REPR_NOISE:
                assert noise not in text, text


def test_canvas_refusing_a_student_not_enrolled_is_named_so(ags: AgsSetup, worker: DeliveryWorker) -> None:  # noqa: F811
    _sandbox_off(ags.world)
    ags.platform.add_lineitem("quiz-1", "Quiz 1", 10, resource_link_id="rl-1")
    ags.platform.fail_next(400, '{"errors": [{"message": "' + CANVAS_NOT_ENROLLED + '"}]}')
    response = ags.world.post_grade({"assignmentID": "quiz-1", "userID": ags.world.students[0], "percentage": 1})
    worker.run_once()
    [delivery] = ags.world.get(response.headers["Location"]).json()["deliveries"]
    assert (delivery["status"], delivery["cause"]) == ("failed", causes.NOT_ENROLLED)
    assert CANVAS_NOT_ENROLLED in delivery["lastError"]
    browser = signed_in(ags.world, staff_of(ags.world))
    found = problems(page(browser, ags.world, "/dashboard/"))
    assert found[(causes.NOT_ENROLLED, "Canvas")]["counts"]["failed"] == 1
