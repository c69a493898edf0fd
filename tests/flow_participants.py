"""Participants for the workflow tests (importable by name, so multi-process bases load them).

``Echo`` records every request it applies (step, kind, and exactly what the request carried:
its payload and results) in its own SQLite ledger database, and returns what it was given, so a
test can tell what each participant saw and in which order effects were applied.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from understudy import Participant, Reject, StepContext, action, compensation


class Echo(Participant):
    """Applies any of its actions by recording the request; ``{"reject": action}`` in what the
    request carries refuses it, ``{"slow": {action: seconds}}`` makes it take that long,
    ``{"fail": {action: n}}`` makes it raise n times (-1: always)."""

    def setup(self, db: sqlite3.Connection, options: dict[str, Any]) -> None:
        self.where = str(options.get("database"))  # failures are counted per ledger
        db.execute(
            "CREATE TABLE IF NOT EXISTS seen (seq INTEGER PRIMARY KEY, saga_id TEXT, step TEXT, "
            "kind TEXT, action TEXT, payload TEXT, results TEXT, at REAL, failure TEXT)"
        )

    def _apply(self, step: StepContext, db: sqlite3.Connection) -> dict[str, Any]:
        carried = step.payload
        if step.kind == "do" and carried.get("reject") == step.action:
            raise Reject(f"{step.action} refused by the test")
        time.sleep(float(carried.get("slow", {}).get(step.action, 0)))
        fail = carried.get("fail", {}).get(step.action, 0)
        if fail:
            # Counted in memory, per process (the handler's writes roll back when it raises).
            counter = (os.getpid(), self.where, step.key)
            tries = _FAILURES.get(counter, 0)
            if fail < 0 or tries < fail:
                _FAILURES[counter] = tries + 1
                raise RuntimeError(f"{step.action} failing on purpose ({tries + 1})")
        db.execute(
            "INSERT INTO seen (saga_id, step, kind, action, payload, results, at, failure) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                step.saga_id,
                step.step,
                step.kind,
                step.action,
                json.dumps(carried, sort_keys=True),
                json.dumps(step.results, sort_keys=True),
                time.time(),
                json.dumps(step.failure, sort_keys=True),
            ),
        )
        return {"by": step.action, "saw": sorted(step.results)}

    @action("create")
    def create(self, step: StepContext, db: sqlite3.Connection) -> Any:
        return self._apply(step, db)

    @compensation("cancel")
    def cancel(self, step: StepContext, db: sqlite3.Connection) -> Any:
        return self._apply(step, db)

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

    @action("ship")
    def ship(self, step: StepContext, db: sqlite3.Connection) -> Any:
        return self._apply(step, db)

    @compensation("unship")
    def unship(self, step: StepContext, db: sqlite3.Connection) -> Any:
        return self._apply(step, db)


_FAILURES: dict[tuple[int, str, str], int] = {}


def seen(path: Path, saga_id: str | None = None) -> list[dict[str, Any]]:
    """Every request ``path``'s Echo applied (of ``saga_id``), in the order applied."""
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute(
            "SELECT saga_id, step, kind, action, payload, results, at, failure FROM seen "
            "ORDER BY seq"
        ).fetchall()
    return [
        {
            "saga_id": r[0],
            "step": r[1],
            "kind": r[2],
            "action": r[3],
            "payload": json.loads(r[4]),
            "results": json.loads(r[5]),
            "at": r[6],
            "failure": json.loads(r[7]),
        }
        for r in rows
        if saga_id is None or r[0] == saga_id
    ]
