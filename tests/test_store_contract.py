"""The saga store contract: one suite, run against every backend.

Each rule of :mod:`understudy.persistence.base` has a test here; the ``store`` fixture runs every
contract test once per backend. SQLite-only behaviour (durability, pragmas, locking, bad files)
is tested at the end, on real files.
"""

# Assertions read `expected == actual`, the house style for specification tests.

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from understudy.errors import CorruptRecord, PayloadError, StoreError, StoreUnavailable
from understudy.persistence import open_store
from understudy.persistence.base import (
    COMPENSATED,
    COMPENSATING,
    COMPLETED,
    FAILED,
    RUNNING,
    Event,
    NewSaga,
    SagaRecord,
    SagaStore,
    Transition,
    Write,
)
from understudy.persistence.memory import MemoryStore
from understudy.persistence.sqlite import SCHEMA_VERSION, SQLiteStore

T0 = 1_700_000_000.0


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SagaStore]:
    backend: SagaStore = (
        SQLiteStore(tmp_path / "sagas.db") if request.param == "sqlite" else MemoryStore()
    )
    yield backend
    backend.close()


def new_saga(saga_id: str, at: float = T0, *, events: tuple[Event, ...] = ()) -> NewSaga:
    return NewSaga(saga_id, "order", 1, b"payload of " + saga_id.encode(), at, events)


def transition(
    saga_id: str,
    *,
    incarnation: int = 1,
    status: str = RUNNING,
    snapshot_version: int = 1,
    at: float = T0 + 1,
    recovery_attempts: int = 0,
    reason: str | None = None,
    events: tuple[Event, ...] = (),
) -> Transition:
    return Transition(
        saga_id,
        incarnation,
        status,
        f"snapshot {snapshot_version}".encode(),
        snapshot_version,
        recovery_attempts,
        at,
        reason,
        events,
    )


def kinds(store: SagaStore, saga_id: str) -> list[str]:
    return [event.kind for event in store.events(saga_id)]


# --- NewSaga -------------------------------------------------------------------------------------


def test_new_saga_is_inserted_running_at_incarnation_one_without_snapshot(store: SagaStore) -> None:
    """A new saga's row is running, incarnation 1, snapshot None and snapshot version 0."""
    assert [True] == store.apply([new_saga("s1")])

    expected = SagaRecord(
        saga_id="s1",
        definition="order",
        version=1,
        status=RUNNING,
        payload=b"payload of s1",
        snapshot=None,
        snapshot_version=0,
        incarnation=1,
        recovery_attempts=0,
        reason=None,
        created_at=T0,
        updated_at=T0,
    )
    assert expected == store.get("s1")


def test_get_of_an_unknown_saga_is_none(store: SagaStore) -> None:
    """Reading a saga id the store never saw returns None."""
    assert None is store.get("nobody")


def test_duplicate_new_saga_is_refused_and_leaves_the_first_row_unchanged(
    store: SagaStore,
) -> None:
    """A NewSaga with an id already stored returns False and changes neither row nor timeline."""
    store.apply([new_saga("s1", events=(Event("started", T0),))])
    first = store.get("s1")

    duplicate = NewSaga("s1", "other", 7, b"other payload", T0 + 5, (Event("started", T0 + 5),))
    assert [False] == store.apply([duplicate])

    assert first == store.get("s1")
    assert ["started"] == kinds(store, "s1")


def test_duplicate_new_saga_within_one_batch_applies_only_the_first(store: SagaStore) -> None:
    """Two NewSagas with the same id in one batch: the first applies, the second does not."""
    second = NewSaga("s1", "other", 2, b"second", T0 + 1)
    assert [True, False] == store.apply([new_saga("s1"), second])

    record = store.get("s1")
    assert record is not None
    assert ("order", 1, b"payload of s1") == (record.definition, record.version, record.payload)


def test_new_saga_events_are_written_at_incarnation_one(store: SagaStore) -> None:
    """A NewSaga's events are written with it, attributed to incarnation 1."""
    store.apply([new_saga("s1", events=(Event("started", T0), Event("step_sent", T0, step=0)))])

    assert [("started", 1), ("step_sent", 1)] == [
        (e.kind, e.incarnation) for e in store.events("s1")
    ]


# --- Transition and fencing ----------------------------------------------------------------------


