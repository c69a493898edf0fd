"""Steps that finish later: a handler returns ``Later``, its step waits with a durable handle,
and a completion from outside (``complete``, ``reject``, ``fail``: another thread here, as a
webhook or a person would be) finishes it. The saga's resends run nothing again; its timeout
still applies, and a compensation of a step still waiting cancels the handle.

The participant is :class:`Approvals`: its "approve" handler writes a pending row holding the
handle (which the tests read, as a person's inbox would) and returns ``Later``."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import attrs
import psycopg
import pytest
from conftest import FAST, recorders, start_runtime, stored
from participants import Approvals, NarrowApprovals

from understudy import PayloadError, RetryPolicy, SagaDefinition, Step, Understudy
from understudy.actors.deferred import Handles, complete, fail, reject
from understudy.actors.ledger import DEFERRED, Run, digest_of, open_ledger
from understudy.actors.plumbing import Stop, Stopped
from understudy.actors.saga import idempotency_key
from understudy.actors.system import child_pids, reap, start_actor_system
from understudy.errors import CompletionRefused, LedgerError
from understudy.messages import ConfigureParticipant, ParticipantReady, StepReply, StepRequest

Start = Callable[..., Understudy]
PATIENT = RetryPolicy(attempts=40, backoff=0.01, max_backoff=0.05)


def definition(
    timeout: float = 120.0, retry: RetryPolicy = FAST, action: str = "approve"
) -> SagaDefinition:
    """Create an order (a Recorder), then wait for its approval (step 1)."""
    undo = "withdraw" if action == "approve" else "refund"
    return SagaDefinition(
        "approval",
        1,
        [
            Step("create", "orders", "create", "cancel", retry=FAST, compensation_retry=FAST),
            Step(
                "approve",
                "approvals",
                action,
                undo,
                retry=retry,
                compensation_retry=PATIENT,
                timeout=timeout,
            ),
        ],
    )


def participants(tmp_path: Path, database: str | None = None) -> list[tuple[str, type, Any]]:
    options = {
        "database": database or str(tmp_path / "approvals.db"),
        "provider": str(tmp_path / "provider.db"),
        "completion_poll": 0.05,
    }
    return [*recorders(tmp_path)[:1], ("approvals", Approvals, options)]


def query(database: str, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if database.startswith("postgres"):
        with psycopg.connect(database, autocommit=True) as db:
            return list(db.execute(statement.replace("?", "%s"), params).fetchall())
    with closing(sqlite3.connect(database, timeout=30)) as db:
        return list(db.execute(statement, params).fetchall())


def handle_of(database: str, saga_id: str, timeout: float = 60) -> str:
    """The handle the saga's approval handler wrote in its pending row, once it committed."""
    deadline = time.monotonic() + timeout
    while True:
        if os.path.exists(database) or database.startswith("postgres"):
            try:
                rows = query(database, "SELECT handle FROM approvals WHERE saga_id = ?", (saga_id,))
            except (sqlite3.OperationalError, psycopg.Error):
                rows = []  # the table is not there yet
            if rows:
                return str(rows[0][0])
        assert time.monotonic() < deadline, f"no pending approval of {saga_id}"
        time.sleep(0.02)


def runs(database: str, saga_id: str, kind: str = "do") -> int:
    """How many runs of the approval's handler committed (of its compensation: ``undo``)."""
    key = idempotency_key(saga_id, 1, kind)
    return len(query(database, "SELECT 1 FROM runs WHERE key = ?", (key,)))


def outcome(database: str, saga_id: str, kind: str = "do") -> str:
    key = idempotency_key(saga_id, 1, kind)
    return str(query(database, "SELECT outcome FROM understudy_ledger WHERE key = ?", (key,))[0][0])


def withdrawal(database: str, saga_id: str) -> tuple[Any, ...]:
    """(forward_outcome, forward_result) the compensation was told."""
    key = idempotency_key(saga_id, 1, "undo")
    rows = query(
        database, "SELECT forward_outcome, forward_result FROM withdrawals WHERE key = ?", (key,)
    )
    assert 1 == len(rows), rows
    return tuple(rows[0])


def attempts(tmp_path: Path, saga_id: str) -> int:
    """Forward requests the saga sent for its approval (first sends and retries)."""
    _record, events = stored(str(tmp_path / "sagas.db"), saga_id)
    return len([e for e in events if e.kind == "intent" and e.step == 1])


