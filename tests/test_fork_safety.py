"""SQLite connections never cross fork(): actor processes are forked, and a connection
inherited by a child breaks the locking of the child's own connection to the same file (under
chaos this showed as commits lost while a second writer ran)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from conftest import start_runtime

from understudy import ActorSystemError


def _open_files(pid: int, directory: Path) -> list[str]:
    names = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory)):
            names.append(os.path.basename(target))
    return sorted(names)


pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads /proc")


@pytest.mark.multiproc
def test_actor_processes_hold_only_their_own_connections(tmp_path: Path) -> None:
    """The coordinator keeps no store connection open (it forks every child), so each saga
    host has exactly one connection to the store (and its shard's two blame files) and each
    participant only its own database."""
    with start_runtime(tmp_path, base="multiprocTCPBase", hosts=2) as us:
        us.run("a", "order", {})
        info = us.hosts()
        assert [] == _open_files(info.coordinator_pid, tmp_path)
        for shard, pid in info.host_pids.items():
            own = [
                "sagas.db",
                "sagas.db-shm",
                "sagas.db-wal",
                f"sagas.db.host{shard}.inflight",  # the input it handles
                f"sagas.db.shard{shard}.blame",  # the batch it commits
            ]
            assert own == _open_files(pid, tmp_path)
        for name, pid in info.participant_pids.items():
            assert [f"{name}.db", f"{name}.db-shm", f"{name}.db-wal"] == _open_files(pid, tmp_path)


def test_shutdown_closes_every_connection_of_the_runtime(tmp_path: Path) -> None:
    """In-process, participants and every thread's reader close at shutdown, not at garbage
    collection: nothing is left open for a later runtime to inherit."""
    us = start_runtime(tmp_path)
    us.run("a", "order", {})
    us.record("a")
    us.shutdown()
    assert [] == _open_files(os.getpid(), tmp_path)


@pytest.mark.multiproc
def test_a_multiprocess_start_with_the_store_open_here_is_refused(tmp_path: Path) -> None:
    start_runtime(tmp_path).shutdown()  # creates the store and the ledgers
    held = sqlite3.connect(tmp_path / "sagas.db")
    try:
        with pytest.raises(ActorSystemError, match=r"sagas\.db.*must not cross fork\(\)"):
            start_runtime(tmp_path, base="multiprocTCPBase", hosts=1)
    finally:
        held.close()
    start_runtime(tmp_path, base="multiprocTCPBase", hosts=1).shutdown()  # closed: it starts


@pytest.mark.multiproc
def test_shutdown_collects_the_actor_system_admin(tmp_path: Path) -> None:
    """Thespian detaches its admin process; shutdown collects it, so that a process that
    starts many runtimes (a chaos campaign) does not pile up zombies."""
    for _ in range(2):
        start_runtime(tmp_path, base="multiprocTCPBase", hosts=1).shutdown()
    zombies = []
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as children:
            for pid in children.read().split():
                with open(f"/proc/{pid}/stat") as stat:
                    if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                        zombies.append(pid)
    assert [] == zombies
