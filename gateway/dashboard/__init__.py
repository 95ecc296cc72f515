"""The district staff dashboard: server-rendered pages over gateway/services/dashboard_*.py and staff.py."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from functools import wraps
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    stream_with_context,
    url_for,
)
from marshmallow import ValidationError
from werkzeug.exceptions import BadRequest, NotFound

from adapters import causes
from gateway.errors import html_error_page
from gateway.extensions import current_services, db, request_unit_of_work
from gateway.models import StaffUser
from gateway.security_headers import allow_form_action, origin_of
from gateway.services import (
    connection_settings,
    dashboard_connections,
    dashboard_counts,
    dashboard_deliveries,
    dashboard_drilldown,
    dashboard_overview,
    dashboard_problems,
    dashboard_sandbox,
    local_time,
    staff_actions,
    staff_sign_in,
    webhooks,
)
from gateway.services import staff as staff_service
from gateway.services.errors import InvalidInput, ServiceError
from gateway.services.errors import NotFound as NotFoundError
from schemas.sandbox import FAULT_KINDS, SandboxFaultFormSchema
from schemas.statuses import DeliveryStatus

dashboard_bp = Blueprint("dashboard", __name__, url_prefix="/dashboard")


def _age(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return "0 seconds"


def _pretty_json(value: Any) -> str:
    # Shown as text (autoescaped by the template), so it reads as the app sent it, quotes and brackets included.
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def _page(template: str, http_status: int = 200, **context: Any) -> Response:
    html = render_template(template, age=_age, pretty_json=_pretty_json, cause_of=causes.cause, **context)
    return Response(html, status=http_status, content_type="text/html; charset=utf-8")


def current_staff() -> StaffUser | None:
    """The staff member of this request's server-side session (looked up once per request)."""
    if "passback_staff" not in g:
        g.passback_staff = _resume_staff()
    staff: StaffUser | None = g.passback_staff
    return staff


def _resume_staff() -> StaffUser | None:
    """The cookie holds only the session's token; the row it names keeps the sign-in time, last activity and
    whether it was signed out."""
    raw = session.get("sid")
    if not isinstance(raw, str) or not raw:
        return None
    settings = current_app.config["PASSBACK"]
    try:
        staff = staff_sign_in.resume(
            request_unit_of_work(),
            raw,
            lifetime_seconds=settings.staff_session_seconds,
            idle_seconds=settings.staff_idle_seconds,
        )
    except staff_service.SessionExpired as exc:
        session.clear()
        flash(exc.message)
        return None
    if staff is None:
        session.clear()
        return None
    return staff


def staff_required(view: Callable[..., Response]) -> Callable[..., Response]:
    @wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Response:
        staff = current_staff()
        if staff is None:
            return redirect(url_for("dashboard.login", next=request.path))  # type: ignore[return-value]
        return view(staff, *args, **kwargs)

    return wrapped


@dashboard_bp.context_processor
def _district_time() -> dict[str, Any]:
    """`local(t)` in every page: a stored UTC time in the signed-in district's time zone, with its abbreviation."""
    staff = g.get("passback_staff")
    zone = local_time.district_zone(db.session(), staff.district_id) if staff is not None else "UTC"

    def local(moment: Any, seconds: bool = False) -> str:
        return local_time.shown(moment, zone, seconds=seconds)

    return {"local": local, "time_zone": zone}


# Forms anyone may post: signing in, setting a password, signing out. Every other form acts, so admins only.
_OPEN_FORMS = {"dashboard.login", "dashboard.setup", "dashboard.logout"}
VIEWER_REFUSED = "Your account can look but not act: ask a district admin to do this, or to make you one."


@dashboard_bp.before_request
def _viewers_only_look() -> Response | None:
    """A viewer's form post is refused (403) before any view runs: one rule for every form, present and future."""
    if request.method in ("GET", "HEAD", "OPTIONS") or request.endpoint in _OPEN_FORMS:
        return None
    staff = current_staff()
    if staff is not None and not staff.can_act:
        return html_error_page(403, VIEWER_REFUSED)
    return None  # not signed in: the view's staff_required sends them to sign in


def _cookie_session() -> str | None:
    """The token of the browser's current staff session, if it has one (replaced at sign-in)."""
    raw = session.get("sid")
    return raw if isinstance(raw, str) and raw else None


