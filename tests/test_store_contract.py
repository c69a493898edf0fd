"""The saga store contract: one suite, run against every backend.

Each rule of :mod:`understudy.persistence.base` has a test here; the ``store`` fixture runs every
contract test once per backend (SQLite, memory, PostgreSQL). Integrity tests damage stored bytes
by hand, so they run on the SQL backends only. SQLite-only behaviour (durability, pragmas,
locking, bad files, schema upgrades) and PostgreSQL-only behaviour (a server that restarts,
terminates connections, holds credentials) are tested at the end.
"""

# Assertions read `expected == actual`, the house style for specification tests.

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import pytest
from pg import PostgresServer, restart_server, terminate_backends

from understudy import SagaDefinition, Step, failpoints
from understudy.actors.saga import Saga, Send
from understudy.errors import (
    CorruptRecord,
    LeaseLost,
    PayloadError,
    ShardCountMismatch,
    StoreError,
    StoreUnavailable,
)
from understudy.messages import StepReply
from understudy.persistence import integrity, open_store
from understudy.persistence.base import (
    APPLIED,
    COMPENSATED,
    COMPENSATING,
    COMPLETED,
    EVERYONE,
    FAILED,
    PENDING,
    REFUSED,
    RUNNING,
    CommandDone,
    CommandRecord,
    Event,
    Lease,
    NewSaga,
    Note,
    OperatorCommand,
    SagaRecord,
    SagaStore,
    Transition,
    Write,
)
from understudy.persistence.memory import MemoryStore
from understudy.persistence.sqlite import SCHEMA_VERSION, SQLiteStore

T0 = 1_700_000_000.0


