"""Operating sagas: what each unfinished saga waits on and which are stuck (``understudy list``,
``show`` and :mod:`understudy.diagnosis`), and whether in-flight sagas would run under new
definitions (``understudy check-inflight``); the examples of docs/operating.md run as written.

Stuck sagas here are real: runtimes started on SQLite files and on PostgreSQL, a participant
that never answers, a step retried after a long backoff, a runtime started without the
definition version its store's sagas are pinned to, a runtime killed with SIGKILL on the
multi-process base. Nothing waits on a clock to pass: a deadline "passed" is asked about with a
later ``now``, and every wait for a state polls the store with a generous bound.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing, suppress
from pathlib import Path
from typing import Any

import attrs
import pytest
from conftest import FAST, STORES, store_location
from participants import Recorder, Silent

from understudy import RetryPolicy, SagaDefinition, Step, codec
from understudy.actors.watch import process_identity
from understudy.cli import main
from understudy.diagnosis import (
    DEFAULT_MARGIN,
    NOT_RUN,
    PARKS,
    REINTERPRETED,
    RUNNABLE,
    Backoff,
    Diagnosis,
    Idle,
    MissingDefinition,
    Reply,
    Unreadable,
    check_inflight,
    describe_owner,
    describe_wait,
    find_stuck,
    restarts,
    waiting_on,
)
from understudy.failpoints import Fault
from understudy.persistence import open_store
from understudy.persistence.base import Event, NewSaga, Transition
from understudy.persistence.sqlite import SQLiteStore
from understudy.runtime import Understudy

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "operating.md"
TESTS = Path(__file__).resolve().parent

#: A reply deadline and a retry backoff far longer than any test: a saga waiting on either
#: waits for the whole test.
NEVER = 600.0
SLOW = RetryPolicy(attempts=3, backoff=NEVER, max_backoff=NEVER)
#: Bound of every wait for a saga to reach a state (a busy two-core machine is slow).
WITHIN = 90.0


def shop(version: int = 1, ship_action: str = "ship", steps: int = 3) -> SagaDefinition:
    """create (orders), charge (payments: retried after NEVER seconds), ship (carrier)."""
    return SagaDefinition(
        "order",
        version,
        [
            Step("create", "orders", "create", "cancel", retry=FAST, compensation_retry=FAST),
            Step("charge", "payments", "charge", "refund", retry=SLOW, timeout=NEVER),
            Step("ship", "carrier", ship_action, "cancel", timeout=NEVER),
        ][:steps],
    )


def participants(tmp_path: Path) -> list[tuple[str, type, dict[str, Any]]]:
    """Recorders for orders and payments; the carrier never answers (Silent)."""
    return [
        ("orders", Recorder, {"database": str(tmp_path / "orders.db")}),
        ("payments", Recorder, {"database": str(tmp_path / "payments.db")}),
        ("carrier", Silent, {"database": str(tmp_path / "carrier.db")}),
    ]


@pytest.fixture(params=STORES)
def saga_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every test of a real store runs on SQLite and on PostgreSQL."""
    return store_location(request.param, request, tmp_path)


@pytest.fixture
def runtimes() -> Iterator[list[Understudy]]:
    """Runtimes a test starts, shut down after it (a test shuts some down itself)."""
    started: list[Understudy] = []
    yield started
    for runtime in started:
        runtime.shutdown()


def start(
    runtimes: list[Understudy],
    tmp_path: Path,
    store: str,
    definitions: list[SagaDefinition],
    **options: Any,
) -> Understudy:
    us = Understudy.start(store, definitions, participants(tmp_path), **options)
    runtimes.append(us)
    return us


def diagnosis_of(location: str, saga_id: str, **options: Any) -> Diagnosis:
    with closing(open_store(location, read_only=True)) as store:
        record = store.get(saga_id)
        assert record is not None, saga_id
        return waiting_on(store, record, **options)


