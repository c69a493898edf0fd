"""The local style's checks: was every order applied whole or not at all, judged from the database?

Like :mod:`demo.check`, it reads nothing but the database (after the workers stopped) and the
workload, which is a pure function of its count and seed: never what the workers reported, which
a kill loses. Each check states what one transaction per order must guarantee across SIGKILLs.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from contextlib import closing
from typing import TYPE_CHECKING, TextIO

import attrs

from demo.check import SHOWN, Check
from demo.local_db import Database, execute
from demo.local_order import DECLINED, OUT_OF_STOCK
from demo.workload import Order

if TYPE_CHECKING:
    from demo.local_workers import PoolStats


@attrs.frozen
class Shop:
    """What the shop's database says."""

    orders: dict[str, tuple[str, int, int]]  # order id -> (sku, qty, amount)
    payments: dict[str, list[tuple[str, int]]]  # order id -> [(card, amount)]
    shelves: dict[str, tuple[int, int]]  # sku -> (initial, available)
    refusals: dict[str, str]  # order id -> reason
    span: float  # first write to last, from the rows' own timestamps


def read_shop(database: Database) -> Shop:
    """Plain SQL on the database; no worker is asked."""
    with closing(database.connect()) as db:
        orders = {
            oid: (sku, qty, amount)
            for oid, sku, qty, amount in execute(db, "SELECT id, sku, qty, amount FROM orders")
        }
        payments: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for oid, card, amount in execute(db, "SELECT order_id, card, amount FROM payments"):
            payments[oid].append((card, amount))
        shelves = {
            sku: (initial, available)
            for sku, initial, available in execute(db, "SELECT sku, initial, available FROM stock")
        }
        refusals = dict(execute(db, "SELECT order_id, reason FROM refusals").fetchall())
        first, last = execute(
            db,
            "SELECT MIN(t), MAX(t) FROM (SELECT created_at AS t FROM orders "
            "UNION ALL SELECT at FROM payments UNION ALL SELECT at FROM refusals) AS times",
        ).fetchone()
    span = (last - first) if first is not None else 0.0
    return Shop(orders, dict(payments), shelves, refusals, span)


