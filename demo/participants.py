"""The demo's participants: Orders, Inventory and Payments, each with a real ledger.

Each participant writes its business effect through the ``db`` connection understudy hands to
the handler. That connection is inside the transaction that also records the idempotency key, so
the effect and the key commit together: a request repeated after a crash returns the recorded
outcome and never applies twice. Handlers therefore never commit, and never guard against
repeats themselves: if understudy ever delivered a step twice, the duplicate would show in these
tables and the demo's ledger checks would fail, which is the point of the demo.

Classes are top-level in an importable module because the multi-process bases load them by name.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from understudy import Participant, Reject, StepContext, action, compensation

#: A card whose number ends like this is declined by the payment provider.
DECLINED_SUFFIX = "0002"


class Orders(Participant):
    """The order book: an order is ``created`` by the saga, ``cancelled`` by its compensation."""

    def setup(self, db: sqlite3.Connection, options: dict[str, Any]) -> None:
        db.execute(
            "CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, customer TEXT NOT NULL, "
            "sku TEXT NOT NULL, qty INTEGER NOT NULL, amount INTEGER NOT NULL, "
            "status TEXT NOT NULL, created_at REAL NOT NULL, cancelled_at REAL)"
        )

    @action("create")
    def create(self, step: StepContext, db: sqlite3.Connection) -> dict[str, Any]:
        p = step.payload
        db.execute(
            "INSERT INTO orders (id, customer, sku, qty, amount, status, created_at) "
            "VALUES (?, ?, ?, ?, ?, 'created', ?)",
            (p["order_id"], p["customer"], p["sku"], p["qty"], p["amount"], time.time()),
        )
        return {"order": p["order_id"]}

    @compensation("cancel")
    def cancel(self, step: StepContext, db: sqlite3.Connection) -> None:
        db.execute(
            "UPDATE orders SET status = 'cancelled', cancelled_at = ? WHERE id = ?",
            (time.time(), step.forward_result["order"]),
        )


class Inventory(Participant):
    """Stock per sku, and one reservation per order that holds part of it.

    ``options["stock"]`` maps sku to its initial quantity; it is recorded once, so a restarted
    participant keeps the stock it had instead of refilling the shelves.
    """

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

    @action("reserve")
    def reserve(self, step: StepContext, db: sqlite3.Connection) -> dict[str, Any]:
        p = step.payload
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
        return {"reservation": cursor.lastrowid, "sku": p["sku"], "qty": p["qty"]}

    @compensation("release")
    def release(self, step: StepContext, db: sqlite3.Connection) -> None:
        # Undo exactly what the forward action did, as it recorded it (not the payload).
        held = step.forward_result
        db.execute(
            "UPDATE stock SET available = available + ? WHERE sku = ?", (held["qty"], held["sku"])
        )
        db.execute(
            "UPDATE reservations SET status = 'released' WHERE id = ?", (held["reservation"],)
        )


class Payments(Participant):
    """Charges and refunds per order, and the running total charged to each card."""

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

    @action("charge")
    def charge(self, step: StepContext, db: sqlite3.Connection) -> dict[str, Any]:
        p = step.payload
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
        return {"charge": cursor.lastrowid, "card": p["card"], "amount": p["amount"]}

    @compensation("refund")
    def refund(self, step: StepContext, db: sqlite3.Connection) -> None:
        charged = step.forward_result
        db.execute(
            "INSERT INTO refunds (charge_id, order_id, amount, at) VALUES (?, ?, ?, ?)",
            (charged["charge"], step.saga_id, charged["amount"], time.time()),
        )
        db.execute("UPDATE charges SET status = 'refunded' WHERE id = ?", (charged["charge"],))
        db.execute(
            "UPDATE accounts SET charged = charged - ? WHERE card = ?",
            (charged["amount"], charged["card"]),
        )