def test_transition_with_current_incarnation_and_newer_snapshot_applies(store: SagaStore) -> None:
    """A Transition replaces status, snapshot, version, recovery count, reason and updated_at."""
    store.apply([new_saga("s1")])

    write = transition(
        "s1", status=COMPENSATING, snapshot_version=3, recovery_attempts=2, reason="card declined"
    )
    assert [True] == store.apply([write])

    record = store.get("s1")
    assert record is not None
    expected = (COMPENSATING, b"snapshot 3", 3, 2, "card declined", T0, T0 + 1, 1)
    actual = (
        record.status,
        record.snapshot,
        record.snapshot_version,
        record.recovery_attempts,
        record.reason,
        record.created_at,
        record.updated_at,
        record.incarnation,
    )
    assert expected == actual


def test_transition_of_an_unknown_saga_is_not_applied(store: SagaStore) -> None:
    """A Transition for an id the store does not hold returns False and writes no events."""
    assert [False] == store.apply([transition("ghost", events=(Event("step_done", T0),))])

    assert None is store.get("ghost")
    assert [] == store.events("ghost")


def test_transition_with_a_stale_incarnation_is_fenced(store: SagaStore) -> None:
    """A Transition whose incarnation is not the row's changes nothing, not even its events."""
    store.apply([new_saga("s1", events=(Event("started", T0),))])
    store.claim("s1", recovery=True, at=T0 + 1)
    before = store.get("s1")
    events_before = store.events("s1")

    stale = transition("s1", incarnation=1, events=(Event("step_done", T0 + 2, step=0),))
    assert [False] == store.apply([stale])

    assert before == store.get("s1")
    assert events_before == store.events("s1")


@pytest.mark.parametrize("terminal", [COMPLETED, COMPENSATED, FAILED])
def test_transition_of_a_terminal_saga_is_fenced(store: SagaStore, terminal: str) -> None:
    """Once a saga is terminal, a later Transition (even a newer one) changes nothing."""
    store.apply([new_saga("s1")])
    store.apply([transition("s1", status=terminal, snapshot_version=1)])
    before = store.get("s1")
    events_before = store.events("s1")

    later = transition("s1", status=RUNNING, snapshot_version=2, events=(Event("late", T0 + 3),))
    assert [False] == store.apply([later])

    assert before == store.get("s1")
    assert events_before == store.events("s1")


@pytest.mark.parametrize("version", [1, 0], ids=["equal", "older"])
def test_transition_with_a_non_increasing_snapshot_version_is_fenced(
    store: SagaStore, version: int
) -> None:
    """A Transition whose snapshot version is not newer than the row's changes nothing."""
    store.apply([new_saga("s1")])
    store.apply([transition("s1", snapshot_version=1)])
    before = store.get("s1")
    events_before = store.events("s1")

    replay = transition("s1", snapshot_version=version, events=(Event("replayed", T0 + 2),))
    assert [False] == store.apply([replay])

    assert before == store.get("s1")
    assert events_before == store.events("s1")


def test_terminal_status_is_written_once(store: SagaStore) -> None:
    """The first terminal status stays: a second terminal Transition is refused."""
    store.apply([new_saga("s1")])
    assert [True] == store.apply([transition("s1", status=COMPLETED, snapshot_version=1)])

    assert [False] == store.apply([transition("s1", status=FAILED, snapshot_version=2)])

    record = store.get("s1")
    assert record is not None
    assert (COMPLETED, 1) == (record.status, record.snapshot_version)


def test_transition_events_are_written_at_the_writers_incarnation(store: SagaStore) -> None:
    """An applied Transition's events carry the incarnation that wrote them."""
    store.apply([new_saga("s1")])
    store.claim("s1", recovery=False, at=T0 + 1)

    store.apply([transition("s1", incarnation=2, events=(Event("step_done", T0 + 2, step=0),))])

    assert [("claimed", 2), ("step_done", 2)] == [
        (e.kind, e.incarnation) for e in store.events("s1")
    ]


# --- claim ---------------------------------------------------------------------------------------


def test_claim_bumps_the_incarnation_but_not_the_recovery_count(store: SagaStore) -> None:
    """claim(recovery=False) adds one to the incarnation and leaves recovery_attempts alone."""
    store.apply([new_saga("s1")])

    claimed = store.claim("s1", recovery=False, at=T0 + 1)

    assert claimed is not None
    assert (2, 0, T0 + 1) == (claimed.incarnation, claimed.recovery_attempts, claimed.updated_at)
    assert claimed == store.get("s1")


