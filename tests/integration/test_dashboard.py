"""The staff dashboard over real HTTP: sign-in with CSRF and lockout, a failed delivery found, read and retried,
the audit log, and one district's staff kept out of another's data."""

from __future__ import annotations

import json
import re

import pytest
import requests
from click.testing import CliRunner

from gateway.cli import main
from gateway.composition import services_of
from gateway.services.staff import MAX_FAILED_LOGINS, create_staff
from gateway.worker import DeliveryWorker
from tests.conftest import LiveServer
from tests.factories import World, build_world

PASSWORD = "correct horse battery"


def csrf(page: requests.Response) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match, page.text[:500]
    return match.group(1)


def staff_of(world: World, email: str = "admin@district.example") -> str:
    with world.session() as session:
        create_staff(session, world.district_id, email, PASSWORD)
    return email


def signed_in(world: World, email: str, password: str = PASSWORD) -> requests.Session:
    browser = requests.Session()
    page = browser.get(world.url("/dashboard/login"))
    response = browser.post(
        world.url("/dashboard/login"),
        data={"email": email, "password": password, "csrf_token": csrf(page)},
        allow_redirects=False,
    )
    assert response.status_code == 302, response.text
    return browser


def test_failed_delivery_is_found_read_and_retried_after_the_lms_recovers(world: World, worker: DeliveryWorker) -> None:
    email = staff_of(world)
    world.inject_faults(1, status=400)
    posted = world.post_grade({"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.6})
    worker.run_until_idle()
    assert world.get(posted.headers["Location"]).json()["status"] == "failed"

    browser = signed_in(world, email)
    overview = browser.get(world.url("/dashboard/"))
    assert overview.status_code == 200 and "Grade deliveries" in overview.text
    failed = browser.get(world.url("/dashboard/deliveries"), params={"status": "failed"})
    assert "sandbox LMS is unavailable (injected fault, HTTP 400)" in failed.text, "the LMS's own words are shown"
    assert "Quiz 1" in failed.text and "Ada" in failed.text

    retry_url = re.search(r'action="(/dashboard/deliveries/[0-9a-f]+/retry)"', failed.text).group(1)
    refused = browser.post(world.url(retry_url), data={}, allow_redirects=False)
    assert refused.status_code == 400, "a form post without the CSRF token is refused"
    retried = browser.post(world.url(retry_url), data={"csrf_token": csrf(failed)}, allow_redirects=False)
    assert retried.status_code == 302
    worker.run_until_idle()
    assert world.get(posted.headers["Location"]).json()["status"] == "delivered"
    assert "delivered" in browser.get(world.url("/dashboard/deliveries"), params={"status": "delivered"}).text

    audit = browser.get(world.url("/dashboard/audit")).text
    assert "retried delivery" in audit and email in audit and "signed in" in audit


def test_staff_see_and_act_on_their_own_district_only(
    world: World, worker: DeliveryWorker, live_server: LiveServer, http: requests.Session
) -> None:
    world.inject_faults(1, status=422)
    world.post_grade({"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.6})
    worker.run_until_idle()
    other = build_world(world.app, live_server.url, http, district_name="Other District")
    outsider = signed_in(other, staff_of(other, "staff@other.example"))

    failed = outsider.get(world.url("/dashboard/deliveries"), params={"status": "failed"})
    assert failed.status_code == 200 and "No deliveries here." in failed.text
    with world.session() as session:
        from sqlalchemy import select

        from gateway.models import Delivery

        delivery_id = session.scalar(select(Delivery.id).where(Delivery.district_id == world.district_id))
    page = outsider.get(world.url("/dashboard/"))
    response = outsider.post(
        world.url(f"/dashboard/deliveries/{delivery_id}/retry"),
        data={"csrf_token": csrf(page)},
        allow_redirects=False,
    )
    assert response.status_code == 404, "another district's delivery is not found, by URL as well as by UI"
    assert world.get("/v1/grades?status=failed").json()["grades"], "and it stays failed"


def _try_sign_in(world: World, email: str, password: str) -> requests.Response:
    with requests.Session() as browser:
        page = browser.get(world.url("/dashboard/login"))
        return browser.post(
            world.url("/dashboard/login"), data={"email": email, "password": password, "csrf_token": csrf(page)}
        )


def _refusal(response: requests.Response) -> tuple[int, str]:
    match = re.search(r'<p class="error" role="alert">(.*?)</p>', response.text, re.S)
    assert match, response.text[:500]
    return response.status_code, match.group(1)


def test_wrong_passwords_lock_the_account_and_cookies_are_safe(world: World) -> None:
    email = staff_of(world)
    for _ in range(MAX_FAILED_LOGINS):
        bad = _try_sign_in(world, email, "wrong password!")
        assert bad.status_code == 401 and "email or password is incorrect" in bad.text
    locked = _try_sign_in(world, email, PASSWORD)
    assert locked.status_code == 401 and "locked" in locked.text

    other = staff_of(world, "second@district.example")
    page = requests.Session()
    form = page.get(world.url("/dashboard/login"))
    cookie = form.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    no_token = page.post(world.url("/dashboard/login"), data={"email": other, "password": PASSWORD})
    assert no_token.status_code == 400, "sign-in without the CSRF token is refused"


def test_a_locked_account_an_unknown_email_and_a_wrong_password_get_the_same_answer(world: World) -> None:
    locked = staff_of(world)
    staff_of(world, "second@district.example")
    for _ in range(MAX_FAILED_LOGINS):
        _try_sign_in(world, locked, "wrong password!")

    answers = {
        "locked account, right password": _refusal(_try_sign_in(world, locked, PASSWORD)),
        "unknown email": _refusal(_try_sign_in(world, "nobody@district.example", PASSWORD)),
        "wrong password": _refusal(_try_sign_in(world, "second@district.example", "wrong password!")),
    }

    assert len(set(answers.values())) == 1, answers
    status, message = answers["unknown email"]
    assert status == 401 and "wait 15 minutes" in message


def test_failed_sign_ins_are_limited_per_address_whatever_the_accounts(world: World) -> None:
    from datetime import timedelta

    from sqlalchemy import select, update

    from gateway.models import SignInFailure, StaffUser, utcnow
    from gateway.services.staff import ADDRESS_WINDOW_SECONDS, MAX_FAILURES_PER_ADDRESS

    email = staff_of(world)
    # Spread over many emails, as an enumeration would be: no one account reaches its own lockout.
    for n in range(MAX_FAILURES_PER_ADDRESS):
        assert _try_sign_in(world, f"guess-{n}@district.example", "wrong password!").status_code == 401

    limited = _try_sign_in(world, email, PASSWORD)

    assert limited.status_code == 429, "even the right password waits once the address is over its limit"
    assert "Too many failed sign-ins from your network address" in limited.text
    with world.session() as session:
        assert session.scalar(select(StaffUser.last_login_at).where(StaffUser.email == email)) is None
        session.execute(
            update(SignInFailure).values(created_at=utcnow() - timedelta(seconds=ADDRESS_WINDOW_SECONDS + 1))
        )
    signed_in(world, email)  # the window has passed


def test_a_copied_session_cookie_stops_working_at_sign_out(world: World) -> None:
    browser = signed_in(world, staff_of(world))
    thief = requests.Session()
    thief.cookies.update(browser.cookies)
    assert thief.get(world.url("/dashboard/"), allow_redirects=False).status_code == 200, "a copy works meanwhile"

    page = browser.get(world.url("/dashboard/"))
    signed_out = browser.post(world.url("/dashboard/logout"), data={"csrf_token": csrf(page)}, allow_redirects=False)
    assert signed_out.status_code == 302

    refused = thief.get(world.url("/dashboard/deliveries"), allow_redirects=False)
    assert refused.status_code == 302 and "/dashboard/login" in refused.headers["Location"]
    assert "Grade deliveries" not in thief.get(world.url("/dashboard/")).text


def test_signing_in_again_ends_the_browsers_previous_session(world: World) -> None:
    email = staff_of(world)
    browser = signed_in(world, email)
    copy = requests.Session()
    copy.cookies.update(browser.cookies)

    page = browser.get(world.url("/dashboard/login"))
    again = browser.post(
        world.url("/dashboard/login"),
        data={"email": email, "password": PASSWORD, "csrf_token": csrf(page)},
        allow_redirects=False,
    )

    assert again.status_code == 302
    assert browser.get(world.url("/dashboard/"), allow_redirects=False).status_code == 200
    assert copy.get(world.url("/dashboard/"), allow_redirects=False).status_code == 302, "the old session ended"


def test_the_session_cookie_holds_only_a_token_the_server_knows(world: World) -> None:
    from itsdangerous import URLSafeTimedSerializer
    from sqlalchemy import select

    from gateway.crypto import hash_token
    from gateway.models import StaffSession

    browser = signed_in(world, staff_of(world))
    cookie = browser.cookies["passback_session"]
    payload = URLSafeTimedSerializer("x").loads_unsafe(cookie)[1]
    assert set(payload) <= {"sid", "csrf_token", "_flashes", "_permanent"}, payload
    with world.session() as session:
        row = session.scalar(select(StaffSession))
        assert row.id == hash_token(payload["sid"]), "only the token's hash is stored"


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/x", "/v1/me"])
def test_sign_in_never_redirects_off_the_dashboard(world: World, target: str) -> None:
    email = staff_of(world)
    browser = requests.Session()
    page = browser.get(world.url("/dashboard/login"))
    response = browser.post(
        world.url("/dashboard/login"),
        params={"next": target},
        data={"email": email, "password": PASSWORD, "csrf_token": csrf(page)},
        allow_redirects=False,
    )
    assert response.headers["Location"].endswith("/dashboard/")


def _setup_link(world: World, runner: CliRunner, email: str = "new@district.example") -> tuple[str, str]:
    """`gateway staff create` without a password prints the one-time link."""
    result = runner.invoke(main, ["staff", "create", "--district", world.district_id, "--email", email, "--json"])
    assert result.exit_code == 0, result.output
    page, _, token = json.loads(result.output)["setup_link"].partition("#")
    assert token and page.endswith("/dashboard/setup"), "the token travels after #, which browsers never send"
    return world.url("/dashboard/setup"), token


def test_one_time_setup_link_sets_the_password_once(world: World, runner: CliRunner) -> None:
    link, token = _setup_link(world, runner)
    browser = requests.Session()
    page = browser.get(link)
    assert 'name="token"' in page.text
    short = browser.post(link, data={"token": token, "password": "short", "csrf_token": csrf(page)})
    assert short.status_code == 422 and "at least 12 characters" in short.text
    done = browser.post(
        link, data={"token": token, "password": PASSWORD, "csrf_token": csrf(page)}, allow_redirects=False
    )
    assert done.status_code == 302
    assert browser.get(world.url("/dashboard/")).status_code == 200
    again = requests.Session()
    page = again.get(link)
    assert again.post(link, data={"token": token, "password": PASSWORD, "csrf_token": csrf(page)}).status_code == 401
    signed_in(world, "new@district.example")


def test_the_setup_token_never_reaches_the_access_log(
    world: World, runner: CliRunner, caplog: pytest.LogCaptureFixture
) -> None:
    """`gateway run` serves with werkzeug, whose access log prints each request line; gunicorn's prints the same."""
    link, token = _setup_link(world, runner)
    with caplog.at_level("INFO", logger="werkzeug"):
        browser = requests.Session()
        page = browser.get(link)
        done = browser.post(link, data={"token": token, "password": PASSWORD, "csrf_token": csrf(page)})
        assert done.status_code == 200 and "Grade deliveries" in done.text
    lines = [record.getMessage() for record in caplog.records if record.name == "werkzeug"]
    assert any("/dashboard/setup" in line for line in lines), lines
    assert not any(token in line for line in lines), lines


def test_pages_need_a_signed_in_staff_member(world: World) -> None:
    for path in ("/dashboard/", "/dashboard/deliveries", "/dashboard/audit"):
        response = requests.get(world.url(path), allow_redirects=False, timeout=5)
        assert response.status_code == 302 and "/dashboard/login" in response.headers["Location"]


def test_pausing_a_connection_holds_its_grades_until_resumed(world: World, worker: DeliveryWorker) -> None:
    browser = signed_in(world, staff_of(world))
    page = browser.get(world.url("/dashboard/connections"))
    assert "Sandbox" in page.text and "running" in page.text
    assert "/gradebook" in page.text, "the sandbox's LMS-side value is shown"
    paused = browser.post(
        world.url(f"/dashboard/connections/{world.connection_id}/pause"),
        data={"csrf_token": csrf(page)},
        allow_redirects=False,
    )
    assert paused.status_code == 302
    posted = world.post_grade({"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.5})
    assert posted.status_code == 202, "grades are still accepted while paused"
    assert worker.run_until_idle() == 0 and world.gradebook() == []
    page = browser.get(world.url("/dashboard/connections"))
    assert "paused: grades are accepted and wait" in page.text
    browser.post(world.url(f"/dashboard/connections/{world.connection_id}/resume"), data={"csrf_token": csrf(page)})
    worker.run_until_idle()
    assert [e["scoreGiven"] for e in world.gradebook()] == [5.0]
    audit = browser.get(world.url("/dashboard/audit")).text
    assert "paused delivery" in audit and "resumed delivery" in audit


def test_delivery_list_exports_as_csv_with_formula_cells_neutralised(world: World, worker: DeliveryWorker) -> None:
    import csv
    import io

    world.inject_faults(1, status=400)
    with world.session() as session:
        from gateway.models import User

        session.get(User, world.students[0]).name = '=HYPERLINK("http://evil.example")'
    world.post_grade({"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.6})
    worker.run_until_idle()
    browser = signed_in(world, staff_of(world))
    response = browser.get(world.url("/dashboard/deliveries.csv"), params={"status": "failed"})
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0][:3] == ["delivery_id", "status", "operation"] and len(rows) == 2
    assert rows[1][1] == "failed"
    assert rows[1][3] == '\'=HYPERLINK("http://evil.example")', "a cell that a spreadsheet would run is defused"
    assert "HTTP 400" in rows[1][-1]


@pytest.mark.parametrize(
    "start",
    [
        pytest.param("=", id="equals"),
        pytest.param("+", id="plus"),
        pytest.param("-", id="minus"),
        pytest.param("@", id="at"),
        pytest.param("\t", id="tab"),
        pytest.param("\r", id="carriage-return"),
    ],
)
def test_csv_export_defuses_every_owasp_formula_start(world: World, worker: DeliveryWorker, start: str) -> None:
    import csv
    import io

    world.inject_faults(1, status=400)
    name = start + 'cmd|"/c calc"!A1'
    with world.session() as session:
        from gateway.models import User

        session.get(User, world.students[0]).name = name
    world.post_grade({"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.6})
    worker.run_until_idle()
    browser = signed_in(world, staff_of(world))
    response = browser.get(world.url("/dashboard/deliveries.csv"), params={"status": "failed"})
    rows = list(csv.reader(io.StringIO(response.text, newline="")))
    assert rows[1][3] == "'" + name, "the cell starts with a quote, so a spreadsheet shows it as text"


def test_other_districts_connections_cannot_be_paused(
    world: World, live_server: LiveServer, http: requests.Session
) -> None:
    other = build_world(world.app, live_server.url, http, district_name="Other District")
    outsider = signed_in(other, staff_of(other, "staff@other.example"))
    page = outsider.get(world.url("/dashboard/connections"))
    assert world.connection_id not in page.text
    response = outsider.post(
        world.url(f"/dashboard/connections/{world.connection_id}/pause"),
        data={"csrf_token": csrf(page)},
        allow_redirects=False,
    )
    assert response.status_code == 404


def test_all_failed_deliveries_of_a_connection_are_retried_after_a_fix(world: World, worker: DeliveryWorker) -> None:
    world.inject_faults(2, status=422)
    for student in world.students:
        world.post_grade({"assignmentID": "quiz-1", "userID": student, "percentage": 0.9})
    worker.run_until_idle()
    browser = signed_in(world, staff_of(world))
    page = browser.get(world.url("/dashboard/connections"))
    assert "Retry all 2 failed deliveries" in page.text
    browser.post(
        world.url(f"/dashboard/connections/{world.connection_id}/retry-failed"), data={"csrf_token": csrf(page)}
    )
    worker.run_until_idle()
    assert sorted(e["studentID"] for e in world.gradebook()) == sorted(world.students)
    gradebook = browser.get(world.url("/dashboard/sandbox")).text
    assert "Ada" in gradebook and "Alan" in gradebook and "9/10" in gradebook
    assert "retried failed deliveries" in browser.get(world.url("/dashboard/audit")).text


def test_drill_down_from_app_to_student_and_retry_an_assignment(
    world: World, worker: DeliveryWorker, live_server: LiveServer, http: requests.Session
) -> None:
    world.inject_faults(1, status=422)
    world.post_grade({"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.7})
    world.post_grade({"assignmentID": "quiz-1", "userID": world.students[1], "percentage": 0.9})
    worker.run_until_idle()
    browser = signed_in(world, staff_of(world))

    apps = browser.get(world.url("/dashboard/apps")).text
    app_link = re.search(r'href="(/dashboard/apps/[0-9a-f]+)">Quiz App<', apps).group(1)
    assignments = browser.get(world.url(app_link)).text
    assignment_link = re.search(r'href="(/dashboard/assignments/[0-9a-f]+)">Quiz 1<', assignments).group(1)
    placements = browser.get(world.url(assignment_link))
    placement_link = re.search(r'href="(/dashboard/placements/[0-9a-f]+)">course-101', placements.text).group(1)
    students = browser.get(world.url(placement_link)).text
    assert "Ada" in students and "Alan" in students and "7/10" in students and "9/10" in students
    assert "injected fault, HTTP 422" in students and "failed" in students

    browser.post(world.url(assignment_link + "/retry-failed"), data={"csrf_token": csrf(placements)})
    worker.run_until_idle()
    assert len(world.gradebook()) == 2

    other = build_world(world.app, live_server.url, http, district_name="Other District")
    outsider = signed_in(other, staff_of(other, "staff@other.example"))
    for path in (app_link, assignment_link, placement_link):
        refused = outsider.get(world.url(path))
        assert refused.status_code == 404, path
        # Staff read the dashboard in a browser: its errors are pages, not JSON.
        assert refused.headers["Content-Type"].startswith("text/html"), path
        assert "this request was refused" in refused.text, path


# --- CSRF, session expiry, lockout -----------------------------------------------------------------------------


def _failed_delivery(world: World, worker: DeliveryWorker) -> str:
    from sqlalchemy import select

    from gateway.models import Delivery

    world.inject_faults(1, status=422)
    world.post_grade({"assignmentID": "quiz-1", "userID": world.students[0], "percentage": 0.6})
    worker.run_until_idle()
    with world.session() as session:
        return session.scalar(select(Delivery.id).where(Delivery.district_id == world.district_id))


def _delivery_state(world: World, delivery_id: str) -> tuple[str, int, object]:
    from gateway.models import Delivery

    with world.session() as session:
        delivery = session.get(Delivery, delivery_id)
        return delivery.status, delivery.attempts, delivery.updated_at


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(None, id="no-token"),
        pytest.param("forged", id="wrong-token"),
        pytest.param("other", id="other-session"),
    ],
)
@pytest.mark.parametrize(
    "action",
    ["retry", "retry-assignment", "pause", "retry-connection", "logout"],
)
def test_every_form_post_needs_this_sessions_csrf_token(
    world: World, worker: DeliveryWorker, token: str | None, action: str
) -> None:
    delivery_id = _failed_delivery(world, worker)
    browser = signed_in(world, staff_of(world))
    assignments = browser.get(world.url(f"/dashboard/apps/{world.app_id}")).text
    assignment_link = re.search(r'href="(/dashboard/assignments/[0-9a-f]+)">Quiz 1<', assignments).group(1)
    path = {
        "retry": f"/dashboard/deliveries/{delivery_id}/retry",
        "retry-assignment": f"{assignment_link}/retry-failed",
        "pause": f"/dashboard/connections/{world.connection_id}/pause",
        "retry-connection": f"/dashboard/connections/{world.connection_id}/retry-failed",
        "logout": "/dashboard/logout",
    }[action]
    data = {}
    if token == "forged":
        data["csrf_token"] = "IjBhZGQ4ZGM1In0.forged.signature"
    elif token == "other":
        # A valid token, but of another signed-in session (another staff member of the same district).
        intruder = signed_in(world, staff_of(world, "intruder@district.example"))
        data["csrf_token"] = csrf(intruder.get(world.url("/dashboard/")))
    before = _delivery_state(world, delivery_id)

    refused = browser.post(world.url(path), data=data, allow_redirects=False)

    assert refused.status_code == 400, refused.text[:300]
    assert _delivery_state(world, delivery_id) == before, "nothing was retried"
    assert "paused: grades are accepted and wait" not in browser.get(world.url("/dashboard/connections")).text
    assert browser.get(world.url("/dashboard/"), allow_redirects=False).status_code == 200, "still signed in"
    assert "retried" not in browser.get(world.url("/dashboard/audit")).text


def _test_client_signed_in(world: World, email: str) -> object:
    client = world.app.test_client()
    form = client.get("/dashboard/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    response = client.post("/dashboard/login", data={"email": email, "password": PASSWORD, "csrf_token": token})
    assert response.status_code == 302
    return client


def _age_sessions(world: World, column: str, seconds: int) -> object:
    """Move the stored sessions' clock back (the server's record is what counts, not the cookie)."""
    from datetime import timedelta

    from sqlalchemy import select

    from gateway.models import StaffSession

    with world.session() as session:
        for row in session.scalars(select(StaffSession)):
            setattr(row, column, getattr(row, column) - timedelta(seconds=seconds))
            aged = getattr(row, column)
    return aged


def _stored_session(world: World) -> object:
    from sqlalchemy import select

    from gateway.models import StaffSession

    with world.session() as session:
        row = session.scalar(select(StaffSession))
        session.expunge(row)
        return row


@pytest.mark.parametrize(
    ("aged", "seconds"),
    [
        pytest.param("last_seen_at", 3600 + 5, id="idle-for-longer-than-an-hour"),
        pytest.param("created_at", 8 * 3600 + 5, id="signed-in-more-than-8-hours-ago"),
    ],
)
def test_a_session_expires_when_idle_or_old_even_with_a_valid_cookie(world: World, aged: str, seconds: int) -> None:
    client = _test_client_signed_in(world, staff_of(world))
    assert client.get("/dashboard/").status_code == 200
    _age_sessions(world, aged, seconds)

    response = client.get("/dashboard/deliveries")

    assert response.status_code == 302 and "/dashboard/login" in response.headers["Location"]
    login = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Your session has expired" in login
    with client.session_transaction() as session:
        assert "sid" not in session, "the expired session is cleared, not just refused"
    assert _stored_session(world).revoked_at is not None, "and ended on the server"


def test_activity_keeps_a_session_alive_and_the_lifetime_comes_from_settings(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import timedelta

    from gateway import create_app
    from gateway.config import Settings

    client = _test_client_signed_in(world, staff_of(world))
    stale = _age_sessions(world, "last_seen_at", 3000)  # 50 minutes idle: still inside the hour
    assert client.get("/dashboard/").status_code == 200
    assert _stored_session(world).last_seen_at > stale, "a request counts as activity"
    assert world.app.permanent_session_lifetime == timedelta(hours=8), "the safe default"

    monkeypatch.setenv("GATEWAY_STAFF_SESSION_SECONDS", "1800")
    monkeypatch.setenv("GATEWAY_STAFF_IDLE_SECONDS", "600")
    base = world.app.config["PASSBACK"]
    settings = Settings.from_env(
        database_url=base.database_url, secret_key=base.secret_key, encryption_keys=base.encryption_keys
    )
    assert (settings.staff_session_seconds, settings.staff_idle_seconds) == (1800, 600)
    configured = create_app(settings, database=services_of(world.app).database)
    assert configured.permanent_session_lifetime == timedelta(minutes=30)


def test_a_lockout_ends_after_its_time_and_the_count_starts_again(world: World) -> None:
    from datetime import timedelta

    from sqlalchemy import select

    from gateway.models import StaffUser, utcnow
    from gateway.services.staff import LOCKOUT_SECONDS

    email = staff_of(world)
    browser = requests.Session()
    for _ in range(MAX_FAILED_LOGINS):
        page = browser.get(world.url("/dashboard/login"))
        browser.post(
            world.url("/dashboard/login"), data={"email": email, "password": "nope nope nope", "csrf_token": csrf(page)}
        )
    with world.session() as session:
        staff = session.scalar(select(StaffUser).where(StaffUser.email == email))
        assert staff.locked_until is not None
        assert staff.locked_until - utcnow() > timedelta(seconds=LOCKOUT_SECONDS - 60)
        staff.locked_until = utcnow() - timedelta(seconds=1)  # the 15 minutes have passed

    signed_in(world, email)
    with world.session() as session:
        staff = session.scalar(select(StaffUser).where(StaffUser.email == email))
        assert (staff.failed_logins, staff.locked_until) == (0, None)


# --- one delivery, LMS connections ---------------------------------------------------------------------------------


def test_a_delivery_page_shows_the_lms_answer_and_the_grade_and_is_scoped(
    world: World, worker: DeliveryWorker, live_server: LiveServer, http: requests.Session
) -> None:
    world.inject_faults(1, status=422)
    world.post_grade(
        {
            "assignmentID": "quiz-1",
            "userID": world.students[0],
            "percentage": 0.6,
            "comment": "Good effort",
            "context": {"attempt": 2, "note": "<script>alert(1)</script>"},
        }
    )
    worker.run_until_idle()
    browser = signed_in(world, staff_of(world))
    failed = browser.get(world.url("/dashboard/deliveries"), params={"status": "failed"}).text
    link = re.search(r'href="(/dashboard/deliveries/[0-9a-f]+)" aria-label="Details', failed).group(1)

    page = browser.get(world.url(link))

    assert page.status_code == 200
    for text in ("Quiz 1 for Ada", "injected fault, HTTP 422", "6/10", "Good effort", "course-101", "Quiz App"):
        assert text in page.text, text
    assert "&lt;script&gt;" in page.text and "<script>alert" not in page.text, "app context is escaped"
    assert "Retry this delivery now" in page.text

    other = build_world(world.app, live_server.url, http, district_name="Other District")
    outsider = signed_in(other, staff_of(other, "staff@other.example"))
    assert outsider.get(world.url(link)).status_code == 404


def test_connections_show_health_tokens_and_what_to_enter_on_the_lms_side_without_secrets(world: World) -> None:
    from adapters.lti13_ags import SCOPE_LINEITEM, SCOPE_SCORE, Lti13AgsAdapter
    from gateway.services.lms import add_lms_connection, connection_settings
    from gateway.services.token_cache import DatabaseTokenCache

    box = services_of(world.app).box
    with world.session() as session:
        canvas = add_lms_connection(
            session,
            box,
            world.district_id,
            "Canvas",
            "lti13",
            {"platform": "canvas", "client_id": "10000000000123", "deployment_ids": "7:abc"},
        )
        add_lms_connection(
            session,
            box,
            world.district_id,
            "Moodle 1.1",
            "lti11",
            {
                "consumer_key": "springfield-moodle",
                "shared_secret": "very-secret-shared-value",
                "allowed_hosts": ["moodle.springfield.example"],
            },
        )
        canvas_id, settings = canvas.id, connection_settings(box, canvas)
    browser = signed_in(world, staff_of(world))
    page = browser.get(world.url("/dashboard/connections")).text
    assert "None cached: the next delivery asks the platform" in page

    keys = Lti13AgsAdapter.token_cache_keys(settings)
    [key] = [key for key, scopes in keys.items() if scopes == (SCOPE_LINEITEM, SCOPE_SCORE)]
    DatabaseTokenCache(services_of(world.app).database, box).put(key, "the-access-token-itself", 3600)
    page = browser.get(world.url("/dashboard/connections")).text

    assert "Cached, expires" in page and "lti-ags/scope/lineitem, lti-ags/scope/score" in page
    assert "the-access-token-itself" not in page, "never the token"
    assert "very-secret-shared-value" not in page, "never the LTI 1.1 secret"
    for value in (
        f"{world.base_url}/lti/config/{canvas_id}",
        f"{world.base_url}/lti/login",
        f"{world.base_url}/lti/jwks",
        f"{world.base_url}/lti11/launch",
        "springfield-moodle",
        "10000000000123",
        "(adapter: lti13)",
        "(adapter: lti11)",
    ):
        assert value in page, value
    # Each copy button is a real button with a label and points at an element holding the value.
    buttons = re.findall(r'<button type="button" class="copy" data-copy-target="([^"]+)" aria-label="([^"]+)"', page)
    assert ("Copy Consumer key of Moodle 1.1" in [label for _, label in buttons]) and len(buttons) >= 8
    for target, _ in buttons:
        assert f'id="{target}"' in page


def test_the_delivery_list_pages_by_position_newest_first_without_gaps_or_repeats(world: World) -> None:
    from gateway.services.dashboard_deliveries import PAGE_SIZE
    from gateway.services.directory import create_user, enroll
    from gateway.services.lms import get_connection

    with world.session() as session:
        connection = get_connection(session, world.district_id, world.connection_id)
        students = []
        for n in range(30):
            user = create_user(session, world.district_id, name=f"Student {n:02d}")
            enroll(session, connection, "course-101", user)
            students.append(user.id)
    for student in students:
        for assignment in ("quiz-1", "quiz-2"):
            world.post_grade({"assignmentID": assignment, "userID": student, "percentage": 0.5})
    browser = signed_in(world, staff_of(world))

    def listed(page: requests.Response) -> list[str]:
        return re.findall(r'href="/dashboard/deliveries/([0-9a-f]+)" aria-label="Details', page.text)

    def link(page: requests.Response, text: str) -> str | None:
        match = re.search(rf'href="([^"]+)">{re.escape(text)}</a>', page.text)
        return match.group(1).replace("&amp;", "&") if match else None

    first = browser.get(world.url("/dashboard/deliveries"))
    assert len(listed(first)) == PAGE_SIZE and link(first, "← Newer") is None
    second = browser.get(world.url(link(first, "Older →")))
    assert len(listed(second)) == 60 - PAGE_SIZE and link(second, "Older →") is None
    assert not set(listed(first)) & set(listed(second)), "no delivery on two pages"
    back = browser.get(world.url(link(second, "← Newer")))
    assert listed(back) == listed(first), "newer goes back to the same page"
    garbled = browser.get(world.url("/dashboard/deliveries"), params={"before": "not-a-cursor"})
    assert listed(garbled) == listed(first), "a cursor that does not parse starts at the newest"


@pytest.mark.parametrize("settings_overrides", [{"trusted_proxies": 1}])
def test_behind_a_trusted_proxy_the_limit_is_per_forwarded_client(world: World) -> None:
    from gateway.services.staff import MAX_FAILURES_PER_ADDRESS

    email = staff_of(world)

    def attempt(client: str, password: str) -> requests.Response:
        with requests.Session() as browser:
            browser.headers["X-Forwarded-For"] = client
            page = browser.get(world.url("/dashboard/login"))
            return browser.post(
                world.url("/dashboard/login"),
                data={"email": email, "password": password, "csrf_token": csrf(page)},
                allow_redirects=False,
            )

    for n in range(MAX_FAILURES_PER_ADDRESS):
        # Other accounts, so the one account's own lockout is not what refuses below.
        with requests.Session() as browser:
            browser.headers["X-Forwarded-For"] = "203.0.113.7"
            page = browser.get(world.url("/dashboard/login"))
            browser.post(
                world.url("/dashboard/login"),
                data={"email": f"guess-{n}@district.example", "password": "x" * 12, "csrf_token": csrf(page)},
            )

    assert attempt("203.0.113.7", PASSWORD).status_code == 429
    assert attempt("198.51.100.9", PASSWORD).status_code == 302, "another client behind the same proxy signs in"
