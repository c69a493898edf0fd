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
from typing import Any

from understudy import Participant, Reject, StepContext, action, compensation


class Recorder(Participant):
    """Applies any action or compensation by recording it in an ``effects`` table."""

    def setup(self, db: sqlite3.Connection, options: dict[str, Any]) -> None:
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
            counter = (os.getpid(), step.key)
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


_FAILURES: dict[tuple[int, str], int] = {}


class Silent(Participant):
    """A participant that never replies to step requests."""

    def receiveMsg_StepRequest(self, msg: Any, sender: Any) -> None:
        return None


class Ticker(Recorder):
    """A participant with wakeups of its own (its handler does not call super())."""

    def receiveMsg_WakeupMessage(self, msg: Any, sender: Any) -> None:
        return None
