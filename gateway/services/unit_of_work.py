"""The unit of work: a service owns its transaction, and what must follow a commit (waking the delivery worker,
later webhooks) is registered inside the unit and runs only once the commit has succeeded.

Modelled on cosmicpython's `unit_of_work.py` (the service enters the unit, calls `commit()`, and leaving the unit
rolls back whatever was not committed) and on warehouse's after-commit task hooks (effects wait for the commit
and are dropped by a rollback, so a worker is never woken for rows that do not exist)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from functools import partial
from types import TracebackType
from typing import Protocol

from sqlalchemy.orm import Session, SessionTransaction

log = logging.getLogger("passback.unit_of_work")

Effect = Callable[[], None]


class Nudger(Protocol):
    """Wakes whatever delivers the outbox (the embedded worker, or Celery through the broker): `connection_ids`
    names the LMS connections that have new or released rows, None means "look everywhere". Implemented outside
    the services (gateway.composition) and handed in, so services import no worker."""

    def __call__(self, connection_ids: set[str] | None, /) -> None: ...


def no_nudge(_connection_ids: set[str] | None) -> None:
    """For processes that deliver nothing themselves and have no broker: the polling worker finds the rows."""


class UnitOfWork:
    """One transaction on `session`. Use it as `with uow: …; uow.commit()`: leaving the block without a commit
    (or by an exception) rolls back and drops the registered effects.

    `close` says whether the unit owns the session (a CLI command, a worker) or borrows it (a request's scoped
    session, removed at the end of the request).

    `within` makes this unit part of another's transaction (a request with an Idempotency-Key: its answer is
    stored in the same transaction as its work). The block is then a savepoint: `commit` releases it and hands
    the effects to the outer unit, which runs them after its own commit; a rollback undoes this unit's work
    only."""

    def __init__(
        self,
        session: Session,
        nudger: Nudger = no_nudge,
        *,
        close: bool = False,
        within: UnitOfWork | None = None,
    ) -> None:
        self.session = session
        self.nudger = nudger
        self._close = close
        self._within = within
        self._savepoint: SessionTransaction | None = None
        self._effects: list[Effect] = []
        # Connections to wake after the commit; None in the set stands for "every connection".
        self._nudged: set[str | None] = set()
        self._nudge_pending = False

    def __enter__(self) -> UnitOfWork:
        if self._within is not None:
            self._savepoint = self.session.begin_nested()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        try:
            if self._within is not None:
                self._drop_pending()
                if self._savepoint is not None and self._savepoint.is_active:
                    self._savepoint.rollback()
                self._savepoint = None
            elif exc_type is not None or self.session.in_transaction():
                self.rollback()
        finally:
            if self._close:
                self.session.close()

    def on_commit(self, effect: Effect) -> None:
        """Run `effect` after the next successful commit of this unit; a rollback drops it."""
        self._effects.append(effect)

    def nudge(self, connection_ids: Iterable[str | None] | None = None) -> None:
        """Wake delivery for these connections (None: all of them) once this unit's outbox rows are committed."""
        self._nudge_pending = True
        if connection_ids is None:
            self._nudged.add(None)
        else:
            self._nudged.update(c for c in connection_ids if c)

    def nudge_if(self, changed: int, connection_ids: Iterable[str | None] | None = None) -> int:
        """`nudge` when `changed` outbox rows were written or released; returns `changed` for the caller's count."""
        if changed:
            self.nudge(connection_ids)
        return changed

    def commit(self) -> None:
        effects = self._take_effects()
        if self._within is not None:
            if self._savepoint is not None and self._savepoint.is_active:
                self._savepoint.commit()
                self._savepoint = self.session.begin_nested()  # what follows in the block is undone on its own
            else:
                self.session.flush()
            self._within._effects.extend(effects)
            return
        self.session.commit()
        for effect in effects:
            try:
                effect()
            except Exception:  # the transaction is committed: an effect's failure must not undo the answer
                log.exception("an after-commit effect failed; the committed work stands")

    def rollback(self) -> None:
        self._drop_pending()
        if self._within is not None:
            if self._savepoint is not None and self._savepoint.is_active:
                self._savepoint.rollback()
                self._savepoint = self.session.begin_nested()
            return
        self.session.rollback()

    def _drop_pending(self) -> None:
        self._effects.clear()
        self._nudged.clear()
        self._nudge_pending = False

    def _take_effects(self) -> list[Effect]:
        """The effects of what is being committed, the nudges folded into one wake-up at the end."""
        effects, self._effects = self._effects, []
        if self._nudge_pending:
            nudged, self._nudged, self._nudge_pending = self._nudged, set(), False
            if nudged:
                effects.append(partial(self._wake, nudged))
        return effects

    def _wake(self, nudged: set[str | None]) -> None:
        self.nudger(None if None in nudged else {c for c in nudged if c is not None})
