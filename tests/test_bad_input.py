"""Bad input gets a clear error that names the thing and the fix, and loses nothing."""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
from conftest import order_definition, recorders, start_runtime, timeline

from understudy import (
    ActorSystemError,
    DefinitionError,
    Participant,
    RetryPolicy,
    SagaDefinition,
    StoreUnavailable,
    Understudy,
    UnknownDefinition,
    action,
)
from understudy.failpoints import Fault
from understudy.persistence.base import Event, NewSaga, Transition
from understudy.persistence.sqlite import SQLiteStore

Start = Callable[..., Understudy]


def test_a_corrupt_snapshot_parks_that_saga_and_the_others_finish(
    start: Start, tmp_path: Path
) -> None:
    """A snapshot row that fails to decode parks its saga with the reason; others resume."""
    store = SQLiteStore(tmp_path / "sagas.db")
    store.apply(
        [
            NewSaga("bad", "order", 1, b"\x80", 1.0, (Event("started", 1.0),)),
            Transition("bad", 1, "running", b"\xc1\xc1 not msgpack", 1, 0, 2.0),
            NewSaga("good", "order", 1, b"\x80", 1.0, (Event("started", 1.0),)),
        ]
    )
    store.close()
    us = start()
    assert us.resumed == 2
    good = us.wait("good", timeout=30)
    bad = us.wait("bad", timeout=30)
    assert good.status == "completed"
    assert bad.status == "failed"
    assert "snapshot" in (bad.reason or "") and "decode" in (bad.reason or "")
    assert bad.snapshot == b"\xc1\xc1 not msgpack"  # kept for whoever investigates
    assert timeline(tmp_path, "bad") == []


def test_a_locked_database_is_a_clear_error_at_start(tmp_path: Path) -> None:
    """A store locked by another writer fails the start with StoreUnavailable naming the file."""
    path = tmp_path / "sagas.db"
    SQLiteStore(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreUnavailable, match=r"sagas\.db.*locked"):
            Understudy.start(
                path,
                [order_definition()],
                recorders(tmp_path),
                store_options={"busy_timeout": 0.2},
            )
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_read_only_database_is_a_clear_error_at_start(tmp_path: Path) -> None:
    """A store file that cannot be written fails the start with StoreUnavailable naming it."""
    path = tmp_path / "sagas.db"
    SQLiteStore(path).close()
    # Root ignores permission bits, so the file is made immutable instead (ext4 attribute).
    subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        with pytest.raises(StoreUnavailable, match=r"sagas\.db.*cannot be written"):
            Understudy.start(path, [order_definition()], recorders(tmp_path))
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_store_failure_during_a_run_refuses_new_starts_and_loses_nothing(
    start: Start, tmp_path: Path
) -> None:
    """While another connection holds the write lock, a start is refused with StoreUnavailable
    (not silently dropped); once the lock is gone the same saga id starts and completes."""
    us = start(store_options={"busy_timeout": 0.2})
    assert us.run("before", "order", {}).status == "completed"
    holder = sqlite3.connect(tmp_path / "sagas.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreUnavailable, match="locked"):
            us.run("during", "order", {}, timeout=30)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert us.run("during", "order", {}, timeout=30).status == "completed"
    assert timeline(tmp_path, "during") == [("create", "do"), ("reserve", "do"), ("charge", "do")]


def test_a_saga_resumes_only_under_its_own_definition_version(start: Start, tmp_path: Path) -> None:
    """A saga saved under v1 is left untouched by a runtime that only has v2 (which runs new
    sagas), and resumes to its end once a runtime has v1 again."""
    v1 = order_definition()
    slow = RetryPolicy(attempts=5, backoff=2.0, multiplier=1.0)  # waiting to retry at shutdown
    v1 = SagaDefinition("order", 1, [*v1.steps[:2], attrs.evolve(v1.steps[2], retry=slow)])
    v2 = SagaDefinition("order", 2, v1.steps)
    us = start([v1])
    us.submit("pinned", "order", {"fail": {"charge": 1}})
    us.shutdown()
    with SQLiteStore(tmp_path / "sagas.db") as store:
        before = store.get("pinned")
    assert before is not None and "running" == before.status

    only_v2 = start([v2])
    assert "completed" == only_v2.run("fresh", "order", {}).status
    assert before == only_v2.record("pinned")  # not claimed, not changed
    with pytest.raises(UnknownDefinition, match=r"pinned to definition 'order' v1"):
        only_v2.run("pinned", "order", {})
    only_v2.shutdown()

    both = start([v1, v2])
    assert "completed" == both.wait("pinned", timeout=30).status


def test_a_snapshot_past_its_cap_parks_the_saga(start: Start, tmp_path: Path) -> None:
    """Step results that would make the snapshot exceed max_snapshot_bytes park the saga with
    the reason instead of carrying a growing snapshot; nothing more is sent."""
    us = start(max_snapshot_bytes=20_000)
    finished = us.run("huge", "order", {"big": 30_000})
    assert finished.status == "failed"
    assert "max_snapshot_bytes" in (finished.reason or "")
    assert timeline(tmp_path, "huge") == [("create", "do")]
    with SQLiteStore(tmp_path / "sagas.db") as store:
        record = store.get("huge")
    assert record is not None and len(record.snapshot or b"") < 20_000
    assert us.run("small", "order", {}).status == "completed"


def test_a_kill_fault_on_the_in_process_base_is_refused(tmp_path: Path) -> None:
    """Every actor runs in the caller's process there: a kill would kill the caller."""
    with pytest.raises(ActorSystemError, match="would kill this very process"):
        start_runtime(tmp_path, faults=[Fault("host.after_send", "kill_system")])


def test_a_participant_that_would_shadow_what_understudy_relies_on_is_refused() -> None:
    """A handler named like an actor's own method (``send``), or state named like the
    participant's (``name``), would silently break every request: refused when the class is
    defined, naming what clashes with what."""
    with pytest.raises(DefinitionError, match=r"'send' \(used by Actor\)"):

        class Mailer(Participant):
            @action("send")
            def send(self, step: Any, db: Any) -> None:
                return None

    with pytest.raises(DefinitionError, match=r"'name' \(used by Participant\)"):

        class Named(Participant):
            name = "inventory"

    class Fine(Participant):  # handlers and the hooks meant for subclasses are fine
        max_in_flight = 8

        def setup(self, db: Any, options: dict[str, Any]) -> None:
            return None

        @action("send")
        def send_it(self, step: Any, db: Any) -> None:
            return None

    assert "send" in Fine._actions
