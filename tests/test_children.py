"""Child sagas (``Step.child``) end to end: real actor systems (both bases), a real SQLite store
and the participants' ledgers.

A child step runs a saga of its own, id ``"<parent id>.<step name>"``: the parent's step gets
the child's results when it completes, is refused (with the child's failure as data) when it
ends compensated and fails while it is parked. Compensating the step unwinds the child: a
running child is cancelled, a completed one compensated in reverse, and one that never started
is recorded as compensated so that a late start finds it finished. What is asserted comes from
the participants' ledgers and the store, not only from replies.
"""

# Assertions read `expected == actual`, the house style for specification tests.

from __future__ import annotations

import collections
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import attrs
import pytest
from conftest import stored
from flow_participants import Echo, seen
from participants import Approvals, Recorder

from understudy import (
    CompletionRefused,
    DefinitionError,
    Irreversible,
    RetryPolicy,
    SagaDefinition,
    Step,
    Understudy,
    WorkflowDefinition,
)
from understudy.actors.deferred import complete, reject
from understudy.actors.watch import is_running
from understudy.cli import main
from understudy.definitions import CHILDREN, child_id, with_children
from understudy.failpoints import Fault
from understudy.persistence import open_store
from understudy.persistence.base import APPLIED, OperatorCommand, shard_of

FAST = RetryPolicy(attempts=3, backoff=0.01, max_backoff=0.05)
ONCE = RetryPolicy(attempts=1)
#: Every test waits for an end this long at most: generous, for a busy machine.
PATIENCE = 60.0


def step(name: str, participant: str, action: str, undo: str, **more: Any) -> Step:
    """A plain step with quick retries (forward and compensation)."""
    more.setdefault("retry", FAST)
    more.setdefault("compensation_retry", FAST)
    more.setdefault("timeout", 10.0)
    return Step(name, participant, action, undo, **more)


#: The child of most tests: reserve, then charge, both at the bank.
PAYMENT = SagaDefinition(
    "payment",
    1,
    [step("reserve", "bank", "reserve", "release"), step("charge", "bank", "charge", "refund")],
)


def child(name: str = "pay", definition: SagaDefinition = PAYMENT, **more: Any) -> Step:
    more.setdefault("retry", FAST)
    more.setdefault("compensation_retry", FAST)
    more.setdefault("timeout", 30.0)
    return Step.child(name, definition, **more)


#: create and hold at the shop, then the payment as a child saga (it sees the order's payload).
ORDER = SagaDefinition(
    "order",
    1,
    [
        step("create", "shop", "create", "cancel"),
        step("hold", "shop", "reserve", "release"),
        child(),
    ],
)
#: create at the shop, the payment as a child (its payload: only ``args``, so the order's
#: ``{"reject": "charge"}`` does not reach it), then pack and bill at the post office.
LATE = SagaDefinition(
    "late",
    1,
    [
        step("create", "shop", "create", "cancel"),
        child(args={"amount": 5}),
        step("pack", "post", "reserve", "release"),
        step("bill", "post", "charge", "refund"),
    ],
)

LEDGERS = ("shop", "bank", "post")
Start = Callable[..., Understudy]


def ledgers(tmp_path: Path) -> list[tuple[str, type, dict[str, Any]]]:
    return [(name, Recorder, {"database": str(tmp_path / f"{name}.db")}) for name in LEDGERS]


@pytest.fixture
def start(tmp_path: Path, base: str) -> Iterator[Start]:
    """Start runtimes over ``tmp_path / "sagas.db"`` on the parametrised base (Recorders
    shop, bank and post unless told otherwise); shut down after."""
    running: list[Understudy] = []

    def _start(definitions: list[SagaDefinition], participants: Any = None, **opts: Any) -> Any:
        opts.setdefault("base", base)
        us = Understudy.start(
            tmp_path / "sagas.db",
            definitions,
            ledgers(tmp_path) if participants is None else participants,
            **opts,
        )
        running.append(us)
        return us

    yield _start
    for us in running:
        us.shutdown()


# --- reading the ledgers and the store ------------------------------------------------------------


def effects(tmp_path: Path, *names: str) -> list[tuple[str, str, str]]:
    """(participant, saga id, action) of every effect the Recorders ``names`` (all by default)
    applied, in the order applied (by time across ledgers: each effect happened after the
    reply to the one before it)."""
    rows: list[tuple[float, int, str, str, str]] = []
    for name in names or LEDGERS:
        path = tmp_path / f"{name}.db"
        if not path.exists():
            continue
        with closing(sqlite3.connect(path)) as db:
            rows += [
                (at, seq, name, saga_id, action)
                for at, seq, saga_id, action in db.execute(
                    "SELECT at, seq, saga_id, action FROM effects"
                )
            ]
    return [(name, saga_id, action) for _at, _seq, name, saga_id, action in sorted(rows)]


def keys(tmp_path: Path) -> list[str]:
    """The idempotency key of every effect every Recorder applied."""
    found: list[str] = []
    for name in LEDGERS:
        path = tmp_path / f"{name}.db"
        if path.exists():
            with closing(sqlite3.connect(path)) as db:
                found += [row[0] for row in db.execute("SELECT key FROM effects")]
    return found


def duplicates(tmp_path: Path) -> list[str]:
    return [key for key, n in collections.Counter(keys(tmp_path)).items() if n > 1]


def saga_ids(tmp_path: Path) -> set[str]:
    with closing(open_store(str(tmp_path / "sagas.db"), read_only=True)) as store:
        return {record.saga_id for record in store.list_sagas(limit=10_000)}


def status(tmp_path: Path, saga_id: str) -> str | None:
    record, _events = stored(str(tmp_path / "sagas.db"), saga_id)
    return None if record is None else str(record.status)


def events(tmp_path: Path, saga_id: str) -> list[Any]:
    return list(stored(str(tmp_path / "sagas.db"), saga_id)[1])


def kinds(tmp_path: Path, saga_id: str) -> list[str]:
    return [event.kind for event in events(tmp_path, saga_id)]


def wait_terminal(tmp_path: Path, *ids: str, timeout: float = PATIENCE) -> dict[str, str]:
    """Poll the store until every saga of ``ids`` is terminal: their statuses."""
    deadline = time.monotonic() + timeout
    while True:
        with closing(open_store(str(tmp_path / "sagas.db"), read_only=True)) as store:
            records = store.get_many(list(ids))
        if len(records) == len(ids) and all(r.terminal for r in records.values()):
            return {saga_id: records[saga_id].status for saga_id in ids}
        assert time.monotonic() < deadline, {i: (r.status, r.reason) for i, r in records.items()}
        time.sleep(0.05)


def in_order(sequence: list[Any], *wanted: Any) -> bool:
    """Whether ``wanted`` occur in ``sequence`` in this order (not necessarily adjacent)."""
    it = iter(sequence)
    return all(any(item == w for item in it) for w in wanted)


# --- a child that completes -----------------------------------------------------------------------


