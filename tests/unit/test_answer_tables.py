"""adapters/answers.py: every adapter's answer table, the first-match rule, and docs/adapters.md printing each
table as the code declares it."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters import REGISTRY
from adapters.answers import DEFAULT_ANSWERS, AnswerTable, LmsAnswer, Verdict, delivery_error, describe
from adapters.base import PermanentDeliveryError, RetryableDeliveryError
from adapters.lti13_ags import MOODLE_ANSWERS, TOKEN_ENDPOINT_ANSWERS

DOCS = Path(__file__).resolve().parents[2] / "docs" / "adapters.md"


def markdown(table: AnswerTable) -> str:
    """The table as docs/adapters.md prints it."""
    lines = ["| Status | When the body says | Verdict | Cause | Message adds |", "|---|---|---|---|---|"]
    for row in describe(table):
        when = f"`{row['when']}`" if row["when"] else ""
        cause = f"`{row['cause']}`"
        lines.append(f"| {row['status']} | {when} | {row['verdict']} | {cause} | {row['explanation']} |")
    return "\n".join(lines)


# Every table an adapter declares beyond the default (an adapter on the default table is covered by its section).
TABLES = {
    "default": DEFAULT_ANSWERS,
    **{kind: cls.answer_table for kind, cls in REGISTRY.items() if cls.answer_table is not DEFAULT_ANSWERS},
    "lti13 (platform moodle)": MOODLE_ANSWERS,
    "lti13 token endpoint": TOKEN_ENDPOINT_ANSWERS,
}


@pytest.mark.parametrize("name", sorted(TABLES))
def test_docs_print_every_table_as_declared(name: str) -> None:
    text = DOCS.read_text()
    assert f"### `{name}`" in text, f"docs/adapters.md has no section for the {name} table"
    section = text.split(f"### `{name}`", 1)[1].split("\n### ", 1)[0]
    assert markdown(TABLES[name]) in section, f"the {name} table in docs/adapters.md differs from the code:\n" + (
        markdown(TABLES[name])
    )


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_401_policy(kind: str) -> None:
    # Token holders refresh once; shared-secret adapters fail at once (docs/adapters.md, "401").
    adapter_cls = REGISTRY[kind]
    expected = Verdict.REFRESH_TOKEN_THEN_RETRY if adapter_cls.caches_access_tokens else Verdict.FAIL
    assert adapter_cls.answer_table.verdict(LmsAnswer(401)) is expected


def test_the_401_policy_splits_the_adapters_as_documented() -> None:
    refreshing = {kind for kind, cls in REGISTRY.items() if cls.caches_access_tokens}
    assert refreshing == {"lti13"} and {"lti11", "schoology", "sandbox"} <= set(REGISTRY) - refreshing


def test_rows_added_by_an_adapter_come_first() -> None:
    schoology = REGISTRY["schoology"].answer_table
    assert schoology.verdict(LmsAnswer(401, '{"message": "Duplicate timestamp/nonce"}')) is Verdict.RETRY
    assert schoology.verdict(LmsAnswer(401, '{"message": "Invalid consumer key"}')) is Verdict.FAIL
    # Schoology's own 403 row precedes the default rate-limit row: a Schoology 403 is a permission problem.
    assert schoology.verdict(LmsAnswer(403, "Rate Limit Exceeded")) is Verdict.FAIL
    assert DEFAULT_ANSWERS.verdict(LmsAnswer(403, "403 Forbidden (Rate Limit Exceeded)")) is Verdict.RETRY


def test_canvas_stored_timestamp_and_moodle_409() -> None:
    lti13 = REGISTRY["lti13"].answer_table
    stale = LmsAnswer(
        400, '{"errors": {"message": "Score timestamp before last updated timestamp of 2026-01-01T00:00:00Z"}}'
    )
    assert lti13.verdict(stale) is Verdict.RETRY
    assert lti13.verdict(LmsAnswer(400, '{"errors": {"message": "scoreGiven invalid"}}')) is Verdict.FAIL
    assert lti13.verdict(LmsAnswer(409)) is Verdict.FAIL
    assert MOODLE_ANSWERS.verdict(LmsAnswer(409)) is Verdict.RETRY


def test_canvas_422_is_permanent_everywhere() -> None:
    for kind, cls in REGISTRY.items():
        error = delivery_error(cls.answer_table, LmsAnswer(422, "unprocessable"))
        assert isinstance(error, PermanentDeliveryError) and not isinstance(error, RetryableDeliveryError), kind


def test_an_exhausted_refresh_is_permanent_and_names_the_fix() -> None:
    error = delivery_error(REGISTRY["lti13"].answer_table, LmsAnswer(401, "{}"), detail="Access token expired")
    assert isinstance(error, PermanentDeliveryError) and not isinstance(error, RetryableDeliveryError)
    assert error.message.startswith("platform answered HTTP 401: the platform refused a fresh access token")
    assert error.message.endswith("— platform said: Access token expired")


def test_success_is_none() -> None:
    for code in (200, 201, 204, 299):
        assert delivery_error(DEFAULT_ANSWERS, LmsAnswer(code)) is None
