"""A small Schoology REST API v1 (developers.schoology.com), as a real web app on 127.0.0.1.

What it checks on every request, independently of Passback's code:

- **Two-legged OAuth 1.0a** in the `Authorization` header: `realm="Schoology API"`, the consumer key, an
  `oauth_token` that is present but empty (the docs' rule for two-legged requests), `oauth_version` 1.0, a
  timestamp within 300 s of now, a (timestamp, nonce) pair never seen before (else 401 "Duplicate
  timestamp/nonce combination, possible replay attack. Request rejected.", as Schoology answers), and the
  signature: HMAC-SHA1 over method, URL and query parameters plus the header's oauth parameters (never the
  JSON body) with the key `quote(secret)&`, computed with oauthlib's `rfc5849.signature` functions; or
  PLAINTEXT `quote(secret)%26`. The replay check comes before the signature check, so a client that follows a
  303 with the original header gets the duplicate-nonce 401, as the docs warn ("Authentication → Troubleshooting").
- `Accept` must allow `application/json` (406 otherwise, and when the header is missing); grade writes must
  be `Content-Type: application/json` (415 otherwise).

Endpoints, all under `/v1`: `users/me` and `users/ext/{school_uid}` (303 to `users/{uid}`), `users/{uid}`,
`sections/{id}/enrollments` (paged with `start`/`limit`, `links.next` while more remain; `uid` and
`enrollment_status` comma filters), `sections/{id}/assignments/{id}`, and `sections/{id}/grades` (PUT with
per-item validation and answers, GET for read-back).

Field types follow the examples in the Schoology docs, not Python's convenience: enrollment `id`, `uid` and
`status` are strings, `admin` an integer, `total` a string; a user's `uid` is a string and `id` an integer;
an assignment's `max_points` and `grading_scale` are strings ("100", "12.5"), its `id` an integer. A client
must convert them, as it must against the real API.

Schoology is HTTPS-only: a PLAINTEXT-signed request (the secret itself in the header) that arrives over plain
HTTP by any name but `127.0.0.1` (the loopback address the tests are allowed) is recorded in
`plaintext_exposures` by the Host it was sent to; the secret has crossed an unencrypted wire.

Tests script failures with `faults` (answered after the signature check, before anything else) and
`failing_enrollments` (per-item failures inside a grades PUT); `requests`, `grade_puts`, `grades`,
`signature_failures` and the counters record what was received. It imports nothing from the gateway.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode, urlsplit

from flask import Flask, Response, request
from oauthlib.common import Request as OAuthRequest
from oauthlib.common import urldecode
from oauthlib.oauth1.rfc5849.signature import (
    base_string_uri,
    collect_parameters,
    normalize_parameters,
    sign_hmac_sha1_with_client,
    sign_plaintext,
    signature_base_string,
    verify_hmac_sha1,
    verify_plaintext,
)
from oauthlib.oauth1.rfc5849.utils import escape, parse_authorization_header, unescape
from werkzeug.serving import make_server

REALM = "Schoology API"
REPLAY_MESSAGE = "Duplicate timestamp/nonce combination, possible replay attack. Request rejected."
TIMESTAMP_WINDOW = 300
# How many grades one PUT may carry before the fake refuses the whole request with 400. Schoology's real limit
# is unverified (its docs name none for grades; bulk creates elsewhere allow 50); 100 is the adapter's chunk size.
MAX_GRADES_PER_PUT = 100
DEFAULT_LIMIT = 20
REQUIRED_OAUTH = (
    "oauth_consumer_key",
    "oauth_nonce",
    "oauth_timestamp",
    "oauth_signature_method",
    "oauth_signature",
)


@dataclass
class Fault:
    """A scripted answer: the first fault matching a request answers it instead; `remaining` counts down."""

    status: int
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    remaining: int = 1
    path_contains: str | None = None  # only requests whose path (with query string) contains this
    method: str | None = None  # only requests with this method
    hold: float = 0.0  # hold the answer this many seconds (or until the fake stops): Schoology past the deadline

    def matches(self, method: str, target: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self.path_contains is None or self.path_contains in target


def sign_header(
    method: str,
    url: str,
    key: str,
    secret: str,
    *,
    nonce: str | None = None,
    timestamp: int | str | None = None,
    signature_method: str = "HMAC-SHA1",
    realm: str | None = REALM,
    token: str | None = "",
) -> str:
    """A two-legged OAuth `Authorization` header for `method url`, in the docs' order (realm first, the
    signature last, the rest alphabetical). `realm=None` or `token=None` leave those parameters out."""
    oauth = {
        "oauth_consumer_key": key,
        "oauth_nonce": nonce or uuid.uuid4().hex,
        "oauth_signature_method": signature_method,
        "oauth_timestamp": str(int(time.time()) if timestamp is None else timestamp),
        "oauth_version": "1.0",
    }
    if token is not None:
        oauth["oauth_token"] = token
    if signature_method == "PLAINTEXT":
        signature = sign_plaintext(secret, "")
    elif signature_method == "HMAC-SHA1":
        params = list(urldecode(urlsplit(url).query)) + list(oauth.items())
        base = signature_base_string(method, base_string_uri(url), normalize_parameters(params))
        signature = sign_hmac_sha1_with_client(base, SimpleNamespace(client_secret=secret, resource_owner_secret=""))
    else:
        raise ValueError(f"unsupported signature method {signature_method!r}")
    parts = [f'realm="{realm}"'] if realm is not None else []
    parts += [f'{name}="{escape(value)}"' for name, value in sorted(oauth.items())]
    parts.append(f'oauth_signature="{escape(signature)}"')
    return "OAuth " + ", ".join(parts)


def _wire_id(value: str) -> int | str:
    """An id as the docs' examples print it where they use numbers: an integer when it is one."""
    return int(value) if value.isdigit() else value


