"""Structured logs (structlog): every line, ours or a library's through stdlib logging, is rendered by one
ProcessorFormatter, as JSON lines or as text, with the ids known where it was made (request, district, app,
connection, delivery) and with secrets redacted. `logging.getLogger("passback…")` calls keep working unchanged;
ids are bound with `bind_log_context` (context variables: per thread, per request) or passed as `extra=`.
See docs/operations.md, "Logs"."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import IO, Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

# Keys whose values are never written, whatever their nesting: matched as substrings, case-insensitively.
SECRET_KEY_PARTS = ("token", "secret", "password", "passwd", "authorization", "cookie", "assertion", "api_key")
# Keys that contain a secret part but hold no secret (ids, counts).
_NOT_SECRET = frozenset({"token_id"})
REDACTED = "[redacted]"
# A credential inside a message ("Authorization: Bearer abc…", "token=abc"): the value is replaced.
_INLINE_SECRET = re.compile(
    r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+|"
    r"\b(access_token|client_secret|client_assertion|refresh_token|password|secret|token)([\"']?\s*[=:]\s*[\"']?)[^\s\"'&,;]+"
)
# The ids a line may carry; `extra={...}` on a stdlib call with these keys lands in the JSON.
CONTEXT_KEYS = ("request_id", "district_id", "app_id", "connection_id", "delivery_id", "endpoint_id", "adapter")
# Other keys `extra=` may set (the access line's).
EXTRA_KEYS = (*CONTEXT_KEYS, "method", "path", "status", "ms")
FORMATS = ("auto", "json", "text")
_HANDLER_NAME = "passback-structlog"


def _redact_value(value: Any, depth: int = 0) -> Any:
    if depth > 5:
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: (REDACTED if _secret_key(k) else _redact_value(v, depth + 1)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v, depth + 1) for v in value]
    return value


def _secret_key(key: object) -> bool:
    name = str(key).lower()
    return name not in _NOT_SECRET and any(part in name for part in SECRET_KEY_PARTS)


def redact_text(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(1):
            return f"{match.group(1)} {REDACTED}"
        return f"{match.group(2)}{match.group(3)}{REDACTED}"

    return _INLINE_SECRET.sub(replace, text)


def redact_secrets(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """The processor: a value under a secret-looking key is replaced; credentials inside strings too."""
    for key in list(event_dict):
        if _secret_key(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact_value(event_dict[key])
    return event_dict


def _request_id_of_record(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """The request id gateway/request_ids.py stamps on every record (kept when already bound; "-" dropped)."""
    record = event_dict.get("_record")
    rid = getattr(record, "request_id", None) if record is not None else None
    if rid and rid != "-":
        event_dict.setdefault("request_id", rid)
    return event_dict


def _drop_empty(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    for key in CONTEXT_KEYS:
        if event_dict.get(key) in (None, "", "-"):
            event_dict.pop(key, None)
    return event_dict


def resolve_format(fmt: str, stream: IO[str] | None = None) -> str:
    """json or text: `auto` is text on a terminal (a person reading), JSON lines otherwise (a collector)."""
    fmt = (fmt or "auto").lower()
    if fmt != "auto":
        return fmt
    target = stream if stream is not None else sys.stderr
    isatty = getattr(target, "isatty", None)
    return "text" if callable(isatty) and isatty() else "json"


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(allow=EXTRA_KEYS),
        _request_id_of_record,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_empty,
    ]


def configure_logging(
    level: str = "info", fmt: str = "auto", *, stream: IO[str] | None = None, if_unconfigured: bool = False
) -> logging.Handler | None:
    """Route every log record of the process through structlog's formatter, on one handler of the root logger
    (replacing one an earlier call installed). Returns the handler (tests remove it). `if_unconfigured`: leave
    logging alone when something else (a test runner, an embedding program) put handlers on the root logger,
    as logging.basicConfig does."""
    from gateway.request_ids import install_log_record_factory

    install_log_record_factory()
    root = logging.getLogger()
    if if_unconfigured and any(h.get_name() != _HANDLER_NAME for h in root.handlers):
        return None
    rendered = resolve_format(fmt, stream)
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if rendered == "json"
        else structlog.dev.ConsoleRenderer(colors=False, sort_keys=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
    )
    # The stderr of now: Celery later swaps sys.stderr for a proxy that logs, which must not feed back into this.
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    for old in list(root.handlers):
        if old.get_name() == _HANDLER_NAME:
            root.removeHandler(old)
    root.addHandler(handler)
    numeric = logging.getLevelName(level.upper())
    root.setLevel(numeric if isinstance(numeric, int) else logging.INFO)
    logging.getLogger("passback").setLevel(logging.NOTSET)  # follow the root's level (create_app sets INFO)
    structlog.configure(
        processors=[*_shared_processors(), structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    return handler


def bind_log_context(**ids: str | None) -> None:
    """Put these ids on every line this thread (or request) writes from now on (None values are skipped)."""
    structlog.contextvars.bind_contextvars(**{k: v for k, v in ids.items() if v is not None})


def clear_log_context() -> None:
    structlog.contextvars.clear_contextvars()


@contextmanager
def log_context(**ids: str | None) -> Iterator[None]:
    """Bind ids for a block (a worker's round for one connection), restoring what was bound before."""
    tokens = structlog.contextvars.bind_contextvars(**{k: v for k, v in ids.items() if v is not None})
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)


def log_extra(**ids: str | None) -> MutableMapping[str, Any]:
    """`extra=` for a stdlib call: the ids land as keys of the line."""
    return {k: v for k, v in ids.items() if v is not None}
