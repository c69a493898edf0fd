"""Ownership in the store: the shard count, a second runtime on one store, and fencing of a
saga host that lost its lease."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from apps import AskStatus, Shop
from conftest import STORES, effects, order_definition, recorders, start_runtime, store_location
from participants import Unhurried

from understudy import Understudy
from understudy.errors import (
    LeaseLost,
    ShardCountMismatch,
    StoreError,
    StoreInUse,
    StoreUnavailable,
)
from understudy.persistence import open_store
from understudy.persistence.sqlite import SQLiteStore
from understudy.supervisors.leases import about_me


def test_the_shard_count_is_fixed_when_the_store_is_created(tmp_path: Path) -> None:
    """A store created with two shards keeps two; a start that asks for three is refused with
    the count to use, and a start that asks for nothing takes the store's count."""
    start_runtime(tmp_path, hosts=2).shutdown()
    with pytest.raises(ShardCountMismatch, match=r"created with 2 shard.*shards=2"):
        start_runtime(tmp_path, hosts=3)
    with start_runtime(tmp_path) as us:
        assert 2 == len(us.hosts().host_pids)
        assert "completed" == us.run("order-1", "order", {}).status


def test_a_second_runtime_on_a_store_in_use_is_refused_at_once(tmp_path: Path, base: str) -> None:
    """While one runtime works a store, a second start on it fails at once with StoreInUse,
    naming the holder; the first runtime goes on."""
    with start_runtime(tmp_path, base=base) as first:
        began = time.monotonic()
        with pytest.raises(StoreInUse, match="in use by another understudy runtime"):
            start_runtime(tmp_path, base=base)
        assert time.monotonic() - began < 30  # refused, not timed out after waiting
        assert "completed" == first.run("order-1", "order", {}).status


def test_a_store_is_free_again_after_a_clean_shutdown(tmp_path: Path) -> None:
    """A runtime that shut down released its shards: the next start needs no wait."""
    with start_runtime(tmp_path) as us:
        us.run("order-1", "order", {})
    with SQLiteStore(tmp_path / "sagas.db") as store:
        assert [""] == [lease.holder for lease in store.leases()]
    with start_runtime(tmp_path) as us:
        assert "completed" == us.run("order-2", "order", {}).status


def test_leases_left_by_a_runtime_that_stopped_in_this_process_do_not_block_a_start(
    tmp_path: Path,
) -> None:
    """A lease that names this very process for a runtime no longer running here (its
    shutdown hung, or its failed start could not give the lease back) is taken over at once."""
    start_runtime(tmp_path).shutdown()
    with SQLiteStore(tmp_path / "sagas.db") as store:
        left = store.acquire(0, "a-runtime-gone", 60.0, about_me(None))
        assert left is not None
    began = time.monotonic()
    with start_runtime(tmp_path) as us:
        assert "completed" == us.run("order-1", "order", {}).status
    assert time.monotonic() - began < 30  # not the 60 s the lease had left


def test_two_runtimes_started_at_the_same_moment_never_deadlock(tmp_path: Path) -> None:
    """Two starts racing on one fresh store: one runs, the other is refused with a clear
    error; neither waits for the other until a timeout."""
    outcomes: list[object] = []

    def start() -> None:
        try:
            outcomes.append(start_runtime(tmp_path, timeout=60))
        except StoreError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=start) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    runtimes = [o for o in outcomes if isinstance(o, Understudy)]
    try:
        assert 2 == len(outcomes)
        assert 1 == len(runtimes), outcomes
        refused = [o for o in outcomes if not isinstance(o, Understudy)]
        assert isinstance(refused[0], StoreInUse), refused
        assert "completed" == runtimes[0].run("order-1", "order", {}).status
    finally:
        for runtime in runtimes:
            runtime.shutdown()


def test_memory_store_is_refused_for_a_runtime(tmp_path: Path) -> None:
    """memory:// cannot be shared by the runtime's actors and queries: refused with the fix."""
    with pytest.raises(StoreError, match="use a SQLite file"):
        Understudy.start("memory://", [order_definition()], recorders(tmp_path))


