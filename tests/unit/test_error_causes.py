"""adapters/causes.py: every answer-table row and every failure raised without an answer names a cause of the
catalogue (derived from the code, so a new row or a new raise without one fails here), the LMS's words map to
the causes they name, transport failures are sentences (never requests' repr chain), and docs/error-causes.md
prints the catalogue as the code declares it."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import socket
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import requests

import adapters
from adapters import REGISTRY, causes
from adapters.answers import AnswerTable, LmsAnswer, delivery_error
from adapters.base import DeliveryError, RetryableDeliveryError
from adapters.causes import CATALOGUE
from adapters.http import HttpClient, transport_failure
from tests.fakes.scripted_lms import unused_port

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "error-causes.md"
# Every module that raises delivery errors or writes a delivery's cause.
SOURCES = [*sorted((ROOT / "adapters").glob("*.py")), *sorted((ROOT / "gateway").rglob("*.py"))]
SOURCES = [path for path in SOURCES if "migrations" not in path.parts]


def _tables() -> dict[str, AnswerTable]:
    """Every answer table the adapters declare: module-level tables and each adapter class's (its own, its
    platforms', its token endpoint's), found by type rather than listed, so a new one is covered."""
    found: dict[str, AnswerTable] = {}
    for info in pkgutil.iter_modules(adapters.__path__):
        module = importlib.import_module(f"adapters.{info.name}")
        for name, value in vars(module).items():
            if isinstance(value, AnswerTable):
                found[f"{info.name}.{name}"] = value
    for kind, cls in REGISTRY.items():
        for name in dir(cls):
            value = getattr(cls, name, None)
            if isinstance(value, AnswerTable):
                found[f"{kind}.{name}"] = value
            elif isinstance(value, Mapping):
                for key, table in value.items():
                    if isinstance(table, AnswerTable):
                        found[f"{kind}.{name}[{key}]"] = table
    return found


TABLES = _tables()


def test_the_tables_were_found() -> None:
    assert {"answers.DEFAULT_ANSWERS", "lti13_ags.MOODLE_ANSWERS", "schoology.SCHOOLOGY_ANSWERS"} <= set(TABLES)
    assert len(TABLES) >= 6


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_row_of_every_table_names_a_catalogued_cause(name: str) -> None:
    table = TABLES[name]
    for row in table.rows:
        assert row.cause in CATALOGUE, f"{name}: the row for {row.status_text} names no catalogued cause"
    assert table.otherwise_cause in CATALOGUE, f"{name}: an unmatched answer has no catalogued cause"


@pytest.mark.parametrize("name", sorted(TABLES))
def test_the_error_of_each_row_carries_its_cause(name: str) -> None:
    table = TABLES[name]
    for row in table.rows:
        status = row.statuses.start
        body = {
            causes.NOT_ENROLLED_MARKER.pattern: "User not found in course or is not a student",
            causes.CLOSED_MARKER.pattern: "Cannot change a grade in a closed grading period",
            causes.INVALID_SCORE_MARKER.pattern: "scoreGiven invalid",
        }.get(row.marker.pattern if row.marker else "", "")
        if row.marker is not None and not body:
            body = {"rate limit exceeded": "403 Forbidden (Rate Limit Exceeded)"}.get(row.marker.pattern, "")
        answer = LmsAnswer(status, body)
        if table.row_for(answer) is not row:
            continue  # an earlier row takes this answer (first match wins); that row is checked itself
        error = delivery_error(table, answer)
        assert error is not None and error.cause == row.cause, (name, row.status_text)


def _delivery_error_classes() -> set[str]:
    """Every DeliveryError subclass the adapters and the gateway know of, by name."""
    names: set[str] = set()
    stack: list[type[Any]] = [DeliveryError]
    while stack:
        cls = stack.pop()
        names.add(cls.__name__)
        stack.extend(cls.__subclasses__())
    return names


def _catalogued_constants() -> dict[str, str]:
    return {name: value for name, value in vars(causes).items() if isinstance(value, str) and value in CATALOGUE}


def _cause_expressions() -> Iterator[tuple[str, ast.expr | None]]:
    """Each place a delivery's cause is decided outside an answer table: every construction of a DeliveryError
    (its `cause=` keyword; None when it has none) and every write of `error_cause`."""
    classes = _delivery_error_classes()
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        where = str(path.relative_to(ROOT))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
                if name in classes:
                    keyword = next((k.value for k in node.keywords if k.arg == "cause"), None)
                    yield f"{where}:{node.lineno} {name}", keyword
                for keyword_node in node.keywords:
                    if keyword_node.arg == "error_cause":
                        yield f"{where}:{node.lineno} error_cause=", keyword_node.value
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Attribute) and target.attr == "error_cause":
                        yield f"{where}:{node.lineno} .error_cause =", node.value


# The classes that supply their own cause when none is given (a setting, an unreadable secret, a refused URL).
DEFAULTING = {"AwaitingConfiguration", "SecretUnreadableError", "UrlAwaitingApproval", "UrlRefused"}
# Causes decided at run time from the LMS's words or an answer table, or passed through from an error.
COMPUTED = re.compile(
    r"^(cause|error\.cause|causes\.cause_of_words\(.*\)|_failure_cause\(.*\)|None|cause or self\.default_cause)$"
)


def test_every_failure_raised_without_an_answer_names_a_catalogued_cause() -> None:
    constants = _catalogued_constants()
    seen = list(_cause_expressions())
    assert len(seen) > 40, "the scan found the raise sites"
    missing, unknown = [], []
    for where, expression in seen:
        if expression is None:
            if where.rsplit(" ", 1)[-1] not in DEFAULTING:
                missing.append(where)
            continue
        text = ast.unparse(expression)
        if COMPUTED.match(text):
            continue
        if not (text.startswith("causes.") and text.removeprefix("causes.") in constants):
            unknown.append(f"{where}: {text}")
    assert not missing, "raised without a cause:\n" + "\n".join(missing)
    assert not unknown, "a cause that is not a catalogue constant:\n" + "\n".join(unknown)


def test_every_catalogued_cause_is_used() -> None:
    """No dead entries: each cause is named by a table row or somewhere a failure is decided."""
    used = {row.cause for table in TABLES.values() for row in table.rows} | {
        table.otherwise_cause for table in TABLES.values()
    }
    constants = _catalogued_constants()
    for _, expression in _cause_expressions():
        text = ast.unparse(expression) if expression is not None else ""
        if text.removeprefix("causes.") in constants:
            used.add(constants[text.removeprefix("causes.")])
    used |= {causes.NOT_ENROLLED, causes.ASSIGNMENT_CLOSED, causes.INVALID_SCORE}  # cause_of_words
    used |= {causes.NEEDS_CONFIGURATION, causes.SECRET_UNREADABLE}  # the defaulting classes
    assert set(CATALOGUE) <= used, sorted(set(CATALOGUE) - used)


def test_catalogue_entries_are_well_formed() -> None:
    titles = [c.title for c in CATALOGUE.values()]
    assert len(set(titles)) == len(titles), "one title per cause"
    for cause in CATALOGUE.values():
        assert re.fullmatch(r"[a-z][a-z_]{2,38}", cause.code), cause.code
        assert cause.title and cause.title[0].isupper() and not cause.title.endswith(".")
        sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z`])", cause.action)
        assert 1 <= len(sentences) <= 2 and cause.action.endswith("."), f"{cause.code}: one or two sentences"
        assert "Traceback" not in cause.action and "0x" not in cause.action


@pytest.mark.parametrize(
    ("said", "expected"),
    [
        ("User not found in course or is not a student", causes.NOT_ENROLLED),  # Canvas AGS
        ("User is not enrolled in this course", causes.NOT_ENROLLED),  # Moodle
        ("The student is not an active member of the section", causes.NOT_ENROLLED),
        ("Cannot change a grade in a closed grading period", causes.ASSIGNMENT_CLOSED),  # Canvas
        ("This assignment is locked", causes.ASSIGNMENT_CLOSED),
        ("scoreGiven invalid", causes.INVALID_SCORE),
        ("Score exceeds maximum of 10", causes.INVALID_SCORE),
        ("sourcedGUID invalid: score out of range", causes.INVALID_SCORE),  # LTI 1.1's 0.0-1.0
        ("something else went wrong", causes.LMS_REFUSED),
    ],
)
def test_the_lms_words_name_the_cause(said: str, expected: str) -> None:
    assert causes.cause_of_words(said) == expected
    for table in (TABLES["answers.DEFAULT_ANSWERS"], REGISTRY["lti13"].answer_table):
        assert table.cause(LmsAnswer(422, f'{{"errors": [{{"message": "{said}"}}]}}')) == expected


def test_status_rows_name_their_causes() -> None:
    default = TABLES["answers.DEFAULT_ANSWERS"]
    assert default.cause(LmsAnswer(401)) == causes.CREDENTIALS_REFUSED
    assert default.cause(LmsAnswer(429)) == causes.RATE_LIMITED
    assert default.cause(LmsAnswer(403, "Rate Limit Exceeded")) == causes.RATE_LIMITED
    assert default.cause(LmsAnswer(503)) == causes.LMS_ERROR
    assert default.cause(LmsAnswer(404)) == causes.NOT_FOUND_IN_LMS
    assert default.cause(LmsAnswer(200)) is None
    lti13 = REGISTRY["lti13"].answer_table
    assert lti13.cause(LmsAnswer(401)) == causes.CREDENTIALS_REFUSED
    stale = '{"errors": {"message": "Score timestamp before last updated timestamp of 2026-01-01T00:00:00Z"}}'
    assert lti13.cause(LmsAnswer(400, stale)) == causes.NEWER_SCORE_IN_LMS
    schoology = REGISTRY["schoology"].answer_table
    assert schoology.cause(LmsAnswer(401, "Duplicate timestamp/nonce")) == causes.CLOCK_PROBLEM
    assert schoology.cause(LmsAnswer(403)) == causes.ACCESS_DENIED


# --- transport failures are sentences ----------------------------------------------------------------------

REPR_NOISE = (
    "HTTPConnectionPool",
    "HTTPSConnectionPool",
    "object at 0x",
    "Max retries exceeded",
    "Caused by",
    "urllib3",
)


def assert_a_sentence(message: str) -> None:
    for noise in REPR_NOISE:
        assert noise not in message, f"{noise!r} in {message!r}"


def test_a_refused_connection_is_a_sentence() -> None:
    port = unused_port()
    with pytest.raises(RetryableDeliveryError) as caught:
        HttpClient(connect_timeout=2.0).request("GET", f"http://127.0.0.1:{port}/scores")
    assert caught.value.message == f"could not connect to 127.0.0.1:{port}: it refused the connection"
    assert caught.value.cause == causes.LMS_UNREACHABLE
    assert "Max retries exceeded" in str(caught.value.__cause__), "the library's own text was the repr chain"


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A server that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for sock in held:
        sock.close()
    listener.close()


def test_a_read_timeout_is_a_sentence(silent_server: int) -> None:
    with pytest.raises(RetryableDeliveryError) as caught:
        HttpClient(connect_timeout=2.0, read_timeout=0.3, deadline=5.0).request(
            "GET", f"http://127.0.0.1:{silent_server}/scores"
        )
    assert caught.value.message == f"timed out talking to 127.0.0.1:{silent_server}: no answer came in time"
    assert caught.value.cause == causes.TIMED_OUT
    assert isinstance(caught.value.__cause__, requests.ReadTimeout)


@pytest.mark.parametrize(
    ("failure", "reason", "cause"),
    [
        (
            requests.ConnectionError(
                "HTTPConnectionPool(host='lms.example', port=80): Max retries exceeded with url: /x (Caused by "
                'NameResolutionError("<urllib3.connection.HTTPConnection object at 0x7f2a>: Failed to resolve '
                "'lms.example' ([Errno -2] Name or service not known)\"))"
            ),
            "its name does not resolve",
            causes.LMS_UNREACHABLE,
        ),
        (
            requests.ConnectionError("('Connection aborted.', RemoteDisconnected('Remote end closed connection'))"),
            "it closed the connection without answering",
            causes.LMS_UNREACHABLE,
        ),
        (
            requests.exceptions.SSLError("certificate verify failed: self signed"),
            "its TLS certificate was not accepted",
            causes.LMS_UNREACHABLE,
        ),
        (
            requests.ReadTimeout("HTTPConnectionPool(host='x', port=80): Read timed out. (read timeout=30)"),
            "no answer came in time",
            causes.TIMED_OUT,
        ),
        (
            requests.ConnectTimeout("HTTPConnectionPool(host='x', port=80): Max retries exceeded"),
            "the connection was not accepted in time",
            causes.LMS_UNREACHABLE,
        ),
        (
            requests.exceptions.InvalidURL("Failed to parse: http://[x"),
            "the URL is not valid",
            causes.NEEDS_CONFIGURATION,
        ),
        (
            requests.ConnectionError("<object object at 0x7f00> something odd"),
            "the connection failed",
            causes.LMS_UNREACHABLE,
        ),
    ],
)
def test_transport_failures_are_worded(failure: requests.RequestException, reason: str, cause: str) -> None:
    assert transport_failure(failure) == (reason, cause)


def test_readable_strips_library_reprs_whoever_wrote_them() -> None:
    raw = (
        "could not connect: HTTPConnectionPool(host='lms.example', port=80): Max retries exceeded with url: /x "
        "(Caused by NewConnectionError('<urllib3.connection.HTTPConnection object at 0x7f2a1c>: Failed'))"
    )
    assert causes.readable(raw) == "could not connect: the LMS"
    ours = "could not connect: _HTTPPool(host='127.0.0.1', port=1): Max retries exceeded with url: /x (Caused by X)"
    assert causes.readable(ours) == "could not connect: the LMS"
    assert_a_sentence(causes.readable(raw + "; " + ours))


# --- the document ------------------------------------------------------------------------------------------


def markdown() -> str:
    """The catalogue as docs/error-causes.md prints it."""
    lines = ["| Code | Title | What to do | Passes by itself |", "|---|---|---|---|"]
    for cause in CATALOGUE.values():
        lines.append(f"| `{cause.code}` | {cause.title} | {cause.action} | {'yes' if cause.passes else 'no'} |")
    return "\n".join(lines)


def test_the_document_prints_the_catalogue_as_declared() -> None:
    text = DOC.read_text()
    assert markdown() in text, "docs/error-causes.md differs from adapters/causes.py; its table is:\n" + markdown()
    for marker in ("NOT_ENROLLED_MARKER", "CLOSED_MARKER", "INVALID_SCORE_MARKER"):
        pattern = getattr(causes, marker).pattern
        assert f"`{pattern}`" in text, f"docs/error-causes.md does not print {marker}: `{pattern}`"
