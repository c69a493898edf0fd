"""The bridge never leaves a caller waiting forever.

- A command submitted while the runtime shuts down, or after, ends with an error; so does a
  caller waiting for a saga when the shutdown comes.
- On a multi-process base, a coordinator process that dies (SIGKILL) is noticed: every caller
  waiting on it gets an error saying so within seconds, not at the end of its own timeout, and
  later commands are refused at once. A new start on the same store resumes the sagas.
- A message the coordinator fails on twice (Thespian's PoisonMessage) fails its caller.
- ``submit_async`` gives up with CoordinatorTimeout when no answer comes within its timeout.

Bounds are generous: the suite runs on busy two-core machines. Nothing is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import order_definition, recorders, start_runtime
from participants import Silent

from understudy import Understudy
from understudy.actors.watch import is_running
from understudy.errors import (
    ActorSystemError,
    CoordinatorGone,
    CoordinatorTimeout,
    UnderstudyError,
)
from understudy.failpoints import Fault

#: The step timeout of sagas that must not finish while a test looks at them: far longer than
#: any test, so a saga waiting on the Silent participant waits for the whole test.
NEVER = 600.0


def silent_orders(tmp_path: Path) -> list[tuple[str, type, dict[str, Any]]]:
    """The test participants, with "orders" (the order saga's first step) never replying."""
    participants = recorders(tmp_path)
    participants[0] = ("orders", Silent, participants[0][2])
    return participants


def wait_until_stored(us: Understudy, saga_ids: list[str], within: float = 30.0) -> None:
    """Wait until every saga in ``saga_ids`` is in the store (its start is durable)."""
    deadline = time.monotonic() + within
    for saga_id in saga_ids:
        while True:
            try:
                us.record(saga_id)
                break
            except LookupError:
                assert time.monotonic() < deadline, f"saga {saga_id} never started"
                time.sleep(0.02)


def shut_down(outcome: Any) -> bool:
    return isinstance(outcome, ActorSystemError) and "has been shut down" in str(outcome)


class _Caller(threading.Thread):
    """Runs ``us.run`` and keeps its outcome (the result or the exception) and when it came."""

    def __init__(self, us: Understudy, saga_id: str, timeout: float) -> None:
        super().__init__(daemon=True)
        self.us, self.saga_id, self.timeout = us, saga_id, timeout
        self.outcome: Any = None
        self.ended_at: float | None = None

    def run(self) -> None:
        try:
            self.outcome = self.us.run(self.saga_id, "order", {}, timeout=self.timeout)
        except Exception as exc:
            self.outcome = exc
        self.ended_at = time.monotonic()


# --- shutdown -------------------------------------------------------------------------------


def test_commands_during_and_after_shutdown_all_end(tmp_path: Path, base: str) -> None:
    """Every command ends once the runtime shuts down: a caller already waiting, commands sent
    while the shutdown runs (from a thread that keeps submitting), one submitted just as the
    bridge thread takes its stop signal, and those submitted after shutdown returned."""
    us = start_runtime(
        tmp_path, [order_definition(timeout=NEVER)], silent_orders(tmp_path), base=base, hosts=1
    )
    waiting = _Caller(us, "waits", timeout=120)
    waiting.start()
    wait_until_stored(us, ["waits"])

    # The race between a submit and the bridge's stop is a few bytecodes wide. To make it
    # happen every time, the bridge thread is held right after it takes the stop signal off
    # its queue, as if the OS had descheduled it there (a busy machine does that at random).
    took_stop, release = threading.Event(), threading.Event()

    class Held(queue.Queue[Any]):
        def get(self, block: bool = True, timeout: float | None = None) -> Any:
            item = super().get(block, timeout)
            if item is None:
                took_stop.set()
                release.wait(30)
            return item

    us._bridge.commands = Held()  # the bridge is idle: nothing is queued in the old one

    sent: list[Any] = []
    submitting = threading.Event()
    submitting.set()

    def keep_submitting() -> None:
        for i in range(100_000):
            if not submitting.is_set():
                return
            sent.append(us.submit_future(f"during-{i}", "order", {}, wait=False))
            time.sleep(0.002)

    submitter = threading.Thread(target=keep_submitting, daemon=True)
    submitter.start()
    # Some starts are accepted before the shutdown begins.
    deadline = time.monotonic() + 30
    while not any(f.done() and f.exception() is None for f in list(sent)):
        assert time.monotonic() < deadline, "no start was accepted"
        time.sleep(0.01)
    stopper = threading.Thread(target=us.shutdown, daemon=True)
    stopper.start()
    assert took_stop.wait(60), "the bridge never took its stop signal"
    racing = [us.submit_future("racing", "order", {}), us.submit_future("racing-2", "order", {})]
    release.set()
    stopper.join(60)
    assert not stopper.is_alive(), "shutdown did not return"
    # And some after it returned.
    submitted, deadline = len(sent), time.monotonic() + 30
    while len(sent) < submitted + 3:
        assert time.monotonic() < deadline, "the submitter stopped submitting"
        time.sleep(0.01)
    submitting.clear()
    submitter.join(30)
    after = us.submit_future("after", "order", {})
    assert after.done(), "a start after shutdown is refused at once"
    with pytest.raises(ActorSystemError, match="has been shut down"):
        us.run("after-run", "order", {})
    with pytest.raises(ActorSystemError, match="has been shut down"):
        us.hosts()

    waiting.join(30)
    assert shut_down(waiting.outcome), waiting.outcome
    for future in racing:
        # The old bridge took these after its stop signal: it left them queued for ever, or
        # sent them to a coordinator that had stopped.
        assert shut_down(future.exception(timeout=10)), future.exception(timeout=0)
    assert shut_down(after.exception(timeout=0))
    accepted = refused = 0
    for future in sent:
        error = future.exception(timeout=10)  # every one has ended
        if error is None:
            accepted += 1
        elif shut_down(error):
            refused += 1
        else:
            # Sent just before the Stop, it reached a saga host letting go of its store.
            assert isinstance(error, UnderstudyError), error
    assert accepted > 0 and refused > 0, (accepted, refused)


# --- a dead coordinator ---------------------------------------------------------------------


def _children() -> set[int]:
    """Pids of this process's children, zombies included."""
    pids: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError), open(f"/proc/self/task/{task}/children") as children:
            pids.update(int(pid) for pid in children.read().split())
    return pids