def _start_session(raw: str) -> None:
    """A fresh cookie holding only the new session's token."""
    session.clear()  # a new session id at sign-in: no fixation
    session.permanent = True
    session["sid"] = raw


def _dashboard_path(target: str | None, default: str) -> str:
    """Only paths of this dashboard are followed after a form: never an open redirect."""
    if not target or not target.startswith("/dashboard/") or target.startswith("//"):
        return default
    return target


def _page_number() -> int:
    try:
        return max(1, min(int(request.args.get("page", "1")), 10_000))
    except ValueError:
        return 1


@dashboard_bp.route("/login", methods=["GET", "POST"])
def login() -> Response:
    if request.method == "GET":
        return _page("dashboard/login.html")
    email = request.form.get("email", "")[:320]
    address = request.remote_addr or "unknown"
    try:
        raw = staff_sign_in.sign_in(
            request_unit_of_work(),
            email,
            request.form.get("password", "")[:1000],
            address=address,
            replaced_token=_cookie_session(),
        )
    except ServiceError as exc:
        return _page("dashboard/login.html", http_status=exc.status, error=exc.message, email=email)
    _start_session(raw)
    return redirect(_dashboard_path(request.args.get("next"), url_for("dashboard.overview")))  # type: ignore[return-value]


@dashboard_bp.route("/setup", methods=["GET", "POST"])
def setup() -> Response:
    """The one-time link is /dashboard/setup#<token>: the fragment never leaves the browser, so no access log,
    proxy or Referer sees it; the page's script (or the person, pasting it) posts it in the form body."""
    if request.method == "GET":
        return _page("dashboard/login.html", setup=True)
    token = request.form.get("token", "").strip()[:200]
    try:
        raw = staff_sign_in.complete_setup(
            request_unit_of_work(), token, request.form.get("password", "")[:1000], replaced_token=_cookie_session()
        )
    except ServiceError as exc:
        return _page("dashboard/login.html", http_status=exc.status, setup=True, error=exc.message, token=token)
    _start_session(raw)
    return redirect(url_for("dashboard.overview"))  # type: ignore[return-value]


@dashboard_bp.post("/logout")
def logout() -> Response:
    raw = _cookie_session()
    if raw is not None:
        staff_sign_in.sign_out(request_unit_of_work(), raw)
    session.clear()
    return redirect(url_for("dashboard.login"))  # type: ignore[return-value]


@dashboard_bp.get("/")
@staff_required
def overview(staff: StaffUser) -> Response:
    data = dashboard_overview.overview(db.session(), staff.district_id)
    return _page(
        "dashboard/overview.html",
        staff=staff,
        ov=data,
        problem_statuses=dashboard_problems.PROBLEM_STATUSES,
        statuses=dashboard_counts.SHOWN_STATUSES,
    )


@dashboard_bp.get("/deliveries")
@staff_required
def delivery_list(staff: StaffUser) -> Response:
    narrowed = _delivery_filter(request.args)
    found, total = dashboard_deliveries.filtered_page(
        db.session(),
        staff.district_id,
        narrowed,
        before=dashboard_deliveries.parse_cursor(request.args.get("before")),
        after=dashboard_deliveries.parse_cursor(request.args.get("after")),
    )
    return _page(
        "dashboard/deliveries.html",
        staff=staff,
        found=found,
        total=total,
        count_limit=dashboard_deliveries.COUNT_LIMIT,
        narrowed=narrowed,
        status=narrowed.status,
        cause=causes.cause(narrowed.cause),
        statuses=dashboard_counts.SHOWN_STATUSES,
        choices=dashboard_deliveries.filter_choices(db.session(), staff.district_id),
        cursor=dashboard_deliveries.cursor_text,
    )


@dashboard_bp.post("/deliveries/bulk")
@staff_required
def bulk_action(staff: StaffUser) -> Response:
    """Retry the failed (or send the retrying now) deliveries of the filtered list the form came from."""
    narrowed = _delivery_filter(request.form)
    action = request.form.get("action", "")[:40]
    result = staff_actions.bulk_act(request_unit_of_work(), staff, narrowed, action)
    said = f"{result.changed} deliveries " + ("marked resolved" if action == "resolve" else "queued again")
    if result.skipped:
        said += f", {result.skipped} skipped (replaced by a newer grade, or changed meanwhile)"
    if result.more:
        said += f"; more than {staff_actions.BULK_LIMIT} matched: run it again for the rest"
    flash(said + ".")
    return redirect(url_for("dashboard.delivery_list", **narrowed.query_args()))  # type: ignore[return-value,arg-type]


