"""A connection's settings as a dashboard form: the fields the adapter declares (its settings schema), their
current values (never a secret's), and a posted form turned back into the changes its schema validates."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from marshmallow import fields
from sqlalchemy.orm import Session

from adapters import REGISTRY
from gateway.crypto import SecretBox
from gateway.models import LmsConnection
from gateway.services.errors import InvalidInput
from gateway.services.lms import connection_settings, get_connection

# Settings only the operator changes (`gateway lms set`): lifting the address rules is not a dashboard decision.
OPERATOR_ONLY = frozenset({"allow_private_addresses"})


@dataclass(frozen=True)
class SettingField:
    name: str
    kind: str  # text, url, number, lines, json, flag, secret
    required: bool
    value: str  # what the form shows: empty for a secret (left empty, it stays as it is)
    editable: bool


def _kind(field: fields.Field[Any], secret: bool) -> str:
    if secret:
        return "secret"
    if isinstance(field, fields.List):
        return "lines"
    if isinstance(field, fields.Dict):
        return "json"
    if isinstance(field, fields.Boolean):
        return "flag"
    if isinstance(field, fields.Integer | fields.Float):
        return "number"
    if isinstance(field, fields.Url):
        return "url"
    return "text"


def _shown(kind: str, value: Any) -> str:
    if value is None or kind == "secret":
        return ""
    if kind == "lines":
        return "\n".join(str(v) for v in value)
    if kind == "json":
        return json.dumps(value, indent=2, sort_keys=True)
    if kind == "flag":
        return "yes" if value else "no"
    return str(value)


def settings_form(box: SecretBox, connection: LmsConnection) -> list[SettingField]:
    """The adapter's settings, in its schema's order, with what the connection holds now."""
    adapter = REGISTRY.get(connection.adapter)
    if adapter is None:
        return []
    current = connection_settings(box, connection)
    rows = []
    for name, field in adapter.settings_schema().fields.items():
        kind = _kind(field, name in adapter.secret_settings)
        rows.append(
            SettingField(name, kind, field.required, _shown(kind, current.get(name)), name not in OPERATOR_ONLY)
        )
    return rows


def settings_page(
    session: Session, box: SecretBox, district_id: str, connection_id: str
) -> tuple[LmsConnection, list[SettingField]]:
    """The district's connection and its settings form (a 404's NotFound for another district's)."""
    connection = get_connection(session, district_id, connection_id)
    return connection, settings_form(box, connection)


def changes_from_form(
    box: SecretBox, connection: LmsConnection, form: Mapping[str, str]
) -> tuple[dict[str, Any], list[str]]:
    """(the settings the form changes, typed for the adapter's schema, which validates the whole result after;
    the optional settings it empties). An empty secret keeps the secret."""
    changes: dict[str, Any] = {}
    removed: list[str] = []
    problems: dict[str, list[str]] = {}
    current = connection_settings(box, connection)
    for row in settings_form(box, connection):
        if not row.editable or row.name not in form:
            continue
        raw = form[row.name].strip()
        if row.kind == "secret":
            if raw:
                changes[row.name] = raw
            continue
        value: Any
        if not raw:
            value = [] if row.kind == "lines" else None
        elif row.kind == "lines":
            value = [line.strip() for line in raw.splitlines() if line.strip()]
        elif row.kind == "json":
            try:
                value = json.loads(raw)
            except ValueError:
                problems[row.name] = ["Must be a JSON object."]
                continue
        elif row.kind == "flag":
            value = raw == "yes"
        else:
            value = raw
        if value is None:
            # An optional setting emptied is removed, not stored as null (the schemas do not take nulls).
            if row.name in current:
                removed.append(row.name)
        elif value != current.get(row.name):
            changes[row.name] = value
    if problems:
        raise InvalidInput("the settings were not changed", fields=problems)
    return changes, removed
