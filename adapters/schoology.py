"""Schoology's REST API v1: grades written into a section's gradebook in bulk (Schoology API v1 docs).

    PUT {base_url}/sections/{section_id}/grades
    Authorization: OAuth realm="Schoology API", oauth_consumer_key=…, oauth_token="", …   (two-legged OAuth 1.0a)
    {"grades": {"grade": [{"type": "assignment", "assignment_id": …, "enrollment_id": …, "grade": <points>}, …]}}

Grades are in points on the assignment's `max_points`, keyed by the student's *enrollment* id in the section
(not their user id), so the adapter reads the assignment and the section's enrollments first and keeps both in
the worker's lookup cache. A placement's destination is `{"section_id": …, "assignment_id": …}`.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation, localcontext
from typing import Any, ClassVar, Self
from urllib.parse import parse_qsl, quote, urljoin, urlsplit

import requests
from marshmallow import Schema, ValidationError, fields, validate, validates_schema
from oauthlib.oauth1.rfc5849 import signature as oauth_signature
from oauthlib.oauth1.rfc5849.utils import escape
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from adapters import causes
from adapters.answers import (
    DEFAULT_ANSWERS,
    AnswerRow,
    AnswerTable,
    LmsAnswer,
    Verdict,
    classify,
    delivery_error,
    status,
)
from adapters.base import (
    AdapterContext,
    ConnectionDisplay,
    DeliveryError,
    DeliveryReceipt,
    Destination,
    HealthReport,
    LmsAdapter,
    LookupCache,
    NormalizedGrade,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from adapters.http import HttpClient, json_or_none
from adapters.url_policy import UrlPolicySettings

log = logging.getLogger("passback.adapters.schoology")

DEFAULT_BASE_URL = "https://api.schoology.com/v1"
# Schoology documents no limit for one grades PUT (its docs give 50 for multiget only); 100 items
# keeps a request small and is what the test fake enforces. Configurable per connection.
DEFAULT_BATCH_SIZE = 100
ENROLLMENT_PAGE_SIZE = 200
# Schoology's own redirects (users/me, users/ext/…) are one hop; more means something is wrong.
MAX_REDIRECTS = 3
LOOKUP_TTL_SECONDS = 600.0
DUPLICATE_NONCE = "duplicate timestamp/nonce"
# Schoology keeps grades to two decimal places (its gradebook shows and exports them so); we round the same
# way before sending and record it, so what the LMS shows can be explained.
POINTS_QUANTUM = Decimal("0.01")


# Schoology's answers (statuses per Schoology's API docs), with what to fix. Requests are signed with the shared
# consumer secret, so a 401 means the key or secret is wrong and fails at once; only a replayed nonce is retried.
SCHOOLOGY_ANSWERS = DEFAULT_ANSWERS.extended(
    # A replayed nonce/timestamp: a new request gets a new one. Persisting means a clock going back.
    AnswerRow(
        status(401),
        Verdict.RETRY,
        marker=re.compile(DUPLICATE_NONCE, re.IGNORECASE),
        explanation="duplicate timestamp/nonce (check this server's clock)",
        cause=causes.CLOCK_PROBLEM,
    ),
    AnswerRow(
        status(401),
        Verdict.FAIL,
        explanation="the consumer key or secret is wrong, or the key may not act for this district (since June 2025 "
        "Schoology needs an app approved for the district, not a personal API key)",
        cause=causes.CREDENTIALS_REFUSED,
    ),
    AnswerRow(
        status(403),
        Verdict.FAIL,
        explanation="the key has no permission for this section (is the key's user an admin of the school or "
        "district that holds it?)",
        cause=causes.ACCESS_DENIED,
    ),
    AnswerRow(
        status(404),
        Verdict.FAIL,
        explanation="not found (was the section, assignment or enrollment removed?)",
        cause=causes.NOT_FOUND_IN_LMS,
    ),
    lms="Schoology",
)


class SchoologySettingsSchema(UrlPolicySettings):
    base_url = fields.Url(load_default=DEFAULT_BASE_URL, require_tld=False, schemes={"http", "https"})
    consumer_key = fields.String(required=True, validate=validate.Length(min=1, max=200))
    consumer_secret = fields.String(required=True, validate=validate.Length(min=1, max=200))
    # How a Passback student is found in Schoology when no Schoology user id is linked yet: by a linked
    # Schoology user id only ("uid"), by the SIS id Schoology calls school_uid, or by email.
    roster_match = fields.String(load_default="uid", validate=validate.OneOf(["uid", "school_uid", "email"]))
    signature_method = fields.String(load_default="HMAC-SHA1", validate=validate.OneOf(["HMAC-SHA1", "PLAINTEXT"]))
    # 1: students see the comment Passback sends with a grade; 0: only teachers do.
    comment_status = fields.Integer(load_default=1, validate=validate.OneOf([0, 1]))
    batch_size = fields.Integer(load_default=DEFAULT_BATCH_SIZE, validate=validate.Range(min=1, max=DEFAULT_BATCH_SIZE))

    @validates_schema
    def _plaintext_needs_https(self, data: Mapping[str, Any], **_: Any) -> None:
        if data.get("signature_method") == "PLAINTEXT":
            problem = plaintext_transport_problem(str(data.get("base_url", DEFAULT_BASE_URL)))
            if problem:
                raise ValidationError(problem, "signature_method")


PLAINTEXT_LOOPBACK = "127.0.0.1"


def plaintext_transport_problem(url: str) -> str | None:
    """Why a PLAINTEXT signature (the secret itself, in the header) may not travel to `url`; None when it may.
    One rule: https, or plain http to exactly 127.0.0.1 (the loopback test fakes), and no other name of the
    loopback. The host is read as the HTTP client connects to it (urllib3) and must read the same with the
    standard library, so a parser difference (`http://a\\@127.0.0.1`) opens no door."""
    try:
        client = parse_url(url)
    except LocationParseError:
        client = None
    split = urlsplit(url)
    scheme = (client.scheme or "").lower() if client else ""
    host = (client.host or "").strip("[]").lower() if client else ""
    rule = (
        "PLAINTEXT signatures send the consumer secret itself, so they need an https base_url "
        f"(plain http only to exactly {PLAINTEXT_LOOPBACK})"
    )
    if not host or host != (split.hostname or "").lower() or scheme != split.scheme.lower():
        return f"{rule} whose host reads one way; {url[:200]!r} does not"
    if scheme == "https" or (scheme == "http" and host == PLAINTEXT_LOOPBACK):
        return None
    return f"{rule}; not {scheme}://{host}"


class _Clock:
    """Schoology refuses a timestamp that goes backwards or a reused nonce (Schoology API docs: Authentication)."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def timestamp(self) -> int:
        with self._lock:
            self._last = max(self._last, int(time.time()))
            return self._last