# --- through the runtime, on both bases -----------------------------------------------------------


def test_a_step_waits_for_its_completion_and_the_saga_gets_its_result(
    start: Start, tmp_path: Path
) -> None:
    us = start([definition()], participants(tmp_path))
    db = str(tmp_path / "approvals.db")
    future = us.submit_future("a-1", "approval", {})
    handle = handle_of(db, "a-1")
    assert "deferred" == outcome(db, "a-1")
    # The handle is in the ledger too, committed with the handler's writes.
    key = idempotency_key("a-1", 1, "do")
    assert [(handle,)] == query(db, "SELECT handle FROM understudy_deferred WHERE key = ?", (key,))
    assert not future.done()  # nothing finishes the step but its completion
    assert complete(db, handle, {"approved_by": "alice"}) is True
    finished = future.result(60)
    assert ("completed", {"approved_by": "alice"}) == (
        finished.status,
        finished.results["approve"],
    )
    assert (1, "applied") == (runs(db, "a-1"), outcome(db, "a-1"))
    # The same completion again is harmless; another one is refused and changes nothing.
    assert complete(db, handle, {"approved_by": "alice"}) is False
    with pytest.raises(CompletionRefused, match="completed before as 'applied'") as refused:
        reject(db, handle, "too late")
    assert "applied" == refused.value.state


def test_waiting_steps_hold_no_slot_of_the_participants_window(
    start: Start, tmp_path: Path
) -> None:
    """``max_in_flight = 1``: three steps waiting at once all reached the participant, since a
    deferred request is acknowledged as taken and frees its slot."""
    (orders, (name, _cls, options)) = participants(tmp_path)
    us = start([definition()], [orders, (name, NarrowApprovals, options)])
    db = str(tmp_path / "approvals.db")
    futures = [us.submit_future(f"w-{i}", "approval", {}) for i in range(3)]
    handles = [handle_of(db, f"w-{i}") for i in range(3)]  # all three wait at once
    for handle in handles:
        complete(db, handle, {"approved_by": "bob"})
    assert [f.result(60).status for f in futures] == ["completed"] * 3
    _record, events = stored(str(tmp_path / "sagas.db"), "w-0")
    assert [e.kind for e in events if e.step == 1][:2] == ["intent", "accepted"]


def test_resent_requests_run_nothing_again_and_get_the_completion(
    start: Start, tmp_path: Path
) -> None:
    """The step's timeout is shorter than the wait: the saga sends its request again and again
    under the same key; the handler ran once, and the completion answers the latest."""
    patient = RetryPolicy(attempts=1000, backoff=0.01, max_backoff=0.05)
    us = start([definition(timeout=0.2, retry=patient)], participants(tmp_path))
    db = str(tmp_path / "approvals.db")
    future = us.submit_future("r-1", "approval", {})
    handle = handle_of(db, "r-1")
    deadline = time.monotonic() + 60
    while attempts(tmp_path, "r-1") < 3:  # resent at least twice while it waits
        assert time.monotonic() < deadline
        time.sleep(0.05)
    complete(db, handle, {"approved_by": "bob"})
    finished = future.result(60)
    assert ("completed", {"approved_by": "bob"}) == (finished.status, finished.results["approve"])
    assert 1 == runs(db, "r-1")


def test_a_refusal_compensates_and_the_compensation_undoes_the_pending_writes(
    start: Start, tmp_path: Path
) -> None:
    us = start([definition()], participants(tmp_path))
    db = str(tmp_path / "approvals.db")
    future = us.submit_future("n-1", "approval", {})
    handle = handle_of(db, "n-1")
    assert reject(db, handle, "over budget", data={"code": "budget", "limit": 100}) is True
    assert reject(db, handle, "over budget", data={"limit": 100, "code": "budget"}) is False
    finished = future.result(60)
    assert "compensated" == finished.status and "over budget" in (finished.reason or "")
    # The handler's pending row, written when it deferred, was undone by its compensation.
    assert ("rejected", None) == withdrawal(db, "n-1")
    assert [(1,)] == query(db, "SELECT withdrawn FROM approvals WHERE saga_id = ?", ("n-1",))
    assert ("rejected", "applied") == (outcome(db, "n-1"), outcome(db, "n-1", "undo"))


