"""Integrity of stored rows: a saga never acts on a state it cannot vouch for.

A damaged snapshot (one that fails its checksum, or decodes to a state that makes no sense for
its definition) parks that saga as failed with a short reason naming the damage; the other sagas
of the store go on.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

import msgpack
from conftest import all_effects, order_definition, start_runtime

from understudy.actors.saga import DO, Saga
from understudy.messages import StepReply
from understudy.persistence.base import NewSaga, Transition
from understudy.persistence.sqlite import SQLiteStore

DEFINITION = order_definition(timeout=30.0)


def compensating(saga_id: str) -> Saga:
    """A saga whose third step was refused: compensating, with every step on its stack
    ``[0, 1, 2]`` (a step is pushed with its intent) and the compensation of step 2 out."""
    now = time.time()
    saga = Saga.restore(saga_id, DEFINITION, {}, 1, None, 0, 0)
    saga.begin(now)
    for step in (0, 1):
        reply = StepReply(saga_id, step, DO, f"{saga_id}:{step}:do", 1, 1, "ok", {})
        saga.on_reply(reply, now)
    refusal = StepReply(saga_id, 2, DO, f"{saga_id}:2:do", 1, 1, "rejected", reason="no")
    saga.on_reply(refusal, now)
    return saga


def store_sagas(path: Path, sagas: list[Saga]) -> None:
    """Write ``sagas`` to the store as a crashed runtime would have left them."""
    with SQLiteStore(path) as store:
        now = time.time()
        writes: list[NewSaga | Transition] = []
        for saga in sagas:
            writes.append(NewSaga(saga.saga_id, "order", 1, msgpack.packb({}), now))
            writes.append(Transition(saga.saga_id, 1, saga.status, saga.snapshot(), 1, 0, now))
        assert all(store.apply(writes))


def flip(path: Path, saga_id: str, find: bytes, replace: bytes) -> None:
    """Change bytes inside a stored snapshot behind the store's back (a damaged disk)."""
    with closing(sqlite3.connect(path)) as db:
        (snapshot,) = db.execute(
            "SELECT snapshot FROM understudy_sagas WHERE saga_id = ?", (saga_id,)
        ).fetchone()
        assert 1 == snapshot.count(find)
        db.execute(
            "UPDATE understudy_sagas SET snapshot = ? WHERE saga_id = ?",
            (snapshot.replace(find, replace), saga_id),
        )
        db.commit()


def test_a_flipped_byte_in_a_compensation_stack_parks_that_saga_only(tmp_path: Path) -> None:
    """The reported case: a compensating saga's stack [0, 1] became [-1, 1] on disk. The saga
    parks with a reason naming the damage, compensates nothing (step 0 is not "compensated" as a
    step -1), and a healthy saga in the same store finishes compensating."""
    damaged, healthy = compensating("order-damaged"), compensating("order-healthy")
    assert [0, 1, 2] == damaged.state.stack
    store_sagas(tmp_path / "sagas.db", [damaged, healthy])
    flip(tmp_path / "sagas.db", "order-damaged", b"\x93\x00\x01\x02", b"\x93\xff\x01\x02")
    with start_runtime(tmp_path) as us:
        parked = us.wait("order-damaged", 60)
        assert "compensated" == us.wait("order-healthy", 60).status
    assert "failed" == parked.status
    assert parked.reason is not None
    assert "fails its checksum" in parked.reason and "order-damaged" in parked.reason
    assert len(parked.reason) < 200
    undone = {
        (saga_id, step) for rows in all_effects(tmp_path).values() for saga_id, step, _ in rows
    }
    assert not any(saga_id == "order-damaged" for saga_id, _step in undone)


def test_a_state_that_makes_no_sense_is_never_acted_on(tmp_path: Path) -> None:
    """A snapshot whose checksum holds (written by a faulty process, or before checksums
    existed) but whose stack is [-1, 1] parks its saga with a reason that says what is wrong."""
    saga = compensating("order-odd")
    saga.state.stack = [-1, 1, 2]
    store_sagas(tmp_path / "sagas.db", [saga])
    with start_runtime(tmp_path) as us:
        parked = us.wait("order-odd", 60)
    assert "failed" == parked.status
    assert parked.reason is not None and "makes no sense" in parked.reason
    assert "compensation stack" in parked.reason
    assert [] == [row for rows in all_effects(tmp_path).values() for row in rows]
