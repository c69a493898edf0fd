"""The ledger check of the choreographed order: did every order end right, judged only from
the reactors' SQLite files and the store's event log?

The same checks as the orchestrated demo's (:mod:`demo.check`), against each order's chain
instead of its saga: a completed chain is an order confirmed, its stock held and its card
charged once for its amount; a compensated one is an order cancelled with its stock back on
the shelf and nothing charged. Stock is conserved and nobody is charged twice, whatever was
killed on the way.
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

from demo.check import (
    Ledgers,
    Report,
    _account_errors,
    _refund_errors,
    _stock_errors,
    read_ledgers,
)
from demo.workload import Order
from understudy.chains import Chain, read_chain
from understudy.persistence import open_store, redact
from understudy.persistence.base import COMPENSATED, COMPLETED

#: The checks the chaos harness's chain rules already make (every chain ended, completed or
#: compensated): left out of the scenario's domain invariants, kept in the demo's printout.
COVERED = ("every order is terminal", "every chain completed or fully compensated")


def read_chains(store: str, orders: list[Order]) -> dict[str, Chain]:
    """Each order's chain (its correlation id is the order id), as the store holds it now."""
    with closing(open_store(store, read_only=True)) as opened:
        found = {o.order_id: read_chain(opened, o.order_id) for o in orders}
    return {order_id: chain for order_id, chain in found.items() if chain is not None}


def check_choreography(
    directory: Path, orders: list[Order], stock: dict[str, int], store: str | None = None
) -> Report:
    """Every check against the reactors' files in ``directory`` and the store (default
    ``sagas.db`` there), for the orders the run placed."""
    location = store or str(directory / "sagas.db")
    chains = read_chains(location, orders)
    report = Report()
    report.store = redact(location)
    report.statuses.update(chain.status for chain in chains.values())
    if chains:
        report.span = max(c.last_at for c in chains.values()) - min(
            c.started_at for c in chains.values()
        )
    for order_id, chain in sorted(chains.items()):
        if chain.status == COMPENSATED:
            for _event, delivery in chain.failures:
                report.reasons[delivery.reason or "no reason recorded"] += 1
        elif chain.status not in (COMPLETED, COMPENSATED):
            report.attention.append((order_id, "; ".join(chain.outstanding) or chain.status))
    status = {order_id: chain.status for order_id, chain in chains.items()}
    # A chain worth reading: a compensated one shows the failure event and its compensation.
    compensated = sorted(o for o, s in status.items() if s == COMPENSATED)
    report.example = (compensated or sorted(status) or [""])[0]
    ledgers = read_ledgers(directory)
    report.add(
        "every order is terminal",
        [o.order_id for o in orders if o.order_id not in chains or not chains[o.order_id].terminal],
        f"{len(orders)} of {len(orders)} chains ended",
        "orders not terminal",
    )
    report.add(
        "every chain completed or fully compensated",
        [f"{order_id} ({reason})" for order_id, reason in report.attention],
        f"completed {report.statuses[COMPLETED]}, compensated {report.statuses[COMPENSATED]}, "
        "failed 0",
        "failed, needs attention",
    )
    report.add(
        "stock conserved",
        _stock_errors(ledgers, status, stock, (COMPLETED,)),
        f"{len(ledgers.shelves)} skus: initial == on shelf + held by completed orders",
        "skus off",
    )
    report.add(
        "no double charge",
        [
            f"{oid} charged {len(rows)} times"
            for oid, rows in ledgers.charges.items()
            if len(rows) > 1
        ],
        f"{sum(map(len, ledgers.charges.values()))} charges, at most one per order",
        "orders charged more than once",
    )
    report.add(
        "no refund without a charge",
        _refund_errors(ledgers),
        f"{sum(map(len, ledgers.refunds.values()))} refund(s), each of one charge of its order",
        "bad refunds",
    )
    undone, applied = order_errors(ledgers, status, orders)
    report.add(
        "compensated orders fully undone",
        undone,
        "no net charge, no held stock, order cancelled",
        "orders not undone",
    )
    report.add(
        "completed orders fully applied",
        applied,
        "charged once for the right amount, stock held, order confirmed, no declined card",
        "orders incomplete",
    )
    report.add(
        "card balances match charges",
        _account_errors(ledgers),
        f"{len(ledgers.accounts)} card account(s) equal their net charges",
        "cards off",
    )
    return report


def order_errors(
    ledgers: Ledgers, status: dict[str, str], orders: list[Order]
) -> tuple[list[str], list[str]]:
    """Orders of compensated chains not fully undone, and of completed ones not fully applied.
    Every chain begins by creating its order, so a compensated one has an order to cancel."""
    undone, applied = [], []
    for order in orders:
        oid = order.order_id
        net, held, row = ledgers.net_charge(oid), ledgers.held.get(oid, []), ledgers.orders.get(oid)
        facts = f"{oid} (net charge {net} of {order.amount}, held {held}, order {row})"
        if status.get(oid) == COMPENSATED and (net or held or row != "cancelled"):
            undone.append(facts)
        elif status.get(oid) == COMPLETED and (
            net != order.amount
            or order.declined
            or held != [(order.sku, order.qty)]
            or row != "confirmed"
        ):
            applied.append(facts)
    return undone, applied
