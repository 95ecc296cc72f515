"""Shared schema pieces: strict unknown-field handling with hints, and a JSON-number field."""

from __future__ import annotations

import difflib
import json
import math
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate

UNKNOWN_FIELD = "Unknown field."


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def load_strict_json(raw: bytes | str) -> Any:
    """json.loads without Python's extensions: NaN, Infinity and -Infinity are refused (ValueError), and so is
    a document nested deeper than the parser's recursion allows (about a thousand levels)."""
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError as exc:
        raise ValueError("it is nested too deeply to parse (objects and arrays within each other)") from exc


class StrictSchema(Schema):
    """Rejects unknown fields, and says which known field a near miss probably meant."""

    class Meta:
        unknown = RAISE

    def handle_error(self, error: ValidationError, data: Any, *, many: bool, **kwargs: Any) -> None:
        messages = error.messages if isinstance(error.messages, dict) else None
        if not messages:
            return
        known = [f.data_key or name for name, f in self.load_fields.items()]
        rewritten: dict[str, Any] = {}
        changed = False
        for key, value in messages.items():
            if value == [UNKNOWN_FIELD]:
                changed = True
                hint = suggest_field(str(key), known)
                rewritten[key] = [f"Unknown field; did you mean '{hint}'?" if hint else "Unknown field."]
            else:
                rewritten[key] = value
        if changed:
            raise ValidationError(rewritten, data=data) from error


def suggest_field(name: str, known: list[str]) -> str | None:
    lowered = {k.lower(): k for k in known}
    if name.lower() in lowered:
        return lowered[name.lower()]
    simplified = {k.lower().replace("_", ""): k for k in known}
    key = name.lower().replace("_", "").replace("-", "")
    if key in simplified:
        return simplified[key]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
    return close[0] if close else None


class JsonNumber(fields.Field[float]):
    """A JSON number: not a string, not a boolean, finite. Returns a float."""

    default_error_messages = {
        "type": "Must be a JSON number, not {kind}.",
        "finite": "Must be a finite number.",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("type", kind=_json_kind(value))
        try:
            number = float(value)
        except OverflowError as exc:
            raise self.make_error("finite") from exc
        if not math.isfinite(number):
            raise self.make_error("finite")
        return number

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return None if value is None else float(value)


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class UtcDateTime(fields.DateTime):
    """Serialize the naive-UTC datetimes stored in the database as ISO 8601 with a Z."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        if value is None:
            return None
        return f"{value.replace(tzinfo=None).isoformat(timespec='microseconds')}Z"


class QueryDateTime(fields.AwareDateTime):
    """An ISO 8601 date-time with a UTC offset, in a query string: a `+01:00` sent unencoded arrives as ` 01:00`
    (a `+` in a query string is a space), and is read as the offset it was."""

    default_error_messages = {
        "invalid": "Must be an ISO 8601 date-time, e.g. 2026-11-23T10:00:00Z.",
        "invalid_awareness": "Must include a UTC offset, e.g. 2026-11-23T10:00:00Z or +01:00 (sent as %2B01:00).",
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(format="iso", **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str) and len(value) > 6 and value[-6] == " " and value[-3] == ":":
            value = f"{value[:-6]}+{value[-5:]}"
        return super()._deserialize(value, attr, data, **kwargs)


def updated_since_field(what_changes: str) -> QueryDateTime:
    """`updatedSince` of a list; `what_changes` says what counts as a change of its rows."""
    return QueryDateTime(
        metadata={
            "description": "Only what changed at or after this instant (ISO 8601 with an offset). "
            f"{what_changes} To sync: remember when a full pass began and send that time next time; what changed "
            "during a pass comes again, nothing is missed. Deletions are not reported: read everything now and then."
        }
    )


class PagedQuerySchema(StrictSchema):
    """The paging parameters of every list: oldest first, `limit` rows, from after `cursor` (a list's
    `nextCursor`)."""

    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    cursor = fields.String(
        validate=validate.Length(max=200),
        metadata={"description": "The `nextCursor` of the page before, to read the next one."},
    )
