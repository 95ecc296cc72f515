"""Housekeeping deletes what has expired and nothing else."""

from __future__ import annotations

from datetime import timedelta

from flask import Flask
from sqlalchemy import func, select

from gateway.models import IdempotencyRecord, LaunchState, UsedNonce, WebhookEndpoint, WebhookMessage, utcnow
from gateway.services.maintenance import purge_expired
from tests.factories import World


def test_purge_removes_only_expired_records(app: Flask, world: World) -> None:
    now = utcnow()
    with world.session() as session:
        connection_id = world.connection_id
        session.add_all(
            [
                UsedNonce(issuer="i", nonce="old", expires_at=now - timedelta(seconds=1)),
                UsedNonce(issuer="i", nonce="live", expires_at=now + timedelta(minutes=5)),
                LaunchState(state="old", nonce="n", lms_connection_id=connection_id, expires_at=now - timedelta(1)),
                LaunchState(state="live", nonce="n", lms_connection_id=connection_id, expires_at=now + timedelta(1)),
            ]
        )
    key_headers = {"Idempotency-Key": "k-1"}
    assert (
        world.post_grade(
            {"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 1}, **key_headers
        ).status_code
        == 202
    )
    with world.session() as session:
        purged = purge_expired(session, idempotency_ttl_seconds=3600)
        assert (purged.nonces, purged.launch_states, purged.idempotency_keys) == (1, 1, 0)
        assert session.scalars(select(UsedNonce.nonce)).all() == ["live"]
        assert session.scalars(select(LaunchState.state)).all() == ["live"]
        later = purge_expired(session, idempotency_ttl_seconds=3600, now=now + timedelta(hours=2))
        assert later.idempotency_keys == 1
        assert session.scalar(select(func.count()).select_from(IdempotencyRecord)) == 0


def test_purge_drops_webhook_messages_sent_or_given_up_on_long_ago_and_keeps_the_rest(app: Flask, world: World) -> None:
    now = utcnow()
    long_ago = now - timedelta(days=31)
    with world.session() as session:
        endpoint = WebhookEndpoint(
            district_id=world.district_id, app_id=world.app_id, url="https://hooks.example/x", secret_encrypted="x"
        )
        session.add(endpoint)
        session.flush()
        for status, updated in [
            ("delivered", long_ago),
            ("failed", long_ago),
            ("retrying", long_ago),
            ("delivered", now),
        ]:
            session.add(
                WebhookMessage(
                    district_id=world.district_id,
                    endpoint_id=endpoint.id,
                    event="grade.delivered",
                    grade_id="g" * 24,
                    body="{}",
                    status=status,
                    updated_at=updated,
                )
            )
    with world.session() as session:
        purged = purge_expired(session, idempotency_ttl_seconds=3600, webhook_retention_seconds=30 * 86400)
        assert purged.webhook_messages == 2
        kept = session.execute(select(WebhookMessage.status, WebhookMessage.updated_at)).all()
        assert sorted(status for status, _ in kept) == ["delivered", "retrying"]
