"""LTI 1.1 Basic Outcomes: POX XML replace/read/delete, signed with OAuth 1.0a and `oauth_body_hash`.

Wire details: IMS LTI 1.1 Implementation Guide §6; Canvas extensions: canvas-lms doc/api/assignment_tools.md.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from lxml import etree
from marshmallow import Schema, fields, validate
from requests_oauthlib import OAuth1

from adapters import causes
from adapters.answers import DEFAULT_ANSWERS, AnswerRow, AnswerTable, LmsAnswer, Verdict, delivery_error, status
from adapters.base import (
    AdapterContext,
    ConfigValue,
    ConnectionDisplay,
    DeliveryError,
    DeliveryReceipt,
    Destination,
    HealthReport,
    LmsAdapter,
    NormalizedGrade,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from adapters.http import HttpClient
from adapters.url_policy import UrlPolicySettings, host_entries, raise_if_refused_at_launch

NS = "http://www.imsglobal.org/services/ltiv1p1/xsd/imsoms_v1p0"
MAX_RESPONSE_BYTES = 256 * 1024
# Responses come from the network: no DTDs, no entity expansion, no network access, no huge trees.
SAFE_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False, huge_tree=False
)
EXTENSION_FLAGS = {
    "result_total_score": "ext_outcome_result_total_score_accepted",
    "submitted_at": "ext_outcome_submission_submitted_at_accepted",
    "needs_additional_review": "ext_outcome_submission_needs_additional_review_accepted",
    "prioritize_non_tool_grade": "ext_outcome_submission_prioritize_non_tool_grade_accepted",
}


def accepted_extensions(launch_params: Mapping[str, str]) -> dict[str, Any]:
    """Which Canvas outcome extensions the consumer advertised at launch (canvas-lms doc/api/assignment_tools.md)."""
    extensions: dict[str, Any] = {
        name: str(launch_params.get(param, "")).lower() == "true" for name, param in EXTENSION_FLAGS.items()
    }
    values = launch_params.get("ext_outcome_data_values_accepted", "")
    extensions["data_values"] = [v.strip() for v in str(values).split(",") if v.strip()]
    return extensions


POINTS = re.compile(r"^\s*\d{1,9}(\.\d{1,9})?\s*$")
# Canvas puts the assignment's points possible in every graded launch (`$Canvas.assignment.pointsPossible`;
# canvas-lms:lib/basic_lti/tool_launch.rb#for_assignment!).
POINTS_POSSIBLE_PARAM = "custom_canvas_assignment_points_possible"


def positive_points(value: Any) -> float | None:
    """A points-possible value as the LMS sent it, or None unless it is a plain positive decimal."""
    if isinstance(value, bool) or value is None:
        return None
    if not isinstance(value, int | float) and not (isinstance(value, str) and POINTS.match(value)):
        return None
    number = float(value)
    return number if math.isfinite(number) and number > 0 else None


def launch_points_possible(launch_params: Mapping[str, str]) -> float | None:
    """The assignment's points possible when the launch says it (Canvas); None otherwise."""
    return positive_points(launch_params.get(POINTS_POSSIBLE_PARAM))


@dataclass(frozen=True)
class ReplaceRequest:
    """A replaceResultRequest and what it carries: resultScore (a 0..1 fraction) or resultTotalScore (points on
    the LMS's scale, `points_possible` being that scale), and a note when the score had to be capped."""

    body: bytes
    message_id: str
    score_element: str
    score_text: str
    points_possible: float | None
    note: str | None


