"""accept_grade's rules, called directly with a Session: no HTTP involved."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from sqlalchemy import event, func, select

from gateway.composition import services_of
from gateway.models import (
    Assignment,
    Delivery,
    DeliveryStatus,
    GradeRevision,
    LmsConnection,
    TokenKind,
    User,
    WebhookEndpoint,
    WebhookMessage,
    WebhookSubscription,
)
from gateway.services.auth import authenticate
from gateway.services.catalog import upsert_assignments
from gateway.services.directory import (
    StudentKeyInvalid,
    authorize_app,
    create_app_partner,
    create_district,
    create_user,
    enroll,
    issue_token,
)
from gateway.services.errors import Conflict, Forbidden, NotFound
from gateway.services.grades import accept_grade, normalize
from gateway.services.lms import add_lms_connection, add_placement
from gateway.services.routing import route_waiting_grades


@pytest.mark.parametrize(
    ("data", "maximum", "expected"),
    [
        ({"percentage": 0.8}, 10.0, (0.8, 8.0, 10.0)),
        ({"percentage": 0.8}, 100.0, (0.8, 80.0, 100.0)),
        ({"percentage": 0}, 50.0, (0.0, 0.0, 50.0)),
        ({"scoreGiven": 8, "scoreMaximum": 10}, 100.0, (0.8, 8.0, 10.0)),
        ({"scoreGiven": 15, "scoreMaximum": 10}, 100.0, (1.5, 15.0, 10.0)),
    ],
    ids=["pct-on-10", "pct-on-100", "zero", "pair-kept", "extra-credit"],
)
def test_normalize(data: dict[str, float], maximum: float, expected: tuple[float, float, float]) -> None:
    result = normalize(data, Assignment(score_maximum=maximum))
    assert (result.fraction, result.score_given, result.score_maximum) == pytest.approx(expected)


@pytest.fixture
def setup(app: Flask) -> dict[str, str]:
    box = services_of(app).box
    with services_of(app).database.transaction() as session:
        district = create_district(session, "D")
        partner = create_app_partner(session, "A", "https://a.example/cb").app
        upsert_assignments(session, partner.id, [{"id": "q", "name": "Q", "scoreMaximum": 4}])
        raw = authorize_app(session, partner.id, district.id).raw
        connection = add_lms_connection(
            session, box, district.id, "S", "sandbox", {"base_url": "http://127.0.0.1:1/x", "secret": "s" * 20}
        )
        student = create_user(session, district.id, name="S1")
        other = create_user(session, district.id, name="S2")
        enroll(session, connection, "c", student)
        add_placement(session, district.id, connection.id, partner.id, "q", "c")
        user_raw = issue_token(
            session, TokenKind.USER, district.id, partner.id, user_id=student.id, scopes="grades:write grades:read"
        ).raw
        return {"token": raw, "user_token": user_raw, "student": student.id, "other": other.id}


def _accept(app: Flask, token: str, data: dict[str, object]) -> object:
    with services_of(app).database.transaction() as session:
        return accept_grade(session, authenticate(session, token), data)


def test_new_revision_supersedes_the_undelivered_one(app: Flask, setup: dict[str, str]) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    _accept(app, setup["token"], {"assignmentID": "q", "userID": setup["student"], "percentage": 0.5, "timestamp": t0})
    _accept(
        app,
        setup["token"],
        {"assignmentID": "q", "userID": setup["student"], "percentage": 0.75, "timestamp": t0 + timedelta(seconds=1)},
    )
    with services_of(app).database.transaction() as session:
        statuses = sorted(session.scalars(select(Delivery.status)))
        revisions = session.scalar(select(func.count()).select_from(GradeRevision))
    assert statuses == [DeliveryStatus.PENDING, DeliveryStatus.SUPERSEDED]
    assert revisions == 2


def test_identical_grade_changes_nothing_and_older_is_a_conflict(app: Flask, setup: dict[str, str]) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    base = {"assignmentID": "q", "userID": setup["student"], "percentage": 0.5, "timestamp": t0}
    _accept(app, setup["token"], base)
    again = _accept(app, setup["token"], {**base, "timestamp": t0 + timedelta(hours=1)})
    assert again.changed is False  # type: ignore[attr-defined]
    with pytest.raises(Conflict):
        _accept(app, setup["token"], {**base, "percentage": 0.9, "timestamp": t0 - timedelta(seconds=1)})
    with services_of(app).database.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Delivery)) == 1


def test_user_token_rules(app: Flask, setup: dict[str, str]) -> None:
    accepted = _accept(app, setup["user_token"], {"assignmentID": "q", "percentage": 1})
    assert accepted.grade.user_id == setup["student"]  # type: ignore[attr-defined]
    with pytest.raises(Forbidden):
        _accept(app, setup["user_token"], {"assignmentID": "q", "userID": setup["other"], "percentage": 1})


def test_district_app_token_needs_a_known_user_and_assignment(app: Flask, setup: dict[str, str]) -> None:
    with pytest.raises(StudentKeyInvalid) as missing:
        _accept(app, setup["token"], {"assignmentID": "q", "percentage": 1})
    assert set(missing.value.fields or {}) == {"userID", "sisID", "email", "lmsUserID"}
    with pytest.raises(NotFound) as no_user:
        _accept(app, setup["token"], {"assignmentID": "q", "userID": "nobody", "percentage": 1})
    assert no_user.value.code == "user_not_found"
    with pytest.raises(NotFound) as no_assignment:
        _accept(app, setup["token"], {"assignmentID": "zz", "userID": setup["student"], "percentage": 1})
    assert no_assignment.value.code == "assignment_not_found"


def test_unenrolled_student_is_unroutable_with_a_reason(app: Flask, setup: dict[str, str]) -> None:
    _accept(app, setup["token"], {"assignmentID": "q", "userID": setup["other"], "percentage": 1})
    with services_of(app).database.transaction() as session:
        delivery = session.scalars(select(Delivery)).one()
    assert delivery.status == DeliveryStatus.UNROUTABLE
    assert "not enrolled" in (delivery.last_error or "")


def test_the_clock_given_to_accept_grade_stamps_its_outbox_rows(app: Flask, setup: dict[str, str]) -> None:
    """One `now` per unit of work: the revision and the deliveries it routes (new and superseded) share it."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    first, second = datetime(2026, 3, 1, 12, 0), datetime(2026, 3, 1, 12, 5)
    grade = {"assignmentID": "q", "userID": setup["student"]}
    with services_of(app).database.transaction() as session:
        accept_grade(
            session, authenticate(session, setup["token"]), {**grade, "percentage": 0.5, "timestamp": t0}, now=first
        )
    with services_of(app).database.transaction() as session:
        later = {**grade, "percentage": 0.75, "timestamp": t0 + timedelta(seconds=1)}
        accept_grade(session, authenticate(session, setup["token"]), later, now=second)
    with services_of(app).database.transaction() as session:
        rows = session.execute(
            select(Delivery.status, Delivery.created_at, Delivery.updated_at, Delivery.next_attempt_at).order_by(
                Delivery.created_at
            )
        ).all()
    assert [tuple(row) for row in rows] == [
        (DeliveryStatus.SUPERSEDED, first, second, None),
        (DeliveryStatus.PENDING, second, second, second),
    ]


