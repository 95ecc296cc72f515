"""What every declared operation gets from its @operation without code of its own: its body limit, and for a
mutating /v1 operation the Idempotency-Key (gateway/services/idempotency.answer_once).

A keyed request runs its view inside one unit of work on the request's session: the view's own units
(gateway.extensions.request_unit_of_work) become savepoints of it, and the answer is stored and committed with
the work, so a 2xx answer and the work it reports are never separated, and a request that fails leaves nothing
behind. POST /v1/grade keeps its own, equivalent path (`idempotency_in_view`): the grade and its answer are
stored in the grade's transaction there."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, current_app, g, request

from gateway.api.common import current_principal
from gateway.composition import services_of
from gateway.contract import Operation, contract_of, takes_idempotency_key
from gateway.services import idempotency
from gateway.services.unit_of_work import UnitOfWork
from schemas.base import load_strict_json

IDEMPOTENCY_KEY = "Idempotency-Key"
# Set per answer, never part of what is replayed.
_NOT_STORED = frozenset({"content-length", "set-cookie"})


def install_operation_conventions(app: Flask) -> None:
    """Wrap every view that declares an @operation; call once every blueprint is registered."""
    for endpoint, view in list(app.view_functions.items()):
        contract = contract_of(view)
        if contract is not None and not getattr(view, "_passback_conventions", False):
            app.view_functions[endpoint] = _with_conventions(view, contract)


def _with_conventions(view: Callable[..., Any], contract: Operation) -> Callable[..., Any]:
    @functools.wraps(view)
    def served(*args: Any, **kwargs: Any) -> Any:
        if contract.max_body_bytes is not None:
            request.max_content_length = max(contract.max_body_bytes, current_app.config["PASSBACK"].max_body_bytes)
        key = request.headers.get(IDEMPOTENCY_KEY)
        if key is None or contract.idempotency_in_view or not takes_idempotency_key(request.method, request.path):
            return view(*args, **kwargs)
        return _answer_once(key, lambda: view(*args, **kwargs))

    served._passback_conventions = True  # type: ignore[attr-defined]
    return served


def _answer_once(key: str, call_view: Callable[[], Any]) -> Response:
    services = services_of(current_app)
    principal = current_principal()  # a bad token answers 401 before a bad key answers 422
    keyed = idempotency.KeyedRequest(
        idempotency.check_key(key),
        idempotency.fingerprint(request.method, _path_and_query(), _body_identity(), principal),
        services.settings.idempotency_ttl_seconds,
        now=services.clock.now(),
    )
    assert services.database.session is not None
    produced: list[Response] = []

    def respond(unit: UnitOfWork) -> idempotency.StoredAnswer:
        g.idempotent_unit = unit  # request_unit_of_work() makes the view's units part of this one
        try:
            response = current_app.make_response(call_view())
        finally:
            g.pop("idempotent_unit", None)
        produced.append(response)
        return _stored(response)

    answered = idempotency.answer_once(
        services.unit_of_work(services.database.session()), services.box, principal, keyed, respond
    )
    if not answered.replayed:
        return produced[0]
    answer = answered.answer
    replay = Response(answer.body, status=answer.status, headers=dict(answer.headers))
    replay.headers["Idempotent-Replayed"] = "true"
    return replay


def _path_and_query() -> str:
    query = request.query_string.decode("latin-1")
    return f"{request.path}?{query}" if query else request.path


def _body_identity() -> Any:
    """The JSON body as parsed (so spacing and key order do not matter), else a digest of the bytes."""
    raw = request.get_data(cache=True)
    if not raw:
        return None
    try:
        return load_strict_json(raw)
    except (ValueError, RecursionError):
        return {"sha256": hashlib.sha256(raw).hexdigest()}


def _stored(response: Response) -> idempotency.StoredAnswer:
    headers = {name: value for name, value in response.headers.items() if name.lower() not in _NOT_STORED}
    if response.is_streamed:
        return idempotency.StoredAnswer(response.status_code, "", headers, keep=False)
    return idempotency.StoredAnswer(response.status_code, response.get_data(as_text=True), headers)