def test_claim_for_recovery_bumps_the_incarnation_and_the_recovery_count(
    store: SagaStore,
) -> None:
    """claim(recovery=True) adds one to both the incarnation and recovery_attempts."""
    store.apply([new_saga("s1")])
    store.claim("s1", recovery=True, at=T0 + 1)

    claimed = store.claim("s1", recovery=True, at=T0 + 2)

    assert claimed is not None
    assert (3, 2) == (claimed.incarnation, claimed.recovery_attempts)


def test_claim_records_a_claimed_event(store: SagaStore) -> None:
    """A claim appends a 'claimed' event at the new incarnation with recovery, count and pid."""
    store.apply([new_saga("s1")])

    store.claim("s1", recovery=True, at=T0 + 1)

    [event] = store.events("s1")
    expected = (
        "claimed",
        T0 + 1,
        None,
        None,
        2,
        {
            "recovery": True,
            "recovery_attempts": 1,
            "pid": os.getpid(),
        },
    )
    actual = (event.kind, event.at, event.step, event.attempt, event.incarnation, event.detail)
    assert expected == actual


def test_claim_of_an_unknown_saga_is_none(store: SagaStore) -> None:
    """Claiming an id the store does not hold returns None and writes nothing."""
    assert None is store.claim("ghost", recovery=True, at=T0)

    assert None is store.get("ghost")
    assert [] == store.events("ghost")


@pytest.mark.parametrize("terminal", [COMPLETED, COMPENSATED, FAILED])
def test_claim_of_a_terminal_saga_is_none(store: SagaStore, terminal: str) -> None:
    """Claiming a terminal saga returns None and leaves its row and timeline unchanged."""
    store.apply([new_saga("s1")])
    store.apply([transition("s1", status=terminal)])
    before = store.get("s1")
    events_before = store.events("s1")

    assert None is store.claim("s1", recovery=True, at=T0 + 5)

    assert before == store.get("s1")
    assert events_before == store.events("s1")


def test_claim_fences_the_previous_incarnation(store: SagaStore) -> None:
    """After a claim the old owner's Transition is refused and the new owner's is applied."""
    store.apply([new_saga("s1")])
    store.claim("s1", recovery=True, at=T0 + 1)

    old_owner = transition("s1", incarnation=1, snapshot_version=1)
    new_owner = transition("s1", incarnation=2, snapshot_version=1)
    assert [False, True] == store.apply([old_owner, new_owner])


def test_claim_all_claims_every_unfinished_saga_and_skips_the_rest(store: SagaStore) -> None:
    """claim_all bumps each unfinished saga once and leaves out terminal and unknown ids."""
    store.apply([new_saga("s1"), new_saga("s2"), new_saga("s3")])
    store.apply([transition("s2", status=COMPLETED)])

    claimed = store.claim_all(["s1", "s2", "s3", "nope"], recovery=True, at=T0 + 5)

    assert ["s1", "s3"] == sorted(claimed)
    assert [(2, 1), (2, 1)] == [
        (claimed[s].incarnation, claimed[s].recovery_attempts) for s in ("s1", "s3")
    ]
    assert claimed["s1"] == store.get("s1")
    assert 1 == store.get("s2").incarnation  # type: ignore[union-attr]


def test_claim_all_claims_more_sagas_than_one_statement_holds(store: SagaStore) -> None:
    """The startup scan claims thousands at once: every one is claimed once, with its event."""
    ids = [f"m{i:04d}" for i in range(1203)]
    store.apply([new_saga(s) for s in ids])
    store.apply([transition("m0600", status=COMPLETED)])

    claimed = store.claim_all(ids, recovery=False, at=T0 + 5)

    assert sorted(claimed) == [s for s in ids if s != "m0600"]
    assert {r.incarnation for r in claimed.values()} == {2}
    assert kinds(store, "m1202") == ["claimed"]
    assert kinds(store, "m0600") == []


def test_get_many_reads_the_rows_it_finds(store: SagaStore) -> None:
    ids = [f"g{i:04d}" for i in range(1100)]
    store.apply([new_saga(s) for s in ids])
    store.apply([transition("g0007", status=COMPLETED)])

    found = store.get_many([*ids, "nope"])

    assert sorted(found) == ids
    assert found["g0007"] == store.get("g0007")
    assert found["g0007"].status == COMPLETED
    assert store.get_many([]) == {}


