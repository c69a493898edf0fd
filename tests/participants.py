"""Participants used by the test suite (importable by name, so multi-process bases can load them).

Each keeps a ledger of effects in its own SQLite file, so tests can check at-most-once effects
and reverse-order compensation from the participants' side, never from the coordinator's memory.
Behaviour is steered by the saga payload: ``{"reject": "charge"}`` makes that action refuse,
``{"fail": {"charge": n}}`` makes it raise n times (-1: always).
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import closing
from typing import Any

from understudy import Participant, Reject, StepContext, action, compensation
from understudy.actors.deferred import complete
from understudy.actors.participant import Later


class Recorder(Participant):
    """Applies any action or compensation by recording it in an ``effects`` table."""

    def setup(self, db: sqlite3.Connection, options: dict[str, Any]) -> None:
        # Failures are counted per ledger: two tests in one process may reuse a saga id.
        self.ledger_path = str(options.get("database"))
        time.sleep(float(options.get("setup_delay", 0)))  # a slow migration or warm-up
        db.execute(
            "CREATE TABLE IF NOT EXISTS effects (seq INTEGER PRIMARY KEY, saga_id TEXT, "
            "step TEXT, kind TEXT, action TEXT, key TEXT, at REAL)"
        )
        db.execute("CREATE TABLE IF NOT EXISTS failures (key TEXT PRIMARY KEY, count INTEGER)")

    def _apply(self, step: StepContext, db: sqlite3.Connection) -> dict[str, Any]:
        payload = step.payload
        if step.kind == "do" and payload.get("reject") == step.action:
            raise Reject(f"{step.action} refused by the test")
        fail = payload.get("fail", {}).get(step.action, 0)
        if fail:
            # Counted in memory (the handler's writes roll back when it raises), per process:
            # a forked process inherits its parent's counts.
            counter = (os.getpid(), self.ledger_path, step.key)
            seen = _FAILURES.get(counter, 0)
            if fail < 0 or seen < fail:
                _FAILURES[counter] = seen + 1
                raise RuntimeError(f"{step.action} failing on purpose ({seen + 1})")
        db.execute(
            "INSERT INTO effects (saga_id, step, kind, action, key, at) VALUES (?, ?, ?, ?, ?, ?)",
            (step.saga_id, step.step, step.kind, step.action, step.key, time.time()),
        )
        if payload.get("big"):
            return {"by": step.action, "blob": "x" * int(payload["big"])}
        return {"by": step.action}

    @action("reserve")
    def reserve(self, step: StepContext, db: sqlite3.Connection) -> Any:
        return self._apply(step, db)

    @compensation("release")
    def release(self, step: StepContext, db: sqlite3.Connection) -> Any:
        return self._apply(step, db)

    @action("charge")
    def charge(self, step: StepContext, db: sqlite3.Connection) -> Any:
        return self._apply(step, db)

    @compensation("refund")
    def refund(self, step: StepContext, db: sqlite3.Connection) -> Any:
        return self._apply(step, db)

    @action("create")
    def create(self, step: StepContext, db: sqlite3.Connection) -> Any:
        return self._apply(step, db)

    @compensation("cancel")
    def cancel(self, step: StepContext, db: sqlite3.Connection) -> Any:
        return self._apply(step, db)

    @action("ship")
    def ship(self, step: StepContext, db: sqlite3.Connection) -> Any:
        return self._apply(step, db)


_FAILURES: dict[tuple[int, str, str], int] = {}


class Unhurried(Recorder):
    """A Recorder whose forward steps take ``options["delay"]`` seconds each (a slow API): its
    saga waits on the reply that long, whatever the machine's speed."""

    def setup(self, db: sqlite3.Connection, options: dict[str, Any]) -> None:
        super().setup(db, options)
        self.delay = float(options.get("delay", 0))

    def _apply(self, step: StepContext, db: sqlite3.Connection) -> dict[str, Any]:
        if step.kind == "do":
            time.sleep(self.delay)
        return super()._apply(step, db)


class Silent(Participant):
    """A participant that never replies to step requests."""

    def receiveMsg_StepRequest(self, msg: Any, sender: Any) -> None:
        return None


class Ticker(Recorder):
    """A participant with wakeups of its own (its handler does not call super())."""

    def receiveMsg_WakeupMessage(self, msg: Any, sender: Any) -> None:
        return None


