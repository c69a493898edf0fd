"""The ``understudy`` command over a real SQLite store written with the store's own records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from understudy import codec
from understudy.cli import main
from understudy.persistence.base import (
    COMPENSATED,
    COMPENSATING,
    COMPLETED,
    FAILED,
    RUNNING,
    Event,
    NewSaga,
    Transition,
)
from understudy.persistence.sqlite import SQLiteStore

T0 = 1_700_000_000.0
ROOT = Path(__file__).resolve().parent.parent


def intent(
    at: float, step: int, attempt: int, participant: str, action: str, **extra: Any
) -> Event:
    key = f"k:{step}:do"
    detail = {"key": key, "participant": participant, "action": action, **extra}
    return Event("intent", at, step, attempt, detail)


def undo_intent(at: float, step: int, participant: str, action: str) -> Event:
    detail = {"key": f"k:{step}:undo", "participant": participant, "action": action}
    return Event("compensation-intent", at, step, 1, detail)


def snapshot(**fields: Any) -> bytes:
    state: dict[str, Any] = {
        "phase": RUNNING,
        "step": 0,
        "attempt": 1,
        "stack": [],
        "results": {},
        "pending": None,
        "waiting": None,
        "pivot_passed": False,
        "reason": None,
        "outstanding": [],
        "timer": 1,
        "recovery_attempts": 0,
    }
    state.update(fields)
    return codec.encode(state)


def started(at: float, version: int = 1) -> Event:
    return Event("started", at, detail={"definition": "order", "version": version})


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    """A store with five sagas: completed (with a retry), compensated (after a restart),
    running, failed (with outstanding compensation) and one whose snapshot is garbage."""
    path = tmp_path / "sagas.db"
    payload = codec.encode({"order": 1})
    with SQLiteStore(path) as store:
        # ok-1: completed; the charge failed once and was retried.
        t = T0
        store.apply([NewSaga("ok-1", "order", 1, payload, t)])
        events = (
            started(t),
            intent(t + 0.010, 0, 1, "inventory", "reserve"),
            Event("done", t + 0.020, 0, 1, {"outcome": "ok"}),
            intent(t + 0.030, 1, 1, "payments", "charge"),
            Event("failed", t + 0.040, 1, 1, {"outcome": "error", "reason": "gateway 502"}),
            Event("retry-scheduled", t + 0.041, 1, 2, {"kind": "do", "in": 0.05}),
            intent(t + 0.100, 1, 2, "payments", "charge"),
            Event("done", t + 0.110, 1, 2, {"outcome": "ok"}),
            Event(COMPLETED, t + 0.111),
        )
        state = snapshot(phase=COMPLETED, step=1, stack=[0, 1], results={"reserve": 1, "charge": 2})
        assert store.apply([Transition("ok-1", 1, COMPLETED, state, 1, 0, t + 0.111, None, events)])

        # comp-2: a crash during the charge, a restart, the charge is declined, both undone.
        t = T0 + 10
        store.apply([NewSaga("comp-2", "order", 2, payload, t)])
        events = (
            started(t, version=2),
            intent(t + 0.010, 0, 1, "inventory", "reserve"),
            Event("done", t + 0.020, 0, 1, {"outcome": "ok"}),
            intent(t + 0.030, 1, 1, "payments", "charge"),
        )
        state = snapshot(step=1, stack=[0, 1], results={"reserve": 1}, pending=["do", 1, 1, t + 5])
        assert store.apply([Transition("comp-2", 1, RUNNING, state, 1, 0, t + 0.030, None, events)])
        claimed = store.claim("comp-2", recovery=True, at=t + 2.0)
        assert claimed is not None and claimed.incarnation == 2
        reason = "step 'charge' was rejected: card declined"
        events = (
            Event("resumed", t + 2.001, detail={"phase": RUNNING, "recovery_attempts": 1}),
            intent(t + 2.002, 1, 1, "payments", "charge", resent=True),
            Event("rejected", t + 2.010, 1, 1, {"outcome": "rejected", "reason": "card declined"}),
            Event(
                "aborted",
                t + 2.011,
                detail={"reason": reason, "to_compensate": ["charge", "reserve"]},
            ),
            undo_intent(t + 2.012, 1, "payments", "refund"),
            Event("compensated", t + 2.020, 1, 1, {"outcome": "ok"}),
            undo_intent(t + 2.021, 0, "inventory", "release"),
            Event("compensated", t + 2.030, 0, 1, {"outcome": "ok"}),
            Event(COMPENSATED, t + 2.031, detail={"reason": reason}),
        )
        state = snapshot(phase=COMPENSATED, step=1, results={"reserve": 1}, reason=reason)
        assert store.apply(
            [Transition("comp-2", 2, COMPENSATED, state, 2, 1, t + 2.031, reason, events)]
        )

        # run-3: running, its first intent is out.
        t = T0 + 20
        store.apply([NewSaga("run-3", "order", 1, payload, t)])
        events = (started(t), intent(t + 0.005, 0, 1, "inventory", "reserve"))
        state = snapshot(stack=[0], pending=["do", 0, 1, t + 5])
        assert store.apply([Transition("run-3", 1, RUNNING, state, 1, 0, t + 0.005, None, events)])

        # fail-4: the refund kept failing, so the saga is parked with work left for a person.
        t = T0 + 30
        store.apply([NewSaga("fail-4", "order", 1, payload, t)])
        long_reason = (
            "compensation 'refund' of step 'charge' failed after 5 attempt(s): " + "x" * 80
        )
        outstanding = ["compensate step 'charge' (refund)", "compensate step 'reserve' (release)"]
        events = (
            started(t),
            intent(t + 0.01, 0, 1, "inventory", "reserve"),
            Event("done", t + 0.02, 0, 1, {"outcome": "ok"}),
            intent(t + 0.03, 1, 1, "payments", "charge"),
            Event("timeout", t + 5.03, 1, 1, {"kind": "do", "after": 5.0}),
            Event(
                "aborted", t + 5.04, detail={"reason": "x", "to_compensate": ["charge", "reserve"]}
            ),
            undo_intent(t + 5.05, 1, "payments", "refund"),
            Event("failed", t + 5.06, 1, 1, {"outcome": "error", "reason": "gateway down"}),
            Event(FAILED, t + 5.07, detail={"reason": long_reason, "outstanding": outstanding}),
        )
        state = snapshot(phase=FAILED, stack=[0, 1], outstanding=outstanding, reason=long_reason)
        assert store.apply(
            [Transition("fail-4", 1, FAILED, state, 1, 0, t + 5.07, long_reason, events)]
        )

        # bad-5: compensating, its snapshot is garbage bytes.
        t = T0 + 40
        store.apply([NewSaga("bad-5", "order", 1, payload, t)])
        events = (started(t), intent(t + 0.01, 0, 1, "inventory", "reserve"))
        garbage = b"\xc1\xc1 not msgpack"
        assert store.apply(
            [Transition("bad-5", 1, COMPENSATING, garbage, 1, 0, t + 0.01, None, events)]
        )
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_shows_counts_and_every_saga_newest_first(store_path: Path, capsys: Any) -> None:
    code, out, err = run(capsys, "list", store_path)
    assert code == 0 and err == ""
    header, *lines = out.split("\n\n")[0].splitlines()  # the table; what sagas wait on follows
    assert header.startswith("5 saga(s):")
    for count in ("1 running", "1 compensating", "1 completed", "1 compensated", "1 failed"):
        assert count in header
    ids = [line.split()[0] for line in lines[1:]]  # lines[0] is the column header
    assert ids == ["bad-5", "fail-4", "run-3", "comp-2", "ok-1"]
    comp = next(line for line in lines if line.startswith("comp-2"))
    assert "order v2" in comp and "inc 2" in comp and "card declined" in comp
    fail = next(line for line in lines if line.startswith("fail-4"))
    assert fail.endswith("...") and "x" * 80 not in fail  # long reasons are cut


def test_list_filters_by_status_and_limits(store_path: Path, capsys: Any) -> None:
    code, out, _ = run(capsys, "list", store_path, "--status", "failed")
    assert code == 0
    assert out.splitlines()[0].startswith("5 saga(s)")  # the counts still cover the store
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["fail-4"]
    code, out, _ = run(capsys, "list", store_path, "--limit", "2")
    assert code == 0
    table = out.split("\n\n")[0]  # what the unfinished sagas wait on follows
    assert [line.split()[0] for line in table.splitlines()[2:]] == ["bad-5", "fail-4"]


def test_list_rejects_an_unknown_status_naming_the_valid_ones(
    store_path: Path, capsys: Any
) -> None:
    code, out, err = run(capsys, "list", store_path, "--status", "done")
    assert code == 2 and out == ""
    assert "'done'" in err
    for status in (RUNNING, COMPENSATING, COMPLETED, COMPENSATED, FAILED):
        assert status in err


def test_show_prints_the_timeline_in_order_with_step_names(store_path: Path, capsys: Any) -> None:
    code, out, err = run(capsys, "show", store_path, "comp-2")
    assert code == 0 and err == ""
    assert "status: compensated" in out
    assert "definition: order v2" in out
    assert "incarnation: 2" in out and "recovery attempts: 1" in out
    timeline = out[out.index("timeline") :].splitlines()
    kinds = ["started", "intent", "done", "intent", "claimed", "resumed", "intent", "rejected"]
    kinds += ["aborted", "compensation-intent", "compensated", "compensation-intent"]
    kinds += ["compensated", "compensated"]
    assert [line.split()[3] for line in timeline[1 : len(kinds) + 1]] == kinds
    assert "+0.0 ms" in timeline[1]
    assert "+2000.0 ms" in timeline[5] and "recovery=true" in timeline[5]
    charge = "step 1 charge"
    assert charge in timeline[7] and "payments.charge" in timeline[7]
    assert "resent=true" in timeline[7] and "inc 2" in timeline[7]
    assert "step 0 reserve" in timeline[12]
    assert "action=reserve" not in out  # an intent's participant.action has its own cell
    assert "payments.refund" in timeline[10]  # a compensation line shows the undo action
    assert "restarts: 1" in out and "retries: 0" in out
    assert f"{charge}: intent #1, intent #1 resent, rejected #1; compensation: intent #1" in out


def test_show_counts_retries(store_path: Path, capsys: Any) -> None:
    code, out, _ = run(capsys, "show", store_path, "ok-1")
    assert code == 0
    assert "retries: 1" in out and "restarts: 0" in out
    assert "step 1 charge: intent #1, failed #1, intent #2, done #2" in out


def test_show_lists_outstanding_compensations(store_path: Path, capsys: Any) -> None:
    code, out, _ = run(capsys, "show", store_path, "fail-4")
    assert code == 0
    assert "compensate step 'charge' (refund)" in out
    assert "compensation: intent #1, failed #1" in out  # the refund's failure, not the charge's


def test_show_json_has_the_row_and_events(store_path: Path, capsys: Any) -> None:
    code, out, _ = run(capsys, "show", store_path, "comp-2", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["saga"]["saga_id"] == "comp-2" and data["saga"]["status"] == COMPENSATED
    assert data["saga"]["payload"] == {"order": 1}
    assert data["saga"]["snapshot"]["results"] == {"reserve": 1}
    assert len(data["events"]) == 14
    assert data["events"][4]["kind"] == "claimed" and data["events"][4]["detail"]["recovery"]


def test_corrupt_snapshot_still_shows_the_timeline(store_path: Path, capsys: Any) -> None:
    code, out, err = run(capsys, "show", store_path, "bad-5")
    assert code == 0 and err == ""
    assert "note:" in out and "snapshot v1 of saga 'bad-5'" in out
    assert "step 0: intent #1" in out and "inventory.reserve" in out
    code, out, _ = run(capsys, "show", store_path, "bad-5", "--json")
    data = json.loads(out)
    assert data["saga"]["snapshot"] is None and "bad-5" in data["saga"]["snapshot_error"]


def test_missing_store_is_an_error_and_is_not_created(tmp_path: Path, capsys: Any) -> None:
    missing = tmp_path / "nope.db"
    for argv in (["list", missing], ["show", missing, "x"]):
        code, out, err = run(capsys, *argv)
        assert code == 2 and out == ""
        assert str(missing) in err and "does not exist" in err
        assert not missing.exists()


def test_unknown_saga_id(store_path: Path, capsys: Any) -> None:
    code, out, err = run(capsys, "show", store_path, "no-such-saga")
    assert code == 1 and out == ""
    assert "'no-such-saga'" in err and len(err.strip().splitlines()) == 1


def test_store_errors_are_one_line(tmp_path: Path, capsys: Any) -> None:
    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_text("hello, this is not SQLite\n" * 100)
    code, out, err = run(capsys, "list", not_a_db)
    assert code == 1 and out == ""
    assert str(not_a_db) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_python_m_runs_the_command(store_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "understudy.cli", "list", str(store_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "comp-2" in done.stdout
