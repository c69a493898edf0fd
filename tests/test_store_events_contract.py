"""The event log's contract (choreography): one suite, run against every backend.

Each rule of the event log part of :mod:`understudy.persistence.base` has a test here; the
``store`` fixture runs each once per backend (SQLite, memory, PostgreSQL). Integrity tests damage
stored bytes by hand, so they run on the SQL backends only.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from understudy import codec
from understudy.persistence import open_store
from understudy.persistence.base import (
    APPLIED,
    FAILED,
    FAILURE,
    REJECTED,
    Acknowledgement,
    SagaStore,
    TopicEvent,
)
from understudy.persistence.memory import MemoryStore
from understudy.persistence.sqlite import SQLiteStore

T0 = 1_700_000_000.0


def _open(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> tuple[SagaStore, str]:
    if backend == "sqlite":
        return SQLiteStore(tmp_path / "sagas.db"), str(tmp_path / "sagas.db")
    if backend == "postgres":
        url = str(request.getfixturevalue("postgres_url"))
        return open_store(url), url
    return MemoryStore(), "memory://"


@pytest.fixture(params=["sqlite", "memory", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SagaStore]:
    backend, _ = _open(str(request.param), request, tmp_path)
    yield backend
    backend.close()


@pytest.fixture(params=["sqlite", "postgres"])
def sql_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[SagaStore, str]]:
    backend, where = _open(str(request.param), request, tmp_path)
    yield backend, where
    backend.close()


def event(
    event_id: str,
    topic: str = "order.created",
    chain: str = "c1",
    data: object = None,
    *,
    at: float = T0,
    source: str = "",
    cause: str | None = None,
    kind: str = "event",
) -> TopicEvent:
    payload = {"id": event_id} if data is None else data
    return TopicEvent(event_id, topic, chain, codec.encode(payload), at, source, cause, kind)


def ack(
    subscriber: str,
    event_id: str,
    chain: str = "c1",
    outcome: str = APPLIED,
    *,
    at: float = T0 + 1,
    reason: str | None = None,
    published: tuple[str, ...] = (),
) -> Acknowledgement:
    return Acknowledgement(subscriber, event_id, chain, outcome, at, reason, published)


def ids(events: list) -> list[str]:
    return [e.event_id for e in events]


# --- appending -----------------------------------------------------------------------------------


def test_appended_events_read_back_in_log_order_with_their_data(store: SagaStore) -> None:
    """A chain's events come back in the order appended, decoded, with cause and source."""
    assert [True, True] == store.append_events(
        [event("e1", data={"order": 7}), event("e2", "stock.reserved", source="inv", cause="e1")]
    )
    store.append_events([event("e3", chain="other")])
    found = store.chain_events("c1")
    assert ["e1", "e2"] == ids(found)
    first, second = found
    assert {"order": 7} == first.data
    assert ("order.created", "", None, "event") == (
        first.topic,
        first.source,
        first.causation_id,
        first.kind,
    )
    assert ("stock.reserved", "inv", "e1") == (second.topic, second.source, second.causation_id)
    assert first.seq < second.seq
    assert first.corrupt is None and second.corrupt is None


def test_an_event_id_is_appended_once(store: SagaStore) -> None:
    """A relay that runs again after its commit appends nothing twice."""
    assert [True] == store.append_events([event("e1")])
    assert [False, True] == store.append_events([event("e1", data={"other": 1}), event("e2")])
    found = store.chain_events("c1")
    assert ["e1", "e2"] == ids(found)
    assert {"id": "e1"} == found[0].data  # the first write stands


def test_acknowledgements_are_recorded_once_per_subscriber_and_event(store: SagaStore) -> None:
    """A repeated acknowledgement (the relay run again) changes nothing of the first."""
    store.append_events([event("e1")])
    store.append_events([], [ack("inventory", "e1", published=("e2",))])
    store.append_events([], [ack("inventory", "e1", outcome=FAILED, reason="later")])
    store.append_events([], [ack("payments", "e1", outcome=REJECTED, reason="declined")])
    found = {(a.subscriber, a.outcome, a.reason, a.published) for a in store.chain_acks("c1")}
    assert {
        ("inventory", APPLIED, None, ("e2",)),
        ("payments", REJECTED, "declined", ()),
    } == found


def test_events_and_acknowledgements_of_one_call_are_all_or_nothing(store: SagaStore) -> None:
    """An acknowledgement that cannot be written keeps the events of its call out too."""
    with pytest.raises(ValueError, match="outcome"):
        store.append_events([event("e1")], [ack("inventory", "e0", outcome="maybe")])
    assert [] == store.chain_events("c1")
    assert [] == store.chain_acks("c1")


# --- subscriptions and delivery ------------------------------------------------------------------


def test_a_subscription_starts_at_the_end_of_the_log(store: SagaStore) -> None:
    """Events published before a subscriber first subscribed are not its to react to."""
    store.append_events([event("old")])
    subs = store.subscribe("inventory", ["order.created"], T0)
    assert [("inventory", "order.created")] == [(s.subscriber, s.topic) for s in subs]
    store.append_events([event("new")])
    assert ["new"] == ids(store.undelivered("inventory"))


def test_undelivered_is_what_the_subscriber_has_not_acknowledged(store: SagaStore) -> None:
    """Oldest first, its own topics only, its own acknowledgements only, at most ``limit``."""
    store.subscribe("inventory", ["order.created", "order.cancelled"], T0)
    store.subscribe("payments", ["order.created"], T0)
    store.append_events(
        [
            event("e1"),
            event("e2", "order.cancelled"),
            event("e3", "stock.reserved"),
            event("e4"),
        ]
    )
    store.append_events([], [ack("inventory", "e1"), ack("payments", "e4")])
    assert ["e2", "e4"] == ids(store.undelivered("inventory"))
    assert ["e2"] == ids(store.undelivered("inventory", limit=1))
    assert ["e1"] == ids(store.undelivered("payments"))
    assert [] == store.undelivered("nobody")


