"""Alerts to district staff when an LMS connection is in trouble (design: docs/alerts.md).

Housekeeping evaluates each district that turned alerts on: a connection that became unhealthy (its last
attempt failed, after a success or a previous alert), or whose failed deliveries within the period reached the
threshold, gets an alert row, written in the transaction that decided it (the alert outbox). The district's
settings row is written first in that transaction, so evaluations of one district take turns and see each other's
alerts: at most one alert of a kind per connection per period, however many workers run. A sender
(gateway/services/alert_sending.py) sends the rows after the commit."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from gateway.crypto import SecretBox
from gateway.models import Alert, AlertSettings, Delivery, District, LmsConnection, StaffUser, utcnow
from gateway.models.alert import DEFAULT_FAILURE_THRESHOLD, DEFAULT_PERIOD_SECONDS
from gateway.services.errors import InvalidInput
from gateway.services.staff import audit
from gateway.services.unit_of_work import UnitOfWork
from gateway.services.webhooks import new_secret, refused_url
from schemas.statuses import DeliveryStatus

UNHEALTHY = "unhealthy"
FAILURES = "failures"
PENDING, SENT, FAILED = "pending", "sent", "failed"
MAX_RECIPIENTS = 20
MIN_PERIOD_MINUTES, MAX_PERIOD_MINUTES = 5, 7 * 24 * 60
MAX_THRESHOLD = 100_000
MAX_CAUSE_CHARS = 1000
RECENT_ALERTS = 50
# A plain address check: one @, no spaces or list separators; the SMTP server has the last word.
EMAIL = re.compile(r"^[^@\s,;<>\"']{1,64}@[^@\s,;<>\"']{1,255}$")


@dataclass(frozen=True)
class SettingsView:
    """A district's alert settings as the page shows them (never the webhook secret)."""

    enabled: bool
    recipients: list[str]
    staff_emails: list[str]
    webhook_url: str
    has_webhook_secret: bool
    failure_threshold: int
    period_minutes: int


@dataclass(frozen=True)
class AlertRow:
    id: str
    kind: str
    connection_id: str
    connection_name: str
    failures: int
    threshold: int
    cause: str
    status: str
    channels: dict[str, Any]
    attempts: int
    created_at: datetime
    sent_at: datetime | None
    error: str | None


def staff_emails(session: Session, district_id: str) -> list[str]:
    return list(
        session.scalars(select(StaffUser.email).where(StaffUser.district_id == district_id).order_by(StaffUser.email))
    )


def settings_view(session: Session, district_id: str) -> SettingsView:
    row = session.get(AlertSettings, district_id)
    return SettingsView(
        enabled=bool(row and row.enabled),
        recipients=list(row.recipients) if row else [],
        staff_emails=staff_emails(session, district_id),
        webhook_url=(row.webhook_url or "") if row else "",
        has_webhook_secret=bool(row and row.webhook_secret_encrypted),
        failure_threshold=row.failure_threshold if row else DEFAULT_FAILURE_THRESHOLD,
        period_minutes=(row.period_seconds if row else DEFAULT_PERIOD_SECONDS) // 60,
    )


@dataclass(frozen=True)
class SettingsForm:
    enabled: bool
    recipients: list[str]
    webhook_url: str | None
    failure_threshold: int
    period_minutes: int
    new_webhook_secret: bool


