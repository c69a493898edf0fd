"""The choreography event log in the PostgreSQL saga store (mixed into
:class:`~understudy.persistence.postgres.PostgresStore`). Each call is one transaction through
the store's own ``_run`` (pipelined, retried on serialization failures, reconnecting when the
connection was lost before its COMMIT was sent), so the log has the same durability and error
translation as the sagas' rows.

The tables are created when a store is opened for writing and lacks them (a database from
before the event log gains them then); a read-only store of such a database reads an empty log
until a writer has opened it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from understudy.persistence import eventlog
from understudy.persistence.base import (
    Acknowledgement,
    AckRecord,
    ChainHead,
    PublishedEvent,
    TopicEvent,
    TopicSubscription,
)

_SQL = eventlog.statements("%s")
_INSERT_EVENT = _SQL["insert_event"] + " RETURNING event_id"

T = TypeVar("T")


class PostgresEventLog:
    """The event log's half of :class:`~understudy.persistence.postgres.PostgresStore`."""

    _event_log_table = False
    read_only: bool

    if TYPE_CHECKING:  # provided by PostgresStore

        def _run(
            self,
            doing: str,
            body: Callable[[Any, Any], Callable[[], T]],
            *,
            read: bool = False,
            before: Callable[[Any], None] | None = None,
        ) -> T: ...

        def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]: ...

        @staticmethod
        def _create_schema(conn: Any, statements: Sequence[str]) -> int: ...

    def _prepare_event_log(self, conn: Any) -> bool:
        """At every (re)connection: whether the event log's tables are there, creating them
        on a store opened for writing."""
        row = conn.execute("SELECT to_regclass('understudy_topic_events') IS NOT NULL").fetchone()
        if row is not None and row[0]:
            return True
        if self.read_only:
            return False
        self._create_schema(conn, eventlog.POSTGRES_TABLES)
        return True

    def _has_event_log(self) -> bool:
        if not self._event_log_table:
            rows = self._read("SELECT to_regclass('understudy_topic_events') IS NOT NULL")
            self._event_log_table = bool(rows[0][0])
        return self._event_log_table

    def append_events(
        self, events: Sequence[TopicEvent], acks: Sequence[Acknowledgement] = ()
    ) -> list[bool]:
        rows = [eventlog.event_row(e) for e in events]
        ack_rows = [eventlog.ack_row(a) for a in acks]

        def body(conn: Any, pipe: Any) -> Callable[[], list[bool]]:
            cursors = [conn.execute(_INSERT_EVENT, row) for row in rows]
            for ack in ack_rows:
                conn.execute(_SQL["insert_ack"], ack)
            return lambda: [cursor.fetchone() is not None for cursor in cursors]

        return self._run(f"appending {len(rows)} event(s) to the event log", body)

    def subscribe(
        self, subscriber: str, topics: Sequence[str], at: float
    ) -> list[TopicSubscription]:
        wanted = eventlog.check_subscription(subscriber, topics)

        def body(conn: Any, pipe: Any) -> Callable[[], list[Any]]:
            end_cursor = conn.execute(_SQL["last_seq"])
            had_cursor = conn.execute(_SQL["topics_of"], (subscriber,))
            pipe.sync()  # what it has decides what changes
            end = int(end_cursor.fetchone()[0])
            for (topic,) in had_cursor.fetchall():
                if topic not in wanted:
                    conn.execute(_SQL["drop_subscription"], (subscriber, topic))
            for topic in wanted:
                conn.execute(_SQL["insert_subscription"], (subscriber, topic, end, float(at)))
            return conn.execute(_SQL["subscriptions_of"], (subscriber,)).fetchall

        rows = self._run(f"subscribing {subscriber!r}", body)
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
        rows = self._read(_SQL["chain_acks"], (correlation_id,))
        return [eventlog.ack_record(row) for row in rows]

    def subscriptions(self) -> list[TopicSubscription]:
        if not self._has_event_log():
            return []
        return [eventlog.subscription_record(row) for row in self._read(_SQL["subscriptions"])]

    def list_chains(self, limit: int = 100) -> list[ChainHead]:
        if not self._has_event_log():
            return []
        return [eventlog.chain_head(row) for row in self._read(_SQL["list_chains"], (limit,))]