def test_subscribing_again_keeps_starts_adds_and_drops_topics(store: SagaStore) -> None:
    """A topic kept keeps its start, a new one starts at the end, one left out is dropped."""
    store.subscribe("inventory", ["a", "b"], T0)
    store.append_events([event("e1", "a"), event("e2", "b"), event("e3", "c")])
    subs = store.subscribe("inventory", ["a", "c"], T0 + 5)
    assert ["a", "c"] == [s.topic for s in subs]
    assert ["e1"] == ids(store.undelivered("inventory"))
    starts = {s.topic: s.since_seq for s in store.subscriptions()}
    assert starts["a"] < starts["c"]


def test_subscriptions_lists_every_subscriber(store: SagaStore) -> None:
    store.subscribe("payments", ["order.created"], T0)
    store.subscribe("inventory", ["order.created", "payment.failed"], T0)
    assert [
        ("inventory", "order.created"),
        ("inventory", "payment.failed"),
        ("payments", "order.created"),
    ] == [(s.subscriber, s.topic) for s in store.subscriptions()]


def test_a_subscription_needs_a_name_and_topics_with_names(store: SagaStore) -> None:
    with pytest.raises(ValueError):
        store.subscribe("", ["a"], T0)
    with pytest.raises(ValueError):
        store.subscribe("inventory", [""], T0)


# --- chains -------------------------------------------------------------------------------------


def test_chain_acks_carry_outcomes_reasons_and_what_was_published(store: SagaStore) -> None:
    store.append_events([event("e1")])
    store.append_events(
        [event("f1", "order.created.failed", source="inventory", cause="e1", kind=FAILURE)],
        [ack("inventory", "e1", outcome=REJECTED, reason="out of stock", published=("f1",))],
    )
    [found] = store.chain_acks("c1")
    assert ("inventory", "e1", REJECTED, "out of stock", ("f1",)) == (
        found.subscriber,
        found.event_id,
        found.outcome,
        found.reason,
        found.published,
    )
    assert FAILURE == store.chain_events("c1")[1].kind
    assert [] == store.chain_acks("other")


def test_list_chains_is_newest_first_with_first_event_and_extent(store: SagaStore) -> None:
    store.append_events([event("a1", "order.created", "A", at=T0)])
    store.append_events([event("b1", "user.joined", "B", at=T0 + 1, source="web")])
    store.append_events([event("a2", "stock.reserved", "A", at=T0 + 2, cause="a1")])
    heads = store.list_chains()
    assert ["B", "A"] == [h.correlation_id for h in heads]
    b, a = heads
    assert ("user.joined", "web", 1) == (b.topic, b.source, b.events)
    assert ("order.created", T0, T0 + 2, 2) == (a.topic, a.started_at, a.last_at, a.events)
    assert ["B"] == [h.correlation_id for h in store.list_chains(limit=1)]


# --- durability and integrity (SQL backends) ------------------------------------------------------


def test_the_log_is_durable_and_readable_read_only(sql_store: tuple[SagaStore, str]) -> None:
    store, where = sql_store
    store.subscribe("inventory", ["order.created"], T0)
    store.append_events([event("e1")])
    store.close()
    with closing(open_store(where, read_only=True)) as reader:
        assert ["e1"] == ids(reader.chain_events("c1"))
        assert ["e1"] == ids(reader.undelivered("inventory"))
        assert ["c1"] == [h.correlation_id for h in reader.list_chains()]


def _damage(where: str, sql: str) -> None:
    if "://" in where:
        import psycopg

        with psycopg.connect(where, autocommit=True) as conn:
            conn.execute(sql)
    else:
        with closing(sqlite3.connect(where)) as db:
            db.execute(sql)
            db.commit()


def test_a_damaged_event_is_read_as_corrupt_not_raised(sql_store: tuple[SagaStore, str]) -> None:
    """A row whose data no longer matches its checksum is reported, and the others are read."""
    store, where = sql_store
    store.append_events([event("e1", data={"qty": 1}), event("e2", data={"qty": 2})])
    _damage(
        where, "UPDATE understudy_topic_events SET topic = 'order.created2' WHERE event_id = 'e1'"
    )
    first, second = store.chain_events("c1")
    assert first.corrupt is not None and "checksum" in first.corrupt
    assert second.corrupt is None and {"qty": 2} == second.data


def test_a_damaged_acknowledgement_is_read_as_corrupt(sql_store: tuple[SagaStore, str]) -> None:
    store, where = sql_store
    store.append_events([event("e1")], [ack("inventory", "e1")])
    _damage(where, "UPDATE understudy_topic_acks SET outcome = 'rejected'")
    [found] = store.chain_acks("c1")
    assert found.corrupt is not None and "checksum" in found.corrupt


def test_a_read_only_sqlite_store_without_the_log_reads_it_empty(tmp_path: Path) -> None:
    """A file from before the event log: readers see no chains (a writer adds the tables)."""
    path = tmp_path / "sagas.db"
    SQLiteStore(path).close()
    with closing(sqlite3.connect(path)) as db:
        for table in ("understudy_topic_events", "understudy_topic_acks"):
            db.execute(f"DROP TABLE {table}")
        db.execute("DROP TABLE understudy_topic_subscriptions")
        db.commit()
    with closing(SQLiteStore(path, read_only=True)) as reader:
        assert [] == reader.list_chains()
        assert [] == reader.chain_events("c1")
        assert [] == reader.undelivered("inventory")
    with closing(SQLiteStore(path)) as writer:
        assert [True] == writer.append_events([event("e1")])
