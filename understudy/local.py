"""Local transactions: named steps against one database, run as one ACID transaction.

When everything an operation writes lives in one database, it needs no saga: one transaction
holds it together, and a failure leaves nothing behind. This is what the seed's decision table
prefers whenever it can (its ``Ecto.Multi``); sagas are for what one transaction cannot hold.
See docs/local.md and docs/patterns.md.

Example::

    PLACE = (
        Local()
        .step("order", lambda db, done: insert_order(db, order_attrs))
        .step("stock", lambda db, done: take_stock(db, done["order"]))
        .step("payment", lambda db, done: record_payment(db, done["order"]))
    )
    results = PLACE.run(db)  # {"order": ..., "stock": ..., "payment": ...}, or LocalStepFailed

A step is ``fn(db, results)``: ``db`` the connection given to :meth:`Local.run`, ``results`` a
read-only mapping of the earlier steps' results by name. The database is a ``sqlite3``
connection or a ``psycopg`` (3) one. On a connection outside any transaction, :meth:`Local.run`
begins one and commits it; on one already inside a transaction (a participant's handler gets its
``db`` inside the ledger's transaction) it nests as a savepoint, and the commit stays with whoever
began that transaction. Either way a step that raises undoes the writes of every step.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

import attrs

from understudy.actors.handlers import Reject
from understudy.errors import DefinitionError, LocalStepFailed

__all__ = ["Local", "LocalStepFailed", "StepFunction"]

#: A step: ``fn(db, results) -> result``, ``results`` the earlier steps' results by name.
StepFunction = Callable[[Any, Mapping[str, Any]], Any]

_SUPPORTED = "a sqlite3.Connection or a psycopg.Connection (psycopg 3)"
# One name for every nesting level: SQLite and PostgreSQL both roll back to, and release, the
# most recent savepoint of a name, so local transactions nested in each other's steps compose.
_SAVEPOINT = "understudy_local"


@attrs.frozen
class _Step:
    name: str
    fn: StepFunction


def _valid_steps(instance: Local, attribute: attrs.Attribute[Any], steps: Any) -> None:
    """Refuses a transaction that could not run as written, when it is built: every path to a
    :class:`Local` (``step``, ``attrs.evolve``) comes through here."""
    seen: set[str] = set()
    for step in steps:
        if not isinstance(step.name, str) or not step.name:
            raise DefinitionError(
                f"a local transaction's step is named {step.name!r}: give each step a "
                "non-empty str name (its result is found by it)"
            )
        if step.name in seen:
            raise DefinitionError(
                f"the local transaction has two steps named {step.name!r}: each step's result "
                "is found by its name, so names must be unique"
            )
        seen.add(step.name)
        if not callable(step.fn):
            raise DefinitionError(
                f"step {step.name!r} of the local transaction is {type(step.fn).__name__} "
                f"{step.fn!r:.60}, which is not callable: give a function fn(db, results)"
            )


@attrs.frozen(repr=False)
class Local:
    """Named steps run against one database as one transaction: all of them, or none.

    Immutable: :meth:`step` returns a new transaction, so one built at import time may be run
    from any number of threads (each with its own connection)."""

    _steps: tuple[_Step, ...] = attrs.field(default=(), validator=_valid_steps)

    def step(self, name: str, fn: StepFunction) -> Local:
        """This transaction with ``fn(db, results)`` run last, its result kept under ``name``.
        A name used already, or an ``fn`` that is not callable, raises
        :class:`~understudy.errors.DefinitionError`."""
        return Local((*self._steps, _Step(name, fn)))

    @property
    def names(self) -> tuple[str, ...]:
        """The steps' names, in the order they run."""
        return tuple(step.name for step in self._steps)

    def __repr__(self) -> str:
        return f"Local({', '.join(map(repr, self.names))})"

    def run(self, db: Any) -> dict[str, Any]:
        """Run every step in order in one transaction on ``db`` and return their results by
        name (a new dict, in step order).

        A step that raises rolls back what every step wrote and raises
        :class:`LocalStepFailed` naming it, its exception as ``__cause__``; a
        :class:`~understudy.Reject` is rolled back too but goes on as it is, so that a
        participant records it as the business refusal it is. An error of the database itself
        at BEGIN or COMMIT is raised as the driver raised it (nothing was kept then either).
        """
        if not self._steps:
            raise DefinitionError(
                "the local transaction has no steps: add them with .step(name, fn) first"
            )
        driver = _driver(db)
        results: dict[str, Any] = {}
        # A view, not a copy per step: a step reads what came before it and cannot change it.
        done = MappingProxyType(results)
        with driver.transaction(db):
            for position, step in enumerate(self._steps, 1):
                where = f"step {step.name!r} ({position} of {len(self._steps)})"
                try:
                    result = step.fn(db, done)
                except Reject:
                    raise
                except Exception as exc:
                    raise LocalStepFailed(
                        f"local transaction failed at {where}: {type(exc).__name__}: {exc}; "
                        "nothing of it was kept",
                        step.name,
                    ) from exc
                broken = driver.broken(db)
                if broken is not None:
                    raise LocalStepFailed(
                        f"local transaction failed at {where}: {broken}", step.name
                    )
                results[step.name] = result
        return results


