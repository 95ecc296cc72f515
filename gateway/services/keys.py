"""Passback's LTI signing keys: rotation, the published JWKS, and the current private key."""

from __future__ import annotations

from typing import Any

from joserfc.jwk import RSAKey
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.crypto import SecretBox
from gateway.models import utcnow
from gateway.models.lti import ToolKey, ToolKeyStatus

KEY_BITS = 2048


def rotate_keys(session: Session, box: SecretBox) -> ToolKey:
    """Make a new current key. The old current key stays published as `previous` until the next rotation,
    so platforms that cached the JWKS keep verifying; the one before it is retired."""
    now = utcnow()
    for key in session.scalars(select(ToolKey).where(ToolKey.status != ToolKeyStatus.RETIRED).with_for_update()):
        if key.status == ToolKeyStatus.CURRENT:
            key.status = ToolKeyStatus.PREVIOUS
        else:
            key.status = ToolKeyStatus.RETIRED
            key.retired_at = now
    generated = RSAKey.generate_key(KEY_BITS, parameters={"use": "sig", "alg": "RS256"}, auto_kid=True)
    key = ToolKey(
        kid=str(generated.kid),
        private_key_encrypted=box.encrypt_json({"pem": generated.as_pem(private=True).decode()}),
        public_jwk=dict(generated.as_dict(private=False)),
        status=ToolKeyStatus.CURRENT,
        created_at=now,
    )
    session.add(key)
    session.flush()
    return key


def published_jwks(session: Session) -> dict[str, Any]:
    """The JWKS at /lti/jwks: the current key and, during rotation, the previous one."""
    keys = session.scalars(
        select(ToolKey)
        .where(ToolKey.status.in_((ToolKeyStatus.CURRENT, ToolKeyStatus.PREVIOUS)))
        .order_by(ToolKey.created_at.desc())
    )
    return {"keys": [dict(k.public_jwk) for k in keys]}


def current_signing_key(session: Session, box: SecretBox) -> RSAKey:
    """The private key to sign with; one is created the first time it is needed."""
    key = session.scalar(select(ToolKey).where(ToolKey.status == ToolKeyStatus.CURRENT))
    if key is None:
        key = rotate_keys(session, box)
    pem = box.decrypt_json(key.private_key_encrypted, "Passback's LTI signing key")["pem"]
    return RSAKey.import_key(pem, parameters={"kid": key.kid, "alg": "RS256", "use": "sig"})