def test_grades_routed_once_a_student_is_enrolled_carry_the_callers_now(app: Flask, setup: dict[str, str]) -> None:
    """route_waiting_grades writes its rows at the unit of work's `now`, not at a time of its own."""
    placed, enrolled = datetime(2026, 3, 1, 12, 0), datetime(2026, 3, 1, 12, 5)
    grade = {
        "assignmentID": "q",
        "userID": setup["other"],
        "percentage": 1,
        "timestamp": datetime(2026, 1, 1, tzinfo=UTC),
    }
    with services_of(app).database.transaction() as session:
        accept_grade(session, authenticate(session, setup["token"]), grade, now=placed)
    with services_of(app).database.transaction() as session:
        student = session.get(User, setup["other"])
        assert student is not None
        enroll(session, session.scalars(select(LmsConnection)).one(), "c", student)
        assert route_waiting_grades(session, student.district_id, user_id=student.id, now=enrolled) == 1
    with services_of(app).database.transaction() as session:
        rows = session.execute(
            select(Delivery.status, Delivery.created_at, Delivery.updated_at, Delivery.next_attempt_at).order_by(
                Delivery.created_at
            )
        ).all()
    assert [tuple(row) for row in rows] == [
        (DeliveryStatus.SUPERSEDED, placed, enrolled, None),
        (DeliveryStatus.PENDING, enrolled, enrolled, enrolled),
    ]