@pytest.mark.multiproc
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads /proc")
def test_a_killed_coordinator_is_reported_to_every_waiting_caller(tmp_path: Path) -> None:
    """SIGKILL of the coordinator process while callers wait on sagas that cannot finish for
    minutes: each caller gets an error naming the coordinator within seconds, later commands
    are refused at once, shutdown leaves no process behind, and a new start on the same store
    resumes and finishes the sagas."""
    definition = order_definition(timeout=NEVER)
    before = _children()
    us = start_runtime(
        tmp_path,
        [definition],
        silent_orders(tmp_path),
        base="multiprocTCPBase",
        hosts=1,
        # How often the saga hosts and participants look for their coordinator: long enough
        # that they still run when shutdown is called, so that it must wait for them.
        watch_interval=3.0,
    )
    callers = [_Caller(us, f"slow-{i}", timeout=120) for i in range(3)]
    try:
        for caller in callers:
            caller.start()
        wait_until_stored(us, [c.saga_id for c in callers])
        info = us.hosts()
        actors = [*info.host_pids.values(), *info.participant_pids.values()]
        assert all(is_running((pid, None)) for pid in actors)
        assert _children() - before, "the actor system's admin is a child of this process"
        killed_at = time.monotonic()
        os.kill(info.coordinator_pid, signal.SIGKILL)
        for caller in callers:
            caller.join(60)
        # The bridge checks the coordinator's process every half second; 20 s is for a busy
        # machine. The old bridge left these callers waiting their full 120 s.
        for caller in callers:
            assert isinstance(caller.outcome, CoordinatorGone), (caller.saga_id, caller.outcome)
            assert not isinstance(caller.outcome, CoordinatorTimeout), caller.outcome
            message = str(caller.outcome)
            assert f"coordinator (pid {info.coordinator_pid}) has exited" in message
            assert "start understudy again" in message and "resumes" in message
            assert caller.ended_at is not None and caller.ended_at - killed_at < 20.0
        started = time.monotonic()
        with pytest.raises(CoordinatorGone, match=r"coordinator \(pid \d+\) has exited"):
            us.run("later", "order", {}, timeout=120)
        assert time.monotonic() - started < 2.0, (
            "a start after the coordinator died must fail at once"
        )
    finally:
        started = time.monotonic()
        us.shutdown()
    # It returns (nothing waits for the dead coordinator's answer to Stop; the bound is for a
    # busy machine) once the coordinator's saga hosts and participants have stopped themselves
    # (they look every 3 s): nothing is left running, the actor system's admin is collected,
    # and no zombie stays behind.
    assert time.monotonic() - started < 30.0
    assert [] == [pid for pid in actors if is_running((pid, None))]
    assert not is_running((info.coordinator_pid, None))
    assert set() == _children() - before

    # Started again at once (as the error says to), on the same store: no shard is still
    # held by a saga host of the dead coordinator, and every saga resumes and finishes.
    participants = recorders(tmp_path)
    with Understudy.start(
        tmp_path / "sagas.db", [definition], participants, base="multiprocTCPBase", hosts=1
    ) as again:
        assert again.resumed >= len(callers)
        for caller in callers:
            assert "completed" == again.wait(caller.saga_id, timeout=60).status