class Lti11SettingsSchema(UrlPolicySettings):
    """`gateway lms add --adapter lti11`: the consumer key and shared secret the LMS uses for this tool, and the
    LMS's host(s): LTI 1.1 registers no URL, so outcome URLs from launches are bound to `allowed_hosts`."""

    allowed_hosts = fields.List(
        fields.String(),
        required=True,
        validate=[validate.Length(min=1), host_entries],
        metadata={"description": "The host(s) of the LMS's outcome service: host, host:port or *.domain."},
    )

    consumer_key = fields.String(required=True, validate=validate.Length(min=1, max=255))
    shared_secret = fields.String(required=True, validate=validate.Length(min=8, max=500))
    outcome_service_url = fields.Url(
        require_tld=False,
        schemes={"https", "http"},
        metadata={
            "description": "An outcome service URL of this LMS (a launch's lis_outcome_service_url) that "
            "`gateway lms probe` checks the key and secret against."
        },
    )


# Outcome requests are signed with the shared secret: a 401 means the key, the secret or the clock is wrong, and a
# resend cannot fix it. A `failure` envelope (HTTP 200 from Moodle, 422 from Canvas) is read by the adapter: it
# carries the consumer's own words, and is permanent.
LTI11_ANSWERS = DEFAULT_ANSWERS.extended(
    AnswerRow(
        status(401),
        Verdict.FAIL,
        explanation="the consumer refused the signature: check the consumer key, the shared secret and this "
        "server's clock",
        cause=causes.CREDENTIALS_REFUSED,
    ),
    lms="consumer",
)
# A failure envelope that says the consumer did not verify the request (Moodle answers so with HTTP 200).
SIGNATURE_REFUSED = re.compile(r"signature|oauth|consumer key|nonce|timestamp", re.IGNORECASE)


def _el(parent: Any, name: str, text: str | None = None) -> Any:
    element = etree.SubElement(parent, f"{{{NS}}}{name}")
    if text is not None:
        element.text = text
    return element


def _decimal(value: float) -> str:
    # Locale-independent, "." as the separator, no exponent (LTI 1.1 Implementation Guide §6).
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text or "0"


def envelope(operation: str, sourcedid: str, message_id: str) -> tuple[Any, Any]:
    """The POX request envelope; returns (root, the operation element) for the caller to fill in."""
    root = etree.Element(f"{{{NS}}}imsx_POXEnvelopeRequest", nsmap={None: NS})
    info = _el(_el(root, "imsx_POXHeader"), "imsx_POXRequestHeaderInfo")
    _el(info, "imsx_version", "V1.0")
    _el(info, "imsx_messageIdentifier", message_id)
    request = _el(_el(root, "imsx_POXBody"), operation)
    record = _el(request, "resultRecord")
    _el(_el(record, "sourcedGUID"), "sourcedId", sourcedid)
    return root, request


def _local(element: Any) -> str:
    return etree.QName(element).localname if isinstance(element.tag, str) else ""


def _child(parent: Any, *path: str) -> Any:
    """The element at a path of direct children, by local name (old Moodle and Canvas answer in the
    `lis/oms1p0/pox` namespace); None when any step is missing. Nothing is looked for anywhere else."""
    node = parent
    for name in path:
        if node is None:
            return None
        node = next((c for c in node if _local(c) == name), None)
    return node


def _text(element: Any) -> str:
    return (element.text or "").strip() if element is not None else ""


class PoxResponse:
    def __init__(self, code_major: str, description: str, score: str | None) -> None:
        self.code_major = code_major
        self.description = description
        self.score = score


class HostileXml(ValueError):
    """A response that declares a DTD or entities: POX never needs one, so it is refused outright."""


class NotOurAnswer(ValueError):
    """A POX answer that names another message or another operation: it says nothing about this request."""


