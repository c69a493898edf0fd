"""The choreography event log in the SQLite saga store (mixed into
:class:`~understudy.persistence.sqlite.SQLiteStore`; the tables are created with the rest of its
schema). SQLite serialises writers, so the log's ``seq`` is also the order events committed in.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from understudy.persistence import eventlog
from understudy.persistence.base import (
    Acknowledgement,
    AckRecord,
    ChainHead,
    PublishedEvent,
    TopicEvent,
    TopicSubscription,
)

_SQL = eventlog.statements("?")


class SQLiteEventLog:
    """The event log's half of :class:`~understudy.persistence.sqlite.SQLiteStore`."""

    _event_log_table = True

    if TYPE_CHECKING:  # provided by SQLiteStore

        def _transaction(self, doing: str) -> AbstractContextManager[sqlite3.Connection]: ...

        def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]: ...

    def append_events(
        self, events: Sequence[TopicEvent], acks: Sequence[Acknowledgement] = ()
    ) -> list[bool]:
        rows = [eventlog.event_row(e) for e in events]
        ack_rows = [eventlog.ack_row(a) for a in acks]
        applied: list[bool] = []
        with self._transaction(f"appending {len(rows)} event(s) to the event log") as conn:
            for row in rows:
                applied.append(conn.execute(_SQL["insert_event"], row).rowcount == 1)
            conn.executemany(_SQL["insert_ack"], ack_rows)
        return applied

    def subscribe(
        self, subscriber: str, topics: Sequence[str], at: float
    ) -> list[TopicSubscription]:
        wanted = eventlog.check_subscription(subscriber, topics)
        with self._transaction(f"subscribing {subscriber!r}") as conn:
            end = int(conn.execute(_SQL["last_seq"]).fetchone()[0])
            had = {row[0] for row in conn.execute(_SQL["topics_of"], (subscriber,))}
            for topic in had - set(wanted):
                conn.execute(_SQL["drop_subscription"], (subscriber, topic))
            conn.executemany(
                _SQL["insert_subscription"], [(subscriber, t, end, float(at)) for t in wanted]
            )
            rows = conn.execute(_SQL["subscriptions_of"], (subscriber,)).fetchall()
        return [eventlog.subscription_record(row) for row in rows]

    def undelivered(self, subscriber: str, limit: int = 100) -> list[PublishedEvent]:
        if not self._has_event_log():
            return []
        rows = self._read(_SQL["undelivered"], (subscriber, limit))
        return [eventlog.event_record(row) for row in rows]

    def chain_events(self, correlation_id: str) -> list[PublishedEvent]:
        if not self._has_event_log():
            return []
        rows = self._read(_SQL["chain_events"], (correlation_id,))
        return [eventlog.event_record(row) for row in rows]

    def chain_acks(self, correlation_id: str) -> list[AckRecord]:
        if not self._has_event_log():
            return []
        return [
            eventlog.ack_record(row) for row in self._read(_SQL["chain_acks"], (correlation_id,))
        ]

    def subscriptions(self) -> list[TopicSubscription]:
        if not self._has_event_log():
            return []
        return [eventlog.subscription_record(row) for row in self._read(_SQL["subscriptions"])]

    def list_chains(self, limit: int = 100) -> list[ChainHead]:
        if not self._has_event_log():
            return []
        return [eventlog.chain_head(row) for row in self._read(_SQL["list_chains"], (limit,))]

    def _has_event_log(self) -> bool:
        """Whether the event log's tables are there: always on a store opened for writing; on
        a read-only one of a file from before them, once a writer has opened it since."""
        if not self._event_log_table:
            found = self._read(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' "
                "AND name = 'understudy_topic_events'"
            )
            self._event_log_table = bool(found)
        return self._event_log_table


def schema_statements() -> Iterator[str]:
    """The event log's tables and indexes, for the store's schema."""
    yield from eventlog.SQLITE_TABLES