# --- the databases ----------------------------------------------------------------------------


@attrs.frozen
class _Driver:
    """How to hold a transaction on one kind of connection. ``broken``: why a step just left the
    transaction unusable (a step can do that without raising), or None."""

    transaction: Callable[[Any], contextlib.AbstractContextManager[None]]
    broken: Callable[[Any], str | None]


@contextlib.contextmanager
def _sqlite_transaction(db: sqlite3.Connection) -> Iterator[None]:
    # A connection already inside a transaction is someone else's (a participant's ledger, the
    # caller's own, a sqlite3 connection in autocommit=False mode): a savepoint nests in it and
    # leaves the commit to whoever began it.
    nested = db.in_transaction
    # IMMEDIATE takes the write lock at once: a deferred transaction that reads first and writes
    # later fails with SQLITE_BUSY at its first write, without waiting out the busy timeout,
    # when another connection wrote meanwhile.
    db.execute(f"SAVEPOINT {_SAVEPOINT}" if nested else "BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        # After some errors (a full disk, an interrupt) SQLite rolls back the whole transaction
        # itself: then there is nothing left here to undo, and the owner of an outer one finds
        # out at its next statement.
        if db.in_transaction:
            if nested:
                db.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
                db.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}")
            else:
                db.execute("ROLLBACK")
        raise
    if nested:
        db.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}")
        return
    try:
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # a COMMIT that failed may leave it open: never half-kept
            db.execute("ROLLBACK")
        raise


def _sqlite_broken(db: sqlite3.Connection) -> str | None:
    if db.in_transaction:
        return None
    return _ENDED


def _postgres_transaction(db: Any) -> contextlib.AbstractContextManager[None]:
    # psycopg begins and commits a transaction on a connection outside one, and nests a savepoint
    # in one that is open (explicit BEGIN on an autocommit connection included, as the ledger's).
    transaction: contextlib.AbstractContextManager[None] = db.transaction()
    return transaction


def _postgres_broken(db: Any) -> str | None:
    from psycopg.pq import TransactionStatus

    status = db.info.transaction_status
    if status == TransactionStatus.INERROR:
        # Worth a check of its own: PostgreSQL answers the COMMIT of an aborted transaction by
        # rolling it back without an error, so the run would report success and keep nothing.
        return (
            "one of its statements failed and it went on without raising (PostgreSQL refuses "
            "every statement after that); nothing of it was kept"
        )
    if status == TransactionStatus.IDLE:
        return _ENDED
    return None


_ENDED = (
    "it ended the transaction itself (a COMMIT or ROLLBACK of its own), so what the steps "
    "wrote may be committed in part; leave the transaction to the local transaction"
)

_SQLITE = _Driver(_sqlite_transaction, _sqlite_broken)
_POSTGRES = _Driver(_postgres_transaction, _postgres_broken)


def _driver(db: Any) -> _Driver:
    if isinstance(db, sqlite3.Connection):
        return _SQLITE
    # Whoever holds a psycopg connection has imported psycopg: no import here, so that SQLite
    # alone never needs psycopg installed.
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(db, psycopg.Connection):
        return _POSTGRES
    kind = f"{type(db).__module__}.{type(db).__qualname__}"
    if isinstance(db, (str, bytes, os.PathLike)):
        hint = " (a path or URL: connect to the database first and give the connection)"
    elif "Async" in kind:
        hint = " (run() is synchronous: give it a psycopg.Connection)"
    else:
        hint = ""
    raise TypeError(f"a local transaction runs on {_SUPPORTED}, not on {kind}{hint}")
