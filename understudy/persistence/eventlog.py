"""What the SQL backends share of the choreography event log: tables, statements, checksums,
and rows turned into records.

Three tables beside the sagas' own:

- ``understudy_topic_events``: the log, one row per published event, ordered by ``seq``; an
  event id is stored once (a relay that runs again appends nothing twice);
- ``understudy_topic_acks``: one row per (subscriber, event) the subscriber is done with, with
  its outcome and the events its reaction published;
- ``understudy_topic_subscriptions``: which subscriber gets which topic, from which ``seq``.

What is undelivered to a subscriber is computed, never stored: the events of its topics past
its subscription's start that it has not acknowledged. So nothing can mark an event delivered
without the subscriber's own acknowledgement, which it writes only once its ledger holds the
reaction.

Checksums (as :mod:`understudy.persistence.integrity` does for sagas): an event's covers its
id, topic, chain, source, cause, kind and data bytes; an acknowledgement's its subscriber,
event, chain, outcome, reason and published ids. A row that fails is read back with
``corrupt`` set, never raised for a whole query.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

from understudy import codec
from understudy.errors import CorruptRecord
from understudy.persistence.base import (
    REACTION_OUTCOMES,
    Acknowledgement,
    AckRecord,
    ChainHead,
    PublishedEvent,
    TopicEvent,
    TopicSubscription,
)

#: The event log's tables; ``{seq}``, ``{blob}``, ``{real}`` and ``{int}`` are the dialect's.
_TABLES = (
    """CREATE TABLE IF NOT EXISTS understudy_topic_events (
        seq {seq},
        event_id TEXT NOT NULL UNIQUE,
        topic TEXT NOT NULL,
        correlation_id TEXT NOT NULL,
        source TEXT NOT NULL,
        causation_id TEXT,
        kind TEXT NOT NULL,
        data {blob} NOT NULL,
        at {real} NOT NULL,
        data_sum {int}
    )""",
    "CREATE INDEX IF NOT EXISTS understudy_topic_events_topic ON understudy_topic_events "
    "(topic, seq)",
    "CREATE INDEX IF NOT EXISTS understudy_topic_events_chain ON understudy_topic_events "
    "(correlation_id, seq)",
    """CREATE TABLE IF NOT EXISTS understudy_topic_acks (
        subscriber TEXT NOT NULL,
        event_id TEXT NOT NULL,
        correlation_id TEXT NOT NULL,
        outcome TEXT NOT NULL,
        reason TEXT,
        published {blob} NOT NULL,
        at {real} NOT NULL,
        ack_sum {int},
        PRIMARY KEY (subscriber, event_id)
    )""",
    "CREATE INDEX IF NOT EXISTS understudy_topic_acks_chain ON understudy_topic_acks "
    "(correlation_id)",
    """CREATE TABLE IF NOT EXISTS understudy_topic_subscriptions (
        subscriber TEXT NOT NULL,
        topic TEXT NOT NULL,
        since_seq {int} NOT NULL,
        at {real} NOT NULL,
        PRIMARY KEY (subscriber, topic)
    )""",
)

SQLITE_TABLES = tuple(
    t.format(seq="INTEGER PRIMARY KEY", blob="BLOB", real="REAL", int="INTEGER") for t in _TABLES
)
POSTGRES_TABLES = tuple(
    t.format(
        seq="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        blob="BYTEA",
        real="DOUBLE PRECISION",
        int="BIGINT",
    )
    for t in _TABLES
)

EVENT_COLUMNS = (
    "seq, event_id, topic, correlation_id, source, causation_id, kind, data, at, data_sum"
)
_EVENT_INSERT = "event_id, topic, correlation_id, source, causation_id, kind, data, at, data_sum"
ACK_COLUMNS = "subscriber, event_id, correlation_id, outcome, reason, published, at, ack_sum"
SUBSCRIPTION_COLUMNS = "subscriber, topic, since_seq, at"


def statements(mark: str) -> dict[str, str]:
    """The event log's statements with ``mark`` as the placeholder ("?" or "%s"). Inserts
    that meet an existing key do nothing (both dialects take ON CONFLICT DO NOTHING)."""
    m = mark
    return {
        "insert_event": f"INSERT INTO understudy_topic_events ({_EVENT_INSERT}) VALUES "
        f"({', '.join([m] * 9)}) ON CONFLICT (event_id) DO NOTHING",
        "insert_ack": f"INSERT INTO understudy_topic_acks ({ACK_COLUMNS}) VALUES "
        f"({', '.join([m] * 8)}) ON CONFLICT (subscriber, event_id) DO NOTHING",
        "last_seq": "SELECT coalesce(max(seq), 0) FROM understudy_topic_events",
        "topics_of": f"SELECT topic FROM understudy_topic_subscriptions WHERE subscriber = {m}",
        "insert_subscription": f"INSERT INTO understudy_topic_subscriptions "
        f"({SUBSCRIPTION_COLUMNS}) VALUES ({m}, {m}, {m}, {m}) "
        "ON CONFLICT (subscriber, topic) DO NOTHING",
        "drop_subscription": "DELETE FROM understudy_topic_subscriptions "
        f"WHERE subscriber = {m} AND topic = {m}",
        "subscriptions_of": f"SELECT {SUBSCRIPTION_COLUMNS} FROM understudy_topic_subscriptions "
        f"WHERE subscriber = {m} ORDER BY topic",
        "subscriptions": f"SELECT {SUBSCRIPTION_COLUMNS} FROM understudy_topic_subscriptions "
        "ORDER BY subscriber, topic",
        # Read from each subscription's start every time: no cursor can skip an event that a
        # concurrent writer committed below a seq already seen (PostgreSQL hands out identity
        # numbers in the order transactions ask, not in the order they commit).
        "undelivered": "SELECT "
        + ", ".join(f"e.{c.strip()}" for c in EVENT_COLUMNS.split(","))
        + " FROM understudy_topic_events e JOIN understudy_topic_subscriptions s "
        f"ON s.topic = e.topic AND s.subscriber = {m} WHERE e.seq > s.since_seq AND NOT EXISTS "
        "(SELECT 1 FROM understudy_topic_acks a WHERE a.subscriber = s.subscriber "
        f"AND a.event_id = e.event_id) ORDER BY e.seq LIMIT {m}",
        "chain_events": f"SELECT {EVENT_COLUMNS} FROM understudy_topic_events "
        f"WHERE correlation_id = {m} ORDER BY seq",
        "chain_acks": f"SELECT {ACK_COLUMNS} FROM understudy_topic_acks "
        f"WHERE correlation_id = {m} ORDER BY at, subscriber",
        "list_chains": "SELECT e.correlation_id, e.topic, e.source, e.at, c.last_at, c.n "
        "FROM (SELECT correlation_id, min(seq) AS first, max(at) AS last_at, count(*) AS n "
        "FROM understudy_topic_events GROUP BY correlation_id) c "
        "JOIN understudy_topic_events e ON e.seq = c.first "
        f"ORDER BY c.first DESC LIMIT {m}",
    }


# --- checksums ---------------------------------------------------------------------------------


def event_sum(
    event_id: str,
    topic: str,
    correlation_id: str,
    source: str,
    causation_id: str | None,
    kind: str,
    data: bytes,
) -> int:
    # repr keeps a \x1f inside free text (a topic, a source) from moving a field boundary.
    crc = zlib.crc32(
        f"topic-event\x1f{event_id!r}\x1f{topic!r}\x1f{correlation_id!r}\x1f{source!r}"
        f"\x1f{causation_id!r}\x1f{kind}".encode()
    )
    return zlib.crc32(data, crc)


def ack_sum(
    subscriber: str,
    event_id: str,
    correlation_id: str,
    outcome: str,
    reason: str | None,
    published: bytes,
) -> int:
    crc = zlib.crc32(
        f"topic-ack\x1f{subscriber!r}\x1f{event_id!r}\x1f{correlation_id!r}\x1f{outcome}"
        f"\x1f{reason!r}".encode()
    )
    return zlib.crc32(published, crc)


# --- rows and records --------------------------------------------------------------------------


def event_row(event: TopicEvent) -> tuple[Any, ...]:
    """An insert row of ``event``, with its checksum."""
    data = bytes(event.data)
    check = event_sum(
        event.event_id,
        event.topic,
        event.correlation_id,
        event.source,
        event.causation_id,
        event.kind,
        data,
    )
    return (
        event.event_id,
        event.topic,
        event.correlation_id,
        event.source,
        event.causation_id,
        event.kind,
        data,
        float(event.at),
        check,
    )


def ack_row(ack: Acknowledgement) -> tuple[Any, ...]:
    """An insert row of ``ack``, with its checksum; an unknown outcome is refused."""
    if ack.outcome not in REACTION_OUTCOMES:
        raise ValueError(
            f"the acknowledgement of event {ack.event_id!r} by {ack.subscriber!r} has outcome "
            f"{ack.outcome!r}; it must be one of {', '.join(REACTION_OUTCOMES)}"
        )
    published = codec.encode(list(ack.published), "published event ids")
    check = ack_sum(
        ack.subscriber, ack.event_id, ack.correlation_id, ack.outcome, ack.reason, published
    )
    return (
        ack.subscriber,
        ack.event_id,
        ack.correlation_id,
        ack.outcome,
        ack.reason,
        published,
        float(ack.at),
        check,
    )


def event_record(row: Sequence[Any]) -> PublishedEvent:
    """A :class:`PublishedEvent` from a row selected as :data:`EVENT_COLUMNS`, checked."""
    seq, event_id, topic, correlation_id, source, causation_id, kind, data, at, check = row
    data = bytes(data)
    what = f"event {event_id!r} ({topic}) of chain {correlation_id!r}"
    damage = None
    decoded: Any = None
    if check != event_sum(event_id, topic, correlation_id, source, causation_id, kind, data):
        damage = f"{what} fails its checksum (the stored row is damaged)"
    else:
        try:
            decoded = codec.decode(data, what)
        except CorruptRecord as exc:
            damage = str(exc)
    return PublishedEvent(
        int(seq), event_id, topic, correlation_id, source, causation_id, kind, decoded, at, damage
    )


def ack_record(row: Sequence[Any]) -> AckRecord:
    """An :class:`AckRecord` from a row selected as :data:`ACK_COLUMNS`, checked."""
    subscriber, event_id, correlation_id, outcome, reason, published, at, check = row
    published = bytes(published)
    what = f"the acknowledgement of event {event_id!r} by {subscriber!r}"
    damage = None
    ids: tuple[str, ...] = ()
    if check != ack_sum(subscriber, event_id, correlation_id, outcome, reason, published):
        damage = f"{what} fails its checksum (the stored row is damaged)"
    else:
        try:
            value = codec.decode(published, what)
            ids = tuple(str(v) for v in value) if isinstance(value, list) else ()
        except CorruptRecord as exc:
            damage = str(exc)
    return AckRecord(subscriber, event_id, correlation_id, outcome, reason, ids, at, damage)


def subscription_record(row: Sequence[Any]) -> TopicSubscription:
    subscriber, topic, since_seq, at = row
    return TopicSubscription(subscriber, topic, int(since_seq), float(at))


def chain_head(row: Sequence[Any]) -> ChainHead:
    correlation_id, topic, source, at, last_at, count = row
    return ChainHead(correlation_id, topic, source, float(at), float(last_at), int(count))


def check_subscription(subscriber: str, topics: Sequence[str]) -> list[str]:
    """``topics`` without repeats, in order; an empty name is refused."""
    if not subscriber:
        raise ValueError("a subscriber needs a name")
    found = list(dict.fromkeys(topics))
    if any(not isinstance(t, str) or not t for t in found):
        raise ValueError(f"subscriber {subscriber!r}: every topic must be a non-empty string")
    return found
