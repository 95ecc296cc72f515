"""adapters/http.py: Retry-After parsing and the transport errors of HttpClient (against real sockets on
127.0.0.1); adapters/answers.py: the default answer table, read by `classify`."""

from __future__ import annotations

import email.utils
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import requests

from adapters.answers import DEFAULT_ANSWERS, classify
from adapters.base import PermanentDeliveryError, RetryableDeliveryError
from adapters.http import MAX_KEPT_BODY, MAX_RESPONSE_BYTES, HttpClient, json_or_none, parse_retry_after
from tests.fakes.scripted_lms import Close, Hang, Junk, Respond, ScriptedLms, Trickle, unused_port

NOW = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)


def raise_for_delivery(answer: requests.Response, lms_message: str | None = None) -> None:
    """The default table, as the sandbox adapter reads it."""
    classify(DEFAULT_ANSWERS, answer, detail=lms_message)


def response(
    status: int, body: bytes = b"", headers: dict[str, str] | None = None, reason: str | None = None
) -> requests.Response:
    """A requests.Response built by hand, as the transport would hand it over."""
    built = requests.Response()
    built.status_code = status
    built._content = body
    built.encoding = "utf-8"
    built.reason = reason or ""
    built.url = "https://lms.example/api/scores"
    built.headers.update(headers or {})
    return built


# --- Retry-After -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("30", 30.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("86400", 86400.0),
        ("Mon, 01 Jan 2024 12:00:30 GMT", 30.0),  # IMF-fixdate
        ("Monday, 01-Jan-24 12:05:00 GMT", 300.0),  # obsolete RFC 850 form, which recipients must accept
        ("Mon Jan  1 12:01:00 2024", 60.0),  # obsolete asctime form
        ("Mon, 01 Jan 2024 11:59:00 GMT", 0.0),  # a date in the past: retry now, never a negative wait
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("1.5", None),  # delay-seconds is digits only
        ("30 seconds", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_parse_retry_after_http_date_is_relative_to_now_by_default() -> None:
    later = datetime.now(UTC).replace(microsecond=0)
    header = later.strftime("%a, %d %b %Y %H:%M:%S GMT")
    waited = parse_retry_after(header)
    assert waited is not None and 0.0 <= waited <= 1.0


@pytest.mark.parametrize("value", ["\u00b2", "1\u00b3"])
def test_parse_retry_after_rejects_non_ascii_digits(value: str) -> None:
    # str.isdigit accepts '²' (a Latin-1 header byte, 0xB2) but float() does not: unparseable, not a crash.
    assert parse_retry_after(value, now=NOW) is None


# --- classification ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_success_does_not_raise(status: int) -> None:
    raise_for_delivery(response(status, b'{"entry": {}}'))


@pytest.mark.parametrize("status", [408, 425, 429, 500, 501, 502, 503, 504, 507, 599])
def test_retryable_statuses(status: int) -> None:
    with pytest.raises(RetryableDeliveryError) as caught:
        raise_for_delivery(response(status, b"try later"))
    error = caught.value
    assert error.lms_status == status
    assert error.lms_body == "try later"
    assert error.message == f"LMS answered HTTP {status}: try later"
    assert error.retry_after is None


@pytest.mark.parametrize(
    "status", [400, 401, 402, 403, 404, 405, 406, 409, 410, 411, 413, 415, 422, 423, 428, 431, 451]
)
def test_permanent_statuses(status: int) -> None:
    with pytest.raises(PermanentDeliveryError) as caught:
        raise_for_delivery(response(status, b'{"error": "no such line item"}'))
    error = caught.value
    assert not isinstance(error, RetryableDeliveryError)
    assert error.lms_status == status
    assert "no such line item" in error.message
    assert error.lms_body == '{"error": "no such line item"}'


@pytest.mark.parametrize("status", [300, 301, 302, 303, 307, 308])
def test_redirects_are_permanent_and_name_the_location(status: int) -> None:
    with pytest.raises(PermanentDeliveryError) as caught:
        raise_for_delivery(response(status, headers={"Location": "https://lms.example/moved"}))
    assert "https://lms.example/moved" in caught.value.message
    assert caught.value.lms_status == status


def test_classification_uses_the_number_never_the_reason_phrase() -> None:
    with pytest.raises(PermanentDeliveryError):
        raise_for_delivery(response(400, reason="Service Unavailable"))
    with pytest.raises(RetryableDeliveryError):
        raise_for_delivery(response(503, reason="Bad Request"))
    raise_for_delivery(response(200, reason="Internal Server Error"))


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "120"}, 120.0),
        ({"retry-after": "7"}, 7.0),  # header names are case-insensitive
        ({"Retry-After": "Wed, 99 Foo 2024 25:61:00 GMT"}, None),  # unparseable: the backoff decides
        ({}, None),
    ],
)
def test_retry_after_travels_with_the_retryable_error(headers: dict[str, str], expected: float | None) -> None:
    with pytest.raises(RetryableDeliveryError) as caught:
        raise_for_delivery(response(429, headers=headers))
    assert caught.value.retry_after == expected


def test_retry_after_http_date_on_a_503() -> None:
    header = email.utils.format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)
    with pytest.raises(RetryableDeliveryError) as caught:
        raise_for_delivery(response(503, headers={"Retry-After": header}))
    assert caught.value.retry_after is not None and 3598 <= caught.value.retry_after <= 3600


def test_lms_message_is_preferred_over_the_raw_body() -> None:
    with pytest.raises(PermanentDeliveryError) as caught:
        raise_for_delivery(response(400, b'{"error": "scoreGiven invalid"}'), lms_message="scoreGiven invalid")
    assert caught.value.message == "LMS answered HTTP 400: scoreGiven invalid"
    assert caught.value.lms_body == '{"error": "scoreGiven invalid"}'


