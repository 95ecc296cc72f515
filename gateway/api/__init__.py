"""The app-facing JSON API under /v1."""

from flask import Blueprint

api = Blueprint("api", __name__, url_prefix="/v1")


@api.before_request
def _refuse_unstorable_url() -> None:
    from gateway.api.common import reject_unstorable_url

    reject_unstorable_url()


from gateway.api import assignments, grades, me, placements  # noqa: E402,F401  (views register on the blueprint)
