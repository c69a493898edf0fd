"""The demo's order, choreographed: Orders, Inventory and Payments as reactors, each with its
own SQLite file (the same tables as :mod:`demo.participants`), and no coordinator.

    order.placed (the shop)  -> orders: create the order       -> order.created
    order.created            -> inventory: reserve the stock   -> inventory.reserved
                                (Reject "out of stock": inventory.failed)
    inventory.reserved       -> payments: charge the card      -> payment.charged
                                (Reject "card declined": payment.failed)
    payment.charged          -> orders: confirm the order
    inventory.failed         -> orders: cancel the order                   (compensation)
    payment.failed           -> inventory: release the stock, orders: cancel the order

Every reaction writes through ``db``, inside the reactor's ledger transaction, and never guards
against repeats itself: an event applied twice would show in these tables (a second
reservation, a second charge), and the ledger checks would fail, which is the point. A chain
whose correlation id is the order id is one order; it ends completed (confirmed, stock held,
charged once) or compensated (cancelled, stock back, nothing charged).

Classes are top-level in an importable module because the multi-process bases load them by name.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

from demo.participants import DECLINED_SUFFIX
from demo.saga import INVENTORY, ORDERS, PAYMENTS
from understudy.choreography import EventContext, Reactor, Reject, reacts

PLACED = "order.placed"
CREATED = "order.created"
RESERVED = "inventory.reserved"
CHARGED = "payment.charged"
OUT_OF_STOCK = "inventory.failed"
DECLINED = "payment.failed"


def placed_id(order_id: str) -> str:
    """The id of an order's ``order.placed`` event: fixed, so that the shop publishing it again
    (after a crash, or a publish that raised) appends nothing twice."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"understudy-demo:order:{order_id}").hex


#: Seconds between a reactor's looks at the log: short, so that a chain of four hops takes a
#: fraction of a second in a chaos run.
POLL = 0.05


class Orders(Reactor):
    """The order book: created when placed, confirmed once paid, cancelled by a failure."""

    poll_interval = POLL

    def setup(self, db: sqlite3.Connection, options: dict[str, Any]) -> None:
        db.execute(
            "CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, customer TEXT NOT NULL, "
            "sku TEXT NOT NULL, qty INTEGER NOT NULL, amount INTEGER NOT NULL, "
            "status TEXT NOT NULL, created_at REAL NOT NULL, cancelled_at REAL)"
        )

    @reacts(PLACED)
    def create(self, event: EventContext, db: sqlite3.Connection) -> None:
        p = event.data
        db.execute(
            "INSERT INTO orders (id, customer, sku, qty, amount, status, created_at) "
            "VALUES (?, ?, ?, ?, ?, 'created', ?)",
            (p["order_id"], p["customer"], p["sku"], p["qty"], p["amount"], time.time()),
        )
        self.publish(CREATED, p)

    @reacts(CHARGED)
    def confirm(self, event: EventContext, db: sqlite3.Connection) -> None:
        db.execute("UPDATE orders SET status = 'confirmed' WHERE id = ?", (event.data["order_id"],))

    @reacts(OUT_OF_STOCK)
    def cancel_unstocked(self, event: EventContext, db: sqlite3.Connection) -> None:
        self._cancel(event, db)

    @reacts(DECLINED)
    def cancel_unpaid(self, event: EventContext, db: sqlite3.Connection) -> None:
        self._cancel(event, db)

    def _cancel(self, event: EventContext, db: sqlite3.Connection) -> None:
        # A failure event carries the data of the event whose reaction failed.
        db.execute(
            "UPDATE orders SET status = 'cancelled', cancelled_at = ? WHERE id = ?",
            (time.time(), event.data["data"]["order_id"]),
        )