def parse_settings_form(form: Mapping[str, str], *, allow_private: bool) -> SettingsForm:
    """The alerts page's form, checked; InvalidInput names every field that is wrong and why."""
    problems: dict[str, list[str]] = {}
    recipients: list[str] = []
    for address in re.split(r"[\s,;]+", form.get("recipients", "")[:10_000]):
        if not address:
            continue
        if not EMAIL.match(address):
            problems.setdefault("recipients", []).append(f"{address[:80]!r} is not an e-mail address.")
        elif address.lower() not in {r.lower() for r in recipients}:
            recipients.append(address)
    if len(recipients) > MAX_RECIPIENTS:
        problems.setdefault("recipients", []).append(f"At most {MAX_RECIPIENTS} addresses.")
    url = form.get("webhook_url", "").strip()
    if len(url) > 2000:
        problems["webhook_url"] = ["At most 2,000 characters."]
    elif url:
        reason = refused_url(url, allow_private=allow_private)
        if reason is not None:
            problems["webhook_url"] = [reason[0].upper() + reason[1:] + "."]
    threshold = _whole_number(form.get("failure_threshold", ""), 1, MAX_THRESHOLD, "failure_threshold", problems)
    period = _whole_number(
        form.get("period_minutes", ""), MIN_PERIOD_MINUTES, MAX_PERIOD_MINUTES, "period_minutes", problems
    )
    if problems:
        names = ", ".join(problems)
        raise InvalidInput(f"the alert settings were not saved: check {names}", fields=problems)
    return SettingsForm(
        enabled=form.get("enabled") in ("on", "1", "true", "yes"),
        recipients=recipients,
        webhook_url=url or None,
        failure_threshold=threshold,
        period_minutes=period,
        new_webhook_secret=bool(form.get("new_webhook_secret")),
    )


def _whole_number(raw: str, low: int, high: int, name: str, problems: dict[str, list[str]]) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        problems[name] = [f"Enter a whole number from {low:,} to {high:,}."]
        return low
    if not low <= value <= high:
        problems[name] = [f"Must be from {low:,} to {high:,}."]
    return value


def save_settings(uow: UnitOfWork, box: SecretBox, staff: StaffUser, form: SettingsForm) -> str | None:
    """Store the district's alert settings (audited). Returns the webhook's signing secret when a new one was made
    (the first webhook URL, or asked for): shown once, Passback keeps it encrypted."""
    with uow:
        session = uow.session
        row = session.get(AlertSettings, staff.district_id, with_for_update=True)
        if row is None:
            row = AlertSettings(district_id=staff.district_id)
            session.add(row)
        secret = None
        if form.webhook_url and (form.new_webhook_secret or not row.webhook_secret_encrypted):
            secret = new_secret()
            row.webhook_secret_encrypted = box.encrypt_json(secret)
        elif not form.webhook_url:
            row.webhook_secret_encrypted = None  # the next URL gets a secret of its own, shown then
        row.enabled = form.enabled
        row.recipients = form.recipients
        row.webhook_url = form.webhook_url
        row.failure_threshold = form.failure_threshold
        row.period_seconds = form.period_minutes * 60
        row.updated_at = utcnow()
        audit(
            session,
            staff,
            "changed alert settings",
            "alerts",
            enabled=form.enabled,
            recipients=form.recipients,
            webhook_url=form.webhook_url,
            failure_threshold=form.failure_threshold,
            period_minutes=form.period_minutes,
            new_webhook_secret=secret is not None,
        )
        uow.commit()
        return secret


def recent_alerts(session: Session, district_id: str, limit: int = RECENT_ALERTS) -> list[AlertRow]:
    rows = session.execute(
        select(Alert, LmsConnection.name)
        .join(LmsConnection, LmsConnection.id == Alert.lms_connection_id)
        .where(Alert.district_id == district_id)
        .order_by(Alert.created_at.desc(), Alert.id)
        .limit(limit)
    ).all()
    return [
        AlertRow(
            id=a.id,
            kind=a.kind,
            connection_id=a.lms_connection_id,
            connection_name=name,
            failures=a.failures,
            threshold=a.threshold,
            cause=a.cause,
            status=a.status,
            channels=dict(a.channels or {}),
            attempts=a.attempts,
            created_at=a.created_at,
            sent_at=a.sent_at,
            error=a.error,
        )
        for a, name in rows
    ]


# --- evaluation (housekeeping) -------------------------------------------------------------------------------


def districts_with_alerts(session: Session) -> list[str]:
    return list(
        session.scalars(
            select(AlertSettings.district_id).where(AlertSettings.enabled.is_(True)).order_by(AlertSettings.district_id)
        )
    )


