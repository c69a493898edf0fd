"""The choreographed shop the choreography tests run: orders, inventory and payments, each a
reactor with its own SQLite database, reacting to one another's events (no coordinator).

    order.placed (plain code) -> orders: create the order   -> order.created
    order.created             -> inventory: reserve stock   -> stock.reserved
                                 (Reject "out of stock": order.created.failed)
    stock.reserved            -> payments: charge the card  -> payment.charged
                                 (Reject "card declined", or failing past its tries:
                                  payment.failed, declared)
    payment.charged           -> orders: confirm the order
    order.created.failed      -> orders: cancel the order            (compensation)
    payment.failed            -> inventory: release the stock, orders: cancel the order

Every reaction also writes one row per event it handles into its service's ``effects`` table,
with no unique key on purpose: a reaction applied twice shows as two rows. The classes live in
a module of their own so that a multi-process actor system can import them by name.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from understudy import Understudy
from understudy.actors.handlers import Reject
from understudy.actors.reactions import EventContext, reacts
from understudy.actors.reactor import Reactor
from understudy.chains import Chain
from understudy.definitions import RetryPolicy

SERVICES = ("orders", "inventory", "payments")
STOCK = 10


def _q(db: Any, statement: str) -> str:
    """``statement`` written with ``?`` as ``db`` takes it (psycopg wants ``%s``)."""
    return statement if isinstance(db, sqlite3.Connection) else statement.replace("?", "%s")


def _effect(db: Any, event: EventContext, what: str) -> None:
    db.execute(_q(db, "INSERT INTO effects VALUES (?, ?, ?)"), (event.event_id, what, time.time()))


def _effects_table(db: Any) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS effects (event_id TEXT, what TEXT, at REAL)")


def _attempt(data: dict[str, Any]) -> None:
    """A flaky payment: raise until the file named in the order has ``fail`` lines (each try
    appends one, outside any transaction, so that tries are counted across processes)."""
    path = data.get("flaky")
    if path is None:
        return
    with open(path, "a") as tries:
        tries.write("try\n")
    with open(path) as tries:
        count = len(tries.readlines())
    if count <= int(data.get("fail", 0)):
        raise RuntimeError(f"the card service timed out (try {count})")


class Orders(Reactor):
    def setup(self, db: Any, options: dict[str, Any]) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, status TEXT)")
        _effects_table(db)

    @reacts("order.placed")
    def create(self, event: EventContext, db: Any) -> None:
        db.execute("INSERT INTO orders VALUES (?, 'created')", (event.data["order"],))
        _effect(db, event, "create")
        self.publish("order.created", event.data)

    @reacts("payment.charged")
    def confirm(self, event: EventContext, db: Any) -> None:
        db.execute("UPDATE orders SET status = 'confirmed' WHERE id = ?", (event.data["order"],))
        _effect(db, event, "confirm")

    @reacts("order.created.failed")
    def cancel_unreserved(self, event: EventContext, db: Any) -> None:
        order = event.data["data"]["order"]
        db.execute("UPDATE orders SET status = 'cancelled' WHERE id = ?", (order,))
        _effect(db, event, "cancel")

    @reacts("payment.failed")
    def cancel_unpaid(self, event: EventContext, db: Any) -> None:
        order = event.data["data"]["order"]
        db.execute("UPDATE orders SET status = 'cancelled' WHERE id = ?", (order,))
        _effect(db, event, "cancel")


class Inventory(Reactor):
    def setup(self, db: Any, options: dict[str, Any]) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, qty INTEGER)")
        db.execute(f"INSERT INTO stock VALUES ('A1', {STOCK}) ON CONFLICT (sku) DO NOTHING")
        _effects_table(db)

    @reacts("order.created")
    def reserve(self, event: EventContext, db: Any) -> dict[str, int]:
        qty = event.data["qty"]
        updated = db.execute(
            _q(db, "UPDATE stock SET qty = qty - ? WHERE sku = 'A1' AND qty >= ?"), (qty, qty)
        )
        if updated.rowcount == 0:
            raise Reject("out of stock", data={"asked": qty})
        _effect(db, event, "reserve")
        self.publish("stock.reserved", event.data)
        return {"reserved": qty}

    @reacts("payment.failed")
    def release(self, event: EventContext, db: Any) -> None:
        qty = event.data["data"]["qty"]
        db.execute(_q(db, "UPDATE stock SET qty = qty + ? WHERE sku = 'A1'"), (qty,))
        _effect(db, event, "release")


class Payments(Reactor):
    retry = RetryPolicy(attempts=3, backoff=0.01, max_backoff=0.05)

    def setup(self, db: Any, options: dict[str, Any]) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS charges (id TEXT PRIMARY KEY, amount INTEGER)")
        _effects_table(db)

    @reacts("stock.reserved", on_failure="payment.failed")
    def charge(self, event: EventContext, db: Any) -> None:
        _attempt(event.data)
        if event.data.get("card") == "declined":
            raise Reject("card declined")
        db.execute("INSERT INTO charges VALUES (?, ?)", (event.data["order"], event.data["qty"]))
        _effect(db, event, "charge")
        self.publish("payment.charged", event.data)


def services(tmp_path: Path) -> list[tuple[str, type, dict[str, Any]]]:
    """The three services, each with its database under ``tmp_path``."""
    classes = {"orders": Orders, "inventory": Inventory, "payments": Payments}
    return [(n, classes[n], {"database": str(tmp_path / f"{n}.db")}) for n in SERVICES]


def wait_chain(us: Understudy, correlation_id: str, timeout: float = 120.0) -> Chain:
    """Wait (generously: a busy machine) until the chain has nothing pending; return it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            chain = us.chain(correlation_id)
            if chain.terminal:
                return chain
        except LookupError:
            chain = None
        if time.monotonic() > deadline:
            raise AssertionError(f"chain {correlation_id} still running after {timeout} s: {chain}")
        time.sleep(0.05)


def rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as db:
        return [tuple(row) for row in db.execute(sql).fetchall()]


def effects(tmp_path: Path) -> dict[str, list[tuple[str, str]]]:
    """(event id, what) of every effect each service applied."""
    return {
        name: rows(tmp_path / f"{name}.db", "SELECT event_id, what FROM effects ORDER BY rowid")
        for name in SERVICES
    }


def stock(tmp_path: Path) -> int:
    return int(rows(tmp_path / "inventory.db", "SELECT qty FROM stock")[0][0])


def order_status(tmp_path: Path, order: str) -> str | None:
    found = rows(tmp_path / "orders.db", f"SELECT status FROM orders WHERE id = '{order}'")
    return found[0][0] if found else None


def test_every_service_declares_its_reactions() -> None:
    """The shop's wiring as the tests rely on it: topics and failure topics."""
    assert {"order.placed", "payment.charged", "order.created.failed", "payment.failed"} == set(
        Orders._reactions
    )
    assert "payment.failed" == Payments._reactions["stock.reserved"].on_failure
    assert "order.created.failed" == Inventory._reactions["order.created"].on_failure
