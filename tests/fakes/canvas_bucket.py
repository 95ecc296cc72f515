"""A small real LMS on 127.0.0.1 that throttles like Canvas: a leaky bucket per client (after
canvas-lms:`app/middleware/request_throttle.rb` and `doc/api/throttling.md`).

    POST {base_url}/scores   (any body)

Every request first lets the bucket leak `outflow` units per second since the last one. While the bucket's
level is at or above `hwm`, the request is refused exactly as Canvas refuses it: 403, `Content-Type:
text/plain; charset=utf-8`, body `403 Forbidden (Rate Limit Exceeded)\\n`, `X-Rate-Limit-Remaining: 0.0`, no
Retry-After, and it costs nothing. Otherwise the request costs `cost` units and is answered 200 with
`X-Request-Cost` and `X-Rate-Limit-Remaining` (= hwm - level, as a float). So the most it sustains is
`outflow / cost` requests a second: `limit`.

`start_full=True` starts with the bucket at `hwm`, as if another tool on the same developer key had just
drained it. Every answer is recorded in `log` as (monotonic time, status), in the order it was given.

It imports nothing from the gateway: it is an LMS, not a part of Passback.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class CanvasBucketLms:
    def __init__(
        self, *, hwm: float = 600.0, outflow: float = 10.0, cost: float = 1.0, start_full: bool = False
    ) -> None:
        self.hwm = hwm
        self.outflow = outflow
        self.cost = cost
        self.level = hwm if start_full else 0.0
        self._at = time.monotonic()
        self._lock = threading.Lock()
        self.log: list[tuple[float, int]] = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.lms = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="canvas-bucket", daemon=True
        )

    @property
    def limit(self) -> float:
        """Requests a second the bucket sustains."""
        return self.outflow / self.cost

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/scores"

    def __enter__(self) -> CanvasBucketLms:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def take(self) -> tuple[int, float]:
        """One request against the bucket: (status, remaining after it)."""
        with self._lock:
            now = time.monotonic()
            self.level = max(0.0, self.level - (now - self._at) * self.outflow)
            self._at = now
            if self.level >= self.hwm:
                self.log.append((now, 403))
                return 403, 0.0
            self.level += self.cost
            self.log.append((now, 200))
            return 200, max(0.0, self.hwm - self.level)

    def counts(self) -> dict[str, int]:
        with self._lock:
            statuses = [status for _, status in self.log]
        return {"accepted": statuses.count(200), "refused": statuses.count(403)}

    def longest_refusal_run(self) -> int:
        """The most 403s the LMS answered in a row."""
        longest = run = 0
        with self._lock:
            for _, status in self.log:
                run = run + 1 if status == 403 else 0
                longest = max(longest, run)
        return longest


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    lms: CanvasBucketLms


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path != "/scores":
            self._send(404, b'{"errors":[{"message":"not found"}]}', "application/json")
            return
        status, remaining = self.server.lms.take()
        if status == 403:
            self._send(
                403,
                b"403 Forbidden (Rate Limit Exceeded)\n",
                "text/plain; charset=utf-8",
                {"X-Rate-Limit-Remaining": "0.0"},
            )
            return
        self._send(
            200,
            b'{"resultUrl":"ok"}',
            "application/json",
            {"X-Request-Cost": repr(self.server.lms.cost), "X-Rate-Limit-Remaining": repr(round(remaining, 6))},
        )

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