_CLOCK = _Clock()


@dataclass(frozen=True)
class _OAuthSecrets:
    """What oauthlib's signers read from a client: two-legged, so the token secret is empty."""

    client_secret: str
    resource_owner_secret: str = ""


@dataclass(frozen=True)
class _Item:
    """One grade of a batch, resolved to Schoology's ids."""

    index: int
    grade: NormalizedGrade
    section_id: str
    assignment_id: str
    uid: str
    enrollment_id: str
    points: Decimal
    exact_points: Decimal
    max_points: Decimal


class SchoologyAdapter(LmsAdapter):
    kind: ClassVar[str] = "schoology"
    settings_schema: ClassVar[type[Schema]] = SchoologySettingsSchema
    secret_settings: ClassVar[frozenset[str]] = frozenset({"consumer_secret"})
    # No launch is needed: students are found through the section's enrollments.
    needs_lms_identity: ClassVar[bool] = False
    # Section enrollments stand in for a roster service.
    supports_roster: ClassVar[bool] = True
    policy_defaults: ClassVar[Mapping[str, Any]] = {"base_url": DEFAULT_BASE_URL}
    answer_table: ClassVar[AnswerTable] = SCHOOLOGY_ANSWERS

    def __init__(self, settings: Mapping[str, Any], http: HttpClient, lookups: LookupCache) -> None:
        self.base_url = str(settings.get("base_url") or DEFAULT_BASE_URL).rstrip("/")
        self.key = str(settings["consumer_key"])
        self.secret = str(settings["consumer_secret"])
        self.roster_match = str(settings.get("roster_match", "uid"))
        self.signature_method = str(settings.get("signature_method", "HMAC-SHA1"))
        self.comment_status = int(settings.get("comment_status", 1))
        self.max_batch = int(settings.get("batch_size", DEFAULT_BATCH_SIZE))
        self.http = http
        self.lookups = lookups
        self._cache_prefix = f"schoology|{self.base_url}|{self.key}|"

    @classmethod
    def _from_validated(cls, settings: Mapping[str, Any], http: HttpClient, context: AdapterContext) -> Self:
        return cls(settings, http, context.lookups)

    @classmethod
    def batch_key(cls, destination: Destination) -> str | None:
        """Grades for one section go in one PUT."""
        section = destination.data.get("section_id") or destination.section_id
        return str(section) if section else None

    # --- signing and transport ------------------------------------------------------------------------------

    def authorization(self, method: str, url: str) -> str:
        """The two-legged OAuth 1.0a header as Schoology's docs print it: realm first, `oauth_token=""` present
        but empty (oauthlib's client drops an empty token, hence by hand), the signature last."""
        params = [
            ("oauth_consumer_key", self.key),
            ("oauth_nonce", secrets.token_hex(16)),
            ("oauth_signature_method", self.signature_method),
            ("oauth_timestamp", str(_CLOCK.timestamp())),
            ("oauth_token", ""),
            ("oauth_version", "1.0"),
        ]
        if self.signature_method == "PLAINTEXT":
            signed = oauth_signature.sign_plaintext(self.secret, "")
        else:
            # JSON bodies are not part of the signature (not form-encoded); the query string is.
            query = parse_qsl(urlsplit(url).query, keep_blank_values=True)
            normalized = oauth_signature.normalize_parameters(query + params)
            base = oauth_signature.signature_base_string(
                method.upper(), oauth_signature.base_string_uri(url), normalized
            )
            signed = oauth_signature.sign_hmac_sha1_with_client(base, _OAuthSecrets(self.secret))
        parts = ['realm="Schoology API"'] + [f'{k}="{escape(v)}"' for k, v in params]
        parts.append(f'oauth_signature="{escape(signed)}"')
        return "OAuth " + ", ".join(parts)

    def _url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else f"{self.base_url}/{path.lstrip('/')}"

    def call(self, method: str, path: str, *, json: Any = None) -> requests.Response:
        """One signed request. A redirect is followed by signing a new request for its Location: replaying the
        old header is refused as a duplicate nonce (Schoology docs: "Authentication → Troubleshooting")."""
        url = self._url(path)
        self._check_origin(url)
        for _ in range(MAX_REDIRECTS + 1):
            if self.signature_method == "PLAINTEXT":
                # Checked here, not only when the connection was added: settings stored before the rule, or
                # edited outside `gateway lms add`, must not put the secret on a plain-http wire either.
                problem = plaintext_transport_problem(url)
                if problem:
                    raise PermanentDeliveryError(problem, cause=causes.NEEDS_CONFIGURATION)
            headers = {"Authorization": self.authorization(method, url), "Accept": "application/json"}
            if json is not None:
                headers["Content-Type"] = "application/json"
            response = self.http.request(method, url, json=json, headers=headers)
            if response.status_code not in (301, 302, 303, 307, 308) or "Location" not in response.headers:
                return response
            url = urljoin(url, response.headers["Location"])
            self._check_origin(url)
            if response.status_code == 303:
                method, json = "GET", None
        raise PermanentDeliveryError(
            f"Schoology redirected more than {MAX_REDIRECTS} times from {path}", cause=causes.UNEXPECTED_ANSWER
        )

    def _check_origin(self, url: str) -> None:
        """Signed requests go to the configured API's own scheme, host and port only: a redirect or a paging
        link elsewhere (or from https down to http) would hand another server a signed header, and with
        PLAINTEXT the secret itself."""
        wanted, got = urlsplit(self.base_url), urlsplit(url)
        if (got.scheme, got.hostname, got.port) != (wanted.scheme, wanted.hostname, wanted.port):
            raise PermanentDeliveryError(
                f"Schoology pointed Passback to {got.scheme}://{got.netloc}, outside the configured API "
                f"{wanted.scheme}://{wanted.netloc}; not followed",
                cause=causes.NEEDS_CONFIGURATION,
            )

    def raise_for_status(self, response: requests.Response, what: str) -> None:
        """Classify a Schoology answer by the adapter's table, with a message that says what to fix."""
        classify(self.answer_table, response, what=what, detail=_message(response))

    def _get_json(self, path: str, what: str) -> Mapping[str, Any]:
        response = self.call("GET", path)
        self.raise_for_status(response, what)
        answer = json_or_none(response)
        if answer is None:
            raise RetryableDeliveryError(
                f"Schoology answered {what} without a JSON object",
                lms_status=response.status_code,
                cause=causes.UNEXPECTED_ANSWER,
            )
        return answer

    # --- lookups ----------------------------------------------------------------------------------------------

    def max_points(self, section_id: str, assignment_id: str) -> Decimal:
        """The assignment's maximum points (excluding extra credit), cached for a few minutes."""
        key = f"{self._cache_prefix}assignment|{section_id}|{assignment_id}"
        cached = self.lookups.get(key)
        if cached is not None:
            return Decimal(cached)
        answer = self._get_json(
            f"sections/{quote(section_id, safe='')}/assignments/{quote(assignment_id, safe='')}",
            f"reading assignment {assignment_id} of section {section_id}",
        )
        try:
            points = Decimal(str(answer.get("max_points", 100)))
        except InvalidOperation as exc:
            raise PermanentDeliveryError(
                f"Schoology assignment {assignment_id} has an unreadable max_points {answer.get('max_points')!r}",
                cause=causes.INVALID_SCORE,
            ) from exc
        if not points.is_finite() or points <= 0:
            raise PermanentDeliveryError(
                f"Schoology assignment {assignment_id} has max_points {points}; a grade cannot be scaled to it",
                cause=causes.INVALID_SCORE,
            )
        self.lookups.put(key, str(points), LOOKUP_TTL_SECONDS)
        return points

    def section_enrollments(self, section_id: str, *, refresh: bool = False) -> dict[str, dict[str, Any]]:
        """The section's enrollments by Schoology user id (all pages), cached per section."""
        key = f"{self._cache_prefix}enrollments|{section_id}"
        if not refresh:
            cached = self.lookups.get(key)
            if cached is not None:
                return dict(cached)
        found: dict[str, dict[str, Any]] = {}
        url: str | None = f"sections/{quote(section_id, safe='')}/enrollments?start=0&limit={ENROLLMENT_PAGE_SIZE}"
        start = 0
        while url is not None:
            answer = self._get_json(url, f"listing the enrollments of section {section_id}")
            page = answer.get("enrollment") or []
            if not isinstance(page, list):
                raise RetryableDeliveryError(
                    f"Schoology listed section {section_id}'s enrollments in a bad shape",
                    cause=causes.UNEXPECTED_ANSWER,
                )
            for enrollment in page:
                if isinstance(enrollment, dict) and enrollment.get("uid") is not None and enrollment.get("id"):
                    found[str(enrollment["uid"])] = enrollment
            start += len(page)
            links = answer.get("links") if isinstance(answer.get("links"), dict) else {}
            next_url = links.get("next") if links else None
            total = _int(answer.get("total"))
            if next_url:
                url = str(next_url)
            elif page and total is not None and start < total:
                url = f"sections/{quote(section_id, safe='')}/enrollments?start={start}&limit={ENROLLMENT_PAGE_SIZE}"
            else:
                url = None
        self.lookups.put(key, found, LOOKUP_TTL_SECONDS)
        return found

    def user(self, uid: str) -> Mapping[str, Any]:
        key = f"{self._cache_prefix}user|{uid}"
        cached = self.lookups.get(key)
        if cached is None:
            cached = dict(self._get_json(f"users/{quote(uid, safe='')}", f"reading user {uid}"))
            self.lookups.put(key, cached, LOOKUP_TTL_SECONDS)
        return dict(cached)

    def uid_for(self, destination: Destination, section_id: str) -> str:
        """The student's Schoology user id: the linked one, else found by the connection's `roster_match`."""
        if destination.lms_user_known:
            return destination.lms_user_id
        if self.roster_match == "school_uid" and destination.user_sis_id:
            key = f"{self._cache_prefix}ext|{destination.user_sis_id}"
            cached = self.lookups.get(key)
            if cached is None:
                # /users/ext/{school_uid} answers 303 to the user; `call` re-signs for the new URL.
                answer = self._get_json(
                    f"users/ext/{quote(destination.user_sis_id, safe='')}",
                    f"finding the user with school_uid {destination.user_sis_id}",
                )
                cached = str(answer.get("uid") or answer.get("id") or "")
                if not cached:
                    raise PermanentDeliveryError(
                        f"Schoology has no user with school_uid {destination.user_sis_id}", cause=causes.NOT_ENROLLED
                    )
                self.lookups.put(key, cached, LOOKUP_TTL_SECONDS)
            return str(cached)
        if self.roster_match == "email" and destination.user_email:
            wanted = destination.user_email.lower()
            matches = [
                uid
                for uid in self.section_enrollments(section_id)
                if str(self.user(uid).get("primary_email") or "").lower() == wanted
            ]
            if len(matches) == 1:
                return matches[0]
            raise PermanentDeliveryError(
                f"not enrolled in section {section_id}: no single student there has the email {destination.user_email}",
                cause=causes.NOT_ENROLLED,
            )
        raise PermanentDeliveryError(
            "no Schoology user id is known for this student: run `gateway lms sync-roster`, link one with "
            "`gateway user enroll --lms-user-id`, or set the connection's roster_match to school_uid or email",
            cause=causes.AWAITING_LAUNCH,
        )

    def enrollment_id(self, section_id: str, uid: str, refreshed: set[str]) -> str:
        """The student's enrollment id in the section; a miss refreshes the section's list once, then fails."""
        enrollment = self.section_enrollments(section_id).get(uid)
        if enrollment is None and section_id not in refreshed:
            refreshed.add(section_id)
            enrollment = self.section_enrollments(section_id, refresh=True).get(uid)
        if enrollment is None:
            raise PermanentDeliveryError(
                f"not enrolled in section {section_id} (Schoology user {uid})", cause=causes.NOT_ENROLLED
            )
        return str(enrollment["id"])

    # --- delivery ---------------------------------------------------------------------------------------------

    def deliver(self, grade: NormalizedGrade, destination: Destination) -> DeliveryReceipt:
        outcome = self.deliver_batch([(grade, destination)])[0]
        if isinstance(outcome, DeliveryError):
            raise outcome
        return outcome

    def deliver_batch(
        self, items: Sequence[tuple[NormalizedGrade, Destination]]
    ) -> list[DeliveryReceipt | DeliveryError]:
        """Resolve each grade to (section, assignment, enrollment, points), then PUT each section's grades in
        chunks of `max_batch`; every item gets its own outcome, so one bad student fails alone."""
        outcomes: list[DeliveryReceipt | DeliveryError | None] = [None] * len(items)
        resolved: dict[str, list[_Item]] = {}
        refreshed: set[str] = set()
        for index, (grade, destination) in enumerate(items):
            try:
                item = self._resolve(index, grade, destination, refreshed)
            except DeliveryError as exc:
                outcomes[index] = exc
                continue
            except (ArithmeticError, ValueError) as exc:
                # A score no gradebook can hold (e.g. 1e20 points): this grade fails, the batch goes on.
                outcomes[index] = PermanentDeliveryError(
                    f"cannot turn this score into Schoology points ({type(exc).__name__}: {exc})",
                    cause=causes.INVALID_SCORE,
                )
                continue
            resolved.setdefault(item.section_id, []).append(item)
        for section_id, section_items in resolved.items():
            for item, replaced in self._coalesce(section_items):
                outcomes[item.index] = replaced
            newest = [item for item in section_items if outcomes[item.index] is None]
            for start in range(0, len(newest), self.max_batch):
                chunk = newest[start : start + self.max_batch]
                for item, outcome in zip(chunk, self._put_grades(section_id, chunk), strict=True):
                    outcomes[item.index] = outcome
            gone = [
                item
                for item in newest
                if isinstance(outcomes[item.index], PermanentDeliveryError)
                and getattr(outcomes[item.index], "lms_status", None) == 404
            ]
            if gone:
                for item, outcome in self._after_enrollment_miss(section_id, gone, refreshed):
                    outcomes[item.index] = outcome
        return [
            o
            if o is not None
            else RetryableDeliveryError("no outcome recorded for this grade", cause=causes.INTERNAL_ERROR)
            for o in outcomes
        ]

    def _resolve(self, index: int, grade: NormalizedGrade, destination: Destination, refreshed: set[str]) -> _Item:
        section_id = str(destination.data.get("section_id") or destination.section_id or "")
        assignment_id = str(destination.data.get("assignment_id") or "")
        if not section_id or not assignment_id:
            raise PermanentDeliveryError(
                "the placement names no Schoology section and assignment "
                "(gateway placement add --section S --lms-assignment A)",
                cause=causes.NEEDS_CONFIGURATION,
            )
        max_points = self.max_points(section_id, assignment_id)
        uid = self.uid_for(destination, section_id)
        enrollment_id = self.enrollment_id(section_id, uid, refreshed)
        exact, points = scale_points(grade, max_points)
        return _Item(index, grade, section_id, assignment_id, uid, enrollment_id, points, exact, max_points)

    def _after_enrollment_miss(
        self, section_id: str, gone: list[_Item], refreshed: set[str]
    ) -> list[tuple[_Item, DeliveryReceipt | DeliveryError]]:
        """Schoology did not find these enrollments: our cached list was stale. Read it again once; a student
        who left gets a clear permanent failure, one who re-enrolled under a new id is sent again."""
        if section_id in refreshed:
            return []
        refreshed.add(section_id)
        try:
            current = self.section_enrollments(section_id, refresh=True)
        except DeliveryError:
            return []  # keep Schoology's own per-item answer
        results: list[tuple[_Item, DeliveryReceipt | DeliveryError]] = []
        resend: list[_Item] = []
        for item in gone:
            enrollment = current.get(item.uid)
            if enrollment is None:
                results.append(
                    (
                        item,
                        PermanentDeliveryError(
                            f"not enrolled in section {section_id} (Schoology user {item.uid})",
                            cause=causes.NOT_ENROLLED,
                        ),
                    )
                )
            elif str(enrollment["id"]) != item.enrollment_id:
                resend.append(replace(item, enrollment_id=str(enrollment["id"])))
        for start in range(0, len(resend), self.max_batch):
            chunk = resend[start : start + self.max_batch]
            results.extend(zip(chunk, self._put_grades(section_id, chunk), strict=True))
        return results

    @staticmethod
    def _coalesce(items: list[_Item]) -> list[tuple[_Item, DeliveryReceipt]]:
        """Two grades for one gradebook cell in a batch: only the newest is sent; the older is recorded as
        replaced (it would only have been overwritten)."""
        newest: dict[tuple[str, str], _Item] = {}
        for item in items:
            cell = (item.assignment_id, item.enrollment_id)
            if cell not in newest or item.grade.timestamp >= newest[cell].grade.timestamp:
                newest[cell] = item
        return [
            (
                item,
                DeliveryReceipt(
                    lms_status=None,
                    summary=(
                        f"not sent: grade {newest[(item.assignment_id, item.enrollment_id)].grade.grade_id} for the "
                        "same Schoology gradebook cell is newer and went in the same batch"
                    ),
                ),
            )
            for item in items
            if newest[(item.assignment_id, item.enrollment_id)] is not item
        ]

    def _put_grades(self, section_id: str, chunk: list[_Item]) -> list[DeliveryReceipt | DeliveryError]:
        body = {"grades": {"grade": [self._grade_body(item) for item in chunk]}}
        try:
            response = self.call("PUT", f"sections/{quote(section_id, safe='')}/grades", json=body)
            self.raise_for_status(response, f"the grades of section {section_id}")
        except DeliveryError as exc:
            return [exc for _ in chunk]
        answer = json_or_none(response)
        results = _item_results(answer)
        outcomes: list[DeliveryReceipt | DeliveryError] = []
        for position, item in enumerate(chunk):
            result = _result_for(results, position, item)
            code = _int(result.get("response_code")) if result else None
            if code is None or 200 <= code < 300:
                # 204, or 200 without per-item codes: Schoology's convention for a successful update.
                outcomes.append(self._receipt(item, response.status_code))
                continue
            message = str(result.get("message") or result.get("error") or "") if result else ""
            text = f"Schoology refused the grade for enrollment {item.enrollment_id} (item code {code})" + (
                f": {message}" if message else ""
            )
            error = delivery_error(self.answer_table, LmsAnswer(code, str(result)), message=text)
            outcomes.append(error or PermanentDeliveryError(text, code, cause=causes.cause_of_words(message)))
        return outcomes

    def _grade_body(self, item: _Item) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "type": "assignment",
            "assignment_id": _id_value(item.assignment_id),
            "enrollment_id": _id_value(item.enrollment_id),
            "grade": _number(item.points),
        }
        if item.grade.comment:
            entry["comment"] = item.grade.comment
            entry["comment_status"] = self.comment_status
        return entry

    def _receipt(self, item: _Item, status: int) -> DeliveryReceipt:
        rounded = item.points != item.exact_points
        note = f" (rounded from {_plain(item.exact_points)})" if rounded else ""
        return DeliveryReceipt(
            lms_status=status,
            summary=(
                f"stored {_plain(item.points)}/{_plain(item.max_points)} points{note} in Schoology section "
                f"{item.section_id}, assignment {item.assignment_id}, enrollment {item.enrollment_id}"
            ),
            details={
                "section_id": item.section_id,
                "assignment_id": item.assignment_id,
                "enrollment_id": item.enrollment_id,
                "points": _plain(item.points),
                "max_points": _plain(item.max_points),
                "exact_points": _plain(item.exact_points),
                "rounded": rounded,
            },
        )

    # --- roster and health ------------------------------------------------------------------------------------

    @classmethod
    def placement_destination(
        cls, course_id: str | None, section_id: str | None, destination: dict[str, Any]
    ) -> tuple[str, str, dict[str, Any]]:
        """A Schoology placement names a section and an assignment in it; the section is also the course
        Passback routes by (Schoology enrolls students per section)."""
        section = str(destination.get("section_id") or section_id or course_id or "").strip()
        assignment = str(destination.get("assignment_id") or "").strip()
        if not section:
            raise ValueError("a Schoology placement needs the section id (--section)")
        if not assignment:
            raise ValueError("a Schoology placement needs the Schoology assignment id (--lms-assignment)")
        return course_id or section, section, {**destination, "section_id": section, "assignment_id": assignment}

    @classmethod
    def roster_source(cls, destination: Mapping[str, Any], section_id: str | None) -> str | None:
        """What `memberships` reads for a placement: its section."""
        section = destination.get("section_id") or section_id
        return str(section) if section else None

    def memberships(self, section_id: str) -> list[dict[str, Any]]:
        """The section's students in the shape roster sync reads (NRPS's): user_id, status, and the email or
        SIS id when the connection matches students by them."""
        members = []
        for uid, enrollment in self.section_enrollments(section_id, refresh=True).items():
            if _int(enrollment.get("admin")) == 1:
                continue
            member: dict[str, Any] = {
                "user_id": uid,
                "status": "Active" if _int(enrollment.get("status")) in (None, 1) else "Inactive",
                "name": enrollment.get("name_display"),
            }
            if self.roster_match == "school_uid":
                member["lis_person_sourcedid"] = enrollment.get("school_uid") or self.user(uid).get("school_uid")
            elif self.roster_match == "email":
                member["email"] = self.user(uid).get("primary_email")
            members.append(member)
        return members

    def probe(self) -> HealthReport:
        """Check the key with the cheapest authenticated call: who am I (303 to the key's user, re-signed)."""
        try:
            response = self.call("GET", "users/me")
            self.raise_for_status(response, "users/me")
        except DeliveryError as exc:
            return HealthReport(False, exc.message, {"lms_status": exc.lms_status})
        answer = json_or_none(response) or {}
        who = answer.get("name_display") or answer.get("primary_email") or answer.get("uid") or "?"
        return HealthReport(True, f"key works: Schoology accepts it as {who}", {"uid": answer.get("uid")})

    # --- what the dashboard shows of a connection ----------------------------------------------------------

    @classmethod
    def connection_display(
        cls, settings: Mapping[str, Any], *, public_url: str, connection_id: str
    ) -> ConnectionDisplay:
        # Nothing to enter on Schoology's side: the key was made there. What Passback uses, to compare; and
        # placements (catalog assignment → section and Schoology assignment) are mapped on the dashboard.
        return ConnectionDisplay(
            registration=(
                ("API base URL", str(settings.get("base_url", ""))),
                ("Consumer key", str(settings.get("consumer_key", ""))),
                ("Students found by", str(settings.get("roster_match", "uid"))),
            ),
            maps_assignments=True,
        )


