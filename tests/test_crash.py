"""Crashes at every persistence and messaging boundary: every saga still ends terminal, each
effect is applied at most once per key, and every started step of an aborted saga is
compensated in reverse order.

On the multi-process base the fault is a real SIGKILL of the process hosting the saga actors
(or of the participant); on the in-process base it is an exception at the same boundary, which
restarts the saga actor from its snapshot.
"""

from __future__ import annotations

import collections
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
from conftest import (
    STORES,
    all_effects,
    order_definition,
    recorders,
    start_runtime,
    store_location,
    timeline,
)
from participants import Ticker

from understudy import RestartPolicy, Understudy
from understudy.actors.watch import is_running
from understudy.failpoints import Fault
from understudy.persistence import open_store
from understudy.persistence.sqlite import SQLiteStore

FORWARD = [("create", "do"), ("reserve", "do"), ("charge", "do")]
BACKWARD = [("create", "do"), ("reserve", "do"), ("reserve", "undo"), ("create", "undo")]

HOST_POINTS = [
    "host.after_intent_commit",  # after the intent commit, before the send
    "host.after_send",  # after the send, before the reply
    "host.after_reply",  # after the reply, before the snapshot
    "host.before_commit",  # a batch (intent and snapshot) about to commit
    "host.after_compensation_intent",  # during compensation
    "host.after_terminal",  # terminal state durable, caller not told
]
PARTICIPANT_POINTS = ["participant.after_apply", "participant.before_apply"]


def _run_batch(us: Understudy, prefix: str, count: int = 8) -> dict[str, str]:
    """Start ``count`` sagas at once (every fourth rejected at the third step), wait for all."""
    futures = {
        f"{prefix}-{i}": us.submit_future(
            f"{prefix}-{i}", "order", {"reject": "charge"} if i % 4 == 0 else {}
        )
        for i in range(count)
    }
    return {saga_id: future.result(90).status for saga_id, future in futures.items()}


def _check_invariants(tmp_path: Path, statuses: dict[str, str], location: str) -> None:
    store = open_store(location, read_only=True)
    try:
        for saga_id, status in statuses.items():
            record = store.get(saga_id)
            assert record is not None and record.terminal, saga_id
            assert status == record.status
            expected = "compensated" if int(saga_id.rsplit("-", 1)[1]) % 4 == 0 else "completed"
            assert expected == status, (saga_id, record.reason)
            assert (FORWARD if expected == "completed" else BACKWARD) == timeline(tmp_path, saga_id)
    finally:
        store.close()
    if "://" not in location:
        with closing(sqlite3.connect(location)) as db:
            assert "ok" == db.execute("PRAGMA integrity_check").fetchone()[0]
    for name, rows in all_effects(tmp_path).items():
        duplicates = [k for k, n in collections.Counter(rows).items() if n > 1]
        assert duplicates == [], name


@pytest.fixture(params=STORES)
def saga_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The crashes at each boundary run with the saga store in SQLite and in PostgreSQL."""
    return store_location(request.param, request, tmp_path)


@pytest.mark.multiproc
@pytest.mark.parametrize("point", HOST_POINTS + PARTICIPANT_POINTS)
def test_sigkill_at_each_boundary(point: str, tmp_path: Path, saga_store: str) -> None:
    """A SIGKILL of the saga host (or participant) process at ``point`` is survived."""
    fired = tmp_path / "fired"
    fault = Fault(point, "kill", nth=2, once_file=str(fired))
    with start_runtime(
        tmp_path,
        [order_definition(timeout=1.0)],
        base="multiprocTCPBase",
        hosts=1,
        faults=[fault],
        store=saga_store,
    ) as us:
        statuses = _run_batch(us, "k")
        restarts = us.hosts().restarts
    assert fired.exists(), f"the fault at {point} never fired"
    if point.startswith("host."):
        assert restarts >= 1
    _check_invariants(tmp_path, statuses, saga_store)


@pytest.mark.parametrize("point", HOST_POINTS)
def test_exception_at_each_boundary_in_process(point: str, tmp_path: Path, saga_store: str) -> None:
    """On the in-process base an exception at ``point`` restarts the saga actor from its
    snapshot, and the saga still ends as it should."""
    fired = tmp_path / "fired"
    fault = Fault(point, "raise", nth=2, once_file=str(fired))
    with start_runtime(
        tmp_path,
        [order_definition(timeout=1.0)],
        faults=[fault],
        store=saga_store,
    ) as us:
        statuses = _run_batch(us, "x")
    assert fired.exists(), f"the fault at {point} never fired"
    _check_invariants(tmp_path, statuses, saga_store)


WORKER = """
import sys, time
sys.path[:0] = {paths!r}
from pathlib import Path
from conftest import order_definition, start_runtime
us = start_runtime(Path({tmp!r}), [order_definition(timeout=1.0)], base="multiprocTCPBase",
                   hosts=2)
