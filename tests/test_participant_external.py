"""Participants whose effect is outside any database (a payment provider's API): handlers marked
``external=True`` run write-ahead (the ledger commits "started" first), in worker threads,
outside any transaction, with the step's idempotency key to pass on; a forward whose outcome is
unknown is still compensated, and its compensation is told so.

The payments participant is :class:`FakeProvider`, whose "API" is a SQLite file logging every
call; orders and inventory are ordinary Recorders."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from conftest import FAST, order_definition, recorders, start_runtime
from participants import FakeProvider, provider_api

from understudy import RetryPolicy, SagaDefinition, Step, Understudy
from understudy.actors.saga import idempotency_key

Start = Callable[..., Understudy]


def provider_participants(tmp_path: Path, **options: Any) -> list[tuple[str, type, dict[str, Any]]]:
    participants = recorders(tmp_path)[:2]  # orders, inventory
    payments = {
        "database": str(tmp_path / "payments.db"),
        "provider": str(tmp_path / "provider.db"),
        **options,
    }
    return [*participants, ("payments", FakeProvider, payments)]


def calls(tmp_path: Path, saga_id: str | None = None) -> list[dict[str, Any]]:
    """Every call the provider received, in the order received."""
    with closing(provider_api(str(tmp_path / "provider.db"))) as api:
        api.row_factory = sqlite3.Row
        rows = api.execute(
            "SELECT * FROM calls WHERE ? IS NULL OR saga_id = ? ORDER BY seq", (saga_id, saga_id)
        ).fetchall()
    return [dict(row) for row in rows]


def provider_effects(tmp_path: Path) -> list[tuple[str, str]]:
    """(key, kind) of what the provider applied (once per key, as it deduplicates)."""
    with closing(provider_api(str(tmp_path / "provider.db"))) as api:
        return [tuple(row) for row in api.execute("SELECT key, kind FROM effects ORDER BY at")]


def ledger(tmp_path: Path) -> dict[str, str]:
    """The payments participant's ledger: outcome by key."""
    with closing(sqlite3.connect(tmp_path / "payments.db")) as db:
        return dict(db.execute("SELECT key, outcome FROM understudy_ledger").fetchall())


def test_slow_calls_of_several_sagas_run_side_by_side(start: Start, tmp_path: Path) -> None:
    """Six sagas at once: each charge takes 0.3 s in a worker thread, and the participant
    serves the others meanwhile, so calls overlap; each key is charged once."""
    us = start(participants=provider_participants(tmp_path))
    futures = [us.submit_future(f"p-{i}", "order", {}) for i in range(6)]
    assert {"completed"} == {future.result(60).status for future in futures}
    charges = [call for call in calls(tmp_path) if call["kind"] == "do"]
    assert 6 == len(charges)
    overlapping = [
        (a["saga_id"], b["saga_id"])
        for i, a in enumerate(charges)
        for b in charges[i + 1 :]
        if a["started"] < b["ended"] and b["started"] < a["ended"]
    ]
    assert overlapping, charges
    assert sorted((idempotency_key(f"p-{i}", 2, "do"), "do") for i in range(6)) == sorted(
        provider_effects(tmp_path)
    )
    assert {idempotency_key(f"p-{i}", 2, "do"): "applied" for i in range(6)} == ledger(tmp_path)


def test_the_handler_gets_the_key_and_no_connection_and_its_result_is_replied(
    start: Start, tmp_path: Path
) -> None:
    us = start(participants=provider_participants(tmp_path, latency=0.05))
    finished = us.run("k-1", "order", {})
    assert "completed" == finished.status
    key = idempotency_key("k-1", 2, "do")
    assert {"charged": key} == finished.results["charge"]
    assert [key] == [call["key"] for call in calls(tmp_path, "k-1")]


def test_a_declined_call_is_recorded_as_rejected_and_compensates(
    start: Start, tmp_path: Path
) -> None:
    us = start(participants=provider_participants(tmp_path, latency=0.05))
    finished = us.run("d-1", "order", {"reject": "charge"})
    assert "compensated" == finished.status and "card declined" in (finished.reason or "")
    assert "rejected" == ledger(tmp_path)[idempotency_key("d-1", 2, "do")]
    # The refund of a declined charge is a no-op: the provider said it took nothing.
    assert ["do"] == [call["kind"] for call in calls(tmp_path, "d-1")]


