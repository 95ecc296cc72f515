"""The alert round housekeeping runs: evaluate each district that has alerts on (gateway/services/alerts.py),
then send the alerts due, after their rows are committed: an e-mail through the configured SMTP server and a
signed JSON POST to the district's alert webhook. A failed send is recorded and retried a few times; nothing here
raises into the worker's loop."""

from __future__ import annotations

import json
import logging
import smtplib
import ssl
import time
from datetime import UTC
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from adapters.base import DeliveryError
from adapters.http import HttpClient, body_excerpt
from adapters.url_policy import HostResolver, PolicedHttpClient, UrlAwaitingApproval, UrlRefused
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config import Settings
from gateway.crypto import SecretBox
from gateway.db import Database
from gateway.services import alerts
from gateway.services.unit_of_work import UnitOfWork
from gateway.services.webhook_outbox import signed_headers
from gateway.services.webhooks import refused_at_send, url_policy

log = logging.getLogger("passback.alerts")
# A sender holds a claimed alert this long: longer than one SMTP exchange and one webhook request.
LEASE_SECONDS = 120.0
MAX_ANSWER_BYTES = 16 * 1024
WEBHOOK_ID_PREFIX = "alert_"


class AlertSender:
    """One process's alert round: `run_once` evaluates and sends; `run_if_due` does it at most once per
    GATEWAY_ALERT_CHECK_SECONDS (the worker's housekeeping calls it between delivery rounds)."""

    def __init__(
        self,
        db: Database,
        box: SecretBox,
        settings: Settings,
        *,
        clock: Clock = SYSTEM_CLOCK,
        http: HttpClient | None = None,
    ) -> None:
        self.db = db
        self.box = box
        self.settings = settings
        self.clock = clock
        deadline = settings.webhook_deadline()
        self.http = http or HttpClient(settings.http_connect_timeout, deadline, deadline, max_body=MAX_ANSWER_BYTES)
        self.resolver = HostResolver()
        self._last_round: float | None = None

    def run_if_due(self) -> None:
        now = self.clock.monotonic()
        if self._last_round is not None and now - self._last_round < self.settings.alert_check_seconds:
            return
        self._last_round = now
        self.run_once()

    def run_once(self) -> tuple[int, int]:
        """Evaluate every district with alerts on, then send what is due. Returns (alerts decided, sent)."""
        decided = 0
        try:
            with self.db.transaction() as session:
                districts = alerts.districts_with_alerts(session)
            for district_id in districts:
                decided += len(alerts.evaluate_district(self._unit(), district_id, now=self.clock.now()))
        except Exception:
            log.exception("alerts: evaluation failed; trying again at the next round")
        return decided, self.send_due()

    def send_due(self) -> int:
        sent = 0
        try:
            with self.db.transaction() as session:
                claimed = alerts.claim_due(session, self.box, now=self.clock.now(), lease_seconds=LEASE_SECONDS)
        except Exception:
            log.exception("alerts: claiming alerts to send failed")
            return 0
        for alert in claimed:
            results = self.send(alert)
            try:
                with self.db.transaction() as session:
                    status = alerts.record_attempt(session, alert.id, results, now=self.clock.now())
            except Exception:
                log.exception("alerts: the outcome of alert %s was not recorded; it is sent again later", alert.id)
                continue
            sent += status == alerts.SENT
            log.info("alert %s (%s, %s): %s", alert.id, alert.kind, alert.connection_name, status)
        return sent

    def _unit(self) -> UnitOfWork:
        assert self.db.sessionmaker is not None
        return UnitOfWork(self.db.sessionmaker(), close=True)

    def send(self, alert: alerts.OutgoingAlert) -> dict[str, str]:
        """Send the alert's channels not sent yet; each result is "sent" or why not. Never raises."""
        results: dict[str, str] = {}
        if alert.recipients and alert.channels.get("email") != alerts.SENT:
            results["email"] = self._guard(self._mail, alert)
        if alert.webhook_url and alert.channels.get("webhook") != alerts.SENT:
            results["webhook"] = self._guard(self._post, alert)
        return results

    @staticmethod
    def _guard(send: Any, alert: alerts.OutgoingAlert) -> str:
        try:
            result: str = send(alert)
        except Exception as exc:
            log.warning("alert %s: sending failed: %s", alert.id, type(exc).__name__)
            return f"{type(exc).__name__}: {exc}"[:500]
        return result

    # --- e-mail

    def dashboard_url(self) -> str:
        return self.settings.public_url.rstrip("/") + "/dashboard/alerts"

    def message(self, alert: alerts.OutgoingAlert) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.settings.alert_from
        message["To"] = ", ".join(alert.recipients)
        message["Subject"] = f"[Passback] {self.summary(alert)}"
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = make_msgid("alert." + alert.id)
        message.set_content(self.text(alert))
        return message

    @staticmethod
    def summary(alert: alerts.OutgoingAlert) -> str:
        if alert.kind == alerts.UNHEALTHY:
            return f"LMS connection {alert.connection_name} is failing"
        deliveries = "1 delivery" if alert.failures == 1 else f"{alert.failures} deliveries"
        return f"LMS connection {alert.connection_name}: {deliveries} failed in {alert.period_seconds // 60} minutes"

    def text(self, alert: alerts.OutgoingAlert) -> str:
        minutes = alert.period_seconds // 60
        if alert.kind == alerts.UNHEALTHY:
            what = f"Passback's last grade delivery to the LMS connection {alert.connection_name!r} failed."
        else:
            what = (
                f"{alert.failures} grade deliveries to the LMS connection {alert.connection_name!r} failed in the "
                f"last {minutes} minutes (the alert threshold is {alert.threshold})."
            )
        return "\n".join(
            [
                what,
                "",
                f"Cause (as the LMS or Passback put it): {alert.cause or 'not recorded'}",
                f"District: {alert.district_name}",
                f"Alert raised at: {alert.created_at.isoformat(timespec='seconds')} UTC",
                "",
                "Grades keep waiting in Passback's outbox and are retried; see the connection and its failed",
                f"deliveries on the dashboard: {self.dashboard_url()}",
                "",
                f"You get at most one alert of this kind about this connection every {minutes} minutes.",
            ]
        )

    def _mail(self, alert: alerts.OutgoingAlert) -> str:
        settings = self.settings
        if not settings.smtp_host:
            return "not sent: GATEWAY_SMTP_HOST is not set"
        with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=settings.smtp_timeout_seconds) as smtp:
            if settings.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
            if settings.smtp_username:
                smtp.login(settings.smtp_username, settings.smtp_password)
            refused = smtp.send_message(self.message(alert))
        if refused:
            return "the SMTP server refused " + ", ".join(sorted(refused))
        return alerts.SENT

    # --- webhook

    def payload(self, alert: alerts.OutgoingAlert) -> dict[str, Any]:
        return {
            "type": f"connection.{alert.kind}",
            "timestamp": alert.created_at.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z"),
            "data": {
                "alertId": alert.id,
                "kind": alert.kind,
                "district": {"id": alert.district_id, "name": alert.district_name},
                "connection": {"id": alert.connection_id, "name": alert.connection_name},
                "cause": alert.cause,
                "failures": alert.failures,
                "threshold": alert.threshold,
                "periodSeconds": alert.period_seconds,
                "dashboardUrl": self.dashboard_url(),
            },
        }

    def _post(self, alert: alerts.OutgoingAlert) -> str:
        assert alert.webhook_url is not None
        if not alert.webhook_secret:
            return "not sent: the alert webhook has no signing secret (save the alert settings again)"
        allow = self.settings.webhook_allow_private_addresses
        client = PolicedHttpClient(
            self.http, url_policy(alert.webhook_url, allow_private=allow, resolver=self.resolver)
        )
        body = json.dumps(self.payload(alert), separators=(",", ":")).encode()
        # Real time, not the clock: the receiver checks the timestamp against its own clock.
        headers = signed_headers([alert.webhook_secret], WEBHOOK_ID_PREFIX + alert.id, int(time.time()), body)
        try:
            response = client.request("POST", alert.webhook_url, data=body, headers=headers, max_body=MAX_ANSWER_BYTES)
        except (UrlRefused, UrlAwaitingApproval):
            reason = refused_at_send(alert.webhook_url, allow_private=allow, resolver=self.resolver)
            return f"not sent, the URL's address is refused: {reason}"
        except DeliveryError as exc:
            return exc.message
        if 200 <= response.status_code < 300:
            return alerts.SENT
        excerpt = body_excerpt(response)[:200]
        return f"the webhook answered HTTP {response.status_code}" + (f": {excerpt}" if excerpt else "")