def _points(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class SchoologyFake:
    """Start with `with SchoologyFake(key, secret) as lms:`; `lms.url` is the API base, ending in `/v1`."""

    def __init__(
        self,
        consumer_key: str,
        consumer_secret: str,
        *,
        page_size: int = 2,
        latency: float = 0.0,
        me_uid: str = "1000",
        grades_answer: str = "items",
        require_oauth_token: bool = True,
    ) -> None:
        if grades_answer not in ("items", "no_content"):
            raise ValueError("grades_answer must be 'items' or 'no_content'")
        self.consumer_key = consumer_key
        self.consumer_secret = consumer_secret
        self.page_size = page_size
        self.latency = latency
        self.me_uid = me_uid
        self.grades_answer = grades_answer
        self.require_oauth_token = require_oauth_token
        self.lock = threading.Lock()
        self.users: dict[str, dict[str, Any]] = {}
        self.sections: dict[str, dict[str, dict[str, Any]]] = {}  # section -> enrollment id -> enrollment
        self.assignments: dict[tuple[str, str], dict[str, Any]] = {}
        self.faults: list[Fault] = []
        self.stopping = threading.Event()
        self.failing_enrollments: dict[str, tuple[int, str]] = {}
        self.grades: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.grade_puts: list[tuple[str, list[dict[str, Any]]]] = []
        self.requests: list[tuple[str, str]] = []
        self.signature_failures: list[str] = []
        self.plaintext_exposures: list[str] = []
        self.replays_rejected = 0
        self.enrollment_pages_served = 0
        self.seen_nonces: set[tuple[str, str]] = set()
        self._next_enrollment = 44783100
        self.add_user(me_uid, name="API User")
        self.app = self._build()
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.origin = f"http://127.0.0.1:{self.server.server_port}"
        self.url = self.origin + "/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

    def start(self) -> SchoologyFake:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():  # shutdown() would wait forever for a server that never served
            self.server.shutdown()
            self.thread.join(5)
        self.server.server_close()

    def __enter__(self) -> SchoologyFake:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # --- helpers for tests ---------------------------------------------------------------------------

    def add_section(self, section_id: str) -> None:
        with self.lock:
            self.sections.setdefault(str(section_id), {})

    def add_user(self, uid: str, *, school_uid: str | None = None, email: str | None = None, name: str = "") -> None:
        with self.lock:
            self.users[str(uid)] = {
                "uid": str(uid),
                "school_uid": school_uid,
                "email": email,
                "name": name or f"User {uid}",
            }

    def add_enrollment(
        self, section_id: str, uid: str, *, enrollment_id: str | None = None, status: int = 1, admin: int = 0
    ) -> str:
        """Enrol `uid` (added as a user if unknown) in the section (created if unknown); the enrollment id."""
        if str(uid) not in self.users:
            self.add_user(str(uid))
        with self.lock:
            if enrollment_id is None:
                self._next_enrollment += 1
                enrollment_id = str(self._next_enrollment)
            section = self.sections.setdefault(str(section_id), {})
            section[str(enrollment_id)] = {"id": str(enrollment_id), "uid": str(uid), "status": status, "admin": admin}
            return str(enrollment_id)

    def remove_enrollment(self, section_id: str, uid: str) -> None:
        with self.lock:
            section = self.sections.get(str(section_id), {})
            for enrollment_id in [e for e, row in section.items() if row["uid"] == str(uid)]:
                del section[enrollment_id]

    def add_assignment(
        self, section_id: str, assignment_id: str, *, max_points: float = 100.0, title: str = "", grading_scale: int = 0
    ) -> None:
        with self.lock:
            self.sections.setdefault(str(section_id), {})
            self.assignments[(str(section_id), str(assignment_id))] = {
                "max_points": float(max_points),
                "title": title or f"Assignment {assignment_id}",
                "grading_scale": grading_scale,
            }

    # --- the API --------------------------------------------------------------------------------------

    @staticmethod
    def _error(status: int, message: str) -> Response:
        return Response(
            json.dumps({"status": status, "message": message}), status=status, content_type="application/json"
        )

    @staticmethod
    def _json(payload: Any, status: int = 200) -> Response:
        return Response(json.dumps(payload), status=status, content_type="application/json")

    def _target(self) -> str:
        """The request target exactly as sent: path and query (werkzeug's request.path is decoded)."""
        return request.environ.get("RAW_URI") or request.full_path.rstrip("?")

    def _verify(self) -> str | None:
        """None when the request is authentic; else why not (also recorded in signature_failures)."""
        problem = self._check_oauth()
        if problem is not None:
            with self.lock:
                self.signature_failures.append(problem)
        return problem

    def _check_oauth(self) -> str | None:
        header = request.headers.get("Authorization", "")
        if header[:6].lower() != "oauth ":
            return "no OAuth Authorization header"
        try:
            oauth = {key: unescape(value) for key, value in parse_authorization_header(header)}
        except ValueError as exc:
            return f"malformed Authorization header: {exc}"
        if oauth.get("realm") != REALM:
            return f"realm {oauth.get('realm')!r} is not {REALM!r}"
        missing = [name for name in REQUIRED_OAUTH if not oauth.get(name)]
        if missing:
            return f"missing {', '.join(missing)}"
        if self.require_oauth_token and oauth.get("oauth_token") != "":
            return "oauth_token must be present and empty for two-legged requests"
        if oauth.get("oauth_version", "1.0") != "1.0":
            return f"oauth_version {oauth['oauth_version']!r} is not 1.0"
        method = oauth["oauth_signature_method"]
        if method == "PLAINTEXT" and request.scheme != "https" and request.host.rsplit(":", 1)[0] != "127.0.0.1":
            with self.lock:
                self.plaintext_exposures.append(request.host)
        if method not in ("HMAC-SHA1", "PLAINTEXT"):
            return f"signature method {method!r} is neither HMAC-SHA1 nor PLAINTEXT"
        if oauth["oauth_consumer_key"] != self.consumer_key:
            return f"unknown consumer key {oauth['oauth_consumer_key']!r}"
        timestamp = oauth["oauth_timestamp"]
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > TIMESTAMP_WINDOW:
            return f"timestamp {timestamp!r} is not within {TIMESTAMP_WINDOW} s of now"
        with self.lock:
            if (timestamp, oauth["oauth_nonce"]) in self.seen_nonces:
                self.replays_rejected += 1
                return REPLAY_MESSAGE
            self.seen_nonces.add((timestamp, oauth["oauth_nonce"]))
        uri = f"http://{request.host}{self._target()}"
        try:
            signed = OAuthRequest(uri, request.method, headers={"Authorization": header})
            # The query and the header's oauth parameters (with the empty oauth_token); never the JSON body.
            signed.params = collect_parameters(uri_query=urlsplit(uri).query, headers={"Authorization": header})
        except ValueError as exc:
            return f"cannot verify: {exc}"
        signed.signature = oauth["oauth_signature"]
        if method == "PLAINTEXT":
            valid = verify_plaintext(signed, self.consumer_secret, "")
        else:
            valid = verify_hmac_sha1(signed, self.consumer_secret, "")
        if not valid:
            if method == "PLAINTEXT":
                return "invalid PLAINTEXT signature"
            base = signature_base_string(request.method, base_string_uri(uri), normalize_parameters(signed.params))
            return f"invalid HMAC-SHA1 signature; base string {base}"
        return None

    def _take_fault(self, method: str, target: str) -> Response | None:
        with self.lock:
            fault = next((f for f in self.faults if f.matches(method, target)), None)
            if fault is None:
                return None
            fault.remaining -= 1
            if fault.remaining <= 0:
                self.faults.remove(fault)
        if fault.hold:
            self.stopping.wait(fault.hold)
        headers = dict(fault.headers)
        content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "application/json")
        headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
        return Response(fault.body, status=fault.status, headers=headers, content_type=content_type)

    def _user_json(self, user: dict[str, Any]) -> dict[str, Any]:
        return {
            "uid": user["uid"],
            "id": _wire_id(user["uid"]),
            "name_display": user["name"],
            "primary_email": user["email"] or "",
            "school_uid": user["school_uid"] or "",
        }

    def _enrollments(self, section_id: str) -> Response:
        with self.lock:
            section = self.sections.get(section_id)
            rows = list(section.values()) if section is not None else None
        if rows is None:
            return self._error(404, f"Section {section_id} not found")
        try:
            start = int(request.args.get("start", "0"))
            limit = int(request.args.get("limit", str(DEFAULT_LIMIT)))
        except ValueError:
            return self._error(400, "start and limit must be integers")
        if start < 0 or limit < 1:
            return self._error(400, "start must be >= 0 and limit >= 1")
        if request.args.get("uid"):
            wanted = set(request.args["uid"].split(","))
            rows = [r for r in rows if r["uid"] in wanted]
        if request.args.get("enrollment_status"):
            statuses = set(request.args["enrollment_status"].split(","))
            rows = [r for r in rows if str(r["status"]) in statuses]
        size = min(limit, self.page_size)
        page = rows[start : start + size]
        enrollments = []
        for row in page:
            user = self.users.get(row["uid"], {})
            enrollments.append(
                {
                    "id": row["id"],
                    "uid": row["uid"],
                    "school_uid": user.get("school_uid") or "",
                    "name_display": user.get("name", ""),
                    "admin": row["admin"],
                    "status": str(row["status"]),
                }
            )
        links = {"self": self.origin + self._target()}
        if start + size < len(rows):
            args = dict(request.args)
            args["start"] = str(start + size)
            args["limit"] = str(limit)
            links["next"] = f"{self.origin}{request.path}?{urlencode(args, safe=',')}"
        with self.lock:
            self.enrollment_pages_served += 1
        return self._json({"enrollment": enrollments, "total": str(len(rows)), "links": links})

    def _check_item(self, section_id: str, item: Any) -> tuple[int, str] | None:
        """None when the grade item can be stored; else its response_code and message."""
        if not isinstance(item, dict):
            return 400, "grade must be an object"
        if item.get("type", "assignment") not in ("assignment", "discussion"):
            return 400, f"Invalid type {item.get('type')!r}"
        assignment_id, enrollment_id = item.get("assignment_id"), item.get("enrollment_id")
        for name, value in (("assignment_id", assignment_id), ("enrollment_id", enrollment_id)):
            if isinstance(value, bool) or not isinstance(value, int | str) or str(value) == "":
                return 400, f"Missing or invalid {name}"
        if str(enrollment_id) in self.failing_enrollments:
            return self.failing_enrollments[str(enrollment_id)]
        if (section_id, str(assignment_id)) not in self.assignments:
            return 404, f"Assignment {assignment_id} not found in section {section_id}"
        if str(enrollment_id) not in self.sections.get(section_id, {}):
            return 404, f"Enrollment {enrollment_id} not found in section {section_id}"
        exception = item.get("exception", 0)
        if exception not in (0, 1, 2) or isinstance(exception, bool):
            return 400, f"Invalid exception {exception!r}"
        if exception == 0 and not _is_number(item.get("grade")):
            return 400, f"Invalid grade {item.get('grade')!r}: a number is required"
        if exception > 0 and item.get("grade") is not None and not _is_number(item["grade"]):
            return 400, f"Invalid grade {item.get('grade')!r}"
        if "comment" in item and not isinstance(item["comment"], str):
            return 400, "comment must be a string"
        if "comment_status" in item and (
            item["comment_status"] not in (0, 1) or isinstance(item["comment_status"], bool)
        ):
            return 400, f"Invalid comment_status {item['comment_status']!r}"
        return None

    def _put_grades(self, section_id: str) -> Response:
        if request.mimetype != "application/json":
            return self._error(415, "Content-Type must be application/json")
        try:
            body = json.loads(request.get_data())
            items = body["grades"]["grade"]
        except (ValueError, KeyError, TypeError):
            return self._error(400, 'Body must be {"grades": {"grade": [...]}}')
        if not isinstance(items, list):
            return self._error(400, "grades.grade must be a list")
        with self.lock:
            self.grade_puts.append((section_id, items))
            known = section_id in self.sections
        if not known:
            return self._error(404, f"Section {section_id} not found")
        if not items:
            return self._error(400, "no grades")
        if len(items) > MAX_GRADES_PER_PUT:
            return self._error(400, f"too many grades: {len(items)} in one request (at most {MAX_GRADES_PER_PUT})")
        answers = []
        all_stored = True
        with self.lock:
            for item in items:
                failure = self._check_item(section_id, item)
                answer: dict[str, Any] = {
                    "assignment_id": item.get("assignment_id") if isinstance(item, dict) else None,
                    "enrollment_id": item.get("enrollment_id") if isinstance(item, dict) else None,
                    "response_code": 200,
                }
                if failure is not None:
                    answer["response_code"], answer["message"] = failure
                    all_stored = False
                else:
                    key = (section_id, str(item["assignment_id"]), str(item["enrollment_id"]))
                    previous = self.grades.get(key, {})
                    exception = item.get("exception", 0)
                    self.grades[key] = {
                        "grade": None if exception > 0 else item["grade"],
                        "comment": item.get("comment", previous.get("comment", "")),
                        "comment_status": item.get("comment_status", previous.get("comment_status")),
                        "exception": exception,
                        "timestamp": int(time.time()),
                    }
                answers.append(answer)
        if all_stored and self.grades_answer == "no_content":
            return Response(status=204)
        return self._json({"grades": {"grade": answers}})

    def _get_grades(self, section_id: str) -> Response:
        with self.lock:
            if section_id not in self.sections:
                return self._error(404, f"Section {section_id} not found")
            stored = sorted(self.grades.items())
        assignment_id = request.args.get("assignment_id")
        enrollment_id = request.args.get("enrollment_id")
        found = []
        for (section, assignment, enrollment), value in stored:
            if section != section_id or assignment_id not in (None, assignment):
                continue
            if enrollment_id not in (None, enrollment):
                continue
            max_points = self.assignments.get((section, assignment), {}).get("max_points", 100.0)
            found.append(
                {
                    "enrollment_id": _wire_id(enrollment),
                    "assignment_id": _wire_id(assignment),
                    "grade": value["grade"],
                    "exception": value["exception"],
                    "max_points": int(max_points) if float(max_points).is_integer() else float(max_points),
                    "timestamp": value["timestamp"],
                    "comment": value["comment"],
                    "comment_status": value["comment_status"],
                    "type": "assignment",
                }
            )
        return self._json({"grades": {"grade": found}})

    def _build(self) -> Flask:
        app = Flask("fake-schoology")

        @app.before_request
        def authenticate() -> Response | None:
            if self.latency:
                time.sleep(self.latency)
            problem = self._verify()
            if problem == REPLAY_MESSAGE:
                return Response(REPLAY_MESSAGE, status=401, content_type="text/plain")
            if problem is not None:
                return self._error(401, f"Authentication failed: {problem}")
            target = self._target()
            with self.lock:
                self.requests.append((request.method, target))
            fault = self._take_fault(request.method, target)
            if fault is not None:
                return fault
            accept = request.headers.get("Accept")
            if not accept or request.accept_mimetypes.quality("application/json") <= 0:
                return self._error(406, "Accept must allow application/json")
            return None

        @app.get("/v1/users/me")
        def users_me() -> Any:
            return Response(status=303, headers={"Location": f"{self.url}/users/{self.me_uid}"})

        @app.get("/v1/users/ext/<school_uid>")
        def users_ext(school_uid: str) -> Any:
            with self.lock:
                uid = next((u["uid"] for u in self.users.values() if u["school_uid"] == school_uid), None)
            if uid is None:
                return self._error(404, f"User with school_uid {school_uid} not found")
            return Response(status=303, headers={"Location": f"{self.url}/users/{uid}"})

        @app.get("/v1/users/<uid>")
        def user(uid: str) -> Any:
            found = self.users.get(uid)
            if found is None:
                return self._error(404, f"User {uid} not found")
            return self._json(self._user_json(found))

        @app.get("/v1/sections/<section_id>/enrollments")
        def enrollments(section_id: str) -> Any:
            return self._enrollments(section_id)

        @app.get("/v1/sections/<section_id>/assignments/<assignment_id>")
        def assignment(section_id: str, assignment_id: str) -> Any:
            found = self.assignments.get((section_id, assignment_id))
            if found is None:
                return self._error(404, f"Assignment {assignment_id} not found in section {section_id}")
            return self._json(
                {
                    "id": _wire_id(assignment_id),
                    "title": found["title"],
                    "max_points": _points(found["max_points"]),
                    "grading_scale": str(found["grading_scale"]),
                    "type": "assignment",
                    "published": 1,
                    "grade_item_id": _wire_id(assignment_id),
                }
            )

        @app.route("/v1/sections/<section_id>/grades", methods=["GET", "PUT"])
        def grades(section_id: str) -> Any:
            return self._put_grades(section_id) if request.method == "PUT" else self._get_grades(section_id)

        return app
