"""A small LTI 1.1 tool consumer (an LMS such as Canvas or Moodle), as a real web app on 127.0.0.1.

It does both halves of LTI 1.1 that Passback meets:

- **Launches.** `launch()` builds a Basic LTI launch form signed with the `lti` package's `ToolConsumer`
  (OAuth 1.0a HMAC-SHA1 over the form, as an LMS does) and posts it to Passback, the way a browser would.
- **Basic Outcomes.** The outcome service URL takes POX `replaceResult`, `readResult` and `deleteResult`
  requests (LTI 1.1 Implementation Guide §6). Every request is verified independently of Passback's code: the OAuth
  signature with oauthlib's `SignatureOnlyEndpoint` and a RequestValidator that knows only this consumer's
  key and secret, the timestamp window and a never-seen nonce (Canvas answers 401 to each failure), the body
  hash `base64(sha1(body))` against `oauth_body_hash`, then `Content-Type: application/xml` exactly (Canvas:
  415 otherwise). The body is read with the `lti` package's `OutcomeRequest.process_xml`, and the Canvas
  extensions at the positions Canvas reads them (canvas-lms lib/basic_lti/basic_outcomes.rb). Scores follow
  Canvas's rules: `textString` a decimal in 0..1 with `.`, else `failure` "Score is not between 0 and 1" (HTTP 422,
  or 200 in Moodle mode).

Tests script the answers with `answer_next()` / `fail_next()`; `calls` keeps every outcome request, verified
or not, and `gradebook` what was stored, by sourcedId. A scripted envelope may name another message
(`message_ref`) or operation (`operation_ref`), carry another body (`body_xml`) or namespace (Canvas's and old
Moodle's `lis/oms1p0/pox`), as a confused proxy or consumer would; a `processing` answer stores nothing yet
(accepted and pending). Launches carry `custom_canvas_assignment_points_possible` like Canvas's
(`$Canvas.assignment.pointsPossible`), and `resultTotalScore` is taken as points on that scale.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import requests
from flask import Flask, Response, request
from lti import OutcomeRequest, ToolConsumer
from lti.tool_outbound import ToolOutbound
from lxml import etree
from oauthlib.oauth1 import RequestValidator, SignatureOnlyEndpoint
from oauthlib.oauth1.rfc5849 import SIGNATURE_HMAC_SHA1
from oauthlib.oauth1.rfc5849.utils import parse_authorization_header, unescape
from werkzeug.serving import make_server

NS = "http://www.imsglobal.org/services/ltiv1p1/xsd/imsoms_v1p0"
CANVAS_EXTENSIONS = {
    "ext_outcome_data_values_accepted": "url,text",
    "ext_outcome_result_total_score_accepted": "true",
    "ext_outcome_submission_submitted_at_accepted": "true",
    "ext_outcome_submission_needs_additional_review_accepted": "true",
    "ext_outcome_submission_prioritize_non_tool_grade_accepted": "true",
}
OLD_NS = "http://www.imsglobal.org/lis/oms1p0/pox"
DECIMAL = re.compile(r"^\s*\d+(\.\d+)?\s*$")


def local(element: Any) -> str:
    return etree.QName(element).localname


def child(element: Any, path: str) -> Any | None:
    """The first element at a '/'-separated path of local names under `element` (namespaces ignored)."""
    node = element
    for name in path.split("/"):
        if node is None:
            return None
        node = next((c for c in node if isinstance(c.tag, str) and local(c) == name), None)
    return node


def child_names(element: Any) -> list[str]:
    return [local(c) for c in element if isinstance(c.tag, str)]


@dataclass
class Answer:
    """A scripted answer to the next outcome request(s): a POX envelope with `code_major`, or a raw body."""

    status: int
    code_major: str | None = None
    description: str = ""
    body: str | bytes = ""
    content_type: str = "application/xml"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    remaining: int = 1
    extra_status_xml: str = ""
    message_ref: str | None = None  # None: echo the request's imsx_messageIdentifier
    operation_ref: str | None = None  # None: the request's operation, as Canvas names it
    body_xml: str | None = None  # None: <{operation}Response/>
    namespace: str = NS


@dataclass
class OutcomeCall:
    """One outcome request as received, and what the consumer made of it."""

    body: bytes
    headers: dict[str, str]
    url: str
    oauth: dict[str, str]
    problem: str | None = None  # why verification failed; None when it passed
    operation: str | None = None  # replaceResult, readResult, deleteResult
    sourcedid: str | None = None
    message_identifier: str | None = None
    score: str | None = None  # resultScore/textString exactly as sent
    tree: Any = None
    answered: int | None = None

    @property
    def verified(self) -> bool:
        return self.problem is None

    @property
    def operation_element(self) -> Any:
        return child(self.tree, f"imsx_POXBody/{self.operation}Request") if self.tree is not None else None


@dataclass
class GradebookEntry:
    score: str | None = None
    total_score: str | None = None
    result_data: dict[str, str] = field(default_factory=dict)
    submission_details: dict[str, Any] = field(default_factory=dict)
    updates: int = 0


class _Validator(RequestValidator):
    """Knows one consumer key and secret; every nonce is single-use (Canvas keeps them for its window)."""

    enforce_ssl = False
    dummy_client = "dummy-client-key"
    timestamp_lifetime = 600

    def __init__(self, consumer: Lti11Consumer) -> None:
        super().__init__()
        self.consumer = consumer
        self.local = threading.local()

    @property
    def last_problem(self) -> str | None:
        return getattr(self.local, "problem", None)

    @last_problem.setter
    def last_problem(self, value: str | None) -> None:
        self.local.problem = value

    @property
    def allowed_signature_methods(self) -> tuple[str, ...]:
        return (SIGNATURE_HMAC_SHA1,)

    def check_client_key(self, client_key: str) -> bool:
        return bool(client_key) and len(client_key) <= 255

    def check_nonce(self, nonce: str) -> bool:
        return bool(nonce) and len(nonce) <= 255 and nonce.isprintable()

    def validate_client_key(self, client_key: str, request: Any) -> bool:
        if client_key != self.consumer.key:
            self.last_problem = f"unknown consumer key {client_key!r}"
            return False
        return True

    def get_client_secret(self, client_key: str, request: Any) -> str:
        return self.consumer.secret if client_key == self.consumer.key else "dummy-secret"

    def validate_timestamp_and_nonce(
        self,
        client_key: str,
        timestamp: str,
        nonce: str,
        request: Any,
        request_token: str | None = None,
        access_token: str | None = None,
    ) -> bool:
        with self.consumer.lock:
            if (client_key, nonce) in self.consumer.seen_nonces:
                self.last_problem = f"nonce {nonce!r} reused"
                return False
            self.consumer.seen_nonces.add((client_key, nonce))
        return True


class Lti11Consumer:
    """Start with `with Lti11Consumer(key, secret) as consumer:`; `consumer.outcome_url` is the outcome service.

    `failure_status` is the HTTP status of a `failure` envelope: 422 like Canvas, or 200 like Moodle.
    """

    def __init__(
        self,
        key: str,
        secret: str,
        *,
        session: requests.Session | None = None,
        failure_status: int = 422,
        points_possible: float = 10.0,
    ) -> None:
        self.key = key
        self.secret = secret
        self.http = session or requests.Session()
        self.failure_status = failure_status
        self.points_possible = points_possible
        self.lock = threading.Lock()
        self.seen_nonces: set[tuple[str, str]] = set()
        self.calls: list[OutcomeCall] = []
        self.gradebook: dict[str, GradebookEntry] = {}
        self.answers: list[Answer] = []
        self.xxe_probe_hits = 0
        self.validator = _Validator(self)
        self.endpoint = SignatureOnlyEndpoint(self.validator)
        self.app = self._build()
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.outcome_path = "/api/lti/v1/tools/7/grade_passback"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

    def __enter__(self) -> Lti11Consumer:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.thread.join(5)

    # --- helpers for tests ---------------------------------------------------------------------------

    @property
    def outcome_url(self) -> str:
        return self.url + self.outcome_path

    @property
    def xxe_probe_url(self) -> str:
        return self.url + "/xxe-probe"

    @staticmethod
    def sourcedid_for(user_id: str, resource_link_id: str) -> str:
        """A Moodle-style sourcedId: a JSON blob with a hash, opaque to the tool and kept exactly."""
        data = {"instanceid": resource_link_id, "userid": user_id, "typeid": "1", "launchid": 1234567}
        digest = hashlib.sha256(json.dumps(data).encode()).hexdigest()
        return json.dumps({"data": data, "hash": digest}, separators=(",", ":"))

    def launch_params(self, **overrides: Any) -> dict[str, str]:
        """The form of a Canvas student launch; overrides replace values, None removes a parameter."""
        user_id = overrides.get("user_id") or "canvas-user-1"
        link = overrides.get("resource_link_id") or "rl-quiz-1"
        params: dict[str, Any] = {
            "lti_message_type": "basic-lti-launch-request",
            "lti_version": "LTI-1p0",
            "resource_link_id": link,
            "resource_link_title": "Quiz 1",
            "user_id": user_id,
            "roles": "Learner",
            "lis_person_name_full": "Ada Lovelace",
            "lis_person_contact_email_primary": f"{user_id}@school.example",
            "context_id": "canvas-course-11",
            "context_title": "Algebra I",
            "lis_outcome_service_url": self.outcome_url,
            "lis_result_sourcedid": self.sourcedid_for(user_id, link),
            "custom_assignment": "quiz-1",
            "tool_consumer_info_product_family_code": "canvas",
            # Canvas sends the assignment's points as a Ruby float ("10.0").
            "custom_canvas_assignment_points_possible": str(float(self.points_possible)),
            **CANVAS_EXTENSIONS,
        }
        params.update(overrides)
        return {k: v for k, v in params.items() if v is not None}

    def launch_form(
        self,
        launch_url: str,
        *,
        key: str | None = None,
        secret: str | None = None,
        timestamp: int | None = None,
        nonce: str | None = None,
        signature_method: str | None = None,
        **overrides: Any,
    ) -> dict[str, str]:
        """The signed form fields of a launch, as the LMS puts them in the auto-submitted page."""
        params = self.launch_params(**overrides)
        # ToolConsumer refuses to sign without resource_link_id; the base class signs the same way without
        # that check, for the tests of a launch that lacks it.
        tool_class = ToolConsumer if "resource_link_id" in params else ToolOutbound
        tool = tool_class(
            consumer_key=key or self.key,
            consumer_secret=secret or self.secret,
            launch_url=launch_url,
            params=params,
        )
        oauth: dict[str, str] = {}
        if timestamp is not None:
            oauth["timestamp"] = str(timestamp)
        if nonce is not None:
            oauth["nonce"] = nonce
        if signature_method is not None:
            oauth["signature_method"] = signature_method
        data = tool.generate_launch_data(**oauth)
        return {k: v if isinstance(v, str) else ",".join(v) for k, v in data.items()}

    def post_form(self, launch_url: str, form: dict[str, str]) -> requests.Response:
        return self.http.post(launch_url, data=form, allow_redirects=False)

    def launch(self, launch_url: str, **kwargs: Any) -> requests.Response:
        return self.post_form(launch_url, self.launch_form(launch_url, **kwargs))

    def answer_next(self, status: int, body: str | bytes = "", *, count: int = 1, **options: Any) -> None:
        self.answers.append(Answer(status=status, body=body, remaining=count, **options))

    def fail_next(
        self,
        description: str,
        *,
        status: int | None = None,
        code_major: str = "failure",
        count: int = 1,
        extra_status_xml: str = "",
        message_ref: str | None = None,
    ) -> None:
        """Answer the next request(s) with a `failure` (or `unsupported`) envelope."""
        self.answers.append(
            Answer(
                status=self.failure_status if status is None else status,
                code_major=code_major,
                description=description,
                remaining=count,
                extra_status_xml=extra_status_xml,
                message_ref=message_ref,
            )
        )

    def requests_for(self, sourcedid: str | None = None, operation: str | None = None) -> list[OutcomeCall]:
        return [
            c
            for c in self.calls
            if (sourcedid is None or c.sourcedid == sourcedid) and (operation is None or c.operation == operation)
        ]

    @property
    def problems(self) -> list[str]:
        return [c.problem for c in self.calls if c.problem is not None]

    # --- the consumer's outcome service ---------------------------------------------------------------

    def _verify(self, call: OutcomeCall) -> tuple[int, str] | None:
        """None when the request is authentic; else the status and text Canvas would answer."""
        header = call.headers.get("Authorization", "")
        if not header.startswith("OAuth "):
            return 401, "no OAuth Authorization header"
        try:
            call.oauth = {unescape(k): unescape(v) for k, v in parse_authorization_header(header)}
        except Exception as exc:  # oauthlib raises ValueError for a malformed header
            return 401, f"malformed Authorization header: {exc}"
        if call.oauth.get("oauth_signature_method") != "HMAC-SHA1":
            return 401, f"signature method {call.oauth.get('oauth_signature_method')!r} is not HMAC-SHA1"
        self.validator.last_problem = None
        try:
            valid, _ = self.endpoint.validate_request(
                call.url, "POST", call.body.decode("utf-8", "replace"), dict(call.headers)
            )
        except ValueError as exc:
            return 401, f"cannot verify: {exc}"
        if not valid:
            return 401, self.validator.last_problem or "invalid signature (or timestamp out of the window)"
        # SHA-1 is what the OAuth body hash extension defines (OAuth Request Body Hash draft).
        expected_hash = base64.b64encode(hashlib.sha1(call.body).digest()).decode()  # noqa: S324
        if call.oauth.get("oauth_body_hash") != expected_hash:
            return 401, f"oauth_body_hash {call.oauth.get('oauth_body_hash')!r} is not base64(sha1(body))"
        return None

    def _parse(self, call: OutcomeCall) -> str | None:
        # A parser that never resolves entities nor reads the network: the body comes from Passback.
        parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
        try:
            call.tree = etree.fromstring(call.body, parser)
        except etree.XMLSyntaxError as exc:
            return f"not XML: {exc}"
        outcome = OutcomeRequest()
        outcome.process_xml(call.body)
        if outcome.operation is None or outcome.lis_result_sourcedid is None:
            return "no replaceResultRequest, readResultRequest or deleteResultRequest with a sourcedId"
        call.operation = outcome.operation
        call.sourcedid = str(outcome.lis_result_sourcedid)
        call.message_identifier = outcome.message_identifier
        call.score = outcome.score
        if local(call.tree) != "imsx_POXEnvelopeRequest" or etree.QName(call.tree).namespace != NS:
            return f"root element {call.tree.tag!r} is not imsx_POXEnvelopeRequest in {NS}"
        return None

    def _envelope(
        self,
        call: OutcomeCall | None,
        code_major: str,
        description: str,
        body_xml: str = "",
        extra_status_xml: str = "",
        *,
        message_ref: str | None = None,
        operation_ref: str | None = None,
        namespace: str = NS,
    ) -> str:
        operation = call.operation if call and call.operation else "replaceResult"
        severity = "status" if code_major == "success" else "error"
        body_xml = body_xml or f"<{operation}Response/>"
        if message_ref is None:
            message_ref = call.message_identifier if call and call.message_identifier else ""
        operation_ref = operation if operation_ref is None else operation_ref
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<imsx_POXEnvelopeResponse xmlns="{namespace}"><imsx_POXHeader><imsx_POXResponseHeaderInfo>'
            f"<imsx_version>V1.0</imsx_version><imsx_messageIdentifier>{uuid.uuid4().int % 10**10}"
            "</imsx_messageIdentifier><imsx_statusInfo>"
            f"<imsx_codeMajor>{code_major}</imsx_codeMajor><imsx_severity>{severity}</imsx_severity>"
            f"<imsx_description>{_escape(description)}</imsx_description>"
            f"<imsx_messageRefIdentifier>{_escape(message_ref)}</imsx_messageRefIdentifier>"
            + (f"<imsx_operationRefIdentifier>{operation_ref}</imsx_operationRefIdentifier>" if operation_ref else "")
            + f"{extra_status_xml}"
            f"</imsx_statusInfo></imsx_POXResponseHeaderInfo></imsx_POXHeader>"
            f"<imsx_POXBody>{body_xml}</imsx_POXBody></imsx_POXEnvelopeResponse>"
        )

    def _take_answer(self) -> Answer | None:
        with self.lock:
            if not self.answers:
                return None
            answer = self.answers[0]
            answer.remaining -= 1
            if answer.remaining <= 0:
                self.answers.pop(0)
            return answer

    def _failure(self, call: OutcomeCall, description: str, code: str) -> Response:
        xml = self._envelope(
            call, "failure", description, extra_status_xml=f"<ext_canvas_error_code>{code}</ext_canvas_error_code>"
        )
        return Response(xml, status=self.failure_status, content_type="application/xml")

    def _replace(self, call: OutcomeCall) -> Response:
        request_el = call.operation_element
        result = child(request_el, "resultRecord/result")
        total = child(result, "resultTotalScore/textString") if result is not None else None
        score = child(result, "resultScore/textString") if result is not None else None
        entry = GradebookEntry()
        if total is not None:
            if not DECIMAL.match(total.text or ""):
                return self._failure(call, "Unable to parse resultTotalScore", "no_parseable_result_total_score")
            entry.total_score = (total.text or "").strip()
        if score is not None:
            text = (score.text or "").strip()
            if not DECIMAL.match(text):
                return self._failure(call, "Unable to parse resultScore: " + text, "no_parseable_result_score")
            if entry.total_score is None and not 0.0 <= float(text) <= 1.0:
                return self._failure(call, "Score is not between 0 and 1\n[EID_13960006980949683]", "bad_score")
            language = child(result, "resultScore/language")
            if language is None or language.text != "en":
                return self._failure(call, "resultScore/language must be 'en'", "bad_language")
            entry.score = text
        data = child(result, "resultData") if result is not None else None
        if data is not None:
            entry.result_data = {local(c): c.text or "" for c in data if isinstance(c.tag, str)}
        details = child(request_el, "submissionDetails")
        if details is not None:
            entry.submission_details = {
                local(c): (c.text if (c.text or "").strip() else True) for c in details if isinstance(c.tag, str)
            }
        if entry.score is None and entry.total_score is None and not entry.result_data and not entry.submission_details:
            return self._failure(call, "No score given", "no_score")
        with self.lock:
            previous = self.gradebook.get(call.sourcedid or "")
            entry.updates = (previous.updates if previous else 0) + 1
            self.gradebook[call.sourcedid or ""] = entry
        return Response(self._envelope(call, "success", "Score updated"), content_type="application/xml")

    def _read(self, call: OutcomeCall) -> Response:
        entry = self.gradebook.get(call.sourcedid or "")
        text = ""
        if entry is not None and entry.total_score is not None:
            text = repr(float(entry.total_score) / self.points_possible)
        elif entry is not None and entry.score is not None:
            text = entry.score
        body = (
            "<readResultResponse><result><resultScore><language>en</language>"
            f"<textString>{text}</textString></resultScore></result></readResultResponse>"
        )
        return Response(self._envelope(call, "success", "Result read", body), content_type="application/xml")

    def _delete(self, call: OutcomeCall) -> Response:
        with self.lock:
            self.gradebook.pop(call.sourcedid or "", None)
        return Response(self._envelope(call, "success", "Result deleted"), content_type="application/xml")

    def _build(self) -> Flask:
        app = Flask("fake-lti11-consumer")

        @app.get("/xxe-probe")
        def xxe_probe() -> Any:
            with self.lock:
                self.xxe_probe_hits += 1
            return Response("XXE-PROBE-WAS-FETCHED", content_type="text/plain")

        def outcome_service() -> Any:
            call = OutcomeCall(
                body=request.get_data(),
                headers={k: v for k, v in request.headers.items()},
                # The request target exactly as sent (werkzeug's request.url decodes the query).
                url=self.url + (request.environ.get("RAW_URI") or request.full_path),
                oauth={},
            )
            with self.lock:
                self.calls.append(call)
            refused = self._verify(call)
            if refused is not None:
                call.problem, call.answered = refused[1], refused[0]
                return Response(refused[1], status=refused[0], content_type="text/plain")
            # Canvas compares the header with the string itself, after OAuth (canvas-lms lti_api_controller.rb).
            if request.headers.get("Content-Type") != "application/xml":
                call.problem = f"Content-Type {request.headers.get('Content-Type')!r} is not 'application/xml'"
                call.answered = 415
                return Response("Content-Type must be 'application/xml'", status=415, content_type="text/plain")
            problem = self._parse(call)
            if problem is not None:
                call.problem, call.answered = problem, self.failure_status
                return Response(
                    self._envelope(call, "failure", problem), status=self.failure_status, content_type="application/xml"
                )
            answer = self._take_answer()
            if answer is not None:
                if answer.delay:
                    time.sleep(answer.delay)
                call.answered = answer.status
                if answer.code_major is not None:
                    xml = self._envelope(
                        call,
                        answer.code_major,
                        answer.description,
                        answer.body_xml or "",
                        answer.extra_status_xml,
                        message_ref=answer.message_ref,
                        operation_ref=answer.operation_ref,
                        namespace=answer.namespace,
                    )
                    if answer.body_xml == "":
                        xml = xml.replace(f"<{call.operation}Response/>", "")
                    return Response(xml, status=answer.status, content_type="application/xml")
                return Response(
                    answer.body, status=answer.status, content_type=answer.content_type, headers=answer.headers
                )
            handler = {"replaceResult": self._replace, "readResult": self._read, "deleteResult": self._delete}
            response = handler[call.operation or ""](call)
            call.answered = response.status_code
            return response

        app.add_url_rule("/api/lti/v1/tools/7/grade_passback", "canvas", outcome_service, methods=["POST"])
        app.add_url_rule("/mod/lti/service.php", "moodle", outcome_service, methods=["POST"])
        return app


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def billion_laughs(envelope_success: bool = True) -> str:
    """An entity-expansion bomb shaped as a success envelope: a parser that expands it would take it as one."""
    entities = ['<!ENTITY lol "lol">'] + [
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10)
    ]
    return (
        '<?xml version="1.0"?>\n<!DOCTYPE imsx_POXEnvelopeResponse [\n  '
        + "\n  ".join(entities)
        + "\n]>\n"
        + _response_with_description("success" if envelope_success else "failure", "&lol9;")
    )


def external_entity(system_id: str) -> str:
    """An XXE document: a success envelope whose description is an external entity."""
    return (
        f'<?xml version="1.0"?>\n<!DOCTYPE imsx_POXEnvelopeResponse [<!ENTITY e SYSTEM "{system_id}">]>\n'
        + _response_with_description("success", "&e;")
    )


def _response_with_description(code_major: str, description_xml: str) -> str:
    return (
        f'<imsx_POXEnvelopeResponse xmlns="{NS}"><imsx_POXHeader><imsx_POXResponseHeaderInfo>'
        "<imsx_version>V1.0</imsx_version><imsx_messageIdentifier>1</imsx_messageIdentifier><imsx_statusInfo>"
        f"<imsx_codeMajor>{code_major}</imsx_codeMajor><imsx_severity>status</imsx_severity>"
        f"<imsx_description>{description_xml}</imsx_description>"
        "<imsx_operationRefIdentifier>replaceResult</imsx_operationRefIdentifier>"
        "</imsx_statusInfo></imsx_POXResponseHeaderInfo></imsx_POXHeader>"
        "<imsx_POXBody><replaceResultResponse/></imsx_POXBody></imsx_POXEnvelopeResponse>"
    )
