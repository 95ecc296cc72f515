"""Webhook endpoints of the token's app in its district: POST/GET /v1/webhooks, GET/PATCH/DELETE
/v1/webhooks/{id}, POST /v1/webhooks/{id}/rotate-secret. What each endpoint then receives is the callback
declared on postWebhooks."""

from __future__ import annotations

from flask import Response, current_app, jsonify
from marshmallow import fields

from gateway.api import api
from gateway.api.common import current_principal, load_body
from gateway.contract import Callback, Header, Reply, operation
from gateway.extensions import current_services, db, request_unit_of_work
from gateway.services import webhooks
from schemas.errors import ErrorSchema
from schemas.webhooks import (
    WebhookEventSchema,
    WebhookListSchema,
    WebhookPatchSchema,
    WebhookRequestSchema,
    WebhookSchema,
    WebhookWithSecretSchema,
)

WEBHOOK_ID = {
    "webhook_id": fields.String(metadata={"description": "The endpoint's id, as POST /v1/webhooks answered it."})
}
webhook_response = WebhookSchema()
with_secret = WebhookWithSecretSchema()
FORBIDDEN = Reply(403, "A user token (webhooks belong to the district-app token), or a missing scope.", ErrorSchema)

GRADE_EVENT = Callback(
    name="gradeEvent",
    url="{$request.body#/url}",
    summary="What happened to one destination of a grade (one of the events the endpoint subscribed to)",
    description="Sent as the Standard Webhooks specification says (www.standardwebhooks.com): verify the "
    "`webhook-signature` over `webhook-id.webhook-timestamp.body` with the endpoint's secret, e.g. with the "
    "`standardwebhooks` package, before trusting the body. At least once: the same event may come again with "
    "the same `webhook-id` (drop repeats). A grade's events come in the order they happened; an answer other "
    "than 2xx within the timeout (15 s by default) is retried with backoff for at least a day.",
    body=WebhookEventSchema,
    headers=(
        Header("webhook-id", "The event's id (`msg_…`): the same on every attempt.", required=True),
        Header("webhook-timestamp", "When this attempt was sent, in seconds since the epoch.", required=True),
        Header(
            "webhook-signature",
            "`v1,` and the base64 HMAC-SHA256 of `id.timestamp.body` with the secret's bytes; after a rotation, "
            "for a day, a second signature with the old secret follows, space-separated.",
            required=True,
        ),
    ),
    answer="Received: any 2xx. Anything else (or no answer in time) is retried.",
)


@api.post("/webhooks")
@operation(
    "postWebhooks",
    tag="webhooks",
    summary="Register an endpoint for events of this app's grades in this district",
    description="Needs the district-app token. The answer carries the signing secret, shown only this once.",
    body=WebhookRequestSchema,
    replies=Reply(201, "Registered.", with_secret),
    errors=(FORBIDDEN, Reply(409, "The app has the most endpoints it may have in this district.", ErrorSchema)),
    callbacks=(GRADE_EVENT,),
)
def post_webhooks() -> Response:
    principal = current_principal()
    data = load_body()
    services = current_services()
    created = webhooks.create_endpoint(
        request_unit_of_work(),
        principal,
        services.box,
        data,
        allow_private=services.settings.webhook_allow_private_addresses,
    )
    response = jsonify(with_secret.dump(created.as_reply()))
    response.status_code = 201
    return response


@api.get("/webhooks")
@operation(
    "listWebhooks",
    tag="webhooks",
    summary="This app's endpoints in this district",
    replies=Reply(200, "The endpoints, oldest first (no secrets).", WebhookListSchema),
    errors=(FORBIDDEN,),
)
def list_webhooks() -> Response:
    principal = current_principal()
    session = db.session()
    views = webhooks.list_endpoints(session, principal)
    payload = WebhookListSchema().dump({"webhooks": [webhooks.as_reply(view) for view in views]})
    session.commit()  # keeps authenticate's last-used touch of the token (teardown rolls back)
    return jsonify(payload)


@api.get("/webhooks/<webhook_id>")
@operation(
    "getWebhook",
    tag="webhooks",
    summary="One endpoint: its events, whether it is disabled or failing, and its last error",
    path=WEBHOOK_ID,
    replies=Reply(200, "The endpoint (no secret).", webhook_response),
    errors=(FORBIDDEN,),
)
def get_webhook(webhook_id: str) -> Response:
    principal = current_principal()
    session = db.session()
    payload = webhook_response.dump(webhooks.as_reply(webhooks.get_endpoint(session, principal, webhook_id)))
    session.commit()  # keeps authenticate's last-used touch of the token (teardown rolls back)
    return jsonify(payload)


@api.patch("/webhooks/<webhook_id>")
@operation(
    "patchWebhook",
    tag="webhooks",
    summary="Change an endpoint's url or events, or disable it (undelivered events are dropped) or enable it",
    path=WEBHOOK_ID,
    body=WebhookPatchSchema,
    replies=Reply(200, "Changed.", webhook_response),
    errors=(FORBIDDEN, Reply(409, "District staff disabled it: only they can enable it.", ErrorSchema)),
)
def patch_webhook(webhook_id: str) -> Response:
    principal = current_principal()
    data = load_body()
    view = webhooks.update_endpoint(
        request_unit_of_work(),
        principal,
        webhook_id,
        data,
        allow_private=current_app.config["PASSBACK"].webhook_allow_private_addresses,
    )
    return jsonify(webhook_response.dump(webhooks.as_reply(view)))


@api.delete("/webhooks/<webhook_id>")
@operation(
    "deleteWebhook",
    tag="webhooks",
    summary="Remove an endpoint and the events waiting for it",
    path=WEBHOOK_ID,
    replies=Reply(204, "Removed."),
    errors=(FORBIDDEN,),
)
def delete_webhook(webhook_id: str) -> Response:
    webhooks.delete_endpoint(request_unit_of_work(), current_principal(), webhook_id)
    return Response(status=204)


@api.post("/webhooks/<webhook_id>/rotate-secret")
@operation(
    "postWebhookRotateSecret",
    tag="webhooks",
    summary="A new signing secret, shown once; the old one also signs for a day",
    path=WEBHOOK_ID,
    replies=Reply(200, "The endpoint with its new secret.", with_secret),
    errors=(FORBIDDEN,),
)
def rotate_webhook_secret(webhook_id: str) -> Response:
    principal = current_principal()
    services = current_services()
    created = webhooks.rotate_secret(
        request_unit_of_work(),
        principal,
        services.box,
        webhook_id,
        overlap_seconds=services.settings.webhook_secret_overlap_seconds,
    )
    return jsonify(with_secret.dump(created.as_reply()))
