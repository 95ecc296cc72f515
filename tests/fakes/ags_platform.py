"""A small LTI 1.3 platform's token and AGS endpoints, as a real web app on 127.0.0.1.

It checks what a real platform checks, and more than `lti1p3platform` does: the client assertion is verified
against Passback's published JWKS (fetched over HTTP, the signature checked with `cryptography` directly, not
with the library Passback signs with), with `alg`, `iss` = `sub` = client_id, `aud` = the token URL, `exp`,
`iat` and a never-seen `jti`; bearer tokens and their scopes on every service call; exact media types; score
bodies. Line item URLs carry a Moodle-style query string so that `/scores` must be put on the path.

Two gradebooks, chosen with `lms=`, each keeping what its LMS keeps (`held(user)`), not merely the last body:
- "canvas" (the default; canvas-lms `Lti::IMS::ScoresController`): a timestamp earlier than the stored one is
  refused with 400 (an equal one is accepted); `scoreGiven` counts only with `gradingProgress` FullyGraded or
  PendingManual, any other progress sets the score to nil unless the submission extension carries
  `"preserve_score": true`.
- "moodle" (moodle `gradebookservices/classes/local/resources/scores.php`): the stored timestamp is compared
  in whole seconds and an equal or later one is refused with `409 Refusing score with an earlier timestamp
  for item N and user U` (in the reason phrase; the body is `[]`); `scoreGiven` is dropped unless
  `gradingProgress` is FullyGraded.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from flask import Flask, Response, jsonify, request
from werkzeug.serving import make_server

MEDIA_LINEITEM = "application/vnd.ims.lis.v2.lineitem+json"
MEDIA_CONTAINER = "application/vnd.ims.lis.v2.lineitemcontainer+json"
MEDIA_SCORE = "application/vnd.ims.lis.v1.score+json"
SCOPE_LINEITEM = "https://purl.imsglobal.org/spec/lti-ags/scope/lineitem"
SCOPE_SCORE = "https://purl.imsglobal.org/spec/lti-ags/scope/score"
SCOPE_NRPS = "https://purl.imsglobal.org/spec/lti-nrps/scope/contextmembership.readonly"
MEDIA_MEMBERSHIPS = "application/vnd.ims.lti-nrps.v2.membershipcontainer+json"
ACTIVITY = {"Initialized", "Started", "InProgress", "Submitted", "Completed"}
GRADING = {"FullyGraded", "Pending", "PendingManual", "Failed", "NotReady"}
CANVAS_SUBMISSION = "https://canvas.instructure.com/lti/submission"
# The gradingProgress values with which each LMS counts scoreGiven.
COUNTED = {"canvas": {"FullyGraded", "PendingManual"}, "moodle": {"FullyGraded"}}
PAGE_SIZE = 2


def _b64(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def _rsa_public(jwk: dict[str, Any]) -> rsa.RSAPublicKey:
    n = int.from_bytes(_b64(jwk["n"]), "big")
    e = int.from_bytes(_b64(jwk["e"]), "big")
    return rsa.RSAPublicNumbers(e, n).public_key()


@dataclass
class Fault:
    status: int
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    remaining: int = 1
    content_type: str = "application/json"
    # Hold the answer this many seconds (or until the fake stops) before sending it: a platform past the deadline.
    hold: float = 0.0


class AgsPlatform:
    """Start with `with AgsPlatform(client_id, tool_jwks_url) as platform:`; `platform.url` is its base."""

    def __init__(
        self,
        client_id: str,
        tool_jwks_url: str,
        *,
        token_lifetime: int = 3600,
        schoology_rules: bool = False,
        lms: Literal["canvas", "moodle"] = "canvas",
    ) -> None:
        self.client_id = client_id
        self.lms = lms
        # Schoology's further refusals: its token endpoint takes JWT client assertions only, never HTTP Basic
        # (Schoology docs "LTI Apps"); its line item queries know no resource_link_id filter (code-dot-org#57068).
        self.schoology_rules = schoology_rules
        self.lineitem_queries: list[dict[str, str]] = []
        # Where `Link: rel=next` pages of the line items point (a platform may send another host's URL).
        self.page_base: str | None = None
        # A platform that ignores the resource_link_id filter (and leaves the tool to pick its link's item).
        self.ignores_link_filter = False
        self.tool_jwks_url = tool_jwks_url
        self.token_lifetime = token_lifetime
        self.lock = threading.Lock()
        self.tokens: dict[str, tuple[set[str], float]] = {}
        self.token_requests = 0
        self.assertion_errors: list[str] = []
        self.seen_jti: set[str] = set()
        self.lineitems: dict[int, dict[str, Any]] = {}
        self.scores: dict[tuple[int, str], dict[str, Any]] = {}
        # What the gradebook holds per (line item, user): the score (None: no score) and its stored time.
        self.gradebook: dict[tuple[int, str], tuple[float | None, datetime]] = {}
        # Every score POST refused for its timestamp: (user, timestamp sent).
        self.timestamp_refusals: list[tuple[str, str]] = []
        self.score_posts = 0
        # Every request to a scores endpoint, refused by a fault or not.
        self.score_requests = 0
        self.lineitem_posts: list[dict[str, Any]] = []
        self.faults: list[Fault] = []
        self.members: list[dict[str, Any]] = []
        # Who each resource link is assigned to (a section), by link id: like Canvas, a score for anyone else
        # on that link's line item is refused with 422. Links not listed take everyone.
        self.link_students: dict[str, set[str]] = {}
        self.membership_pages_served = 0
        self.stopping = threading.Event()
        self.app = self._build()
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.token_url = self.url + "/login/oauth2/token"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

    def __enter__(self) -> AgsPlatform:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.thread.join(5)

    # --- helpers for tests ---------------------------------------------------------------------------

    def add_lineitem(
        self, resource_id: str, label: str = "Item", score_maximum: float = 10.0, resource_link_id: str | None = None
    ) -> str:
        with self.lock:
            number = len(self.lineitems) + 1
            item = {
                "id": self.lineitem_url(number),
                "label": label,
                "scoreMaximum": score_maximum,
                "resourceId": resource_id,
                "tag": "",
                "resourceLinkId": resource_link_id,
            }
            self.lineitems[number] = item
            return str(item["id"])

    def lineitem_url(self, number: int) -> str:
        return f"{self.url}/api/lti/courses/1/line_items/{number}/lineitem?type_id=3"

    @property
    def lineitems_url(self) -> str:
        return f"{self.url}/api/lti/courses/1/line_items?type_id=3"

    def fail_next(
        self,
        status: int,
        body: str = "",
        headers: dict[str, str] | None = None,
        count: int = 1,
        content_type: str = "application/json",
        hold: float = 0.0,
    ) -> None:
        self.faults.append(Fault(status, body, headers or {}, count, content_type, hold))

    def score_of(self, user_id: str, lineitem_number: int = 1) -> dict[str, Any] | None:
        """The last score body the platform accepted for the user (not what the gradebook holds: see held)."""
        return self.scores.get((lineitem_number, user_id))

    def held(self, user_id: str, lineitem_number: int = 1) -> float | None:
        """The score the gradebook holds for the user, on the score's own scale; None: no score."""
        found = self.gradebook.get((lineitem_number, user_id))
        return found[0] if found else None

    def _refuse_timestamp(self, number: int, body: dict[str, Any], stamp: datetime) -> Response | None:
        previous = self.gradebook.get((number, body["userId"]))
        if previous is None:
            return None
        if self.lms == "moodle":
            # Moodle: `timemodified >= strtotime(timestamp)`, both whole seconds.
            if int(previous[1].timestamp()) < int(stamp.timestamp()):
                return None
            self.timestamp_refusals.append((body["userId"], body["timestamp"]))
            return Response(
                "[]",
                status=f"409 Refusing score with an earlier timestamp for item {number} and user {body['userId']}",
                content_type=MEDIA_SCORE,
            )
        if previous[1] <= stamp:
            return None
        self.timestamp_refusals.append((body["userId"], body["timestamp"]))
        return jsonify(
            errors={
                "type": "bad_request",
                "message": f"Provided timestamp of {body['timestamp']} before last updated "
                f"timestamp of {previous[1].isoformat()}",
            }
        ), 400

    def _store(self, number: int, body: dict[str, Any], stamp: datetime) -> None:
        key = (number, body["userId"])
        given = body.get("scoreGiven")
        if body["gradingProgress"] not in COUNTED[self.lms]:
            given = None
        if given is None and self.lms == "canvas":
            extension = body.get(CANVAS_SUBMISSION)
            if isinstance(extension, dict) and extension.get("preserve_score") is True and key in self.gradebook:
                given = self.gradebook[key][0]
        self.gradebook[key] = (given, stamp)

    # --- the platform ---------------------------------------------------------------------------------

    def _verify_assertion(self, assertion: str) -> str | None:
        try:
            header_b64, claims_b64, signature_b64 = assertion.split(".")
            header = json.loads(_b64(header_b64))
            claims = json.loads(_b64(claims_b64))
        except ValueError:
            return "assertion is not a JWT"
        if header.get("alg") != "RS256":
            return f"alg {header.get('alg')!r} is not RS256"
        keys = requests.get(self.tool_jwks_url, timeout=5).json()["keys"]
        key = next((k for k in keys if k.get("kid") == header.get("kid")), None)
        if key is None:
            return f"unknown kid {header.get('kid')!r}"
        try:
            _rsa_public(key).verify(
                _b64(signature_b64), f"{header_b64}.{claims_b64}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
        except Exception:
            return "bad signature"
        now = time.time()
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if claims.get("iss") != self.client_id or claims.get("sub") != self.client_id:
            return "iss and sub must be the client_id"
        if self.token_url not in audiences:
            return "the 'aud' is invalid"
        if not isinstance(claims.get("exp"), int | float) or claims["exp"] < now:
            return "expired"
        if not isinstance(claims.get("iat"), int | float) or claims["iat"] > now + 30 or claims["iat"] < now - 300:
            return "iat out of range"
        if claims["exp"] - claims["iat"] > 3600:
            return "assertion lives too long"
        jti = claims.get("jti")
        if not jti or jti in self.seen_jti:
            return "jti missing or replayed"
        self.seen_jti.add(jti)
        return None

    def _bearer_scopes(self) -> set[str] | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return None
        found = self.tokens.get(header[7:])
        if found is None or found[1] < time.time():
            return None
        return found[0]

    def _take_fault(self) -> Response | None:
        with self.lock:
            if not self.faults:
                return None
            fault = self.faults[0]
            fault.remaining -= 1
            if fault.remaining <= 0:
                self.faults.pop(0)
        if fault.hold:
            self.stopping.wait(fault.hold)
        return Response(fault.body, status=fault.status, headers=fault.headers, content_type=fault.content_type)

    def _build(self) -> Flask:
        app = Flask("fake-ags-platform")

        @app.post("/login/oauth2/token")
        def token() -> Any:
            form = request.form
            with self.lock:
                self.token_requests += 1
            if request.mimetype != "application/x-www-form-urlencoded":
                return jsonify(error="invalid_request", error_description="form encoding required"), 400
            if self.schoology_rules and "Authorization" in request.headers:
                return jsonify(error="invalid_client", error_description="JWT client assertion only"), 401
            if form.get("grant_type") != "client_credentials" or form.get("client_assertion_type") != (
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            ):
                return jsonify(error="unsupported_grant_type"), 400
            problem = self._verify_assertion(form.get("client_assertion", ""))
            if problem:
                self.assertion_errors.append(problem)
                return jsonify(error="invalid_client", error_description=problem), 401
            scopes = set(form.get("scope", "").split())
            if not scopes or not scopes <= {SCOPE_LINEITEM, SCOPE_SCORE, SCOPE_NRPS}:
                return jsonify(error="invalid_scope"), 400
            access = secrets.token_urlsafe(24)
            self.tokens[access] = (scopes, time.time() + self.token_lifetime)
            return jsonify(
                access_token=access, token_type="Bearer", expires_in=self.token_lifetime, scope=" ".join(sorted(scopes))
            )

        @app.get("/api/lti/courses/1/line_items")
        def list_lineitems() -> Any:
            scopes = self._bearer_scopes()
            if scopes is None or SCOPE_LINEITEM not in scopes:
                return jsonify(errors={"type": "unauthorized", "message": "Invalid access token"}), 401
            if request.headers.get("Accept") != MEDIA_CONTAINER:
                return jsonify(error="wrong Accept"), 406
            if request.args.get("type_id") != "3":
                return jsonify(error="No handler found"), 400
            self.lineitem_queries.append(dict(request.args))
            if self.schoology_rules and "resource_link_id" in request.args:
                return jsonify(error='"resource_link_id" is not allowed'), 400
            # The container filters of AGS §3.2 (resource_id, resource_link_id), as Canvas and Moodle apply them.
            items = [
                i
                for i in self.lineitems.values()
                if ("resource_id" not in request.args or i["resourceId"] == request.args["resource_id"])
                and (
                    "resource_link_id" not in request.args
                    or self.ignores_link_filter
                    or i["resourceLinkId"] == request.args["resource_link_id"]
                )
            ]
            page = int(request.args.get("page", "0"))
            chunk = items[page * PAGE_SIZE : (page + 1) * PAGE_SIZE]
            response = Response(json.dumps(chunk), content_type=MEDIA_CONTAINER)
            if (page + 1) * PAGE_SIZE < len(items):
                args = dict(request.args)
                args["page"] = str(page + 1)
                query = "&".join(f"{k}={v}" for k, v in args.items())
                # Capitalised header and rel, as platforms are free to send them (RFC 8288).
                response.headers["LINK"] = f'<{self.page_base or self.url}{request.path}?{query}>; REL="Next"'
            return response

        @app.post("/api/lti/courses/1/line_items")
        def create_lineitem() -> Any:
            scopes = self._bearer_scopes()
            if scopes is None or SCOPE_LINEITEM not in scopes:
                return jsonify(errors={"type": "unauthorized", "message": "Invalid access token"}), 401
            if request.mimetype != MEDIA_LINEITEM:
                return jsonify(error=f"Content-Type must be {MEDIA_LINEITEM}"), 415
            body = request.get_json(force=True)
            self.lineitem_posts.append(body)
            if "id" in body:
                return jsonify(error='Invalid parameter "body.id": "id" is not allowed'), 400
            if (
                not body.get("label")
                or not isinstance(body.get("scoreMaximum"), int | float)
                or (body["scoreMaximum"] <= 0)
            ):
                return jsonify(errors={"type": "bad_request", "message": "label and scoreMaximum required"}), 400
            number = int(
                self.add_lineitem(
                    body.get("resourceId"), body["label"], body["scoreMaximum"], body.get("resourceLinkId")
                )
                .split("/line_items/")[1]
                .split("/")[0]
            )
            item = dict(self.lineitems[number])
            self.lineitems[number]["tag"] = body.get("tag", "")
            return Response(json.dumps(item), status=201, content_type=MEDIA_LINEITEM)

        @app.post("/api/lti/courses/1/line_items/<int:number>/lineitem/scores")
        def post_score(number: int) -> Any:
            with self.lock:
                self.score_requests += 1
            scopes = self._bearer_scopes()
            if scopes is None or SCOPE_SCORE not in scopes:
                return jsonify(errors={"type": "unauthorized", "message": "Access token expired"}), 401
            fault = self._take_fault()
            if fault is not None:
                return fault
            if request.args.get("type_id") != "3":
                return jsonify(error="No handler found"), 400
            self.lineitem_queries.append(dict(request.args))
            if self.schoology_rules and "resource_link_id" in request.args:
                return jsonify(error='"resource_link_id" is not allowed'), 400
            if request.content_type != MEDIA_SCORE:
                return jsonify(error="Incorrect score received: content type"), 400
            if number not in self.lineitems:
                return jsonify(errors=[{"message": "The specified resource does not exist."}]), 404
            body = request.get_json(force=True)
            problems = [
                name for name in ("userId", "timestamp", "activityProgress", "gradingProgress") if not body.get(name)
            ]
            if "scoreGiven" in body and "scoreMaximum" not in body:
                problems.append("scoreMaximum")
            if body.get("activityProgress") not in ACTIVITY or body.get("gradingProgress") not in GRADING:
                problems.append("progress")
            try:
                stamp = datetime.fromisoformat(body["timestamp"])
                if stamp.tzinfo is None or "." not in body["timestamp"]:
                    problems.append("timestamp precision/offset")
            except (KeyError, ValueError):
                problems.append("timestamp")
                stamp = None
            if problems:
                return jsonify(errors={"type": "bad_request", "message": f"invalid: {problems}"}), 400
            assert stamp is not None
            assigned = self.link_students.get(str(self.lineitems[number].get("resourceLinkId")))
            if assigned is not None and body["userId"] not in assigned:
                return jsonify(errors=[{"message": "User not found in course or is not a student"}]), 422
            with self.lock:
                self.score_posts += 1
                refused = self._refuse_timestamp(number, body, stamp)
                if refused is not None:
                    return refused
                self.scores[(number, body["userId"])] = body
                self._store(number, body, stamp)
            if self.lms == "moodle":
                return Response("", status=200)  # Moodle answers 200 with no useful body
            return Response(
                json.dumps({"resultUrl": f"{self.url}/results/{number}/{body['userId']}"}), content_type=MEDIA_SCORE
            )

        @app.get("/api/lti/courses/1/names_and_roles")
        def memberships() -> Any:
            scopes = self._bearer_scopes()
            if scopes is None or SCOPE_NRPS not in scopes:
                return jsonify(errors={"type": "unauthorized", "message": "Invalid access token"}), 401
            # Schoology's rule, the strictest: exactly the membership container type (Simon-Initiative/lti_1p3#27).
            if request.headers.get("Accept") != MEDIA_MEMBERSHIPS:
                return jsonify(error="handleNamesRoles: Invalid Accept Header"), 400
            limit = int(request.args.get("limit", "100"))
            if limit > 100:
                return jsonify(error="limit too large"), 400
            page = int(request.args.get("page", "0"))
            self.membership_pages_served += 1
            chunk = self.members[page * limit : (page + 1) * limit]
            response = Response(
                json.dumps({"id": request.url, "context": {"id": "course-7"}, "members": chunk}),
                content_type=MEDIA_MEMBERSHIPS,
            )
            if (page + 1) * limit < len(self.members):
                response.headers["Link"] = f'<{self.url}{request.path}?limit={limit}&page={page + 1}>; rel="next"'
            return response

        return app

    @property
    def memberships_url(self) -> str:
        return f"{self.url}/api/lti/courses/1/names_and_roles"
