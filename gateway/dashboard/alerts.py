"""The dashboard's alerts page: the district's alert settings (who hears about connections in trouble, and when)
and the alerts sent or failed lately. Design: docs/alerts.md."""

from __future__ import annotations

from flask import Response, current_app, flash, redirect, request, url_for

from gateway.dashboard import _page, dashboard_bp, staff_required
from gateway.extensions import current_services, db, request_unit_of_work
from gateway.models import StaffUser
from gateway.services import alerts
from gateway.services.errors import InvalidInput


def _alerts_page(staff: StaffUser, *, error: InvalidInput | None = None, secret: str | None = None) -> Response:
    session = db.session()
    return _page(
        "dashboard/alerts.html",
        http_status=422 if error else 200,
        staff=staff,
        view=alerts.settings_view(session, staff.district_id),
        rows=alerts.recent_alerts(session, staff.district_id),
        error=error,
        form=request.form if error else None,
        secret=secret,
    )


@dashboard_bp.get("/alerts")
@staff_required
def alert_settings(staff: StaffUser) -> Response:
    return _alerts_page(staff)


@dashboard_bp.post("/alerts")
@staff_required
def save_alert_settings(staff: StaffUser) -> Response:
    settings = current_app.config["PASSBACK"]
    try:
        form = alerts.parse_settings_form(request.form, allow_private=settings.webhook_allow_private_addresses)
        secret = alerts.save_settings(request_unit_of_work(), current_services().box, staff, form)
    except InvalidInput as exc:
        return _alerts_page(staff, error=exc)
    if secret is not None:
        # Shown once, on this answer only (never in a redirect, a cookie or a log).
        flash("Alert settings saved. Copy the webhook's signing secret now: it is not shown again.")
        return _alerts_page(staff, secret=secret)
    flash("Alert settings saved.")
    return redirect(url_for("dashboard.alert_settings"), 303)  # type: ignore[return-value]