class PgRecorder(Recorder):
    """A Recorder whose database is PostgreSQL (its ``database`` option is a postgresql:// URL):
    effects go to a PostgreSQL ``effects`` table, in the ledger's transaction. Several may share
    one database (each row names its participant). A failing handler writes its effect first
    and then raises, so that a test sees its savepoint undo that write."""

    def setup(self, db: Any, options: dict[str, Any]) -> None:
        self.ledger_path = str(options.get("database"))  # failures are counted per ledger
        db.execute(
            "CREATE TABLE IF NOT EXISTS effects (seq BIGINT GENERATED ALWAYS AS IDENTITY "
            "PRIMARY KEY, participant TEXT, saga_id TEXT, step TEXT, kind TEXT, action TEXT, "
            "key TEXT, at DOUBLE PRECISION)"
        )

    def _apply(self, step: StepContext, db: Any) -> dict[str, Any]:
        payload = step.payload
        if step.kind == "do" and payload.get("reject") == step.action:
            raise Reject(f"{step.action} refused by the test")
        db.execute(
            "INSERT INTO effects (participant, saga_id, step, kind, action, key, at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (self.name, step.saga_id, step.step, step.kind, step.action, step.key, time.time()),
        )
        fail = payload.get("fail", {}).get(step.action, 0)
        if fail:
            counter = (os.getpid(), self.ledger_path, step.key)
            seen = _FAILURES.get(counter, 0)
            if fail < 0 or seen < fail:
                _FAILURES[counter] = seen + 1
                raise RuntimeError(f"{step.action} failing on purpose after writing ({seen + 1})")
        return {"by": step.action}


class FakeProvider(Participant):
    """A payment provider's API reached by external handlers. The "API" is a SQLite file (the
    ``provider`` option) that logs every call (key, kind, start and end times, the forward
    outcome a refund was told) and applies charges and refunds once per idempotency key, as a
    real provider deduplicates. Each call takes ``latency`` seconds (0.3 by default).

    Payload: ``{"reject": "charge"}`` declines the card; ``{"raise_after_call": "charge"}``
    makes the handler raise after the provider took the charge (a timeout on the way back)."""

    def setup(self, db: sqlite3.Connection, options: dict[str, Any]) -> None:
        self.provider = str(options["provider"])
        self.latency = float(options.get("latency", 0.3))
        with closing(provider_api(self.provider)) as api:
            api.execute(
                "CREATE TABLE IF NOT EXISTS calls (seq INTEGER PRIMARY KEY, key TEXT, "
                "saga_id TEXT, action TEXT, kind TEXT, forward_key TEXT, forward_outcome TEXT, "
                "forward_result TEXT, pid INTEGER, started REAL, ended REAL)"
            )
            api.execute(
                "CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY, saga_id TEXT, "
                "kind TEXT, at REAL)"
            )

    def _call(self, step: StepContext, db: None) -> dict[str, Any]:
        assert db is None  # an external handler holds no transaction
        with closing(provider_api(self.provider)) as api:
            seq = api.execute(
                "INSERT INTO calls (key, saga_id, action, kind, forward_key, forward_outcome, "
                "forward_result, pid, started) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    step.key,
                    step.saga_id,
                    step.action,
                    step.kind,
                    step.forward_key,
                    step.forward_outcome,
                    None if step.forward_result is None else repr(step.forward_result),
                    os.getpid(),
                    time.time(),
                ),
            ).lastrowid
            time.sleep(self.latency)
            if step.kind == "do" and step.payload.get("reject") == step.action:
                api.execute("UPDATE calls SET ended = ? WHERE seq = ?", (time.time(), seq))
                raise Reject("card declined")
            api.execute(
                "INSERT OR IGNORE INTO effects (key, saga_id, kind, at) VALUES (?, ?, ?, ?)",
                (step.key, step.saga_id, step.kind, time.time()),
            )
            api.execute("UPDATE calls SET ended = ? WHERE seq = ?", (time.time(), seq))
        if step.kind == "do" and step.payload.get("raise_after_call") == step.action:
            raise TimeoutError("the provider took the charge, but its answer never came back")
        return {"charged": step.key} if step.kind == "do" else {"refunded": step.key}

    @action("charge", external=True)
    def charge(self, step: StepContext, db: None) -> Any:
        return self._call(step, db)

    @compensation("refund", external=True)
    def refund(self, step: StepContext, db: None) -> Any:
        return self._call(step, db)


def provider_api(path: str) -> sqlite3.Connection:
    """A connection to FakeProvider's "API" file (autocommit, several threads and processes)."""
    api = sqlite3.connect(path, timeout=30, isolation_level=None)
    api.execute("PRAGMA journal_mode=WAL")
    return api