# --- a poisoned request -----------------------------------------------------------------------


def test_a_request_the_coordinator_fails_on_fails_its_caller(tmp_path: Path, base: str) -> None:
    """The coordinator raises on a start twice: Thespian hands the message back as a
    PoisonMessage, and the caller gets an error at once rather than at its timeout."""
    fault = Fault("coordinator.before_route", "raise", saga_id="poison", persistent=True)
    with start_runtime(tmp_path, base=base, hosts=1, faults=[fault]) as us:
        started = time.monotonic()
        with pytest.raises(ActorSystemError, match="coordinator failed on this request") as info:
            us.run("poison", "order", {}, timeout=60)
        assert not isinstance(info.value, CoordinatorTimeout)
        assert "InjectedFault" in str(info.value)
        assert time.monotonic() - started < 30.0  # generous: a busy machine
        assert "completed" == us.run("fine", "order", {}).status


# --- submit_async's timeout -------------------------------------------------------------------


def test_submit_async_times_out_when_no_answer_comes(tmp_path: Path, base: str) -> None:
    """A start the coordinator loses on its way to the saga host is never answered:
    submit_async gives up after its timeout with CoordinatorTimeout; the runtime goes on."""
    fault = Fault("coordinator.before_route", "drop", saga_id="lost")
    with start_runtime(tmp_path, base=base, hosts=1, faults=[fault]) as us:

        async def submit() -> float:
            started = time.monotonic()
            with pytest.raises(CoordinatorTimeout, match=r"'lost' within 0\.5 s"):
                await us.submit_async("lost", "order", {}, timeout=0.5)
            return time.monotonic() - started

        took = asyncio.run(submit())
        assert 0.4 <= took < 10.0  # generous: a busy machine
        assert not us.submit("found", "order", {}).existing
        assert "completed" == us.wait("found", timeout=60).status


def test_callers_that_gave_up_are_let_go(tmp_path: Path, base: str) -> None:
    """A caller whose wait timed out (plain or asyncio) is no longer held by the bridge: its
    saga's reply may never come, and the bridge would keep its entry (and listen without
    pause) until shutdown. The saga itself goes on."""
    definition = order_definition(timeout=NEVER)
    participants = silent_orders(tmp_path)
    with start_runtime(tmp_path, [definition], participants, base=base, hosts=1) as us:
        with pytest.raises(CoordinatorTimeout):
            us.run("plain", "order", {}, timeout=0.3)

        async def run_async() -> None:
            with pytest.raises(CoordinatorTimeout):
                await us.run_async("async", "order", {}, timeout=0.3)

        asyncio.run(run_async())
        deadline = time.monotonic() + 30  # the sweep runs every second; generous when busy
        while us._bridge.waiting and time.monotonic() < deadline:
            time.sleep(0.05)
        assert {} == us._bridge.waiting
        assert "running" == us.status("plain") == us.status("async")
