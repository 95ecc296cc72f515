"""Keyset paging, shared by every list of the API: rows oldest first by (a time, an id), and an opaque cursor that
names the last row of a page, so a page is one index range whatever its depth and rows added meanwhile are
neither skipped nor repeated. `updatedSince`, where a list takes it, is a filter on the same order."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar, TypeVarTuple

from sqlalchemy import Select, tuple_

from gateway.services.errors import InvalidInput

T = TypeVar("T")
Columns = TypeVarTuple("Columns")
DEFAULT_LIMIT = 50
_ROW_ID = re.compile(r"[0-9a-f]{24}")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def encode_cursor(created_at: datetime, row_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (time, id) a cursor names; InvalidInput (422, naming `cursor`) for anything this API did not give out."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, row_id = json.loads(raw)
        if not isinstance(created, str) or not isinstance(row_id, str) or not _ROW_ID.fullmatch(row_id):
            raise ValueError("not a cursor")
        return datetime.fromisoformat(created).replace(tzinfo=None), row_id
    except (ValueError, TypeError, binascii.Error) as exc:
        raise InvalidInput("cursor is not valid", fields={"cursor": ["Not a cursor this API gave out."]}) from exc


def after_cursor(stmt: Select[*Columns], order: tuple[Any, Any], query: Mapping[str, Any]) -> Select[*Columns]:
    """`stmt` ordered by `order` (a time column and a unique id column), from just after the query's cursor, with
    one row more than the query's limit, so that `page_of` can tell whether another page follows."""
    if "cursor" in query:
        stmt = stmt.where(tuple_(*order) > tuple_(*decode_cursor(query["cursor"])))
    return stmt.order_by(*order).limit(limit_of(query) + 1)


def page_of(rows: Sequence[T], query: Mapping[str, Any], key: Callable[[T], tuple[datetime, str]]) -> Page[T]:
    """The page of `rows` (read with `after_cursor`), with the cursor of its last row when another page follows."""
    limit = limit_of(query)
    next_cursor = encode_cursor(*key(rows[limit - 1])) if len(rows) > limit else None
    return Page(list(rows[:limit]), next_cursor)


def limit_of(query: Mapping[str, Any]) -> int:
    return int(query.get("limit", DEFAULT_LIMIT))


def updated_since(query: Mapping[str, Any]) -> datetime | None:
    """The query's `updatedSince` as naive UTC (the form stored), or None."""
    since = query.get("updatedSince")
    return None if since is None else since.astimezone(UTC).replace(tzinfo=None)