class Inventory(Reactor):
    """Stock per sku and one reservation per order; ``options["stock"]`` is recorded once, so a
    restarted reactor keeps the stock it had."""

    poll_interval = POLL

    def setup(self, db: sqlite3.Connection, options: dict[str, Any]) -> None:
        db.execute(
            "CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, initial INTEGER NOT NULL, "
            "available INTEGER NOT NULL CHECK (available >= 0))"
        )
        db.execute(
            "CREATE TABLE IF NOT EXISTS reservations (id INTEGER PRIMARY KEY, "
            "order_id TEXT NOT NULL, sku TEXT NOT NULL, qty INTEGER NOT NULL, "
            "status TEXT NOT NULL, at REAL NOT NULL)"
        )
        for sku, qty in dict(options.get("stock") or {}).items():
            db.execute(
                "INSERT OR IGNORE INTO stock (sku, initial, available) VALUES (?, ?, ?)",
                (sku, int(qty), int(qty)),
            )

    @reacts(CREATED, on_failure=OUT_OF_STOCK)
    def reserve(self, event: EventContext, db: sqlite3.Connection) -> None:
        p = event.data
        taken = db.execute(
            "UPDATE stock SET available = available - ? WHERE sku = ? AND available >= ?",
            (p["qty"], p["sku"], p["qty"]),
        ).rowcount
        if taken != 1:
            known = db.execute("SELECT 1 FROM stock WHERE sku = ?", (p["sku"],)).fetchone()
            raise Reject("out of stock" if known else f"unknown sku {p['sku']!r}")
        cursor = db.execute(
            "INSERT INTO reservations (order_id, sku, qty, status, at) VALUES (?, ?, ?, 'held', ?)",
            (p["order_id"], p["sku"], p["qty"], time.time()),
        )
        self.publish(RESERVED, {**p, "reservation": cursor.lastrowid})

    @reacts(DECLINED)
    def release(self, event: EventContext, db: sqlite3.Connection) -> None:
        # Undo exactly what the reservation did, as the event that reported it says.
        held = event.data["data"]
        db.execute(
            "UPDATE stock SET available = available + ? WHERE sku = ?", (held["qty"], held["sku"])
        )
        db.execute(
            "UPDATE reservations SET status = 'released' WHERE id = ?", (held["reservation"],)
        )


class Payments(Reactor):
    """One charge per order, and the running total charged to each card."""

    poll_interval = POLL

    def setup(self, db: sqlite3.Connection, options: dict[str, Any]) -> None:
        db.execute(
            "CREATE TABLE IF NOT EXISTS accounts (card TEXT PRIMARY KEY, charged INTEGER NOT NULL)"
        )
        db.execute(
            "CREATE TABLE IF NOT EXISTS charges (id INTEGER PRIMARY KEY, order_id TEXT NOT NULL, "
            "card TEXT NOT NULL, amount INTEGER NOT NULL, status TEXT NOT NULL, at REAL NOT NULL)"
        )
        db.execute(
            "CREATE TABLE IF NOT EXISTS refunds (id INTEGER PRIMARY KEY, charge_id INTEGER NOT "
            "NULL, order_id TEXT NOT NULL, amount INTEGER NOT NULL, at REAL NOT NULL)"
        )

    @reacts(RESERVED, on_failure=DECLINED)
    def charge(self, event: EventContext, db: sqlite3.Connection) -> None:
        p = event.data
        if str(p["card"]).endswith(DECLINED_SUFFIX):
            raise Reject("card declined")
        cursor = db.execute(
            "INSERT INTO charges (order_id, card, amount, status, at) "
            "VALUES (?, ?, ?, 'charged', ?)",
            (p["order_id"], p["card"], p["amount"], time.time()),
        )
        db.execute(
            "INSERT INTO accounts (card, charged) VALUES (?, ?) "
            "ON CONFLICT (card) DO UPDATE SET charged = charged + excluded.charged",
            (p["card"], p["amount"]),
        )
        self.publish(CHARGED, {**p, "charge": cursor.lastrowid})


def services(
    directory: Path, stock: dict[str, int], classes: dict[str, type] | None = None
) -> list[tuple[str, type, dict[str, Any]]]:
    """The three reactors, each with its own SQLite file in ``directory`` (the names and files
    of the orchestrated demo's participants). ``classes`` replaces some of them by name (the
    harness's broken reactors)."""
    chosen = {ORDERS: Orders, INVENTORY: Inventory, PAYMENTS: Payments, **(classes or {})}
    return [
        (ORDERS, chosen[ORDERS], {"database": str(directory / "orders.db")}),
        (
            INVENTORY,
            chosen[INVENTORY],
            {"database": str(directory / "inventory.db"), "stock": stock},
        ),
        (PAYMENTS, chosen[PAYMENTS], {"database": str(directory / "payments.db")}),
    ]
