"""Bursts: saga hosts pace their requests to what each participant takes in flight.

The issue this answers: 200 sagas whose requests had been lost were all claimed and resent
within a few milliseconds of each other when the application restarted; the participant, 10 ms
per request, needed 2 s to answer them all, and with a 1 s step timeout about half of the sagas
timed out and retried (a burst of 200 fresh starts did the same). A participant now declares how
many requests it takes in flight (``Participant.max_in_flight``, 64 by default), each saga host
sends at most its share of them, and a request's reply timeout starts when it is sent, not when
it queued in the host.

Every scenario runs on real SQLite files and real Thespian systems, on the in-process and the
TCP multi-process base. The machines these run on may be busy two-core ones, so nothing here
asserts a speed: the bounds are counts (requests a participant had in hand at once, timeout
events in the stored timelines), and the timeouts are chosen with a wide margin over the worst
wait a paced request can have (each says how wide).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from conftest import BASES

from understudy import (
    DefinitionError,
    Participant,
    RetryPolicy,
    SagaDefinition,
    Step,
    StepContext,
    Understudy,
    action,
    compensation,
)
from understudy.actors.participant import DEFAULT_MAX_IN_FLIGHT
from understudy.failpoints import Fault
from understudy.messages import StepRequest
from understudy.persistence import open_store
from understudy.supervisors.pacing import Pacing, Queued, share_of

# --- participants: importable by name (the multi-process base loads them in other processes) --


class Slow(Participant):
    """Takes ``latency`` seconds per request (option, 10 ms by default), as the issue's
    participant did. Every request it handles records, in its own ledger's transaction, its
    position in the batch it arrived with: the requests this participant held at once, received
    and not yet answered (a batch's replies all go out when it commits). The limit is the
    default one, as for a new user."""

    def setup(self, db: Any, options: dict[str, Any]) -> None:
        self.latency = float(options.get("latency", 0.01))
        db.execute(
            "CREATE TABLE IF NOT EXISTS handled (saga_id TEXT, step TEXT, kind TEXT, "
            "attempt INTEGER, position INTEGER, at REAL)"
        )

    def _handle(self, step: StepContext, db: Any) -> dict[str, Any]:
        time.sleep(self.latency)
        db.execute(
            "INSERT INTO handled VALUES (?, ?, ?, ?, ?, ?)",
            # self.staged: the requests of this batch handled before this one.
            (step.saga_id, step.step, step.kind, step.attempt, len(self.staged) + 1, time.time()),
        )
        return {"by": step.step}

    @action("work")
    def work(self, step: StepContext, db: Any) -> Any:
        return self._handle(step, db)

    @compensation("undo")
    def undo(self, step: StepContext, db: Any) -> Any:
        return self._handle(step, db)


class Flooded(Slow):
    """The same participant declaring no limit: every request is sent at once (the issue)."""

    max_in_flight = None


class Narrow(Slow):
    """A participant that takes two requests at once."""

    max_in_flight = 2


class Single(Slow):
    """A participant that takes one request at once."""

    max_in_flight = 1


# --- helpers ----------------------------------------------------------------------------------


def burst_definition(timeout: float, steps: int = 2) -> SagaDefinition:
    """``steps`` steps, each a request to the one participant "slow"."""
    return SagaDefinition(
        "burst",
        1,
        [
            Step(f"s{i}", "slow", "work", "undo", timeout=timeout, retry=RetryPolicy(backoff=0.01))
            for i in range(steps)
        ],
    )


@pytest.fixture(params=BASES)
def base(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def runtimes(tmp_path: Path, base: str) -> Iterator[Callable[..., Understudy]]:
    """Start runtimes on ``tmp_path / "sagas.db"`` with the participant "slow" (class and
    options given); each is shut down at the end if the test did not."""
    running: list[Understudy] = []

    def _start(
        definition: SagaDefinition,
        cls: type = Slow,
        options: dict[str, Any] | None = None,
        **kw: Any,
    ) -> Understudy:
        participant = ("slow", cls, {"database": str(tmp_path / "slow.db"), **(options or {})})
        us = Understudy.start(tmp_path / "sagas.db", [definition], [participant], base=base, **kw)
        running.append(us)
        return us

    yield _start
    for us in running:
        us.shutdown()


def timeline_kinds(store_path: Path, saga_ids: list[str]) -> dict[str, list[str]]:
    """Each saga's stored timeline, event kinds in order (what ``understudy show`` prints)."""
    with closing(open_store(str(store_path), read_only=True)) as store:
        return {saga_id: [e.kind for e in store.events(saga_id)] for saga_id in saga_ids}


def timed_out(store_path: Path, saga_ids: list[str]) -> list[str]:
    """The sagas whose stored timeline holds a timeout."""
    kinds = timeline_kinds(store_path, saga_ids)
    return [saga_id for saga_id, events in kinds.items() if "timeout" in events]


def most_in_hand(participant_db: Path) -> int:
    """The most requests the participant had in hand at once (see :class:`Slow`)."""
    import sqlite3

    with closing(sqlite3.connect(participant_db)) as db:
        return int(db.execute("SELECT coalesce(max(position), 0) FROM handled").fetchone()[0])


def lose_requests(start: Callable[..., Understudy], cls: type, count: int) -> list[str]:
    """Start ``count`` sagas whose first requests are all lost on the way (the saga hosts drop
    them), then stop the application: their intents are committed, nothing was answered.
    The step timeout of this first run is long, so nothing times out in it."""
    saga_ids = [f"b-{i}" for i in range(count)]
    us = start(
        burst_definition(timeout=600.0), cls, faults=[Fault("host.send", "drop", persistent=True)]
    )
    futures = [us.submit_future(saga_id, "burst", {}, wait=False) for saga_id in saga_ids]
    for future in futures:
        future.result(120)  # durable: the start and the first step's intent are committed
    us.shutdown()
    return saga_ids


def wait_all(us: Understudy, saga_ids: list[str], timeout: float = 180.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    return {
        saga_id: us.wait(saga_id, timeout=max(1.0, deadline - time.monotonic())).status
        for saga_id in saga_ids
    }


#: The step timeout of the bursts: the issue's 1 s, with room for a busy machine. A paced request
#: waits at most for the participant's whole window to be served before its reply (the replies of
#: a batch go out when it commits): 64 requests at 10 ms, 0.64 s of sleeping, measured at up to
#: 1.0 s with both cores of a two-core machine kept busy by other processes. Unpaced, the 200
#: requests take at least 2 s to serve however fast the machine is, beyond this timeout.
STEP_TIMEOUT = 1.5
BURST = 200


# --- the scenarios --------------------------------------------------------------------


def test_a_recovery_burst_is_paced_and_nothing_times_out(
    runtimes: Callable[..., Understudy], tmp_path: Path
) -> None:
    """200 sagas whose requests were lost: when the application starts again, every one is
    claimed and resent at once, to a participant that takes 10 ms per request. The resends
    go out at the participant's pace, each with its whole timeout from its own send, so every
    saga completes with no timeout in its stored timeline."""
    saga_ids = lose_requests(runtimes, Slow, BURST)
    us = runtimes(burst_definition(STEP_TIMEOUT))
    assert us.resumed == BURST
    statuses = wait_all(us, saga_ids)
    assert set(statuses.values()) == {"completed"}
    assert timed_out(tmp_path / "sagas.db", saga_ids) == []
    # Never more than the default limit in the participant's hands at once. Unpaced, each
    # host's part of the burst arrives as one message and is served as one batch: all 200 at
    # once in-process, about 100 per host on the multi-process base (the test below).
    assert 1 < most_in_hand(tmp_path / "slow.db") <= DEFAULT_MAX_IN_FLIGHT


def test_without_a_limit_the_recovery_burst_floods_the_participant(
    runtimes: Callable[..., Understudy], tmp_path: Path
) -> None:
    """The same burst against the same participant declaring no limit reproduces the issue:
    every resend goes at once, and sagas time out because their requests queued in the
    participant's mailbox (what the test above would see without pacing)."""
    saga_ids = lose_requests(runtimes, Flooded, BURST)
    us = runtimes(burst_definition(STEP_TIMEOUT), Flooded)
    wait_all(us, saga_ids)
    # 200 requests at 10 ms take at least 2 s to answer, more than the step timeout: those
    # served last cannot be answered in time, whatever the machine's speed.
    assert len(timed_out(tmp_path / "sagas.db", saga_ids)) > 0
    assert most_in_hand(tmp_path / "slow.db") > DEFAULT_MAX_IN_FLIGHT


def test_a_burst_of_fresh_starts_is_paced_and_nothing_times_out(
    runtimes: Callable[..., Understudy], tmp_path: Path
) -> None:
    """200 sagas started at once against the same 10 ms participant: no timeouts."""
    us = runtimes(burst_definition(STEP_TIMEOUT))
    saga_ids = [f"f-{i}" for i in range(BURST)]
    futures = [us.submit_future(saga_id, "burst", {}) for saga_id in saga_ids]
    assert {f.result(180).status for f in futures} == {"completed"}
    assert timed_out(tmp_path / "sagas.db", saga_ids) == []
    assert most_in_hand(tmp_path / "slow.db") <= DEFAULT_MAX_IN_FLIGHT


def test_a_participant_is_never_sent_more_than_its_limit(
    runtimes: Callable[..., Understudy], tmp_path: Path
) -> None:
    """A participant declaring ``max_in_flight = 2`` never has more than two requests in hand,
    however many sagas run (each host sends at most ceil(2 / hosts) of them)."""
    us = runtimes(burst_definition(timeout=30.0), Narrow)
    saga_ids = [f"n-{i}" for i in range(40)]
    futures = [us.submit_future(saga_id, "burst", {}) for saga_id in saga_ids]
    assert {f.result(180).status for f in futures} == {"completed"}
    assert most_in_hand(tmp_path / "slow.db") <= 2
    assert timed_out(tmp_path / "sagas.db", saga_ids) == []


def test_a_queued_request_does_not_burn_its_timeout(
    runtimes: Callable[..., Understudy], tmp_path: Path
) -> None:
    """Requests that wait in the host for a slot are not timed out for the wait: 16 sagas
    against a participant taking one request at a time, 0.2 s each, need 3.2 s in all, more
    than twice the 1.5 s step timeout, yet none times out: each reply comes within 0.4 s of
    its request's send (one request per host in flight, two hosts at most), which leaves the
    timeout a margin of more than three times that."""
    us = runtimes(burst_definition(timeout=1.5, steps=1), Single, {"latency": 0.2})
    saga_ids = [f"q-{i}" for i in range(16)]
    futures = [us.submit_future(saga_id, "burst", {}) for saga_id in saga_ids]
    assert {f.result(180).status for f in futures} == {"completed"}
    assert timed_out(tmp_path / "sagas.db", saga_ids) == []
    # One per host: a share is rounded up, so two hosts may each have one out.
    assert most_in_hand(tmp_path / "slow.db") <= len(us.hosts().host_pids)


@pytest.mark.parametrize("limit", [0, -1, "3", True, 2.5])
def test_a_bad_max_in_flight_is_refused_when_the_class_is_made(limit: Any) -> None:
    with pytest.raises(DefinitionError, match="max_in_flight"):
        type("Bad", (Participant,), {"max_in_flight": limit})


def test_max_in_flight_none_and_positive_ints_are_accepted() -> None:
    assert type("Free", (Participant,), {"max_in_flight": None}).max_in_flight is None
    assert type("One", (Participant,), {"max_in_flight": 1}).max_in_flight == 1
    assert Participant.max_in_flight == DEFAULT_MAX_IN_FLIGHT == 64


# --- the window's bookkeeping, alone ----------------------------------------------------------


def _request(saga_id: str, step: int = 0, attempt: int = 1) -> StepRequest:
    return StepRequest(
        saga_id=saga_id,
        step=step,
        step_name=f"s{step}",
        kind="do",
        action="work",
        key=f"{saga_id}:{step}:do",
        forward_key=f"{saga_id}:{step}:do",
        payload={},
        results={},
        attempt=attempt,
        incarnation=1,
    )


def test_each_host_gets_its_share_rounded_up() -> None:
    assert [share_of(64, 1), share_of(64, 2), share_of(64, 3), share_of(2, 4)] == [64, 32, 22, 1]
    assert share_of(None, 2) is None


def _full_window(limit: int = 2) -> Pacing:
    pacing = Pacing()
    pacing.configure({"slow": limit, "free": None}, shards=1)
    window = pacing.windows["slow"]
    for i in range(limit):
        pacing.take(window, f"s-{i}", f"s-{i}:0:do", deadline=100.0)
    return pacing


def test_a_reply_under_the_key_frees_the_slot_and_wakes_the_queue() -> None:
    pacing = _full_window()
    window = pacing.windows["slow"]
    assert "free" not in pacing.windows  # no limit: no window, nothing counted
    assert not window.open()
    pacing.enqueue(window, Queued("slow", _request("w-1"), 1.0, 7))
    assert pacing.ready == {} and window.blocked()
    pacing.replied("s-0", "s-0:1:do")  # another key of that saga: not this request's reply
    assert len(window.used) == 2
    pacing.replied("s-0", "s-0:0:do")
    assert len(window.used) == 1 and pacing.take_ready() == [window]
    queued = pacing.next_waiting(window)
    assert queued is not None and queued.request.saga_id == "w-1" and queued.token == 7
    assert not pacing.is_waiting("w-1") and pacing.next_waiting(window) is None
    pacing.replied("s-0", "s-0:0:do")  # a duplicate reply frees nothing more
    assert len(window.used) == 1


def test_a_slot_frees_at_its_deadline_when_the_saga_moves_on_or_leaves() -> None:
    pacing = _full_window(3)
    window = pacing.windows["slow"]
    pacing.take(window, "s-2", "s-2:0:do", deadline=5.0)
    pacing.expire("s-0", now=50.0)  # its deadline (100) has not passed
    pacing.expire("s-2", now=5.0)
    assert set(window.used) == {"s-0", "s-1"}
    pacing.take(window, "s-0", "s-0:1:do", deadline=100.0)  # its next request: the same slot
    assert set(window.used) == {"s-0", "s-1"}
    pacing.forget("s-1")
    assert set(window.used) == {"s-0"} and set(pacing.holder) == {"s-0"}
    pacing.take(window, "s-9", "s-9:0:do", deadline=1.0)
    pacing.purge(window, now=2.0)
    assert set(window.used) == {"s-0"}


def test_a_waiting_request_is_dropped_with_its_saga_or_replaced_by_its_next() -> None:
    pacing = _full_window()
    window = pacing.windows["slow"]
    pacing.enqueue(window, Queued("slow", _request("a"), 1.0, 1))
    pacing.enqueue(window, Queued("slow", _request("b"), 1.0, 1))
    pacing.enqueue(window, Queued("slow", _request("a", attempt=2), 1.0, 2))
    pacing.enqueue(window, Queued("slow", _request("c"), 1.0, 1))
    pacing.forget("c")
    order = []
    while (queued := pacing.next_waiting(window)) is not None:
        order.append((queued.request.saga_id, queued.request.attempt))
    assert order == [("b", 1), ("a", 2)]  # first in, first out; the superseded and forgotten skip


def test_a_replaced_participant_starts_with_an_empty_window() -> None:
    pacing = _full_window()
    window = pacing.windows["slow"]
    pacing.enqueue(window, Queued("slow", _request("w"), 1.0, 1))
    pacing.reset("slow")
    assert window.used == {} and pacing.holder == {}
    assert pacing.take_ready() == [window]  # what waited goes to the new participant, in turn
    assert pacing.is_waiting("w")


def test_a_limit_lifted_or_raised_lets_what_waits_go() -> None:
    pacing = _full_window()
    window = pacing.windows["slow"]
    pacing.enqueue(window, Queued("slow", _request("w"), 1.0, 1))
    pacing.configure({"slow": 4}, shards=2)  # 2 per host: still full
    assert pacing.ready == {}
    pacing.configure({"slow": 6}, shards=2)
    assert pacing.take_ready() == [window]
    pacing.configure({"slow": None}, shards=2)
    assert window.open() is False and len(window.used) < window.share


@pytest.mark.multiproc
def test_a_participant_killed_while_requests_wait_gets_them_all(tmp_path: Path) -> None:
    """SIGKILL of a participant while most requests still wait for its window: its replacement
    starts with an empty window, gets the requests the dead one had in hand again, then the
    others in turn; every saga completes, each request applied once, none timed out (the step
    timeout is long: the restart itself may take seconds on a busy machine)."""
    import os
    import signal
    import sqlite3

    participant = ("slow", Narrow, {"database": str(tmp_path / "slow.db"), "latency": 0.05})
    saga_ids = [f"k-{i}" for i in range(40)]
    with Understudy.start(
        tmp_path / "sagas.db",
        [burst_definition(timeout=60.0, steps=1)],
        [participant],
        base="multiprocTCPBase",
    ) as us:
        futures = [us.submit_future(saga_id, "burst", {}) for saga_id in saga_ids]
        deadline = time.monotonic() + 60
        while most_in_hand(tmp_path / "slow.db") == 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # the participant has committed its first batch
        killed = us.hosts().participant_pids["slow"]
        os.kill(killed, signal.SIGKILL)
        # Within 45 s, though the work takes 2 s: the dead participant's slots were freed when
        # it was replaced, not left to run out at their 60 s deadlines (which would hold the
        # requests waiting behind them that long, with no timeout recorded to show for it).
        assert {f.result(45).status for f in futures} == {"completed"}
        assert us.hosts().participant_pids["slow"] not in (0, killed)
    assert timed_out(tmp_path / "sagas.db", saga_ids) == []
    with closing(sqlite3.connect(tmp_path / "slow.db")) as db:
        handled = [row[0] for row in db.execute("SELECT saga_id FROM handled")]
    # A request the dead participant had applied is replayed from its ledger, one it had not
    # committed is applied by the new one: once each either way.
    assert sorted(handled) == sorted(saga_ids)
    assert most_in_hand(tmp_path / "slow.db") <= 2