# --- events --------------------------------------------------------------------------------------


def test_events_come_back_in_write_order_with_decoded_detail(store: SagaStore) -> None:
    """A saga's timeline is read back in write order, every field and nested detail intact."""
    detail = {
        "result": {"charge_id": "ch_1", "amount": 12.5, "lines": [1, 2, {"sku": b"\x00\xff"}]},
        "note": None,
        "attempts": -3,
    }
    store.apply([new_saga("s1", events=(Event("started", T0),))])
    store.apply(
        [
            transition(
                "s1",
                events=(
                    Event("step_sent", T0 + 1, step=0, attempt=1),
                    Event("step_done", T0 + 2, step=0, attempt=1, detail=detail),
                ),
            )
        ]
    )

    events = store.events("s1")

    expected = [
        ("s1", "started", T0, None, None, 1, {}),
        ("s1", "step_sent", T0 + 1, 0, 1, 1, {}),
        ("s1", "step_done", T0 + 2, 0, 1, 1, detail),
    ]
    actual = [(e.saga_id, e.kind, e.at, e.step, e.attempt, e.incarnation, e.detail) for e in events]
    assert expected == actual


def test_event_detail_round_trips_through_msgpack(store: SagaStore) -> None:
    """Event detail is stored as msgpack, so a tuple comes back as a list (as in every backend)."""
    store.apply([new_saga("s1", events=(Event("started", T0, detail={"pair": (1, "a")}),))])

    assert [{"pair": [1, "a"]}] == [e.detail for e in store.events("s1")]


def test_event_seq_increases_across_the_whole_log(store: SagaStore) -> None:
    """Event seq is one global, strictly increasing order over every saga's events."""
    store.apply([new_saga("a", events=(Event("started", T0),))])
    store.apply([new_saga("b", events=(Event("started", T0),))])
    store.apply([transition("a", events=(Event("step_done", T0 + 1),))])
    store.claim("b", recovery=False, at=T0 + 2)

    a_seqs = [e.seq for e in store.events("a")]
    b_seqs = [e.seq for e in store.events("b")]
    in_write_order = [a_seqs[0], b_seqs[0], a_seqs[1], b_seqs[1]]

    assert sorted(set(in_write_order)) == in_write_order


def test_events_of_an_unknown_saga_are_empty(store: SagaStore) -> None:
    """The timeline of an id the store never saw is empty."""
    assert [] == store.events("nobody")


# --- queries -------------------------------------------------------------------------------------


def _populate(store: SagaStore) -> None:
    """Five sagas created one second apart, in every status."""
    store.apply([new_saga(f"s{i}", T0 + i) for i in range(5)])
    store.apply(
        [
            transition("s1", status=COMPLETED),
            transition("s2", status=COMPENSATING),
            transition("s3", status=FAILED),
        ]
    )


def test_unfinished_lists_running_and_compensating_sagas_oldest_first(store: SagaStore) -> None:
    """unfinished() returns every non-terminal saga id, oldest created first."""
    _populate(store)

    assert ["s0", "s2", "s4"] == store.unfinished()


def test_unfinished_orders_sagas_created_at_the_same_time_by_id(store: SagaStore) -> None:
    """Sagas created at the same instant come out of unfinished() ordered by id."""
    store.apply([new_saga("c", T0), new_saga("a", T0), new_saga("b", T0), new_saga("z", T0 - 1)])

    assert ["z", "a", "b", "c"] == store.unfinished()


def test_list_sagas_is_newest_first(store: SagaStore) -> None:
    """list_sagas() returns every saga, newest created first."""
    _populate(store)

    assert ["s4", "s3", "s2", "s1", "s0"] == [r.saga_id for r in store.list_sagas()]


def test_list_sagas_filters_by_status(store: SagaStore) -> None:
    """list_sagas(status) returns only the sagas in that status, newest first."""
    _populate(store)

    assert ["s4", "s0"] == [r.saga_id for r in store.list_sagas(RUNNING)]
    assert ["s3"] == [r.saga_id for r in store.list_sagas(FAILED)]
    assert [] == store.list_sagas(COMPENSATED)


