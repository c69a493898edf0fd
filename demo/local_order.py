"""One order as one local transaction: the seed's ``Ecto.Multi``, in understudy's ``Local``.

Create the order, take its stock (refused when there is not enough), record its payment
(refused for a declined card): three named steps in one transaction on the shop's database, so
that a refusal or a crash at any point keeps none of them. :func:`place` runs it and tells what
became of the order.

A ``hook(point)`` is called at each point of the transaction where the crash tests kill the
process (:data:`POINTS`); the demo's own order passes one that does nothing.

:data:`VARIANTS` also holds a deliberately broken order, ``autocommit``: the same steps, each
committed on its own, as code without a transaction would run them. It exists so that the
tests can show the checks catch what the transaction prevents (tests/test_local_chaos.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from demo.local_db import execute
from demo.workload import Order
from understudy.local import Local, LocalStepFailed, StepFunction

#: Where a crash test may kill a worker during one attempt at an order, in the order they come:
#: inside the transaction before any write, after each step (after the last one: before the
#: COMMIT), during the COMMIT, once it committed (before the worker reports it), and after a
#: refused order's transaction rolled back (before its refusal is recorded).
POINTS = (
    "begun",
    "after_order",
    "after_stock",
    "after_payment",
    "in_commit",
    "after_commit",
    "before_refusal",
)
#: The outcomes of one attempt: placed now, found placed by an earlier attempt, refused.
PLACED, ALREADY, REFUSED = "placed", "already placed", "refused"
OUT_OF_STOCK, DECLINED = "out of stock", "card declined"

Hook = Callable[[str], None]


def no_hook(point: str) -> None:
    """The hook of a run without crash points."""


class Refused(Exception):
    """A business refusal: the order is not placed, and nothing of it is kept."""

    reason = "refused"


class OutOfStock(Refused):
    reason = OUT_OF_STOCK


class CardDeclined(Refused):
    reason = DECLINED


class AlreadyPlaced(Exception):
    """The order's row exists: an earlier attempt committed it (its worker may have died before
    it could say so). Raised in the first step, so the retry writes nothing."""


@attrs.frozen
class Outcome:
    kind: str  # PLACED, ALREADY or REFUSED
    reason: str = ""  # why it was refused


def steps(order: Order, hook: Hook) -> list[tuple[str, StepFunction]]:
    """The order's steps, by name, each ``fn(db, done)`` as :class:`Local` runs them."""

    def insert_order(db: Any, done: Mapping[str, Any]) -> dict[str, Any]:
        hook("begun")
        # The order id is the row's key: the transaction of a retry finds the row of an attempt
        # that committed, and stops here instead of placing the order a second time.
        inserted = execute(
            db,
            "INSERT INTO orders (id, customer, sku, qty, amount, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            (order.order_id, order.customer, order.sku, order.qty, order.amount, time.time()),
        )
        if inserted.rowcount == 0:
            raise AlreadyPlaced(order.order_id)
        hook("after_order")
        return {"id": order.order_id, "sku": order.sku, "qty": order.qty, "total": order.amount}

    def take_stock(db: Any, done: Mapping[str, Any]) -> dict[str, Any]:
        placed = done["order"]
        taken = execute(
            db,
            "UPDATE stock SET available = available - ? WHERE sku = ? AND available >= ?",
            (placed["qty"], placed["sku"], placed["qty"]),
        )
        if taken.rowcount != 1:
            raise OutOfStock(f"not enough {placed['sku']} for {placed['id']}")
        hook("after_stock")
        return {"sku": placed["sku"], "qty": placed["qty"]}

    def record_payment(db: Any, done: Mapping[str, Any]) -> dict[str, Any]:
        placed = done["order"]
        if order.declined:
            raise CardDeclined(f"card of {placed['id']} declined")
        execute(
            db,
            "INSERT INTO payments (order_id, card, amount, at) VALUES (?, ?, ?, ?)",
            (placed["id"], order.card, placed["total"], time.time()),
        )
        hook("after_payment")  # the last step: the COMMIT comes next
        return {"amount": placed["total"]}

    return [("order", insert_order), ("stock", take_stock), ("payment", record_payment)]


def run_local(db: Any, order: Order, hook: Hook) -> dict[str, Any]:
    """The order as it should be: one transaction, every step or none."""
    transaction = Local()
    for name, fn in steps(order, hook):
        transaction = transaction.step(name, fn)
    return transaction.run(db)


def run_autocommit(db: Any, order: Order, hook: Hook) -> dict[str, Any]:
    """BROKEN ON PURPOSE: the same steps, each committed as soon as it ran (a transaction per
    step), as code without one transaction would. A refusal or a crash after the first step
    leaves what the earlier steps wrote; the checks must catch it."""
    results: dict[str, Any] = {}
    for name, fn in steps(order, hook):

        def alone(db: Any, done: Mapping[str, Any], fn: StepFunction = fn) -> Any:
            return fn(db, results)  # the earlier steps' results, committed already

        results[name] = Local().step(name, alone).run(db)[name]
    return results


#: How an order may run: ``local`` is the demo's; ``autocommit`` is the broken one.
VARIANTS: dict[str, Callable[[Any, Order, Hook], dict[str, Any]]] = {
    "local": run_local,
    "autocommit": run_autocommit,
}


def place(db: Any, order: Order, hook: Hook = no_hook, variant: str = "local") -> Outcome:
    """One attempt at ``order`` on ``db``: placed whole, found placed already, or refused (the
    refusal recorded in a transaction of its own). Any other failure is raised as it came."""
    try:
        VARIANTS[variant](db, order, hook)
    except LocalStepFailed as failed:
        cause = failed.__cause__
        if isinstance(cause, AlreadyPlaced):
            return Outcome(ALREADY)
        if not isinstance(cause, Refused):
            raise
        hook("before_refusal")
        # Written after the order's transaction rolled back, not in it (a failed transaction
        # keeps nothing). A crash before this line leaves no refusal, and the retry refuses the
        # order again: stock only ever goes down and a declined card stays declined.
        execute(
            db,
            "INSERT INTO refusals (order_id, reason, at) VALUES (?, ?, ?) "
            "ON CONFLICT (order_id) DO NOTHING",
            (order.order_id, cause.reason, time.time()),
        )
        return Outcome(REFUSED, cause.reason)
    hook("after_commit")
    return Outcome(PLACED)