def test_a_failure_is_final_for_the_key_and_the_saga_compensates(
    start: Start, tmp_path: Path
) -> None:
    us = start([definition()], participants(tmp_path))
    db = str(tmp_path / "approvals.db")
    future = us.submit_future("f-1", "approval", {})
    assert fail(db, handle_of(db, "f-1"), "the scanner broke") is True
    finished = future.result(60)
    assert "compensated" == finished.status and "the scanner broke" in (finished.reason or "")
    # Its retries were answered from the ledger: the handler ran once.
    assert FAST.attempts == attempts(tmp_path, "f-1")
    assert (1, "failed") == (runs(db, "f-1"), outcome(db, "f-1"))
    assert ("failed", None) == withdrawal(db, "f-1")


def test_a_step_that_times_out_while_waiting_is_cancelled_and_its_completion_refused(
    start: Start, tmp_path: Path
) -> None:
    """Nobody answers within the step's timeout and its retries: the saga compensates. The
    compensation cancels the handle (and undoes the pending row); a completion that comes
    after is refused and records nothing, and a late forward request is refused."""
    us = start([definition(timeout=0.3)], participants(tmp_path))
    db = str(tmp_path / "approvals.db")
    future = us.submit_future("t-1", "approval", {})
    handle = handle_of(db, "t-1")
    finished = future.result(60)
    assert "compensated" == finished.status
    assert ("cancelled", None) == withdrawal(db, "t-1")
    assert (1, "cancelled") == (runs(db, "t-1"), outcome(db, "t-1"))
    with pytest.raises(CompletionRefused, match="compensated while it waited") as refused:
        complete(db, handle, {"approved_by": "carol"})
    assert "cancelled" == refused.value.state
    assert "cancelled" == outcome(db, "t-1")


def test_an_external_handler_defers_and_a_completion_may_come_before_it_returns(
    start: Start, tmp_path: Path
) -> None:
    """``pay`` runs in a worker thread (its pending row goes to the provider's file) and
    returns ``Later``; the second saga's completion is recorded while the call is still in
    flight (the row says "started"), as a fast webhook would: the participant replies with
    it."""
    us = start([definition(action="pay")], participants(tmp_path))
    db, provider = str(tmp_path / "approvals.db"), str(tmp_path / "provider.db")
    later = us.submit_future("x-1", "approval", {})
    handle = handle_of(provider, "x-1")
    complete(db, handle, {"paid": 1})
    assert ("completed", {"paid": 1}) == (
        later.result(60).status,
        later.result().results["approve"],
    )
    early = us.run("x-2", "approval", {"complete_first": "pay"}, timeout=60)
    assert ("completed", {"paid": "before returning"}) == (early.status, early.results["approve"])
    assert ["applied", "applied"] == [outcome(db, "x-1"), outcome(db, "x-2")]


def test_a_handler_that_answers_at_once_is_not_deferred(start: Start, tmp_path: Path) -> None:
    us = start([definition()], participants(tmp_path))
    finished = us.run("i-1", "approval", {"now": "approve"})
    assert ("completed", {"approved": "at once"}) == (finished.status, finished.results["approve"])


# --- handles --------------------------------------------------------------------------------------


def test_bad_handles_are_refused_and_record_nothing(start: Start, tmp_path: Path) -> None:
    us = start([definition()], participants(tmp_path))
    db = str(tmp_path / "approvals.db")
    future = us.submit_future("h-1", "approval", {})
    handle = handle_of(db, "h-1")
    prefix, body, mac = handle.split(".")
    forged = f"{prefix}.{body}.{'A' * len(mac)}"
    for bad in (forged, "h-1:1:do", handle[:-3], ""):
        with pytest.raises(CompletionRefused) as refused:
            complete(db, bad, {"approved_by": "mallory"})
        assert "unknown" == refused.value.state
    # Another participant's database did not make it (nor does it know its step).
    other = str(tmp_path / "orders.db")
    with pytest.raises((CompletionRefused, LedgerError)):
        complete(other, handle)
    with pytest.raises(LedgerError, match="no such file"):
        complete(str(tmp_path / "nowhere.db"), handle)
    with pytest.raises(PayloadError, match="h-1:1:do"):
        complete(db, handle, {"at": object()})
    assert "deferred" == outcome(db, "h-1")
    complete(db, handle, {"approved_by": "dave"})
    assert "completed" == future.result(60).status


# --- a participant killed while its step waits ----------------------------------------------------