def test_list_sagas_honours_the_limit(store: SagaStore) -> None:
    """list_sagas(limit=n) returns the n newest sagas."""
    _populate(store)

    assert ["s4", "s3"] == [r.saga_id for r in store.list_sagas(limit=2)]
    assert ["s4"] == [r.saga_id for r in store.list_sagas(RUNNING, limit=1)]


def test_count_by_status_counts_each_status_and_leaves_out_empty_ones(store: SagaStore) -> None:
    """count_by_status() maps each status that has sagas to how many it has."""
    _populate(store)

    assert {RUNNING: 2, COMPLETED: 1, COMPENSATING: 1, FAILED: 1} == store.count_by_status()


def test_an_empty_store_has_nothing_to_report(store: SagaStore) -> None:
    """A fresh store has no sagas, nothing unfinished and no counts."""
    assert ([], [], {}) == (store.list_sagas(), store.unfinished(), store.count_by_status())


# --- batches -------------------------------------------------------------------------------------


def test_a_batch_of_many_sagas_applies_together_with_one_bool_per_write(store: SagaStore) -> None:
    """One apply() carries writes of many sagas and reports each write's outcome in order."""
    store.apply([new_saga("old", T0 - 10)])
    store.claim("old", recovery=True, at=T0 - 5)
    batch: list[Write] = [
        new_saga(f"s{i}", T0 + i, events=(Event("started", T0 + i),)) for i in range(50)
    ]
    batch += [
        new_saga("old"),  # duplicate id
        transition("old", incarnation=1),  # stale incarnation
        transition("old", incarnation=2, status=COMPLETED),
        transition("s7", snapshot_version=1),  # a saga inserted earlier in the same batch
    ]

    results = store.apply(batch)

    assert [True] * 50 + [False, False, True, True] == results
    assert {RUNNING: 50, COMPLETED: 1} == store.count_by_status()
    assert [["started"]] * 50 == [kinds(store, f"s{i}") for i in range(50)]


def test_an_empty_batch_applies_nothing(store: SagaStore) -> None:
    """apply([]) returns an empty list."""
    assert [] == store.apply([])


def test_a_batch_with_a_failing_write_applies_nothing(store: SagaStore) -> None:
    """If any write of a batch raises, no write of the batch is applied, not even earlier ones."""
    store.apply([new_saga("existing", events=(Event("started", T0),))])
    before = store.get("existing")
    events_before = store.events("existing")
    unencodable = Event("started", T0, detail={"when": {1, 2}})

    with pytest.raises(PayloadError):
        store.apply(
            [
                new_saga("fresh", events=(Event("started", T0),)),
                transition("existing", events=(Event("step_done", T0 + 1),)),
                new_saga("broken", events=(unencodable,)),
            ]
        )

    assert (None, None) == (store.get("fresh"), store.get("broken"))
    assert before == store.get("existing")
    assert events_before == store.events("existing")
    assert [True] == store.apply([new_saga("fresh")])


# --- lifecycle -----------------------------------------------------------------------------------


def test_close_is_idempotent(store: SagaStore) -> None:
    """Closing a store twice is harmless (the fixture closes it a third time)."""
    store.close()
    store.close()


def test_a_closed_store_raises_store_error(store: SagaStore) -> None:
    """Using a store after close() raises StoreError instead of a driver error."""
    store.close()

    with pytest.raises(StoreError):
        store.get("s1")
    with pytest.raises(StoreError):
        store.apply([new_saga("s1")])


def test_open_store_memory_url_gives_a_memory_store() -> None:
    """open_store('memory://') opens an empty in-memory store."""
    with open_store("memory://") as opened:
        assert isinstance(opened, MemoryStore)
        assert [] == opened.list_sagas()


# --- SQLite only ---------------------------------------------------------------------------------


