"""An app's webhook endpoint on 127.0.0.1 that checks every request the way an app would: with the
`standardwebhooks` package from PyPI (a third-party implementation of the Standard Webhooks specification),
against the secret(s) the test gives it.

    receiver.secrets = [created["secret"]]          # what POST /v1/webhooks answered
    receiver.script(Answer(503))                     # the next request is answered 503
    receiver.default_status = 500                    # once the script is used up, answer 500 (default 204)
    [hang] = receiver.script(HangUp())               # the next request waits for hang.release()
    receiver.wait_for(3)                             # three requests arrived (verified or not)
    receiver.events()                                # the verified bodies, in the order they arrived

A request whose signature does not verify is answered 400 and listed in `problems`, so a test fails on it. It
imports nothing from the gateway: it is the app's side, not a part of Passback.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Answer:
    """Answer `status` (after verifying, as for every request)."""

    status: int = 204


@dataclass
class HangUp:
    """Hold the request until `release()` (or `max_seconds`), then answer `then`."""

    then: Answer = field(default_factory=Answer)
    max_seconds: float = 60.0
    arrived: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)

    def release(self) -> None:
        self.released.set()


Step = Answer | HangUp


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float
    # Which of the receiver's secrets verified its signature (by index); empty: none did.
    verified_with: list[int]
    payload: Any = None
    answered: int | None = None


class WebhookReceiver:
    def __init__(self, *, hang_everything: bool = False) -> None:
        self.secrets: list[str] = []
        self.requests: list[Received] = []
        self.problems: list[str] = []
        # Every request is held (until release_all) instead of answered: an endpoint that never answers.
        self.hang_everything = hang_everything
        self.default_status = 204
        self._steps: deque[Step] = deque()
        self._hangs: list[HangUp] = []
        self._everything = threading.Event()
        self._changed = threading.Condition()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.receiver = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="webhook-receiver", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks/passback"

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.release_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def script(self, *steps: Step) -> list[Step]:
        with self._changed:
            self._steps.extend(steps)
            self._hangs.extend(s for s in steps if isinstance(s, HangUp))
        return list(steps)

    def release_all(self) -> None:
        self._everything.set()
        with self._changed:
            hangs = list(self._hangs)
        for hang in hangs:
            hang.release()

    def wait_for(self, count: int, timeout: float = 10.0) -> bool:
        """Until `count` requests were answered (or held, for a hang)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.requests) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    def events(self) -> list[dict[str, Any]]:
        """The verified bodies of the requests answered 2xx, in the order they arrived."""
        with self._changed:
            return [r.payload for r in self.requests if r.verified_with and r.answered is not None and r.answered < 300]

    def _verify(self, headers: dict[str, str], body: bytes) -> tuple[list[int], Any]:
        verified: list[int] = []
        payload: Any = None
        for index, secret in enumerate(self.secrets):
            try:
                payload = Webhook(secret).verify(body, headers)
            except WebhookVerificationError:
                continue
            verified.append(index)
        return verified, payload

    def _next_step(self) -> Step:
        with self._changed:
            if self._steps:
                return self._steps.popleft()
        if self.hang_everything and not self._everything.is_set():
            return HangUp(released=self._everything)
        return Answer(self.default_status)

    def _record(self, received: Received) -> None:
        with self._changed:
            self.requests.append(received)
            if not received.verified_with:
                self.problems.append(f"signature not verified: {received.headers.get('webhook-id')}")
            self._changed.notify_all()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    receiver: WebhookReceiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up (its deadline) is part of what the tests rehearse


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        receiver = self.server.receiver
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        verified, payload = receiver._verify(headers, body)
        received = Received(headers, body, time.monotonic(), verified, payload)
        step = receiver._next_step()
        if isinstance(step, HangUp):
            received.answered = None
            receiver._record(received)
            step.arrived.set()
            step.released.wait(step.max_seconds)
            self._answer(step.then.status if verified else 400)
            return
        status = step.status if verified else 400
        received.answered = status
        receiver._record(received)
        self._answer(status)

    def _answer(self, status: int) -> None:
        body = json.dumps({"ok": status < 300}).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass
