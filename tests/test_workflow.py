"""Workflows with dependencies, end to end: real actor systems (both bases), a real SQLite
store and participants' ledgers. Independent branches run at once, a join starts when every
step it depends on is done and reads their results, and compensation follows the graph in
reverse."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from conftest import stored
from flow_participants import Echo, seen

from understudy import RetryPolicy, Step, Understudy
from understudy.definitions import WorkflowDefinition
from understudy.operate import debts
from understudy.persistence import open_store

FAST = RetryPolicy(attempts=3, backoff=0.01, max_backoff=0.05)
PARTS = ("orders", "inventory", "payments", "shipping")


def flow(timeout: float = 5.0, retry: RetryPolicy = FAST, **ship: Any) -> WorkflowDefinition:
    """The seed's order as a workflow: create the order; then reserve stock and charge the
    card at once; ship once both are done. ``retry``: the policy of create and reserve."""

    def step(name: str, participant: str, action: str, undo: str, **more: Any) -> Step:
        more.setdefault("retry", FAST)
        return Step(
            name,
            participant,
            action,
            undo,
            compensation_retry=FAST,
            timeout=timeout,
            **more,
        )

    return WorkflowDefinition(
        "order-flow",
        1,
        [
            step("create", "orders", "create", "cancel", retry=retry),
            step("reserve", "inventory", "reserve", "release", after=["create"], retry=retry),
            step("charge", "payments", "charge", "refund", after=["create"]),
            step("ship", "shipping", "ship", "unship", after=["reserve", "charge"], **ship),
        ],
    )


#: A retry due seconds later: an operator's verb lands while the workflow waits for it.
LATER = RetryPolicy(attempts=2, backoff=3.0)


def echoes(tmp_path: Path) -> list[tuple[str, type, dict[str, Any]]]:
    return [(name, Echo, {"database": str(tmp_path / f"{name}.db")}) for name in PARTS]


Start = Callable[..., Understudy]


@pytest.fixture
def start(tmp_path: Path, base: str) -> Iterator[Start]:
    running: list[Understudy] = []

    def _start(definition: WorkflowDefinition | None = None, **options: Any) -> Understudy:
        options.setdefault("base", base)
        us = Understudy.start(
            tmp_path / "sagas.db", [definition or flow()], echoes(tmp_path), **options
        )
        running.append(us)
        return us

    yield _start
    for us in running:
        us.shutdown()


def kinds(tmp_path: Path, saga_id: str) -> list[tuple[str, int | None]]:
    """(event kind, step) of the saga's stored timeline, in commit order."""
    _record, events = stored(str(tmp_path / "sagas.db"), saga_id)
    return [(e.kind, e.step) for e in events]


def applied(tmp_path: Path, saga_id: str) -> dict[str, list[tuple[str, str]]]:
    return {
        name: [(r["step"], r["kind"]) for r in seen(tmp_path / f"{name}.db", saga_id)]
        for name in PARTS
    }


CREATE, RESERVE, CHARGE, SHIP = range(4)


def _wait_for(tmp_path: Path, saga_id: str, *wanted: tuple[str, int | None]) -> None:
    """Wait (generously: a busy machine) until the saga's timeline holds every ``wanted``."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        record, _events = stored(str(tmp_path / "sagas.db"), saga_id)
        if record is not None and set(wanted) <= set(kinds(tmp_path, saga_id)):
            return
        time.sleep(0.05)
    raise AssertionError(f"{saga_id} never recorded {wanted}: {kinds(tmp_path, saga_id)}")


def test_branches_run_at_once_and_the_join_reads_both(start: Start, tmp_path: Path) -> None:
    us = start()
    done = us.run("w-1", "order-flow", {"amount": 12})
    assert done.status == "completed", done.reason
    assert set(done.results) == {"create", "reserve", "charge", "ship"}
    events = kinds(tmp_path, "w-1")
    first_answer = min(events.index(("done", RESERVE)), events.index(("done", CHARGE)))
    # Fan-out: both branches were sent before either answered.
    assert events.index(("intent", RESERVE)) < first_answer
    assert events.index(("intent", CHARGE)) < first_answer
    # Fan-in: the join was sent only once both branches were done.
    assert events.index(("intent", SHIP)) > max(
        events.index(("done", RESERVE)), events.index(("done", CHARGE))
    )
    # Each request carried the payload and the results of the steps it depends on, no others.
    (reserve,) = seen(tmp_path / "inventory.db", "w-1")
    assert reserve["results"] == {"create": {"by": "create", "saw": []}}
    (ship,) = seen(tmp_path / "shipping.db", "w-1")
    assert sorted(ship["results"]) == ["charge", "create", "reserve"]
    assert ship["payload"] == {"amount": 12}
    assert applied(tmp_path, "w-1") == {
        "orders": [("create", "do")],
        "inventory": [("reserve", "do")],
        "payments": [("charge", "do")],
        "shipping": [("ship", "do")],
    }


def test_a_step_with_inputs_receives_only_what_it_asks_for(start: Start, tmp_path: Path) -> None:
    definition = flow(
        args={"carrier": "post"}, inputs={"order": "create.by", "amount": "payload.amount"}
    )
    us = start(definition)
    done = us.run("w-2", "order-flow", {"amount": 12, "card": "4242"})
    assert done.status == "completed", done.reason
    (ship,) = seen(tmp_path / "shipping.db", "w-2")
    assert ship["payload"] == {"carrier": "post", "order": "create", "amount": 12}
    assert ship["results"] == {}  # no other step's result, and no card number


def test_an_input_nothing_returned_refuses_the_step_before_it_is_sent(
    start: Start, tmp_path: Path
) -> None:
    us = start(flow(inputs={"parcel": "reserve.parcel_id"}))
    done = us.run("w-3", "order-flow", {})
    assert done.status == "compensated"
    assert "input 'parcel'" in (done.reason or "") and "parcel_id" in (done.reason or "")
    assert done.failure is not None and done.failure["step"] == "ship"
    assert ("intent", SHIP) not in kinds(tmp_path, "w-3")  # nothing sent, nothing to undo
    assert applied(tmp_path, "w-3")["shipping"] == []
    assert applied(tmp_path, "w-3")["orders"] == [("create", "do"), ("create", "undo")]


def test_a_rejected_branch_compensates_along_the_graph(start: Start, tmp_path: Path) -> None:
    us = start()
    done = us.run("w-4", "order-flow", {"reject": "charge"})
    assert done.status == "compensated"
    assert done.failure == {
        "step": "charge",
        "reason": "charge refused by the test",
        "data": None,
    }
    events = kinds(tmp_path, "w-4")
    assert ("intent", SHIP) not in events
    # The order is cancelled only after both branches that depend on it were compensated.
    cancel = events.index(("compensation-intent", CREATE))
    assert cancel > events.index(("compensated", RESERVE))
    assert cancel > events.index(("compensated", CHARGE))
    effects = applied(tmp_path, "w-4")
    # Each compensation was told which failure made the workflow compensate.
    (cancel_seen,) = [r for r in seen(tmp_path / "orders.db", "w-4") if r["kind"] == "undo"]
    assert cancel_seen["failure"] == done.failure
    assert effects["orders"] == [("create", "do"), ("create", "undo")]
    assert effects["inventory"] == [("reserve", "do"), ("reserve", "undo")]
    assert effects["payments"] == []  # refused: its compensation was a no-op


def test_a_failing_branch_is_retried_under_its_key_and_the_other_goes_on(
    start: Start, tmp_path: Path
) -> None:
    us = start()
    done = us.run("w-5", "order-flow", {"fail": {"reserve": 2}})
    assert done.status == "completed", done.reason
    events = kinds(tmp_path, "w-5")
    assert events.count(("retry-scheduled", RESERVE)) == 2
    assert events.count(("done", CHARGE)) == 1
    assert applied(tmp_path, "w-5")["inventory"] == [("reserve", "do")]


def test_a_compensation_that_keeps_failing_holds_back_only_what_depends_on_it(
    start: Start, tmp_path: Path
) -> None:
    us = start()
    done = us.run("w-6", "order-flow", {"reject": "charge", "fail": {"release": -1}})
    assert done.status == "failed"
    assert done.outstanding[0].startswith("compensate step 'reserve' (release): owed")
    assert done.outstanding[1:] == ("compensate step 'create' (cancel)",)
    events = kinds(tmp_path, "w-6")
    assert ("debt", RESERVE) in events
    assert ("compensated", CHARGE) in events  # the other branch was compensated meanwhile
    assert ("compensation-intent", CREATE) not in events  # it waits for the owed one
    with closing(open_store(str(tmp_path / "sagas.db"), read_only=True)) as store:
        owed = debts(store)
    assert [(d.saga_id, d.name, d.compensation) for d in owed] == [("w-6", "reserve", "release")]


def test_many_workflows_at_once_each_apply_every_effect_once(start: Start, tmp_path: Path) -> None:
    us = start()
    futures = {
        f"m-{i}": us.submit_future(
            f"m-{i}", "order-flow", {"reject": "charge"} if i % 3 == 0 else {}
        )
        for i in range(30)
    }
    statuses = {saga_id: f.result(120).status for saga_id, f in futures.items()}
    for saga_id, status in statuses.items():
        assert status == ("compensated" if int(saga_id[2:]) % 3 == 0 else "completed")
    for name in PARTS:
        rows = [(r["saga_id"], r["step"], r["kind"]) for r in seen(tmp_path / f"{name}.db")]
        assert [k for k, n in collections.Counter(rows).items() if n > 1] == [], name


@pytest.mark.parametrize("base", ["multiprocTCPBase"])
def test_pause_holds_the_branches_and_resume_sends_them(start: Start, tmp_path: Path) -> None:
    """Multi-process only: the operator's pause lands while the participant works on create,
    which on the in-process base would hold up the saga host too."""
    us = start()
    future = us.submit_future("w-7", "order-flow", {"slow": {"create": 2.0}})
    _wait_for(tmp_path, "w-7", ("intent", CREATE))
    with us.operator(who="ops") as op:
        op.pause("w-7", why="checking the order by hand")
        # Both branches became due while paused: held, neither sent.
        _wait_for(tmp_path, "w-7", ("held", RESERVE), ("held", CHARGE))
        assert ("intent", RESERVE) not in kinds(tmp_path, "w-7")
        op.resume("w-7", why="checked")
    done = future.result(60)
    assert done.status == "completed", done.reason
    assert applied(tmp_path, "w-7")["payments"] == [("charge", "do")]


def test_pause_holds_a_retry_and_resume_sends_it(start: Start, tmp_path: Path) -> None:
    us = start(flow(retry=LATER))
    future = us.submit_future("w-9", "order-flow", {"fail": {"create": 1}})
    _wait_for(tmp_path, "w-9", ("retry-scheduled", CREATE))
    with us.operator(who="ops") as op:
        op.pause("w-9", why="the orders service is being upgraded")
        _wait_for(tmp_path, "w-9", ("held", CREATE))
        op.resume("w-9", why="upgraded")
    done = future.result(60)
    assert done.status == "completed", done.reason
    assert applied(tmp_path, "w-9")["orders"] == [("create", "do")]


def test_cancel_compensates_a_running_workflow_along_the_graph(
    start: Start, tmp_path: Path
) -> None:
    us = start(flow(retry=LATER))
    future = us.submit_future("w-8", "order-flow", {"fail": {"reserve": 1}})
    _wait_for(tmp_path, "w-8", ("retry-scheduled", RESERVE), ("done", CHARGE))
    with us.operator(who="ops") as op:
        op.cancel("w-8", why="customer called it off")
    done = future.result(60)
    assert done.status == "compensated"
    assert "cancelled by ops" in (done.reason or "")
    events = kinds(tmp_path, "w-8")
    assert ("intent", SHIP) not in events
    cancel = events.index(("compensation-intent", CREATE))
    assert cancel > events.index(("compensated", RESERVE))
    assert cancel > events.index(("compensated", CHARGE))
    effects = applied(tmp_path, "w-8")
    assert effects["payments"] == [("charge", "do"), ("charge", "undo")]
    assert effects["inventory"] == []  # its one attempt failed: nothing to undo
    assert effects["orders"] == [("create", "do"), ("create", "undo")]