def test_a_student_key_costs_one_query_and_user_id_none(app: Flask, setup: dict[str, str]) -> None:
    """The hot path's statement count: posting by userID is what it was; by sisID, one lookup more."""
    with services_of(app).database.transaction() as session:
        student = session.get(User, setup["student"])
        assert student is not None
        student.sis_id = "S-1"
    engine = services_of(app).database.engine
    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    def statements_for(data: dict[str, object]) -> list[str]:
        statements.clear()
        event.listen(engine, "before_cursor_execute", count)
        try:
            with services_of(app).database.transaction() as session:
                principal = authenticate(session, setup["token"])
                statements.clear()
                accept_grade(session, principal, data)
                return list(statements)
        finally:
            event.remove(engine, "before_cursor_execute", count)

    statements_for({"assignmentID": "q", "userID": setup["student"], "percentage": 0.5})
    # Both measured posts are second revisions: the same path but for how the student is named.
    by_user_id = statements_for({"assignmentID": "q", "userID": setup["student"], "percentage": 0.6})
    by_sis_id = statements_for({"assignmentID": "q", "sisID": "S-1", "percentage": 0.7})
    assert len(by_sis_id) == len(by_user_id) + 1
    assert not any("sis_id" in s for s in by_user_id)


def test_without_a_webhook_endpoint_posting_looks_for_no_event(app: Flask, setup: dict[str, str]) -> None:
    """The intake path learns whether an endpoint listens in its one lookup query: without one, a revision that
    supersedes another (an event, were anyone listening) costs no statement more than before webhooks."""
    engine = services_of(app).database.engine
    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    def statements_for(percentage: float) -> list[str]:
        event.listen(engine, "before_cursor_execute", count)
        try:
            with services_of(app).database.transaction() as session:
                principal = authenticate(session, setup["token"])
                statements.clear()
                accept_grade(
                    session, principal, {"assignmentID": "q", "userID": setup["student"], "percentage": percentage}
                )
                return list(statements)
        finally:
            event.remove(engine, "before_cursor_execute", count)

    statements_for(0.5)
    quiet = statements_for(0.6)  # supersedes the first, undelivered revision
    assert not any("webhook_subscriptions" in s or "INSERT INTO webhook_messages" in s for s in quiet)

    with services_of(app).database.transaction() as session:
        principal = authenticate(session, setup["token"])
        endpoint = WebhookEndpoint(
            district_id=principal.district_id, app_id=principal.app_id, url="https://h.example/x", secret_encrypted="x"
        )
        session.add(endpoint)
        session.flush()
        session.add(WebhookSubscription(endpoint_id=endpoint.id, event="grade.superseded"))
    heard = statements_for(0.7)
    # Who listens (by the deliveries' key), what the deliveries say (by their key), and one insert.
    assert len(heard) == len(quiet) + 3, "the event's two queries and its one insert"
    with services_of(app).database.transaction() as session:
        assert session.scalars(select(WebhookMessage.event)).all() == ["grade.superseded"]