def scale_points(grade: NormalizedGrade, max_points: Decimal) -> tuple[Decimal, Decimal]:
    """(exact, rounded) points on the assignment's scale: `scoreGiven` itself when the app's maximum equals
    Schoology's, else scoreGiven / scoreMaximum * max_points; rounded half-up to two decimals."""
    given = Decimal(repr(grade.score_given))
    maximum = Decimal(repr(grade.score_maximum))
    with localcontext(prec=60):
        exact = given if maximum == max_points else (given / maximum * max_points if maximum else Decimal(0))
    exact = exact.quantize(Decimal("1e-9"), rounding=ROUND_HALF_UP)
    return exact, exact.quantize(POINTS_QUANTUM, rounding=ROUND_HALF_UP)


def _plain(value: Decimal) -> str:
    """A Decimal without exponent or trailing zeros: 8.5, 100, 8.333333333."""
    return format(value.normalize(), "f")


def _number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


def _id_value(value: str) -> int | str:
    # Schoology ids are numbers in its own JSON; send them as numbers when they are.
    return int(value) if value.isdigit() else value


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _message(response: requests.Response) -> str | None:
    answer = json_or_none(response)
    if answer:
        for key in ("message", "error", "detail"):
            if isinstance(answer.get(key), str):
                return str(answer[key])
    return None


def _item_results(answer: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """Per-item results of a bulk write: `{"grades": {"grade": [...]}}` or `{"grade": [...]}` (the response
    shape is undocumented; Schoology's bulk examples answer one response_code per item)."""
    if not answer:
        return []
    container: Any = answer.get("grades", answer)
    if isinstance(container, dict):
        container = container.get("grade")
    return [r for r in container if isinstance(r, dict)] if isinstance(container, list) else []


def _result_for(results: list[Mapping[str, Any]], position: int, item: _Item) -> Mapping[str, Any] | None:
    """The item's own result: matched by enrollment and assignment ids, else by position."""
    for result in results:
        if str(result.get("enrollment_id")) == item.enrollment_id and str(result.get("assignment_id")) == (
            item.assignment_id
        ):
            return result
    return results[position] if position < len(results) else None
