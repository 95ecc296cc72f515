"""Passback's signing keys: rotation keeps the previous key published, private keys are encrypted at rest."""

from __future__ import annotations

from flask import Flask
from joserfc import jwt
from joserfc.jwk import KeySet

from gateway.composition import services_of
from gateway.services.keys import current_signing_key, rotate_keys
from tests.conftest import LiveServer


def test_jwks_publishes_current_and_previous_keys(app: Flask, live_server: LiveServer, http: object) -> None:
    import requests

    first = requests.get(f"{live_server.url}/lti/jwks", timeout=5).json()["keys"]
    assert len(first) == 1 and first[0]["kty"] == "RSA" and first[0]["alg"] == "RS256"
    assert "d" not in first[0] and "p" not in first[0], "no private parameters are published"

    box = services_of(app).box
    with services_of(app).database.transaction() as session:
        second = rotate_keys(session, box).kid
    published = [k["kid"] for k in requests.get(f"{live_server.url}/lti/jwks", timeout=5).json()["keys"]]
    assert published == [second, first[0]["kid"]]

    with services_of(app).database.transaction() as session:
        third = rotate_keys(session, box).kid
    published = [k["kid"] for k in requests.get(f"{live_server.url}/lti/jwks", timeout=5).json()["keys"]]
    assert published == [third, second], "the key before the previous one is retired"


def test_signatures_verify_against_the_published_jwks(app: Flask, live_server: LiveServer) -> None:
    import requests

    with services_of(app).database.transaction() as session:
        key = current_signing_key(session, services_of(app).box)
    token = jwt.encode({"alg": "RS256", "kid": key.kid}, {"iss": "passback"}, key)
    jwks = KeySet.import_key_set(requests.get(f"{live_server.url}/lti/jwks", timeout=5).json())
    assert jwt.decode(token, jwks, algorithms=["RS256"]).claims == {"iss": "passback"}


def test_private_keys_are_encrypted_at_rest(app: Flask) -> None:
    with services_of(app).database.transaction() as session:
        current_signing_key(session, services_of(app).box)
    with services_of(app).database.engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT private_key_encrypted FROM tool_keys").scalar_one()
    assert "PRIVATE KEY" not in stored
