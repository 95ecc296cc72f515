"""What an LMS answer means: one table per adapter (`LmsAdapter.answer_table`) and one `classify` that reads it.

A table is a list of rows, first match wins: an HTTP status (or a range), optionally a marker in the body
(Canvas's rate-limit 403, Canvas's stored-timestamp 400), and the verdict. `classify` turns the verdict into the
exceptions the worker knows: RETRY into RetryableDeliveryError (with the answer's Retry-After), FAIL and an
exhausted REFRESH_TOKEN_THEN_RETRY into PermanentDeliveryError; a 2xx is a success (None). Every adapter's table
is printed in docs/adapters.md, which is where "where does Canvas's 422 become a permanent failure?" is answered.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import requests

# The module, not its names: base.py imports this module for LmsAdapter's default table.
from adapters import base, causes
from adapters.http import MAX_KEPT_BODY, RATE_LIMIT_MARKER, parse_retry_after


class Verdict(Enum):
    """What a delivery does after an answer that is not a success."""

    # Try again later (the outbox schedules it, after the answer's Retry-After when it names one).
    RETRY = "retry"
    # Drop the cached access token, fetch a fresh one and send once more in the same attempt; the same answer to
    # the fresh token is permanent (the credentials are wrong, a person must act).
    REFRESH_TOKEN_THEN_RETRY = "refresh token, then retry once"  # noqa: S105 (a verdict, not a secret)
    # Fail for good: a retry cannot fix it.
    FAIL = "fail"


@dataclass(frozen=True)
class LmsAnswer:
    """The parts of an LMS answer a verdict may depend on."""

    status: int
    body: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, response: requests.Response) -> LmsAnswer:
        text = response.text or ""
        return cls(response.status_code, text, response.headers)

    @property
    def excerpt(self) -> str:
        """The body as kept on the delivery row (the first MAX_KEPT_BODY characters)."""
        return self.body if len(self.body) <= MAX_KEPT_BODY else self.body[:MAX_KEPT_BODY] + "…"

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((value for key, value in self.headers.items() if key.lower() == wanted), None)


@dataclass(frozen=True)
class AnswerRow:
    """One row of an answer table: which answers it matches and what they mean.

    `explanation` is what the failure message says a person should know (it may name the answer's headers, e.g.
    a redirect's Location: `{location}`); `tag` names a row an adapter acts on itself (e.g. re-sending with a
    later timestamp) before the verdict applies; `cause` is the code in adapters/causes.py that says in plain
    language what the answer means (required: a row without one is a type error)."""

    statuses: range
    verdict: Verdict
    marker: re.Pattern[str] | None = None
    when: Callable[[LmsAnswer], bool] | None = None
    explanation: str | None = None
    tag: str | None = None
    cause: str = field(kw_only=True)

    def matches(self, answer: LmsAnswer) -> bool:
        if answer.status not in self.statuses:
            return False
        if self.marker is not None and not self.marker.search(answer.body):
            return False
        return self.when is None or self.when(answer)

    @property
    def status_text(self) -> str:
        first, last = self.statuses.start, self.statuses.stop - 1
        return str(first) if first == last else f"{first}-{last}"


def status(code: int) -> range:
    return range(code, code + 1)


def statuses(first: int, last: int) -> range:
    return range(first, last + 1)


@dataclass(frozen=True)
class AnswerTable:
    """An adapter's rows, first match wins; an answer no row matches gets `otherwise`. `lms` names the other
    side in messages ("Schoology answered HTTP 403 …")."""

    rows: tuple[AnswerRow, ...]
    lms: str = "LMS"
    otherwise: Verdict = Verdict.FAIL
    # The cause of an answer no row matches.
    otherwise_cause: str = causes.LMS_REFUSED

    def extended(self, *rows: AnswerRow, lms: str | None = None) -> AnswerTable:
        """This table with `rows` put before its own (so they take precedence)."""
        return AnswerTable((*rows, *self.rows), lms or self.lms, self.otherwise, self.otherwise_cause)

    def row_for(self, answer: LmsAnswer) -> AnswerRow | None:
        """The first row matching a non-2xx answer; None for a success or when no row matches."""
        if 200 <= answer.status < 300:
            return None
        return next((row for row in self.rows if row.matches(answer)), None)

    def verdict(self, answer: LmsAnswer) -> Verdict | None:
        """None for a success, else the matching row's verdict (or `otherwise`)."""
        if 200 <= answer.status < 300:
            return None
        row = self.row_for(answer)
        return row.verdict if row is not None else self.otherwise

    def cause(self, answer: LmsAnswer) -> str | None:
        """None for a success, else the matching row's cause (or `otherwise_cause`)."""
        if 200 <= answer.status < 300:
            return None
        row = self.row_for(answer)
        return row.cause if row is not None else self.otherwise_cause


# Refusals whose body names the reason (the LMS's words, adapters/causes.py): read on the statuses LMSs refuse a
# score with, after the rate-limit 403. Their verdict is the table's `otherwise` (FAIL); only the cause is added.
_WORDED_REFUSALS = tuple(
    AnswerRow(codes, Verdict.FAIL, marker=marker, cause=code)
    for codes in (status(400), statuses(403, 404), status(422))
    for marker, code in (
        (causes.NOT_ENROLLED_MARKER, causes.NOT_ENROLLED),
        (causes.CLOSED_MARKER, causes.ASSIGNMENT_CLOSED),
        (causes.INVALID_SCORE_MARKER, causes.INVALID_SCORE),
    )
)