def is_unhealthy(connection: LmsConnection) -> bool:
    """The connection's last recorded attempt failed (the dashboard's connections page shows the same two times)."""
    failed, succeeded = connection.last_failure_at, connection.last_success_at
    return failed is not None and (succeeded is None or failed > succeeded)


def evaluate_district(uow: UnitOfWork, district_id: str, *, now: datetime) -> list[str]:
    """Decide the district's alerts at `now` and write them, in one transaction; returns the new alerts' ids."""
    with uow:
        session = uow.session
        # The row lock (PostgreSQL) or write lock (SQLite) first: a concurrent evaluation waits, then sees ours.
        locked = session.execute(
            update(AlertSettings)
            .where(AlertSettings.district_id == district_id, AlertSettings.enabled.is_(True))
            .values(evaluated_at=now)
        ).rowcount  # type: ignore[attr-defined]
        settings = session.get(AlertSettings, district_id) if locked else None
        if settings is None:
            uow.commit()
            return []
        period = timedelta(seconds=settings.period_seconds)
        created: list[Alert] = []
        connections = session.scalars(
            select(LmsConnection)
            .where(LmsConnection.district_id == district_id, LmsConnection.paused.is_(False))
            .order_by(LmsConnection.name)
        ).all()
        recipients: list[str] | None = None
        for connection in connections:
            for kind, failures, cause in _troubles(session, connection, settings.failure_threshold, now - period):
                last = _last_alert_at(session, connection.id, kind)
                if last is not None and last > now - period:
                    continue  # at most one alert of a kind per connection per period
                # Unhealthy: a new episode only, the connection succeeded since the last alert about it.
                succeeded = connection.last_success_at
                if kind == UNHEALTHY and last is not None and (succeeded is None or succeeded <= last):
                    continue
                if recipients is None:
                    recipients = list(settings.recipients) or staff_emails(session, district_id)
                alert = Alert(
                    district_id=district_id,
                    lms_connection_id=connection.id,
                    kind=kind,
                    failures=failures,
                    threshold=settings.failure_threshold,
                    period_seconds=settings.period_seconds,
                    cause=cause[:MAX_CAUSE_CHARS],
                    recipients=recipients,
                    webhook_url=settings.webhook_url,
                    channels={},
                    status=PENDING,
                    created_at=now,
                    next_attempt_at=now,
                )
                session.add(alert)
                created.append(alert)
        session.flush()
        ids = [a.id for a in created]
        uow.commit()
        return ids


def _troubles(
    session: Session, connection: LmsConnection, threshold: int, since: datetime
) -> list[tuple[str, int, str]]:
    """(kind, failed deliveries in the window, cause) of what is wrong with the connection now."""
    found: list[tuple[str, int, str]] = []
    failed = (
        select(Delivery.last_error)
        .where(
            Delivery.lms_connection_id == connection.id,
            Delivery.status.in_((DeliveryStatus.RETRYING, DeliveryStatus.FAILED)),
            Delivery.last_error.is_not(None),
            Delivery.updated_at > since,
        )
        .order_by(Delivery.updated_at.desc())
    )
    count = int(session.scalar(select(func.count()).select_from(failed.subquery())) or 0)
    if is_unhealthy(connection):
        found.append((UNHEALTHY, count, connection.last_failure or "the LMS refused the last grade"))
    if count >= threshold:
        newest = session.scalar(failed.limit(1)) or connection.last_failure or ""
        found.append((FAILURES, count, newest))
    return found


def _last_alert_at(session: Session, connection_id: str, kind: str) -> datetime | None:
    return session.scalar(
        select(func.max(Alert.created_at)).where(Alert.lms_connection_id == connection_id, Alert.kind == kind)
    )