def _delivery_filter(args: Any) -> dashboard_deliveries.DeliveryFilter:
    try:
        return dashboard_deliveries.parse_filter(args)
    except InvalidInput as exc:
        fields = "; ".join(f"{k}: {' '.join(map(str, v))}" for k, v in (exc.fields or {}).items())
        raise BadRequest(f"{exc.message}: {fields}") from exc


@dashboard_bp.get("/deliveries/<delivery_id>")
@staff_required
def delivery(staff: StaffUser, delivery_id: str) -> Response:
    detail = _found(lambda: dashboard_deliveries.delivery_detail(db.session(), staff.district_id, delivery_id))
    return _page("dashboard/delivery.html", staff=staff, d=detail)


@dashboard_bp.post("/deliveries/<delivery_id>/retry")
@staff_required
def retry(staff: StaffUser, delivery_id: str) -> Response:
    back_to = _dashboard_path(
        request.form.get("next"), url_for("dashboard.delivery_list", status=DeliveryStatus.FAILED.value)
    )
    try:
        staff_actions.retry_one(request_unit_of_work(), staff, delivery_id)
    except ServiceError as exc:
        if exc.status == 404:
            raise NotFound(exc.message) from exc
        flash(exc.message)
        return redirect(back_to)  # type: ignore[return-value]
    flash("Delivery queued again.")
    return redirect(back_to)  # type: ignore[return-value]


@dashboard_bp.post("/deliveries/<delivery_id>/resolve")
@staff_required
def resolve(staff: StaffUser, delivery_id: str) -> Response:
    """Mark a failed delivery handled outside Passback (the grade entered by hand): no longer counted as failed."""
    try:
        staff_actions.resolve_one(request_unit_of_work(), staff, delivery_id)
    except NotFoundError as exc:
        raise NotFound(exc.message) from exc
    except ServiceError as exc:
        flash(exc.message)
    else:
        flash("Marked resolved: it stays in the history and is no longer counted as failed.")
    return redirect(url_for("dashboard.delivery", delivery_id=delivery_id))  # type: ignore[return-value]