def test_empty_body_gives_a_bare_message() -> None:
    with pytest.raises(RetryableDeliveryError) as caught:
        raise_for_delivery(response(502))
    assert caught.value.message == "LMS answered HTTP 502"


def test_long_bodies_are_truncated() -> None:
    with pytest.raises(RetryableDeliveryError) as caught:
        raise_for_delivery(response(500, b"x" * (MAX_KEPT_BODY * 3)))
    body = caught.value.lms_body
    assert body is not None and len(body) == MAX_KEPT_BODY + 1 and body.endswith("…")


def test_json_or_none() -> None:
    assert json_or_none(response(200, b'{"entry": {"a": 1}}')) == {"entry": {"a": 1}}
    assert json_or_none(response(200, b"[1, 2]")) is None
    assert json_or_none(response(200, b"<html>")) is None
    assert json_or_none(response(200, b"")) is None


# --- transport errors (real sockets) -------------------------------------------------------------------------


@pytest.fixture
def lms() -> Iterator[ScriptedLms]:
    with ScriptedLms("s" * 24) as fake:
        yield fake


def _put(client: HttpClient, lms: ScriptedLms) -> requests.Response:
    return client.request(
        "PUT",
        f"{lms.base_url}/courses/c/items/i/scores/u",
        json={"scoreGiven": 1, "scoreMaximum": 2, "timestamp": "2024-01-01T00:00:00Z"},
        headers={"Authorization": f"Bearer {lms.secret}"},
    )


def test_connection_refused_is_retryable() -> None:
    port = unused_port()
    with pytest.raises(RetryableDeliveryError) as caught:
        HttpClient(1.0, 1.0).request("GET", f"http://127.0.0.1:{port}/health")
    assert caught.value.message.startswith(f"could not connect to 127.0.0.1:{port}")
    assert caught.value.lms_status is None


def test_read_timeout_is_retryable(lms: ScriptedLms) -> None:
    lms.script(Hang(then=Close()))
    with pytest.raises(RetryableDeliveryError) as caught:
        _put(HttpClient(1.0, 0.2), lms)
    assert caught.value.message.startswith("timed out talking to 127.0.0.1:")


@pytest.mark.parametrize("reset", [False, True])
def test_dropped_connection_is_retryable(lms: ScriptedLms, reset: bool) -> None:
    lms.script(Close(reset=reset))
    with pytest.raises(RetryableDeliveryError):
        _put(HttpClient(1.0, 1.0), lms)


def test_redirects_are_not_followed(lms: ScriptedLms) -> None:
    lms.script(Respond(307, headers={"Location": "http://127.0.0.1:1/elsewhere"}))
    answer = _put(HttpClient(1.0, 1.0), lms)
    assert answer.status_code == 307
    with pytest.raises(PermanentDeliveryError):
        raise_for_delivery(answer)
    assert len(lms.score_writes()) == 1


def test_error_answers_are_returned_not_raised_by_the_client(lms: ScriptedLms) -> None:
    lms.script(Respond(503, headers={"Retry-After": "9"}, message="down"))
    answer = _put(HttpClient(1.0, 1.0), lms)
    assert answer.status_code == 503
    with pytest.raises(RetryableDeliveryError) as caught:
        raise_for_delivery(answer)
    assert caught.value.retry_after == 9.0
    assert "down" in caught.value.message
    assert lms.problems == []


# --- the request deadline and the body cap (issue 13, item 4) --------------------------------------------------


@pytest.mark.parametrize("head_at_once", [False, True], ids=["whole-answer", "body-only"])
def test_a_trickling_answer_is_cut_off_at_the_request_deadline(lms: ScriptedLms, head_at_once: bool) -> None:
    # One byte every 50 ms never trips the 5 s per-read timeout: only the total deadline ends the exchange.
    [trickle] = lms.script(Trickle(interval=0.05, head_at_once=head_at_once))
    with pytest.raises(RetryableDeliveryError) as caught:
        _put(HttpClient(1.0, 5.0, deadline=0.5), lms)
    assert caught.value.message.startswith("no complete answer from 127.0.0.1:")
    assert "within 0.5 s" in caught.value.message
    assert trickle.abandoned.wait(10), "the client hung up while the LMS was still trickling"
    assert trickle.finished.is_set()


def test_an_answer_followed_by_32_mib_of_junk_is_not_read_whole(lms: ScriptedLms) -> None:
    [junk] = lms.script(Junk(32 * 1024 * 1024))
    with pytest.raises(RetryableDeliveryError) as caught:
        _put(HttpClient(1.0, 5.0), lms)
    assert caught.value.lms_status == 200
    assert f"more than {MAX_RESPONSE_BYTES} bytes; not read" in caught.value.message
    assert junk.finished.wait(10)
    # What the LMS got to send is the cap plus what the loopback socket buffers held, far from 32 MiB.
    assert junk.sent < 16 * 1024 * 1024, junk.sent


def test_an_oversized_error_answer_keeps_its_first_bytes_and_its_status(lms: ScriptedLms) -> None:
    lms.script(Respond(503, raw_body=b"x" * (3 * MAX_RESPONSE_BYTES)))
    answer = _put(HttpClient(1.0, 5.0), lms)
    assert answer.status_code == 503
    assert len(answer.content) == MAX_RESPONSE_BYTES
    with pytest.raises(RetryableDeliveryError):
        raise_for_delivery(answer)