def parse_response(body: bytes, message_id: str, operation: str) -> PoxResponse | None:
    """The consumer's POX answer to our `operation` request `message_id`, read at the envelope's own positions
    (header > statusInfo, body > <operation>Response); None when the body is not a POX envelope (e.g. a
    proxy's error page). Raises HostileXml for a document with a DOCTYPE, whatever it claims to say, and
    NotOurAnswer when the answer names another message or, for a success, another operation."""
    if not body or len(body) > MAX_RESPONSE_BYTES:
        return None
    try:
        root = etree.fromstring(body, SAFE_PARSER)
    except (etree.XMLSyntaxError, ValueError):
        if b"<!doctype" in body[:4096].lower() or b"<!entity" in body.lower():
            raise HostileXml("the response declares a DTD or entities") from None
        return None
    if root is not None and root.getroottree().docinfo.doctype:
        raise HostileXml("the response declares a DTD or entities")
    if root is None or _local(root) != "imsx_POXEnvelopeResponse":
        return None
    status = _child(root, "imsx_POXHeader", "imsx_POXResponseHeaderInfo", "imsx_statusInfo")
    code = _text(_child(status, "imsx_codeMajor")).lower()
    if not code:
        return None
    # Canvas and Moodle echo our imsx_messageIdentifier; Moodle leaves it empty when it failed before reading
    # the request (mod/lti/classes/service_exception_handler.php), so only a present one must match.
    reference = _text(_child(status, "imsx_messageRefIdentifier"))
    if reference and reference != message_id:
        raise NotOurAnswer(f"the answer names message {reference[:80]!r}, not this request's {message_id}")
    pox_body = _child(root, "imsx_POXBody")
    body_element = next((c for c in pox_body if isinstance(c.tag, str)), None) if pox_body is not None else None
    if code in ("success", "processing"):
        # Canvas says `replaceResult`, Moodle `replaceResultRequest`, old Moodle nothing (its body names it).
        named = _text(_child(status, "imsx_operationRefIdentifier"))
        if named and named not in (operation, operation + "Request"):
            raise NotOurAnswer(f"the answer is for {named[:80]!r}, not {operation}")
        if body_element is not None and _local(body_element) != operation + "Response":
            raise NotOurAnswer(f"the answer's body is {_local(body_element)!r}, not {operation}Response")
        if not named and body_element is None:
            raise NotOurAnswer(f"the {code} answer names no operation, so it cannot be taken for {operation}")
    score = None
    if operation == "readResult" and body_element is not None and _local(body_element) == "readResultResponse":
        text = _child(body_element, "result", "resultScore", "textString")
        if _child(body_element, "result", "resultScore") is not None:
            score = _text(text)
    return PoxResponse(code, _text(_child(status, "imsx_description")), score)