def test_a_parent_completes_with_its_childs_results_and_starts_it_once(
    start: Start, tmp_path: Path
) -> None:
    """The child ``o1.pay`` runs once; its results are the step's result; running the parent
    again finds it finished and starts nothing, applies nothing."""
    us = start([ORDER])
    done = us.run("o1", "order", {}, timeout=PATIENCE)

    assert "completed" == done.status
    child_results = {"reserve": {"by": "reserve"}, "charge": {"by": "charge"}}
    assert child_results == done.results["pay"]
    assert {"o1", "o1.pay"} == saga_ids(tmp_path)
    assert "o1.pay" == child_id("o1", "pay")
    assert "completed" == status(tmp_path, "o1.pay")
    assert child_results == us.run("o1.pay", "payment", timeout=PATIENCE).results
    expected = [
        ("shop", "o1", "create"),
        ("shop", "o1", "reserve"),
        ("bank", "o1.pay", "reserve"),
        ("bank", "o1.pay", "charge"),
    ]
    assert expected == effects(tmp_path)

    again = us.run("o1", "order", {}, timeout=PATIENCE)

    assert ("completed", done.results) == (again.status, again.results)
    assert {"o1", "o1.pay"} == saga_ids(tmp_path)
    assert expected == effects(tmp_path)
    assert 1 == kinds(tmp_path, "o1.pay").count("started")
    assert 1 == [e.kind for e in events(tmp_path, "o1") if e.step == 2].count("intent")


def test_the_timelines_link_parent_and_child(tmp_path: Path) -> None:
    """The child's ``started`` names its parent; the parent's intents of the child step (run
    and compensation) name the child."""
    with Understudy.start(tmp_path / "sagas.db", [ORDER, LATE], ledgers(tmp_path)) as us:
        assert "completed" == us.run("t1", "order", {}, timeout=PATIENCE).status
        assert "compensated" == us.run("t2", "late", {"reject": "charge"}, timeout=PATIENCE).status

    started = [e for e in events(tmp_path, "t1.pay") if e.kind == "started"]
    assert [{"definition": "payment", "version": 1, "parent": "t1"}] == [e.detail for e in started]
    intents = [e for e in events(tmp_path, "t1") if e.kind == "intent" and e.step == 2]
    assert [("pay", CHILDREN, "run:payment:1", "t1.pay")] == [
        (e.detail["name"], e.detail["participant"], e.detail["action"], e.detail["child"])
        for e in intents
    ]
    # Plain steps say nothing of a child.
    assert all("child" not in e.detail for e in events(tmp_path, "t1") if e.step in (0, 1))
    undo = [e for e in events(tmp_path, "t2") if e.kind == "compensation-intent" and e.step == 1]
    assert [("unwind:payment:1", "t2.pay")] == [
        (e.detail["action"], e.detail["child"]) for e in undo
    ]
    assert (
        "t2" == next(e for e in events(tmp_path, "t2.pay") if e.kind == "started").detail["parent"]
    )


# --- a child that is compensated -----------------------------------------------------------------


def test_a_compensated_child_refuses_the_step_and_the_parent_compensates_in_reverse(
    start: Start, tmp_path: Path
) -> None:
    """The child's charge is refused: the child compensates its reserve and ends compensated;
    the parent's step is refused with the child's failure as data, and the parent compensates
    hold, then create."""
    us = start([ORDER])
    done = us.run("o2", "order", {"reject": "charge"}, timeout=PATIENCE)

    assert "compensated" == done.status
    assert done.failure is not None
    assert "pay" == done.failure["step"]
    assert "child saga 'o2.pay' was compensated" in done.failure["reason"]
    child_failure = {"step": "charge", "reason": "charge refused by the test", "data": None}
    assert child_failure == done.failure["data"]
    assert "compensated" == status(tmp_path, "o2.pay")
    assert child_failure == us.run("o2.pay", "payment", timeout=PATIENCE).failure
    assert [
        ("shop", "o2", "create"),
        ("shop", "o2", "reserve"),
        ("bank", "o2.pay", "reserve"),
        ("bank", "o2.pay", "release"),
        ("shop", "o2", "release"),
        ("shop", "o2", "cancel"),
    ] == effects(tmp_path)


def test_a_completed_child_is_unwound_when_a_later_parent_step_fails(
    start: Start, tmp_path: Path
) -> None:
    """bill is refused after the child completed: the parent compensates pack, then unwinds the
    child (its charge refunded, then its reserve released), then cancels create. The child
    ends compensated; its timeline shows it completed, then the unwind, then compensated."""
    us = start([LATE])
    done = us.run("o5", "late", {"reject": "charge"}, timeout=PATIENCE)

    assert ("compensated", "bill") == (done.status, (done.failure or {}).get("step"))
    assert "compensated" == status(tmp_path, "o5.pay")
    assert [
        ("shop", "o5", "create"),
        ("bank", "o5.pay", "reserve"),
        ("bank", "o5.pay", "charge"),
        ("post", "o5", "reserve"),
        ("post", "o5", "release"),
        ("bank", "o5.pay", "refund"),
        ("bank", "o5.pay", "release"),
        ("shop", "o5", "cancel"),
    ] == effects(tmp_path)
    timeline = events(tmp_path, "o5.pay")
    ends = [(e.kind, e.detail.get("verb")) for e in timeline if e.step is None]
    assert in_order(ends, ("completed", None), ("operator", "unwind"), ("compensated", None))
    assert "compensated" == ends[-1][0]
    unwind = next(e for e in timeline if e.kind == "operator")
    assert ("o5", "pay", "payment", 1) == tuple(
        unwind.detail[k] for k in ("parent", "step", "definition", "version")
    )
    # The parent, asked again, reports what it reported; nothing runs again.
    applied = effects(tmp_path)
    assert "compensated" == us.run("o5", "late", {"reject": "charge"}, timeout=PATIENCE).status
    assert applied == effects(tmp_path)
    assert [] == duplicates(tmp_path)


def approvals(tmp_path: Path) -> list[tuple[str, type, dict[str, Any]]]:
    options = {"database": str(tmp_path / "approvals.db"), "completion_poll": 0.05}
    return [*ledgers(tmp_path), ("approvals", Approvals, options)]


#: A payment that waits for a person's approval after its reserve (Approvals: "approve").
APPROVED = SagaDefinition(
    "approved-payment",
    1,
    [
        step("reserve", "bank", "reserve", "release"),
        step("approve", "approvals", "approve", "withdraw", retry=ONCE, timeout=120.0),
    ],
)


def pending(tmp_path: Path, saga_id: str, timeout: float = PATIENCE) -> str:
    """The handle of ``saga_id``'s pending approval, once its handler committed it."""
    database = tmp_path / "approvals.db"
    deadline = time.monotonic() + timeout
    while True:
        rows: list[Any] = []
        if database.exists():
            with closing(sqlite3.connect(database, timeout=30)) as db:
                try:
                    rows = db.execute(
                        "SELECT handle FROM approvals WHERE saga_id = ?", (saga_id,)
                    ).fetchall()
                except sqlite3.OperationalError:
                    rows = []  # the table is not there yet
        if rows:
            return str(rows[0][0])
        assert time.monotonic() < deadline, f"no pending approval of {saga_id}"
        time.sleep(0.02)


