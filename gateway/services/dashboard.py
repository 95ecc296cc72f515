"""What the staff dashboard shows: delivery counts, failing deliveries, the audit log. Always one district."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gateway.models import (
    App,
    Assignment,
    AuditEntry,
    Delivery,
    DeliveryStatus,
    DistrictApp,
    Grade,
    GradeRevision,
    LmsConnection,
    Placement,
    SandboxGradebookEntry,
    User,
    utcnow,
)
from gateway.services.errors import NotFound
from gateway.services.lms import connection_settings

SHOWN_STATUSES = ("delivered", "pending", "delivering", "retrying", "awaiting_launch", "failed", "unroutable")
UNDELIVERED = (
    DeliveryStatus.PENDING,
    DeliveryStatus.DELIVERING,
    DeliveryStatus.RETRYING,
    DeliveryStatus.AWAITING_LAUNCH,
    DeliveryStatus.FAILED,
    DeliveryStatus.UNROUTABLE,
)
PAGE_SIZE = 50


@dataclass
class Overview:
    day: dict[str, int]
    week: dict[str, int]
    by_connection: list[tuple[str, dict[str, int]]]
    by_app: list[tuple[str, dict[str, int]]]
    oldest_undelivered: timedelta | None
    daily: list[tuple[str, int, int]] = field(default_factory=list)


def overview(session: Session, district_id: str, *, now: datetime | None = None) -> Overview:
    """Deliveries of the last 24 hours and 7 days by status, by connection and by app (7 days), per day, and
    how long the oldest undelivered grade has waited. Every count is an indexed, grouped query."""
    now = now or utcnow()
    week_ago = now - timedelta(days=7)
    by_connection: dict[str, dict[str, int]] = {}
    for name, status, count in session.execute(
        select(LmsConnection.name, Delivery.status, func.count())
        .join(LmsConnection, LmsConnection.id == Delivery.lms_connection_id)
        .where(Delivery.district_id == district_id, Delivery.created_at >= week_ago)
        .group_by(LmsConnection.name, Delivery.status)
    ):
        by_connection.setdefault(name, dict.fromkeys(SHOWN_STATUSES, 0))[status] = int(count)
    by_app: dict[str, dict[str, int]] = {}
    for name, status, count in session.execute(
        select(App.name, Delivery.status, func.count())
        .join(Grade, Grade.id == Delivery.grade_id)
        .join(App, App.id == Grade.app_id)
        .where(Delivery.district_id == district_id, Delivery.created_at >= week_ago)
        .group_by(App.name, Delivery.status)
    ):
        by_app.setdefault(name, dict.fromkeys(SHOWN_STATUSES, 0))[status] = int(count)
    oldest = session.scalar(
        select(func.min(Delivery.created_at)).where(
            Delivery.district_id == district_id, Delivery.status.in_(UNDELIVERED)
        )
    )
    daily = []
    for days_back in range(6, -1, -1):
        start = (now - timedelta(days=days_back)).replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=1)
        counts = dict(
            session.execute(
                select(Delivery.status, func.count())
                .where(Delivery.district_id == district_id, Delivery.created_at >= start, Delivery.created_at < end)
                .group_by(Delivery.status)
            ).all()
        )
        daily.append(
            (
                start.strftime("%a %d"),
                int(counts.get("delivered", 0)),
                sum(int(v) for k, v in counts.items() if k in ("failed", "retrying")),
            )
        )
    return Overview(
        day=_status_counts(session, district_id, Delivery.created_at >= now - timedelta(days=1)),
        week=_status_counts(session, district_id, Delivery.created_at >= week_ago),
        by_connection=sorted(by_connection.items()),
        by_app=sorted(by_app.items()),
        oldest_undelivered=(now - oldest) if oldest else None,
        daily=daily,
    )


def deliveries(
    session: Session, district_id: str, *, status: str | None = None, page: int = 1
) -> tuple[list[dict[str, Any]], bool]:
    """One page of deliveries, newest first, with the grade, student, assignment and the LMS's own error."""
    query = (
        select(Delivery, Grade, User, Assignment, LmsConnection.name, Placement.course_id)
        .join(Grade, Grade.id == Delivery.grade_id)
        .join(User, User.id == Grade.user_id)
        .join(Assignment, Assignment.id == Grade.assignment_id)
        .outerjoin(LmsConnection, LmsConnection.id == Delivery.lms_connection_id)
        .outerjoin(Placement, Placement.id == Delivery.placement_id)
        .where(Delivery.district_id == district_id)
    )
    if status:
        query = query.where(Delivery.status == status)
    else:
        query = query.where(Delivery.status != DeliveryStatus.SUPERSEDED)
    rows = session.execute(
        query.order_by(Delivery.updated_at.desc(), Delivery.id).offset((page - 1) * PAGE_SIZE).limit(PAGE_SIZE + 1)
    ).all()
    items = [
        {
            "delivery": delivery,
            "grade": grade,
            "student": user.name or user.id,
            "assignment": assignment.name,
            "assignment_id": assignment.external_id,
            "connection": connection or "—",
            "course": course or "—",
        }
        for delivery, grade, user, assignment, connection, course in rows[:PAGE_SIZE]
    ]
    return items, len(rows) > PAGE_SIZE


