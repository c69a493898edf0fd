"""Fixtures: real actor systems (in-process and multi-process), a fresh SQLite file per test."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from participants import Recorder

from understudy import RetryPolicy, SagaDefinition, Step, Understudy
from understudy.persistence import open_store

pytest_plugins = ["pytester", "pg"]
BASES = ["simpleSystemBase", "multiprocTCPBase"]
STORES = ["sqlite", "postgres"]
PARTICIPANTS = ("orders", "inventory", "payments")

FAST = RetryPolicy(attempts=3, backoff=0.01, max_backoff=0.05)


def order_definition(timeout: float = 5.0, **overrides: Any) -> SagaDefinition:
    """The seed's order saga: create order, reserve inventory, charge payment."""
    steps = [
        Step(
            "create",
            "orders",
            "create",
            "cancel",
            retry=FAST,
            compensation_retry=FAST,
            timeout=timeout,
        ),
        Step(
            "reserve",
            "inventory",
            "reserve",
            "release",
            retry=FAST,
            compensation_retry=FAST,
            timeout=timeout,
        ),
        Step(
            "charge",
            "payments",
            "charge",
            "refund",
            retry=FAST,
            compensation_retry=FAST,
            timeout=timeout,
        ),
    ]
    return SagaDefinition("order", 1, steps, **overrides)


@pytest.fixture(params=BASES)
def base(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def recorders(tmp_path: Path) -> list[tuple[str, type, dict[str, Any]]]:
    """A Recorder participant for each name in PARTICIPANTS, each with its ledger under
    ``tmp_path``."""
    return [(name, Recorder, {"database": str(tmp_path / f"{name}.db")}) for name in PARTICIPANTS]


def start_runtime(
    tmp_path: Path,
    definitions: Any = None,
    participants: Any = None,
    store: str | Path | None = None,
    **options: Any,
) -> Understudy:
    """An understudy runtime over ``store`` (default ``tmp_path / "sagas.db"``), with the order
    saga and Recorder participants unless told otherwise; the caller shuts it down."""
    return Understudy.start(
        tmp_path / "sagas.db" if store is None else store,
        definitions or [order_definition()],
        recorders(tmp_path) if participants is None else participants,
        **options,
    )


@pytest.fixture
def saga_store(tmp_path: Path) -> str:
    """The saga store of a test: a SQLite file under ``tmp_path``. A module whose tests run on
    every backend overrides it with a fixture parametrised over :data:`STORES` that returns
    :func:`store_location`."""
    return str(tmp_path / "sagas.db")


def store_location(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The saga store of ``kind`` (one of :data:`STORES`): a SQLite file under ``tmp_path``, or
    a fresh database on the test PostgreSQL server."""
    if kind == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return str(tmp_path / "sagas.db")


@pytest.fixture
def start(tmp_path: Path, base: str, saga_store: str) -> Iterator[Callable[..., Understudy]]:
    """Start runtimes with :func:`start_runtime` on the parametrised base and store; shut
    down after."""
    running: list[Understudy] = []

    def _start(definitions: Any = None, participants: Any = None, **options: Any) -> Understudy:
        options.setdefault("base", base)
        options.setdefault("store", saga_store)
        runtime = start_runtime(tmp_path, definitions, participants, **options)
        running.append(runtime)
        return runtime

    yield _start
    for runtime in running:
        runtime.shutdown()


def stored(location: str, saga_id: str) -> tuple[Any, list[Any]]:
    """The saga's row (or None) and its timeline, read from the store at ``location``."""
    with closing(open_store(location, read_only=True)) as store:
        return store.get(saga_id), store.events(saga_id)


def effects(path: Path) -> list[tuple[str, str, str]]:
    """(saga_id, step, kind) of every effect a Recorder applied, in the order applied."""
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT saga_id, step, kind FROM effects ORDER BY seq").fetchall()
    return [tuple(row) for row in rows]


def all_effects(tmp_path: Path) -> dict[str, list[tuple[str, str, str]]]:
    return {name: effects(tmp_path / f"{name}.db") for name in PARTICIPANTS}


def timeline(tmp_path: Path, saga_id: str) -> list[tuple[str, str]]:
    """(step, kind) of one saga's effects across every participant, in the order applied."""
    rows: list[tuple[float, int, str, str]] = []
    for name in PARTICIPANTS:
        with closing(sqlite3.connect(tmp_path / f"{name}.db")) as db:
            rows += db.execute(
                "SELECT at, seq, step, kind FROM effects WHERE saga_id = ?", (saga_id,)
            ).fetchall()
    return [(step, kind) for _at, _seq, step, kind in sorted(rows)]
