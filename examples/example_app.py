"""An example learning app on Passback, in one file on the standard library's http.server and `requests`.

It does what an app integrating Passback does:

- signs a student in when the LMS launches them (here, Passback's sandbox LMS): the launch sends the browser to
  `/callback` with a `code` and `state=assignment:{id}`; the app trades the code for the student's token
  (`POST /oauth/tokens`) and asks Passback who it is (`GET /v1/me`);
- lets the signed-in student take a one-question quiz and posts the score with the student's own token;
- posts scores from its own records by the student's SIS id, with the district-app token (`/` lists the roster);
- reads each grade's status back (`GET /v1/grades/{id}` and what the LMS holds, `GET /v1/grades/{id}/lms`);
- with `--webhooks`, registers `/webhooks/passback` for Passback's events at start (removing it at exit), verifies
  each request's signature with the `standardwebhooks` package (`pip install standardwebhooks`) and lists what it
  heard at `/events`. Passback refuses webhook URLs on loopback or private addresses unless the operator allows
  them: start the gateway with `GATEWAY_WEBHOOK_ALLOW_PRIVATE_ADDRESSES=1` for this.

Run it against `make run`'s sandbox (README, "Develop against the sandbox"):

    .venv/bin/gateway demo --json --redirect-uri http://127.0.0.1:5001/callback > demo.json
    .venv/bin/python examples/example_app.py --config demo.json --port 5001 [--webhooks]

then launch a student from the dashboard's sandbox page, or open http://127.0.0.1:5001/.
"""

from __future__ import annotations

import argparse
import html
import json
import secrets
import signal
import sys
import threading
from collections.abc import Mapping
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from passback_client import Passback, PassbackError, exchange_code

QUIZ = ("What is 1/2 + 1/4?", ["3/4", "2/6", "1/8"], "3/4")


EVENTS = ["grade.delivered", "grade.failed", "grade.retrying", "grade.unroutable", "grade.lms_changed"]


def verify_webhook(secret: str, body: bytes, headers: Mapping[str, str]) -> dict[str, Any] | None:
    """Passback's webhook, checked: the event, or None when the request is not signed with the endpoint's secret
    (or is older than five minutes, a replay). Passback signs as the Standard Webhooks specification says (headers
    `webhook-id`, `webhook-timestamp`, `webhook-signature`), so that project's package verifies it."""
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    try:
        return dict(Webhook(secret).verify(body, dict(headers)))
    except WebhookVerificationError:
        return None


def on_grade_event(app: ExampleApp, event: Mapping[str, Any], webhook_id: str) -> None:
    """What the app does when Passback says what happened to a grade: here, remember it (by its webhook-id, since
    delivery is at least once and the same event may come twice) and print it."""
    with app.lock:
        if webhook_id in app.heard_ids:
            return
        app.heard_ids.add(webhook_id)
        app.events.append(dict(event))
    data = event["data"]
    print(f"grade event: {event['type']} {data['gradeID']} r{data['revision']} {data['status']}", flush=True)


