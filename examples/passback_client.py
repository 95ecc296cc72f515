"""A small Passback client for Python apps, written on `requests` (the only dependency).

    from passback_client import Passback, exchange_code

    passback = Passback("http://127.0.0.1:8000", token="pb_…")          # a district-app token
    grade = passback.post_grade("fractions-quiz-1", sis_id="S-1001", percentage=0.8)
    passback.wait_for_delivery(grade["id"])                             # {"status": "delivered", …}
    passback.grade_in_lms(grade["id"])                                  # what the LMS holds now

    token = exchange_code("http://127.0.0.1:8000", client_id, client_secret, code, redirect_uri)

Every call answers the parsed JSON body, or raises PassbackError with Passback's error shape
(`{"error": {"code", "message", "fields"}}`). The OpenAPI document at /openapi.json describes every operation;
a generated client works as well (the test suite generates one), this one is short enough to read.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

import requests

# A grade's status while Passback is still working on it; anything else is where it stays until something changes.
IN_FLIGHT = frozenset({"pending", "delivering", "retrying"})


class PassbackError(Exception):
    """An answer other than 2xx: its status, Passback's error code and message, and the fields it names."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: Mapping[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.fields = dict(fields or {})
        self.retry_after = retry_after


def _raise_for(response: requests.Response) -> None:
    if response.ok:
        return
    try:
        error = response.json().get("error", {})
    except ValueError:
        error = {}
    if not isinstance(error, dict):  # OAuth's token endpoint answers RFC 6749's {"error": "invalid_grant", …}
        error = {"code": str(error), "message": response.json().get("error_description", "")}
    retry_after = response.headers.get("Retry-After", "")
    raise PassbackError(
        response.status_code,
        str(error.get("code", "http_error")),
        str(error.get("message", response.text[:200])),
        error.get("fields"),
        float(retry_after) if retry_after.isdigit() else None,
    )


class Passback:
    """The app-facing API (`/v1`) with one bearer token: a district-app token, or a student's sign-in token."""

    def __init__(
        self, base_url: str, token: str, *, timeout: float = 10.0, session: requests.Session | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.http = session or requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token}"

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, self.base_url + path, timeout=self.timeout, **kwargs)
        _raise_for(response)
        return response.json()

    def me(self) -> dict[str, Any]:
        """What the token is: `{"type": "district_app" | "student" | "teacher", "data": {"id", "district", …}}`."""
        return dict(self._call("GET", "/v1/me"))

    def post_grade(
        self,
        assignment_id: str,
        *,
        user_id: str | None = None,
        sis_id: str | None = None,
        email: str | None = None,
        percentage: float | None = None,
        score_given: float | None = None,
        score_maximum: float | None = None,
        comment: str | None = None,
        idempotency_key: str | None = None,
        retries: int = 3,
    ) -> dict[str, Any]:
        """Post one grade (202: stored; delivery follows). Name the student by one key (a student's own token may
        name none). A network failure, a 503 or a 429 is retried (after its Retry-After) with the same
        Idempotency-Key, so the grade is stored once however often the request goes out."""
        body: dict[str, Any] = {"assignmentID": assignment_id}
        for name, value in (
            ("userID", user_id),
            ("sisID", sis_id),
            ("email", email),
            ("percentage", percentage),
            ("scoreGiven", score_given),
            ("scoreMaximum", score_maximum),
            ("comment", comment),
        ):
            if value is not None:
                body[name] = value
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        for attempt in range(retries + 1):
            wait = min(2.0**attempt, 10.0)
            try:
                return dict(self._call("POST", "/v1/grade", json=body, headers=headers))
            except requests.ConnectionError:
                if attempt == retries:
                    raise
            except PassbackError as exc:
                if exc.status not in (429, 503) or attempt == retries:
                    raise
                wait = max(wait, exc.retry_after or 0.0)
            time.sleep(wait)
        raise AssertionError("unreachable")

    def grade(self, grade_id: str) -> dict[str, Any]:
        """The grade and each delivery's status (`status`, `deliveries`)."""
        return dict(self._call("GET", f"/v1/grades/{grade_id}"))

    def grade_in_lms(self, grade_id: str) -> list[dict[str, Any]]:
        """What each LMS that received the grade holds now: `[{"lmsConnection", "value", "error"}]`."""
        return list(self._call("GET", f"/v1/grades/{grade_id}/lms")["lms"])

    def register_webhook(self, url: str, events: list[str]) -> dict[str, Any]:
        """Register an endpoint (district-app token): answers `{"id", "url", "events", "secret", …}`; the `whsec_…`
        secret is shown only here, so keep it to verify what the endpoint receives."""
        return dict(self._call("POST", "/v1/webhooks", json={"url": url, "events": events}))

    def remove_webhook(self, webhook_id: str) -> None:
        response = self.http.delete(f"{self.base_url}/v1/webhooks/{webhook_id}", timeout=self.timeout)
        _raise_for(response)

    def wait_for_delivery(self, grade_id: str, *, timeout: float = 30.0, every: float = 0.5) -> dict[str, Any]:
        """Poll the grade until Passback is done with it for now (delivered, failed, awaiting a launch …) or
        `timeout` passes; answers the last status read. (Webhooks tell an app the same without polling.)"""
        deadline = time.monotonic() + timeout
        status = self.grade(grade_id)
        while status["status"] in IN_FLIGHT and time.monotonic() < deadline:
            time.sleep(every)
            status = self.grade(grade_id)
        return status


def exchange_code(
    base_url: str,
    client_id: str,
    client_secret: str,
    code: str,
    redirect_uri: str,
    *,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """The sign-in's last step: trade the code a launch sent to the app's redirect URI for the student's token
    (`{"access_token", "token_type", "expires_in", "scope"}`). A code works once, for 60 seconds."""
    response = requests.post(
        base_url.rstrip("/") + "/oauth/tokens",
        auth=(client_id, client_secret),
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri},
        timeout=timeout,
    )
    _raise_for(response)
    return dict(response.json())


class SandboxLms:
    """Passback's sandbox LMS, driven as an LMS would be (its bearer secret is the LMS's own, not an app's):
    launch a student, read its gradebook, make it fail. For development and tests only."""

    def __init__(self, sandbox_url: str, secret: str, *, timeout: float = 10.0) -> None:
        self.base_url = sandbox_url.rstrip("/")
        self.timeout = timeout
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {secret}"

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, self.base_url + path, timeout=self.timeout, **kwargs)
        _raise_for(response)
        return response.json()

    def launch(self, assignment_id: str, *, sis_id: str | None = None, user_id: str | None = None) -> str:
        """A student opens the assignment's link: answers the URL the browser goes to next (the app's redirect
        URI with `code` and `state=assignment:{assignment_id}`)."""
        body: dict[str, Any] = {"assignmentID": assignment_id}
        body.update({"sisID": sis_id} if sis_id is not None else {"userID": user_id})
        return str(self._call("POST", "/launches", json=body)["redirect"])

    def gradebook(self) -> list[dict[str, Any]]:
        """Every entry the sandbox gradebook holds: courseID, itemID, studentID, scoreGiven, scoreMaximum …"""
        return list(self._call("GET", "/gradebook")["entries"])

    def fail_next(self, count: int, status: int = 503, *, hang_seconds: int | None = None) -> None:
        """The next `count` score writes answer `status` (after hanging, if asked); 0 clears."""
        self._call("POST", "/faults", json={"fail_next": count, "status": status, "hang_seconds": hang_seconds})