def test_a_forward_that_raised_after_calling_out_is_compensated_as_unknown(
    start: Start, tmp_path: Path
) -> None:
    """The charge reaches the provider, then raises on every attempt: the row stays "started"
    (retries call again, under the same key, and the provider charges once); the saga aborts,
    and the refund still runs, told the forward's outcome is unknown."""
    us = start(participants=provider_participants(tmp_path, latency=0.05))
    finished = us.run("u-1", "order", {"raise_after_call": "charge"})
    assert "compensated" == finished.status
    forward, undo = idempotency_key("u-1", 2, "do"), idempotency_key("u-1", 2, "undo")
    made = calls(tmp_path, "u-1")
    assert [forward] * FAST.attempts == [call["key"] for call in made if call["kind"] == "do"]
    (refund,) = [call for call in made if call["kind"] == "undo"]
    assert (undo, forward, "unknown", None) == (
        refund["key"],
        refund["forward_key"],
        refund["forward_outcome"],
        refund["forward_result"],
    )
    assert [(forward, "do"), (undo, "undo")] == provider_effects(tmp_path)
    # The forward is refused from now on; the refund's outcome is recorded.
    assert {forward: "abandoned", undo: "applied"} == ledger(tmp_path)


def test_a_compensation_of_an_applied_call_is_told_so_with_its_result(
    start: Start, tmp_path: Path
) -> None:
    """A step after the charge refuses: the refund is told the charge applied, and gets what
    it returned."""
    steps = [*order_definition().steps, Step("ship", "inventory", "ship", "release", retry=FAST)]
    us = start([SagaDefinition("order", 1, steps)], provider_participants(tmp_path, latency=0.05))
    assert "compensated" == us.run("a-1", "order", {"reject": "ship"}).status
    (refund,) = [call for call in calls(tmp_path, "a-1") if call["kind"] == "undo"]
    forward = idempotency_key("a-1", 2, "do")
    assert ("applied", repr({"charged": forward})) == (
        refund["forward_outcome"],
        refund["forward_result"],
    )


@pytest.mark.multiproc
def test_a_participant_killed_during_calls_leaves_them_started_and_sagas_finish(
    tmp_path: Path,
) -> None:
    """SIGKILL of the payments process while two charges are in flight: their rows stay
    "started". The restarted participant runs them again under the same keys (the provider
    charges once per key): the plain saga completes; the one whose charge then raises aborts,
    and its refund is told the outcome is unknown."""
    definition = order_definition(timeout=3.0)
    participants = provider_participants(tmp_path, latency=1.5)
    with start_runtime(
        tmp_path, [definition], participants, base="multiprocTCPBase", watch_interval=0.5
    ) as us:
        pid = us.hosts().participant_pids["payments"]
        us.submit("x-1", "order", {})
        us.submit("x-2", "order", {"raise_after_call": "charge"})
        deadline = time.monotonic() + 30
        while len([c for c in calls(tmp_path) if c["ended"] is None]) < 2:
            assert time.monotonic() < deadline, calls(tmp_path)
            time.sleep(0.02)
        os.kill(pid, signal.SIGKILL)
        keys = [idempotency_key(saga, 2, "do") for saga in ("x-1", "x-2")]
        assert {key: "started" for key in keys} == {
            key: outcome for key, outcome in ledger(tmp_path).items() if key in keys
        }
        first = us.wait("x-1", timeout=60)
        second = us.wait("x-2", timeout=60)
    assert ("completed", "compensated") == (first.status, second.status)
    assert pid not in {call["pid"] for call in calls(tmp_path) if call["ended"] is not None}
    for saga_id, key in zip(("x-1", "x-2"), keys, strict=True):
        charges = [call for call in calls(tmp_path, saga_id) if call["kind"] == "do"]
        assert len(charges) >= 2 and {key} == {call["key"] for call in charges}
    (refund,) = [call for call in calls(tmp_path, "x-2") if call["kind"] == "undo"]
    assert "unknown" == refund["forward_outcome"]
    applied = provider_effects(tmp_path)
    assert sorted(applied) == sorted(set(applied))
    assert {"applied", "abandoned"} == {ledger(tmp_path)[key] for key in keys}


def test_requests_for_a_step_whose_call_is_in_flight_wait_for_it(
    start: Start, tmp_path: Path
) -> None:
    """The charge takes longer than the saga waits: its retry and then its refund arrive while
    the call is in flight. Neither calls out meanwhile: the retry is answered from the ledger
    once the call returned, and the refund runs after it, told the charge applied."""
    patient = RetryPolicy(attempts=40, backoff=0.01, max_backoff=0.05)
    steps = [
        *order_definition().steps[:2],
        Step(
            "charge",
            "payments",
            "charge",
            "refund",
            retry=RetryPolicy(attempts=2, backoff=0.01, max_backoff=0.05),
            compensation_retry=patient,
            timeout=0.25,
        ),
    ]
    us = start([SagaDefinition("order", 1, steps)], provider_participants(tmp_path, latency=0.6))
    assert "compensated" == us.run("w-1", "order", {}, timeout=60).status
    made = calls(tmp_path, "w-1")
    assert ["do", "undo"] == [call["kind"] for call in made]
    charge, refund = made
    assert charge["ended"] <= refund["started"]
    forward = idempotency_key("w-1", 2, "do")
    assert ("applied", repr({"charged": forward})) == (
        refund["forward_outcome"],
        refund["forward_result"],
    )
    assert {forward: "applied", idempotency_key("w-1", 2, "undo"): "applied"} == ledger(tmp_path)
