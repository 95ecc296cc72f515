"""What an operator does with `gateway …` commands, each one unit of work: the service commits and returns the
answer the command prints (a dict, the same for `--json` and for text)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from gateway.crypto import SecretBox
from gateway.services import approvals, directory, keys, lms, maintenance, staff
from gateway.services.demo import DemoDistrict, KeptCredentials, seed_demo
from gateway.services.unit_of_work import UnitOfWork


def create_district(uow: UnitOfWork, name: str) -> dict[str, Any]:
    with uow:
        row = directory.create_district(uow.session, name)
        data = {"id": row.id, "name": row.name}
        uow.commit()
        return data


def create_app(uow: UnitOfWork, name: str, redirect_uri: str, catalog_url: str | None) -> dict[str, Any]:
    """Register an app; its client secret is in the answer, and only there."""
    with uow:
        created = directory.create_app_partner(uow.session, name, redirect_uri, catalog_url)
        data = {
            "id": created.app.id,
            "name": created.app.name,
            "client_id": created.app.client_id,
            "client_secret": created.client_secret,
        }
        uow.commit()
        return data


def authorize_app(uow: UnitOfWork, app_ref: str, district_id: str) -> dict[str, Any]:
    with uow:
        issued = directory.authorize_app(uow.session, app_ref, district_id)
        data = {"token_id": issued.token.id, "token": issued.raw, "scopes": issued.token.scopes}
        uow.commit()
        return data


def revoke_token(uow: UnitOfWork, token_ref: str) -> dict[str, Any]:
    with uow:
        row = directory.revoke_token(uow.session, token_ref)
        data = {"token_id": row.id, "revoked_at": row.revoked_at}
        uow.commit()
        return data


def add_user(
    uow: UnitOfWork, district_id: str, *, name: str, email: str | None, role: str, sis_id: str | None
) -> dict[str, Any]:
    with uow:
        row = directory.create_user(uow.session, district_id, name=name, email=email, role=role)
        row.sis_id = sis_id
        data = {"id": row.id, "name": row.name, "role": row.role}
        uow.commit()
        return data


def add_lms_connection(
    uow: UnitOfWork, box: SecretBox, district_id: str, name: str, adapter: str, settings: Mapping[str, Any]
) -> dict[str, Any]:
    with uow:
        row = lms.add_lms_connection(uow.session, box, district_id, name, adapter, dict(settings))
        data = {"id": row.id, "name": row.name, "adapter": row.adapter}
        uow.commit()
        return data


def change_lms_settings(
    uow: UnitOfWork, box: SecretBox, district_id: str, lms_ref: str, changes: Mapping[str, Any]
) -> dict[str, Any]:
    """Change some settings of a connection; its retrying deliveries are due at once, so delivery is woken."""
    with uow:
        row = lms.update_lms_settings(uow.session, box, district_id, lms_ref, changes)
        data = {"id": row.id, "name": row.name, "changed": sorted(changes)}
        uow.nudge({row.id})
        uow.commit()
        return data


def set_lms_limits(
    uow: UnitOfWork,
    district_id: str,
    lms_ref: str,
    *,
    rate: float | None,
    concurrency: int | None,
    use_default: bool,
    default_rate: float,
    default_concurrency: int,
) -> dict[str, Any]:
    """Set (or, with `use_default`, clear) a connection's own rate and concurrency; answers what now applies."""
    with uow:
        connection = lms.get_connection(uow.session, district_id, lms_ref)
        if use_default:
            connection.rate_limit = connection.concurrency_limit = None
        if rate is not None:
            connection.rate_limit = rate
        if concurrency is not None:
            connection.concurrency_limit = concurrency
        data = {
            "lms": connection.name,
            "rate": connection.rate_limit or default_rate,
            "concurrency": connection.concurrency_limit or default_concurrency,
            "own_rate": connection.rate_limit is not None,
            "own_concurrency": connection.concurrency_limit is not None,
        }
        uow.commit()
        return data


def approve_column(
    uow: UnitOfWork, district_id: str, lms_ref: str, app_ref: str, section: str, lms_assignment: str | None
) -> dict[str, Any]:
    with uow:
        app_id = directory.get_app(uow.session, app_ref).id
        row, created = approvals.approve_column(
            uow.session, district_id, lms_ref, app_id, section, lms_assignment, "cli"
        )
        data: dict[str, Any] = {"id": row.id, "app": app_id, "section": section, "lmsAssignment": lms_assignment}
        data["created"] = created
        uow.commit()
        return data


def revoke_column(
    uow: UnitOfWork, district_id: str, lms_ref: str, app_ref: str, section: str, lms_assignment: str | None
) -> dict[str, Any]:
    with uow:
        app_id = directory.get_app(uow.session, app_ref).id
        removed = approvals.revoke_column(uow.session, district_id, lms_ref, app_id, section, lms_assignment)
        uow.commit()
        return {"removed": removed}


def list_approvals(uow: UnitOfWork, district_id: str, lms_ref: str | None) -> dict[str, Any]:
    with uow:
        rows = [
            {
                "lms": a.lms_connection_id,
                "app": a.app_id,
                "section": a.section_id,
                "lmsAssignment": a.lms_assignment_id,
                "approvedBy": a.approved_by,
            }
            for a in approvals.list_approvals(uow.session, district_id, lms_ref)
        ]
        uow.commit()
        return {"approvals": rows}


def create_staff(
    uow: UnitOfWork, district_id: str, email: str, password: str | None, *, role: str = "admin", public_url: str
) -> dict[str, Any]:
    """A staff account; without a password, the answer holds a one-time setup link (valid 24 hours)."""
    with uow:
        created = staff.create_staff(uow.session, district_id, email, password, role=role)
        data: dict[str, Any] = {"id": created.staff.id, "email": created.staff.email, "role": created.staff.role}
        if created.setup_token:
            # After "#": a browser never sends it, so no access log or proxy records the token.
            data["setup_link"] = f"{public_url.rstrip('/')}/dashboard/setup#{created.setup_token}"
        uow.commit()
        return data


def rotate_signing_keys(uow: UnitOfWork, box: SecretBox) -> dict[str, Any]:
    with uow:
        key = keys.rotate_keys(uow.session, box)
        data = {"kid": key.kid, "published": [k["kid"] for k in keys.published_jwks(uow.session)["keys"]]}
        uow.commit()
        return data


def seed_sandbox_district(
    uow: UnitOfWork,
    box: SecretBox,
    public_url: str,
    *,
    kept: KeptCredentials | None = None,
    redirect_uri: str | None = None,
) -> DemoDistrict:
    """The sandbox district, created once; the demo token and client secret of `kept` are kept while still good,
    else new ones are issued."""
    with uow:
        demo = seed_demo(uow.session, box, public_url, kept=kept, redirect_uri=redirect_uri)
        uow.commit()
        return demo


def purge_expired(
    uow: UnitOfWork,
    *,
    idempotency_ttl_seconds: float,
    webhook_retention_seconds: float,
    retention_days: int = 0,
    dry_run: bool = False,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Housekeeping now; with `dry_run` the same counts, then a rollback."""
    with uow:
        purged = maintenance.purge_expired(
            uow.session,
            idempotency_ttl_seconds=idempotency_ttl_seconds,
            webhook_retention_seconds=webhook_retention_seconds,
            retention_days=retention_days,
            now=now,
        )
        if not dry_run:
            uow.commit()
        return dict(vars(purged))
