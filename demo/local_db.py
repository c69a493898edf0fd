"""The one database of the demo's local style: orders, stock and payments side by side.

``--style local`` keeps everything an order writes in one database, so that one transaction can
hold it (the seed's ``Ecto.Multi``). That database is a SQLite file, or a PostgreSQL database
when ``--store postgresql://...`` names one: in this style the store *is* the shop's database.
The same SQL runs on both; :func:`execute` turns SQLite's ``?`` placeholders into psycopg's
``%s``.

Tables:

- ``orders``: one row per order that was placed, keyed by the order id. The key is what makes a
  retry safe: an order whose transaction committed before its worker died is recognised by its
  row, and not placed twice;
- ``stock``: per sku, what was there at the start and what is left (never below zero);
- ``payments``: the charge of each placed order. Its own generated key, not the order id, so
  that a payment recorded twice would show (and fail the check) instead of being refused;
- ``refusals``: the orders refused for a business reason (out of stock, card declined), each
  written in a transaction of its own after the order's was rolled back, so that the check can
  tell from the database alone that every order was attempted to the end.
"""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import attrs

from understudy.persistence import POSTGRES_SCHEMES, redact

#: The demo's tables, in the order they are created.
TABLES = ("orders", "stock", "payments", "refusals")
#: How long a SQLite connection waits for another one's write lock before it gives up. Workers
#: take turns at the write lock, and a killed one releases it with its process.
BUSY_TIMEOUT = 60.0

_SCHEMA = (
    "CREATE TABLE orders (id TEXT PRIMARY KEY, customer TEXT NOT NULL, sku TEXT NOT NULL, "
    "qty INTEGER NOT NULL, amount INTEGER NOT NULL, created_at {time} NOT NULL)",
    "CREATE TABLE stock (sku TEXT PRIMARY KEY, initial INTEGER NOT NULL, "
    "available INTEGER NOT NULL CHECK (available >= 0))",
    "CREATE TABLE payments (id {serial} PRIMARY KEY, order_id TEXT NOT NULL, "
    "card TEXT NOT NULL, amount INTEGER NOT NULL, at {time} NOT NULL)",
    "CREATE TABLE refusals (order_id TEXT PRIMARY KEY, reason TEXT NOT NULL, at {time} NOT NULL)",
)
_TYPES = {
    "sqlite": {"time": "REAL", "serial": "INTEGER"},
    # REAL is a 4-byte float in PostgreSQL: far too coarse for a timestamp.
    "postgres": {"time": "DOUBLE PRECISION", "serial": "BIGINT GENERATED ALWAYS AS IDENTITY"},
}
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class NotEmpty(Exception):
    """The database already holds the demo's tables: the checks need a database of their own."""


@attrs.frozen
class Database:
    """Where the local style's tables live: a SQLite file path or a ``postgresql://`` URL.

    ``schema`` (PostgreSQL only) puts the tables in a schema of their own, so that each run of
    the crash campaign starts from empty tables in one database."""

    location: str
    schema: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.schema is not None:
            if not self.postgres:
                raise ValueError("a schema is for a PostgreSQL database, not a SQLite file")
            if not _SCHEMA_NAME.match(self.schema):
                raise ValueError(f"schema name {self.schema!r}: use lower-case letters, digits, _")

    @property
    def postgres(self) -> bool:
        return self.location.startswith(POSTGRES_SCHEMES)

    @property
    def shown(self) -> str:
        """The location as it may be printed: no user, no password."""
        where = redact(self.location)
        return f"{where} (schema {self.schema})" if self.schema else where

    def connect(self) -> Any:
        """A connection outside any transaction, so that ``Local.run`` begins and commits its
        own: SQLite in autocommit mode (``isolation_level=None``), psycopg with
        ``autocommit=True``."""
        if not self.postgres:
            return sqlite3.connect(self.location, isolation_level=None, timeout=BUSY_TIMEOUT)
        import psycopg  # only the PostgreSQL runs need it installed

        options = f"-c search_path={self.schema}" if self.schema else ""
        return psycopg.connect(self.location, autocommit=True, options=options)

    def create(self, stock: dict[str, int]) -> None:
        """Create the tables and fill the shelves with ``stock``; :class:`NotEmpty` when any of
        the tables exists already (in the campaign's own schema: that schema is made anew)."""
        kind = "postgres" if self.postgres else "sqlite"
        with closing(self.connect()) as db:
            if self.schema:
                execute(db, f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
                execute(db, f"CREATE SCHEMA {self.schema}")
            found = [table for table in TABLES if _exists(db, table)]
            if found:
                raise NotEmpty(
                    f"{self.shown} already holds table(s) {', '.join(found)}; the local style "
                    "checks its orders against tables of its own: give it an empty database"
                )
            if kind == "sqlite":
                # WAL: readers never wait for the writer, and a commit is one append and one
                # fsync. It stays the file's mode, for every connection the workers open.
                execute(db, "PRAGMA journal_mode=WAL")
            for statement in _SCHEMA:
                execute(db, statement.format(**_TYPES[kind]))
            for sku, qty in sorted(stock.items()):
                execute(db, "INSERT INTO stock VALUES (?, ?, ?)", (sku, qty, qty))

    def drop_schema(self) -> None:
        """Drop the campaign run's schema (PostgreSQL), once its checks passed."""
        if self.schema:
            with closing(self.connect()) as db:
                execute(db, f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")


def default_location(directory: Path) -> str:
    """The SQLite file of the local style in the demo's data directory."""
    return str(directory / "shop.db")


def execute(db: Any, sql: str, params: tuple[Any, ...] = ()) -> Any:
    """Run ``sql`` (written with SQLite's ``?`` placeholders) on either kind of connection and
    return its cursor."""
    if isinstance(db, sqlite3.Connection):
        return db.execute(sql, params)
    return db.execute(sql.replace("?", "%s"), params)


def _exists(db: Any, table: str) -> bool:
    if isinstance(db, sqlite3.Connection):
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    else:
        # to_regclass follows the search_path: the campaign's schema, or the default one.
        sql = "SELECT 1 WHERE to_regclass(?) IS NOT NULL"
    return execute(db, sql, (table,)).fetchone() is not None
