"""tests/fakes/schoology_lms.py: the Schoology fake refuses what real Schoology refuses (its API v1 docs), so
that tests of the schoology adapter against it mean something. Requests are signed here with oauthlib's
signature functions (through `sign_header`, itself checked against a hand-computed HMAC-SHA1) and sent over
real sockets."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import requests
from oauthlib.oauth1 import Client as OAuthClient

from tests.fakes.schoology_lms import MAX_GRADES_PER_PUT, REPLAY_MESSAGE, Fault, SchoologyFake, sign_header

KEY = "ck-schoology-1"
SECRET = "s3cr3t&+/= key"  # characters that must be percent-encoded in the signing key


@pytest.fixture
def lms() -> Iterator[SchoologyFake]:
    with SchoologyFake(KEY, SECRET) as fake:
        yield fake


def get(
    url: str,
    *,
    header: str | None = None,
    accept: str | None = "application/json",
    follow: bool = False,
) -> requests.Response:
    # Accept None removes the header requests would otherwise send (*/*).
    headers = {"Authorization": header or sign_header("GET", url, KEY, SECRET), "Accept": accept}
    return requests.get(url, headers=headers, allow_redirects=follow, timeout=10)


def put_grades(
    lms: SchoologyFake, section: str, items: list[dict[str, Any]], *, content_type: str = "application/json"
) -> requests.Response:
    url = f"{lms.url}/sections/{section}/grades"
    headers = {
        "Authorization": sign_header("PUT", url, KEY, SECRET),
        "Accept": "application/json",
        "Content-Type": content_type,
    }
    return requests.put(url, data=json.dumps({"grades": {"grade": items}}), headers=headers, timeout=10)


def grade(assignment_id: Any, enrollment_id: Any, points: Any = 8.5, **extra: Any) -> dict[str, Any]:
    return {"type": "assignment", "assignment_id": assignment_id, "enrollment_id": enrollment_id, "grade": points} | (
        extra
    )


# --- signing and its checks --------------------------------------------------------------------------------


def test_sign_header_matches_a_hand_computed_hmac_sha1_in_the_docs_order() -> None:
    url = "https://api.schoology.com/v1/sections/77/enrollments?uid=5,6&start=0"
    header = sign_header("GET", url, KEY, SECRET, nonce="abc123", timestamp=1700000000)

    names = [part.split("=", 1)[0] for part in header.removeprefix("OAuth ").split(", ")]
    assert names == [
        "realm",
        "oauth_consumer_key",
        "oauth_nonce",
        "oauth_signature_method",
        "oauth_timestamp",
        "oauth_token",
        "oauth_version",
        "oauth_signature",
    ]
    assert 'realm="Schoology API"' in header and 'oauth_token=""' in header

    # RFC 5849 §3.4 by hand, with the empty oauth_token among the parameters and an empty token secret.
    params = {
        "uid": "5,6",
        "start": "0",
        "oauth_consumer_key": KEY,
        "oauth_nonce": "abc123",
        "oauth_signature_method": "HMAC-SHA1",
        "oauth_timestamp": "1700000000",
        "oauth_token": "",
        "oauth_version": "1.0",
    }

    def enc(text: str) -> str:
        return quote(text, safe="~")

    normalized = "&".join(f"{k}={v}" for k, v in sorted((enc(k), enc(v)) for k, v in params.items()))
    base = "&".join(["GET", enc("https://api.schoology.com/v1/sections/77/enrollments"), enc(normalized)])
    key = enc(SECRET) + "&"
    expected = base64.b64encode(hmac.new(key.encode(), base.encode(), hashlib.sha1).digest()).decode()
    assert f'oauth_signature="{quote(expected, safe="~")}"' in header


def test_a_good_signed_get_works(lms: SchoologyFake) -> None:
    lms.add_user("48289", school_uid="s1", email="james@example.edu", name="James Howlett")

    response = get(f"{lms.url}/users/48289")

    assert response.status_code == 200, response.text
    assert response.json() == {
        "uid": "48289",
        "id": 48289,
        "name_display": "James Howlett",
        "primary_email": "james@example.edu",
        "school_uid": "s1",
    }
    assert lms.requests == [("GET", "/v1/users/48289")]
    assert lms.signature_failures == []


def test_plaintext_signature_is_accepted(lms: SchoologyFake) -> None:
    url = f"{lms.url}/users/1000"
    header = sign_header("GET", url, KEY, SECRET, signature_method="PLAINTEXT")
    assert f'oauth_signature="{quote(quote(SECRET, safe="~") + "&", safe="~")}"' in header

    assert get(url, header=header).status_code == 200
    assert get(url, header=sign_header("GET", url, KEY, "wrong", signature_method="PLAINTEXT")).status_code == 401


def test_a_signature_from_oauthlibs_own_client_is_accepted_when_the_empty_token_is_not_required() -> None:
    # oauthlib's Client signs independently of sign_header, but omits the empty oauth_token (Schoology docs send it).
    with SchoologyFake(KEY, SECRET, require_oauth_token=False) as relaxed, SchoologyFake(KEY, SECRET) as strict:
        for fake, expected in ((relaxed, 200), (strict, 401)):
            url = f"{fake.url}/users/1000?x=a%20b"
            _, headers, _ = OAuthClient(KEY, client_secret=SECRET, realm="Schoology API").sign(url, "GET")
            assert get(url, header=headers["Authorization"]).status_code == expected
        assert strict.signature_failures == ["oauth_token must be present and empty for two-legged requests"]


def test_a_bad_secret_is_rejected(lms: SchoologyFake) -> None:
    url = f"{lms.url}/users/1000"

    response = get(url, header=sign_header("GET", url, KEY, "not-the-secret"))

    assert response.status_code == 401
    assert "signature" in response.json()["message"]
    assert lms.signature_failures[0].startswith("invalid HMAC-SHA1 signature")
    assert lms.requests == []


def test_a_wrong_consumer_key_is_rejected(lms: SchoologyFake) -> None:
    url = f"{lms.url}/users/1000"

    response = get(url, header=sign_header("GET", url, "someone-else", SECRET))

    assert response.status_code == 401
    assert lms.signature_failures == ["unknown consumer key 'someone-else'"]


def test_a_replayed_nonce_is_rejected_with_schoologys_message(lms: SchoologyFake) -> None:
    url = f"{lms.url}/users/1000"
    header = sign_header("GET", url, KEY, SECRET)

    assert get(url, header=header).status_code == 200
    replay = get(url, header=header)

    assert replay.status_code == 401
    assert replay.text == "Duplicate timestamp/nonce combination, possible replay attack. Request rejected."
    assert lms.replays_rejected == 1
    assert lms.signature_failures == [REPLAY_MESSAGE]
    # The same nonce at another timestamp is a different pair.
    assert get(url, header=sign_header("GET", url, KEY, SECRET, nonce="n1", timestamp=int(time.time()))).ok
    assert get(url, header=sign_header("GET", url, KEY, SECRET, nonce="n1", timestamp=int(time.time()) - 1)).ok


@pytest.mark.parametrize("realm", [None, "Canvas", ""])
def test_a_missing_or_wrong_realm_is_rejected(lms: SchoologyFake, realm: str | None) -> None:
    url = f"{lms.url}/users/1000"

    response = get(url, header=sign_header("GET", url, KEY, SECRET, realm=realm))

    assert response.status_code == 401
    assert lms.signature_failures[0].startswith("realm ")


def test_a_stale_timestamp_is_rejected(lms: SchoologyFake) -> None:
    url = f"{lms.url}/users/1000"

    response = get(url, header=sign_header("GET", url, KEY, SECRET, timestamp=int(time.time()) - 301))

    assert response.status_code == 401
    assert "not within 300 s" in lms.signature_failures[0]


def test_the_query_string_is_signed(lms: SchoologyFake) -> None:
    lms.add_section("77")
    signed_for = f"{lms.url}/sections/77/enrollments?start=0&limit=2"

    response = get(
        f"{lms.url}/sections/77/enrollments?start=2&limit=2", header=sign_header("GET", signed_for, KEY, SECRET)
    )

    assert response.status_code == 401
    assert "invalid HMAC-SHA1" in lms.signature_failures[0]


@pytest.mark.parametrize("accept", [None, "application/xml", "text/html, application/json;q=0"])
def test_an_accept_header_that_does_not_allow_json_gets_406(lms: SchoologyFake, accept: str | None) -> None:
    assert get(f"{lms.url}/users/1000", accept=accept).status_code == 406
    assert get(f"{lms.url}/users/1000", accept="*/*").status_code == 200


# --- redirects ------------------------------------------------------------------------------------------


def test_following_a_303_with_the_old_header_is_a_replay_while_a_freshly_signed_request_succeeds(
    lms: SchoologyFake,
) -> None:
    me = f"{lms.url}/users/me"

    # requests keeps the Authorization header on a same-host redirect: the nonce is spent.
    followed = get(me, follow=True)
    assert followed.status_code == 401
    assert followed.text == REPLAY_MESSAGE
    assert followed.history[0].status_code == 303

    redirect = get(me)
    assert redirect.status_code == 303
    location = redirect.headers["Location"]
    assert location == f"{lms.url}/users/1000"
    fresh = get(location, header=sign_header("GET", location, KEY, SECRET))
    assert fresh.status_code == 200
    assert fresh.json()["uid"] == "1000"


def test_users_ext_redirects_to_the_user_by_school_uid(lms: SchoologyFake) -> None:
    lms.add_user("48289", school_uid="sis-42")

    redirect = get(f"{lms.url}/users/ext/sis-42")

    assert redirect.status_code == 303
    assert redirect.headers["Location"] == f"{lms.url}/users/48289"
    assert get(redirect.headers["Location"]).json()["school_uid"] == "sis-42"
    assert get(f"{lms.url}/users/ext/nobody").status_code == 404
    assert get(f"{lms.url}/users/999").status_code == 404


# --- enrollments and assignments ---------------------------------------------------------------------------


def test_paging_returns_every_enrollment_across_pages_with_correct_next_links(lms: SchoologyFake) -> None:
    made = [lms.add_enrollment("77", str(uid)) for uid in range(500, 505)]
    lms.add_enrollment("88", "600")

    seen: list[dict[str, Any]] = []
    url: str | None = f"{lms.url}/sections/77/enrollments?start=0&limit=50"
    nexts = []
    while url:
        response = get(url)
        assert response.status_code == 200, response.text
        page = response.json()
        assert page["total"] == "5"
        assert page["links"]["self"] == url
        seen += page["enrollment"]
        url = page["links"].get("next")
        nexts.append(url)

    assert [e["id"] for e in seen] == made
    assert [e["uid"] for e in seen] == ["500", "501", "502", "503", "504"]
    assert seen[0] == {
        "id": made[0],
        "uid": "500",
        "school_uid": "",
        "name_display": "User 500",
        "admin": 0,
        "status": "1",
    }
    # Page size is min(limit, page_size=2); next keeps the client's limit.
    assert nexts == [
        f"{lms.url}/sections/77/enrollments?start=2&limit=50",
        f"{lms.url}/sections/77/enrollments?start=4&limit=50",
        None,
    ]
    assert lms.enrollment_pages_served == 3


def test_enrollments_filter_by_uid_and_unknown_sections_are_404(lms: SchoologyFake) -> None:
    for uid in ("1", "2", "3"):
        lms.add_enrollment("77", uid)
    lms.remove_enrollment("77", "2")

    page = get(f"{lms.url}/sections/77/enrollments?uid=1,2,3&limit=1").json()

    assert [e["uid"] for e in page["enrollment"]] == ["1"]
    assert page["links"]["next"] == f"{lms.url}/sections/77/enrollments?uid=1,2,3&limit=1&start=1"
    assert [e["uid"] for e in get(page["links"]["next"]).json()["enrollment"]] == ["3"]
    assert get(f"{lms.url}/sections/404/enrollments").status_code == 404


def test_an_assignment_reports_max_points(lms: SchoologyFake) -> None:
    lms.add_assignment("77", "5007606", max_points=12.5, title="Quiz")

    body = get(f"{lms.url}/sections/77/assignments/5007606").json()

    assert body["id"] == 5007606 and body["title"] == "Quiz" and body["type"] == "assignment"
    assert float(body["max_points"]) == 12.5
    assert body["grading_scale"] == "0" and body["published"] == 1
    assert get(f"{lms.url}/sections/77/assignments/1").status_code == 404
    assert get(f"{lms.url}/sections/78/assignments/5007606").status_code == 404


# --- grades -------------------------------------------------------------------------------------------------


@pytest.fixture
def section(lms: SchoologyFake) -> list[str]:
    lms.add_assignment("77", "5007606", max_points=10)
    return [lms.add_enrollment("77", uid) for uid in ("500", "501", "502")]


def test_a_put_with_one_failing_enrollment_answers_per_item_codes(lms: SchoologyFake, section: list[str]) -> None:
    first, second, third = section
    lms.failing_enrollments[second] = (403, "No permission to grade this enrollment")
    items = [
        grade(5007606, first, 8.5, comment="Auto-graded by Passback", comment_status=1),
        grade(5007606, second, 7),
        grade("5007606", int(third), 10),
        grade(5007606, "999", 1),
    ]

    response = put_grades(lms, "77", items)

    assert response.status_code == 200
    assert response.json()["grades"]["grade"] == [
        {"assignment_id": 5007606, "enrollment_id": first, "response_code": 200},
        {
            "assignment_id": 5007606,
            "enrollment_id": second,
            "response_code": 403,
            "message": "No permission to grade this enrollment",
        },
        {"assignment_id": "5007606", "enrollment_id": int(third), "response_code": 200},
        {
            "assignment_id": 5007606,
            "enrollment_id": "999",
            "response_code": 404,
            "message": "Enrollment 999 not found in section 77",
        },
    ]
    assert lms.grade_puts == [("77", items)]
    assert set(lms.grades) == {("77", "5007606", first), ("77", "5007606", third)}
    stored = lms.grades[("77", "5007606", first)]
    assert stored["grade"] == 8.5 and stored["comment"] == "Auto-graded by Passback"
    assert stored["comment_status"] == 1 and stored["exception"] == 0
    assert abs(stored["timestamp"] - time.time()) < 5

    read = get(f"{lms.url}/sections/77/grades?assignment_id=5007606&enrollment_id={first}").json()["grades"]["grade"]
    assert len(read) == 1
    assert read[0]["enrollment_id"] == int(first) and read[0]["grade"] == 8.5 and read[0]["max_points"] == 10
    assert read[0]["timestamp"] == stored["timestamp"]


def test_invalid_items_are_refused_one_by_one(lms: SchoologyFake, section: list[str]) -> None:
    first, second, third = section
    lms.add_assignment("78", "1")

    response = put_grades(
        lms,
        "77",
        [
            grade(5007606, first, None),
            grade(5007606, second, None, exception=1),
            grade(1, third, 5),
            grade(5007606, third, "B+"),
            grade(5007606, third, 5, comment_status=2),
        ],
    )

    codes = [(g["response_code"], g.get("message", "")) for g in response.json()["grades"]["grade"]]
    assert [c for c, _ in codes] == [400, 200, 404, 400, 400]
    assert codes[2][1] == "Assignment 1 not found in section 77"
    assert lms.grades[("77", "5007606", second)]["grade"] is None
    assert lms.grades[("77", "5007606", second)]["exception"] == 1


def test_no_content_mode_answers_204_only_when_every_item_is_stored() -> None:
    with SchoologyFake(KEY, SECRET, grades_answer="no_content") as fake:
        fake.add_assignment("77", "5007606")
        enrollment = fake.add_enrollment("77", "500")

        ok = put_grades(fake, "77", [grade(5007606, enrollment, 90)])
        partly = put_grades(fake, "77", [grade(5007606, enrollment, 91), grade(5007606, "999", 1)])

    assert ok.status_code == 204 and ok.content == b""
    assert partly.status_code == 200
    assert [g["response_code"] for g in partly.json()["grades"]["grade"]] == [200, 404]


def test_more_than_100_grades_in_one_put_is_refused_whole(lms: SchoologyFake) -> None:
    lms.add_assignment("77", "5007606")
    enrollments = [lms.add_enrollment("77", str(uid)) for uid in range(MAX_GRADES_PER_PUT + 1)]

    too_many = put_grades(lms, "77", [grade(5007606, e, 1) for e in enrollments])
    assert too_many.status_code == 400
    assert "too many grades" in too_many.json()["message"]
    assert lms.grades == {}

    just_enough = put_grades(lms, "77", [grade(5007606, e, 1) for e in enrollments[:MAX_GRADES_PER_PUT]])
    assert just_enough.status_code == 200
    assert len(lms.grades) == MAX_GRADES_PER_PUT
    assert [len(items) for _, items in lms.grade_puts] == [101, 100]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_a_grades_put_that_is_not_json_gets_415(lms: SchoologyFake, section: list[str], content_type: str) -> None:
    response = put_grades(lms, "77", [grade(5007606, section[0])], content_type=content_type)

    assert response.status_code == 415
    assert lms.grades == {} and lms.grade_puts == []


def test_a_put_to_an_unknown_section_is_404(lms: SchoologyFake) -> None:
    assert put_grades(lms, "404", [grade(1, "1")]).status_code == 404


# --- faults and load ---------------------------------------------------------------------------------------


def test_a_fault_with_retry_after_is_answered_once_and_only_where_it_matches(
    lms: SchoologyFake, section: list[str]
) -> None:
    lms.faults.append(Fault(503, '{"error": "busy"}', {"Retry-After": "1"}, path_contains="/grades", method="PUT"))

    assert get(f"{lms.url}/users/1000").status_code == 200  # not a PUT to grades: the fault waits
    assert get(f"{lms.url}/sections/77/grades").status_code == 200
    failed = put_grades(lms, "77", [grade(5007606, section[0])])
    retried = put_grades(lms, "77", [grade(5007606, section[0])])

    assert failed.status_code == 503
    assert failed.headers["Retry-After"] == "1"
    assert failed.json() == {"error": "busy"}
    assert retried.status_code == 200
    assert lms.faults == []
    assert len(lms.grade_puts) == 1  # the faulted PUT never reached the grades endpoint
    assert [m for m, _ in lms.requests] == ["GET", "GET", "PUT", "PUT"]


def test_faults_are_taken_in_order_and_count_down(lms: SchoologyFake) -> None:
    lms.faults += [Fault(429, remaining=2), Fault(500, "oops", {"Content-Type": "text/plain"})]
    url = f"{lms.url}/users/1000"

    statuses = [get(url).status_code for _ in range(4)]

    assert statuses == [429, 429, 500, 200]


def test_fifty_concurrent_requests_are_served_in_parallel() -> None:
    with SchoologyFake(KEY, SECRET, latency=0.5) as fake:
        url = f"{fake.url}/users/1000"
        results: list[int] = []

        def call() -> None:
            results.append(get(url).status_code)

        threads = [threading.Thread(target=call) for _ in range(50)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        elapsed = time.monotonic() - started

    assert results == [200] * 50
    assert elapsed < 10  # one at a time would take 25 s