class ExampleApp:
    """The app's state: its Passback configuration, its roster, and the signed-in sessions (in memory)."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.base_url = str(config["public_url"])
        self.client_id = str(config["client_id"])
        self.client_secret = str(config["client_secret"])
        self.redirect_uri = str(config["redirect_uri"])
        self.assignment_id = str(config["assignment_id"])
        # The app's own records of its students, keyed by SIS id as the district's SIS exported them.
        self.roster = [(s["sisID"], s["name"]) for s in config.get("students", []) if s.get("sisID")]
        self.district = Passback(self.base_url, str(config["token"]))
        self.sessions: dict[str, dict[str, str]] = {}
        # Webhooks (--webhooks): the endpoint registered at start and its secret; what was heard, once each.
        self.webhook: dict[str, Any] | None = None
        self.events: list[dict[str, Any]] = []
        self.heard_ids: set[str] = set()
        self.lock = threading.Lock()

    def register_webhooks(self, url: str) -> None:
        try:
            self.webhook = self.district.register_webhook(url, EVENTS)
        except PassbackError as exc:
            print(f"webhooks not registered: {exc}", file=sys.stderr, flush=True)
            return
        print(f"webhooks registered: {url} hears {', '.join(EVENTS)}", flush=True)

    def remove_webhooks(self) -> None:
        if self.webhook is not None:
            self.district.remove_webhook(str(self.webhook["id"]))
            self.webhook = None


class Handler(BaseHTTPRequestHandler):
    server: AppServer
    # A session started by this request, whose cookie the answer sets.
    new_sid: str | None = None

    # --- routes

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/":
            self.home()
        elif url.path == "/callback":
            self.callback(query)
        elif url.path == "/quiz":
            self.quiz()
        elif url.path.startswith("/grades/"):
            self.grade_status(url.path.removeprefix("/grades/"))
        elif url.path == "/events":
            self.heard()
        else:
            self.page(HTTPStatus.NOT_FOUND, "Not found", "<p>No such page.</p>")

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        body = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
        if path == "/webhooks/passback":
            self.webhook(body)
            return
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        session = self.session()
        if session is None or not secrets.compare_digest(form.get("csrf", ""), session["csrf"]):
            self.page(HTTPStatus.FORBIDDEN, "Refused", "<p>This form is stale: open the page again.</p>")
        elif path == "/quiz":
            self.submit_quiz(session, form)
        elif path == "/roster/grade":
            self.post_by_sis_id(form)
        else:
            self.page(HTTPStatus.NOT_FOUND, "Not found", "<p>No such page.</p>")

    def home(self) -> None:
        session = self.session(create=True)
        assert session is not None
        rows = "".join(
            f"<tr><td>{esc(name)}</td><td><code>{esc(sis_id)}</code></td><td>"
            '<form method="post" action="/roster/grade">'
            f'<input type="hidden" name="csrf" value="{esc(session["csrf"])}">'
            f'<input type="hidden" name="sis_id" value="{esc(sis_id)}">'
            f'<label>Score out of 10 <input name="score" type="number" min="0" max="10" value="9" required></label> '
            "<button>Post by SIS id</button></form></td></tr>"
            for sis_id, name in self.app.roster
        )
        self.page(
            HTTPStatus.OK,
            "Example quiz app",
            "<p>Students sign in by opening the assignment in their LMS: launch one from Passback's sandbox page "
            "(dashboard → Sandbox gradebook → Launch).</p>"
            f"<h2>Roster</h2><table><tr><th>Student</th><th>SIS id</th><th>{esc(self.app.assignment_id)}</th></tr>"
            f"{rows}</table>"
            + (
                f'<p>Webhook events heard: {len(self.app.events)} (<a href="/events">/events</a>).</p>'
                if self.app.webhook is not None
                else ""
            ),
        )

    def callback(self, query: Mapping[str, str]) -> None:
        """The redirect URI: the sign-in's code arrives here and is traded for the student's token."""
        code, state = query.get("code", ""), query.get("state", "")
        if not code or not state.startswith("assignment:"):
            self.page(HTTPStatus.BAD_REQUEST, "Sign-in failed", "<p>The launch sent no code.</p>")
            return
        try:
            token = exchange_code(
                self.app.base_url, self.app.client_id, self.app.client_secret, code, self.app.redirect_uri
            )
            me = Passback(self.app.base_url, token["access_token"]).me()
        except PassbackError as exc:
            self.page(HTTPStatus.BAD_REQUEST, "Sign-in failed", f"<p>{esc(exc.message)}</p>")
            return
        sid = secrets.token_urlsafe(24)
        self.app.sessions[sid] = {
            "csrf": secrets.token_urlsafe(24),
            "token": token["access_token"],
            "user_id": str(me["data"]["id"]),
            "assignment": state.removeprefix("assignment:"),
        }
        self.redirect("/quiz", sid)

    def quiz(self) -> None:
        session = self.session()
        if session is None or "token" not in session:
            self.page(HTTPStatus.UNAUTHORIZED, "Sign in first", "<p>Open the assignment from your LMS.</p>")
            return
        question, answers, _right = QUIZ
        options = "".join(
            f'<label><input type="radio" name="answer" value="{esc(a)}" required> {esc(a)}</label><br>' for a in answers
        )
        self.page(
            HTTPStatus.OK,
            f"Quiz {esc(session['assignment'])}",
            f'<p id="signed-in">Signed in as <code>{esc(session["user_id"])}</code>.</p>'
            f'<form method="post" action="/quiz"><input type="hidden" name="csrf" value="{esc(session["csrf"])}">'
            f"<p>{esc(question)}</p>{options}<button>Hand in</button></form>",
        )

    def submit_quiz(self, session: Mapping[str, str], form: Mapping[str, str]) -> None:
        """The student's own token posts the grade: no student key needed, it can only be theirs."""
        if "token" not in session:
            self.page(HTTPStatus.UNAUTHORIZED, "Sign in first", "<p>Open the assignment from your LMS.</p>")
            return
        score = 1.0 if form.get("answer") == QUIZ[2] else 0.0
        student = Passback(self.app.base_url, session["token"])
        self.posted(lambda: student.post_grade(session["assignment"], percentage=score, comment="quiz handed in"))

    def post_by_sis_id(self, form: Mapping[str, str]) -> None:
        """From the app's own records: the district-app token posts by the SIS id the app knows the student by."""
        try:
            points = float(form.get("score", ""))
        except ValueError:
            self.page(HTTPStatus.UNPROCESSABLE_ENTITY, "Not posted", "<p>The score must be a number.</p>")
            return
        self.posted(
            lambda: self.app.district.post_grade(
                self.app.assignment_id, sis_id=form.get("sis_id", ""), score_given=points, score_maximum=10
            )
        )

    def posted(self, post: Any) -> None:
        try:
            grade = post()
        except PassbackError as exc:
            fields = "".join(f"<li>{esc(k)}: {esc(' '.join(map(str, v)))}</li>" for k, v in exc.fields.items())
            self.page(HTTPStatus(exc.status), "Not posted", f"<p>{esc(exc.message)}</p><ul>{fields}</ul>")
            return
        self.redirect(f"/grades/{grade['id']}")

    def grade_status(self, grade_id: str) -> None:
        """Read the grade back: Passback's status of each delivery, and what the LMS gradebook holds now."""
        try:
            grade = self.app.district.grade(grade_id)
            in_lms = self.app.district.grade_in_lms(grade_id) if grade["status"] == "delivered" else []
        except PassbackError as exc:
            self.page(HTTPStatus(exc.status), "Grade", f"<p>{esc(exc.message)}</p>")
            return
        if "application/json" in self.headers.get("Accept", ""):
            self.send(HTTPStatus.OK, json.dumps({"grade": grade, "lms": in_lms}).encode(), "application/json")
            return
        lms = "".join(
            f"<li>{esc(v['lmsConnection'])}: {esc(v['value'] if v['error'] is None else v['error'])}</li>"
            for v in in_lms
        )
        self.page(
            HTTPStatus.OK,
            "Grade",
            f"<p>{esc(grade['assignmentID'])} for {esc(json.dumps(grade['studentKey']))}: "
            f'<strong id="status">{esc(grade["status"])}</strong> (reload to follow it).</p>'
            f"<p>The LMS holds:</p><ul>{lms or '<li>nothing read yet</li>'}</ul>",
        )

    def webhook(self, body: bytes) -> None:
        if self.app.webhook is None:
            self.send(HTTPStatus.NOT_FOUND, b"webhooks are not registered (start with --webhooks)", "text/plain")
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        event = verify_webhook(str(self.app.webhook["secret"]), body, headers)
        if event is None:
            self.send(HTTPStatus.UNAUTHORIZED, b"not signed by Passback", "text/plain")
            return
        on_grade_event(self.app, event, headers["webhook-id"])
        self.send(HTTPStatus.NO_CONTENT, b"", "text/plain")

    def heard(self) -> None:
        with self.app.lock:
            body = json.dumps({"events": self.app.events}).encode()
        self.send(HTTPStatus.OK, body, "application/json")

    # --- plumbing

    @property
    def app(self) -> ExampleApp:
        return self.server.app

    def session(self, *, create: bool = False) -> dict[str, str] | None:
        cookie = SimpleCookie(self.headers.get("Cookie", ""))
        sid = cookie["sid"].value if "sid" in cookie else ""
        if sid in self.app.sessions:
            return self.app.sessions[sid]
        if not create:
            return None
        self.new_sid = secrets.token_urlsafe(24)
        self.app.sessions[self.new_sid] = {"csrf": secrets.token_urlsafe(24)}
        return self.app.sessions[self.new_sid]

    def page(self, status: HTTPStatus, title: str, body: str) -> None:
        document = (
            f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title></head>'
            f"<body><h1>{esc(title)}</h1>{body}</body></html>"
        )
        self.send(status, document.encode(), "text/html; charset=utf-8")

    def redirect(self, location: str, sid: str | None = None) -> None:
        self.send_response(HTTPStatus.SEE_OTHER)
        self.send_header("Location", location)
        if sid is not None:
            self.send_header("Set-Cookie", f"sid={sid}; HttpOnly; SameSite=Lax; Path=/")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", "default-src 'none'; form-action 'self'")
        if self.new_sid:
            self.send_header("Set-Cookie", f"sid={self.new_sid}; HttpOnly; SameSite=Lax; Path=/")
        self.end_headers()
        self.wfile.write(body)


class AppServer(ThreadingHTTPServer):
    def __init__(self, address: tuple[str, int], app: ExampleApp) -> None:
        super().__init__(address, Handler)
        self.app = app


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, type=Path, help="What `gateway demo --json` printed.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", default=5001, type=int)
    parser.add_argument("--webhooks", action="store_true", help="Register /webhooks/passback for Passback's events.")
    args = parser.parse_args(argv)
    app = ExampleApp(json.loads(args.config.read_text()))
    server = AppServer((args.host, args.port), app)
    if args.webhooks:
        app.register_webhooks(f"http://{args.host}:{server.server_port}/webhooks/passback")
    # Stopped with Ctrl-C or SIGTERM alike: the endpoint is removed on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    print(f"example app listening on http://{args.host}:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        app.remove_webhooks()
    sys.exit(0)


if __name__ == "__main__":
    main()