@pytest.mark.multiproc
def test_a_handle_survives_a_sigkill_of_the_participant(tmp_path: Path) -> None:
    """SIGKILL of the approvals process while two steps wait. One is completed while the
    participant is dead, the other once it was restarted: both sagas complete, each handler
    ran once, and the handles the dead process handed out stay valid."""
    db = str(tmp_path / "approvals.db")
    with start_runtime(
        tmp_path,
        [definition(timeout=120)],
        participants(tmp_path),
        base="multiprocTCPBase",
        watch_interval=0.5,
    ) as us:
        pid = us.hosts().participant_pids["approvals"]
        us.submit("k-1", "approval", {})
        us.submit("k-2", "approval", {})
        first, second = handle_of(db, "k-1"), handle_of(db, "k-2")
        os.kill(pid, signal.SIGKILL)
        assert complete(db, first, {"approved_by": "erin"}) is True  # nobody is listening
        deadline = time.monotonic() + 60
        while us.hosts().participant_pids.get("approvals") in (None, pid):
            assert time.monotonic() < deadline, "the participant was not restarted"
            time.sleep(0.1)
        assert complete(db, second, {"approved_by": "frank"}) is True
        done = [us.wait(saga_id, timeout=60) for saga_id in ("k-1", "k-2")]
        assert ["completed", "completed"] == [record.status for record in done]
        results = [us.run(saga_id, "approval", timeout=10).results for saga_id in ("k-1", "k-2")]
    assert [{"approved_by": "erin"}, {"approved_by": "frank"}] == [r["approve"] for r in results]
    assert [1, 1] == [runs(db, "k-1"), runs(db, "k-2")]
    assert {pid} == {row[0] for row in query(db, "SELECT pid FROM approvals")}


# --- PostgreSQL -----------------------------------------------------------------------------------


def test_deferred_steps_on_postgres(start: Start, tmp_path: Path, postgres_url: str) -> None:
    """The same rules with the participant's ledger in PostgreSQL: a completion, a refusal
    with data, and a cancellation that refuses the late completion."""
    us = start(
        [definition(timeout=120), SagaDefinition("quick", 1, definition(timeout=0.3).steps)],
        participants(tmp_path, postgres_url),
    )
    ok = us.submit_future("p-1", "approval", {})
    no = us.submit_future("p-2", "approval", {})
    late = us.submit_future("p-3", "quick", {})
    complete(postgres_url, handle_of(postgres_url, "p-1"), {"approved_by": "gina"})
    reject(postgres_url, handle_of(postgres_url, "p-2"), "no budget", data={"code": 7})
    handle = handle_of(postgres_url, "p-3")
    assert ["completed", "compensated", "compensated"] == [
        f.result(60).status for f in (ok, no, late)
    ]
    with pytest.raises(CompletionRefused) as refused:
        complete(postgres_url, handle, {"approved_by": "gina"})
    assert "cancelled" == refused.value.state
    assert ["applied", "rejected", "cancelled"] == [
        outcome(postgres_url, s) for s in ("p-1", "p-2", "p-3")
    ]
    assert [1, 1, 1] == [runs(postgres_url, s) for s in ("p-1", "p-2", "p-3")]
    assert [("rejected", None), ("cancelled", None)] == [
        withdrawal(postgres_url, s) for s in ("p-2", "p-3")
    ]


# --- the participant alone: what its replies carry ------------------------------------------------


@pytest.fixture
def approvals(base: str, tmp_path: Path) -> Iterator[tuple[Any, str]]:
    """An Approvals actor on its own, configured: (the actor system, the actor)."""
    before = child_pids()
    asys = start_actor_system(base)
    admin = child_pids() - before  # a multi-process base's admin: collected after, no zombie
    try:
        address = asys.createActor(Approvals)
        options = {"database": str(tmp_path / "approvals.db"), "completion_poll": 0.05}
        ready = asys.ask(address, ConfigureParticipant("approvals", options), 30)
        assert isinstance(ready, ParticipantReady) and ready.error is None, ready
        yield asys, address
        assert isinstance(asys.ask(address, Stop(), 30), Stopped)
    finally:
        asys.shutdown()
        reap(admin)


def request(kind: str, attempt: int = 1, saga_id: str = "s-1") -> StepRequest:
    return StepRequest(
        saga_id,
        1,
        "approve",
        kind,
        "approve" if kind == "do" else "withdraw",
        idempotency_key(saga_id, 1, kind),
        idempotency_key(saga_id, 1, "do"),
        {},
        {},
        attempt,
        1,
    )


