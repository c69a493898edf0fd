"""The ledger check: did every order end right, judged only from what is on disk?

It reads the participants' own SQLite files and the saga store after the runtime has shut down,
never the coordinator's memory or the replies the run received: those are exactly what a crash
loses, and a check that trusted them would prove nothing. Each check states an invariant a saga
coordinator must keep across crashes; any failure makes ``python -m demo`` exit with status 1.
"""

from __future__ import annotations

import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import attrs

from demo.workload import Order
from understudy import COMPENSATED, COMPLETED, FAILED
from understudy.persistence import open_store, redact

if TYPE_CHECKING:
    from demo.run import RunStats

SHOWN = 5  # offending orders listed per failed check
TERMINAL = (COMPLETED, COMPENSATED, FAILED)


@attrs.frozen
class Check:
    name: str
    ok: bool
    detail: str


@attrs.define
class Report:
    """The checks' verdicts and the facts they were drawn from, printed as the summary."""

    checks: list[Check] = attrs.field(factory=list)
    statuses: Counter[str] = attrs.field(factory=Counter)
    reasons: Counter[str] = attrs.field(factory=Counter)
    attention: list[tuple[str, str]] = attrs.field(factory=list)
    span: float = 0.0  # first saga created to last saga terminal, from the store
    resumed: list[str] = attrs.field(factory=list)  # sagas a new host incarnation took over
    store: str = ""
    example: str = ""  # a resumed saga worth reading, compensated if one was

    @property
    def passed(self) -> bool:
        return all(check.ok for check in self.checks)

    def add(self, name: str, bad: list[str], ok_detail: str, what: str) -> None:
        detail = ok_detail if not bad else f"{len(bad)} {what}: {', '.join(bad[:SHOWN])}"
        self.checks.append(Check(name, not bad, detail))

    def print(self, out: TextIO, stats: RunStats, wall: float) -> None:
        total = sum(self.statuses.values())
        w = out.write
        w("summary (read back from the participants' SQLite files and the saga store)\n")
        w(f"  sagas: {total} | " + " | ".join(f"{s} {n}" for s, n in sorted(self.statuses.items())))
        w("\n")
        for reason, count in self.reasons.most_common():
            w(f"  compensated because {reason}: {count}\n")
        w(f"  failed, needs attention: {len(self.attention)}\n")
        for saga_id, reason in self.attention:
            w(f"    {saga_id}: {reason}\n")
        rate = total / self.span if self.span > 0 else 0.0
        w(f"  throughput: {total} sagas in {self.span:.2f} s = {rate:.1f} sagas/s\n")
        w(
            f"  host kills: {stats.kills} | host restarts observed: {stats.restarts_observed} "
            f"(coordinator counted {stats.coordinator_restarts}) | starts resent: "
            f"{stats.resent}\n"
        )
        if stats.kills < stats.planned_kills:
            w(
                f"  only {stats.kills} of {stats.planned_kills} planned kills happened: the run "
                "ended first (each kill waits until the last killed host is replaced)\n"
            )
        if stats.rejected:
            first, reason = next(iter(stats.rejected.items()))
            w(f"  starts refused (then resent): {len(stats.rejected)}, e.g. {first}: {reason}\n")
        if stats.gave_up:
            w("  the run stopped waiting: sagas were still unfinished when nothing moved\n")
        if self.resumed:
            w(
                f"  sagas resumed by a restarted host: {len(self.resumed)}; see one with\n"
                f"    understudy show {self.store} {self.example}\n"
            )
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


@attrs.frozen
class Ledgers:
    """What the participants' files say, keyed by order id."""

    orders: dict[str, str]  # order id -> status
    shelves: dict[str, tuple[int, int]]  # sku -> (initial, available)
    held: dict[str, list[tuple[str, int]]]  # order id -> [(sku, qty)] still reserved
    charges: dict[str, list[tuple[int, str, int]]]  # order id -> [(charge id, card, amount)]
    refunds: dict[str, list[tuple[int, int]]]  # order id -> [(charge id, amount)]
    accounts: dict[str, int]  # card -> total charged

    def net_charge(self, order_id: str) -> int:
        charged = sum(amount for _id, _card, amount in self.charges.get(order_id, []))
        return charged - sum(amount for _id, amount in self.refunds.get(order_id, []))


@contextmanager
def _db(path: Path) -> Iterator[sqlite3.Connection]:
    if not path.exists():
        raise FileNotFoundError(f"ledger {path} does not exist: the participant never started")
    with closing(sqlite3.connect(path)) as db:
        yield db


def _per_order(db: sqlite3.Connection, sql: str) -> dict[str, list[Any]]:
    rows: dict[str, list[Any]] = defaultdict(list)
    for order_id, *rest in db.execute(sql):
        rows[order_id].append(tuple(rest))
    return dict(rows)


def read_ledgers(directory: Path) -> Ledgers:
    """Read every participant's tables (plain SQL on their files; no actor is asked)."""
    with _db(directory / "orders.db") as db:
        orders = dict(db.execute("SELECT id, status FROM orders").fetchall())
    with _db(directory / "inventory.db") as db:
        shelves = {
            sku: (initial, available)
            for sku, initial, available in db.execute("SELECT sku, initial, available FROM stock")
        }
        held = _per_order(db, "SELECT order_id, sku, qty FROM reservations WHERE status = 'held'")
    with _db(directory / "payments.db") as db:
        charges = _per_order(db, "SELECT order_id, id, card, amount FROM charges")
        refunds = _per_order(db, "SELECT order_id, charge_id, amount FROM refunds")
        accounts = dict(db.execute("SELECT card, charged FROM accounts").fetchall())
    return Ledgers(orders, shelves, held, charges, refunds, accounts)