# --- the outbox ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutgoingAlert:
    """What a sender needs to send one claimed alert, read in the claim's transaction."""

    id: str
    kind: str
    district_id: str
    district_name: str
    connection_id: str
    connection_name: str
    failures: int
    threshold: int
    period_seconds: int
    cause: str
    recipients: list[str]
    webhook_url: str | None
    webhook_secret: str | None
    channels: dict[str, Any]
    created_at: datetime
    attempts: int


def claim_due(
    session: Session, box: SecretBox, *, now: datetime, lease_seconds: float, limit: int = 20
) -> list[OutgoingAlert]:
    """Take pending alerts that are due and not held by another sender (a conditional update per row: only one
    sender wins each)."""
    candidates = session.scalars(
        select(Alert.id)
        .where(
            Alert.status == PENDING,
            or_(Alert.next_attempt_at.is_(None), Alert.next_attempt_at <= now),
            or_(Alert.lease_until.is_(None), Alert.lease_until <= now),
        )
        .order_by(Alert.created_at)
        .limit(limit)
    ).all()
    claimed: list[OutgoingAlert] = []
    for alert_id in candidates:
        won = session.execute(
            update(Alert)
            .where(
                Alert.id == alert_id,
                Alert.status == PENDING,
                or_(Alert.lease_until.is_(None), Alert.lease_until <= now),
            )
            .values(lease_until=now + timedelta(seconds=lease_seconds))
        ).rowcount  # type: ignore[attr-defined]
        if not won:
            continue
        alert = session.get(Alert, alert_id)
        assert alert is not None
        connection = session.get(LmsConnection, alert.lms_connection_id)
        district = session.get(District, alert.district_id)
        settings = session.get(AlertSettings, alert.district_id)
        secret: str | None = None
        if settings is not None and settings.webhook_secret_encrypted and alert.webhook_url:
            secret = str(box.decrypt_json(settings.webhook_secret_encrypted, "the alert webhook's secret"))
        claimed.append(
            OutgoingAlert(
                id=alert.id,
                kind=alert.kind,
                district_id=alert.district_id,
                district_name=district.name if district else "",
                connection_id=alert.lms_connection_id,
                connection_name=connection.name if connection else "",
                failures=alert.failures,
                threshold=alert.threshold,
                period_seconds=alert.period_seconds,
                cause=alert.cause,
                recipients=[str(r) for r in alert.recipients or []],
                webhook_url=alert.webhook_url,
                webhook_secret=secret,
                channels=dict(alert.channels or {}),
                created_at=alert.created_at,
                attempts=alert.attempts,
            )
        )
    return claimed


# Between attempts: a minute, five, fifteen; the fourth failure gives up.
RETRY_DELAYS_SECONDS = (60.0, 300.0, 900.0)
MAX_ATTEMPTS = len(RETRY_DELAYS_SECONDS) + 1


def record_attempt(session: Session, alert_id: str, results: Mapping[str, str], *, now: datetime) -> str:
    """Record one attempt's results per channel ("sent" or an error): sent when every channel is, else retried
    later, or failed after MAX_ATTEMPTS. Returns the new status."""
    alert = session.get(Alert, alert_id, with_for_update=True)
    if alert is None:
        return FAILED
    channels = {**(alert.channels or {}), **results}
    alert.channels = channels
    alert.attempts += 1
    alert.lease_until = None
    errors = [f"{channel}: {result}" for channel, result in sorted(channels.items()) if result != SENT]
    if not channels:
        errors = ["nowhere to send it: no recipients and no webhook URL"]
    if not errors:
        alert.status = SENT
        alert.sent_at = now
        alert.error = None
        alert.next_attempt_at = None
    elif alert.attempts >= MAX_ATTEMPTS or not channels:
        alert.status = FAILED
        alert.error = "; ".join(errors)[:MAX_CAUSE_CHARS]
        alert.next_attempt_at = None
    else:
        alert.error = "; ".join(errors)[:MAX_CAUSE_CHARS]
        alert.next_attempt_at = now + timedelta(seconds=RETRY_DELAYS_SECONDS[alert.attempts - 1])
    return alert.status