# Thespian's multi-process admin detaches into its own session: report its process group so the
# test can kill every process of the application, as a machine crash would.
import os
print("pgid", os.getpgid(us.hosts().coordinator_pid), flush=True)
for i in range(400):
    payload = {{"reject": "charge"}} if i % 4 == 0 else {{"fail": {{"charge": 1}}}}
    us.submit("w-%d" % i, "order", payload)
    print("accepted w-%d" % i, flush=True)
time.sleep(60)
"""


@pytest.mark.multiproc
def test_whole_process_killed_mid_run_then_restarted(tmp_path: Path) -> None:
    """SIGKILL of the whole application (every actor process with it) mid-run: a new runtime
    on the same store finishes every saga whose start was acknowledged."""
    tests_dir = str(Path(__file__).parent)
    script = WORKER.format(paths=[tests_dir, str(Path(tests_dir).parent)], tmp=str(tmp_path))
    worker = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    accepted: list[str] = []
    assert worker.stdout is not None
    actor_group = int(worker.stdout.readline().split()[1])
    deadline = time.monotonic() + 60
    while len(accepted) < 120 and time.monotonic() < deadline:
        line = worker.stdout.readline()
        if not line:
            break
        accepted.append(line.split()[1])
    os.killpg(actor_group, signal.SIGKILL)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    worker.stdout.close()
    assert len(accepted) >= 120, "the worker did not get far enough to be killed mid-run"
    store = SQLiteStore(tmp_path / "sagas.db")
    unfinished_at_kill = len(store.unfinished())
    store.close()
    assert unfinished_at_kill > 0, "nothing was in flight when the process died"
    with start_runtime(
        tmp_path,
        [order_definition(timeout=1.0)],
        base="multiprocTCPBase",
        hosts=2,
    ) as us:
        assert us.resumed >= unfinished_at_kill
        for saga_id in accepted:
            record = us.wait(saga_id, timeout=60)
            expected = "compensated" if int(saga_id[2:]) % 4 == 0 else "completed"
            assert expected == record.status, (saga_id, record.reason)
            assert (FORWARD if expected == "completed" else BACKWARD) == timeline(tmp_path, saga_id)
    for name, rows in all_effects(tmp_path).items():
        duplicates = [k for k, n in collections.Counter(rows).items() if n > 1]
        assert duplicates == [], name


def test_a_saga_that_keeps_crashing_parks_and_the_others_finish(tmp_path: Path) -> None:
    """Past the restart intensity a crashing saga parks as failed; the other sagas complete."""
    fault = Fault("host.after_intent_commit", "raise", nth=1, saga_id="k-3", persistent=True)
    with start_runtime(
        tmp_path,
        [order_definition(timeout=1.0)],
        faults=[fault],
        policy=RestartPolicy(max_restarts=2, within=60.0),
    ) as us:
        futures = {f"k-{i}": us.submit_future(f"k-{i}", "order", {}) for i in range(1, 6)}
        outcomes = {saga_id: f.result(60) for saga_id, f in futures.items()}
    assert outcomes["k-3"].status == "failed"
    assert "crashed more than 2 times" in (outcomes["k-3"].reason or "")
    assert "finish step 'create' (create)" == outcomes["k-3"].outstanding[0]
    assert {"completed"} == {o.status for s, o in outcomes.items() if s != "k-3"}
    store = SQLiteStore(tmp_path / "sagas.db")
    claims = [e for e in store.events("k-3") if e.kind == "claimed"]
    store.close()
    assert len(claims) == 3  # two restarts, then the claim that parked it


@pytest.mark.multiproc
def test_a_restarted_participant_gets_the_outstanding_request_at_once(tmp_path: Path) -> None:
    """When a participant process dies after applying a request, its replacement receives the
    outstanding request again right away (no reply deadline has to pass) and replays the
    recorded result."""
    fired = tmp_path / "fired"
    fault = Fault("participant.after_apply", "kill", nth=1, saga_id="p-1", once_file=str(fired))
    with start_runtime(
        tmp_path,
        [order_definition(timeout=120.0)],
        base="multiprocTCPBase",
        faults=[fault],
    ) as us:
        finished = us.run("p-1", "order", {}, timeout=60)
    assert fired.exists()
    assert finished.status == "completed"
    with SQLiteStore(tmp_path / "sagas.db") as store:
        events = store.events("p-1")
    assert [e for e in events if e.kind == "timeout"] == []
    assert [e.detail.get("replayed") for e in events if e.kind == "done" and e.step == 0] == [True]
    assert timeline(tmp_path, "p-1") == FORWARD


ORPHAN = """
import os, sys, time
sys.path[:0] = {paths!r}
from pathlib import Path
from conftest import start_runtime
us = start_runtime(Path({tmp!r}), base="multiprocTCPBase", watch_interval=0.5)
print("pgid", os.getpgid(us.hosts().coordinator_pid), flush=True)
time.sleep(120)
"""


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.multiproc
def test_actor_processes_stop_when_their_owner_is_killed(tmp_path: Path) -> None:
    """Thespian's actor processes outlive the process that started them; understudy's stop
    themselves once they see the owner process has exited."""
    tests_dir = str(Path(__file__).parent)
    script = ORPHAN.format(paths=[tests_dir, str(Path(tests_dir).parent)], tmp=str(tmp_path))
    owner = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert owner.stdout is not None
    actor_group = int(owner.stdout.readline().split()[1])
    owner.stdout.close()
    os.killpg(owner.pid, signal.SIGKILL)  # the owner only: its actors are in another group
    owner.wait()
    assert _group_alive(actor_group)
    deadline = time.monotonic() + 60
    while _group_alive(actor_group) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = _group_alive(actor_group)
    if alive:
        os.killpg(actor_group, signal.SIGKILL)
    assert not alive, "the orphaned actor system kept running"


def test_a_duplicate_start_is_acknowledged_only_once_durable(tmp_path: Path) -> None:
    """Two starts of one id in flight together: if the start's commit fails, neither caller is
    told the saga was accepted (it does not exist); a later start runs it."""
    fault = Fault("host.before_commit", "raise", nth=1, once_file=str(tmp_path / "fired"))
    with start_runtime(tmp_path, faults=[fault]) as us:
        first = us.submit_future("dup", "order", {}, wait=False)
        second = us.submit_future("dup", "order", {}, wait=False)
        assert ["SagaRejected", "SagaRejected"] == [
            type(f.exception(30)).__name__ for f in (first, second)
        ]
        assert us._reader().get("dup") is None
        assert "completed" == us.run("dup", "order", {}).status


@pytest.mark.multiproc
def test_a_host_restarted_while_the_store_is_locked_recovers_once_it_is_free(
    tmp_path: Path,
) -> None:
    """A host killed while another connection holds the store's write lock comes back, keeps
    retrying its recovery, and finishes its sagas once the lock is gone."""
    slow = Fault(
        "participant.before_apply",
        "delay",
        nth=1,
        saga_id="s",
        delay=2.0,
        once_file=str(tmp_path / "slow"),
    )
    with start_runtime(
        tmp_path,
        [order_definition(timeout=1.0)],
        base="multiprocTCPBase",
        hosts=1,
        faults=[slow],
        store_options={"busy_timeout": 0.3},
    ) as us:
        us.submit("s", "order", {})
        host_pid = us.hosts().host_pids[0]
        lock = sqlite3.connect(tmp_path / "sagas.db", isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # a backup or another tool holding the write lock
        try:
            os.kill(host_pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while us.hosts().host_pids[0] in (0, host_pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1.0)  # the new host fails its first recovery while the lock is held
        finally:
            lock.execute("COMMIT")
            lock.close()
        assert "completed" == us.wait("s", timeout=30).status
        assert "completed" == us.run("n", "order", {}, timeout=30).status


@pytest.mark.multiproc
def test_starts_are_accepted_while_a_slow_participant_restarts(tmp_path: Path) -> None:
    """A participant with a slow setup (longer than the owner-watch interval) is not taken for
    an orphan; while it restarts, starts naming it are accepted and finish once it is back."""
    participants = recorders(tmp_path)
    participants[0][2]["setup_delay"] = 3  # type: ignore[index]
    with start_runtime(
        tmp_path,
        [order_definition()],
        participants,
        base="multiprocTCPBase",
        watch_interval=0.5,
    ) as us:
        assert "completed" == us.run("a", "order", {}).status
        os.kill(us.hosts().participant_pids["orders"], signal.SIGKILL)
        time.sleep(0.5)  # the replacement is still in its slow setup
        assert "completed" == us.run("a", "order", {}, timeout=30).status
        assert "completed" == us.run("b", "order", {}, timeout=30).status


@pytest.mark.multiproc
def test_a_saga_that_keeps_killing_its_host_parks_alone(tmp_path: Path) -> None:
    """A saga whose handling SIGKILLs its host on every load reaches the persisted recovery cap
    and parks; a neighbour on the same host, merely waiting on a slow participant, is not
    blamed and completes."""
    faults = [
        Fault("participant.before_apply", "delay", saga_id="Y", delay=1.5, persistent=True),
        Fault("host.after_intent_commit", "kill", saga_id="X", persistent=True),
    ]
    with start_runtime(
        tmp_path,
        [order_definition(timeout=10.0)],
        base="multiprocTCPBase",
        hosts=1,
        faults=faults,
        policy=RestartPolicy(max_recovery_attempts=4),
    ) as us:
        us.submit("Y", "order", {})
        us.submit("X", "order", {})
        x = us.wait("X", timeout=60)
        y = us.wait("Y", timeout=60)
    assert ("failed", "completed") == (x.status, y.status)
    assert "recovered 5 times without progress" in (x.reason or "")
    assert 0 == y.recovery_attempts


def _alive(pid: int) -> bool:
    return is_running((pid, None))


@pytest.mark.multiproc
def test_children_of_a_killed_coordinator_stop_themselves(tmp_path: Path) -> None:
    """Saga hosts and participants whose coordinator process died stop themselves instead of
    running on unsupervised, including a participant that handles wakeups of its own."""
    participants = recorders(tmp_path)
    participants[0] = ("orders", Ticker, participants[0][2])
    us = start_runtime(
        tmp_path,
        [order_definition()],
        participants,
        base="multiprocTCPBase",
        watch_interval=0.5,
    )
    try:
        info = us.hosts()
        children = [*info.host_pids.values(), *info.participant_pids.values()]
        assert all(_alive(pid) for pid in children)
        os.kill(info.coordinator_pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        survivors = [pid for pid in children if _alive(pid)]
        for pid in survivors:
            os.kill(pid, signal.SIGKILL)
    finally:
        # A shutdown first asks the coordinator to stop its children and waits for its answer
        # (10 s by default); a killed coordinator never answers, so only the system is stopped.
        us.shutdown(timeout=0)
    assert [] == survivors
