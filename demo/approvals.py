"""The payment approval of the chaos order with an approval (``demo.chaos_deferred``): a step
that finishes later.

Action "approve" puts the order in an approver's inbox (a row of ``approvals`` holding the
step's handle and what the approver will do, the ``plan`` the workload drew) and returns
:class:`~understudy.Later`; the approver, a process of its own (``demo.completer``), completes
it from outside the actor system. Plan ``now`` approves at once, as a policy would, so the
ordinary path runs too.

The tables are the evidence the harness judges by (``demo.deferred_checks``):

- ``approvals``: one row per committed run of the handler (no key is unique here on purpose: a
  handler run twice for one request shows as two rows, not as an error that hides it);
- ``withdrawals``: one row per committed run of the compensation, with what it was told (the
  forward's outcome and result, and the saga's failure), and the inbox row marked withdrawn
  (what a late approver sees: a request withdrawn, which they may still click).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from typing import Any

from understudy import Later, Participant, StepContext, action, compensation

#: What the approver does with a request (the workload draws one per order):
APPROVE = "approve"  # approves it soon
APPROVE_SLOW = "approve_slow"  # approves it after the step's first attempt timed out (a resend)
REJECT = "reject"  # refuses it, with data saying why
FAIL = "fail"  # the approval system breaks (understudy.fail)
NEVER = "never"  # nobody answers: the step times out and is cancelled; a late click follows
RACE = "race"  # approves it about when the saga gives up: either may win
TWICE = "twice"  # approves it, the webhook delivers it again, then someone rejects it
NOW = "now"  # approved at once by the handler (policy): no deferral
PLANS = (APPROVE, APPROVE_SLOW, REJECT, FAIL, NEVER, RACE, TWICE, NOW)


class Approvals(Participant):
    """Payment approvals that finish later; see the module docstring."""

    # Requests waiting for a person must not hold back the others (they hold no slot anyway
    # once accepted; without a limit none is even queued behind a slow batch).
    max_in_flight = None

    def setup(self, db: sqlite3.Connection, options: dict[str, Any]) -> None:
        db.execute(
            "CREATE TABLE IF NOT EXISTS approvals (id INTEGER PRIMARY KEY, key TEXT NOT NULL, "
            "saga_id TEXT NOT NULL, handle TEXT NOT NULL, plan TEXT NOT NULL, "
            "delay REAL NOT NULL, pid INTEGER NOT NULL, at REAL NOT NULL, "
            "withdrawn INTEGER NOT NULL DEFAULT 0)"
        )
        db.execute(
            "CREATE TABLE IF NOT EXISTS withdrawals (id INTEGER PRIMARY KEY, key TEXT NOT NULL, "
            "forward_key TEXT NOT NULL, saga_id TEXT NOT NULL, forward_outcome TEXT, "
            "forward_result TEXT, failure TEXT, pid INTEGER NOT NULL, at REAL NOT NULL)"
        )

    @action("approve")
    def approve(self, step: StepContext, db: sqlite3.Connection) -> Any:
        plan = step.payload["approval"]
        # Into the approver's inbox, with the handle that finishes the step: this row and the
        # ledger's row saying the step is deferred commit together, or neither does.
        db.execute(
            "INSERT INTO approvals (key, saga_id, handle, plan, delay, pid, at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                step.key,
                step.saga_id,
                step.handle,
                plan["plan"],
                plan["delay"],
                os.getpid(),
                time.time(),
            ),
        )
        if plan["plan"] == NOW:
            return {"approved_by": "policy", "saga": step.saga_id}
        return Later()

    @compensation("withdraw")
    def withdraw(self, step: StepContext, db: sqlite3.Connection) -> None:
        # step.forward_outcome: "applied", "rejected", "failed" or "cancelled" (it waited).
        assert step.forward_key is not None
        db.execute(
            "INSERT INTO withdrawals (key, forward_key, saga_id, forward_outcome, "
            "forward_result, failure, pid, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                step.key,
                step.forward_key,
                step.saga_id,
                step.forward_outcome,
                json.dumps(step.forward_result),
                json.dumps(step.failure),
                os.getpid(),
                time.time(),
            ),
        )
        db.execute("UPDATE approvals SET withdrawn = 1 WHERE key = ?", (step.forward_key,))