def test_the_latest_waiting_request_gets_the_refusal_with_its_data(
    approvals: tuple[Any, str], tmp_path: Path
) -> None:
    """Two attempts wait for the same step: the completion answers the latest (the one its
    saga waits on), with the refusal's data; a request after it gets the same, replayed."""
    asys, address = approvals
    db = str(tmp_path / "approvals.db")
    asys.tell(address, request("do", attempt=1))
    handle = handle_of(db, "s-1")
    # Each attempt is taken, not answered: it waits (the saga host frees its slot).
    first = asys.listen(30)
    assert isinstance(first, StepReply) and (first.outcome, first.attempt) == ("accepted", 1)
    taken = asys.ask(address, request("do", attempt=2), 30)
    assert isinstance(taken, StepReply) and (taken.outcome, taken.attempt) == ("accepted", 2)
    data = {"code": "card_declined", "retry_after": 30}
    reject(db, handle, "declined", data=data)
    reply = asys.listen(30)
    assert isinstance(reply, StepReply)
    assert (2, "rejected", "declined", data) == (
        reply.attempt,
        reply.outcome,
        reply.reason,
        reply.data,
    )
    again = asys.ask(address, request("do", attempt=3), 30)
    assert isinstance(again, StepReply)
    assert ("rejected", data, True) == (again.outcome, again.data, again.replayed)
    assert 1 == runs(db, "s-1")


def test_a_completion_that_commits_while_a_compensation_decides_wins_on_postgres(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL reads committed rows: a completion may commit between the compensation's
    look at the waiting forward and its cancel. The cancel then finds nothing to cancel, and
    the compensation runs told the forward applied, with its result (and the completion
    stands: it was recorded first)."""
    ledger = open_ledger(postgres_url, {})
    try:
        ledger.begin()
        ledger.create_schema()
        ledger.commit()
        handle = Handles(ledger.handle_secret(), "approvals")
        forward, undo = request("do", saga_id="race"), request("undo", saga_id="race")
        ledger.begin()
        ledger.record(forward.key, forward, digest_of(forward), DEFERRED)
        ledger.defer(forward.key, "approvals", handle(forward.key))
        ledger.commit()
        lookup, raced = ledger._lookup, list[bool]()

        def racing(key: str) -> Any:
            row = lookup(key)
            if key == forward.key and not raced:
                raced.append(complete(postgres_url, handle(forward.key), {"approved_by": "hal"}))
            return row

        monkeypatch.setattr(ledger, "_lookup", racing)
        ledger.begin()
        verdict = ledger.decide(undo, digest_of(undo))
        ledger.commit()
    finally:
        ledger.close()
    assert [True] == raced
    assert Run(False, "applied", {"approved_by": "hal"}) == verdict
    with pytest.raises(CompletionRefused) as refused:
        reject(postgres_url, handle(forward.key), "too late")
    assert "applied" == refused.value.state


def test_a_compensation_can_finish_later_too(approvals: tuple[Any, str], tmp_path: Path) -> None:
    asys, address = approvals
    db = str(tmp_path / "approvals.db")
    payload = {"now": "approve", "later": "withdraw"}
    forward = asys.ask(address, attrs.evolve(request("do"), payload=payload), 30)
    assert isinstance(forward, StepReply) and "ok" == forward.outcome
    undo = attrs.evolve(request("undo"), payload=payload)
    taken = asys.ask(address, undo, 30)  # taken, not answered: it waits
    assert isinstance(taken, StepReply) and ("undo", "accepted") == (taken.kind, taken.outcome)
    key = idempotency_key("s-1", 1, "undo")
    ((handle,),) = query(db, "SELECT handle FROM withdrawals WHERE key = ?", (key,))
    complete(db, handle, {"refunded": 5})
    reply = asys.listen(30)
    assert isinstance(reply, StepReply)
    assert ("undo", "ok", {"refunded": 5}) == (reply.kind, reply.outcome, reply.result)
    again = asys.ask(address, attrs.evolve(undo, attempt=2), 30)
    assert isinstance(again, StepReply)
    assert (True, {"refunded": 5}) == (again.replayed, again.result)
    assert [1, 1] == [runs(db, "s-1"), runs(db, "s-1", "undo")]
