"""Workflows through crashes at every persistence and messaging boundary: a SIGKILL of the saga
host or of a participant process (multi-process base), an exception at the same boundary
(in-process base). Every workflow still ends as it should, each effect is applied at most once
per key, and compensation still follows the graph in reverse."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
from flow_participants import seen
from test_workflow import PARTS, echoes, flow

from understudy import Understudy
from understudy.failpoints import Fault
from understudy.persistence import open_store

HOST_POINTS = [
    "host.after_intent_commit",  # intents of both branches durable, nothing sent
    "host.after_send",  # one branch sent, maybe not the other
    "host.after_reply",  # a branch answered, not recorded
    "host.before_commit",
    "host.after_compensation_intent",
    "host.after_terminal",
]
PARTICIPANT_POINTS = ["participant.after_apply", "participant.before_apply"]


def _run_batch(us: Understudy, prefix: str, count: int = 8) -> dict[str, str]:
    """``count`` workflows at once, every fourth refused at charge; wait for all."""
    futures = {
        f"{prefix}-{i}": us.submit_future(
            f"{prefix}-{i}", "order-flow", {"reject": "charge"} if i % 4 == 0 else {}
        )
        for i in range(count)
    }
    return {saga_id: future.result(120).status for saga_id, future in futures.items()}


def _check(tmp_path: Path, statuses: dict[str, str]) -> None:
    store = open_store(str(tmp_path / "sagas.db"), read_only=True)
    try:
        for saga_id, status in statuses.items():
            record = store.get(saga_id)
            assert record is not None and record.terminal and record.status == status
            refused = int(saga_id.rsplit("-", 1)[1]) % 4 == 0
            assert status == ("compensated" if refused else "completed"), (saga_id, record.reason)
    finally:
        store.close()
    rows = {name: seen(tmp_path / f"{name}.db") for name in PARTS}
    for name, applied in rows.items():
        keys = [(r["saga_id"], r["step"], r["kind"]) for r in applied]
        assert [k for k, n in collections.Counter(keys).items() if n > 1] == [], name
    for saga_id, status in statuses.items():
        effects = {
            (r["step"], r["kind"]): r["at"]
            for applied in rows.values()
            for r in applied
            if r["saga_id"] == saga_id
        }
        if status == "completed":
            assert set(effects) == {(s, "do") for s in ("create", "reserve", "charge", "ship")}
            assert effects[("ship", "do")] > effects[("reserve", "do")]
            assert effects[("ship", "do")] > effects[("charge", "do")]
            continue
        assert ("ship", "do") not in effects and ("charge", "do") not in effects
        assert set(effects) == {
            ("create", "do"),
            ("create", "undo"),
            ("reserve", "do"),
            ("reserve", "undo"),
        }, saga_id
        # Reverse graph order: the order is cancelled after the stock was released.
        assert (
            effects[("create", "undo")] > effects[("reserve", "undo")] > effects[("reserve", "do")]
        )


@pytest.mark.multiproc
@pytest.mark.parametrize("point", HOST_POINTS + PARTICIPANT_POINTS)
def test_sigkill_at_each_boundary(point: str, tmp_path: Path) -> None:
    fired = tmp_path / "fired"
    with Understudy.start(
        tmp_path / "sagas.db",
        [flow(timeout=1.0)],
        echoes(tmp_path),
        base="multiprocTCPBase",
        hosts=1,
        faults=[Fault(point, "kill", nth=2, once_file=str(fired))],
    ) as us:
        statuses = _run_batch(us, "k")
        restarts = us.hosts().restarts
    assert fired.exists(), f"the fault at {point} never fired"
    if point.startswith("host."):
        assert restarts >= 1
    _check(tmp_path, statuses)


@pytest.mark.parametrize("point", HOST_POINTS)
def test_exception_at_each_boundary_in_process(point: str, tmp_path: Path) -> None:
    fired = tmp_path / "fired"
    with Understudy.start(
        tmp_path / "sagas.db",
        [flow(timeout=1.0)],
        echoes(tmp_path),
        faults=[Fault(point, "raise", nth=2, once_file=str(fired))],
    ) as us:
        statuses = _run_batch(us, "x")
    assert fired.exists(), f"the fault at {point} never fired"
    _check(tmp_path, statuses)