def withdrawal(tmp_path: Path) -> str:
    """The handle of the one withdrawal that waits to be completed, once it committed."""
    deadline = time.monotonic() + PATIENCE
    while True:
        with closing(sqlite3.connect(tmp_path / "approvals.db", timeout=30)) as db:
            rows = db.execute("SELECT handle FROM withdrawals").fetchall()
        if rows:
            [(handle,)] = rows
            return str(handle)
        assert time.monotonic() < deadline, "no withdrawal was asked for"
        time.sleep(0.02)


def withdrawn(tmp_path: Path, saga_id: str) -> list[int]:
    with closing(sqlite3.connect(tmp_path / "approvals.db", timeout=30)) as db:
        rows = db.execute("SELECT withdrawn FROM approvals WHERE saga_id = ?", (saga_id,))
        return [row[0] for row in rows]


def test_a_running_child_is_cancelled_when_its_parent_compensates(
    start: Start, tmp_path: Path
) -> None:
    """An operator cancels the parent while its child waits for an approval: the parent
    compensates its child step, which cancels the running child: its waiting approval is
    withdrawn and its reserve released, before the parent cancels create. The approval given
    later is refused: the child never completes."""
    parent = SagaDefinition(
        "impatient",
        1,
        [step("create", "shop", "create", "cancel"), child("pay", APPROVED, timeout=120.0)],
    )
    us = start([parent], approvals(tmp_path))
    us.submit("o4", "impatient", {})
    handle = pending(tmp_path, "o4.pay")
    with us.operator(who="ops") as op:
        op.cancel("o4", why="the customer called it off")
    done = us.wait("o4", timeout=PATIENCE)

    assert "compensated" == done.status
    assert "compensated" == status(tmp_path, "o4.pay")
    assert [1] == withdrawn(tmp_path, "o4.pay")
    assert [
        ("shop", "o4", "create"),
        ("bank", "o4.pay", "reserve"),
        ("bank", "o4.pay", "release"),
        ("shop", "o4", "cancel"),
    ] == effects(tmp_path)
    ends = [(e.kind, e.detail.get("verb")) for e in events(tmp_path, "o4.pay") if e.step is None]
    assert ("completed", None) not in ends
    assert in_order(ends, ("started", None), ("operator", "unwind"), ("compensated", None))
    with pytest.raises(CompletionRefused):
        complete(str(tmp_path / "approvals.db"), handle, {"approved_by": "too late"})
    assert "compensated" == status(tmp_path, "o4.pay")


