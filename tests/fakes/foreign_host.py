"""A web server that is not the LMS: it counts every request it gets and answers each with a body that must
never reach an app. Tests point LMS-supplied URLs at it (as `localhost`, a host no connection registers)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from flask import Flask, Response, request
from werkzeug.serving import make_server

SECRET_BODY = "internal-service-secret-7f3a"


@dataclass
class Hit:
    method: str
    path: str
    authorization: str | None


@dataclass
class ForeignHost:
    hits: list[Hit] = field(default_factory=list)

    def __post_init__(self) -> None:
        app = Flask(__name__)

        @app.route("/", defaults={"path": ""}, methods=["GET", "POST", "PUT", "DELETE"])
        @app.route("/<path:path>", methods=["GET", "POST", "PUT", "DELETE"])
        def anything(path: str) -> Response:
            self.hits.append(Hit(request.method, "/" + path, request.headers.get("Authorization")))
            # An answer a careless client would show: 400 with a body, or a page of nothing.
            return Response(SECRET_BODY, status=400, content_type="text/plain")

        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

    def url(self, host: str = "localhost") -> str:
        """Its base URL: as `localhost` (a foreign host name) or as `127.0.0.1` (a loopback address)."""
        return f"http://{host}:{self.port}"

    def __enter__(self) -> ForeignHost:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.thread.join(5)
