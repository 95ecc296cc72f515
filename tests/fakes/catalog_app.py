"""A learning app's catalog endpoint, as a small real web server: it checks the bearer token Passback sends by
calling Passback's GET /v1/me with it (as Clever's partners do), and answers a scripted catalog."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import requests
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response


@dataclass
class CatalogApp:
    passback_url: str
    # Given the /v1/me answer, returns (status, body bytes).
    answer: Callable[[dict[str, Any]], tuple[int, bytes]]
    seen_me: list[dict[str, Any]] = field(default_factory=list)
    requests_seen: int = 0
    # Seconds between the body's bytes: a slow app that trickles its catalog a byte at a time (0: all at once).
    trickle: float = 0.0

    def __post_init__(self) -> None:
        self.server = make_server("127.0.0.1", 0, self._wsgi, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}/catalog"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        self.closing = threading.Event()

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        self.requests_seen += 1
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return Response("no bearer token", status=401)(environ, start_response)
        me = requests.get(f"{self.passback_url}/v1/me", headers={"Authorization": header}, timeout=5)
        if me.status_code != 200:
            return Response(f"token refused by Passback: {me.status_code}", status=401)(environ, start_response)
        self.seen_me.append(me.json())
        status, body = self.answer(me.json())
        if self.trickle:
            return Response(self._trickled(body), status=status, content_type="application/json")(
                environ, start_response
            )
        return Response(body, status=status, content_type="application/json")(environ, start_response)

    def _trickled(self, body: bytes) -> Iterator[bytes]:
        for index in range(len(body)):
            if self.closing.wait(self.trickle):
                return
            yield body[index : index + 1]

    def __enter__(self) -> CatalogApp:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.closing.set()
        self.server.shutdown()
        self.thread.join(5)


def catalog_body(*entries: dict[str, Any]) -> bytes:
    return json.dumps({"assignments": list(entries)}).encode()
