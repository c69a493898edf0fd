"""The chaos runner's side of choreographed chains: publishing a workload's chain starts, and
telling when its chains are done.

A chain start is an event published from plain code (``Understudy.publish``) with the chain's
correlation id and a fixed event id, so that publishing it again after a crash, or after a
publish that raised (the store unreachable), appends nothing twice: the runner publishes each
start until a publish returns, as a client that retries does. A chain is done when the store
shows it terminal (no delivery pending) and every reactor's outbox is relayed: a reactor killed
after the store had its events but before it marked them relayed must relay again (at its next
look) before the run is checked, or the check would see rows a live system is about to relay.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import closing
from pathlib import Path

from understudy.chains import read_chain
from understudy.errors import UnderstudyError
from understudy.persistence import POSTGRES_SCHEMES, SagaStore
from understudy.runtime import Understudy
from understudy.testing.chain_rules import pending_deliveries
from understudy.testing.checker import ChainStart, _connect_postgres

RETRY_PAUSE = 0.25  # seconds between publishes of a start whose publish raised
_UNRELAYED = "SELECT count(*) FROM understudy_outbox WHERE relayed = 0"


class ChainDriver:
    """The chains of one run: ``starts`` (the workload's, probes included) and the reactors'
    databases (name -> SQLite path or PostgreSQL URL)."""

    def __init__(self, starts: Sequence[ChainStart], reactors: Mapping[str, Path | str]) -> None:
        self.starts = {s.correlation_id: s for s in starts}
        self.reactors = dict(reactors)
        #: Chains whose first event a publish returned for: durable in the store.
        self.published: set[str] = set()
        self._next_try = 0.0

    def __bool__(self) -> bool:
        return bool(self.starts or self.reactors)

    def publish(self, runtime: Understudy, correlation_ids: Iterable[str] | None = None) -> None:
        """Publish the first event of each chain named (default: all) that no publish returned
        for yet; one that raises is tried again at a later call, :data:`RETRY_PAUSE` on."""
        now = time.monotonic()
        if now < self._next_try:
            return
        wanted = self.starts if correlation_ids is None else correlation_ids
        for correlation_id in wanted:
            if correlation_id in self.published:
                continue
            start = self.starts[correlation_id]
            try:
                runtime.publish(
                    start.topic, start.data, start.correlation_id, event_id=start.first_event
                )
            except UnderstudyError:
                self._next_try = now + RETRY_PAUSE
                return
            self.published.add(correlation_id)

    def progress(self, store: SagaStore) -> tuple[int, int]:
        """(chains ended, events and acknowledgements they hold): what moved in the store."""
        ended = rows = 0
        for correlation_id in self.starts:
            chain = read_chain(store, correlation_id)
            if chain is None:
                continue
            ended += chain.terminal
            rows += len(chain.events) + sum(
                d.at is not None for e in chain.events for d in e.deliveries
            )
        return ended, rows

    def ended(self, store: SagaStore) -> bool:
        """Whether every chain was published and the store shows it terminal."""
        if len(self.published) < len(self.starts):
            return False
        return all(
            (chain := read_chain(store, correlation_id)) is not None and chain.terminal
            for correlation_id in self.starts
        )

    def settled(self, store: SagaStore) -> bool:
        """:meth:`ended`, and no reactor's outbox holds a row it has not relayed."""
        return self.ended(store) and not any(unrelayed(self.reactors).values())

    def diagnosis(self, store: SagaStore) -> list[str]:
        """What each unfinished chain waits on, and what each outbox still holds."""
        lines = [
            f"chain {cid}: never published" for cid in self.starts if cid not in self.published
        ]
        for correlation_id in self.starts:
            chain = read_chain(store, correlation_id)
            if chain is not None and not chain.terminal:
                waits = "; ".join(pending_deliveries(chain))
                lines.append(f"chain {correlation_id}: {waits}")
        lines += [
            f"{name}'s outbox: {count} row(s) not relayed"
            for name, count in unrelayed(self.reactors).items()
            if count
        ]
        return lines


def unrelayed(reactors: Mapping[str, Path | str]) -> dict[str, int]:
    """Rows each reactor's outbox has not relayed (0 for one whose database or table is not
    there yet). A database that cannot be read right now counts as holding one: the run is not
    taken for settled on a read that failed, and the next look reads it again."""
    counts: dict[str, int] = {}
    for name, location in reactors.items():
        counts[name] = 1
        # Any error of either driver (a lock, a server restarting): look again later.
        with contextlib.suppress(Exception):
            counts[name] = _count(name, location)
    return counts


def _count(name: str, location: Path | str) -> int:
    if os.fspath(location).startswith(POSTGRES_SCHEMES):
        import psycopg

        with closing(_connect_postgres(name, str(location))) as db:
            try:
                row = db.execute(_UNRELAYED).fetchone()
                return int(row[0]) if row else 0
            except psycopg.errors.UndefinedTable:
                return 0
    if not Path(location).exists():
        return 0
    with closing(sqlite3.connect(f"file:{location}?mode=ro", uri=True)) as db:
        try:
            return int(db.execute(_UNRELAYED).fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return 0
            raise