def test_status_queries_do_not_take_the_write_lock(tmp_path: Path) -> None:
    """While another connection holds the store's write lock, a status query still answers."""
    with start_runtime(tmp_path) as us:
        us.run("order-1", "order", {})
        import sqlite3

        blocker = sqlite3.connect(tmp_path / "sagas.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            began = time.monotonic()
            assert "completed" == us.status("order-1")
            assert time.monotonic() - began < 4  # not the 5 s busy timeout of a writer
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()


def test_an_app_actors_status_query_does_not_take_the_write_lock(tmp_path: Path) -> None:
    """The coordinator answers an app actor's QueryStatus while another connection holds the
    store's write lock: it reads without asking for that lock."""
    import sqlite3

    with start_runtime(tmp_path) as us:
        us.run("order-1", "order", {})
        blocker = sqlite3.connect(tmp_path / "sagas.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with us.private() as handle:
                shop = handle.createActor(Shop)
                reply = handle.ask(shop, AskStatus(us.address, "order-1"), 30)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
    assert ("order-1", "completed", None) == (reply.saga_id, reply.status, reply.reason)


@pytest.mark.multiproc
@pytest.mark.parametrize("backend", STORES)
def test_a_paused_host_that_lost_its_lease_writes_nothing_and_stops(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    """A saga host stopped with SIGSTOP past its lease, while another holder takes its shard,
    writes nothing when it is resumed with SIGCONT and exits; the new holder's work stands."""
    location = store_location(backend, request, tmp_path)
    # Reserving and charging take a second each: the saga still waits on the reservation when
    # the host is paused right after the order is created (quick steps could complete the saga
    # first, and there would be no caller left to tell), and its reply reaches the host while
    # it is paused, to be read at resume.
    participants = [
        (name, Unhurried, {**options, "delay": 1.0}) if name != "orders" else (name, c, options)
        for name, c, options in recorders(tmp_path)
    ]
    definition = order_definition(timeout=30.0)
    us = start_runtime(
        tmp_path,
        [definition],
        participants,
        base="multiprocTCPBase",
        hosts=1,
        lease_ttl=1.0,
        store=location,
    )
    try:
        host_pid = us.hosts().host_pids[0]
        # A saga that waits on a reply while the host is paused: its reply arrives at resume.
        done = us.submit_future("order-1", "order", {})
        deadline = time.monotonic() + 30
        while not effects(tmp_path / "orders.db") and time.monotonic() < deadline:
            time.sleep(0.01)
        # Paused inside a transaction, the host would hold the database's write lock (SQLite)
        # or the shard row's lock (PostgreSQL) and block every other writer until it resumes:
        # the test wants it paused between transactions, so a takeover that finds the store
        # locked lets the host run on for a moment and pauses it again.
        quick = {"busy_timeout": 0.5} if "://" not in location else {"statement_timeout": 0.5}
        lease = None
        try:
            for _ in range(20):
                os.kill(host_pid, signal.SIGSTOP)
                time.sleep(2.5)  # past the 1 s lease
                try:
                    with open_store(location, **quick) as store:
                        lease = store.acquire(0, "another-holder", 60.0, {"node": "elsewhere"})
                        before = store.get("order-1")
                        events_before = len(store.events("order-1"))
                    break
                except StoreUnavailable:
                    os.kill(host_pid, signal.SIGCONT)
                    time.sleep(0.05)
        finally:
            os.kill(host_pid, signal.SIGCONT)
        assert lease is not None and lease.epoch >= 2
        deadline = time.monotonic() + 30
        while _alive(host_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(host_pid), "the fenced host did not stop"
        with open_store(location) as store:
            after = store.get("order-1")
            assert before == after  # nothing written by the fenced host
            assert events_before == len(store.events("order-1"))
            assert "another-holder" == store.leases()[0].holder
        with pytest.raises(Exception, match="taken over"):
            us.run("order-2", "order", {}, timeout=30)
        # Its waiting caller is told, not left waiting: the saga is the new holder's now.
        told = done.exception(30)
        assert isinstance(told, LeaseLost) and "taken over" in str(told), told
    finally:
        # The coordinator answers a shutdown's stop once every host it had has stopped, and the
        # fenced host exited without one: the default 10 s would be waited out in full. A second
        # is plenty for the participants (and for a host still running when the test failed).
        us.shutdown(timeout=1.0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