@dashboard_bp.get("/deliveries.csv")
@staff_required
def delivery_csv(staff: StaffUser) -> Response:
    narrowed = _delivery_filter(request.args)
    district_id = staff.district_id

    def chunks() -> Iterator[str]:
        """Streamed a thousand rows at a time, each read in a short transaction of its own: an export of the
        whole district holds no lock (SQLite's included) for longer than one chunk, and no memory for more."""
        database = db.session()
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(dashboard_deliveries.CSV_COLUMNS)
        after: dashboard_deliveries.Cursor | None = None
        sent = 0
        while True:
            rows, after = dashboard_deliveries.csv_chunk(database, district_id, narrowed, after=after)
            database.commit()  # a read: ends this chunk's transaction
            writer.writerows(rows[: dashboard_deliveries.CSV_MAX_ROWS - sent])
            sent += len(rows)
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            if after is None or sent >= dashboard_deliveries.CSV_MAX_ROWS:
                return

    name = f"passback-deliveries-{narrowed.status or 'all'}.csv"
    return Response(
        stream_with_context(chunks()),
        content_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@dashboard_bp.post("/deliveries/<delivery_id>/enroll")
@staff_required
def enroll_for_delivery(staff: StaffUser, delivery_id: str) -> Response:
    """The fix on a waiting delivery's page: enroll its student where the assignment is placed."""
    try:
        released, created = staff_actions.enroll_for_delivery(
            request_unit_of_work(),
            current_services().box,
            staff,
            delivery_id,
            request.form.get("placement", "")[:64],
            request.form.get("lms_user_id", "")[:1000],
        )
    except NotFoundError as exc:
        raise NotFound(exc.message) from exc
    except ServiceError as exc:
        flash(f"Nothing was changed: {exc.message}.", f"delivery:{delivery_id}")
    else:
        flash(
            f"Enrolled: {created} new deliveries, {released} released that waited for the LMS's id.",
            f"delivery:{delivery_id}",
        )
    return redirect(url_for("dashboard.delivery", delivery_id=delivery_id) + "#fix")  # type: ignore[return-value]


@dashboard_bp.post("/deliveries/<delivery_id>/place")
@staff_required
def place_for_delivery(staff: StaffUser, delivery_id: str) -> Response:
    """The other fix on a waiting delivery's page: place its assignment where the student is enrolled."""
    try:
        where = staff_actions.place_for_delivery(
            request_unit_of_work(), staff, delivery_id, request.form.get("course", "")[:600]
        )
    except NotFoundError as exc:
        raise NotFound(exc.message) from exc
    except ServiceError as exc:
        flash(f"Nothing was changed: {exc.message}.", f"delivery:{delivery_id}")
    else:
        flash(f"Placed {where}: the grades waiting for it go there now.", f"delivery:{delivery_id}")
    return redirect(url_for("dashboard.delivery", delivery_id=delivery_id) + "#fix")  # type: ignore[return-value]


@dashboard_bp.get("/connections")
@staff_required
def connection_list(staff: StaffUser) -> Response:
    items = dashboard_connections.connections(
        db.session(),
        current_services().box,
        staff.district_id,
        current_app.config["PASSBACK"].public_url,
    )
    return _page(
        "dashboard/connections.html",
        staff=staff,
        items=items,
        statuses=dashboard_counts.SHOWN_STATUSES,
        defaults=current_app.config["PASSBACK"],
    )


@dashboard_bp.post("/connections/<connection_id>/<action>")
@staff_required
def pause_or_resume(staff: StaffUser, connection_id: str, action: str) -> Response:
    if action not in ("pause", "resume"):
        raise NotFound("no such action")
    try:
        connection = staff_actions.set_delivery_paused(
            request_unit_of_work(), staff, connection_id, paused=action == "pause"
        )
    except ServiceError as exc:
        raise NotFound(exc.message) from exc
    flash(f"Delivery to {connection.name} {'paused' if action == 'pause' else 'resumed'}.")
    return redirect(url_for("dashboard.connection_list"))  # type: ignore[return-value]


@dashboard_bp.post("/connections/<connection_id>/probe")
@staff_required
def probe(staff: StaffUser, connection_id: str) -> Response:
    """Ask the LMS whether it accepts the connection's credentials ("key works"), before any grade is sent."""
    name, report = _found(
        lambda: staff_actions.check_connection(
            request_unit_of_work(), current_services().probe_connection, staff, connection_id
        )
    )
    # Shown in the connection's own section, beside the button that asked (not at the top of the page).
    flash(f"{name}: {'works' if report.ok else 'does not work'}. {report.message}", f"connection:{connection_id}")
    return redirect(url_for("dashboard.connection_list") + f"#c-{connection_id}")  # type: ignore[return-value]


@dashboard_bp.route("/connections/<connection_id>/settings", methods=["GET", "POST"])
@staff_required
def connection_settings_page(staff: StaffUser, connection_id: str) -> Response:
    """Rename a connection, change its settings, put in new credentials; errors on the same page, nothing saved."""
    box = current_services().box
    form: dict[str, str] = {}
    error: ServiceError | None = None
    if request.method == "POST":
        form = {k: v[:10_000] for k, v in request.form.items() if k != "csrf_token"}
        try:
            _, changed = staff_actions.update_connection_settings(
                request_unit_of_work(), box, staff, connection_id, form.get("name", ""), form
            )
        except ServiceError as exc:
            error = exc
        else:
            said = f"changed: {', '.join(changed)}" if changed else "nothing changed"
            flash(f"Settings saved ({said}).", f"connection:{connection_id}")
            return redirect(url_for("dashboard.connection_list") + f"#c-{connection_id}")  # type: ignore[return-value]
    connection, fields = _found(
        lambda: connection_settings.settings_page(db.session(), box, staff.district_id, connection_id)
    )
    # A secret typed into a refused form is not sent back to the browser.
    shown = {k: v for k, v in form.items() if k not in {f.name for f in fields if f.kind == "secret"}}
    return _page(
        "dashboard/connection_settings.html",
        http_status=error.status if error else 200,
        staff=staff,
        connection=connection,
        fields=fields,
        form=shown,
        error=error,
    )


@dashboard_bp.route("/connections/<connection_id>/mappings", methods=["GET", "POST"])
@staff_required
def mappings(staff: StaffUser, connection_id: str) -> Response:
    """Map catalog assignments to Schoology sections and assignments in bulk (the page's form does what
    POST /v1/placements does for an app)."""
    database = db.session()
    connection, apps, rows = _found(
        lambda: dashboard_connections.connection_mappings(database, staff.district_id, connection_id)
    )
    error: ServiceError | None = None
    text = ""
    if request.method == "POST":
        text = request.form.get("mappings", "")
        app_id = request.form.get("app", "")
        try:
            if app_id not in {app.id for app in apps}:
                raise InvalidInput("choose one of the district's apps", fields={"app": ["Choose an app."]})
            entries = [{**entry, "lms": connection.id} for entry in dashboard_connections.parse_mapping_lines(text)]
            result = staff_actions.map_assignments(request_unit_of_work(), staff, connection.name, app_id, entries)
        except ServiceError as exc:
            error = exc
        else:
            flash(f"{result.created} mappings added, {result.existing} already there.")
            return redirect(url_for("dashboard.mappings", connection_id=connection.id))  # type: ignore[return-value]
        connection, apps, rows = dashboard_connections.connection_mappings(database, staff.district_id, connection_id)
    return _page(
        "dashboard/mappings.html",
        http_status=422 if error else 200,
        staff=staff,
        connection=connection,
        apps=apps,
        rows=rows,
        error=error,
        text=text,
    )


@dashboard_bp.post("/connections/<connection_id>/retry-failed")
@staff_required
def retry_connection_failures(staff: StaffUser, connection_id: str) -> Response:
    database = db.session()
    connection = _found(
        lambda: dashboard_connections.set_paused(database, staff.district_id, connection_id, paused=None)
    )
    return _bulk_retry(staff, connection.name, url_for("dashboard.connection_list"), lms_connection_id=connection.id)


def _bulk_retry(
    staff: StaffUser,
    target: str,
    back_to: str,
    *,
    lms_connection_id: str | None = None,
    assignment_id: str | None = None,
) -> Response:
    """Send a connection's or an assignment's failed deliveries again, audited, and say how many."""
    count = staff_actions.retry_all_failed(
        request_unit_of_work(), staff, target, lms_connection_id=lms_connection_id, assignment_id=assignment_id
    )
    flash(f"{count} failed deliveries of {target} queued again.")
    return redirect(back_to)  # type: ignore[return-value]


@dashboard_bp.get("/sandbox")
@staff_required
def sandbox_gradebook(staff: StaffUser) -> Response:
    """The sandbox LMS's gradebook, as the simulated LMS holds it, one sandbox connection at a time; forms to
    launch a student into an app and to inject faults."""
    page = _page_number()
    data = _found(
        lambda: dashboard_sandbox.sandbox_gradebook(
            db.session(), staff.district_id, connection_id=request.args.get("connection") or None, page=page
        )
    )
    # The launch form's answer redirects to an app's redirect URI: the browser follows it only where form-action
    # allows (Chromium checks the redirect too).
    allow_form_action(*sorted({origin_of(p.redirect_uri) for p in data.placements}))
    return _page("dashboard/sandbox.html", staff=staff, data=data, page=page)


def _back_to_sandbox(connection_id: str) -> Response:
    return redirect(url_for("dashboard.sandbox_gradebook", connection=connection_id), 303)  # type: ignore[return-value]


@dashboard_bp.post("/sandbox/<connection_id>/launch")
@staff_required
def sandbox_launch(staff: StaffUser, connection_id: str) -> Response:
    """Sign a student into an app as their launch from the sandbox LMS would: off to the app's redirect URI with
    a code and state=assignment:{id}."""
    launched = _found(
        lambda: staff_actions.launch_in_sandbox(
            request_unit_of_work(),
            current_services().box,
            staff,
            connection_id,
            request.form.get("student", ""),
            request.form.get("assignment", ""),
        )
    )
    return redirect(launched.redirect_url, 303)  # type: ignore[return-value]


@dashboard_bp.post("/sandbox/<connection_id>/faults")
@staff_required
def sandbox_faults(staff: StaffUser, connection_id: str) -> Response:
    """The sandbox LMS fails its next score writes as chosen (or, with clear, no more)."""
    if request.form.get("clear"):
        _found(lambda: staff_actions.set_sandbox_faults(request_unit_of_work(), staff, connection_id, fail_next=0))
        flash("Faults cleared: the sandbox LMS stores every write again.")
        return _back_to_sandbox(connection_id)
    try:
        form = SandboxFaultFormSchema().load({k: v for k, v in request.form.items() if v != "" and k != "csrf_token"})
    except ValidationError as exc:
        messages = exc.normalized_messages().items()
        problems = "; ".join(f"{name}: {' '.join(map(str, rules))}" for name, rules in messages)
        flash(f"No fault set. {problems}")
        return _back_to_sandbox(connection_id)
    hang = (form["hang_seconds"] or 60) if form["kind"] == "hang" else None
    _found(
        lambda: staff_actions.set_sandbox_faults(
            request_unit_of_work(),
            staff,
            connection_id,
            fail_next=form["count"],
            status=FAULT_KINDS[form["kind"]],
            retry_after=form["retry_after"] if form["kind"] == "429" else None,
            hang_seconds=hang,
        )
    )
    flash("Faults injected.")
    return _back_to_sandbox(connection_id)


def _drill(staff: StaffUser, level: str, **context: Any) -> Response:
    return _page("dashboard/drill.html", staff=staff, level=level, statuses=dashboard_counts.SHOWN_STATUSES, **context)


def _found(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except ServiceError as exc:
        raise NotFound(exc.message) from exc


@dashboard_bp.get("/apps")
@staff_required
def apps(staff: StaffUser) -> Response:
    return _drill(staff, "apps", rows=dashboard_drilldown.app_rows(db.session(), staff.district_id))


@dashboard_bp.get("/apps/<app_id>")
@staff_required
def app_assignments(staff: StaffUser, app_id: str) -> Response:
    app, rows = _found(lambda: dashboard_drilldown.assignment_rows(db.session(), staff.district_id, app_id))
    return _drill(staff, "assignments", app=app, rows=rows)


@dashboard_bp.get("/assignments/<assignment_id>")
@staff_required
def assignment_placements(staff: StaffUser, assignment_id: str) -> Response:
    app, assignment, rows = _found(
        lambda: dashboard_drilldown.placement_rows(db.session(), staff.district_id, assignment_id)
    )
    return _drill(staff, "placements", app=app, assignment=assignment, rows=rows)


@dashboard_bp.post("/assignments/<assignment_id>/retry-failed")
@staff_required
def retry_assignment_failures(staff: StaffUser, assignment_id: str) -> Response:
    _app, assignment = _found(
        lambda: dashboard_drilldown.district_assignment(db.session(), staff.district_id, assignment_id)
    )
    back_to = url_for("dashboard.assignment_placements", assignment_id=assignment.id)
    return _bulk_retry(staff, assignment.external_id, back_to, assignment_id=assignment.id)


@dashboard_bp.get("/placements/<placement_id>")
@staff_required
def placement_students(staff: StaffUser, placement_id: str) -> Response:
    page = _page_number()
    found = _found(lambda: dashboard_drilldown.student_rows(db.session(), staff.district_id, placement_id, page=page))
    return _drill(staff, "students", students=found, placement=found.placement, rows=found.rows, page=page)


@dashboard_bp.get("/webhooks")
@staff_required
def webhook_list(staff: StaffUser) -> Response:
    """The district's apps' webhook endpoints (or one app's): where they go, what they hear, whether failing."""
    found = _found(lambda: webhooks.district_endpoints(db.session(), staff.district_id, request.args.get("app")))
    return _page("dashboard/webhooks.html", staff=staff, found=found)


@dashboard_bp.post("/webhooks/<endpoint_id>/<action>")
@staff_required
def disable_or_enable_webhook(staff: StaffUser, endpoint_id: str, action: str) -> Response:
    if action not in ("disable", "enable"):
        raise NotFound("no such action")
    url = _found(
        lambda: staff_actions.set_webhook_disabled(
            request_unit_of_work(), staff, endpoint_id, disabled=action == "disable"
        )
    )
    flash(f"Webhook endpoint {url} {action}d.")
    back_to = _dashboard_path(request.form.get("next"), url_for("dashboard.webhook_list"))
    return redirect(back_to)  # type: ignore[return-value]


@dashboard_bp.get("/audit")
@staff_required
def audit(staff: StaffUser) -> Response:
    return _page(
        "dashboard/audit.html", staff=staff, entries=dashboard_overview.audit_log(db.session(), staff.district_id)
    )


from gateway.dashboard import alerts as _alerts  # noqa: E402, F401 - its views register on dashboard_bp
