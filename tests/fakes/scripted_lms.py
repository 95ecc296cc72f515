"""A small real LMS on 127.0.0.1 that speaks the sandbox protocol (see adapters/sandbox.py) and can be scripted.

    PUT {base_url}/courses/{course_id}/items/{item_id}/scores/{student_id}
    Authorization: Bearer {secret}
    Content-Type: application/json
    {"scoreGiven", "scoreMaximum", "comment", "timestamp", "activityProgress", "gradingProgress"}

answers 200 {"entry": {...}} and stores the score, unless a scripted step says otherwise; GET on the same path
answers 200 {"entry": {...}} or {"entry": null}; DELETE forgets it and answers 200 {"removed": true|false}.
Every request is recorded (method, path, headers, body) before anything else happens, and protocol mistakes of
the client (a wrong bearer secret, a body that is not JSON, a missing field) are answered as a strict LMS would
and listed in `problems`, so a test can assert the gateway spoke the protocol correctly.

Score writes consume scripted steps in order, one per request; once the script is empty, writes are stored:

    lms.script(Respond(503, headers={"Retry-After": "30"}))   # the next write answers 503
    hang = lms.script(Hang())[0]                               # the next write waits for hang.release()
    lms.script(Close())                                        # the next write gets no answer at all
    lms.script(Trickle(interval=0.05))                         # the answer comes one byte per interval
    lms.script(Junk(32 * 2**20))                               # a 200 followed by 32 MiB of junk

It imports nothing from the gateway: it is an LMS, not a part of Passback.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

PREFIX = "/lms"


# --- scripted steps ---------------------------------------------------------------------------------------


@dataclass
class Store:
    """Store the score and answer 200 with the entry (what an empty script does)."""

    status: int = 200


@dataclass
class Respond:
    """Answer `status` with `headers` and a JSON `body` (default: {"error": message}); nothing is stored."""

    status: int
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    message: str = "scripted failure"
    raw_body: bytes | None = None

    def payload(self) -> bytes:
        if self.raw_body is not None:
            return self.raw_body
        body = self.body if self.body is not None else {"error": self.message}
        return json.dumps(body).encode()


@dataclass
class Close:
    """Read the request, then close the connection without answering (the client sees a dropped connection)."""

    reset: bool = False


@dataclass
class Hang:
    """Hold the request until `release()` (or `max_seconds`), then do `then` (default: store and answer 200).

    `arrived` is set when the request is being held, so a test knows the client is in flight.
    """

    then: Store | Respond | Close = field(default_factory=Store)
    max_seconds: float = 30.0
    arrived: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)

    def release(self) -> None:
        self.released.set()


@dataclass
class Trickle:
    """Store the score, then send the whole answer (status line, headers, body) one byte per `interval`, or
    only the body so when `head_at_once`; stop when the client goes away or after `max_seconds`.

    `sent` counts the bytes the LMS managed to send; `abandoned` is set when the client hung up first."""

    interval: float = 0.05
    head_at_once: bool = False
    max_seconds: float = 60.0
    sent: int = 0
    abandoned: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    # release(): stop trickling and close the connection (the client sees an answer cut short).
    released: threading.Event = field(default_factory=threading.Event)

    def release(self) -> None:
        self.released.set()


@dataclass
class Junk:
    """Store the score and answer 200 with the entry followed by `size` bytes of junk (Content-Length covers
    all of it), sent in 64 KiB pieces until the client stops reading. `sent` counts the bytes sent."""

    size: int = 32 * 1024 * 1024
    sent: int = 0
    finished: threading.Event = field(default_factory=threading.Event)


Step = Store | Respond | Close | Hang | Trickle | Junk


# --- what the LMS saw and stored -----------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    json: Any = None
    course_id: str | None = None
    item_id: str | None = None
    student_id: str | None = None
    # What the LMS did with it: "stored", "answered 503", "closed", "refused: …"
    outcome: str = "pending"

    @property
    def is_score_write(self) -> bool:
        return self.method == "PUT" and self.student_id is not None


@dataclass
class StoredScore:
    course_id: str
    item_id: str
    student_id: str
    score_given: float
    score_maximum: float
    comment: str | None
    timestamp: str
    writes: int = 0

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.course_id, self.item_id, self.student_id)

    def as_entry(self) -> dict[str, Any]:
        return {
            "courseID": self.course_id,
            "itemID": self.item_id,
            "studentID": self.student_id,
            "scoreGiven": self.score_given,
            "scoreMaximum": self.score_maximum,
            "comment": self.comment,
            "timestamp": self.timestamp,
            "writes": self.writes,
        }


class ScriptedLms:
    """The fake LMS server. Use as a context manager; `base_url` is what a sandbox connection points at."""

    def __init__(self, secret: str, *, write_delay: float = 0.0) -> None:
        self.secret = secret
        self.write_delay = write_delay
        self.requests: list[RecordedRequest] = []
        self.problems: list[str] = []
        self.gradebook: dict[tuple[str, str, str], StoredScore] = {}
        # Every stored write in the order the LMS stored it: (course, item, student, scoreGiven).
        self.write_log: list[tuple[str, str, str, float]] = []
        self._steps: deque[Step] = deque()
        self._hangs: list[Hang | Trickle] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.lms = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="scripted-lms", daemon=True
        )

    # --- lifecycle

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PREFIX}"

    def __enter__(self) -> ScriptedLms:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.release_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    # --- scripting

    def script(self, *steps: Step) -> list[Step]:
        """Queue steps for the next score writes, one step per write, in order."""
        with self._lock:
            self._steps.extend(steps)
            self._hangs.extend(s for s in steps if isinstance(s, Hang | Trickle))
        return list(steps)

    def release_all(self) -> None:
        with self._lock:
            hangs = list(self._hangs)
        for hang in hangs:
            hang.release()

    # --- reading what happened

    def score_writes(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.is_score_write]

    def writes_for(self, student_id: str, item_id: str) -> int:
        with self._lock:
            return sum(1 for w in self.write_log if w[2] == student_id and w[1] == item_id)

    def wait_for_score_writes(self, count: int, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while sum(1 for r in self.requests if r.is_score_write) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    # --- called by the handler

    def _record(self, request: RecordedRequest) -> Step:
        with self._changed:
            self.requests.append(request)
            step: Step = Store()
            if request.is_score_write and self._steps:
                step = self._steps.popleft()
            self._changed.notify_all()
        return step

    def _store(self, request: RecordedRequest) -> StoredScore:
        data = request.json
        key = (request.course_id or "", request.item_id or "", request.student_id or "")
        with self._changed:
            entry = self.gradebook.get(key)
            if entry is None:
                entry = StoredScore(*key, score_given=0.0, score_maximum=0.0, comment=None, timestamp="")
                self.gradebook[key] = entry
            entry.score_given = float(data["scoreGiven"])
            entry.score_maximum = float(data["scoreMaximum"])
            entry.comment = data.get("comment")
            entry.timestamp = data["timestamp"]
            entry.writes += 1
            self.write_log.append((*key, entry.score_given))
            request.outcome = "stored"
            self._changed.notify_all()
            return entry

    def _problem(self, request: RecordedRequest, text: str) -> None:
        with self._changed:
            self.problems.append(f"{request.method} {request.path}: {text}")
            request.outcome = f"refused: {text}"
            self._changed.notify_all()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    lms: ScriptedLms

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away (a killed worker, a read timeout) is part of what the tests rehearse.
        pass


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # HTTP/1.0: one request per connection, so a closed or hung connection never poisons a pooled one.
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # --- plumbing

    def _send_json(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            pass  # the client is gone

    def _read_request(self) -> RecordedRequest:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = urlsplit(self.path).path
        request = RecordedRequest(
            method=self.command,
            path=path,
            headers={k: v for k, v in self.headers.items()},
            body=body,
            at=time.monotonic(),
        )
        parts = path[len(PREFIX) :].split("/") if path.startswith(PREFIX + "/") else []
        # ["", "courses", C, "items", I, "scores", S]
        if len(parts) == 7 and parts[1] == "courses" and parts[3] == "items" and parts[5] == "scores":
            request.course_id, request.item_id, request.student_id = (unquote(p) for p in parts[2::2])
        if body:
            try:
                request.json = json.loads(body)
            except ValueError:
                request.json = None
        return request

    def _authorized(self, request: RecordedRequest) -> bool:
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or presented.strip() != self.server.lms.secret:
            self.server.lms._problem(request, "bad or missing bearer secret")
            self._send_json(401, {"error": "bad or missing bearer secret"}, {"WWW-Authenticate": "Bearer"})
            return False
        return True

    # --- routes

    def do_GET(self) -> None:
        lms = self.server.lms
        request = self._read_request()
        lms._record(request)
        if not self._authorized(request):
            return
        if request.path == PREFIX + "/health":
            request.outcome = "answered 200"
            self._send_json(200, {"ok": True})
        elif request.path == PREFIX + "/gradebook":
            with lms._lock:
                entries = [e.as_entry() for e in sorted(lms.gradebook.values(), key=lambda e: e.key)]
            request.outcome = "answered 200"
            self._send_json(200, {"entries": entries})
        elif request.student_id is not None:
            with lms._lock:
                stored = lms.gradebook.get((request.course_id or "", request.item_id or "", request.student_id))
                entry = stored.as_entry() if stored else None
            request.outcome = "answered 200"
            self._send_json(200, {"entry": entry})
        else:
            request.outcome = "answered 404"
            self._send_json(404, {"error": "no such resource"})

    def do_POST(self) -> None:
        self._unsupported()

    def do_DELETE(self) -> None:
        # DELETE {base_url}/courses/{course_id}/items/{item_id}/scores/{student_id}: forget the score (twice is fine).
        lms = self.server.lms
        request = self._read_request()
        lms._record(request)
        if request.student_id is None:
            self._unsupported_answer(request)
            return
        if not self._authorized(request):
            return
        key = (request.course_id or "", request.item_id or "", request.student_id)
        with lms._changed:
            removed = lms.gradebook.pop(key, None) is not None
            request.outcome = "deleted"
            lms._changed.notify_all()
        self._send_json(200, {"removed": removed})

    def _unsupported(self) -> None:
        request = self._read_request()
        self.server.lms._record(request)
        self._unsupported_answer(request)

    def _unsupported_answer(self, request: RecordedRequest) -> None:
        request.outcome = "answered 405"
        self._send_json(405, {"error": "method not allowed"})

    def do_PUT(self) -> None:
        lms = self.server.lms
        request = self._read_request()
        step = lms._record(request)
        if not request.is_score_write:
            request.outcome = "answered 404"
            self._send_json(404, {"error": "no such resource"})
            return
        if not self._authorized(request):
            return
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            lms._problem(request, f"Content-Type {content_type or 'missing'}, not application/json")
            self._send_json(415, {"error": "send application/json"})
            return
        problem = self._check_score(request.json)
        if problem:
            lms._problem(request, problem)
            self._send_json(422, {"error": problem})
            return
        if isinstance(step, Hang):
            step.arrived.set()
            step.released.wait(step.max_seconds)
            step = step.then
        if lms.write_delay:
            time.sleep(lms.write_delay)
        self._perform(request, step)

    def _perform(self, request: RecordedRequest, step: Step) -> None:
        if isinstance(step, Close):
            request.outcome = "closed"
            if step.reset:
                # SO_LINGER 0: close with a TCP reset rather than a polite FIN.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if isinstance(step, Respond):
            request.outcome = f"answered {step.status}"
            self._send_json(step.status, step.payload(), step.headers)
            return
        if isinstance(step, Trickle):
            self._trickle(request, step)
            return
        if isinstance(step, Junk):
            self._junk(request, step)
            return
        assert isinstance(step, Store)
        entry = self.server.lms._store(request)
        self._send_json(step.status, {"entry": entry.as_entry()})

    def _answer_bytes(self, request: RecordedRequest, extra: int = 0) -> tuple[bytes, bytes]:
        entry = self.server.lms._store(request)
        body = json.dumps({"entry": entry.as_entry()}).encode()
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body) + extra}\r\nConnection: close\r\n\r\n"
        ).encode()
        return head, body

    def _trickle(self, request: RecordedRequest, step: Trickle) -> None:
        head, body = self._answer_bytes(request)
        request.outcome = "trickled"
        self.close_connection = True
        stop_at = time.monotonic() + step.max_seconds
        try:
            if step.head_at_once:
                self.connection.sendall(head)
                step.sent += len(head)
                pending = body
            else:
                pending = head + body
            for i in range(len(pending)):
                if step.released.wait(step.interval) or time.monotonic() > stop_at:
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.connection.sendall(pending[i : i + 1])
                step.sent += 1
                if _peer_closed(self.connection):
                    step.abandoned.set()
                    return
        except OSError:
            step.abandoned.set()
        finally:
            step.finished.set()

    def _junk(self, request: RecordedRequest, step: Junk) -> None:
        head, body = self._answer_bytes(request, extra=step.size)
        request.outcome = "answered 200 with junk"
        self.close_connection = True
        piece = b"x" * 65536
        try:
            self.connection.sendall(head + body)
            step.sent += len(head) + len(body)
            left = step.size
            while left > 0:
                chunk = piece[: min(left, len(piece))]
                self.connection.sendall(chunk)
                step.sent += len(chunk)
                left -= len(chunk)
        except OSError:
            pass
        finally:
            step.finished.set()

    @staticmethod
    def _check_score(data: Any) -> str | None:
        if not isinstance(data, dict):
            return "body must be a JSON object"
        expected = {"scoreGiven", "scoreMaximum", "comment", "timestamp", "activityProgress", "gradingProgress"}
        unknown = set(data) - expected
        if unknown:
            return f"unknown fields {sorted(unknown)}"
        if not _is_number(data.get("scoreGiven")) or data["scoreGiven"] < 0:
            return "scoreGiven must be a number >= 0"
        if not _is_number(data.get("scoreMaximum")) or data["scoreMaximum"] <= 0:
            return "scoreMaximum must be a number > 0"
        timestamp = data.get("timestamp")
        if not isinstance(timestamp, str):
            return "timestamp is required"
        try:
            parsed = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
        except ValueError:
            return "timestamp must be ISO 8601"
        if parsed.tzinfo is None or parsed.utcoffset() != UTC.utcoffset(None):
            return "timestamp must be in UTC with an offset"
        return None


def _peer_closed(sock: socket.socket) -> bool:
    """True once the client has closed or reset the connection (a readable socket with nothing to read)."""
    import select

    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def unused_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released), for connection-refused tests."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
