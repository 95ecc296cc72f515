"""The app-facing JSON API under /v1."""

from flask import Blueprint

api = Blueprint("api", __name__, url_prefix="/v1")


from gateway.api import assignments, directory, grades, me, placements, webhooks  # noqa: E402,F401  (views register on the blueprint)