def test_understudy_show_links_a_waiting_parent_and_its_child(
    start: Start, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """While the child waits for an approval, ``understudy show`` of the parent names the child
    it runs and says it waits on that child saga; the child's names its parent."""
    parent = SagaDefinition(
        "patient", 1, [step("create", "shop", "create", "cancel"), child("pay", APPROVED)]
    )
    us = start([parent], approvals(tmp_path))
    us.submit("o9", "patient", {})
    handle = pending(tmp_path, "o9.pay")
    assert 0 == main(["show", str(tmp_path / "sagas.db"), "o9"])
    shown = capsys.readouterr().out
    assert "  runs child saga: o9.pay (step pay)\n" in shown
    assert "reply from child saga approved-payment v1 (step 1 pay, attempt 1)" in shown
    assert 0 == main(["show", str(tmp_path / "sagas.db"), "o9.pay"])
    assert "  child saga of: o9\n" in capsys.readouterr().out
    complete(str(tmp_path / "approvals.db"), handle, {"approved_by": "ops"})
    assert "completed" == us.wait("o9", timeout=PATIENCE).status


def test_a_parent_that_recovers_by_compensating_unwinds_its_running_child(
    start: Start, tmp_path: Path
) -> None:
    """The runtime stops while the child waits for an approval; the parent's definition
    recovers by compensating. A new runtime resumes the child and compensates the parent,
    which unwinds the running child: its approval is withdrawn, its reserve released."""
    parent = SagaDefinition(
        "recovering",
        1,
        [step("create", "shop", "create", "cancel"), child("pay", APPROVED, timeout=120.0)],
        on_recovery="compensate",
    )
    first = start([parent], approvals(tmp_path))
    first.submit("q1", "recovering", {})
    pending(tmp_path, "q1.pay")
    first.shutdown()
    assert ("running", "running") == (status(tmp_path, "q1"), status(tmp_path, "q1.pay"))

    us = start([parent], approvals(tmp_path))
    done = us.wait("q1", timeout=PATIENCE)

    assert "compensated" == done.status
    assert "compensated" == us.wait("q1.pay", timeout=PATIENCE).status
    assert [1] == withdrawn(tmp_path, "q1.pay")
    assert [
        ("shop", "q1", "create"),
        ("bank", "q1.pay", "reserve"),
        ("bank", "q1.pay", "release"),
        ("shop", "q1", "cancel"),
    ] == effects(tmp_path)
    ends = [(e.kind, e.detail.get("verb")) for e in events(tmp_path, "q1.pay") if e.step is None]
    assert in_order(ends, ("resumed", None), ("operator", "unwind"), ("compensated", None))
    assert 1 == [kind for kind, _verb in ends].count("started")


#: A child approved at once whose reserve is refused: it compensates, and its approval's
#: withdrawal finishes later (a person completes it), so it stays compensating until then.
SLOW_UNDO = SagaDefinition(
    "slow-undo",
    1,
    [
        step("approve", "approvals", "approve", "withdraw", compensation_retry=ONCE),
        step("reserve", "bank", "reserve", "release"),
    ],
)
UNWINDING = SagaDefinition(
    "unwinding",
    1,
    [
        step("create", "shop", "create", "cancel"),
        child(
            "pay",
            SLOW_UNDO,
            timeout=120.0,
            args={"now": "approve", "later": "withdraw", "reject": "reserve"},
        ),
    ],
)


def test_a_child_already_compensating_goes_on_when_its_parent_unwinds_it(
    start: Start, tmp_path: Path
) -> None:
    """The child's reserve is refused and its approval's withdrawal finishes later: the child
    is compensating when an operator cancels the parent, which unwinds it. The unwind changes
    nothing of its course: the parent waits until the withdrawal is completed, then the child
    ends compensated for its own reason and the parent cancels create."""
    us = start([UNWINDING], approvals(tmp_path))
    us.submit("c1", "unwinding", {})
    deadline = time.monotonic() + PATIENCE
    while "compensation-intent" not in kinds(tmp_path, "c1.pay"):
        assert time.monotonic() < deadline, kinds(tmp_path, "c1.pay")
        time.sleep(0.05)
    with us.operator(who="ops") as op:
        op.cancel("c1", why="the customer called it off")
    while "operator" not in kinds(tmp_path, "c1.pay"):
        assert time.monotonic() < deadline, kinds(tmp_path, "c1.pay")
        time.sleep(0.05)
    assert "compensating" == status(tmp_path, "c1.pay")
    assert "compensating" == status(tmp_path, "c1")
    assert complete(str(tmp_path / "approvals.db"), withdrawal(tmp_path), {"withdrawn": "ok"})
    done = us.wait("c1", timeout=PATIENCE)

    assert "compensated" == done.status
    child_record = us.record("c1.pay")
    assert "compensated" == child_record.status
    assert "step 'reserve' was rejected" in (child_record.reason or "")
    child_kinds = kinds(tmp_path, "c1.pay")
    assert 1 == child_kinds.count("operator") == child_kinds.count("aborted")
    assert child_kinds.index("aborted") < child_kinds.index("operator")
    assert [("shop", "c1", "create"), ("shop", "c1", "cancel")] == effects(tmp_path)
    with closing(sqlite3.connect(tmp_path / "approvals.db", timeout=30)) as db:
        runs = db.execute("SELECT key, kind FROM runs ORDER BY rowid").fetchall()
    assert [("c1.pay:0:do", "do"), ("c1.pay:0:undo", "undo")] == runs


def test_a_retried_child_step_finds_the_same_child(start: Start, tmp_path: Path) -> None:
    """The child step times out (0.3 s) again and again while its child waits for an
    approval: every attempt finds the same child, which is started once. Approved, the child
    completes and the parent with it; the reserve is applied once."""
    patient = SagaDefinition(
        "patient",
        1,
        [
            step("create", "shop", "create", "cancel"),
            child(
                "pay",
                APPROVED,
                retry=RetryPolicy(attempts=200, backoff=0.05, max_backoff=0.1),
                timeout=0.3,
            ),
        ],
    )
    us = start([patient], approvals(tmp_path))
    us.submit("r1", "patient", {})
    handle = pending(tmp_path, "r1.pay")
    deadline = time.monotonic() + PATIENCE
    while [(e.kind, e.step) for e in events(tmp_path, "r1")].count(("intent", 1)) < 3:
        assert time.monotonic() < deadline, "the child step was not retried"
        time.sleep(0.05)
    assert complete(str(tmp_path / "approvals.db"), handle, {"approved_by": "ada"})
    done = us.wait("r1", timeout=PATIENCE)

    assert "completed" == done.status
    assert {"approved_by": "ada"} == us.run("r1", "patient", timeout=PATIENCE).results["pay"][
        "approve"
    ]
    assert {"r1", "r1.pay"} == saga_ids(tmp_path)
    assert 1 == kinds(tmp_path, "r1.pay").count("started")
    assert [("shop", "r1", "create"), ("bank", "r1.pay", "reserve")] == effects(tmp_path)


@pytest.mark.parametrize("point", ["host.after_terminal", "host.before_verb", "host.after_verb"])
def test_a_crash_as_the_child_completes_or_is_unwound(
    point: str, base: str, tmp_path: Path
) -> None:
    """A crash of the child's saga host (SIGKILL on the multi-process base, an exception
    in-process) as its completion is made durable, or as its unwind is applied: the child is
    still unwound once, in reverse, and every effect applied once."""
    fired = tmp_path / "fired"
    action = "raise" if base == "simpleSystemBase" else "kill"
    fault = Fault(point, action, nth=1, saga_id="o6.pay", once_file=str(fired))
    with Understudy.start(
        tmp_path / "sagas.db", [LATE], ledgers(tmp_path), base=base, faults=[fault]
    ) as us:
        done = us.run("o6", "late", {"reject": "charge"}, timeout=PATIENCE)
        child_status = us.status("o6.pay")

    assert fired.exists(), f"the fault at {point} never fired"
    assert ("compensated", "compensated") == (done.status, child_status)
    assert [
        ("shop", "o6", "create"),
        ("bank", "o6.pay", "reserve"),
        ("bank", "o6.pay", "charge"),
        ("post", "o6", "reserve"),
        ("post", "o6", "release"),
        ("bank", "o6.pay", "refund"),
        ("bank", "o6.pay", "release"),
        ("shop", "o6", "cancel"),
    ] == effects(tmp_path)
    assert 1 == kinds(tmp_path, "o6.pay").count("started")


def test_children_with_the_saga_store_in_postgresql(tmp_path: Path, postgres_url: str) -> None:
    """The same rules with the saga store in PostgreSQL (its own unwind statement): a child
    completes, one is refused, a completed one is unwound, and one that never started is
    recorded as compensated."""
    with Understudy.start(postgres_url, [ORDER, LATE], ledgers(tmp_path)) as us:
        assert "completed" == us.run("s1", "order", {}, timeout=PATIENCE).status
        assert "compensated" == us.run("s2", "order", {"reject": "charge"}, timeout=PATIENCE).status
        assert "compensated" == us.run("s3", "late", {"reject": "charge"}, timeout=PATIENCE).status
        filed = decided(postgres_url, file_unwind(postgres_url, "s4", "pay", PAYMENT))
        assert APPLIED == filed.state, filed.outcome
        assert "compensated" == us.run("s4", "order", {}, timeout=PATIENCE).status
        with closing(open_store(postgres_url, read_only=True)) as store:
            records = store.get_many(["s1.pay", "s2.pay", "s3.pay", "s4.pay"])
            unwound = [e.kind for e in store.events("s3.pay") if e.step is None]

    assert {
        "s1.pay": "completed",
        "s2.pay": "compensated",
        "s3.pay": "compensated",
        "s4.pay": "compensated",
    } == {saga_id: record.status for saga_id, record in records.items()}
    assert in_order(unwound, "completed", "operator", "compensated")
    assert [
        ("bank", "s1.pay", "reserve"),
        ("bank", "s1.pay", "charge"),
        ("bank", "s2.pay", "reserve"),
        ("bank", "s2.pay", "release"),
        ("bank", "s3.pay", "reserve"),
        ("bank", "s3.pay", "charge"),
        ("bank", "s3.pay", "refund"),
        ("bank", "s3.pay", "release"),
    ] == effects(tmp_path, "bank")
    assert [] == duplicates(tmp_path)


# --- workflows ------------------------------------------------------------------------------------


def echoes(tmp_path: Path) -> list[tuple[str, type, dict[str, Any]]]:
    return [(name, Echo, {"database": str(tmp_path / f"{name}.db")}) for name in LEDGERS]


def seen_by(tmp_path: Path, *names: str) -> list[tuple[str, str, str, str]]:
    """(participant, saga id, step, kind) of what the Echoes applied, in the order applied."""
    rows = [
        (row["at"], name, row["saga_id"], row["step"], row["kind"])
        for name in names or LEDGERS
        for row in seen(tmp_path / f"{name}.db")
    ]
    return [(name, saga_id, s, kind) for _at, name, saga_id, s, kind in sorted(rows)]


#: A workflow as a child: reserve and charge at once, then confirm (ship) once both are done.
PAYFLOW = WorkflowDefinition(
    "payflow",
    1,
    [
        step("reserve", "bank", "reserve", "release"),
        step("charge", "bank", "charge", "refund"),
        step("confirm", "bank", "ship", "unship", after=["reserve", "charge"]),
    ],
)
#: A workflow parent: create; then the payment child and packing at once; ship once both are
#: done, reading the child's charge.
SHOPFLOW = WorkflowDefinition(
    "shopflow",
    1,
    [
        step("create", "shop", "create", "cancel"),
        child("pay", PAYMENT, after=["create"], args={"amount": 5}),
        step("pack", "post", "reserve", "release", after=["create"]),
        step(
            "ship",
            "post",
            "ship",
            "unship",
            after=["pay", "pack"],
            inputs={"charge": "pay.charge", "reject": "payload.reject"},
        ),
    ],
)
#: A plain saga whose child is a workflow, then a bill at the post office.
FLOWPARENT = SagaDefinition(
    "flowparent",
    1,
    [
        step("create", "shop", "create", "cancel"),
        child("pay", PAYFLOW, args={"amount": 7}),
        step("bill", "post", "charge", "refund"),
    ],
)


def test_a_workflow_runs_as_a_child_and_a_workflow_parent_reads_its_results(
    start: Start, tmp_path: Path
) -> None:
    """A WorkflowDefinition child completes and its results are the step's; a workflow parent
    runs its child step after create, and its ship step reads the child's charge result
    (``inputs={"charge": "pay.charge"}``). When ship is refused, the workflow parent unwinds
    its completed child along with pack and create."""
    us = start([FLOWPARENT, SHOPFLOW], echoes(tmp_path))

    a = us.run("w1", "flowparent", {}, timeout=PATIENCE)
    assert "completed" == a.status
    assert {"reserve", "charge", "confirm"} == set(a.results["pay"])
    assert {"by": "ship", "saw": ["charge", "reserve"]} == a.results["pay"]["confirm"]
    assert "completed" == status(tmp_path, "w1.pay")
    child_started = next(e for e in events(tmp_path, "w1.pay") if e.kind == "started")
    assert (True, "w1") == (child_started.detail["workflow"], child_started.detail["parent"])
    assert [{"amount": 7}] * 3 == [r["payload"] for r in seen(tmp_path / "bank.db", "w1.pay")]

    # A completed workflow child is unwound in reverse of its graph: confirm first, then
    # reserve and charge (in either order), before the parent cancels create.
    undone = us.run("w4", "flowparent", {"reject": "charge"}, timeout=PATIENCE)
    assert ("compensated", "bill") == (undone.status, (undone.failure or {}).get("step"))
    assert "compensated" == status(tmp_path, "w4.pay")
    w4 = [(saga_id, s, kind) for _n, saga_id, s, kind in seen_by(tmp_path) if saga_id[:2] == "w4"]
    assert ("w4", "create", "do") == w4[0]
    assert ("w4.pay", "confirm", "do") == w4[3]
    assert ("w4.pay", "confirm", "undo") == w4[4]
    assert {("w4.pay", "reserve", "undo"), ("w4.pay", "charge", "undo")} == set(w4[5:7])
    assert [("w4", "create", "undo")] == w4[7:]

    b = us.run("w2", "shopflow", {"reject": "none"}, timeout=PATIENCE)
    assert "completed" == b.status
    charge = b.results["pay"]["charge"]
    assert {"by": "charge", "saw": ["reserve"]} == charge
    shipped = [r for r in seen(tmp_path / "post.db", "w2") if r["step"] == "ship"]
    assert [{"charge": charge, "reject": "none"}] == [r["payload"] for r in shipped]
    assert "completed" == status(tmp_path, "w2.pay")
    order = [(s, kind) for _name, saga_id, s, kind in seen_by(tmp_path) if saga_id == "w2"]
    assert order.index(("create", "do")) == 0 and order[-1] == ("ship", "do")

    c = us.run("w3", "shopflow", {"reject": "ship"}, timeout=PATIENCE)
    assert ("compensated", "ship") == (c.status, (c.failure or {}).get("step"))
    assert "compensated" == status(tmp_path, "w3.pay")
    applied = [(name, saga_id, s, kind) for name, saga_id, s, kind in seen_by(tmp_path)]
    child_undo = [(s, kind) for _n, saga_id, s, kind in applied if saga_id == "w3.pay"]
    assert [("reserve", "do"), ("charge", "do"), ("charge", "undo"), ("reserve", "undo")] == (
        child_undo
    )
    parent = [(s, kind) for _n, saga_id, s, kind in applied if saga_id == "w3"]
    assert ("create", "undo") == parent[-1]
    last_child_undo = max(i for i, a in enumerate(applied) if a[1] == "w3.pay" and a[3] == "undo")
    create_undo = applied.index(("shop", "w3", "create", "undo"))
    assert last_child_undo < create_undo
    assert [] == [a for a in applied if a[1] == "w3" and a[2] == "ship"]  # refused: applied nothing


# --- grandchildren --------------------------------------------------------------------------------


AUTH = SagaDefinition("auth", 1, [step("hold", "bank", "reserve", "release")])
#: A child that has a child of its own: authorise (grandchild), then charge.
PAY2 = SagaDefinition("pay2", 1, [child("auth", AUTH), step("charge", "bank", "charge", "refund")])
NESTED = SagaDefinition(
    "nested",
    1,
    [
        step("create", "shop", "create", "cancel"),
        child("pay", PAY2, args={"amount": 5}),
        step("bill", "post", "charge", "refund"),
    ],
)


def test_grandchildren_complete_and_unwind_in_cascade(start: Start, tmp_path: Path) -> None:
    """``o.pay`` runs ``o.pay.auth``; the results nest. When the parent's bill is refused the
    unwind cascades: the child refunds its charge, then unwinds the grandchild (its hold
    released), then the parent cancels create."""
    us = start([NESTED])
    ok = us.run("g1", "nested", {}, timeout=PATIENCE)
    assert "completed" == ok.status
    assert {"auth": {"hold": {"by": "reserve"}}, "charge": {"by": "charge"}} == ok.results["pay"]
    assert {"g1", "g1.pay", "g1.pay.auth"} == saga_ids(tmp_path)
    assert ["completed"] * 2 == [status(tmp_path, s) for s in ("g1.pay", "g1.pay.auth")]
    assert (
        "g1.pay"
        == next(e for e in events(tmp_path, "g1.pay.auth") if e.kind == "started").detail["parent"]
    )

    no = us.run("g2", "nested", {"reject": "charge"}, timeout=PATIENCE)
    assert ("compensated", "bill") == (no.status, (no.failure or {}).get("step"))
    assert ["compensated"] * 2 == [status(tmp_path, s) for s in ("g2.pay", "g2.pay.auth")]
    assert [
        ("shop", "g2", "create"),
        ("bank", "g2.pay.auth", "reserve"),
        ("bank", "g2.pay", "charge"),
        ("bank", "g2.pay", "refund"),
        ("bank", "g2.pay.auth", "release"),
        ("shop", "g2", "cancel"),
    ] == [e for e in effects(tmp_path) if e[1].startswith("g2")]
    for saga_id in ("g2.pay", "g2.pay.auth"):
        ends = [(e.kind, e.detail.get("verb")) for e in events(tmp_path, saga_id) if e.step is None]
        assert in_order(ends, ("completed", None), ("operator", "unwind"), ("compensated", None))
    assert [] == duplicates(tmp_path)


# --- a child that never started -------------------------------------------------------------------


def file_unwind(location: str, parent: str, step_name: str, definition: SagaDefinition) -> int:
    """File the unwind of ``parent``'s child ``step_name`` as the children participant does."""
    child = child_id(parent, step_name)
    with closing(open_store(location)) as store:
        shards = len(store.leases()) or 1
        return store.submit(
            OperatorCommand(
                child,
                shard_of(child, shards),
                "unwind",
                {
                    "parent": parent,
                    "step": step_name,
                    "definition": definition.name,
                    "version": definition.version,
                },
                f"saga {parent}",
                f"its step {step_name!r} is compensated",
                time.time(),
            )
        ).id


def decided(location: str, command: int) -> Any:
    """The command ``command`` once its saga host decided it (applied or refused)."""
    deadline = time.monotonic() + PATIENCE
    while True:
        with closing(open_store(location, read_only=True)) as store:
            filed = store.command(command)
        assert filed is not None
        if filed.state != "pending":
            return filed
        assert time.monotonic() < deadline, f"command {command} was never decided"
        time.sleep(0.05)


def test_an_unwind_before_the_child_starts_leaves_it_compensated_for_good(
    start: Start, tmp_path: Path
) -> None:
    """The unwind of ``u4.pay`` lands before anything started it: it is recorded as
    compensated. A later start of that id finds it finished and applies nothing, and a parent
    ``u4`` that then runs its pay step is refused and compensates create."""
    location = str(tmp_path / "sagas.db")
    us = start([ORDER])
    filed = decided(location, file_unwind(location, "u4", "pay", PAYMENT))
    assert APPLIED == filed.state, filed.outcome
    assert "compensated" == status(tmp_path, "u4.pay")
    started = [e for e in events(tmp_path, "u4.pay") if e.kind == "started"]
    assert [("payment", "u4")] == [(e.detail["definition"], e.detail["parent"]) for e in started]

    late = us.run("u4.pay", "payment", {}, timeout=PATIENCE)
    assert "compensated" == late.status
    assert [] == effects(tmp_path, "bank")

    parent = us.run("u4", "order", {}, timeout=PATIENCE)
    assert ("compensated", "pay") == (parent.status, (parent.failure or {}).get("step"))
    assert [
        ("shop", "u4", "create"),
        ("shop", "u4", "reserve"),
        ("shop", "u4", "release"),
        ("shop", "u4", "cancel"),
    ] == effects(tmp_path)
    assert 1 == kinds(tmp_path, "u4.pay").count("started")

    # An unwind naming a definition the runtime does not have is refused and records nothing.
    unknown = SagaDefinition("unknown", 3, [step("charge", "bank", "charge", "refund")])
    filed = decided(location, file_unwind(location, "u2", "pay", unknown))
    assert "refused" == filed.state
    assert "'unknown' v3" in (filed.outcome or "")
    assert None is status(tmp_path, "u2.pay")


def test_a_child_whose_run_was_lost_is_recorded_compensated_when_its_parent_gives_up(
    start: Start, tmp_path: Path
) -> None:
    """The run request of the child step is lost on its way (a dropped message): the step
    times out (0.3 s, one attempt) and the parent compensates it, unwinding a child that never
    started. It is recorded as compensated, with nothing applied; a late start of its id finds
    it so."""
    lost = SagaDefinition(
        "lost",
        1,
        [
            step("create", "shop", "create", "cancel"),
            child("pay", PAYMENT, retry=ONCE, timeout=0.3),
        ],
    )
    # The parent's second request is the child step's run: dropped.
    fault = Fault("host.send", "drop", nth=2, saga_id="n1", once_file=str(tmp_path / "fired"))
    us = start([lost], faults=[fault])
    done = us.run("n1", "lost", {}, timeout=PATIENCE)

    assert (tmp_path / "fired").exists()
    assert ("compensated", "pay") == (done.status, (done.failure or {}).get("step"))
    assert "compensated" == status(tmp_path, "n1.pay")
    child_kinds = kinds(tmp_path, "n1.pay")
    assert ["started", "operator"] == child_kinds[:2] and "compensated" == child_kinds[-1]
    assert "intent" not in child_kinds
    assert [("shop", "n1", "create"), ("shop", "n1", "cancel")] == effects(tmp_path)
    assert "compensated" == us.run("n1.pay", "payment", {}, timeout=PATIENCE).status
    assert [] == effects(tmp_path, "bank")


# --- a child parked as failed ---------------------------------------------------------------------


#: A payment that charges first: when its reserve is refused, its refund is owed.
CHARGE_FIRST = SagaDefinition(
    "charge-first",
    1,
    [step("charge", "bank", "charge", "refund"), step("reserve", "bank", "reserve", "release")],
)


def test_a_parked_child_fails_the_step_and_parks_the_parent(start: Start, tmp_path: Path) -> None:
    """The child's refund always fails: the child parks as failed with its charge outstanding.
    The parent's step fails (error, retried, then the parent compensates); compensating it
    unwinds a parked child, which is refused, so the parent parks as failed too, with pay and
    create still owed: nothing is compensated behind the operator's back."""
    parent = SagaDefinition(
        "parked", 1, [step("create", "shop", "create", "cancel"), child("pay", CHARGE_FIRST)]
    )
    us = start([parent])
    done = us.run("p1", "parked", {"reject": "reserve", "fail": {"refund": -1}}, timeout=PATIENCE)

    assert "failed" == done.status
    assert done.failure is not None
    assert ("pay", None) == (done.failure["step"], done.failure["data"])
    assert "child saga 'p1.pay' is parked" in done.failure["reason"]
    assert 2 == len(done.outstanding)
    assert done.outstanding[0].startswith("compensate step 'pay' (unwind:charge-first:1): owed")
    assert "compensate step 'create' (cancel)" == done.outstanding[1]
    child_record = us.record("p1.pay")
    assert "failed" == child_record.status
    assert "compensation 'refund' of step 'charge' failed" in (child_record.reason or "")
    # Nothing was compensated behind the operator's back: create stands, and so does the
    # child's charge.
    assert [("shop", "p1", "create"), ("bank", "p1.pay", "charge")] == effects(tmp_path)
    step_ends = [(e.kind, e.detail.get("kind")) for e in events(tmp_path, "p1") if e.step == 1]
    # The run is tried three times, each an error; then the unwind three times, then owed.
    assert 3 == step_ends.count(("intent", None))
    assert 3 == step_ends.count(("compensation-intent", None))
    assert 6 == step_ends.count(("failed", None))
    assert 1 == step_ends.count(("debt", None))
    assert all(
        "is parked" in e.detail["reason"]
        for e in events(tmp_path, "p1")
        if e.step == 1 and e.kind == "failed"
    )
    assert ["p1.pay"] == [c for c in saga_ids(tmp_path) if c.startswith("p1.")]

    # An operator refunds by hand and resolves the child's debt: the child ends compensated.
    # Retried, the parent's unwind finds it so, and the parent cancels create.
    with us.operator(who="ops") as op:
        assert APPLIED == op.resolve("p1.pay", step="charge", why="refunded by hand").state
        assert "compensated" == us.wait("p1.pay", timeout=PATIENCE).status
        assert APPLIED == op.retry("p1", why="its child is settled").state
    assert "compensated" == us.wait("p1", timeout=PATIENCE).status
    assert [
        ("shop", "p1", "create"),
        ("bank", "p1.pay", "charge"),
        ("shop", "p1", "cancel"),
    ] == effects(tmp_path)


# --- definitions ----------------------------------------------------------------------------------


def test_a_child_with_an_irreversible_step_needs_an_irreversible_child_step() -> None:
    final = SagaDefinition(
        "final",
        1,
        [
            step("reserve", "bank", "reserve", "release"),
            Step("ship", "post", "ship", irreversible=Irreversible(instead="call the courier")),
        ],
    )
    with pytest.raises(DefinitionError, match=r"step 'pay' runs child saga 'final'.*'ship'.*"):
        SagaDefinition("o", 1, [child("pay", final)])
    with pytest.raises(DefinitionError, match=r"irreversible=Irreversible"):
        SagaDefinition("o", 1, [child("pay", final)])
    declared = SagaDefinition(
        "o", 1, [child("pay", final, irreversible=Irreversible(instead="refund by hand"))]
    )
    assert (None, 0) == (declared.steps[0].compensation, declared.pivot)


def test_a_child_step_name_may_not_contain_a_dot() -> None:
    with pytest.raises(DefinitionError, match=r"step 'p\.ay'.*must not contain '\.'"):
        SagaDefinition("o", 1, [child("p.ay")])


def test_a_step_for_the_children_participant_must_be_built_with_step_child() -> None:
    by_hand = Step("pay", CHILDREN, "run:payment:1", "unwind:payment:1")
    with pytest.raises(DefinitionError, match=r"names participant 'understudy\.children'.*Step"):
        SagaDefinition("o", 1, [by_hand])
    elsewhere = attrs.evolve(child(), participant="bank")
    with pytest.raises(DefinitionError, match=r"carries a child saga but names participant 'bank'"):
        SagaDefinition("o", 1, [elsewhere])
    with pytest.raises(DefinitionError, match=r"takes the child's SagaDefinition"):
        Step.child("pay", "payment")  # type: ignore[arg-type]


def test_two_different_definitions_under_one_name_and_version_are_refused(
    tmp_path: Path,
) -> None:
    other = SagaDefinition("payment", 1, [step("charge", "bank", "charge", "refund")])
    with pytest.raises(DefinitionError, match=r"two different saga definitions.*'payment' v1"):
        with_children([ORDER, other])
    with pytest.raises(DefinitionError, match=r"two different saga definitions.*'payment' v1"):
        with_children([other, ORDER])
    # The same definition twice (given and as a child) is registered once.
    assert [ORDER, PAYMENT] == list(with_children([ORDER, PAYMENT]))
    assert [ORDER, PAYMENT] == list(with_children([ORDER]))
    with pytest.raises(DefinitionError, match=r"two different saga definitions"):
        Understudy.start(tmp_path / "sagas.db", [ORDER, other], ledgers(tmp_path))
    assert not (tmp_path / "sagas.db").exists()


def test_an_application_participant_named_understudy_children_is_refused(
    tmp_path: Path,
) -> None:
    mine = [*ledgers(tmp_path), (CHILDREN, Recorder, {"database": str(tmp_path / "c.db")})]
    for definitions in ([ORDER], [SagaDefinition("plain", 1, [ORDER.steps[0]])]):
        with pytest.raises(DefinitionError, match=r"'understudy\.children' is understudy's own"):
            Understudy.start(tmp_path / "sagas.db", definitions, mine)


# --- crashes (multi-process base, real SIGKILL) ---------------------------------------------------


@pytest.mark.multiproc
def test_the_children_participant_killed_while_parents_wait(tmp_path: Path) -> None:
    """SIGKILL of the ``understudy.children`` process while two parents wait on children that
    wait for approvals. It is restarted; one approval is then given and one refused: one
    parent completes with its child, the other compensates with its child. Each child started
    once, and every effect applied once."""
    wait = SagaDefinition(
        "waiting",
        1,
        [step("create", "shop", "create", "cancel"), child("pay", APPROVED, timeout=120.0)],
    )
    with Understudy.start(
        tmp_path / "sagas.db",
        [wait],
        approvals(tmp_path),
        base="multiprocTCPBase",
        hosts=1,
        watch_interval=0.5,
    ) as us:
        us.submit("k1", "waiting", {})
        us.submit("k4", "waiting", {})
        first, second = pending(tmp_path, "k1.pay"), pending(tmp_path, "k4.pay")
        pid = us.hosts().participant_pids[CHILDREN]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + PATIENCE
        while us.hosts().participant_pids.get(CHILDREN) in (None, pid):
            assert time.monotonic() < deadline, "the children participant was not restarted"
            time.sleep(0.1)
        assert complete(str(tmp_path / "approvals.db"), first, {"approved_by": "erin"})
        assert reject(str(tmp_path / "approvals.db"), second, "no budget", data={"code": 7})
        statuses = wait_terminal(tmp_path, "k1", "k4", "k1.pay", "k4.pay")
        k1 = us.run("k1", "waiting", timeout=PATIENCE)
        k4 = us.run("k4", "waiting", timeout=PATIENCE)

    assert {
        "k1": "completed",
        "k1.pay": "completed",
        "k4": "compensated",
        "k4.pay": "compensated",
    } == statuses
    assert {"approved_by": "erin"} == k1.results["pay"]["approve"]
    assert k4.failure is not None
    assert {"step": "approve", "reason": "no budget", "data": {"code": 7}} == k4.failure["data"]
    assert [1, 1] == [kinds(tmp_path, s).count("started") for s in ("k1.pay", "k4.pay")]
    assert {"k1", "k4", "k1.pay", "k4.pay"} == saga_ids(tmp_path)
    assert [
        ("shop", "k1", "create"),
        ("bank", "k1.pay", "reserve"),
    ] == [e for e in effects(tmp_path) if e[1].startswith("k1")]
    assert [
        ("shop", "k4", "create"),
        ("bank", "k4.pay", "reserve"),
        ("bank", "k4.pay", "release"),
        ("shop", "k4", "cancel"),
    ] == [e for e in effects(tmp_path) if e[1].startswith("k4")]
    assert [] == duplicates(tmp_path)
    # The restarted participant was sent the requests its predecessor had taken (nothing else
    # would have answered them before their 120 s timeout: no parent timed out).
    for parent in ("k1", "k4"):
        assert "timeout" not in kinds(tmp_path, parent), parent


@pytest.mark.multiproc
def test_the_children_participant_killed_while_an_unwind_waits(tmp_path: Path) -> None:
    """SIGKILL of ``understudy.children`` after it filed the unwind of a child that is still
    compensating: the restarted participant gets the parent's compensation again, and the
    child's course is unchanged (every unwind filed is applied, none refused); once its
    withdrawal is completed the child and the parent end compensated."""
    with Understudy.start(
        tmp_path / "sagas.db",
        [UNWINDING],
        approvals(tmp_path),
        base="multiprocTCPBase",
        hosts=1,
        watch_interval=0.5,
    ) as us:
        us.submit("c2", "unwinding", {})
        deadline = time.monotonic() + PATIENCE
        while "compensation-intent" not in kinds(tmp_path, "c2.pay"):
            assert time.monotonic() < deadline, kinds(tmp_path, "c2.pay")
            time.sleep(0.05)
        with us.operator(who="ops") as op:
            op.cancel("c2", why="the customer called it off")
        while "operator" not in kinds(tmp_path, "c2.pay"):
            assert time.monotonic() < deadline, kinds(tmp_path, "c2.pay")
            time.sleep(0.05)
        pid = us.hosts().participant_pids[CHILDREN]
        os.kill(pid, signal.SIGKILL)
        while us.hosts().participant_pids.get(CHILDREN) in (None, pid):
            assert time.monotonic() < deadline, "the children participant was not restarted"
            time.sleep(0.1)
        assert complete(str(tmp_path / "approvals.db"), withdrawal(tmp_path), {"w": "ok"})
        statuses = wait_terminal(tmp_path, "c2", "c2.pay")
        with closing(open_store(str(tmp_path / "sagas.db"), read_only=True)) as store:
            filed = [c.id for c in store.commands(saga_id="c2.pay", pending=False)]
        # An unwind the restarted participant filed again is decided too: applied while the
        # child still compensated, refused once it had ended.
        unwinds = [decided(str(tmp_path / "sagas.db"), command) for command in filed]

    assert {"c2": "compensated", "c2.pay": "compensated"} == statuses
    assert ("unwind", APPLIED) == (unwinds[0].verb, unwinds[0].state)
    assert {"unwind"} == {c.verb for c in unwinds}
    assert {c.state for c in unwinds} <= {APPLIED, "refused"}
    assert [("shop", "c2", "create"), ("shop", "c2", "cancel")] == effects(tmp_path)
    with closing(sqlite3.connect(tmp_path / "approvals.db", timeout=30)) as db:
        runs = db.execute("SELECT key, kind FROM runs ORDER BY rowid").fetchall()
    assert [("c2.pay:0:do", "do"), ("c2.pay:0:undo", "undo")] == runs


#: create, the payment child (its payload: the order's ``child_reject``), then bill at the post.
CRASHY = SagaDefinition(
    "crashy",
    1,
    [
        step("create", "shop", "create", "cancel", timeout=2.0),
        child("pay", PAYMENT, inputs={"reject": "payload.child_reject"}, timeout=30.0),
        step("bill", "post", "charge", "refund", timeout=2.0),
    ],
)


def crashy_payload(i: int) -> dict[str, Any]:
    """Every third child refuses its charge; of the rest, every other parent refuses its bill
    after its child completed (the child is unwound); the others complete."""
    if i % 3 == 0:
        return {"child_reject": "charge"}
    if i % 3 == 1:
        return {"child_reject": "none", "reject": "charge"}
    return {"child_reject": "none"}


#: What each kind of parent applies, parent and child together, in order.
CRASHY_EFFECTS = {
    0: [("shop", "create"), ("bank", "reserve"), ("bank", "release"), ("shop", "cancel")],
    1: [
        ("shop", "create"),
        ("bank", "reserve"),
        ("bank", "charge"),
        ("bank", "refund"),
        ("bank", "release"),
        ("shop", "cancel"),
    ],
    2: [("shop", "create"), ("bank", "reserve"), ("bank", "charge"), ("post", "charge")],
}
CRASHY_STATUS = {0: "compensated", 1: "compensated", 2: "completed"}

WORKER = """
import os, sys, time
sys.path[:0] = {paths!r}
from pathlib import Path
from test_children import CRASHY, crashy_payload, ledgers
from understudy import Understudy
us = Understudy.start(Path({tmp!r}) / "sagas.db", [CRASHY], ledgers(Path({tmp!r})),
                      base="multiprocTCPBase", hosts=2)
# Thespian's admin detaches into its own session: its process group, to kill every process.
print("pgid", os.getpgid(us.hosts().coordinator_pid), flush=True)
for i in range(300):
    us.submit("c-%d" % i, "crashy", crashy_payload(i))
    print("accepted c-%d" % i, flush=True)
time.sleep(60)
"""


@pytest.mark.multiproc
def test_the_whole_application_killed_mid_child_then_restarted(tmp_path: Path) -> None:
    """SIGKILL of every process of the application while parents and children run, unwind:
    a new runtime on the same store ends every parent and every child, consistently (a
    completed parent has a completed child; a compensated one a compensated child), with
    each effect applied at most once per key and in the order it should."""
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
    try:
        actor_group = int(worker.stdout.readline().split()[1])
        deadline = time.monotonic() + PATIENCE
        while len(accepted) < 60 and time.monotonic() < deadline:
            line = worker.stdout.readline()
            if not line:
                break
            accepted.append(line.split()[1])
        os.killpg(actor_group, signal.SIGKILL)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
        worker.stdout.close()
    assert len(accepted) >= 60, "the worker did not get far enough to be killed mid-run"
    with closing(open_store(str(tmp_path / "sagas.db"), read_only=True)) as store:
        unfinished = store.unfinished()
        holders = [lease.about for lease in store.leases()]
        unwinding = store.commands()
    # Killed mid-child: a child still running, or an unwind filed and not applied yet.
    assert any("." in saga_id for saga_id in unfinished) or unwinding, unfinished
    # SIGKILL takes effect once a process leaves the kernel (a host in the middle of an fsync
    # finishes it first): the new runtime starts once the hosts that held the shards are gone.
    deadline = time.monotonic() + PATIENCE
    while any(is_running((int(a["pid"]), a.get("started"))) for a in holders if "pid" in a):
        assert time.monotonic() < deadline, "the killed hosts never exited"
        time.sleep(0.02)

    with Understudy.start(
        tmp_path / "sagas.db", [CRASHY], ledgers(tmp_path), base="multiprocTCPBase", hosts=2
    ):
        parents = wait_terminal(tmp_path, *accepted)
        children = wait_terminal(
            tmp_path, *[child_id(p, "pay") for p in accepted if status(tmp_path, p + ".pay")]
        )
        everything = wait_terminal(tmp_path, *sorted(saga_ids(tmp_path)))

    applied = effects(tmp_path)
    for parent, end in parents.items():
        kind = int(parent.rsplit("-", 1)[1]) % 3
        assert CRASHY_STATUS[kind] == end, parent
        pay = child_id(parent, "pay")
        if end == "completed":
            assert "completed" == children.get(pay), parent
        else:
            assert children.get(pay) in (None, "compensated"), parent
        mine = [(name, action) for name, saga_id, action in applied if saga_id in (parent, pay)]
        assert CRASHY_EFFECTS[kind] == mine, parent
    assert set(everything.values()) <= {"completed", "compensated"}
    assert [] == duplicates(tmp_path)