def audit_log(session: Session, district_id: str, *, limit: int = 200) -> list[AuditEntry]:
    return list(
        session.scalars(
            select(AuditEntry)
            .where(AuditEntry.district_id == district_id)
            .order_by(AuditEntry.created_at.desc())
            .limit(limit)
        )
    )


@dataclass
class ConnectionView:
    connection: LmsConnection
    counts: dict[str, int]
    # What an admin enters on the LMS side, without secrets.
    configuration: list[tuple[str, str]]


def connections(session: Session, box: Any, district_id: str, public_url: str) -> list[ConnectionView]:
    """The district's LMS connections with their health, delivery counts and LMS-side configuration."""
    base = public_url.rstrip("/")
    result = []
    for connection in session.scalars(
        select(LmsConnection).where(LmsConnection.district_id == district_id).order_by(LmsConnection.name)
    ):
        counts = _status_counts(session, district_id, Delivery.lms_connection_id == connection.id)
        settings = connection_settings(box, connection)
        if connection.adapter == "lti13":
            configuration = [
                ("Tool configuration JSON (Canvas: Paste JSON)", f"{base}/lti/config/{connection.id}"),
                ("OIDC login URL", f"{base}/lti/login"),
                ("Launch / redirect URI", f"{base}/lti/launch"),
                ("Public JWKS URL", f"{base}/lti/jwks"),
                ("Registered client ID", str(settings.get("client_id", ""))),
            ]
        elif connection.adapter == "lti11":
            configuration = [
                ("Launch URL", f"{base}/lti11/launch"),
                ("Consumer key", str(settings.get("consumer_key", ""))),
                ("Shared secret", "(set when the connection was added; not shown)"),
            ]
        elif connection.adapter == "sandbox":
            configuration = [("Sandbox gradebook", str(settings.get("base_url", "")) + "/gradebook")]
        else:
            configuration = []
        result.append(ConnectionView(connection, counts, configuration))
    return result


def set_paused(session: Session, district_id: str, connection_id: str, paused: bool | None) -> LmsConnection:
    """Pause or resume delivery to one connection (None: just find it, in this district); grades keep being
    accepted and wait in the outbox."""
    connection = session.scalar(
        select(LmsConnection).where(LmsConnection.id == connection_id, LmsConnection.district_id == district_id)
    )
    if connection is None:
        raise NotFound("no such LMS connection in this district")
    if paused is not None:
        connection.paused = paused
    return connection


CSV_COLUMNS = [
    "delivery_id",
    "status",
    "operation",
    "student",
    "assignment_id",
    "assignment",
    "score_given",
    "score_maximum",
    "posted_at",
    "lms_connection",
    "course",
    "attempts",
    "delivered_at",
    "last_error",
]
CSV_MAX_ROWS = 100_000


def deliveries_csv_rows(session: Session, district_id: str, *, status: str | None = None) -> list[list[str]]:
    """The delivery list as CSV rows (header first), the same filter as the page, up to 100,000 rows."""
    rows: list[list[str]] = [CSV_COLUMNS]
    page = 1
    while len(rows) <= CSV_MAX_ROWS:
        items, more = deliveries(session, district_id, status=status, page=page)
        for it in items:
            d, g = it["delivery"], it["grade"]
            row = [
                d.id,
                d.status,
                d.operation,
                it["student"],
                it["assignment_id"],
                it["assignment"],
                f"{g.score_given:g}",
                f"{g.score_maximum:g}",
                g.updated_at.isoformat() + "Z",
                it["connection"],
                it["course"],
                str(d.attempts),
                d.delivered_at.isoformat() + "Z" if d.delivered_at else "",
                d.last_error or "",
            ]
            # Names come from LMSs and apps, errors from LMSs: every text cell is defused.
            rows.append([_csv_safe(str(cell)) for cell in row])
        if not more:
            break
        page += 1
    return rows


