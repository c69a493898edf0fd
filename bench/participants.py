"""The participants the benchmarks use (importable by name, so multi-process bases load them).

- :class:`Orders`, :class:`Inventory`, :class:`Payments`: the order saga's participants, written
  as users write them (the :class:`~understudy.Participant` ledger: each request applied at most
  once, its ledger row committed FULL before the reply). Their handlers do trivial work, as the
  peers' steps do, so the figures compare coordination, not business logic.
- :class:`Echo`: answers every request at once, with no ledger (per-step overhead, step scaling).
- :class:`Delayed`: answers after ``options["delay"]`` seconds, or never when it is None
  (sagas held in flight for the memory and recovery figures).
"""

from __future__ import annotations

import collections
import sqlite3
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs

from bench.common import fails
from understudy import (
    Participant,
    Reject,
    SagaDefinition,
    Step,
    StepContext,
    WorkflowDefinition,
    action,
    compensation,
)
from understudy.actors.system import WakeupMessage
from understudy.messages import StepReply, StepRequest


def _done(step: StepContext) -> dict[str, Any]:
    return {"by": step.action, "saga": step.saga_id}


class Orders(Participant):
    @action("create_order")
    def create_order(self, step: StepContext, db: sqlite3.Connection) -> Any:
        return _done(step)

    @compensation("cancel_order")
    def cancel_order(self, step: StepContext, db: sqlite3.Connection) -> Any:
        return _done(step)


class Inventory(Participant):
    @action("reserve_inventory")
    def reserve_inventory(self, step: StepContext, db: sqlite3.Connection) -> Any:
        return _done(step)

    @compensation("release_inventory")
    def release_inventory(self, step: StepContext, db: sqlite3.Connection) -> Any:
        return _done(step)


class Payments(Participant):
    @action("charge_payment")
    def charge_payment(self, step: StepContext, db: sqlite3.Connection) -> Any:
        if step.payload.get("fail"):
            raise Reject("card declined")
        return _done(step)

    @compensation("refund_payment")
    def refund_payment(self, step: StepContext, db: sqlite3.Connection) -> Any:
        return _done(step)


def ok(msg: StepRequest) -> StepReply:
    return StepReply(
        msg.saga_id, msg.step, msg.kind, msg.key, msg.attempt, msg.incarnation, "ok", {"ok": 1}
    )


class Echo(Participant):
    """Replies "ok" to every request without a ledger: nothing to commit, but its replies go
    out the way every participant's do (together, at the participant's flush), so a saga host
    on a multi-process base gets them in batches as it would from a real participant."""

    def receiveMsg_StepRequest(self, msg: StepRequest, sender: Any) -> None:
        self.stage_reply(msg, sender, ok(msg))


class Delayed(Participant):
    """Replies "ok" after ``options["delay"]`` seconds; never, when the delay is None."""

    delay: float | None = None

    def setup(self, db: sqlite3.Connection, options: dict[str, Any]) -> None:
        self.delay = options.get("delay")
        self.due: collections.deque[tuple[float, StepRequest, Any]] = collections.deque()
        self.armed = False

    def receiveMsg_StepRequest(self, msg: StepRequest, sender: Any) -> None:
        if self.delay is None:
            return
        # One wakeup at a time and a queue behind it: Thespian scans every pending wakeup on
        # every delivery, so a wakeup per request would make 10,000 in flight quadratic.
        self.due.append((time.monotonic() + self.delay, msg, sender))
        if not self.armed:
            self.armed = True
            self.wakeupAfter(timedelta(seconds=self.delay))

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        self.armed = False
        now = time.monotonic()
        while self.due and self.due[0][0] <= now:
            _at, request, requester = self.due.popleft()
            self.send(requester, ok(request))
        if self.due:
            self.armed = True
            self.wakeupAfter(timedelta(seconds=max(0.0, self.due[0][0] - now)))


def order_definition(timeout: float = 30.0) -> SagaDefinition:
    """The seed's order saga. Long reply deadlines: under a burst of 1,000 sagas a reply can
    take seconds on two cores, and a timeout would turn a benchmark into a retry storm."""
    return SagaDefinition(
        "order",
        1,
        [
            Step("create_order", "orders", "create_order", "cancel_order", timeout=timeout),
            Step(
                "reserve_inventory",
                "inventory",
                "reserve_inventory",
                "release_inventory",
                timeout=timeout,
            ),
            Step("charge_payment", "payments", "charge_payment", "refund_payment", timeout=timeout),
        ],
    )


def order_workflow(timeout: float = 30.0) -> WorkflowDefinition:
    """The same order as a workflow: once the order exists, the stock is reserved and the card
    charged at once (the same participants, steps and deadlines)."""
    steps = order_definition(timeout).steps
    after = {"reserve_inventory": ["create_order"], "charge_payment": ["create_order"]}
    return WorkflowDefinition(
        "order", 1, [attrs.evolve(step, after=after.get(step.name, ())) for step in steps]
    )


def order_with_child(timeout: float = 30.0) -> SagaDefinition:
    """The same order with its stock reservation and charge as a child saga of their own
    (``payment``): the same participants and steps, and one more saga per order (its row, its
    start, its end, its answer to the parent)."""
    create, reserve, charge = order_definition(timeout).steps
    payment = SagaDefinition("payment", 1, [reserve, charge])
    return SagaDefinition("order", 1, [create, Step.child("pay", payment, timeout=timeout)])


#: The definition each style of ``bench.understudy_saga throughput`` runs.
STYLES = {"orchestrated": order_definition, "workflow": order_workflow, "child": order_with_child}


def order_participants(workdir: Path, inventory: type | None = None, **options: Any) -> list[Any]:
    """The order saga's participants, each with its ledger in ``workdir``; ``inventory``
    replaces the inventory participant's class (with ``options``), e.g. by :class:`Delayed`."""
    return [
        ("orders", Orders, {"database": str(workdir / "orders.db")}),
        (
            "inventory",
            inventory or Inventory,
            {"database": str(workdir / "inventory.db"), **options},
        ),
        ("payments", Payments, {"database": str(workdir / "payments.db")}),
    ]


def payload(index: int) -> dict[str, Any]:
    """Saga ``index``'s payload: one in ten is declined at the charge and compensates."""
    return {"order": index, "fail": True} if fails(index) else {"order": index}


def chain_definition(steps: int, timeout: float = 30.0) -> SagaDefinition:
    """``steps`` steps, each answered at once by the :class:`Echo` participant ``echo``."""
    return SagaDefinition(
        f"chain{steps}",
        1,
        [Step(f"s{i}", "echo", "do", "undo", timeout=timeout) for i in range(steps)],
    )