def check_ledgers(
    directory: Path,
    orders: list[Order],
    stock: dict[str, int],
    holding: tuple[str, ...] = (COMPLETED,),
    store: str | None = None,
) -> Report:
    """Run every check against the files in ``directory`` for the orders the run submitted.
    Stock may be held by orders in a ``holding`` status: completed ones, and under injected
    faults also failed ones (parked with their compensations listed as outstanding). The saga
    store is ``store`` (a location), by default ``sagas.db`` in ``directory``."""
    report = Report()
    location = store or str(directory / "sagas.db")
    with closing(open_store(location, read_only=True)) as opened:
        records = {r.saga_id: r for r in opened.list_sagas(limit=len(orders) + 1000)}
    if records:
        last = max(r.updated_at for r in records.values())
        report.span = last - min(r.created_at for r in records.values())
    report.statuses.update(r.status for r in records.values())
    report.store = redact(location)
    report.resumed = sorted(r.saga_id for r in records.values() if r.incarnation > 1)
    compensated = [sid for sid in report.resumed if records[sid].status == COMPENSATED]
    report.example = (compensated or report.resumed or [""])[0]
    for r in records.values():
        if r.status == COMPENSATED:
            report.reasons[_short(r.reason)] += 1
        elif r.status == FAILED:
            report.attention.append((r.saga_id, r.reason or "no reason recorded"))
    status = {o.order_id: records[o.order_id].status for o in orders if o.order_id in records}
    ledgers = read_ledgers(directory)

    report.add(
        "every order is terminal",
        [o.order_id for o in orders if status.get(o.order_id) not in TERMINAL],
        f"{len(orders)} of {len(orders)} sagas ended",
        "orders not terminal",
    )
    report.add(
        "every saga completed or fully compensated",
        [f"{sid} ({reason})" for sid, reason in report.attention],
        f"completed {report.statuses[COMPLETED]}, compensated {report.statuses[COMPENSATED]}, "
        "failed 0",
        "failed, needs attention",
    )
    report.add(
        "stock conserved",
        _stock_errors(ledgers, status, stock, holding),
        f"{len(ledgers.shelves)} skus: initial == on shelf + held by "
        + " or ".join(f"{s} orders" for s in holding),
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
    undone, applied = _order_errors(ledgers, status, orders)
    report.add(
        "compensated orders fully undone",
        undone,
        "no net charge, no held stock, order cancelled",
        "orders not undone",
    )
    report.add(
        "completed orders fully applied",
        applied,
        "charged once for the right amount, stock held, order created, no declined card",
        "orders incomplete",
    )
    report.add(
        "card balances match charges",
        _account_errors(ledgers),
        f"{len(ledgers.accounts)} card account(s) equal their net charges",
        "cards off",
    )
    return report


def _stock_errors(
    ledgers: Ledgers, status: dict[str, str], stock: dict[str, int], holding: tuple[str, ...]
) -> list[str]:
    taken: Counter[str] = Counter()
    for order_id, rows in ledgers.held.items():
        if status.get(order_id) in holding:
            for sku, qty in rows:
                taken[sku] += qty
    errors = []
    for sku, (initial, available) in sorted(ledgers.shelves.items()):
        if initial != available + taken[sku] or initial != stock.get(sku):
            errors.append(
                f"{sku}: initial {initial} (configured {stock.get(sku)}) != on shelf "
                f"{available} + held by {'/'.join(holding)} orders {taken[sku]}"
            )
    return errors


def _refund_errors(ledgers: Ledgers) -> list[str]:
    owner = {cid: oid for oid, rows in ledgers.charges.items() for cid, _card, _amount in rows}
    times = Counter(cid for rows in ledgers.refunds.values() for cid, _amount in rows)
    return [
        f"{oid} refund of charge {cid}"
        for oid, rows in ledgers.refunds.items()
        for cid, _amount in rows
        if owner.get(cid) != oid or times[cid] > 1
    ]


def _order_errors(
    ledgers: Ledgers, status: dict[str, str], orders: list[Order]
) -> tuple[list[str], list[str]]:
    undone, applied = [], []
    for order in orders:
        oid = order.order_id
        net, held, row = ledgers.net_charge(oid), ledgers.held.get(oid, []), ledgers.orders.get(oid)
        facts = f"{oid} (net charge {net} of {order.amount}, held {held}, order {row})"
        if status.get(oid) == COMPENSATED:
            # An order that was never created has nothing to cancel; one that was must be.
            if net or held or row not in (None, "cancelled"):
                undone.append(facts)
        elif status.get(oid) == COMPLETED and (
            net != order.amount
            or order.declined
            or held != [(order.sku, order.qty)]
            or row != "created"
        ):
            applied.append(facts)
    return undone, applied


def _account_errors(ledgers: Ledgers) -> list[str]:
    card_of = {cid: card for rows in ledgers.charges.values() for cid, card, _amount in rows}
    net: Counter[str] = Counter()
    for charged in ledgers.charges.values():
        for _cid, card, amount in charged:
            net[card] += amount
    for refunded in ledgers.refunds.values():
        for cid, amount in refunded:
            net[card_of.get(cid, "?")] -= amount
    cards = set(net) | set(ledgers.accounts)
    return [
        f"{card}: balance {ledgers.accounts.get(card, 0)} != net charges {net[card]}"
        for card in sorted(cards)
        if ledgers.accounts.get(card, 0) != net[card]
    ]


def _short(reason: str | None) -> str:
    """The business cause of a compensation, without the saga's step wording around it."""
    if not reason:
        return "no reason recorded"
    return reason.rsplit(": ", 1)[-1] if "rejected" in reason else reason