def _csv_safe(text: str) -> str:
    # Spreadsheet apps run cells that start with these as formulas (CSV injection); LMS error text is untrusted.
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def sandbox_gradebook(session: Session, district_id: str) -> list[tuple[str, Any, str]]:
    """Every sandbox connection's gradebook entries, with the student's name where Passback knows it."""
    rows = session.execute(
        select(LmsConnection.name, SandboxGradebookEntry, User.name)
        .join(SandboxGradebookEntry, SandboxGradebookEntry.gradebook == LmsConnection.id)
        .outerjoin(User, (User.id == SandboxGradebookEntry.student_id) & (User.district_id == district_id))
        .where(LmsConnection.district_id == district_id, LmsConnection.adapter == "sandbox")
        .order_by(LmsConnection.name, SandboxGradebookEntry.course_id, SandboxGradebookEntry.item_id)
    ).all()
    return [(name, entry, student or entry.student_id) for name, entry, student in rows]


# --- drill-down: app → assignment → placement → student -------------------------------------------------------


def _status_counts(session: Session, district_id: str, *conditions: Any) -> dict[str, int]:
    """Score deliveries (not deletions) of the district by status, under extra conditions on the delivery or
    its grade; every status shown, zero included."""
    rows = session.execute(
        select(Delivery.status, func.count())
        .join(Grade, Grade.id == Delivery.grade_id)
        .where(Delivery.district_id == district_id, Delivery.operation == "replace", *conditions)
        .group_by(Delivery.status)
    ).all()
    counts = dict.fromkeys(SHOWN_STATUSES, 0)
    counts.update({status: int(n) for status, n in rows if status in counts})
    return counts


def app_rows(session: Session, district_id: str) -> list[tuple[App, dict[str, int]]]:
    """The apps authorized in the district, with their deliveries by status."""
    apps = session.scalars(
        select(App)
        .join(DistrictApp, DistrictApp.app_id == App.id)
        .where(DistrictApp.district_id == district_id)
        .order_by(App.name)
    )
    return [(app, _status_counts(session, district_id, Grade.app_id == app.id)) for app in apps]


def assignment_rows(session: Session, district_id: str, app_id: str) -> tuple[App, list[tuple[Assignment, dict]]]:
    """An authorized app's assignments with their deliveries in this district; NotFound for any other app."""
    app = session.scalar(
        select(App)
        .join(DistrictApp, DistrictApp.app_id == App.id)
        .where(App.id == app_id, DistrictApp.district_id == district_id)
    )
    if app is None:
        raise NotFound("no such app in this district")
    assignments = session.scalars(
        select(Assignment).where(Assignment.app_id == app.id).order_by(Assignment.name).limit(PAGE_SIZE * 20)
    )
    return app, [(a, _status_counts(session, district_id, Grade.assignment_id == a.id)) for a in assignments]


def placement_rows(session: Session, district_id: str, assignment_id: str) -> tuple[Assignment, list[tuple]]:
    """Where an assignment is placed in this district's LMSs, with each placement's deliveries."""
    assignment = session.get(Assignment, assignment_id)
    if assignment is None or not any(app.id == assignment.app_id for app, _ in app_rows(session, district_id)):
        raise NotFound("no such assignment in this district")
    placements = session.execute(
        select(Placement, LmsConnection.name)
        .join(LmsConnection, LmsConnection.id == Placement.lms_connection_id)
        .where(Placement.district_id == district_id, Placement.assignment_id == assignment.id)
        .order_by(LmsConnection.name, Placement.course_id)
    ).all()
    return assignment, [
        (placement, name, _status_counts(session, district_id, Delivery.placement_id == placement.id))
        for placement, name in placements
    ]


def student_rows(session: Session, district_id: str, placement_id: str) -> tuple[Placement, list[tuple]]:
    """Each student's current grade at one placement and the delivery that carries it there."""
    placement = session.scalar(
        select(Placement).where(Placement.id == placement_id, Placement.district_id == district_id)
    )
    if placement is None:
        raise NotFound("no such placement in this district")
    rows = session.execute(
        select(User, Grade, Delivery)
        .join(Grade, Grade.user_id == User.id)
        .join(GradeRevision, (GradeRevision.grade_id == Grade.id) & (GradeRevision.revision == Grade.revision))
        .join(Delivery, (Delivery.revision_id == GradeRevision.id) & (Delivery.placement_id == placement.id))
        .where(Grade.district_id == district_id, Grade.assignment_id == placement.assignment_id)
        .order_by(User.name, User.id, Delivery.created_at)
        .limit(PAGE_SIZE * 20)
    ).all()
    return placement, list(rows)
