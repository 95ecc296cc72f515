"""The unit of work runs its after-commit effects only after a successful commit, never after a rollback, and
folds the nudges of one unit into one wake-up; a unit within another is a savepoint whose work and effects
commit with the outer unit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from gateway.db import make_engine
from gateway.services.unit_of_work import UnitOfWork


@pytest.fixture
def session() -> Iterator[Session]:
    engine = create_engine("sqlite://")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE outbox (id INTEGER PRIMARY KEY)"))
    with sessionmaker(bind=engine)() as session:
        yield session
    engine.dispose()


def rows(session: Session) -> int:
    return int(session.scalar(text("SELECT count(*) FROM outbox")) or 0)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[set[str] | None] = []

    def __call__(self, connection_ids: set[str] | None, /) -> None:
        self.calls.append(connection_ids)


def test_an_effect_does_not_run_when_the_unit_rolls_back(session: Session) -> None:
    ran: list[str] = []
    nudger = Recorder()
    with pytest.raises(RuntimeError), UnitOfWork(session, nudger) as uow:
        uow.session.execute(text("INSERT INTO outbox (id) VALUES (1)"))
        uow.on_commit(lambda: ran.append("effect"))
        uow.nudge({"conn-1"})
        raise RuntimeError("the service failed before committing")
    assert ran == [] and nudger.calls == []
    assert rows(session) == 0


def test_a_unit_left_without_a_commit_rolls_back_and_drops_its_effects(session: Session) -> None:
    ran: list[str] = []
    with UnitOfWork(session) as uow:
        uow.session.execute(text("INSERT INTO outbox (id) VALUES (1)"))
        uow.on_commit(lambda: ran.append("effect"))
    assert ran == []
    assert rows(session) == 0


def test_effects_run_after_the_commit_once_and_nudges_fold_into_one_wake_up(session: Session) -> None:
    seen_rows: list[int] = []
    nudger = Recorder()
    with UnitOfWork(session, nudger) as uow:
        uow.session.execute(text("INSERT INTO outbox (id) VALUES (1)"))
        uow.on_commit(lambda: seen_rows.append(rows(session)))
        uow.nudge({"conn-1"})
        uow.nudge_if(0, {"conn-unchanged"})
        uow.nudge(["conn-2", None])
        assert nudger.calls == [] and seen_rows == [], "nothing runs before the commit"
        uow.commit()
        uow.commit()  # effects are spent by the first commit
    assert seen_rows == [1], "the effect sees the committed row"
    assert nudger.calls == [{"conn-1", "conn-2"}]


def test_a_nudge_for_everything_wins_over_named_connections(session: Session) -> None:
    nudger = Recorder()
    with UnitOfWork(session, nudger) as uow:
        uow.nudge({"conn-1"})
        uow.nudge()
        uow.commit()
    assert nudger.calls == [None]


def test_a_failing_effect_does_not_undo_the_commit_or_stop_the_others(session: Session) -> None:
    ran: list[str] = []

    def broken() -> None:
        raise ConnectionError("the broker is down")

    with UnitOfWork(session) as uow:
        uow.session.execute(text("INSERT INTO outbox (id) VALUES (1)"))
        uow.on_commit(broken)
        uow.on_commit(lambda: ran.append("after"))
        uow.commit()
    assert ran == ["after"]
    assert rows(session) == 1


# --- units within another (a request with an Idempotency-Key) -----------------------------------------------


@pytest.fixture
def request_session(tmp_path: Path) -> Iterator[Session]:
    """SQLite as Passback configures it (gateway.db: BEGIN IMMEDIATE, so savepoints behave)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'uow.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE outbox (id INTEGER PRIMARY KEY)"))
    with sessionmaker(bind=engine)() as session:
        yield session
    engine.dispose()


def committed_rows(session: Session) -> int:
    """Rows as another connection sees them: what is really committed."""
    assert session.bind is not None
    with session.bind.connect() as conn:  # type: ignore[union-attr]
        return int(conn.execute(text("SELECT count(*) FROM outbox")).scalar() or 0)


def test_a_unit_within_another_commits_and_wakes_only_with_the_outer_one(request_session: Session) -> None:
    nudger = Recorder()
    ran: list[str] = []
    with UnitOfWork(request_session, nudger) as outer:
        with UnitOfWork(request_session, nudger, within=outer) as inner:
            inner.session.execute(text("INSERT INTO outbox (id) VALUES (1)"))
            inner.on_commit(lambda: ran.append("effect"))
            inner.nudge({"conn-1"})
            inner.commit()
        assert ran == [] and nudger.calls == [], "the inner commit only hands its effects on"
        assert rows(request_session) == 1, "the outer unit sees the work"
        outer.session.execute(text("INSERT INTO outbox (id) VALUES (2)"))  # the stored answer, say
        outer.commit()
    assert committed_rows(request_session) == 2
    assert ran == ["effect"] and nudger.calls == [{"conn-1"}]


def test_an_inner_rollback_undoes_its_own_work_only(request_session: Session) -> None:
    nudger = Recorder()
    with UnitOfWork(request_session, nudger) as outer:
        with UnitOfWork(request_session, nudger, within=outer) as first:
            first.session.execute(text("INSERT INTO outbox (id) VALUES (1)"))
            first.nudge({"conn-1"})
            first.commit()
        with pytest.raises(RuntimeError), UnitOfWork(request_session, nudger, within=outer) as second:
            second.session.execute(text("INSERT INTO outbox (id) VALUES (2)"))
            second.nudge({"conn-2"})
            raise RuntimeError("the second service failed")
        with UnitOfWork(request_session, nudger, within=outer) as third:
            third.session.execute(text("INSERT INTO outbox (id) VALUES (3)"))
            third.commit()
            third.session.execute(text("INSERT INTO outbox (id) VALUES (4)"))  # after its commit, never committed
        outer.commit()
    assert committed_rows(request_session) == 2
    assert nudger.calls == [{"conn-1"}]


def test_when_the_outer_unit_rolls_back_the_inner_units_work_and_effects_go_too(request_session: Session) -> None:
    nudger = Recorder()
    with pytest.raises(RuntimeError), UnitOfWork(request_session, nudger) as outer:
        with UnitOfWork(request_session, nudger, within=outer) as inner:
            inner.session.execute(text("INSERT INTO outbox (id) VALUES (1)"))
            inner.nudge()
            inner.commit()
        raise RuntimeError("the view failed after its service committed")
    assert committed_rows(request_session) == 0
    assert nudger.calls == []