class Lti11OutcomesAdapter(LmsAdapter):
    kind: ClassVar[str] = "lti11"
    settings_schema: ClassVar[type[Schema]] = Lti11SettingsSchema
    secret_settings: ClassVar[frozenset[str]] = frozenset({"shared_secret"})
    needs_lms_identity: ClassVar[bool] = False
    # The student's lis_result_sourcedid is learned only when they launch this link.
    needs_launch_data: ClassVar[bool] = True
    # readResult and deleteResult (LTI 1.1 Basic Outcomes §6).
    supports_read: ClassVar[bool] = True
    supports_delete: ClassVar[bool] = True
    answer_table: ClassVar[AnswerTable] = LTI11_ANSWERS

    def __init__(self, consumer_key: str, shared_secret: str, http: HttpClient, probe_url: str | None = None) -> None:
        self.consumer_key = consumer_key
        self.shared_secret = shared_secret
        self.http = http
        self.probe_url = probe_url

    @classmethod
    def _from_validated(cls, settings: Mapping[str, Any], http: HttpClient, context: AdapterContext) -> Self:
        return cls(settings["consumer_key"], settings["shared_secret"], http, settings.get("outcome_service_url"))

    @staticmethod
    def registration_key(settings: Mapping[str, Any]) -> str:
        return f"lti11|{settings['consumer_key']}"

    # --- building requests ------------------------------------------------------------------------------

    def replace_body(self, grade: NormalizedGrade, destination: Destination) -> ReplaceRequest:
        """The replaceResultRequest, with which score element it carries and why (LTI 1.1 §6; Canvas docs)."""
        extensions = destination.data.get("extensions") or {}
        asked = (grade.context or {}).get("lti11") if isinstance(grade.context, Mapping) else None
        asked = asked if isinstance(asked, Mapping) else {}
        message_id = str(uuid.uuid4())
        root, request = envelope("replaceResultRequest", self._sourcedid(destination), message_id)
        result = _el(request.find(f"{{{NS}}}resultRecord"), "result")
        note = None
        points_possible = positive_points(destination.data.get("points_possible"))
        if grade.fraction > 1 and extensions.get("result_total_score") and points_possible is not None:
            # Canvas: points on the assignment's own scale (the launch said its points possible); may exceed it.
            element, text = "resultTotalScore", _decimal(grade.fraction * points_possible)
        else:
            fraction = min(max(grade.fraction, 0.0), 1.0)
            if fraction != grade.fraction:
                why = (
                    "the launch did not say the assignment's points possible"
                    if extensions.get("result_total_score")
                    else "this LMS accepts 0.0 to 1.0 only"
                )
                note = f"score {grade.fraction:g} capped at 1.0: {why}"
            element, text, points_possible = "resultScore", _decimal(fraction), None
        score = _el(result, element)
        _el(score, "language", "en")
        _el(score, "textString", text)
        data = asked.get("resultData")
        accepted_values = extensions.get("data_values") or []
        if isinstance(data, Mapping):
            chosen = next(
                (k for k in ("text", "url", "ltiLaunchUrl") if data.get(k) and _accepts(k, accepted_values)), None
            )
            if chosen:
                _el(_el(result, "resultData"), chosen, str(data[chosen]))
        details: list[tuple[str, str | None]] = []
        if asked.get("submittedAt") and extensions.get("submitted_at"):
            details.append(("submittedAt", str(asked["submittedAt"])))
        if asked.get("prioritizeNonToolGrade") and extensions.get("prioritize_non_tool_grade"):
            details.append(("prioritizeNonToolGrade", None))
        if asked.get("needsAdditionalReview") and extensions.get("needs_additional_review"):
            details.append(("needsAdditionalReview", None))
        if details:
            # submissionDetails is a sibling of resultRecord, before it (Canvas: lib/basic_lti/basic_outcomes.rb).
            submission = etree.Element(f"{{{NS}}}submissionDetails")
            request.insert(0, submission)
            for name, detail in details:
                _el(submission, name, detail)
        return ReplaceRequest(
            etree.tostring(root, xml_declaration=True, encoding="UTF-8"),
            message_id,
            element,
            text,
            points_possible,
            note,
        )

    @staticmethod
    def _sourcedid(destination: Destination) -> str:
        sourcedid = destination.user_data.get("sourcedid")
        if not sourcedid:
            if "sourcedid" in destination.user_data:
                raise PermanentDeliveryError(
                    "the student opened this link, but the LMS sent no lis_result_sourcedid: the link does not "
                    "take grades, or they are not a student in it",
                    cause=causes.LINK_TAKES_NO_GRADES,
                )
            raise PermanentDeliveryError(
                "no lis_result_sourcedid for this student and link: they must launch it", cause=causes.AWAITING_LAUNCH
            )
        return str(sourcedid)

    def _url(self, destination: Destination) -> str:
        url = destination.data.get("outcome_service_url")
        if not url:
            raise_if_refused_at_launch(destination.data)
            raise PermanentDeliveryError(
                "the link's launch carried no lis_outcome_service_url: it takes no grades",
                cause=causes.LINK_TAKES_NO_GRADES,
            )
        return str(url)

    # --- sending ----------------------------------------------------------------------------------------

    def _post(self, url: str, body: bytes) -> Any:
        """POST signed POX (once: a 401 to a signed request is the key, the secret or the clock, not chance)."""
        # force_include_body: without it requests-oauthlib signs no oauth_body_hash (OAuth1.__call__).
        auth = OAuth1(self.consumer_key, self.shared_secret, signature_method="HMAC-SHA1", force_include_body=True)
        # Exactly application/xml: Canvas compares the string and answers 415 to anything else.
        return self.http.request("POST", url, data=body, auth=auth, headers={"Content-Type": "application/xml"})

    def _outcome(self, operation: str, url: str, body: bytes, message_id: str) -> tuple[Any, PoxResponse]:
        response = self._post(url, body)
        answer = LmsAnswer.of(response)
        status, excerpt = answer.status, answer.excerpt
        failed = not 200 <= status < 300
        # An answer the table retries is retried whatever its body says.
        if failed and self.answer_table.verdict(answer) is not Verdict.FAIL:
            raise _error(delivery_error(self.answer_table, answer, what=operation))
        try:
            parsed = parse_response(response.content[: MAX_RESPONSE_BYTES + 1], message_id, operation)
        except HostileXml as exc:
            raise PermanentDeliveryError(
                f"consumer's answer refused: {exc}", status, excerpt, cause=causes.UNEXPECTED_ANSWER
            ) from exc
        except NotOurAnswer as exc:
            # Not an answer to this request (a proxy's or cache's mix-up): the request is idempotent, so resend.
            raise RetryableDeliveryError(
                f"consumer's answer to {operation} not taken: {exc}",
                None,
                status,
                excerpt,
                cause=causes.UNEXPECTED_ANSWER,
            ) from exc
        if failed and (parsed is None or parsed.code_major in ("success", "processing") or status == 401):
            # No failure envelope in the consumer's words (or a refused signature): the table's verdict.
            raise _error(delivery_error(self.answer_table, answer, what=operation))
        if parsed is None:
            # A 2xx that is not POX is usually a proxy's page: try again later, a bounded number of times.
            raise RetryableDeliveryError(
                f"consumer answered HTTP {status} without a POX response",
                None,
                status,
                excerpt,
                cause=causes.UNEXPECTED_ANSWER,
            )
        if parsed.code_major == "success":
            return response, parsed
        if parsed.code_major == "processing":
            # Accepted but not yet applied (LTI 1.1 §6): the gradebook may not hold it, so not delivered; the
            # operation is idempotent, and it is sent again until the consumer answers success.
            raise RetryableDeliveryError(
                f"consumer answered processing to {operation}: accepted, not yet in the gradebook; will resend",
                None,
                status,
                excerpt,
                cause=causes.LMS_ERROR,
            )
        # failure/unsupported, with HTTP 200 (Moodle) or 422 (Canvas): permanent, with the consumer's words.
        raise PermanentDeliveryError(
            f"consumer answered {parsed.code_major}: {parsed.description or 'no description'}",
            status,
            excerpt,
            # The consumer's own words name the reason (not enrolled, closed, a score out of range) when they can.
            cause=_failure_cause(parsed.description or ""),
        )

    def deliver(self, grade: NormalizedGrade, destination: Destination) -> DeliveryReceipt:
        """replaceResult: a replace, so repeating it is safe."""
        url = self._url(destination)
        request = self.replace_body(grade, destination)
        response, parsed = self._outcome("replaceResult", url, request.body, request.message_id)
        sent = f"{request.score_element} {request.score_text}" + (
            f" points of {request.points_possible:g} possible" if request.points_possible is not None else ""
        )
        summary = f"replaceResult {parsed.code_major}; sent {sent}" + (f"; {request.note}" if request.note else "")
        return DeliveryReceipt(
            lms_status=response.status_code,
            summary=summary,
            details={
                "code_major": parsed.code_major,
                "description": parsed.description,
                "message_id": request.message_id,
                "score_element": request.score_element,
                "score_sent": request.score_text,
                **({"points_possible": request.points_possible} if request.points_possible is not None else {}),
                **({"cap": request.note} if request.note else {}),
            },
        )

    def read_result(self, destination: Destination) -> float | None:
        """What the consumer's gradebook holds now (a teacher's override included); None for no grade."""
        message_id = str(uuid.uuid4())
        root, _ = envelope("readResultRequest", self._sourcedid(destination), message_id)
        _, parsed = self._outcome(
            "readResult",
            self._url(destination),
            etree.tostring(root, xml_declaration=True, encoding="UTF-8"),
            message_id,
        )
        if not parsed.score:
            return None
        try:
            return float(parsed.score)
        except ValueError:
            return None

    def delete_result(self, destination: Destination) -> DeliveryReceipt:
        """Clear the student's grade in the consumer's gradebook."""
        message_id = str(uuid.uuid4())
        root, _ = envelope("deleteResultRequest", self._sourcedid(destination), message_id)
        response, parsed = self._outcome(
            "deleteResult",
            self._url(destination),
            etree.tostring(root, xml_declaration=True, encoding="UTF-8"),
            message_id,
        )
        return DeliveryReceipt(lms_status=response.status_code, summary=f"deleteResult {parsed.code_major}")

    def probe(self) -> HealthReport:
        """Send a readResult for a sourcedid no student has, signed with the key and secret, to the connection's
        `outcome_service_url`: the key works when the consumer answers it in POX (a failure about the unknown
        sourcedid included); a 401, or a failure envelope about the signature, means it does not."""
        if not self.probe_url:
            return HealthReport(
                False,
                "not checked: LTI 1.1 has no URL to check a key at until one is given; set the connection's "
                "outcome_service_url to a launch's lis_outcome_service_url",
            )
        message_id = str(uuid.uuid4())
        root, _ = envelope("readResultRequest", f"passback-probe-{uuid.uuid4()}", message_id)
        try:
            response = self._post(self.probe_url, etree.tostring(root, xml_declaration=True, encoding="UTF-8"))
            parsed = parse_response(response.content[: MAX_RESPONSE_BYTES + 1], message_id, "readResult")
        except DeliveryError as exc:
            return HealthReport(False, f"outcome service: {exc.message}", {"lms_status": exc.lms_status})
        except ValueError as exc:  # HostileXml, NotOurAnswer
            return HealthReport(False, f"outcome service: the answer is not taken: {exc}")
        answer = LmsAnswer.of(response)
        error = delivery_error(self.answer_table, answer, what="a signed readResult")
        if parsed is None or (error is not None and not 400 <= answer.status < 500) or answer.status == 401:
            return HealthReport(
                False,
                error.message if error else f"consumer answered HTTP {answer.status} without a POX response",
                {"lms_status": answer.status},
            )
        if parsed.code_major != "success" and SIGNATURE_REFUSED.search(parsed.description):
            return HealthReport(
                False, f"consumer refused the signature: {parsed.description}", {"lms_status": answer.status}
            )
        return HealthReport(
            True,
            f"the consumer accepted the signature (it answered {parsed.code_major} to a readResult for no student)",
            {"lms_status": answer.status},
        )

    # --- what the dashboard shows of a connection ----------------------------------------------------------

    @classmethod
    def connection_display(
        cls, settings: Mapping[str, Any], *, public_url: str, connection_id: str
    ) -> ConnectionDisplay:
        return ConnectionDisplay(
            configuration=(
                ConfigValue("Launch URL", f"{public_url}/lti11/launch"),
                ConfigValue("Consumer key", str(settings.get("consumer_key", ""))),
                ConfigValue("Shared secret", "set when the connection was added; never shown", copy=False),
            )
        )


def _failure_cause(description: str) -> str:
    """The cause a consumer's failure envelope names: a refused signature (Moodle says so with HTTP 200), else
    what its words say (not enrolled, closed, a score out of range), else a plain refusal."""
    default = causes.CREDENTIALS_REFUSED if SIGNATURE_REFUSED.search(description) else causes.LMS_REFUSED
    return causes.cause_of_words(description, default)


def _error(error: DeliveryError | None) -> DeliveryError:
    """The error `delivery_error` gives for an answer known not to be a success."""
    assert error is not None, "a non-2xx answer always classifies to an error"
    return error


def _accepts(kind: str, accepted: list[str]) -> bool:
    wanted = {"text": "text", "url": "url", "ltiLaunchUrl": "lti_launch_url"}[kind]
    return wanted in accepted
