"""Security headers on every response: a nonce-based Content-Security-Policy, nosniff, no referrer to other
sites, and framing rules. Nobody frames a page unless its view says who may
(design: docs/outbound-urls-and-headers.md)."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from urllib.parse import urlsplit

from flask import Flask, Response, g

# Who may frame the LTI error pages: anyone (they carry a message only, no action), so the LMS shows it in place.
ANY_FRAMER = ("*",)


def allow_framing_by(origins: Iterable[str]) -> None:
    """This response may be framed by these origins (the LMS's), and its forms may post to them."""
    g.frame_ancestors = list(origins)


def allow_form_action(*origins: str) -> None:
    g.form_action = [*g.get("form_action", []), *origins]


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def csp_nonce() -> str:
    nonce = g.get("csp_nonce")
    if nonce is None:
        nonce = g.csp_nonce = secrets.token_urlsafe(18)
    return str(nonce)


def init_security_headers(app: Flask) -> None:
    app.jinja_env.globals["csp_nonce"] = csp_nonce

    @app.after_request
    def _security_headers(response: Response) -> Response:
        framers = g.get("frame_ancestors")
        if framers:
            frame_ancestors = " ".join(framers)
        else:
            frame_ancestors = "'none'"
            response.headers.setdefault("X-Frame-Options", "DENY")
        nonce = csp_nonce()
        form_action = " ".join(["'self'", *g.get("form_action", [])])
        policy = (
            "default-src 'none'; "
            f"script-src 'self' 'nonce-{nonce}'; "
            f"style-src 'self' 'nonce-{nonce}'; "
            # The dashboard's bar charts set widths in style attributes; no script can run from one.
            "style-src-attr 'unsafe-inline'; "
            "img-src 'self' data:; connect-src 'self'; "
            f"form-action {form_action}; base-uri 'none'; "
            f"frame-ancestors {frame_ancestors}"
        )
        response.headers.setdefault("Content-Security-Policy", policy)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        # same-origin, not no-referrer: Flask-WTF's https CSRF check needs the Referer of our own pages' POSTs.
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response
