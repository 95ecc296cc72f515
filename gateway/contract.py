"""Each API operation's contract, declared once on its view with `@operation(...)`: the query, body, path
parameters, request headers, success replies (status, schema, headers) and errors. gateway/openapi.py builds
the OpenAPI document from these declarations, and the views load their query and body with the declared schemas
(gateway/api/common.load_query, load_body), so the document and the validation cannot drift apart.

operationId rule: the HTTP method in lower case (`list` for a GET of a collection) followed by the path's nouns
in PascalCase, the noun before an `{id}` in the singular: POST /v1/grade → postGrade, GET /v1/grades →
listGrades, GET /v1/grades/{grade_id}/lms → getGradeLms. An id, once published, is never renamed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from marshmallow import Schema, fields

from schemas.errors import ErrorSchema

View = TypeVar("View", bound=Callable[..., Any])
SchemaRef = type[Schema] | Schema

# The attribute of a view function that holds its Operation.
CONTRACT_ATTRIBUTE = "passback_contract"
OPERATION_ID = re.compile(r"^(get|list|post|put|patch|delete)[A-Z][A-Za-z]*$")
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"

# Tags group the operations (a generated client makes a module of each); the document lists them in this order.
TAGS: Mapping[str, str] = {
    "grades": "Post grades and follow each one's delivery to the LMS.",
    "assignments": "The app's assignment catalog, in Clever's shape.",
    "placements": "Where catalog assignments live in each LMS (courses, sections).",
    "directory": "What the district shares with the app: its users, courses and enrollments.",
    "auth": "Who a token is, and the token exchange of the app sign-in.",
    "webhooks": "Endpoints that hear what happened to each grade, signed as Standard Webhooks says.",
}

# Security schemes (their definitions are in gateway/openapi.py): any one of an operation's entries suffices.
BEARER: tuple[tuple[str, ...], ...] = (("bearer",),)
NO_AUTH: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class Header:
    """A header the API sends (in a Reply) or reads (in `headers=`)."""

    name: str
    description: str
    type: str = "string"
    max_length: int | None = None
    required: bool = False


LOCATION = Header("Location", "The URL of the grade's status: GET it with the same token.")
IDEMPOTENT_REPLAYED = Header(
    "Idempotent-Replayed", "`true` when this is the stored answer to an earlier request with the same Idempotency-Key."
)
RETRY_AFTER = Header("Retry-After", "Seconds to wait before sending the same request again.", type="integer")
WWW_AUTHENTICATE = Header("WWW-Authenticate", 'The scheme to authenticate with: `Bearer realm="passback"`.')
CACHE_CONTROL = Header("Cache-Control", "`no-store`: never cache a token answer.")
IDEMPOTENCY_KEY = Header(
    "Idempotency-Key",
    "1 to 255 printable characters, unique per request you mean (a UUID). The same key with the same request "
    "within 24 hours replays the first successful answer (with `Idempotent-Replayed: true`) and does nothing "
    "again; the same key with another request answers 409 (`idempotency_key_reused`). A key belongs to the "
    "token's district and app (and user, for a user token).",
    max_length=255,
)
REQUEST_ID = Header(
    "X-Request-Id",
    "Identifies the request in Passback's logs and in every error body (`requestId`): the one the request sent "
    "(1 to 128 visible ASCII characters), else one Passback made.",
    max_length=128,
)
RATE_LIMIT_LIMIT = Header(
    "RateLimit-Limit", "Requests this token may make in a full window (GATEWAY_API_RATE_LIMIT).", type="integer"
)
RATE_LIMIT_REMAINING = Header("RateLimit-Remaining", "Requests left to this token right now.", type="integer")
RATE_LIMIT_RESET = Header(
    "RateLimit-Reset", "Seconds until this token's requests are back to RateLimit-Limit.", type="integer"
)
# On every answer of every operation (gateway/openapi.py adds them), errors included.
EVERY_ANSWER_HEADERS = (REQUEST_ID, RATE_LIMIT_LIMIT, RATE_LIMIT_REMAINING, RATE_LIMIT_RESET)
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
API_PREFIX = "/v1/"


def takes_idempotency_key(method: str, path: str) -> bool:
    """Every POST, PUT, PATCH and DELETE of /v1 honours an Idempotency-Key (gateway/idempotency_keys.py)."""
    return method.upper() in MUTATING_METHODS and path.startswith(API_PREFIX)


@dataclass(frozen=True)
class Reply:
    """One answer an operation gives: its status, what the body holds, and the headers it carries."""

    status: int
    description: str
    schema: SchemaRef | None = None
    headers: tuple[Header, ...] = ()
    media_type: str = JSON


@dataclass(frozen=True)
class Callback:
    """A request Passback sends, later, to a URL the operation registers (an OpenAPI 3.0 callback: a webhook)."""

    name: str
    # Where it goes, as an OpenAPI runtime expression, e.g. "{$request.body#/url}".
    url: str
    summary: str
    body: SchemaRef
    headers: tuple[Header, ...] = ()
    # What the receiver is expected to answer: any 2xx, described here.
    answer: str = "Received."
    description: str | None = None


# What each error status means for the API; an operation may replace one with its own Reply.
ERRORS: Mapping[int, Reply] = {
    reply.status: reply
    for reply in (
        Reply(400, "Malformed JSON, or a body that is not a JSON object.", ErrorSchema),
        Reply(401, "Missing, invalid, expired or revoked bearer token.", ErrorSchema, (WWW_AUTHENTICATE,)),
        Reply(403, "The token may not do this (a missing scope, another user's grade).", ErrorSchema),
        Reply(404, "Not found in this district and app.", ErrorSchema),
        Reply(409, "Conflict with what is stored.", ErrorSchema),
        Reply(413, "The body is larger than the gateway accepts.", ErrorSchema),
        Reply(415, "Content-Type is not application/json.", ErrorSchema),
        Reply(
            422,
            "A field broke a rule (query, body, or text no database can store anywhere in the request); "
            "`fields` names each one.",
            ErrorSchema,
        ),
        Reply(
            429,
            "Too many requests with this token (code `rate_limited`): nothing was done; send it again after "
            "Retry-After.",
            ErrorSchema,
            (RETRY_AFTER,),
        ),
        Reply(502, "The app's catalog URL could not be fetched and no earlier copy is held.", ErrorSchema),
        Reply(
            503,
            "The database was busy (code `database_busy`: nothing was stored) or its connection was lost "
            "(`database_unavailable`: a restart or failover): send the same request again after Retry-After, "
            "with the same Idempotency-Key if it had one.",
            ErrorSchema,
            (RETRY_AFTER,),
        ),
    )
}


@dataclass(frozen=True)
class Operation:
    """The contract of one API operation; see `operation` for what each part means."""

    operation_id: str
    tag: str
    summary: str
    replies: tuple[Reply, ...]
    errors: tuple[Reply, ...]
    query: Schema | None = None
    body: Schema | None = None
    body_media_types: tuple[str, ...] = (JSON,)
    path: Mapping[str, fields.Field] = field(default_factory=dict)
    headers: tuple[Header, ...] = ()
    security: tuple[tuple[str, ...], ...] = BEARER
    description: str | None = None
    max_body_bytes: int | None = None
    idempotency_in_view: bool = False
    callbacks: tuple[Callback, ...] = ()


def operation(
    operation_id: str,
    *,
    tag: str,
    summary: str,
    replies: Reply | Iterable[Reply],
    query: SchemaRef | None = None,
    body: SchemaRef | None = None,
    body_media_types: Iterable[str] = (JSON,),
    path: Mapping[str, fields.Field] | None = None,
    headers: Iterable[Header] = (),
    errors: Iterable[int | Reply] = (),
    security: tuple[tuple[str, ...], ...] = BEARER,
    description: str | None = None,
    max_body_bytes: int | None = None,
    idempotency_in_view: bool = False,
    callbacks: Iterable[Callback] = (),
) -> Callable[[View], View]:
    """Declare a view's contract. `errors` lists the statuses particular to this operation (an int takes the
    meaning in ERRORS, a Reply brings its own); these follow from the rest and are added for you:
    401 when it takes a bearer token; 422 (a query or body field, or unstorable text), 429 (rate limited) and
    503 (database busy or unreachable) always; 404 with a path parameter (unstorable text in the path names
    nothing); with a body 413, and 400 and 415 too when the body is JSON only.

    `max_body_bytes` raises the body limit (GATEWAY_MAX_BODY_BYTES) for this operation. `idempotency_in_view`
    says the view stores its Idempotency-Key answer itself (POST /v1/grade, in the grade's own transaction);
    every other mutating /v1 operation gets it from gateway/idempotency_keys.py without code of its own.
    `callbacks` are the requests Passback sends to a URL the operation registers (webhooks)."""
    if not OPERATION_ID.match(operation_id):
        raise ValueError(f"operationId {operation_id!r} does not follow the rule in gateway/contract.py")
    if tag not in TAGS:
        raise ValueError(f"tag {tag!r} is not one of {sorted(TAGS)}")
    media_types = tuple(body_media_types)
    implied: list[int] = [422, 429, 503]
    if security == BEARER:
        implied.append(401)
    if path:
        implied.append(404)
    if body is not None:
        implied.append(413)
        if media_types == (JSON,):
            implied += [400, 415]
    declared = {reply.status: reply for reply in (ERRORS[e] if isinstance(e, int) else e for e in errors)}
    all_errors = {**{status: ERRORS[status] for status in implied}, **declared}
    contract = Operation(
        operation_id=operation_id,
        tag=tag,
        summary=summary,
        replies=(replies,) if isinstance(replies, Reply) else tuple(replies),
        errors=tuple(all_errors[status] for status in sorted(all_errors)),
        query=_instance(query),
        body=_instance(body),
        body_media_types=media_types,
        path=dict(path or {}),
        headers=tuple(headers),
        security=security,
        description=description,
        max_body_bytes=max_body_bytes,
        idempotency_in_view=idempotency_in_view,
        callbacks=tuple(callbacks),
    )

    def attach(view: View) -> View:
        setattr(view, CONTRACT_ATTRIBUTE, contract)
        return view

    return attach


def _instance(schema: SchemaRef | None) -> Schema | None:
    """Built once: the views load every request with it, and marshmallow schemas keep no per-call state."""
    return schema() if isinstance(schema, type) else schema


def contract_of(view: Callable[..., Any]) -> Operation | None:
    """The Operation declared on a view function, or None for a view outside the API."""
    contract = getattr(view, CONTRACT_ATTRIBUTE, None)
    return contract if isinstance(contract, Operation) else None