class Approvals(Participant):
    """Steps that finish later, on SQLite or PostgreSQL (as its ``database`` option says).

    Action "approve" writes a pending row (with the step's handle) in ``approvals`` and a row
    in ``runs`` (every committed run of a handler), then returns :class:`Later`: the test
    completes the step from outside with ``understudy.complete`` and the others, reading the
    handle from ``approvals``. Payload ``{"now": "approve"}`` completes it at once instead;
    ``{"reject": "approve", "data": ...}`` refuses it with that data; ``{"later": "withdraw"}``
    makes the compensation return ``Later`` too. Action "pay" is the same
    run as an external handler (``db`` is None: its pending row goes in the ``provider``
    option's SQLite file, as an external API would keep it). Compensations "withdraw" and
    "refund" record what they were told in ``withdrawals`` and mark the pending row withdrawn."""

    max_in_flight = None  # steps waiting for a person hold no slot of the saga hosts' window

    def setup(self, db: Any, options: dict[str, Any]) -> None:
        self.database = str(options["database"])
        self.mark = "%s" if self.database.startswith("postgres") else "?"
        self.provider = options.get("provider")
        db.execute(
            "CREATE TABLE IF NOT EXISTS approvals (key TEXT PRIMARY KEY, saga_id TEXT, "
            "handle TEXT, pid INTEGER, withdrawn INTEGER)"
        )
        db.execute("CREATE TABLE IF NOT EXISTS runs (key TEXT, kind TEXT, pid INTEGER)")
        db.execute(
            "CREATE TABLE IF NOT EXISTS withdrawals (key TEXT PRIMARY KEY, forward_key TEXT, "
            "forward_outcome TEXT, forward_result TEXT, handle TEXT)"
        )
        if self.provider:
            with closing(provider_api(str(self.provider))) as api:
                api.execute(
                    "CREATE TABLE IF NOT EXISTS approvals (key TEXT PRIMARY KEY, saga_id TEXT, "
                    "handle TEXT, pid INTEGER)"
                )

    def _sql(self, statement: str) -> str:
        return statement.replace("?", self.mark)

    def _ask(self, step: StepContext, db: Any) -> Any:
        payload = step.payload
        if payload.get("reject") == step.action:
            raise Reject(f"{step.action} refused by the test", data=payload.get("data"))
        row = (step.key, step.saga_id, step.handle, os.getpid())
        if db is None:
            with closing(provider_api(str(self.provider))) as api:
                api.execute("INSERT OR REPLACE INTO approvals VALUES (?, ?, ?, ?)", row)
        else:
            db.execute(self._sql("INSERT INTO runs VALUES (?, ?, ?)"), (step.key, "do", row[3]))
            db.execute(self._sql("INSERT INTO approvals VALUES (?, ?, ?, ?, 0)"), row)
        if payload.get("now") == step.action:
            return {"approved": "at once"}
        if payload.get("complete_first") == step.action and db is None:
            # A callback faster than the call: recorded while the row still says "started".
            complete(self.database, step.handle, {"paid": "before returning"})
        return Later()

    def _withdraw(self, step: StepContext, db: Any) -> Any:
        db.execute(self._sql("INSERT INTO runs VALUES (?, ?, ?)"), (step.key, "undo", os.getpid()))
        db.execute(
            self._sql("UPDATE approvals SET withdrawn = 1 WHERE key = ?"), (step.forward_key,)
        )
        db.execute(
            self._sql("INSERT INTO withdrawals VALUES (?, ?, ?, ?, ?)"),
            (
                step.key,
                step.forward_key,
                step.forward_outcome,
                None if step.forward_result is None else repr(step.forward_result),
                step.handle,
            ),
        )
        if step.payload.get("later") == step.action:
            return Later()  # a compensation may finish later too
        return {"withdrawn": step.forward_key}

    @action("approve")
    def approve(self, step: StepContext, db: Any) -> Any:
        return self._ask(step, db)

    @compensation("withdraw")
    def withdraw(self, step: StepContext, db: Any) -> Any:
        return self._withdraw(step, db)

    @action("pay", external=True)
    def pay(self, step: StepContext, db: None) -> Any:
        return self._ask(step, db)

    @compensation("refund")
    def refund(self, step: StepContext, db: Any) -> Any:
        return self._withdraw(step, db)


class Refuser(Participant):
    """Refuses every request with the payload's ``reason`` and ``data``
    (``Reject(reason, data=data)``; no ``data`` key: ``Reject(reason)``). ``{"raise": True}``
    raises an error instead; ``{"unencodable": True}`` refuses with data msgpack cannot encode
    (a datetime). Action "check" is an ordinary handler, "verify" an external one."""

    def _refuse(self, step: StepContext) -> Any:
        payload = step.payload
        if payload.get("raise"):
            raise RuntimeError("the check broke")
        if payload.get("unencodable"):
            import datetime

            raise Reject("expired", data={"at": datetime.datetime(2026, 12, 2)})
        if "data" not in payload:
            raise Reject(payload.get("reason", "refused"))
        raise Reject(payload.get("reason", "refused"), data=payload["data"])

    @action("check")
    def check(self, step: StepContext, db: Any) -> Any:
        return self._refuse(step)

    @action("verify", external=True)
    def verify(self, step: StepContext, db: None) -> Any:
        return self._refuse(step)

    @compensation("uncheck")
    def uncheck(self, step: StepContext, db: Any) -> Any:
        return None


class NarrowApprovals(Approvals):
    """Approvals that take one request at a time: steps waiting for their completion must not
    count against it."""

    max_in_flight = 1