@attrs.define
class LocalReport:
    """The checks' verdicts and the facts they were drawn from, printed as the demo's summary."""

    checks: list[Check] = attrs.field(factory=list)
    placed: int = 0
    refused: Counter[str] = attrs.field(factory=Counter)
    total: int = 0
    span: float = 0.0
    database: str = ""
    bad: dict[str, list[str]] = attrs.field(factory=dict)  # check name -> offending items

    @property
    def passed(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def violations(self) -> int:
        """How many things the checks found wrong (an order or a sku each)."""
        return sum(map(len, self.bad.values()))

    def add(self, name: str, bad: list[str], ok_detail: str, what: str) -> None:
        detail = ok_detail if not bad else f"{len(bad)} {what}: {', '.join(bad[:SHOWN])}"
        self.checks.append(Check(name, not bad, detail))
        if bad:
            self.bad[name] = bad

    def print(self, out: TextIO, stats: PoolStats, wall: float) -> None:
        w = out.write
        w(f"summary (read back from the shop's database, {self.database})\n")
        w(f"  orders: {self.total} | placed {self.placed} | refused {sum(self.refused.values())}\n")
        for reason, count in self.refused.most_common():
            w(f"  refused because {reason}: {count}\n")
        rate = self.total / self.span if self.span > 0 else 0.0
        w(f"  throughput: {self.total} orders in {self.span:.2f} s = {rate:.1f} orders/s\n")
        retried = ", ".join(f"{kind} {n}" for kind, n in sorted(stats.retry_outcomes.items()))
        w(
            f"  worker kills: {stats.total_kills} | worker restarts: {stats.restarts} | orders "
            f"retried after a kill: {len(stats.killed)}" + (f" ({retried})" if retried else "")
        )
        w("\n")
        if stats.unexpected:
            w(f"  workers that died unplanned: {len(stats.unexpected)}: {stats.unexpected[0]}\n")
        if stats.errors:
            w(f"  attempts that failed with an error: {len(stats.errors)}; the first:\n")
            w("    " + stats.errors[0].strip().replace("\n", "\n    ") + "\n")
        for check in self.checks:
            w(f"  {'PASS' if check.ok else 'FAIL'}  {check.name}: {check.detail}\n")
        failed = [c for c in self.checks if not c.ok]
        verdict = (
            f"ALL {len(self.checks)} CHECKS PASSED"
            if not failed
            else f"{len(failed)} OF {len(self.checks)} CHECKS FAILED"
        )
        w(f"{verdict} in {wall:.1f} s\n")
        out.flush()


def check_shop(database: Database, orders: list[Order], stock: dict[str, int]) -> LocalReport:
    """Every check, against the database, for the orders the run was given and the stock it
    opened with."""
    shop = read_shop(database)
    wanted = {order.order_id: order for order in orders}
    report = LocalReport(total=len(orders), span=shop.span, database=database.shown)
    report.placed = sum(1 for oid in shop.orders if oid in wanted)
    report.refused.update(reason for oid, reason in shop.refusals.items() if oid not in shop.orders)

    report.add(
        "every order attempted to the end",
        [o.order_id for o in orders if o.order_id not in shop.orders | shop.refusals.keys()]
        + [f"{oid} (not an order of the run)" for oid in shop.orders.keys() - wanted.keys()],
        f"{len(orders)} of {len(orders)} orders placed or refused",
        "orders neither placed nor refused",
    )
    report.add(
        "every order fully applied or left no trace",
        _all_or_nothing(shop, wanted),
        "each placed order has its row and its payment, of its amount and card; no payment "
        "without its order",
        "orders applied in part",
    )
    report.add(
        "stock conserved",
        _stock_errors(shop, stock),
        f"{len(shop.shelves)} skus: initial == on shelf + taken by placed orders",
        "skus off",
    )
    report.add(
        "no double charge",
        [
            f"{oid} charged {len(rows)} times"
            for oid, rows in shop.payments.items()
            if len(rows) > 1
        ],
        f"{sum(map(len, shop.payments.values()))} payments, at most one per order",
        "orders charged more than once",
    )
    report.add(
        "refused orders kept nothing",
        _refusal_errors(shop, wanted),
        f"{report.refused[OUT_OF_STOCK]} out of stock, {report.refused[DECLINED]} declined: "
        "no order row, no payment; no declined card charged",
        "refused orders with a trace",
    )
    report.add(
        "every refusal justified",
        _unjustified(shop, wanted),
        "declined cards only; out of stock only when less than the order's quantity is left",
        "refusals without cause",
    )
    return report


def _all_or_nothing(shop: Shop, wanted: dict[str, Order]) -> list[str]:
    bad = []
    for oid, (sku, qty, amount) in sorted(shop.orders.items()):
        order = wanted.get(oid)
        paid = shop.payments.get(oid, [])
        if order is None:
            continue  # reported by "every order attempted to the end"
        if not paid:
            bad.append(f"{oid} (order row kept without its payment)")
        elif (sku, qty, amount) != (order.sku, order.qty, order.amount) or any(
            row != (order.card, order.amount) for row in paid
        ):
            bad.append(f"{oid} (row {sku} x{qty} = {amount}, payments {paid})")
    bad += [
        f"{oid} (payment without its order)"
        for oid in sorted(shop.payments.keys() - shop.orders.keys())
    ]
    return bad


def _stock_errors(shop: Shop, stock: dict[str, int]) -> list[str]:
    taken: Counter[str] = Counter()
    for sku, qty, _amount in shop.orders.values():
        taken[sku] += qty
    errors = []
    for sku, (initial, available) in sorted(shop.shelves.items()):
        if initial != stock.get(sku) or initial != available + taken[sku]:
            errors.append(
                f"{sku}: initial {initial} (configured {stock.get(sku)}) != on shelf "
                f"{available} + taken by placed orders {taken[sku]}"
            )
    return errors


def _refusal_errors(shop: Shop, wanted: dict[str, Order]) -> list[str]:
    bad = [
        f"{oid} ({reason}, yet {'its order row' if oid in shop.orders else 'a payment'} is kept)"
        for oid, reason in sorted(shop.refusals.items())
        if oid in shop.orders or oid in shop.payments
    ]
    bad += [
        f"{oid} (declined card, yet its order is kept)"
        for oid in sorted(shop.orders)
        if oid in wanted and wanted[oid].declined and oid not in shop.refusals
    ]
    return bad


def _unjustified(shop: Shop, wanted: dict[str, Order]) -> list[str]:
    bad = []
    for oid, reason in sorted(shop.refusals.items()):
        order = wanted.get(oid)
        if order is None:
            bad.append(f"{oid} (not an order of the run)")
        elif reason == DECLINED and not order.declined:
            bad.append(f"{oid} (declined, with a good card)")
        elif reason == OUT_OF_STOCK:
            # Stock only ever goes down in this style: enough left now means enough then.
            left = shop.shelves.get(order.sku, (0, 0))[1]
            if left >= order.qty:
                bad.append(f"{oid} (out of stock, with {left} {order.sku} left for {order.qty})")
        elif reason not in (DECLINED, OUT_OF_STOCK):
            bad.append(f"{oid} (refused: {reason})")
    return bad