class TestSQLiteStore:
    """Behaviour only a file-backed store has: durability, pragmas, locking, bad files."""

    def test_data_survives_close_and_reopen(self, tmp_path: Path) -> None:
        """A new SQLiteStore on the same file sees every row and event written before close."""
        path = tmp_path / "sagas.db"
        with SQLiteStore(path) as first:
            first.apply([new_saga("s1", events=(Event("started", T0, detail={"k": b"v"}),))])
            first.claim("s1", recovery=True, at=T0 + 1)
            record = first.get("s1")
            events = first.events("s1")

        with SQLiteStore(path) as second:
            assert (record, events) == (second.get("s1"), second.events("s1"))

    def test_defaults_are_wal_and_synchronous_full(self, tmp_path: Path) -> None:
        """By default the file is in WAL mode and the connection commits with synchronous=FULL."""
        with closing(SQLiteStore(tmp_path / "sagas.db")) as store:
            # synchronous is a per-connection setting: only the store's own connection shows it.
            conn = store._conn
            assert ("wal", 2) == (
                conn.execute("PRAGMA journal_mode").fetchone()[0],
                conn.execute("PRAGMA synchronous").fetchone()[0],
            )

    def test_integrity_check_passes_after_writes(self, tmp_path: Path) -> None:
        """After a mix of writes the database file passes PRAGMA integrity_check."""
        path = tmp_path / "sagas.db"
        with SQLiteStore(path) as store:
            _populate(store)
            store.claim("s0", recovery=True, at=T0 + 9)

        with closing(sqlite3.connect(path)) as conn:
            assert [("ok",)] == conn.execute("PRAGMA integrity_check").fetchall()

    def test_opening_a_locked_database_raises_store_unavailable(self, tmp_path: Path) -> None:
        """Opening a file another connection holds exclusively fails with StoreUnavailable."""
        path = tmp_path / "sagas.db"
        SQLiteStore(path).close()

        with closing(sqlite3.connect(path, isolation_level=None)) as locker:
            locker.execute("BEGIN EXCLUSIVE")
            with pytest.raises(StoreUnavailable) as raised:
                SQLiteStore(path, busy_timeout=0.2)
            locker.execute("ROLLBACK")

        assert str(path) in str(raised.value)

    def test_writing_to_a_locked_database_raises_and_applies_nothing(self, tmp_path: Path) -> None:
        """apply() on a file another connection holds fails with StoreUnavailable, writing none."""
        path = tmp_path / "sagas.db"
        with SQLiteStore(path, busy_timeout=0.2) as store:
            with closing(sqlite3.connect(path, isolation_level=None)) as locker:
                locker.execute("BEGIN EXCLUSIVE")
                with pytest.raises(StoreUnavailable) as raised:
                    store.apply([new_saga("s1"), new_saga("s2")])
                locker.execute("ROLLBACK")

            assert str(path) in str(raised.value)
            assert ([], None, None) == (store.list_sagas(), store.get("s1"), store.get("s2"))
            assert [True, True] == store.apply([new_saga("s1"), new_saga("s2")])

    def test_a_file_that_is_not_a_database_is_refused_at_open(self, tmp_path: Path) -> None:
        """Opening a file of garbage bytes raises a StoreError that names the file."""
        path = tmp_path / "sagas.db"
        path.write_bytes(b"this is not a database\x00\xff" * 200)

        with pytest.raises(StoreError) as raised:
            SQLiteStore(path)

        assert str(path) in str(raised.value)

    def test_a_malformed_database_is_reported_as_corrupt(self, tmp_path: Path) -> None:
        """A database whose pages are damaged raises CorruptRecord naming the file, not
        StoreUnavailable (which would send the operator looking for a lock or a full disk)."""
        path = tmp_path / "sagas.db"
        with SQLiteStore(path) as store:
            store.apply([new_saga(f"s{i}", events=(Event("started", T0),)) for i in range(100)])
        with closing(sqlite3.connect(path)) as conn:
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        data = bytearray(path.read_bytes())
        data[page_size:] = b"\xde\xad\xbe\xef" * ((len(data) - page_size) // 4)
        path.write_bytes(bytes(data))

        with pytest.raises(CorruptRecord) as raised:
            SQLiteStore(path).close()

        assert str(path) in str(raised.value)

    def test_a_schema_version_mismatch_is_refused_at_open(self, tmp_path: Path) -> None:
        """A file written by another schema version raises StoreError naming both versions."""
        path = tmp_path / "sagas.db"
        SQLiteStore(path).close()
        with closing(sqlite3.connect(path)) as conn, conn:
            conn.execute("UPDATE understudy_meta SET value = '99' WHERE key = 'schema_version'")

        with pytest.raises(StoreError) as raised:
            SQLiteStore(path)

        message = str(raised.value)
        assert "schema version 99" in message
        assert f"expects {SCHEMA_VERSION}" in message
        assert str(path) in message
