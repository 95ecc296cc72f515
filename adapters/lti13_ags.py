"""LTI 1.3 Assignment and Grade Services: line items and scores, with client-credentials access tokens.

Wire details: IMS AGS 2.0 and NRPS 2.0 (imsglobal.org/spec/lti-ags/v2p0); platform URLs from each LMS's docs.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from itertools import combinations
from typing import Any, ClassVar
from urllib.parse import urlencode, urlsplit, urlunsplit

from marshmallow import Schema, ValidationError, fields, post_load, pre_load, validate

from adapters import causes
from adapters.answers import DEFAULT_ANSWERS, AnswerRow, AnswerTable, LmsAnswer, Verdict, classify, status, statuses
from adapters.base import (
    ConfigValue,
    ConnectionDisplay,
    DeliveryReceipt,
    Destination,
    HealthReport,
    LmsAdapter,
    NormalizedGrade,
    PermanentDeliveryError,
    RetryableDeliveryError,
    SecretUnreadableError,
)
from adapters.http import body_excerpt, json_or_none, link_url
from adapters.url_policy import UrlPolicySettings, raise_if_refused_at_launch

SCOPE_LINEITEM = "https://purl.imsglobal.org/spec/lti-ags/scope/lineitem"
SCOPE_LINEITEM_READONLY = "https://purl.imsglobal.org/spec/lti-ags/scope/lineitem.readonly"
SCOPE_RESULT_READONLY = "https://purl.imsglobal.org/spec/lti-ags/scope/result.readonly"
SCOPE_SCORE = "https://purl.imsglobal.org/spec/lti-ags/scope/score"
SCOPE_NRPS = "https://purl.imsglobal.org/spec/lti-nrps/scope/contextmembership.readonly"
MEDIA_LINEITEM = "application/vnd.ims.lis.v2.lineitem+json"
MEDIA_LINEITEM_CONTAINER = "application/vnd.ims.lis.v2.lineitemcontainer+json"
MEDIA_SCORE = "application/vnd.ims.lis.v1.score+json"
MEDIA_MEMBERSHIPS = "application/vnd.ims.lti-nrps.v2.membershipcontainer+json"
MAX_MEMBERSHIP_PAGES = 200
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 300
# Refresh a cached access token this long before the platform says it expires.
TOKEN_EXPIRY_MARGIN = 120
MAX_LINEITEM_PAGES = 50
CANVAS_SUBMISSION_EXTENSION = "https://canvas.instructure.com/lti/submission"
# The gradingProgress values with which a platform counts scoreGiven; with any other it sets the score to nil
# (Canvas: Lti::IMS::ScoresController; Moodle: gradebookservices scores.php). AGS promises only FullyGraded.
COUNTED_PROGRESS: dict[str, frozenset[str]] = {
    "canvas": frozenset({"FullyGraded", "PendingManual"}),
    "moodle": frozenset({"FullyGraded"}),
}
# How finely a platform orders score timestamps: Moodle compares whole seconds and refuses an equal one (409).
TIMESTAMP_RESOLUTION: dict[str, timedelta] = {"moodle": timedelta(seconds=1)}
MILLISECOND = timedelta(milliseconds=1)


# Platform presets: the URLs an admin would otherwise copy by hand (each LMS's docs, e.g. Schoology "LTI Apps").
PRESETS: dict[str, dict[str, str]] = {
    "canvas": {
        "issuer": "https://canvas.instructure.com",
        "auth_url": "https://sso.canvaslms.com/api/lti/authorize_redirect",
        "token_url": "https://sso.canvaslms.com/login/oauth2/token",
        "jwks_url": "https://sso.canvaslms.com/api/lti/security/jwks",
    },
    "schoology": {
        "issuer": "https://schoology.schoology.com",
        "auth_url": "https://lti-service.svc.schoology.com/lti-service/authorize-redirect",
        "token_url": "https://lti-service.svc.schoology.com/lti-service/access-token",
        "jwks_url": "https://lti-service.svc.schoology.com/lti-service/.well-known/jwks",
    },
    "blackboard": {
        "issuer": "https://blackboard.com",
        "auth_url": "https://developer.blackboard.com/api/v1/gateway/oidcauth",
        "token_url": "https://developer.blackboard.com/api/v1/gateway/oauth2/jwttoken",
    },
    "d2l": {
        "token_url": "https://auth.brightspace.com/core/connect/token",
        # D2L wants a fixed assertion audience, different from its token URL (hypothesis/lms D2L plugin).
        "token_audience": "https://api.brightspace.com/auth/token",
    },
    "moodle": {},
    "generic": {},
}


class Lti13SettingsSchema(UrlPolicySettings):
    """`gateway lms add --adapter lti13`: the platform registration for one district."""

    platform = fields.String(load_default="generic", validate=validate.OneOf(sorted(PRESETS)))
    issuer = fields.String(validate=validate.Length(min=1, max=500))
    client_id = fields.String(required=True, validate=validate.Length(min=1, max=255))
    deployment_ids = fields.List(
        fields.String(validate=validate.Length(min=1, max=255)), required=True, validate=validate.Length(min=1)
    )
    auth_url = fields.Url(require_tld=False, schemes={"https", "http"})
    token_url = fields.Url(require_tld=False, schemes={"https", "http"})
    jwks_url = fields.Url(require_tld=False, schemes={"https", "http"})
    public_jwk = fields.Dict(metadata={"description": "A static platform key, when the platform has no JWKS URL."})
    token_audience = fields.String(metadata={"description": "Assertion aud when it is not the token URL (D2L)."})
    roster_match = fields.String(
        load_default="email",
        validate=validate.OneOf(["email", "sourcedid"]),
        metadata={"description": "How a roster sync (NRPS) maps members to Passback users."},
    )

    @pre_load
    def _split_deployment_ids(self, data: Any, **_: Any) -> Any:
        # `gateway lms add --setting deployment_ids=a,b` arrives as one string.
        if isinstance(data, dict) and isinstance(data.get("deployment_ids"), str):
            data = {**data, "deployment_ids": [d.strip() for d in data["deployment_ids"].split(",") if d.strip()]}
        return data

    @post_load
    def _apply_preset(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        for key, value in PRESETS[data["platform"]].items():
            data.setdefault(key, value)
        missing = [k for k in ("issuer", "auth_url", "token_url") if not data.get(k)]
        if missing:
            raise ValidationError({k: ["Required for this platform."] for k in missing})
        if not data.get("jwks_url") and not data.get("public_jwk"):
            raise ValidationError({"jwks_url": ["Give jwks_url or public_jwk."]})
        return data


def scores_url(lineitem_url: str) -> str:
    """`{lineitem}/scores` on the path, before any query (Moodle's `?type_id=` must survive; AGS §3.4)."""
    parts = urlsplit(lineitem_url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/scores"))


def _timestamp(value: datetime) -> str:
    # AGS wants sub-second precision and an offset; stored times are naive UTC.
    return value.replace(tzinfo=None).isoformat(timespec="milliseconds") + "+00:00"


def _parse_timestamp(value: Any) -> datetime | None:
    """A timestamp Passback sent (or an LMS quoted) as naive UTC; None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.astimezone(UTC).replace(tzinfo=None) if parsed.tzinfo else parsed


def _floor(value: datetime, resolution: timedelta) -> datetime:
    """`value` rounded down to the platform's resolution (whole seconds for Moodle, milliseconds otherwise)."""
    step = int(resolution / timedelta(microseconds=1))
    micros = int((value - datetime(1970, 1, 1)) / timedelta(microseconds=1))
    return datetime(1970, 1, 1) + timedelta(microseconds=micros - micros % step)


_CANVAS_STORED_TIMESTAMP = re.compile(r"before last updated timestamp of (\S+)")

# The answer-table tag of a refusal because the platform holds a score stamped later: `deliver` re-sends once with
# a later timestamp before the row's verdict applies.
STALE_TIMESTAMP = "stale-timestamp"
# AGS platforms (Canvas, Schoology, Blackboard, D2L, generic) hold an OAuth2 access token: a 401 means that token.
LTI13_ANSWERS = DEFAULT_ANSWERS.extended(
    AnswerRow(
        status(401),
        Verdict.REFRESH_TOKEN_THEN_RETRY,
        explanation="the platform refused a fresh access token: check the developer key, its scopes and that the "
        "tool is installed in the course",
        cause=causes.CREDENTIALS_REFUSED,
    ),
    # Canvas: 400 "Score timestamp ... before last updated timestamp of ..." (Lti::IMS::ScoresController).
    AnswerRow(
        status(400),
        Verdict.RETRY,
        marker=_CANVAS_STORED_TIMESTAMP,
        tag=STALE_TIMESTAMP,
        explanation="the platform holds a score stamped later than now; trying again later",
        cause=causes.NEWER_SCORE_IN_LMS,
    ),
    lms="platform",
)
# Moodle compares whole seconds and answers 409 to a score not stamped after the one it holds (its only 409 on
# scores; the reason is in the status line, which HTTP/2 drops). Elsewhere a 409 is an ordinary refusal.
MOODLE_ANSWERS = LTI13_ANSWERS.extended(
    AnswerRow(
        status(409),
        Verdict.RETRY,
        tag=STALE_TIMESTAMP,
        explanation="the platform holds a score stamped later than now; trying again later",
        cause=causes.NEWER_SCORE_IN_LMS,
    )
)
# The token endpoint (RFC 6749 §5.2): 400/401 invalid_client, invalid_grant … mean the registration is wrong.
TOKEN_ENDPOINT_ANSWERS = DEFAULT_ANSWERS.extended(
    AnswerRow(
        statuses(400, 401),
        Verdict.FAIL,
        explanation="refused the client assertion (check the client id, the tool's public key on the platform "
        "and the assertion audience)",
        cause=causes.CREDENTIALS_REFUSED,
    ),
    lms="token endpoint",
)


class Lti13AgsAdapter(LmsAdapter):
    kind: ClassVar[str] = "lti13"
    settings_schema: ClassVar[type[Schema]] = Lti13SettingsSchema
    secret_settings: ClassVar[frozenset[str]] = frozenset()
    # Scores are addressed to the platform's `sub`, learned at launch or from NRPS.
    needs_lms_identity: ClassVar[bool] = True
    # Names and Role Provisioning Services: the members of a context.
    supports_roster: ClassVar[bool] = True
    answer_table: ClassVar[AnswerTable] = LTI13_ANSWERS
    # A platform whose answers differ from the adapter's table (its `platform` setting picks it).
    platform_answer_tables: ClassVar[Mapping[str, AnswerTable]] = {"moodle": MOODLE_ANSWERS}
    token_endpoint_answers: ClassVar[AnswerTable] = TOKEN_ENDPOINT_ANSWERS

    @staticmethod
    def needs_discovery(destination_data: Mapping[str, Any]) -> bool:
        """The line item must be found or created first: one worker at a time, or two would create two."""
        return not destination_data.get("lineitem")

    @staticmethod
    def registration_key(settings: Mapping[str, Any]) -> str:
        """How a launch finds this registration: the platform's issuer and the tool's client id."""
        return f"{settings['issuer']}|{settings['client_id']}"

    # --- access tokens -------------------------------------------------------------------------------

    def _token_key(self, scopes: list[str]) -> str:
        return _token_key(self.settings, scopes)

    def _client_assertion(self) -> str:
        from joserfc import jwt

        key = self.context.signing_key
        if key is None and self.context.signing_key_problem:
            raise SecretUnreadableError(self.context.signing_key_problem)
        if key is None:
            raise PermanentDeliveryError(
                "Passback has no signing key for LTI 1.3 (run `gateway keys rotate`)", cause=causes.NEEDS_CONFIGURATION
            )
        now = int(time.time())
        claims = {
            "iss": self.settings["client_id"],
            "sub": self.settings["client_id"],
            "aud": self.settings.get("token_audience") or self.settings["token_url"],
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
            "jti": str(uuid.uuid4()),
        }
        return jwt.encode({"alg": "RS256", "kid": key.kid, "typ": "JWT"}, claims, key)

    def access_token(self, scopes: list[str], *, fresh: bool = False) -> str:
        """A bearer token for these scopes: from the shared cache, or by client credentials (RFC 7523). Threads
        of one process that miss the cache together wait for one of them to fetch it (one token, not one each)."""
        key = self._token_key(scopes)
        if not fresh:
            cached = self.context.token_cache.get(key)
            if cached:
                return cached
        with self.context.locks(key):
            if not fresh:
                cached = self.context.token_cache.get(key)
                if cached:
                    return cached
            return self._fetch_token(key, scopes)

    def _fetch_token(self, key: str, scopes: list[str]) -> str:
        response = self.http.request(
            "POST",
            self.settings["token_url"],
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": CLIENT_ASSERTION_TYPE,
                "client_assertion": self._client_assertion(),
                "scope": " ".join(scopes),
            },
            headers={"Accept": "application/json"},
        )
        body = json_or_none(response)
        said = body.get("error") if body else None
        error = f"{said} {body.get('error_description') or ''}".rstrip() if body and said else None
        classify(self.token_endpoint_answers, response, detail=error)
        if response.status_code != 200 or not body or not body.get("access_token"):
            raise PermanentDeliveryError(
                f"token endpoint answered HTTP {response.status_code} without an access token",
                response.status_code,
                body_excerpt(response),
                cause=causes.UNEXPECTED_ANSWER,
            )
        expires_in = float(body.get("expires_in") or 3600)
        token = str(body["access_token"])
        self.context.token_cache.put(key, token, max(30.0, expires_in - TOKEN_EXPIRY_MARGIN))
        return token

    def _authorized(self, method: str, url: str, scopes: list[str], **kwargs: Any) -> Any:
        """Send with a bearer token; an answer the table says is the token's (a 401) drops the cached token and
        tries once more with a fresh one (the same answer again is classified as permanent)."""
        headers = dict(kwargs.pop("headers", {}))
        headers["Authorization"] = f"Bearer {self.access_token(scopes)}"
        response = self.http.request(method, url, headers=headers, **kwargs)
        if self.answers.verdict(LmsAnswer.of(response)) is Verdict.REFRESH_TOKEN_THEN_RETRY:
            self.context.token_cache.drop(self._token_key(scopes))
            headers["Authorization"] = f"Bearer {self.access_token(scopes, fresh=True)}"
            response = self.http.request(method, url, headers=headers, **kwargs)
        return response

    # --- line items ----------------------------------------------------------------------------------

    @staticmethod
    def _granted(destination: Destination, wanted: list[str]) -> list[str]:
        granted = destination.data.get("scopes")
        if not granted:
            return wanted
        return [s for s in wanted if s in granted] or wanted

    @property
    def answers(self) -> AnswerTable:
        """The answer table for this connection's platform."""
        return self.platform_answer_tables.get(self.platform, self.answer_table)

    def _classify(self, response: Any) -> None:
        classify(self.answers, response, detail=_lms_message(response))

    def find_or_create_lineitem(
        self, grade: NormalizedGrade, destination: Destination
    ) -> tuple[str, dict[str, Any] | None]:
        """The line item for this placement: the launch's, else this link's found by resourceId and
        resourceLinkId, else a new one. Returns the URL and what the placement remembers of it (None: known)."""
        known = destination.data.get("lineitem")
        if known:
            return str(known), None
        container = destination.data.get("lineitems")
        if not container:
            raise_if_refused_at_launch(destination.data)
            raise PermanentDeliveryError(
                "the placement has neither a line item nor a line items URL: launch the link once, or "
                "re-add it with the assignment picker",
                cause=causes.NEEDS_CONFIGURATION,
            )
        scopes = self._granted(destination, [SCOPE_LINEITEM, SCOPE_SCORE])
        resource_link_id = destination.data.get("resource_link_id")
        query = {"resource_id": grade.assignment_id}
        # Schoology refuses a resource_link_id filter it does not know (code-dot-org/code-dot-org#57068).
        if resource_link_id and self.settings.get("platform") != "schoology":
            query["resource_link_id"] = str(resource_link_id)
        parts = urlsplit(str(container))
        url: str | None = urlunsplit(parts._replace(query="&".join(filter(None, [parts.query, urlencode(query)]))))
        # For a placement without a link: items tied to a link Passback has no placement for (e.g. a deep-linked
        # one), found by resourceId; used when it is the only one, rather than adding a second column.
        tied: list[dict[str, Any]] = []
        for _ in range(MAX_LINEITEM_PAGES):
            if url is None:
                break
            response = self._authorized("GET", url, scopes, headers={"Accept": MEDIA_LINEITEM_CONTAINER})
            self._classify(response)
            items = response.json() if response.content else []
            for item in items if isinstance(items, list) else []:
                if isinstance(item, dict) and item.get("resourceId") == grade.assignment_id and item.get("id"):
                    item_link = item.get("resourceLinkId") or None
                    # Only this link's own column (or, for a placement without a link, one tied to no link):
                    # another link of the same assignment has its own, and a platform may ignore the filter.
                    if item_link == (resource_link_id or None):
                        return str(item["id"]), {"lineitem": str(item["id"])}
                    if not resource_link_id and str(item_link) not in destination.placed_links:
                        tied.append(item)
            url = link_url(response, "next")
        if len(tied) == 1:
            # Remembered with its link, so that if another link takes this placement it does not inherit it.
            return str(tied[0]["id"]), {"lineitem": str(tied[0]["id"]), "lineitem_link": str(tied[0]["resourceLinkId"])}
        body: dict[str, Any] = {
            "scoreMaximum": float(destination.data.get("score_maximum") or grade.score_maximum),
            "label": str(destination.data.get("label") or grade.assignment_name),
            "resourceId": grade.assignment_id,
            "tag": "passback",
        }
        if resource_link_id:
            body["resourceLinkId"] = resource_link_id
        # Never send "id" on create: Schoology answers 400 "id is not allowed" (Simon-Initiative/lti_1p3#27).
        response = self._authorized(
            "POST",
            str(container),
            scopes,
            json=body,
            headers={"Content-Type": MEDIA_LINEITEM, "Accept": MEDIA_LINEITEM},
        )
        self._classify(response)
        created = json_or_none(response)
        if not created or not created.get("id"):
            raise PermanentDeliveryError(
                "the platform created a line item but did not return its id",
                response.status_code,
                body_excerpt(response),
                cause=causes.UNEXPECTED_ANSWER,
            )
        return str(created["id"]), {"lineitem": str(created["id"])}

    # --- scores ----------------------------------------------------------------------------------------

    @property
    def platform(self) -> str:
        return str(self.settings.get("platform") or "generic")

    def counts_score(self, grade: NormalizedGrade) -> bool:
        """Whether the platform keeps scoreGiven with this gradingProgress (AGS promises it for FullyGraded)."""
        return grade.grading_progress in COUNTED_PROGRESS.get(self.platform, frozenset({"FullyGraded"}))

    def score_body(
        self, grade: NormalizedGrade, destination: Destination, timestamp: datetime | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "userId": destination.lms_user_id,
            "scoreGiven": grade.score_given,
            "scoreMaximum": grade.score_maximum,
            "activityProgress": grade.activity_progress,
            "gradingProgress": grade.grading_progress,
            "timestamp": _timestamp(timestamp or grade.timestamp),
        }
        if grade.comment:
            body["comment"] = grade.comment
        if self.platform != "canvas":
            return body
        canvas = (grade.context or {}).get("canvas")
        extension: dict[str, Any] = {}
        if isinstance(canvas, Mapping):
            extension = {
                k: canvas[k]
                for k in ("submitted_at", "new_submission", "prioritize_non_tool_grade", "needs_additional_review")
                if k in canvas
            }
        if grade.preserve_score and not self.counts_score(grade):
            # Canvas sets the score to nil for a progress it does not count, unless told to preserve it.
            extension["preserve_score"] = True
        if extension:
            body[CANVAS_SUBMISSION_EXTENSION] = extension
        return body

    def _resolution(self) -> timedelta:
        return TIMESTAMP_RESOLUTION.get(self.platform, MILLISECOND)

    def score_timestamp(self, grade: NormalizedGrade, destination: Destination, lineitem: str) -> datetime:
        """The grade's timestamp, unless the platform would not order it after the last score sent to this
        line item for this student: then one step (Moodle: one whole second) after that one."""
        stamp = grade.timestamp.replace(tzinfo=None)
        last = destination.last_receipt
        sent = _parse_timestamp(last.get("timestamp")) if last.get("lineitem") == lineitem else None
        step = self._resolution()
        if sent is not None and _floor(stamp, step) <= _floor(sent, step):
            stamp = _floor(sent, step) + step
        return stamp

    def _later_timestamp(self, refused: datetime, response: Any) -> datetime:
        """After a refusal for an older timestamp: a timestamp after the refused one, after now, and after the
        one the platform says it holds (Canvas quotes it; Moodle does not)."""
        step = self._resolution()
        candidates = [refused, datetime.now(UTC).replace(tzinfo=None)]
        quoted = _CANVAS_STORED_TIMESTAMP.search(_lms_message(response) or "")
        stored = _parse_timestamp(quoted.group(1).rstrip(".,")) if quoted else None
        if stored is not None:
            candidates.append(stored)
        return _floor(max(candidates), step) + step

    def _refused_as_older(self, response: Any) -> bool:
        """The platform refused the score because it holds one stamped later (or, on Moodle, in the same
        second): the answer matches a STALE_TIMESTAMP row of the platform's table."""
        row = self.answers.row_for(LmsAnswer.of(response))
        return row is not None and row.tag == STALE_TIMESTAMP

    def _post_score(self, lineitem: str, grade: NormalizedGrade, destination: Destination, stamp: datetime) -> Any:
        return self._authorized(
            "POST",
            scores_url(lineitem),
            self._granted(destination, [SCOPE_LINEITEM, SCOPE_SCORE]),
            json=self.score_body(grade, destination, stamp),
            headers={"Content-Type": MEDIA_SCORE, "Accept": "application/json"},
        )

    @staticmethod
    def _kept(destination: Destination, lineitem: str | None) -> dict[str, Any]:
        """What the gradebook holds when the platform kept its score: the last score delivered there, if any."""
        last = destination.last_receipt
        held = last.get("gradebook_holds") if lineitem and last.get("lineitem") == lineitem else None
        if not isinstance(held, Mapping) or held.get("score") is None:
            return {"score": None, "kept": True}
        return {"score": held["score"], "scoreMaximum": held.get("scoreMaximum"), "kept": True}

    def deliver(self, grade: NormalizedGrade, destination: Destination) -> DeliveryReceipt:
        """POST the score to the placement's line item (found or created first). Repeating is safe: the
        timestamp is the grade's (or, where the platform would not order it after the last one sent, the
        next one it would), so the platform treats a repeat as the same score.

        The receipt says what the gradebook holds now (`gradebook_holds`): the score sent, no score, or the
        score kept from before (a progress the platform does not count, with `preserve_score`)."""
        counted = self.counts_score(grade)
        if not counted and grade.preserve_score and self.platform == "moodle":
            return self._not_sent_to_moodle(grade, destination)
        lineitem, learned = self.find_or_create_lineitem(grade, destination)
        stamp = self.score_timestamp(grade, destination, lineitem)
        response = self._post_score(lineitem, grade, destination, stamp)
        if self._refused_as_older(response):
            # The worker sends only a grade's newest revision: what the platform holds is older in truth (an
            # earlier revision in the same second, or a send whose receipt was lost). Stamp it later, once.
            stamp = self._later_timestamp(stamp, response)
            response = self._post_score(lineitem, grade, destination, stamp)
        # Refused as older again: the table's verdict (retry later).
        self._classify(response)
        answer = json_or_none(response) or {}
        holds: dict[str, Any]
        if counted:
            holds = {"score": grade.score_given, "scoreMaximum": grade.score_maximum}
            if grade.grading_progress != "FullyGraded" and self.platform not in COUNTED_PROGRESS:
                holds["certain"] = False  # AGS lets a platform ignore any progress but FullyGraded
            summary = f"score {grade.score_given:g}/{grade.score_maximum:g} posted to {lineitem}"
        elif grade.preserve_score and self.platform == "canvas":
            holds = self._kept(destination, lineitem)
            summary = f"{grade.grading_progress} posted to {lineitem} with preserve_score: the score is kept"
        elif self.platform in COUNTED_PROGRESS:
            holds = {"score": None}
            summary = f"{grade.grading_progress} posted to {lineitem}: the platform clears the score"
        else:
            holds = {"score": grade.score_given, "scoreMaximum": grade.score_maximum, "certain": False}
            summary = (
                f"score {grade.score_given:g}/{grade.score_maximum:g} ({grade.grading_progress}) posted to {lineitem}"
            )
        details: dict[str, Any] = {"lineitem": lineitem, "timestamp": _timestamp(stamp), "gradebook_holds": holds}
        if "resultUrl" in answer:
            details["resultUrl"] = answer["resultUrl"]
        return DeliveryReceipt(
            lms_status=response.status_code,
            summary=summary,
            details=details,
            destination_update=learned,
        )

    def _not_sent_to_moodle(self, grade: NormalizedGrade, destination: Destination) -> DeliveryReceipt:
        """Moodle sets scoreGiven to null unless gradingProgress is FullyGraded, erasing the grade it holds; the
        app did not ask to clear it, so nothing is sent. The last send's line item and timestamp are carried
        over, so the next score is still ordered after what Moodle holds."""
        last = destination.last_receipt
        lineitem = destination.data.get("lineitem")
        details: dict[str, Any] = {
            "sent": False,
            "gradebook_holds": self._kept(destination, str(lineitem) if lineitem else None),
        }
        details.update({k: last[k] for k in ("lineitem", "timestamp") if k in last})
        return DeliveryReceipt(
            lms_status=None,
            summary=f"not sent: Moodle would drop a {grade.grading_progress} score and clear the grade it holds, "
            "which is kept (send preserveScore false to clear it)",
            details=details,
        )

    # --- rosters (Names and Role Provisioning Services 2.0) -----------------------------------------------

    @classmethod
    def roster_source(cls, destination: Mapping[str, Any], section_id: str | None) -> str | None:
        """The context's NRPS URL, learned at launch."""
        url = destination.get("context_memberships_url")
        return str(url) if url else None

    def memberships(self, context_memberships_url: str) -> list[dict[str, Any]]:
        """Every member of the context, following `Link: rel=next` pages (100 a page: Schoology's maximum)."""
        parts = urlsplit(context_memberships_url)
        query = parts.query if "limit=" in parts.query else "&".join(filter(None, [parts.query, "limit=100"]))
        url: str | None = urlunsplit(parts._replace(query=query))
        members: list[dict[str, Any]] = []
        for _ in range(MAX_MEMBERSHIP_PAGES):
            if url is None:
                break
            # The exact Accept header: Schoology refuses anything else (Simon-Initiative/lti_1p3#27).
            response = self._authorized("GET", url, [SCOPE_NRPS], headers={"Accept": MEDIA_MEMBERSHIPS})
            self._classify(response)
            body = json_or_none(response) or {}
            members.extend(m for m in body.get("members") or [] if isinstance(m, dict))
            url = link_url(response, "next")
        return members

    def probe(self) -> HealthReport:
        """Ask the token endpoint for a score token: proves the key, client id and assertion audience."""
        try:
            self.access_token([SCOPE_SCORE], fresh=True)
        except (PermanentDeliveryError, RetryableDeliveryError) as exc:
            return HealthReport(False, f"token endpoint: {exc.message}")
        return HealthReport(True, "the platform issued an access token")

    # --- what the dashboard shows of a connection ----------------------------------------------------------

    caches_access_tokens: ClassVar[bool] = True
    # The scope lists this adapter asks tokens for; `_granted` may narrow one to the part a platform granted.
    token_scope_lists: ClassVar[tuple[tuple[str, ...], ...]] = ((SCOPE_LINEITEM, SCOPE_SCORE), (SCOPE_NRPS,))

    @classmethod
    def connection_display(
        cls, settings: Mapping[str, Any], *, public_url: str, connection_id: str
    ) -> ConnectionDisplay:
        return ConnectionDisplay(
            configuration=(
                ConfigValue(
                    "Tool configuration JSON URL (Canvas: Paste JSON)", f"{public_url}/lti/config/{connection_id}"
                ),
                ConfigValue("OIDC login / initiation URL", f"{public_url}/lti/login"),
                ConfigValue("Target link URI / launch / redirect URI", f"{public_url}/lti/launch"),
                ConfigValue("Deep linking URL", f"{public_url}/lti/launch"),
                ConfigValue("Public keyset (JWKS) URL", f"{public_url}/lti/jwks"),
            ),
            registration=(
                ("Platform", str(settings.get("platform", ""))),
                ("Issuer", str(settings.get("issuer", ""))),
                ("Client ID", str(settings.get("client_id", ""))),
                ("Deployment IDs", ", ".join(settings.get("deployment_ids") or [])),
            ),
        )

    @classmethod
    def token_cache_keys(cls, settings: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
        """Each scope list the adapter asks for and each part of it `_granted` can keep (in the list's order),
        under the key `access_token` caches it by."""
        scope_sets = {
            part
            for wanted in cls.token_scope_lists
            for size in range(1, len(wanted) + 1)
            for part in combinations(wanted, size)
        }
        return {_token_key(settings, list(scopes)): scopes for scopes in sorted(scope_sets)}


def _token_key(settings: Mapping[str, Any], scopes: list[str]) -> str:
    """The token cache's key for a token of these scopes from this platform's token endpoint for this client."""
    return f"lti13|{settings['token_url']}|{settings['client_id']}|{' '.join(scopes)}"


def _lms_message(response: Any) -> str | None:
    """The platform's own error text: Canvas's {"errors":{"message"}} or {"errors":[{"message"}]}, or
    {"error": …}, else the body."""
    body = json_or_none(response)
    if not body:
        return None
    errors = body.get("errors")
    if isinstance(errors, dict) and errors.get("message"):
        return str(errors["message"])
    if isinstance(errors, list) and errors and isinstance(errors[0], dict) and errors[0].get("message"):
        return str(errors[0]["message"])
    if body.get("error"):
        return str(body.get("error_description") or body["error"])
    return None