def open_backend(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> tuple[SagaStore, str]:
    """A fresh store of ``backend`` and where it lives (a file path, a URL, or memory://)."""
    if backend == "sqlite":
        return SQLiteStore(tmp_path / "sagas.db"), str(tmp_path / "sagas.db")
    if backend == "postgres":
        # Asked for only here: the SQLite and memory runs never need a PostgreSQL server.
        url = str(request.getfixturevalue("postgres_url"))
        return open_store(url), url
    return MemoryStore(), "memory://"


@pytest.fixture(params=["sqlite", "memory", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SagaStore]:
    backend, _ = open_backend(str(request.param), request, tmp_path)
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
    reopen: bool = False,
    unwind: bool = False,
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
        reopen,
        unwind,
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


def test_a_transition_with_reopen_takes_up_a_failed_saga(store: SagaStore) -> None:
    """A saga parked as failed refuses a plain Transition and takes one with reopen (an
    operator's verb), its events with it."""
    store.apply([new_saga("s1")])
    store.apply([transition("s1", status=FAILED, snapshot_version=1, reason="boom")])
    retry = transition("s1", snapshot_version=2, events=(Event("retried", T0 + 2),))

    assert [False] == store.apply([retry])
    assert [True] == store.apply([attrs.evolve(retry, reopen=True)])

    record = store.get("s1")
    assert record is not None
    assert (RUNNING, 2, None) == (record.status, record.snapshot_version, record.reason)
    assert ["retried"] == kinds(store, "s1")


@pytest.mark.parametrize("closed", [COMPLETED, COMPENSATED])
def test_a_transition_with_reopen_never_takes_up_a_completed_or_compensated_saga(
    store: SagaStore, closed: str
) -> None:
    """reopen reaches only failed sagas: a completed or compensated one stays as it is."""
    store.apply([new_saga("s1")])
    store.apply([transition("s1", status=closed, snapshot_version=1)])
    before = store.get("s1")

    reopened = transition("s1", snapshot_version=2, reopen=True, events=(Event("late", T0),))
    assert [False] == store.apply([reopened])

    assert (before, []) == (store.get("s1"), store.events("s1"))


def test_a_transition_with_reopen_keeps_the_incarnation_and_version_fences(
    store: SagaStore,
) -> None:
    """reopen lifts the failed fence only: a stale incarnation or a snapshot version that is
    not newer still changes nothing."""
    store.apply([new_saga("s1")])
    store.apply([transition("s1", status=FAILED, snapshot_version=3)])
    store.claim("s1", recovery=False, at=T0 + 2)  # a failed saga is terminal: nothing to claim
    before = store.get("s1")

    results = store.apply(
        [
            transition("s1", incarnation=2, snapshot_version=4, reopen=True),
            transition("s1", incarnation=1, snapshot_version=3, reopen=True),
        ]
    )

    assert ([False, False], before) == (results, store.get("s1"))


# --- Transition with unwind: a completed child saga compensated because its parent compensates ---


def test_a_transition_with_unwind_takes_up_a_completed_saga(store: SagaStore) -> None:
    """A completed saga refuses a plain Transition and one with reopen, and takes one with
    unwind, its events with it, at the writer's incarnation. Once taken up it is no longer
    terminal: plain Transitions apply again, up to its new terminal status."""
    store.apply([new_saga("s1")])
    store.apply([transition("s1", status=COMPLETED, snapshot_version=1)])
    unwind = transition(
        "s1",
        status=COMPENSATING,
        snapshot_version=2,
        reason="its parent compensates",
        events=(Event("operator", T0 + 2, detail={"verb": "unwind"}),),
    )

    assert [False] == store.apply([unwind])
    assert [False] == store.apply([attrs.evolve(unwind, reopen=True)])
    record = store.get("s1")
    assert record is not None
    assert (COMPLETED, 1, []) == (record.status, record.snapshot_version, kinds(store, "s1"))

    assert [True] == store.apply([attrs.evolve(unwind, unwind=True)])

    record = store.get("s1")
    assert record is not None
    expected = (COMPENSATING, b"snapshot 2", 2, "its parent compensates", 1)
    actual = (
        record.status,
        record.snapshot,
        record.snapshot_version,
        record.reason,
        record.incarnation,
    )
    assert expected == actual
    assert [("operator", 1, {"verb": "unwind"})] == [
        (e.kind, e.incarnation, e.detail) for e in store.events("s1")
    ]
    assert ["s1"] == store.unfinished()
    done = transition("s1", status=COMPENSATED, snapshot_version=3, at=T0 + 3)
    assert [True] == store.apply([done])
    record = store.get("s1")
    assert record is not None
    assert (COMPENSATED, 3) == (record.status, record.snapshot_version)


def test_a_transition_with_unwind_may_write_a_completed_saga_terminal_at_once(
    store: SagaStore,
) -> None:
    """From completed, an unwind may go straight to compensated (nothing left to undo); the
    saga is then closed to every Transition, unwind included."""
    store.apply([new_saga("s1")])
    store.apply([transition("s1", status=COMPLETED, snapshot_version=1)])

    assert [True] == store.apply(
        [transition("s1", status=COMPENSATED, snapshot_version=2, unwind=True)]
    )
    assert [False, False, False] == store.apply(
        [
            transition("s1", status=COMPENSATING, snapshot_version=3, unwind=True),
            transition("s1", status=COMPENSATING, snapshot_version=3, reopen=True),
            transition("s1", status=COMPENSATING, snapshot_version=3),
        ]
    )
    record = store.get("s1")
    assert record is not None
    assert (COMPENSATED, 2) == (record.status, record.snapshot_version)


@pytest.mark.parametrize("closed", [COMPENSATED, FAILED])
def test_a_transition_with_unwind_never_takes_up_a_compensated_or_failed_saga(
    store: SagaStore, closed: str
) -> None:
    """unwind reaches completed sagas only: nothing takes up a compensated one, and one parked
    as failed waits for an operator (a reopen)."""
    store.apply([new_saga("s1")])
    store.apply([transition("s1", status=closed, snapshot_version=1, reason="as it ended")])
    before = store.get("s1")

    unwound = transition(
        "s1", status=COMPENSATING, snapshot_version=2, unwind=True, events=(Event("late", T0),)
    )
    assert [False] == store.apply([unwound])

    assert (before, []) == (store.get("s1"), store.events("s1"))


def test_a_transition_with_unwind_keeps_the_incarnation_and_version_fences(
    store: SagaStore,
) -> None:
    """unwind lifts the completed fence only: a stale incarnation, or a snapshot version that
    is not newer, still changes nothing of a completed saga."""
    store.apply([new_saga("s1")])
    store.claim("s1", recovery=False, at=T0 + 1)  # incarnation 2
    store.apply([transition("s1", incarnation=2, status=COMPLETED, snapshot_version=3)])
    before = store.get("s1")
    events_before = store.events("s1")

    results = store.apply(
        [
            transition("s1", incarnation=1, status=COMPENSATING, snapshot_version=4, unwind=True),
            transition("s1", incarnation=3, status=COMPENSATING, snapshot_version=4, unwind=True),
            transition("s1", incarnation=2, status=COMPENSATING, snapshot_version=3, unwind=True),
            transition("s1", incarnation=2, status=COMPENSATING, snapshot_version=2, unwind=True),
        ]
    )

    assert ([False] * 4, before, events_before) == (results, store.get("s1"), store.events("s1"))
    current = transition("s1", incarnation=2, status=COMPENSATING, snapshot_version=4, unwind=True)
    assert [True] == store.apply([current])


def test_transitions_with_and_without_unwind_apply_together_in_one_batch(
    store: SagaStore,
) -> None:
    """One batch mixes plain, reopen and unwind Transitions of several sagas, and of one saga
    in a row: each is fenced as its own kind, and a write sees the writes before it in the
    batch (a saga completed, then unwound, then compensated)."""
    store.apply([new_saga(saga_id) for saga_id in ("run", "done", "parked", "closed", "chain")])
    store.apply(
        [
            transition("done", status=COMPLETED),
            transition("parked", status=FAILED),
            transition("closed", status=COMPLETED),
        ]
    )

    results = store.apply(
        [
            transition("run", status=COMPENSATING, snapshot_version=2, unwind=True),
            transition("done", status=COMPENSATING, snapshot_version=2, unwind=True),
            transition("parked", status=RUNNING, snapshot_version=2, unwind=True),
            transition("closed", status=RUNNING, snapshot_version=2, reopen=True),
            transition("chain", status=COMPLETED, snapshot_version=1),
            transition("chain", status=COMPENSATING, snapshot_version=2, unwind=True),
            transition("chain", status=COMPENSATED, snapshot_version=3),
            transition("chain", status=RUNNING, snapshot_version=4, unwind=True),
        ]
    )

    assert [True, True, False, False, True, True, True, False] == results
    statuses = {
        saga_id: (record.status, record.snapshot_version)
        for saga_id, record in store.get_many(["run", "done", "parked", "closed", "chain"]).items()
    }
    assert {
        "run": (COMPENSATING, 2),
        "done": (COMPENSATING, 2),
        "parked": (FAILED, 1),
        "closed": (COMPLETED, 1),
        "chain": (COMPENSATED, 3),
    } == statuses


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


# --- notes ---------------------------------------------------------------------------------------


def test_a_note_appends_events_and_changes_nothing_of_the_row(store: SagaStore) -> None:
    """A note's events join the saga's timeline at its incarnation, after its own; the row
    (snapshot, version, status, updated_at, incarnation) stays exactly as it was."""
    store.apply([new_saga("s1", events=(Event("started", T0),)), transition("s1")])
    store.claim("s1", recovery=False, at=T0 + 2)
    before = store.get("s1")
    suspended = Event("suspended", T0 + 3, detail={"definition": "order", "version": 1})

    assert [True] == store.note([Note("s1", 2, (suspended,))])

    assert before == store.get("s1")
    events = store.events("s1")
    assert [("started", 1), ("claimed", 2), ("suspended", 2)] == [
        (e.kind, e.incarnation) for e in events
    ]
    assert (T0 + 3, suspended.detail, None) == (
        events[-1].at,
        events[-1].detail,
        events[-1].corrupt,
    )


def test_a_note_for_another_incarnation_a_terminal_or_an_unknown_saga_writes_nothing(
    store: SagaStore,
) -> None:
    """A note applies only to an unfinished saga still at its incarnation; the others in the
    same call are refused one by one, and the rest is written."""
    store.apply([new_saga("old"), new_saga("done"), new_saga("ok")])
    store.claim("old", recovery=False, at=T0 + 1)
    store.apply([transition("done", status=COMPLETED)])
    event = (Event("suspended", T0 + 2),)

    results = store.note(
        [
            Note("old", 1, event),
            Note("done", 1, event),
            Note("nobody", 1, event),
            Note("ok", 1, event),
        ]
    )

    assert [False, False, False, True] == results
    assert [["claimed"], [], [], ["suspended"]] == [
        [k for k in kinds(store, s) if k != "started"] for s in ("old", "done", "nobody", "ok")
    ]


def test_a_note_under_a_lost_lease_raises_and_writes_nothing(store: SagaStore) -> None:
    """A note under a lease the shard has moved on from raises LeaseLost; no event is written."""
    old, _ = lost_lease(store)
    before = store.events("s1")

    with pytest.raises(LeaseLost):
        store.note([Note("s1", 1, (Event("suspended", T0 + 1),))], old)

    assert before == store.events("s1")


def test_a_note_under_the_lease_leaves_the_blame_as_it_stands(store: SagaStore) -> None:
    """A note is no batch of the sagas' own work: the shard's blame is not cleared by it, so a
    holder dying right after (while recovering) still blames whom it blamed."""
    store.fix_shards(1)
    store.apply([new_saga("s1")])
    lease = store.acquire(0, "host-a", LONG)
    assert lease is not None
    store.blame(lease, ["s1"])

    assert [True] == store.note([Note("s1", 1, (Event("suspended", T0 + 1),))], lease)

    successor = store.acquire(0, "host-a", LONG)
    assert successor is not None
    assert ("s1",) == successor.blamed


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


# --- shards and leases ---------------------------------------------------------------------------

LONG = 30.0  # a lease that outlives the test
SHORT = 0.05  # a lease the test waits out


def lost_lease(store: SagaStore) -> tuple[Lease, Lease]:
    """A store with one shard and saga s1 (with a 'started' event): a lease its holder lost
    (the shard was taken again since) and the lease that took it."""
    store.fix_shards(1)
    store.apply([new_saga("s1", events=(Event("started", T0),))])
    old = store.acquire(0, "host-a", LONG)
    current = store.acquire(0, "host-b", LONG) if old is None else store.acquire(0, "host-a", LONG)
    assert old is not None and current is not None
    return old, current


def test_fix_shards_fixes_the_count_and_keeps_it(store: SagaStore) -> None:
    """fix_shards returns the count it fixed, and the same count again on every later call."""
    assert (4, 4) == (store.fix_shards(4), store.fix_shards(4))


def test_fix_shards_with_another_count_raises_naming_both_counts(store: SagaStore) -> None:
    """Asking a store fixed at 4 shards for 3 raises ShardCountMismatch naming 4 and 3."""
    store.fix_shards(4)

    with pytest.raises(ShardCountMismatch) as raised:
        store.fix_shards(3)

    message = str(raised.value)
    assert (True, True) == ("with 4 shard(s)" in message, "asks for 3" in message)
    assert 4 == store.fix_shards(4)


def test_leases_lists_every_shard_free_at_epoch_zero(store: SagaStore) -> None:
    """A freshly fixed store lists each shard, in order, held by nobody at epoch 0."""
    store.fix_shards(3)

    assert [(0, "", 0), (1, "", 0), (2, "", 0)] == [
        (lease.shard, lease.holder, lease.epoch) for lease in store.leases()
    ]


def test_acquire_of_a_free_shard_gives_epoch_one(store: SagaStore) -> None:
    """The first acquire of a shard returns a lease at epoch 1 for that holder and shard."""
    store.fix_shards(2)

    lease = store.acquire(1, "host-a", LONG, {"pid": 42})

    assert lease is not None
    assert (1, "host-a", 1, {"pid": 42}) == (lease.shard, lease.holder, lease.epoch, lease.about)
    assert lease == attrs.evolve(store.leases()[1], blamed=lease.blamed)


def test_a_lease_expires_in_the_databases_clock_after_its_ttl(store: SagaStore) -> None:
    """A lease's expiry is the store's now() plus its ttl."""
    store.fix_shards(1)
    before = store.now()

    lease = store.acquire(0, "host-a", LONG)

    assert lease is not None
    assert before + LONG <= lease.expires_at <= store.now() + LONG


def test_now_is_the_databases_clock_close_to_this_machines(store: SagaStore) -> None:
    """now() is seconds since the epoch, within a minute of this machine's clock."""
    assert abs(time.time() - store.now()) < 60


def test_a_second_holder_is_refused_while_the_lease_runs(store: SagaStore) -> None:
    """acquire by another holder returns None while the first holder's lease has not expired."""
    store.fix_shards(1)
    first = store.acquire(0, "host-a", LONG)

    assert None is store.acquire(0, "host-b", LONG)
    assert [first] == [attrs.evolve(lease, blamed=()) for lease in store.leases()]


def test_a_second_holder_takes_an_expired_lease_with_the_next_epoch(store: SagaStore) -> None:
    """Once the first lease expired, another holder acquires the shard at the next epoch."""
    store.fix_shards(1)
    store.acquire(0, "host-a", SHORT)
    time.sleep(SHORT * 3)

    taken = store.acquire(0, "host-b", LONG)

    assert taken is not None
    assert ("host-b", 2) == (taken.holder, taken.epoch)


def test_the_same_holder_reacquires_at_once_with_a_new_epoch(store: SagaStore) -> None:
    """A holder acquiring the shard it holds (a restarted host) gets it at once, next epoch."""
    store.fix_shards(1)
    store.acquire(0, "host-a", LONG)

    again = store.acquire(0, "host-a", LONG)

    assert again is not None
    assert 2 == again.epoch


def test_renew_extends_the_lease_and_keeps_its_epoch(store: SagaStore) -> None:
    """renew moves the expiry to ttl seconds from now and leaves the epoch alone."""
    store.fix_shards(1)
    lease = store.acquire(0, "host-a", 1.0)
    assert lease is not None

    renewed = store.renew(lease, LONG)

    assert (1, True) == (renewed.epoch, renewed.expires_at > lease.expires_at)
    assert renewed.expires_at == store.leases()[0].expires_at


def test_expire_frees_the_shard_for_another_holder_at_once(store: SagaStore) -> None:
    """expire ends a running lease now: another holder acquires the shard without waiting."""
    store.fix_shards(1)
    lease = store.acquire(0, "host-a", LONG)
    assert lease is not None

    store.expire(0, lease.epoch)

    taken = store.acquire(0, "host-b", LONG)
    assert taken is not None
    assert ("host-b", 2) == (taken.holder, taken.epoch)


def test_expire_of_an_older_epoch_changes_nothing(store: SagaStore) -> None:
    """expire names the epoch it ends: the shard's newer lease keeps running."""
    old, _ = lost_lease(store)
    before = store.leases()

    store.expire(0, old.epoch)

    assert before == store.leases()
    assert None is store.acquire(0, "host-c", LONG)


def test_apply_with_the_current_lease_applies(store: SagaStore) -> None:
    """A batch under the shard's current lease is applied as without one."""
    store.fix_shards(1)
    lease = store.acquire(0, "host-a", LONG)

    assert [True, True] == store.apply([new_saga("s1"), transition("s1")], lease)
    assert 1 == store.get("s1").snapshot_version  # type: ignore[union-attr]


def test_claim_all_with_the_current_lease_claims(store: SagaStore) -> None:
    """claim_all under the shard's current lease claims as without one."""
    store.fix_shards(1)
    lease = store.acquire(0, "host-a", LONG)
    store.apply([new_saga("s1")])

    claimed = store.claim_all(["s1"], recovery=True, at=T0 + 1, lease=lease)

    assert [("s1", 2)] == [(saga_id, r.incarnation) for saga_id, r in claimed.items()]


def test_apply_with_a_lost_lease_raises_and_applies_nothing(store: SagaStore) -> None:
    """A batch under a lease the shard has moved on from raises LeaseLost; no row or event of
    it is written."""
    old, _ = lost_lease(store)
    before, events_before = store.get("s1"), store.events("s1")

    with pytest.raises(LeaseLost):
        store.apply(
            [new_saga("s2", events=(Event("started", T0),)), transition("s1")],
            old,
        )

    assert (before, events_before) == (store.get("s1"), store.events("s1"))
    assert (None, []) == (store.get("s2"), store.events("s2"))


def test_claim_all_with_a_lost_lease_raises_and_claims_nothing(store: SagaStore) -> None:
    """claim_all under a lost lease raises LeaseLost; no incarnation moves, no event is written."""
    old, _ = lost_lease(store)
    before, events_before = store.get("s1"), store.events("s1")

    with pytest.raises(LeaseLost):
        store.claim_all(["s1"], recovery=True, at=T0 + 1, lease=old)

    assert (before, events_before) == (store.get("s1"), store.events("s1"))


def test_blame_with_a_lost_lease_raises_and_records_nothing(store: SagaStore) -> None:
    """blame under a lost lease raises LeaseLost and leaves the shard's blame as it was."""
    old, _ = lost_lease(store)
    before = store.leases()

    with pytest.raises(LeaseLost):
        store.blame(old, ["s1"])

    assert before == store.leases()


def test_renew_of_a_lost_lease_raises_and_extends_nothing(store: SagaStore) -> None:
    """renew of a lost lease raises LeaseLost and leaves the current lease's expiry alone."""
    old, _ = lost_lease(store)
    before = store.leases()

    with pytest.raises(LeaseLost):
        store.renew(old, LONG * 10)

    assert before == store.leases()


def test_lease_lost_names_the_shard_and_both_epochs(store: SagaStore) -> None:
    """LeaseLost says which shard, the lost epoch and who holds it now at which epoch."""
    old, current = lost_lease(store)

    with pytest.raises(LeaseLost) as raised:
        store.apply([], old)

    message = str(raised.value)
    assert [True, True, True] == [
        "shard 0's lease at epoch 1" in message,
        f"epoch {current.epoch}" in message,
        repr(current.holder) in message,
    ]


def test_a_freshly_fixed_store_blames_nobody(store: SagaStore) -> None:
    """The first acquire of a store fixed while empty hands over an empty blame."""
    store.fix_shards(1)

    lease = store.acquire(0, "host-a", LONG)

    assert lease is not None
    assert () == lease.blamed


def test_shards_fixed_on_a_store_with_sagas_blame_everyone(store: SagaStore) -> None:
    """A store that held sagas before its shards were fixed knows nothing narrower: EVERYONE."""
    store.apply([new_saga("s1")])
    store.fix_shards(1)

    lease = store.acquire(0, "host-a", LONG)

    assert lease is not None
    assert EVERYONE is lease.blamed


def test_a_holder_that_dies_before_blaming_anyone_blames_everyone(store: SagaStore) -> None:
    """A holder that dies between acquire and its first blame (recovering) blames EVERYONE."""
    store.fix_shards(1)
    store.acquire(0, "host-a", LONG)

    successor = store.acquire(0, "host-a", LONG)

    assert successor is not None
    assert EVERYONE is successor.blamed


def test_blame_left_by_a_holder_that_died_goes_to_the_next_holder(store: SagaStore) -> None:
    """The sagas a holder blamed before it died (no release) are the next lease's blamed."""
    store.fix_shards(1)
    lease = store.acquire(0, "host-a", SHORT)
    assert lease is not None
    store.blame(lease, ["s1", "s2"])
    time.sleep(SHORT * 3)

    successor = store.acquire(0, "host-b", LONG)

    assert successor is not None
    assert ("s1", "s2") == successor.blamed


def test_blame_of_none_blames_everyone(store: SagaStore) -> None:
    """blame(lease, None) hands EVERYONE to the next holder."""
    store.fix_shards(1)
    lease = store.acquire(0, "host-a", LONG)
    assert lease is not None
    store.blame(lease, ["s1"])

    store.blame(lease, None)

    successor = store.acquire(0, "host-a", LONG)
    assert successor is not None
    assert EVERYONE is successor.blamed


def test_a_successful_apply_under_the_lease_clears_the_blame(store: SagaStore) -> None:
    """Once a batch blamed on some sagas commits under the lease, nobody is left to blame."""
    store.fix_shards(1)
    lease = store.acquire(0, "host-a", LONG)
    assert lease is not None
    store.blame(lease, ["s1"])

    store.apply([new_saga("s1")], lease)

    successor = store.acquire(0, "host-a", LONG)
    assert successor is not None
    assert () == successor.blamed


def test_release_leaves_nobody_to_blame_and_frees_the_shard_at_once(store: SagaStore) -> None:
    """After a release another holder acquires the shard at once, with nobody blamed."""
    store.fix_shards(1)
    lease = store.acquire(0, "host-a", LONG)
    assert lease is not None
    store.blame(lease, ["s1"])

    store.release(lease)

    successor = store.acquire(0, "host-b", LONG)
    assert successor is not None
    assert ("host-b", 2, ()) == (successor.holder, successor.epoch, successor.blamed)


def test_release_of_a_lost_lease_leaves_the_shard_alone(store: SagaStore) -> None:
    """Releasing a lease the shard moved on from changes nothing: the new holder keeps it."""
    old, _ = lost_lease(store)
    before = store.leases()

    store.release(old)

    assert before == store.leases()


# --- operators' commands -------------------------------------------------------------------------


def operator_command(
    saga_id: str = "s1", *, shard: int = 0, verb: str = "retry", at: float = T0
) -> OperatorCommand:
    return OperatorCommand(saga_id, shard, verb, {"step": 1}, "alice", "the card works again", at)


def command_done(
    record: CommandRecord,
    incarnation: int | None = 1,
    *,
    state: str = APPLIED,
    events: tuple[Event, ...] = (),
) -> CommandDone:
    return CommandDone(
        record.id, record.saga_id, incarnation, state, f"{record.verb}: {state}", T0 + 5, events
    )


def states(store: SagaStore, *records: CommandRecord) -> list[str]:
    """The state each of ``records`` is in now."""
    found = [store.command(record.id) for record in records]
    return [record.state if record is not None else "missing" for record in found]


def test_submit_returns_a_pending_command_with_an_id_and_every_field(store: SagaStore) -> None:
    """submit stores the command as pending and returns it with its id; reading it back by id
    gives the same record, every field (nested arguments too) as submitted."""
    args = {"step": 2, "result": {"id": "o-1", "lines": [1, 2.5, None, True]}, "raw": b"\x00\xff"}
    submitted = OperatorCommand("s1", 3, "resolve", args, "alice", "refunded by hand", T0 + 0.25)

    record = store.submit(submitted)

    expected = CommandRecord(
        record.id, "s1", 3, "resolve", args, "alice", "refunded by hand", T0 + 0.25,
        PENDING, None, None,
    )  # fmt: skip
    assert (True, expected) == (isinstance(record.id, int), record)
    assert expected == store.command(record.id)


def test_command_ids_grow(store: SagaStore) -> None:
    """Each command submitted gets a larger id than the one before."""
    ids = [store.submit(operator_command(f"s{n}")).id for n in range(3)]

    assert sorted(set(ids)) == ids


def test_command_of_an_unknown_id_is_none(store: SagaStore) -> None:
    """Reading a command id the store never gave out returns None."""
    store.submit(operator_command())

    assert None is store.command(10_000)


def test_commands_filter_by_shard_saga_and_pending_oldest_first(store: SagaStore) -> None:
    """commands() lists pending commands oldest first; shard and saga_id narrow it, and
    pending=False adds the ones already done."""
    store.apply([new_saga("a"), new_saga("b")])
    a0 = store.submit(operator_command("a", shard=0))
    b1 = store.submit(operator_command("b", shard=1))
    a0_again = store.submit(operator_command("a", shard=0, verb="cancel"))
    b1_again = store.submit(operator_command("b", shard=1, verb="pause"))
    assert [True] == store.apply([command_done(a0)])
    done = store.command(a0.id)

    def ids(records: list[CommandRecord]) -> list[int]:
        return [record.id for record in records]

    assert [b1.id, a0_again.id, b1_again.id] == ids(store.commands())
    assert [a0_again.id] == ids(store.commands(shard=0))
    assert [b1.id, b1_again.id] == ids(store.commands(saga_id="b"))
    assert [] == store.commands(shard=0, saga_id="b")
    assert [done, store.command(a0_again.id)] == store.commands(saga_id="a", pending=False)
    assert [a0.id, b1.id, a0_again.id, b1_again.id] == ids(store.commands(pending=False))


def test_commands_honour_the_limit(store: SagaStore) -> None:
    """commands(limit=n) returns the n oldest that match; a negative limit is no limit."""
    submitted = [store.submit(operator_command(f"s{n}")).id for n in range(5)]

    assert submitted[:2] == [record.id for record in store.commands(limit=2)]
    assert submitted == [record.id for record in store.commands(limit=-1)]


def test_a_command_with_unencodable_arguments_is_refused_and_nothing_stored(
    store: SagaStore,
) -> None:
    """Arguments msgpack cannot encode raise PayloadError naming the field; no command is
    stored."""
    broken = attrs.evolve(operator_command(), args={"when": {1, 2}})

    with pytest.raises(PayloadError) as raised:
        store.submit(broken)

    assert ("when" in str(raised.value), []) == (True, store.commands(pending=False))


def test_a_command_done_applies_once(store: SagaStore) -> None:
    """A CommandDone marks its pending command with state, outcome and done_at, and writes
    its events; a second one for the same command returns False and changes nothing."""
    store.apply([new_saga("s1")])
    record = store.submit(operator_command())
    applied = command_done(record, events=(Event("command_applied", T0 + 5),))

    assert [True] == store.apply([applied])
    after = store.command(record.id)
    refused = command_done(record, state=REFUSED, events=(Event("command_refused", T0 + 6),))
    assert [False] == store.apply([refused])

    assert attrs.evolve(record, state=APPLIED, outcome="retry: applied", done_at=T0 + 5) == after
    assert (after, ["command_applied"]) == (store.command(record.id), kinds(store, "s1"))


def test_a_command_done_twice_in_one_batch_applies_once(store: SagaStore) -> None:
    """The second CommandDone of one command in the same batch sees the first: False."""
    store.apply([new_saga("s1")])
    record = store.submit(operator_command())

    results = store.apply([command_done(record), command_done(record, state=REFUSED)])

    assert ([True, False], [APPLIED]) == (results, states(store, record))


def test_a_command_done_is_fenced_by_the_incarnation(store: SagaStore) -> None:
    """A CommandDone from an owner whose saga was claimed since (a newer incarnation) returns
    False, writes no events, and leaves the command pending for the new owner."""
    store.apply([new_saga("s1")])
    record = store.submit(operator_command())
    store.claim("s1", recovery=True, at=T0 + 1)

    stale = command_done(record, 1, events=(Event("command_applied", T0 + 5),))
    assert [False] == store.apply([stale])

    assert (record, ["claimed"]) == (store.command(record.id), kinds(store, "s1"))
    assert [True] == store.apply([command_done(record, 2)])


def test_a_command_done_without_incarnation_applies_without_a_saga_and_writes_no_events(
    store: SagaStore,
) -> None:
    """A command for a saga the store does not hold is refused with incarnation None: it
    applies, and its events go nowhere (there is no timeline to write them to)."""
    record = store.submit(operator_command("ghost"))

    refused = command_done(record, None, state=REFUSED, events=(Event("command_refused", T0),))
    assert [True] == store.apply([refused])

    assert ([REFUSED], None, []) == (
        states(store, record),
        store.get("ghost"),
        store.events("ghost"),
    )


def test_a_command_done_with_an_incarnation_needs_the_saga_row(store: SagaStore) -> None:
    """With an incarnation, a CommandDone for a saga the store does not hold is fenced."""
    record = store.submit(operator_command("ghost"))

    assert [False] == store.apply([command_done(record, 1)])

    assert [PENDING] == states(store, record)


def test_command_done_events_land_at_the_rows_incarnation(store: SagaStore) -> None:
    """A CommandDone's events carry the saga row's incarnation, with or without one given."""
    store.apply([new_saga("s1")])
    store.claim("s1", recovery=False, at=T0 + 1)
    first, second = store.submit(operator_command()), store.submit(operator_command())

    store.apply([command_done(first, 2, events=(Event("first", T0 + 5),))])
    store.apply([command_done(second, None, events=(Event("second", T0 + 6),))])

    assert [("claimed", 2), ("first", 2), ("second", 2)] == [
        (e.kind, e.incarnation) for e in store.events("s1")
    ]


def test_a_command_done_sees_the_writes_before_it_in_its_batch(store: SagaStore) -> None:
    """In one batch, a CommandDone after a NewSaga finds the saga's row, and its events follow
    the events of a Transition written before it."""
    first, second = store.submit(operator_command()), store.submit(operator_command())

    results = store.apply(
        [
            new_saga("s1", events=(Event("started", T0),)),
            command_done(first, 1, events=(Event("first_done", T0 + 1),)),
            transition("s1", events=(Event("step_done", T0 + 2),)),
            command_done(second, 1, events=(Event("second_done", T0 + 3),)),
        ]
    )

    assert [True] * 4 == results
    assert ["started", "first_done", "step_done", "second_done"] == kinds(store, "s1")
    assert [APPLIED, APPLIED] == states(store, first, second)


def test_a_command_done_after_a_fenced_transition_is_fenced_by_its_own_incarnation(
    store: SagaStore,
) -> None:
    """What holds when the Transition before it in the batch is fenced: the CommandDone is
    fenced by its incarnation alone, not by the Transition's result. With the stale
    incarnation that fenced the Transition, it is fenced too (the command stays pending); at
    the row's incarnation it applies even though the Transition (an old snapshot version) did
    not, so an owner marks a command applied only with the Transition that carried it out."""
    store.apply([new_saga("s1")])
    store.apply([transition("s1", snapshot_version=1)])
    stale, current = store.submit(operator_command()), store.submit(operator_command())
    store.claim("s1", recovery=False, at=T0 + 1)

    stale_batch: list[Write] = [
        transition("s1", incarnation=1, snapshot_version=2),
        command_done(stale, 1),
    ]
    old_version: list[Write] = [
        transition("s1", incarnation=2, snapshot_version=1),
        command_done(current, 2),
    ]

    assert [False, False] == store.apply(stale_batch)
    assert [False, True] == store.apply(old_version)
    assert [PENDING, APPLIED] == states(store, stale, current)


def test_a_command_done_under_a_lost_lease_raises_and_applies_nothing(store: SagaStore) -> None:
    """A batch carrying a CommandDone under a lease the shard has moved on from raises
    LeaseLost: the command stays pending and no row or event of the batch is written."""
    old, _ = lost_lease(store)
    record = store.submit(operator_command())
    before, events_before = store.get("s1"), store.events("s1")

    with pytest.raises(LeaseLost):
        store.apply(
            [
                transition("s1", events=(Event("retried", T0 + 2),)),
                command_done(record, events=(Event("command_applied", T0 + 2),)),
            ],
            old,
        )

    assert (before, events_before) == (store.get("s1"), store.events("s1"))
    assert record == store.command(record.id)


def test_a_command_done_that_would_leave_its_command_pending_is_refused(
    store: SagaStore,
) -> None:
    """A CommandDone must say applied or refused; pending raises ValueError and nothing of
    the batch is written."""
    record = store.submit(operator_command())

    with pytest.raises(ValueError):
        store.apply([new_saga("s1"), command_done(record, state=PENDING)])

    assert (None, record) == (store.get("s1"), store.command(record.id))


def test_submit_needs_no_lease_while_a_host_holds_the_shard(store: SagaStore) -> None:
    """Anyone may submit while a saga host holds the command's shard; the host's poll of its
    shard finds the command."""
    store.fix_shards(2)
    lease = store.acquire(1, "host-a", LONG)
    assert lease is not None

    record = store.submit(operator_command(shard=1))

    assert [record] == store.commands(shard=1)


# --- integrity -----------------------------------------------------------------------------------
#
# These damage stored bytes behind the store's back, with SQL, so they run on the SQL backends
# only: the memory store holds Python objects (nothing is ever encoded to damage), which is why
# its parametrisation is left out here rather than skipped.

ORDER = SagaDefinition(
    "order",
    1,
    [
        Step("create", "orders", "create", "cancel"),
        Step("reserve", "inventory", "reserve", "release"),
        Step("charge", "payments", "charge", "refund"),
    ],
)


@attrs.frozen
class SQLBackend:
    """A store, and a connection of its own to the same database to change rows behind the
    store's back (statements written with ``?``, as SQLite takes them)."""

    store: SagaStore
    query: Callable[[str, tuple[Any, ...]], list[Any]]
    where: str  # the store's file or URL, to open it again

    def set(self, table: str, column: str, value: Any, where: str, key: Any) -> None:
        self.query(f"UPDATE {table} SET {column} = ? WHERE {where} = ?", (value, key))

    def value(self, table: str, column: str, where: str, key: Any) -> Any:
        [(found,)] = self.query(f"SELECT {column} FROM {table} WHERE {where} = ?", (key,))
        return found


@pytest.fixture(params=["sqlite", "postgres"])
def sql_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLBackend]:
    backend, where = open_backend(str(request.param), request, tmp_path)
    if request.param == "sqlite":
        raw: Any = sqlite3.connect(where, isolation_level=None)  # autocommit
        raw.execute("PRAGMA synchronous = OFF")  # hundreds of damaging writes, no fsyncs
        marks = "?"
    else:
        import psycopg

        raw = psycopg.connect(where, autocommit=True)
        raw.execute("SET synchronous_commit = off")  # hundreds of damaging writes, no fsyncs
        marks = "%s"

    def query(sql: str, params: tuple[Any, ...]) -> list[Any]:
        cursor = raw.execute(sql.replace("?", marks), params)
        return list(cursor.fetchall()) if sql.startswith("SELECT") else []

    yield SQLBackend(backend, query, where)
    raw.close()
    backend.close()


def flipped(data: bytes, offset: int, mask: int = 0xFF) -> bytes:
    damaged = bytearray(data)
    damaged[offset] ^= mask
    return bytes(damaged)


def real_snapshot(saga_id: str) -> bytes:
    """The snapshot the saga machine writes after the first step of the order saga succeeded."""
    saga = Saga.restore(saga_id, ORDER, {"sku": "A1", "qty": 2}, 1, None, 0, 0)
    (send,) = [c for c in saga.begin(T0) if isinstance(c, Send)]
    r = send.request
    saga.on_reply(
        StepReply(r.saga_id, r.step, r.kind, r.key, r.attempt, r.incarnation, "ok", {"id": "o-1"}),
        T0 + 1,
    )
    return saga.snapshot()


def test_a_damaged_payload_is_reported_corrupt_naming_the_saga(sql_backend: SQLBackend) -> None:
    """A payload byte changed in the database makes get() return the row with corrupt set."""
    store = sql_backend.store
    store.apply([new_saga("s1")])
    sql_backend.set("understudy_sagas", "payload", flipped(b"payload of s1", 3), "saga_id", "s1")

    record = store.get("s1")

    assert record is not None
    assert (True, True) == (record.corrupt is not None, "'s1'" in str(record.corrupt))


def test_a_damaged_snapshot_is_reported_corrupt_naming_the_saga(sql_backend: SQLBackend) -> None:
    """A snapshot byte changed in the database makes get() return the row with corrupt set."""
    store = sql_backend.store
    store.apply([new_saga("s1")])
    store.apply([transition("s1")])
    sql_backend.set("understudy_sagas", "snapshot", flipped(b"snapshot 1", 0), "saga_id", "s1")

    record = store.get("s1")

    assert record is not None
    assert (True, True) == (record.corrupt is not None, "'s1'" in str(record.corrupt))


def test_one_damaged_saga_does_not_stop_a_query_of_many(sql_backend: SQLBackend) -> None:
    """get_many of three sagas, one damaged, returns all three with only that one corrupt."""
    store = sql_backend.store
    store.apply([new_saga(s) for s in ("s1", "s2", "s3")])
    sql_backend.set("understudy_sagas", "payload", b"garbage", "saga_id", "s2")

    found = store.get_many(["s1", "s2", "s3"])

    assert {"s1": False, "s2": True, "s3": False} == {
        saga_id: record.corrupt is not None for saga_id, record in found.items()
    }
    assert ["s1", "s2", "s3"] == sorted(r.saga_id for r in store.list_sagas())


def test_a_snapshot_copied_from_another_saga_is_detected(sql_backend: SQLBackend) -> None:
    """A snapshot and its checksum copied whole from another saga's row fail the checksum."""
    store = sql_backend.store
    store.apply([new_saga("s1"), new_saga("s2")])
    store.apply([transition("s1", snapshot_version=2), transition("s2", snapshot_version=2)])
    store.apply([transition("s1", snapshot_version=3)])
    for column in ("snapshot", "snapshot_sum", "snapshot_version"):
        value = sql_backend.value("understudy_sagas", column, "saga_id", "s1")
        sql_backend.set("understudy_sagas", column, value, "saga_id", "s2")

    copied = store.get("s2")

    assert copied is not None
    assert (b"snapshot 3", True) == (copied.snapshot, "'s2'" in str(copied.corrupt))


def test_every_single_byte_change_of_a_real_snapshot_is_detected(
    sql_backend: SQLBackend,
) -> None:
    """Each byte of a real snapshot, changed (one bit, or every bit) at every offset, makes the
    row corrupt; before checksums some of these decoded into another valid state."""
    store = sql_backend.store
    snapshot = real_snapshot("order-17")
    store.apply([new_saga("order-17")])
    write = attrs.evolve(transition("order-17"), snapshot=snapshot)
    assert [True] == store.apply([write])
    assert None is store.get("order-17").corrupt  # type: ignore[union-attr]

    undetected = []
    for offset in range(len(snapshot)):
        for mask in (0x01, 0xFF):
            damaged = flipped(snapshot, offset, mask)
            sql_backend.set("understudy_sagas", "snapshot", damaged, "saga_id", "order-17")
            record = store.get("order-17")
            if record is None or record.corrupt is None:
                undetected.append((offset, mask))

    assert (True, []) == (len(snapshot) > 100, undetected)


def test_a_damaged_event_is_reported_corrupt_and_the_rest_of_the_timeline_read(
    sql_backend: SQLBackend,
) -> None:
    """An event detail byte changed in the database marks that event corrupt, with an empty
    detail; the saga's other events come back intact and nothing raises."""
    store = sql_backend.store
    store.apply(
        [
            new_saga(
                "s1",
                events=(
                    Event("started", T0, detail={"n": 1}),
                    Event("step_sent", T0, step=0, detail={"n": 2}),
                ),
            )
        ]
    )
    first, second = store.events("s1")
    detail = sql_backend.value("understudy_events", "detail", "seq", second.seq)
    sql_backend.set("understudy_events", "detail", flipped(bytes(detail), 1), "seq", second.seq)

    events = store.events("s1")

    assert [first] == events[:1]
    assert ({}, True) == (events[1].detail, "'s1'" in str(events[1].corrupt))


@pytest.mark.parametrize(
    ("column", "value"),
    [("args", b"\x81\xa4step\x02"), ("verb", "abandon"), ("shard", 7), ("saga_id", "s2")],
)
def test_a_damaged_command_is_reported_corrupt_naming_it(
    sql_backend: SQLBackend, column: str, value: Any
) -> None:
    """A command whose stored arguments, verb, shard or saga changed behind the store's back
    comes back corrupt (naming the command and its saga) from command() and commands(), and
    the commands next to it come back intact."""
    store = sql_backend.store
    damaged, intact = store.submit(operator_command()), store.submit(operator_command())
    sql_backend.set("understudy_commands", column, value, "id", damaged.id)

    found = store.command(damaged.id)
    listed = store.commands(pending=False)

    assert found is not None and found.corrupt is not None
    assert (True, True) == (f"command {damaged.id} " in found.corrupt, "saga " in found.corrupt)
    assert [found, intact] == listed


def test_command_arguments_that_do_not_decode_are_reported_corrupt(
    sql_backend: SQLBackend,
) -> None:
    """Arguments that are no msgpack map (stored with a checksum that holds: written by a
    faulty process) come back corrupt with empty arguments, never raised."""
    store = sql_backend.store
    record = store.submit(operator_command())
    for garbage in (b"\xc1", b"\x93\x01\x02\x03"):  # not msgpack; a list, not a map
        check = integrity.command_sum("s1", 0, "retry", garbage, "alice", "the card works again")
        sql_backend.set("understudy_commands", "args", garbage, "id", record.id)
        sql_backend.set("understudy_commands", "command_sum", check, "id", record.id)

        found = store.command(record.id)

        assert found is not None
        assert ({}, True) == (found.args, f"command {record.id} of saga 's1'" in str(found.corrupt))


def test_a_read_only_store_refuses_a_submit_as_it_refuses_a_batch(sql_backend: SQLBackend) -> None:
    """submit on a store opened read-only raises StoreUnavailable, as apply does, and stores
    nothing; the reader lists what a writer submitted."""
    written = sql_backend.store.submit(operator_command())

    with open_store(sql_backend.where, read_only=True) as reader:
        with pytest.raises(StoreUnavailable):
            reader.apply([new_saga("s2")])
        with pytest.raises(StoreUnavailable):
            reader.submit(operator_command("s2"))
        assert [written] == reader.commands(pending=False)


def test_a_store_from_before_commands_gains_the_table_when_opened_for_writing(
    sql_backend: SQLBackend,
) -> None:
    """A store created before the commands table existed reads no commands (and refuses a
    submit as a read-only store does) when opened read-only, and gets the table when opened
    for writing; a reader opened before that sees commands submitted after."""
    sql_backend.store.apply([new_saga("s1")])
    sql_backend.store.close()
    sql_backend.query("DROP TABLE understudy_commands", ())

    with open_store(sql_backend.where, read_only=True) as reader:
        assert ([], None, 1) == (
            reader.commands(pending=False),
            reader.command(1),
            len(reader.list_sagas()),
        )
        with pytest.raises(StoreUnavailable):
            reader.submit(operator_command())

        with open_store(sql_backend.where) as writer:
            record = writer.submit(operator_command())
            assert [record] == writer.commands()

        assert ([record], record) == (reader.commands(), reader.command(record.id))


def test_a_store_failure_inside_the_transaction_applies_nothing(sql_backend: SQLBackend) -> None:
    """A batch whose transaction fails before its commit (an injected I/O error) raises
    StoreUnavailable and leaves no row or event of it; the store works on afterwards."""
    store = sql_backend.store
    failpoints.arm([failpoints.Fault("store.in_transaction", "io_error")])
    try:
        with pytest.raises(StoreUnavailable):
            store.apply([new_saga("s1", events=(Event("started", T0),))])
    finally:
        failpoints.disarm()

    assert (None, []) == (store.get("s1"), store.events("s1"))
    assert [True] == store.apply([new_saga("s1")])


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

    def test_a_submit_waits_for_a_saga_hosts_transaction(self, tmp_path: Path) -> None:
        """submit from another connection waits (up to busy_timeout) for the write lock a
        saga host's batch holds, then stores the command."""
        path = tmp_path / "sagas.db"
        with SQLiteStore(path, busy_timeout=5.0) as store:
            with closing(
                sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            ) as host:
                host.execute("BEGIN IMMEDIATE")
                commit = threading.Timer(0.3, host.execute, ("COMMIT",))
                commit.start()
                started = time.monotonic()
                record = store.submit(operator_command())
                waited = time.monotonic() - started
                commit.join()

            assert (True, [record]) == (waited > 0.2, store.commands())

    def test_a_submit_to_a_database_locked_past_busy_timeout_raises_store_unavailable(
        self, tmp_path: Path
    ) -> None:
        """A submit that cannot get the write lock within busy_timeout raises StoreUnavailable
        naming the file, and stores nothing."""
        path = tmp_path / "sagas.db"
        with SQLiteStore(path, busy_timeout=0.2) as store:
            with closing(sqlite3.connect(path, isolation_level=None)) as locker:
                locker.execute("BEGIN IMMEDIATE")
                with pytest.raises(StoreUnavailable) as raised:
                    store.submit(operator_command())
                locker.execute("ROLLBACK")

            assert (True, []) == (str(path) in str(raised.value), store.commands())

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

    def test_a_schema_1_file_is_upgraded_in_place_and_its_rows_read_back_intact(
        self, tmp_path: Path
    ) -> None:
        """A file written by schema 1 (no checksums, no shards) opens as schema 2, every row and
        event intact, and takes shard leases."""
        path = tmp_path / "sagas.db"
        with closing(sqlite3.connect(path)) as conn, conn:
            conn.executescript(SCHEMA_1)
            conn.execute("INSERT INTO understudy_meta VALUES ('schema_version', '1')")
            conn.executemany(
                "INSERT INTO understudy_sagas VALUES (?, 'order', 1, ?, ?, ?, ?, ?, 0, ?, ?, ?)",
                [
                    ("s1", RUNNING, b"payload 1", b"snapshot 2", 2, 3, None, T0, T0 + 1),
                    ("s2", FAILED, b"payload 2", None, 0, 1, "boom", T0 + 2, T0 + 3),
                ],
            )
            conn.execute(
                "INSERT INTO understudy_events (saga_id, kind, at, step, attempt, incarnation, "
                "detail) VALUES ('s1', 'step_done', ?, 0, 1, 3, ?)",
                (T0 + 1, b"\x81\xa1k\x01"),  # msgpack of {"k": 1}
            )

        with SQLiteStore(path) as store:
            expected = [
                SagaRecord("s1", "order", 1, RUNNING, b"payload 1", b"snapshot 2", 2, 3, 0, None,
                           T0, T0 + 1),
                SagaRecord("s2", "order", 1, FAILED, b"payload 2", None, 0, 1, 0, "boom", T0 + 2,
                           T0 + 3),
            ]  # fmt: skip
            assert expected == [store.get("s1"), store.get("s2")]
            assert [("step_done", 0, 1, 3, {"k": 1}, None)] == [
                (e.kind, e.step, e.attempt, e.incarnation, e.detail, e.corrupt)
                for e in store.events("s1")
            ]
            assert 2 == store.fix_shards(2)
        with closing(sqlite3.connect(path)) as conn:
            assert ("2",) == conn.execute(
                "SELECT value FROM understudy_meta WHERE key = 'schema_version'"
            ).fetchone()

    def test_two_processes_creating_one_fresh_file_at_once_both_succeed(
        self, tmp_path: Path
    ) -> None:
        """Two processes opening the same new file at the same moment both get a store, every
        one of 50 times (creation waits for the other instead of failing)."""
        context = multiprocessing.get_context("spawn")
        barrier = context.Barrier(2)
        with context.Pool(2, initializer=_keep_barrier, initargs=(barrier,)) as pool:
            outcomes = [
                pool.map(_open_at_once, [str(tmp_path / f"sagas{n}.db")] * 2, chunksize=1)
                # Before the fix about one round in a hundred failed here (2 of 200): 50 rounds
                # catch that about four times in ten, in a few seconds.
                for n in range(50)
            ]

        assert [["ok", "ok"]] * 50 == outcomes


#: The tables of schema 1, as understudy before checksums and leases created them.
SCHEMA_1 = """
CREATE TABLE understudy_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE understudy_sagas (
    saga_id TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    version INTEGER NOT NULL,
    status TEXT NOT NULL,
    payload BLOB NOT NULL,
    snapshot BLOB,
    snapshot_version INTEGER NOT NULL DEFAULT 0,
    incarnation INTEGER NOT NULL DEFAULT 1,
    recovery_attempts INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX understudy_sagas_active
    ON understudy_sagas (created_at) WHERE status IN ('running', 'compensating');
CREATE INDEX understudy_sagas_status ON understudy_sagas (status, created_at);
CREATE TABLE understudy_events (
    seq INTEGER PRIMARY KEY,
    saga_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    at REAL NOT NULL,
    step INTEGER,
    attempt INTEGER,
    incarnation INTEGER NOT NULL,
    detail BLOB
);
CREATE INDEX understudy_events_saga ON understudy_events (saga_id, seq);
"""

_BARRIER: Any = None


def _keep_barrier(barrier: Any) -> None:
    """Pool initializer: the barrier both workers meet at (it can only travel at start)."""
    global _BARRIER
    _BARRIER = barrier


def _open_at_once(path: str) -> str:
    """Runs in a spawned worker: wait for the other worker, then open and close ``path``."""
    _BARRIER.wait(timeout=60)
    try:
        SQLiteStore(path).close()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ok"


# --- PostgreSQL only -----------------------------------------------------------------------------

PASSWORD = "S3cret-pw-4711"


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def with_password(url: str, user: str = "understudy", password: str = PASSWORD) -> str:
    """``url`` logging in as ``user`` with ``password`` (the test server trusts its superuser,
    so a password in the URL is accepted and ignored)."""
    parts = urlsplit(url)
    return parts._replace(netloc=f"{user}:{password}@{parts.netloc.rpartition('@')[2]}").geturl()


def free_port() -> int:
    import socket

    with closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rendered(exc: BaseException) -> str:
    """Everything a traceback of ``exc`` would print, chained exceptions included."""
    import traceback

    return "".join(traceback.format_exception(exc))


class TestPostgresStore:
    """What only a server-backed store has: a server that restarts, kills connections, times
    out, holds credentials, and is opened by many processes at once."""

    def test_data_survives_close_and_reopen(self, postgres_url: str) -> None:
        """A new store on the same database sees every row and event written before close."""
        with open_store(postgres_url) as first:
            first.apply([new_saga("s1", events=(Event("started", T0, detail={"k": b"v"}),))])
            first.claim("s1", recovery=True, at=T0 + 1)
            record = first.get("s1")
            events = first.events("s1")

        with open_store(postgres_url) as second:
            assert (record, events) == (second.get("s1"), second.events("s1"))

    def test_the_stores_connection_commits_with_synchronous_commit_on(
        self, postgres_url: str
    ) -> None:
        """The store's own session has synchronous_commit on: a commit returns once on disk."""
        with open_store(postgres_url) as store:
            row = store._conn.execute("SHOW synchronous_commit").fetchone()  # type: ignore[attr-defined]
            store._conn.rollback()  # type: ignore[attr-defined]

        assert ("on",) == row

    def test_a_database_with_synchronous_commit_off_is_refused(self, postgres_url: str) -> None:
        """A database whose commits would not wait for the disk is refused, saying why."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("ALTER DATABASE {} SET synchronous_commit = off").format(
                    sql.Identifier(database_name(postgres_url))
                )
            )

        with pytest.raises(StoreError) as raised:
            open_store(postgres_url)

        assert "synchronous_commit = off" in str(raised.value)
        with open_store(postgres_url, allow_async_commit=True) as store:
            assert [True] == store.apply([new_saga("s1")])

    def test_a_connection_terminated_between_calls_is_survived(self, postgres_url: str) -> None:
        """After the server terminated the store's connection, the next apply reconnects and
        is applied."""
        with open_store(postgres_url) as store:
            store.apply([new_saga("s1")])
            assert 1 == terminate_backends(postgres_url, database_name(postgres_url))

            assert [True] == store.apply([new_saga("s2")])

            assert ["s1", "s2"] == store.unfinished()

    def test_a_server_restart_between_calls_is_survived(
        self, postgres_server: PostgresServer, postgres_url: str
    ) -> None:
        """A store kept across a restart of the whole server works on its next call."""
        if not postgres_server.can_restart:
            pytest.skip("the server is not ours to restart: set UNDERSTUDY_TEST_POSTGRES_DIR")
        with open_store(postgres_url) as store:
            store.apply([new_saga("s1")])
            restart_server(postgres_server)

            assert [True] == store.apply([new_saga("s2")])

            assert ["s1", "s2"] == store.unfinished()

    def test_a_connection_lost_while_committing_raises_store_unavailable(
        self, postgres_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A connection lost with the COMMIT in flight raises StoreUnavailable saying the
        outcome is unknown; the next call reconnects and reads what is there."""
        dbname = database_name(postgres_url)

        def kill_connection(point: str, *args: object, **kwargs: object) -> None:
            if point == "store.in_transaction":
                terminate_backends(postgres_url, dbname)

        with open_store(postgres_url) as store:
            store.apply([new_saga("s0")])
            monkeypatch.setattr(failpoints, "hit", kill_connection)
            with pytest.raises(StoreUnavailable) as raised:
                store.apply([new_saga("s1")])
            monkeypatch.undo()

            assert "unknown" in str(raised.value)
            assert ["s0"] == store.unfinished()

    def test_a_deadlock_is_retried_inside_the_store(self, postgres_url: str) -> None:
        """A batch chosen as a deadlock's victim is run again by the store, and applies."""
        import psycopg

        with (
            open_store(postgres_url) as store,
            psycopg.connect(postgres_url, autocommit=True) as observer,
        ):
            store.fix_shards(1)
            lease = store.acquire(0, "host-a", LONG)
            store.apply([new_saga("s1")], lease)
            outcome: list[object] = []
            with psycopg.connect(postgres_url) as other:
                # The store's session (deadlock_timeout 1 s) detects the deadlock, not this one.
                other.execute("SET deadlock_timeout = '20s'")
                other.execute("UPDATE understudy_sagas SET updated_at = 0 WHERE saga_id = 's1'")
                batch = threading.Thread(
                    target=lambda: outcome.append(store.apply([transition("s1")], lease))
                )
                batch.start()
                # The batch holds its shard's row (the fence) and waits for s1...
                wait_for_session(observer, "wait_event_type = 'Lock'")
                # ...and this waits for the shard's row while holding s1: a deadlock.
                other.execute("UPDATE understudy_shards SET about = about WHERE shard = 0")
                other.commit()
                batch.join(30)

            assert [[True]] == outcome
            assert 1 == deadlocks_seen(observer)

    def test_a_statement_past_statement_timeout_raises_store_unavailable(
        self, postgres_url: str
    ) -> None:
        """A statement still waiting (here for a row lock) at statement_timeout raises
        StoreUnavailable, and the store works again once the lock is gone."""
        import psycopg

        with open_store(postgres_url, statement_timeout=0.2) as store:
            store.fix_shards(1)
            with psycopg.connect(postgres_url) as other:
                other.execute("SELECT 1 FROM understudy_shards WHERE shard = 0 FOR UPDATE")
                with pytest.raises(StoreUnavailable) as raised:
                    store.acquire(0, "host-a", LONG)
                other.rollback()

            assert "timed out" in str(raised.value)
            assert store.acquire(0, "host-a", LONG) is not None

    def test_an_unreachable_server_raises_store_unavailable_without_the_password(self) -> None:
        """Opening a store on a port nobody listens on raises StoreUnavailable naming the
        server, and the password appears nowhere in what a traceback would print."""
        port = free_port()

        with pytest.raises(StoreUnavailable) as raised:
            open_store(f"postgresql://understudy:{PASSWORD}@127.0.0.1:{port}/sagas")

        assert f"postgresql://127.0.0.1:{port}/sagas" in str(raised.value)
        assert PASSWORD not in rendered(raised.value)

    def test_a_refused_login_names_no_password(self, postgres_url: str) -> None:
        """A login the server refuses raises StoreError naming the server, never the password."""
        url = with_password(postgres_url, user="nobody_here")

        with pytest.raises(StoreError) as raised:
            open_store(url)

        assert "credentials" in str(raised.value)
        assert PASSWORD not in rendered(raised.value)

    def test_a_store_opened_with_a_password_never_shows_it(self, postgres_url: str) -> None:
        """A store whose URL holds a password keeps it out of its repr and its errors."""
        with open_store(with_password(postgres_url)) as store:
            shown = [repr(store), str(store)]
            with pytest.raises(StoreError) as raised:
                store.acquire(7, "host-a", LONG)  # no such shard
            shown.append(rendered(raised.value))

        assert [False, False, False] == [PASSWORD in text for text in shown]

    def test_redact_keeps_the_server_and_database_only(self) -> None:
        """The URL as shown keeps scheme, host, port and database: no user, password or query
        (except where the socket is)."""
        from understudy.persistence import redact

        urls = [
            f"postgresql://alice:{PASSWORD}@db.example:5433/sagas?sslmode=require&password=x1",
            f"postgres://alice@db.example/sagas?host=/run/postgresql&sslpassword={PASSWORD}",
        ]
        assert [
            "postgresql://db.example:5433/sagas",
            "postgres://db.example/sagas?host=/run/postgresql",
        ] == [redact(url) for url in urls]

    def test_read_only_refuses_a_database_without_the_schema_and_creates_nothing(
        self, postgres_url: str
    ) -> None:
        """A read-only open of an empty database raises StoreError and leaves it empty."""
        import psycopg

        with pytest.raises(StoreError) as raised:
            open_store(postgres_url, read_only=True)

        assert "holds no understudy tables" in str(raised.value)
        with psycopg.connect(postgres_url) as conn:
            tables = conn.execute(
                "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'understudy%'"
            ).fetchone()
        assert (0,) == tables

    def test_a_read_only_store_reads_and_refuses_writes(self, postgres_url: str) -> None:
        """A read-only store reads what a writer wrote; its own writes raise StoreUnavailable."""
        with open_store(postgres_url) as writer:
            writer.apply([new_saga("s1")])

        with open_store(postgres_url, read_only=True) as reader:
            assert ["s1"] == reader.unfinished()
            with pytest.raises(StoreUnavailable):
                reader.apply([new_saga("s2")])
            assert ["s1"] == reader.unfinished()

    def test_unknown_options_are_refused_by_name(self, postgres_url: str) -> None:
        """An option this backend does not take (SQLite's synchronous) raises StoreError
        naming it and the options it does take."""
        with pytest.raises(StoreError) as raised:
            open_store(postgres_url, synchronous="FULL")

        message = str(raised.value)
        assert (True, True) == ("synchronous" in message, "statement_timeout" in message)

    def test_the_postgres_scheme_opens_the_same_store(self, postgres_url: str) -> None:
        """postgres:// URLs open the PostgreSQL store as postgresql:// ones do."""
        from understudy.persistence.postgres import PostgresStore

        with open_store(postgres_url) as first:
            first.apply([new_saga("s1")])
        with open_store(postgres_url.replace("postgresql://", "postgres://", 1)) as second:
            assert (True, ["s1"]) == (isinstance(second, PostgresStore), second.unfinished())

    def test_many_stores_opening_a_fresh_database_at_once_all_succeed(
        self, postgres_url: str
    ) -> None:
        """Eight connections creating the schema of one fresh database at the same moment all
        open a store, every one of 5 times."""
        import psycopg

        outcomes = []
        for _ in range(5):
            with psycopg.connect(postgres_url, autocommit=True) as admin:
                admin.execute(
                    "DROP TABLE IF EXISTS understudy_meta, understudy_sagas, understudy_events, "
                    "understudy_shards, understudy_commands"
                )
            barrier = threading.Barrier(8)
            results: list[str] = []

            def open_at_once(
                barrier: threading.Barrier = barrier, results: list[str] = results
            ) -> None:
                barrier.wait(30)
                try:
                    open_store(postgres_url).close()
                except Exception as exc:
                    results.append(f"{type(exc).__name__}: {exc}")
                else:
                    results.append("ok")

            threads = [threading.Thread(target=open_at_once) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            outcomes.append(results)

        assert [["ok"] * 8] * 5 == outcomes

    def test_an_acquire_waits_for_a_batch_in_flight_under_the_old_lease(
        self, postgres_url: str
    ) -> None:
        """A batch that holds its shard's fence commits whole before another holder's acquire
        of the expired lease returns; the old holder's next batch is fenced."""
        import psycopg

        with (
            open_store(postgres_url) as old_host,
            open_store(postgres_url) as new_host,
            psycopg.connect(postgres_url, autocommit=True) as observer,
        ):
            old_host.fix_shards(1)
            lease = old_host.acquire(0, "host-a", 0.3)
            assert lease is not None
            outcome: list[object] = []
            # The batch stops 2 s inside its transaction, the fence taken, before its COMMIT.
            failpoints.arm([failpoints.Fault("store.in_transaction", "delay", delay=2.0)])
            try:
                batch = threading.Thread(
                    target=lambda: outcome.append(old_host.apply([new_saga("s1")], lease))
                )
                batch.start()
                wait_for_session(observer, "state = 'idle in transaction'")
                while new_host.now() <= lease.expires_at:
                    time.sleep(0.05)
                started = time.monotonic()
                taken = new_host.acquire(0, "host-b", LONG)
                waited = time.monotonic() - started
                batch.join(30)
            finally:
                failpoints.disarm()

            assert taken is not None
            assert ([[True]], 2, True) == (outcome, taken.epoch, waited > 0.5)
            assert new_host.get("s1") is not None
            with pytest.raises(LeaseLost):
                old_host.apply([new_saga("s2")], lease)


def deadlocks_seen(observer: Any, timeout: float = 10.0) -> int:
    """The database's count of deadlocks detected, once it shows one (statistics reach
    pg_stat_database within a second or so of the transaction)."""
    deadline = time.monotonic() + timeout
    while True:
        row = observer.execute(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        if row[0] or time.monotonic() > deadline:
            return int(row[0])
        time.sleep(0.05)


def wait_for_session(observer: Any, condition: str, timeout: float = 10.0) -> None:
    """Returns once another session of the database meets ``condition`` (SQL on
    pg_stat_activity)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = observer.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            f"AND pid <> pg_backend_pid() AND {condition}"
        ).fetchone()
        if row[0]:
            return
        time.sleep(0.01)
    raise TimeoutError(f"no other session came to {condition}")
