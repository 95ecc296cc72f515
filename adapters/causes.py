"""Why a delivery did not go out, in plain language: a short catalogue of causes, each with a stable code, a
title a district admin understands and what to do about it (the dashboard page or CLI command that fixes it).

Every answer-table row (adapters/answers.py) and every failure an adapter or the gateway raises without an
answer (a timeout, a refused connection, a setting, a student who has not launched yet, a grade with nowhere to
go) names one of these codes; the code is stored on the delivery (`deliveries.error_cause`), so the dashboard and
the API group failures by it. The LMS's own words stay beside it, in `last_error`. docs/error-causes.md prints
this catalogue (tests/unit/test_error_causes.py checks it matches).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Cause:
    """One cause: `code` is stable (stored, filtered on, returned by the API); `title` and `action` are words
    for people and may be reworded."""

    code: str
    title: str
    action: str
    # Whether a retry (automatic or by staff) can fix it without a person changing something first.
    passes: bool = False


NOT_ENROLLED = "not_enrolled"
ASSIGNMENT_CLOSED = "assignment_closed"
CREDENTIALS_REFUSED = "credentials_refused"
ACCESS_DENIED = "access_denied"
LMS_UNREACHABLE = "lms_unreachable"
RATE_LIMITED = "rate_limited"
NOT_FOUND_IN_LMS = "not_found_in_lms"
INVALID_SCORE = "invalid_score"
NEWER_SCORE_IN_LMS = "newer_score_in_lms"
LMS_ERROR = "lms_error"
TIMED_OUT = "timed_out"
CLOCK_PROBLEM = "clock_problem"
UNEXPECTED_ANSWER = "unexpected_answer"
LMS_REFUSED = "lms_refused"
AWAITING_LAUNCH = "awaiting_launch"
LINK_TAKES_NO_GRADES = "link_takes_no_grades"
UNROUTABLE = "unroutable"
NEEDS_CONFIGURATION = "needs_configuration"
SECRET_UNREADABLE = "secret_unreadable"  # noqa: S105 (a cause code, not a secret)
DESTINATION_REMOVED = "destination_removed"
SUPERSEDED = "superseded"
INTERNAL_ERROR = "internal_error"

_CAUSES = (
    Cause(
        NOT_ENROLLED,
        "Student not enrolled in the course",
        "Check that the student is enrolled (as a student) in the course or section in the LMS, then run "
        "`gateway lms sync-roster` and press Retry on the delivery's page.",
    ),
    Cause(
        ASSIGNMENT_CLOSED,
        "Assignment closed for grading",
        "The LMS no longer takes grades for this assignment (a closed grading period or a locked assignment). "
        "Reopen it in the LMS, or enter the grade there by hand; then press Retry.",
    ),
    Cause(
        CREDENTIALS_REFUSED,
        "Credentials refused",
        "The LMS did not accept the connection's key, secret or registration. Fix them with `gateway lms set`, "
        "check with Check the connection on the LMS connections page, then use Retry all failed deliveries there.",
    ),
    Cause(
        ACCESS_DENIED,
        "Not allowed by the LMS",
        "The LMS accepted the credentials but does not let them grade this course. Give the key's account (or the "
        "tool) access to the course in the LMS, then press Retry all failed deliveries on the LMS connections page.",
    ),
    Cause(
        LMS_UNREACHABLE,
        "LMS unreachable",
        "Passback could not connect to the LMS (its name does not resolve, or it refused or dropped the "
        "connection). Passback keeps retrying; if it lasts, check the LMS's address on the LMS connections page.",
        passes=True,
    ),
    Cause(
        RATE_LIMITED,
        "Rate limited by the LMS",
        "The LMS asked Passback to slow down, and grades go out as fast as it allows. If it lasts, lower the "
        "connection's rate with `gateway lms limits`.",
        passes=True,
    ),
    Cause(
        NOT_FOUND_IN_LMS,
        "Gradebook column, course or user not found",
        "The LMS says the gradebook column (line item), the section or the student is gone: it was deleted there. "
        "Re-add the assignment with the assignment picker or `gateway placement add`, then press Retry.",
    ),
    Cause(
        INVALID_SCORE,
        "Score above the maximum or invalid",
        "The LMS refused the score itself (above the maximum, negative, or not a number it takes). Have the app "
        "post a corrected grade, or check the assignment's maximum points in the LMS.",
    ),
    Cause(
        NEWER_SCORE_IN_LMS,
        "The LMS holds a newer score",
        "The LMS holds a score stamped later than this one (often a clock difference). Passback tries again "
        "with a later timestamp; nothing to do unless it lasts.",
        passes=True,
    ),
    Cause(
        LMS_ERROR,
        "LMS error (5xx)",
        "The LMS had a problem of its own. Passback keeps retrying; if it lasts, tell the LMS's administrator "
        "the time and the LMS's words below.",
        passes=True,
    ),
    Cause(
        TIMED_OUT,
        "Timed out",
        "The LMS did not answer in time; Passback sends the grade again (safe even if the LMS stored it). If it "
        "lasts, the LMS is overloaded or down: tell its administrator.",
        passes=True,
    ),
    Cause(
        CLOCK_PROBLEM,
        "Clock or replayed request",
        "The LMS refused a signed request as replayed or out of time. Passback retries; if it lasts, check that "
        "this server's clock is right (NTP).",
        passes=True,
    ),
    Cause(
        UNEXPECTED_ANSWER,
        "Unexpected answer from the LMS",
        "The LMS (or a proxy in front of it) answered in a form Passback does not read. Passback retries; if it "
        "lasts, check the connection's URL on the LMS connections page.",
        passes=True,
    ),
    Cause(
        LMS_REFUSED,
        "Refused by the LMS",
        "The LMS refused the grade for a reason in its own words below. Fix what it names in the LMS, then "
        "press Retry.",
    ),
    Cause(
        AWAITING_LAUNCH,
        "Awaiting the student's launch",
        "The LMS only takes this student's grade once they have opened the assignment's link there (or after "
        "`gateway lms sync-roster`). It goes out by itself then; nothing else to do.",
        passes=True,
    ),
    Cause(
        LINK_TAKES_NO_GRADES,
        "The LMS link takes no grades",
        "The link the student opened is not set up to accept grades (or they opened it as a non-student). Make "
        "it a graded assignment in the LMS; the student's next launch lets the grade go out.",
    ),
    Cause(
        UNROUTABLE,
        "Not placed in any LMS course",
        "Passback does not know where this grade goes: the assignment is not placed in a course the student is "
        "in. Place it (assignment picker, Map assignments to sections, or `gateway placement add`) or enroll "
        "the student (`gateway user enroll`); waiting grades then go out.",
    ),
    Cause(
        NEEDS_CONFIGURATION,
        "Needs configuration",
        "A setting of the connection or placement stops this delivery (for example an LMS host not allowed yet, "
        "or a placement without its section). Fix it with `gateway lms set` or `gateway placement add`; "
        "waiting grades go out by themselves.",
    ),
    Cause(
        SECRET_UNREADABLE,
        "Secret cannot be decrypted",
        "Passback cannot decrypt a secret with its configured keys. Ask the operator to add the missing key "
        "(GATEWAY_ENCRYPTION_KEYS); waiting grades then go out by themselves.",
    ),
    Cause(
        DESTINATION_REMOVED,
        "Placement or connection removed",
        "The course placement or the LMS connection was removed before the grade went out. Place the assignment "
        "again if it should still be graded there.",
    ),
    Cause(
        SUPERSEDED,
        "Replaced by a newer grade",
        "A newer grade (or the link the student opened instead) carries this one; nothing to do.",
        passes=True,
    ),
    Cause(
        INTERNAL_ERROR,
        "Passback internal error",
        "Something went wrong inside Passback: tell the operator the delivery's id (the log has the details). "
        "Press Retry once it is fixed.",
    ),
)

CATALOGUE: dict[str, Cause] = {cause.code: cause for cause in _CAUSES}

# What an LMS says in a refusal, for rows that read the body and for refusals in an LMS's own envelope (LTI 1.1
# failure, a Schoology item): Canvas "User not found in course or is not a student", Moodle "User is not enrolled".
NOT_ENROLLED_MARKER = re.compile(
    r"not\s+(?:enrolled|an?\s+(?:active\s+)?(?:student|member|enrollment))|is\s+not\s+a\s+student"
    r"|not\s+found\s+in\s+(?:the\s+)?(?:course|section)|no\s+(?:such\s+)?enrollment",
    re.IGNORECASE,
)
# Canvas "closed grading period", Moodle/Blackboard "locked"; D2L "not accepting".
CLOSED_MARKER = re.compile(
    r"closed\s+grading\s+period|grading\s+period\s+(?:is\s+)?closed|(?:assignment|item|grade(?:book)?|column)\s+"
    r"(?:is\s+)?(?:locked|closed)|no\s+longer\s+accept|not\s+accepting",
    re.IGNORECASE,
)
# A refused score: "scoreGiven invalid", "score exceeds maximum", "out of range" (LTI 1.1's 0.0-1.0).
INVALID_SCORE_MARKER = re.compile(
    r"score\s*(?:given|maximum)?\s*(?:is\s+)?(?:invalid|must|too|exceeds|greater|above|negative|out\s+of)"
    r"|invalid\s+(?:score|grade|points)|out\s+of\s+range|exceeds?\s+(?:the\s+)?max",
    re.IGNORECASE,
)


def cause_of_words(text: str, default: str = LMS_REFUSED) -> str:
    """The cause an LMS's own refusal names (an LTI 1.1 failure description, a Schoology item's message);
    `default` when its words name none of them."""
    for marker, code in (
        (NOT_ENROLLED_MARKER, NOT_ENROLLED),
        (CLOSED_MARKER, ASSIGNMENT_CLOSED),
        (INVALID_SCORE_MARKER, INVALID_SCORE),
    ):
        if marker.search(text):
            return code
    return default


# Library internals that must not reach a person (a requests/urllib3 repr chain): whatever adapter wrote them.
_REPR_NOISE = (
    (re.compile(r"<[^<>]*? object at 0x[0-9a-fA-F]+>"), "a connection"),
    (re.compile(r"\b_?HTTPS?(?:Connection)?Pool\([^()]*\)"), "the LMS"),
    (re.compile(r":? ?Max retries exceeded with url: \S+"), ""),
    (re.compile(r"\s*\(Caused by [^\n]*\)"), ""),
)


def readable(text: str) -> str:
    """`text` without library reprs (object addresses, urllib3 pool reprs, "Caused by" chains): the stored
    error is read by district staff. The adapters word their own messages; this is the net under them."""
    for pattern, replacement in _REPR_NOISE:
        text = pattern.sub(replacement, text)
    return text


def cause(code: str | None) -> Cause | None:
    """The catalogue entry of a stored code; None for none (or one a newer version wrote and this one lacks)."""
    return CATALOGUE.get(code) if code else None