DEFAULT_ANSWERS = AnswerTable(
    (
        AnswerRow(status(408), Verdict.RETRY, cause=causes.TIMED_OUT),
        AnswerRow(status(425), Verdict.RETRY, cause=causes.RATE_LIMITED),
        AnswerRow(status(429), Verdict.RETRY, cause=causes.RATE_LIMITED),
        # Canvas throttles with 403 "Rate Limit Exceeded", not 429 (canvas-lms request_throttle.rb).
        AnswerRow(status(403), Verdict.RETRY, marker=RATE_LIMIT_MARKER, cause=causes.RATE_LIMITED),
        *_WORDED_REFUSALS,
        AnswerRow(status(401), Verdict.FAIL, cause=causes.CREDENTIALS_REFUSED),
        AnswerRow(status(403), Verdict.FAIL, cause=causes.ACCESS_DENIED),
        AnswerRow(status(404), Verdict.FAIL, cause=causes.NOT_FOUND_IN_LMS),
        AnswerRow(statuses(500, 599), Verdict.RETRY, cause=causes.LMS_ERROR),
        AnswerRow(
            statuses(300, 399),
            Verdict.FAIL,
            explanation="redirected to {location}; check the URL",
            cause=causes.NEEDS_CONFIGURATION,
        ),
    )
)


def delivery_error(
    table: AnswerTable,
    answer: requests.Response | LmsAnswer,
    *,
    what: str | None = None,
    detail: str | None = None,
    lms: str | None = None,
    message: str | None = None,
) -> base.DeliveryError | None:
    """None for a 2xx answer; otherwise the error the table says: RetryableDeliveryError for RETRY (with the
    answer's Retry-After), PermanentDeliveryError for FAIL and for REFRESH_TOKEN_THEN_RETRY (this reads the last
    answer: an adapter spends its one refresh before). For a batch item's outcome; `classify` raises it.

    The message is "{lms} answered HTTP {status} to {what}: {row's explanation} — {lms} said: {detail}", parts
    left out when empty; `detail` is the LMS's own words (else the body); `message` replaces it all."""
    if isinstance(answer, requests.Response):
        answer = LmsAnswer.of(answer)
    if 200 <= answer.status < 300:
        return None
    row = table.row_for(answer)
    verdict = row.verdict if row is not None else table.otherwise
    cause = row.cause if row is not None else table.otherwise_cause
    excerpt = answer.excerpt
    if message is None:
        message = _message(table, answer, row, what=what, detail=detail or excerpt, lms=lms)
    if verdict is Verdict.RETRY:
        retry_after = parse_retry_after(answer.header("Retry-After"))
        return base.RetryableDeliveryError(message, retry_after, answer.status, excerpt, cause=cause)
    return base.PermanentDeliveryError(message, answer.status, excerpt, cause=cause)


def classify(
    table: AnswerTable,
    answer: requests.Response | LmsAnswer,
    *,
    what: str | None = None,
    detail: str | None = None,
    lms: str | None = None,
    message: str | None = None,
) -> None:
    """Return for a 2xx answer; otherwise raise the error the table says (see `delivery_error`)."""
    error = delivery_error(table, answer, what=what, detail=detail, lms=lms, message=message)
    if error is not None:
        raise error


def _message(
    table: AnswerTable, answer: LmsAnswer, row: AnswerRow | None, *, what: str | None, detail: str, lms: str | None
) -> str:
    who = lms or table.lms
    text = f"{who} answered HTTP {answer.status}" + (f" to {what}" if what else "")
    explanation = row.explanation if row is not None else None
    if explanation:
        text += ": " + explanation.format(location=answer.header("Location") or "?")
        return text + (f" — {who} said: {detail}" if detail else "")
    return text + (f": {detail}" if detail else "")


def describe(table: AnswerTable) -> list[dict[str, Any]]:
    """The table as rows of text (status, condition, verdict, cause, explanation), for docs and tests. A marker
    of the causes catalogue is named, not printed (docs/error-causes.md has its pattern)."""
    described = [
        {
            "status": row.status_text,
            "when": _marker_text(row.marker) if row.marker is not None else ("see adapter" if row.when else ""),
            "verdict": row.verdict.value,
            "cause": row.cause,
            "explanation": row.explanation or "",
        }
        for row in table.rows
    ]
    described.append(
        {
            "status": "other",
            "when": "",
            "verdict": table.otherwise.value,
            "cause": table.otherwise_cause,
            "explanation": "",
        }
    )
    return described


_NAMED_MARKERS = {
    causes.NOT_ENROLLED_MARKER.pattern: "(words of causes.NOT_ENROLLED_MARKER)",
    causes.CLOSED_MARKER.pattern: "(words of causes.CLOSED_MARKER)",
    causes.INVALID_SCORE_MARKER.pattern: "(words of causes.INVALID_SCORE_MARKER)",
}


def _marker_text(marker: re.Pattern[str]) -> str:
    return _NAMED_MARKERS.get(marker.pattern, marker.pattern)