def wait_for(location: str, saga_id: str, ready: Callable[[Diagnosis], bool]) -> Diagnosis:
    """Poll the store until ``saga_id``'s diagnosis satisfies ``ready``."""
    deadline = time.monotonic() + WITHIN
    with closing(open_store(location, read_only=True)) as store:
        while True:
            record = store.get(saga_id)
            if record is not None and not record.terminal:
                found = waiting_on(store, record)
                if ready(found):
                    return found
            assert time.monotonic() < deadline, f"{saga_id} never got there: {record}"
            time.sleep(0.05)


def at_ship(d: Diagnosis) -> bool:
    return isinstance(d.wait, Reply) and d.wait.step == 2


def in_backoff(d: Diagnosis) -> bool:
    return isinstance(d.wait, Backoff)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- why is it stuck -----------------------------------------------------------------------


def test_list_says_what_each_unfinished_saga_waits_on_and_which_are_stuck(
    tmp_path: Path,
    saga_store: str,
    runtimes: list[Understudy],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A saga waiting on a participant that never answers, and one waiting out a retry
    backoff: each says on what, since when and until when; neither is stuck while its runtime
    runs and its time has not passed; both are once that time passed by more than the margin,
    and both are once their runtime stopped (nobody holds their shard)."""
    us = start(runtimes, tmp_path, saga_store, [shop()])
    us.submit("silent", "order", {})
    us.submit("flaky", "order", {"fail": {"charge": -1}})
    reply = wait_for(saga_store, "silent", at_ship)
    backoff = wait_for(saga_store, "flaky", in_backoff)

    assert isinstance(reply.wait, Reply) and isinstance(backoff.wait, Backoff)
    r, b = reply.wait, backoff.wait
    assert ("do", 2, "ship", "carrier", "ship", 1) == (
        r.kind,
        r.step,
        r.step_name,
        r.participant,
        r.action,
        r.attempt,
    )
    assert r.sent_at is not None and r.sent_at == r.first_sent_at
    assert NEVER == pytest.approx(r.deadline - r.sent_at, abs=0.01)
    assert ("do", 1, "charge", "payments", "charge", 2) == (
        b.kind,
        b.step,
        b.step_name,
        b.participant,
        b.action,
        b.attempt,
    )
    assert b.failed_at is not None and NEVER == pytest.approx(b.due - b.failed_at, abs=0.01)
    assert "charge failing on purpose" in (b.failure or "")
    assert [("live", False, ())] * 2 == [
        (d.owner.state, d.owner.gone, d.stuck) for d in (reply, backoff)
    ]

    # Past their time by more than the margin (asked with a later clock): stuck.
    late = diagnosis_of(saga_store, "silent", now=r.deadline + DEFAULT_MARGIN + 5)
    assert 1 == len(late.stuck) and late.stuck[0].startswith("no reply")
    on_time = diagnosis_of(saga_store, "silent", now=r.deadline + DEFAULT_MARGIN - 5)
    assert () == on_time.stuck
    late = diagnosis_of(saga_store, "flaky", now=b.due + 60, margin=30)
    assert 1 == len(late.stuck) and late.stuck[0].startswith("retry")

    code, out, err = cli(capsys, "list", saga_store)
    assert (0, "") == (code, err)
    waits = out.split("\n\n")[1]
    assert "what the 2 unfinished saga(s) listed wait on (0 stuck):" in waits
    assert "silent: on time" in waits and "flaky: on time" in waits
    assert "reply from carrier.ship (step 2 ship, attempt 1): sent " in waits
    assert "retry of payments.charge (step 1 charge, attempt 2) due " in waits
    assert "attempt 1 failed " in waits and "charge failing on purpose" in waits
    assert f"owner: shard 0, pid {os.getpid()} (running)" in waits
    code, out, _ = cli(capsys, "list", saga_store, "--stuck")
    assert 0 == code and "no stuck sagas: 2 unfinished" in out

    us.shutdown()
    with closing(open_store(saga_store, read_only=True)) as store:
        stuck = find_stuck(store)
    assert [("flaky", "free", ("owner gone",)), ("silent", "free", ("owner gone",))] == [
        (d.saga_id, d.owner.state, d.stuck) for d in stuck
    ]
    code, out, _ = cli(capsys, "list", saga_store, "--stuck")
    assert 0 == code
    assert "2 stuck of 2 unfinished (margin 10 s)" in out
    assert "silent: stuck (owner gone)" in out and "flaky: stuck (owner gone)" in out
    assert "owner gone: nobody holds shard 0 (understudy was stopped)" in out
    code, out, _ = cli(capsys, "list", saga_store, "--stuck", "--status", "compensating")
    assert 0 == code and "no stuck sagas with status compensating" in out


def test_a_saga_pinned_to_a_missing_definition_version_says_so_and_restarts_count(
    tmp_path: Path,
    saga_store: str,
    runtimes: list[Understudy],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A runtime started without the version a saga is pinned to leaves it untouched and says
    so in its timeline (a ``suspended`` event): ``list`` names the missing version, what the
    runtime had and what the saga waited on before. A runtime with the version resumes it:
    the wait is the request sent again, and ``show`` counts that restart."""
    v1 = start(runtimes, tmp_path, saga_store, [shop(1)])
    v1.submit("pinned", "order", {})
    wait_for(saga_store, "pinned", at_ship)
    v1.shutdown()
    with closing(open_store(saga_store, read_only=True)) as store:
        before = store.get("pinned")

    start(runtimes, tmp_path, saga_store, [shop(2)])  # its start scans the store
    found = diagnosis_of(saga_store, "pinned")
    missing = found.wait
    assert isinstance(missing, MissingDefinition)
    assert ("order", 1, ("order v2",), os.getpid()) == (
        missing.definition,
        missing.version,
        missing.registered,
        missing.pid,
    )
    assert isinstance(missing.then, Reply) and "ship" == missing.then.step_name
    assert ("definition order v1 missing",) == found.stuck  # its owner runs: only that
    with closing(open_store(saga_store, read_only=True)) as store:
        assert before == store.get("pinned")  # the row as it was: not claimed, not changed
        assert "suspended" == store.events("pinned")[-1].kind
    code, out, _ = cli(capsys, "list", saga_store, "--stuck")
    assert 0 == code and "pinned: stuck (definition order v1 missing)" in out
    assert "definition order v1 is not registered: a runtime (pid " in out
    assert "that has only order v2 left it untouched" in out
    assert "then: reply from carrier.ship (step 2 ship, attempt 1)" in out
    code, out, _ = cli(capsys, "show", saga_store, "pinned")
    assert 0 == code and "restarts: 0" in out and "waiting: stuck (definition" in out
    runtimes.pop().shutdown()

    start(runtimes, tmp_path, saga_store, [shop(1), shop(2)])
    resent = wait_for(
        saga_store,
        "pinned",
        lambda d: isinstance(d.wait, Reply) and d.wait.sent_at != d.wait.first_sent_at,
    )
    assert isinstance(resent.wait, Reply) and () == resent.stuck
    assert resent.wait.first_sent_at is not None and resent.wait.sent_at is not None
    assert resent.wait.first_sent_at < resent.wait.sent_at
    code, out, _ = cli(capsys, "show", saga_store, "pinned")
    assert 0 == code
    assert "waiting: on time" in out and "again, after a restart; first sent" in out
    assert "restarts: 1 (each a new incarnation resumed from its snapshot; 0 counted" in out


def test_show_counts_a_restart_in_the_saga_host(
    tmp_path: Path, runtimes: list[Understudy], capsys: pytest.CaptureFixture[str]
) -> None:
    """A saga whose handling raised is restarted from its snapshot in its host, with a new
    incarnation and no recovery counted: ``show`` counts it (it used to say 0)."""
    store = str(tmp_path / "sagas.db")
    fired = tmp_path / "fired"
    fault = Fault("host.after_reply", "raise", nth=1, saga_id="r", once_file=str(fired))
    us = start(runtimes, tmp_path, store, [shop(steps=2)], faults=[fault])
    assert "completed" == us.run("r", "order", {}, timeout=WITHIN).status
    assert fired.exists()
    with SQLiteStore(tmp_path / "sagas.db") as opened:
        found = restarts(opened.events("r"))
    assert (1, 0) == (found.count, found.recoveries)
    code, out, _ = cli(capsys, "show", store, "r")
    assert 0 == code and "restarts: 1 (" in out and "0 counted against the recovery cap" in out
    assert "waiting" not in out  # it ended: it waits on nothing


def test_every_wait_and_owner_state_reads_as_it_should(tmp_path: Path) -> None:
    """The waits and owners the runtimes above do not produce, written as the saga host
    writes them: a compensation's reply, a snapshot that does not decode, a saga with no
    snapshot yet; a shard held on another machine, an expired lease, a holder that exited,
    a holder whose application exited, and a store no runtime ever started on."""
    t0 = time.time()
    snapshot = codec.encode(
        {
            "phase": "compensating",
            "step": 1,
            "attempt": 2,
            "stack": [0],
            "results": {"create": {}},
            "pending": ["undo", 0, 2, t0 + 5],
            "waiting": None,
            "pivot_passed": False,
            "reason": "step 'charge' was rejected",
            "outstanding": [],
            "timer": 3,
            "recovery_attempts": 0,
        }
    )
    undo = Event(
        "compensation-intent",
        t0,
        0,
        2,
        {"name": "create", "key": "u:0:undo", "participant": "orders", "action": "cancel"},
    )
    with SQLiteStore(tmp_path / "sagas.db") as store:
        store.apply([NewSaga(s, "order", 1, codec.encode({}), t0) for s in ("u", "bad", "new")])
        store.apply(
            [
                Transition("u", 1, "compensating", snapshot, 1, 0, t0, "rejected", (undo,)),
                Transition("bad", 1, "running", b"\xc1 not msgpack", 1, 0, t0),
            ]
        )
        nobody = diagnosis_of_store(store, "u", now=t0)
        assert ("none", True, None) == (nobody.owner.state, nobody.owner.gone, nobody.owner.shard)
        assert "the store has no shards" in describe_owner(nobody.owner)
        store.fix_shards(1)

        reply = diagnosis_of_store(store, "u", now=t0)
        assert isinstance(reply.wait, Reply) and ("undo", "cancel") == (
            reply.wait.kind,
            reply.wait.action,
        )
        assert describe_wait(reply.wait, t0).startswith(
            "reply from orders.cancel (compensation of step 0 create, attempt 2): sent "
        )
        bad = diagnosis_of_store(store, "bad", now=t0)
        assert isinstance(bad.wait, Unreadable) and "unreadable" in bad.stuck
        new = diagnosis_of_store(store, "new", now=t0 + DEFAULT_MARGIN + 1)
        assert isinstance(new.wait, Idle) and new.stuck[0].startswith("nothing recorded for")

        assert "free" == diagnosis_of_store(store, "u").owner.state
        lease = store.acquire(0, "elsewhere", 60.0, {"node": "another-machine", "pid": 7})
        assert lease is not None
        remote = diagnosis_of_store(store, "u").owner
        assert ("remote", False) == (remote.state, remote.gone)
        assert "pid 7 on another-machine (another machine" in describe_owner(remote)
        store.expire(0, lease.epoch)
        assert "expired" == diagnosis_of_store(store, "u").owner.state

        ended = subprocess.Popen([sys.executable, "-c", "pass"])
        ended_identity = process_identity(ended.pid)
        ended.wait()
        running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        try:
            pid, started = process_identity(running.pid)
            here = socket.gethostname()
            store.acquire(
                0, "h", 60.0, {"node": here, "pid": ended_identity[0], "started": ended_identity[1]}
            )
            dead = diagnosis_of_store(store, "u").owner
            assert ("dead", True) == (dead.state, dead.gone)
            about = {"node": here, "pid": pid, "started": started}
            about.update(app_pid=ended_identity[0], app_started=ended_identity[1])
            store.acquire(0, "h", 60.0, about)
            orphan = diagnosis_of_store(store, "u").owner
            assert ("orphan", True) == (orphan.state, orphan.gone)
            assert f"(pid {ended_identity[0]}) has exited" in describe_owner(orphan)
        finally:
            running.kill()
            running.wait()


def diagnosis_of_store(store: SQLiteStore, saga_id: str, **options: Any) -> Diagnosis:
    record = store.get(saga_id)
    assert record is not None
    return waiting_on(store, record, **options)


KILLED_OWNER = """
import os, sys, time
sys.path[:0] = {paths!r}
from pathlib import Path
from test_diagnosis import participants, shop
from understudy import Understudy
us = Understudy.start({store!r}, [shop()], participants(Path({tmp!r})), base="multiprocTCPBase",
                      hosts=1)
us.submit("orphaned", "order", {{}})
# Thespian's admin detaches into a session of its own: its process group, to kill it all.
print("pgid", os.getpgid(us.hosts().coordinator_pid), flush=True)
time.sleep(300)
"""


@pytest.mark.multiproc
def test_an_owner_killed_with_sigkill_is_gone_and_a_new_runtime_resumes(
    tmp_path: Path,
    saga_store: str,
    runtimes: list[Understudy],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every process of an application on the multi-process base killed with SIGKILL: its saga
    waits on a reply whose deadline is far off, but its shard's holder has exited, so it is
    stuck, owner gone. A new runtime takes the shard over and resumes it: one restart."""
    script = KILLED_OWNER.format(paths=[str(TESTS), str(ROOT)], store=saga_store, tmp=str(tmp_path))
    owner = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert owner.stdout is not None
    actor_group: int | None = None
    try:
        actor_group = int(owner.stdout.readline().split()[1])
        wait_for(saga_store, "orphaned", at_ship)
    finally:
        for group in (actor_group, owner.pid):  # the actors, then the application
            if group is not None:
                with suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)
        owner.wait(timeout=WITHIN)
        owner.stdout.close()

    deadline = time.monotonic() + WITHIN  # the processes' exit is seen once they are reaped
    while (found := diagnosis_of(saga_store, "orphaned")).owner.state != "dead":
        assert time.monotonic() < deadline, found.owner
        time.sleep(0.1)
    assert isinstance(found.wait, Reply) and ("owner gone",) == found.stuck
    code, out, _ = cli(capsys, "list", saga_store, "--stuck")
    assert 0 == code and "orphaned: stuck (owner gone)" in out
    assert f"owner gone: shard 0's holder, pid {found.owner.pid}, has exited" in out

    start(runtimes, tmp_path, saga_store, [shop()])  # takes the dead holder's shard at once
    resumed = wait_for(saga_store, "orphaned", lambda d: not d.stuck and at_ship(d))
    assert "live" == resumed.owner.state
    code, out, _ = cli(capsys, "show", saga_store, "orphaned")
    assert 0 == code and "restarts: 1 (" in out


# --- check-inflight --------------------------------------------------------------------------

DEFINITIONS_MODULE = """
import sys
sys.path[:0] = {paths!r}
from test_diagnosis import shop

SAME = [shop(1)]
NEW_ONLY = [shop(2)]
RENAMED = (shop(1, ship_action="ship_express"), shop(2))
SHORTER = [shop(1, steps=2)]


def both():
    return [shop(1), shop(2)]
"""


@pytest.fixture
def definitions_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A module of definitions in the current directory, as a release's would be; its name
    is unique to the test, and imports are undone after it."""
    name = f"release_{os.getpid()}_{time.monotonic_ns()}"
    (tmp_path / f"{name}.py").write_text(DEFINITIONS_MODULE.format(paths=[str(TESTS)]))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield name
    sys.modules.pop(name, None)


def test_check_inflight_says_which_sagas_would_not_run_park_or_be_reinterpreted(
    tmp_path: Path,
    saga_store: str,
    runtimes: list[Understudy],
    definitions_module: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two sagas in flight (one at its last step, one waiting to retry its second), one parked
    and one completed: only the two in flight are checked, against the new definitions, as
    recovery would load them."""
    us = start(runtimes, tmp_path, saga_store, [shop()])
    us.submit("at-ship", "order", {})
    us.submit("at-charge", "order", {"fail": {"charge": -1}})
    parked = us.run("parked", "order", {"reject": "charge", "fail": {"cancel": -1}}, timeout=WITHIN)
    assert "failed" == parked.status  # parked: not in flight
    wait_for(saga_store, "at-ship", at_ship)
    wait_for(saga_store, "at-charge", in_backoff)
    us.shutdown()

    def check(attribute: str) -> tuple[int, list[str]]:
        code, out, err = cli(
            capsys,
            "check-inflight",
            saga_store,
            "--definitions",
            f"{definitions_module}:{attribute}",
        )
        assert "" == err
        return code, out.splitlines()

    code, lines = check("SAME")
    assert (0, "2 in-flight sagas, all runnable") == (code, lines[-1])
    code, lines = check("both")  # a callable returning them
    assert (0, "2 in-flight sagas, all runnable") == (code, lines[-1])
    assert "definitions: order v1, order v2 (from " in lines[0]

    code, lines = check("NEW_ONLY")
    assert 1 == code
    assert "2 in-flight sagas: 2 would not run" == lines[-1]
    assert 2 == sum(
        "order v1  would not run: order v1 is not among the new definitions" in line
        for line in lines
    )
    assert "(they have: order v2)" in lines[1]

    code, lines = check("RENAMED")
    assert (1, "2 in-flight sagas: 1 would be reinterpreted, 1 runnable") == (code, lines[-1])
    assert [
        "at-ship  running  order v1  would be reinterpreted: step 2 was sent as ship "
        "(carrier.ship), the new order v1 has ship (carrier.ship_express)"
    ] == lines[1:-1]

    code, lines = check("SHORTER")
    assert (1, "2 in-flight sagas: 1 would park, 1 runnable") == (code, lines[-1])
    assert 3 == len(lines) and lines[1].startswith("at-ship  running  order v1  would park: ")
    assert "step 2 is not one of the definition's 2 steps" in lines[1]
    assert lines[1].endswith("recovery would park it as failed")

    with closing(open_store(saga_store, read_only=True)) as store:
        renamed = check_inflight(store, [shop(2), shop(1, ship_action="ship_express")])
        shorter = check_inflight(store, [shop(1, steps=2)])
        new_only = check_inflight(store, [shop(2)])
    assert [("at-ship", REINTERPRETED), ("at-charge", RUNNABLE)] == [
        (v.saga_id, v.outcome) for v in renamed.verdicts
    ]
    (mismatch,) = renamed.verdicts[0].mismatches
    assert (2, "do", "ship (carrier.ship)", "ship (carrier.ship_express)") == attrs.astuple(
        mismatch
    )
    assert [PARKS, RUNNABLE] == [v.outcome for v in shorter.verdicts]
    assert [NOT_RUN, NOT_RUN] == [v.outcome for v in new_only.verdicts]
    assert not new_only.ok and 2 == len(new_only.problems)


BAD_DEFINITIONS = {
    "no_colon": ("{module}", "must look like module:attribute"),
    "no_module": (
        "no_such_release_module:DEFINITIONS",
        "cannot import module 'no_such_release_module'",
    ),
    "import_raises": ("{broken}:DEFINITIONS", "raised ZeroDivisionError"),
    "no_attribute": ("{module}:DEFINITION", "has no attribute 'DEFINITION'"),
    "one_definition": ("{module}:ONE", "is one SagaDefinition (order v1), not a list"),
    "not_a_list": ("{module}:COUNT", "is a int, not a list or tuple of SagaDefinition"),
    "not_definitions": ("{module}:MIXED", "item 1 of {module}:MIXED is a str"),
    "empty": ("{module}:EMPTY", "is empty"),
    "call_raises": ("{module}:failing", "calling {module}:failing() raised RuntimeError"),
    "two_different_v1": ("{module}:CLASH", "two different definitions of order v1"),
}

BAD_MODULE = """
import sys
sys.path[:0] = {paths!r}
from test_diagnosis import shop

ONE = shop(1)
COUNT = 3
MIXED = [shop(1), "order v2"]
EMPTY = []
CLASH = [shop(1), shop(1, steps=2)]


def failing():
    raise RuntimeError("no config")
"""


@pytest.mark.parametrize("case", sorted(BAD_DEFINITIONS))
def test_definitions_that_cannot_be_loaded_are_a_clear_error(
    case: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A ``--definitions`` that cannot be imported or names no definitions: status 2, one line
    naming the thing and what to do, before the store is opened."""
    module, broken = f"bad_{case}_{os.getpid()}", f"broken_{case}_{os.getpid()}"
    (tmp_path / f"{module}.py").write_text(BAD_MODULE.format(paths=[str(TESTS)]))
    (tmp_path / f"{broken}.py").write_text("x = 1 / 0\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    SQLiteStore(tmp_path / "sagas.db").close()
    spec, expected = (text.format(module=module, broken=broken) for text in BAD_DEFINITIONS[case])
    try:
        code, out, err = cli(capsys, "check-inflight", "sagas.db", "--definitions", spec)
    finally:
        sys.modules.pop(module, None)
        sys.modules.pop(broken, None)
    assert (2, "") == (code, out)
    assert 1 == len(err.strip().splitlines()) and "Traceback" not in err
    assert expected in err, err


def test_show_of_an_unknown_saga_id_says_how_to_find_the_ids(
    saga_store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An id the store does not hold: status 1, one line naming it and the command that
    lists the ids, on either store."""
    open_store(saga_store).close()  # an empty store
    code, out, err = cli(capsys, "show", saga_store, "no-such-order")
    assert (1, "") == (code, out)
    assert "'no-such-order'" in err and "understudy list" in err
    assert 1 == len(err.strip().splitlines())


# --- docs/operating.md -----------------------------------------------------------------------


def doc_blocks() -> list[tuple[str, str]]:
    return re.findall(r"```(\w+)\n(.*?)```", DOC.read_text(), re.DOTALL)


def doc_commands(text: str) -> list[tuple[str, list[str]]]:
    """A console block's commands (after ``$ ``), each with the output shown under it."""
    commands: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        else:
            commands[-1][1].append(line)
    return commands


def normalized(lines: list[str]) -> list[str]:
    """Output as the doc may show it from another run: times, durations, pids and counts of
    milliseconds are numbers that differ; column widths follow from them."""
    text = "\n".join(lines)
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?[+-]\d\d:\d\d", "<time>", text)
    text = re.sub(r"\d+(\.\d+)?", "<n>", text)
    return [" ".join(line.split()) for line in text.strip().splitlines()]


def run_doc(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> Iterator[tuple[str, list[str], list[str]]]:
    """Run the doc's examples in ``workdir`` (the current directory): write each Python block
    to the file its first line names, run each command; yield (command, shown, printed)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    status = 0
    for language, text in doc_blocks():
        if language == "python":
            first, _, code = text.partition("\n")
            (workdir / first.removeprefix("# ").strip()).write_text(code)
            continue
        for command, shown in doc_commands(text):
            argv = shlex.split(command)
            if argv[0] == "python":
                done = subprocess.run(
                    [sys.executable, *argv[1:]],
                    cwd=workdir,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=WITHIN * 2,
                )
                status, printed = done.returncode, done.stdout.splitlines()
            elif argv == ["echo", "$?"]:
                printed = [str(status)]
            else:
                assert "understudy" == argv[0], command
                status = main(argv[1:])
                printed = capsys.readouterr().out.splitlines()
            yield command, shown, printed


def test_the_operating_doc_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every command of docs/operating.md, run in order in an empty directory, prints what the
    doc shows (up to times, durations and process ids) and exits as it says."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    try:
        ran = [
            (command, normalized(shown), normalized(printed))
            for command, shown, printed in run_doc(tmp_path, capsys)
        ]
    finally:
        for name in ("shop", "crash", "release", "resume"):
            sys.modules.pop(name, None)
    assert sum(line.startswith("$ ") for line in DOC.read_text().splitlines()) == len(ran)
    assert 4 == sum(language == "python" for language, _ in doc_blocks())
    for command, shown, printed in ran:
        assert shown == printed, command
