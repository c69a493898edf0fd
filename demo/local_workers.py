"""Worker processes that place orders, and the parent that hands them out, kills and restarts them.

Each worker holds one connection to the shop's database and places one order at a time, as the
parent tells it over a pipe of its own. A worker that dies (SIGKILLed by the parent, or by itself
at a crash point) is replaced by a new process; the order it was placing, whose outcome nobody
learned, goes back to the front of the queue and the next free worker places it again. The
order's transaction makes that safe: a transaction the kill interrupted left nothing, and one
that committed before the kill left the order's row, by which the retry recognises it.

A pipe per worker, not a shared queue: a process SIGKILLed while it holds a
``multiprocessing.Queue``'s lock would leave the lock held for everyone. A dead worker's pipe is
thrown away with it.

Faults (:class:`Fault`) come with an attempt: ``self`` (the worker SIGKILLs itself at a point of
:data:`demo.local_order.POINTS`; at ``in_commit``, from a thread, ``delay`` seconds after the
last step, so that the kill lands before, during or just after the COMMIT), ``hold`` (the worker
stops at the point and tells the parent, which SIGKILLs it from outside, as the demo kills) and
``timer`` (the parent SIGKILLs the worker ``delay`` seconds after it sent the order, wherever
it is then).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

import attrs

from demo.local_db import Database
from demo.local_order import ALREADY, PLACED, REFUSED, Hook, place
from demo.workload import Order, make_orders

SELF, HOLD, TIMER = "self", "hold", "timer"
#: The attempts an order gets before the run gives up on it (an error that is not a kill).
MAX_ATTEMPTS = 6
#: Worker deaths the parent did not cause before it stops the run: something is broken.
MAX_UNEXPECTED = 20
STOP_TIMEOUT = 10.0
ERROR = "error"


@attrs.frozen
class Fault:
    """A kill planned for one attempt at an order."""

    point: str  # a crash point of demo.local_order.POINTS, or "anywhere" (timer)
    how: str = SELF
    delay: float = 0.0  # seconds: in_commit after the last step; timer after the order was sent


#: ``faults(index, attempt, kills)`` -> the fault for this attempt at order ``index``; ``kills``
#: counts the kills done and those planned for the attempts under way.
FaultPlan = Callable[[int, int, int], Fault | None]


def no_faults(index: int, attempt: int, kills: int) -> Fault | None:
    return None


@attrs.define
class PoolStats:
    """What the parent saw: not evidence for the checks, which read the database only."""

    outcomes: dict[int, tuple[str, str]] = attrs.field(factory=dict)  # index -> (kind, reason)
    kills: Counter[str] = attrs.field(factory=Counter)  # by crash point
    killed: dict[int, list[str]] = attrs.field(factory=dict)  # index -> points it was killed at
    retry_outcomes: Counter[str] = attrs.field(factory=Counter)  # outcome of a killed order
    restarts: int = 0
    unexpected: list[str] = attrs.field(factory=list)  # deaths nobody planned
    errors: list[str] = attrs.field(factory=list)
    gave_up: list[int] = attrs.field(factory=list)
    elapsed: float = 0.0

    @property
    def total_kills(self) -> int:
        return sum(self.kills.values())


# --- the worker process -----------------------------------------------------------------------


def worker_main(conn: Connection, database: Database, count: int, seed: int, variant: str) -> None:
    """A worker's life: connect, then place the orders the parent sends until it sends None."""
    orders = make_orders(count, seed)  # the same pure function of (count, seed) as the parent's
    db = database.connect()
    try:
        while True:
            message = conn.recv()
            if message is None:
                return
            index, fault = message
            order = orders[index]
            armed: list[threading.Thread] = []
            try:
                outcome = place(db, order, _hook(conn, index, fault, armed), variant)
            except Exception:
                conn.send(("done", index, ERROR, traceback.format_exc(limit=3)))
                continue
            for killer in armed:
                killer.join()  # an in_commit kill lands before the outcome can be reported
            conn.send(("done", index, outcome.kind, outcome.reason))
    finally:
        db.close()


def _hook(conn: Connection, index: int, fault: Fault | None, armed: list[threading.Thread]) -> Hook:
    def hook(point: str) -> None:
        if fault is None or fault.how == TIMER:
            return
        if fault.point == "in_commit" and point == "after_payment":
            # The COMMIT runs in the driver with the GIL released, so this thread's kill can
            # land in the middle of it.
            killer = threading.Thread(target=_kill_self, args=(fault.delay,), daemon=True)
            killer.start()
            armed.append(killer)
        elif fault.point == point:
            if fault.how == HOLD:
                conn.send(("holding", index, point))
                conn.recv()  # the parent's SIGKILL comes while this waits
            else:
                _kill_self(0.0)

    return hook


def _kill_self(delay: float) -> None:
    if delay:
        time.sleep(delay)
    os.kill(os.getpid(), signal.SIGKILL)


# --- the parent -------------------------------------------------------------------------------


def _context() -> Any:
    # fork starts a worker in a few milliseconds, which a campaign with hundreds of kills needs.
    # It is safe only from a process with one thread (a forked child gets no copy of the others,
    # and whatever lock they held stays held); the parent holds no connection when it forks.
    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


@attrs.define
class _Slot:
    number: int
    process: BaseProcess
    conn: Connection
    attempt: tuple[int, Fault | None] | None = None  # the order it is placing
    deadline: float | None = None  # when the parent kills it (a timer fault)
    killed_at: str | None = None  # the point the parent killed it at
    dead: bool = False  # it died without the parent's kill, and its sentinel is not read yet


class Pool:
    """``workers`` processes placing ``count`` orders of the workload ``seed``, one attempt at a
    time, each attempt with the fault ``faults`` plans for it."""

    def __init__(
        self,
        database: Database,
        count: int,
        seed: int,
        workers: int,
        variant: str = "local",
        faults: FaultPlan = no_faults,
        say: Callable[[str], None] | None = None,
        planned_kills: int | None = None,
    ) -> None:
        self.database, self.count, self.seed, self.variant = database, count, seed, variant
        self.faults = faults
        self.say, self.planned_kills = say, planned_kills
        self.orders: list[Order] = make_orders(count, seed)
        self.context = _context()
        self.stats = PoolStats()
        self.queue: deque[int] = deque(range(count))
        self.attempts: Counter[int] = Counter()
        self.slots = [self._start(number) for number in range(1, workers + 1)]

    def _start(self, number: int) -> _Slot:
        parent, child = self.context.Pipe()
        process = self.context.Process(
            target=worker_main,
            args=(child, self.database, self.count, self.seed, self.variant),
            name=f"order-worker-{number}",
            daemon=True,
        )
        process.start()
        child.close()  # the worker's end: only the worker may hold it, so its death shows as EOF
        return _Slot(number, process, parent)

    def run(self, progress: Callable[[PoolStats, int], None] | None = None) -> PoolStats:
        """Place every order (an order killed mid-way is placed again), then stop the workers."""
        started = time.monotonic()
        next_progress = started
        try:
            while self.queue or any(slot.attempt for slot in self.slots):
                self._dispatch()
                now = time.monotonic()
                deadlines = [s.deadline for s in self.slots if s.deadline is not None]
                timeout = max(0.0, min([*deadlines, now + 0.25]) - now)
                waiting: list[Any] = [s.conn for s in self.slots]
                waiting += [s.process.sentinel for s in self.slots]
                ready = set(wait(waiting, timeout))
                now = time.monotonic()
                for slot in list(self.slots):
                    if slot.deadline is not None and now >= slot.deadline:
                        slot.deadline = None
                        self._kill(slot, "anywhere")
                    if slot.conn in ready or slot.process.sentinel in ready:
                        self._serve(slot)
                if progress is not None and now >= next_progress:
                    next_progress = now + 0.5
                    progress(self.stats, len(self.stats.outcomes))
                if len(self.stats.unexpected) > MAX_UNEXPECTED:
                    raise RuntimeError(
                        f"{len(self.stats.unexpected)} workers died without being killed; the "
                        f"last: {self.stats.unexpected[-1]}"
                    )
        finally:
            self._stop()
        self.stats.elapsed = time.monotonic() - started
        return self.stats

    def _dispatch(self) -> None:
        for slot in self.slots:
            # A worker killed just after it reported its order is idle but dying: its
            # replacement takes the next order.
            busy = slot.attempt is not None or slot.killed_at is not None or slot.dead
            if busy or not self.queue:
                continue
            index = self.queue.popleft()
            self.attempts[index] += 1
            pending = sum(1 for s in self.slots if s.attempt is not None and s.attempt[1])
            fault = self.faults(index, self.attempts[index], self.stats.total_kills + pending)
            try:
                slot.conn.send((index, fault))
            except OSError:  # it died unseen: the order was never sent, and is not an attempt
                self.attempts[index] -= 1
                self.queue.appendleft(index)
                slot.dead = True
                continue
            slot.attempt = (index, fault)
            if fault is not None and fault.how == TIMER:
                slot.deadline = time.monotonic() + fault.delay

    def _serve(self, slot: _Slot) -> None:
        """Read what the worker said; replace it if it died."""
        try:
            while slot.conn.poll():
                self._handle(slot, slot.conn.recv())
        except (EOFError, OSError):
            pass  # it died: its sentinel says so too
        if slot.process.is_alive():
            return
        slot.process.join()
        self._died(slot)

    def _handle(self, slot: _Slot, message: tuple[Any, ...]) -> None:
        if message[0] == "holding":
            _, index, point = message
            self._kill(slot, point)
            return
        _, index, kind, reason = message
        slot.attempt, slot.deadline = None, None
        if kind == ERROR:
            self.stats.errors.append(f"{self.orders[index].order_id}: {reason}")
            self._again(index)
            return
        self.stats.outcomes[index] = (kind, reason)
        if index in self.stats.killed:
            self.stats.retry_outcomes[kind] += 1
            if self.say is not None:
                self.say(
                    f"  {self.orders[index].order_id} retried by worker {slot.number} "
                    f"(pid {slot.process.pid}): {_retold(kind, reason)}"
                )

    def _kill(self, slot: _Slot, point: str) -> None:
        if slot.attempt is None or slot.killed_at is not None:
            return  # it finished the order before its timer ran out: nothing to interrupt
        slot.killed_at = point
        assert slot.process.pid is not None
        os.kill(slot.process.pid, signal.SIGKILL)
        if self.say is not None:
            index = slot.attempt[0]
            of = f"/{self.planned_kills}" if self.planned_kills is not None else ""
            self.say(
                f"kill {self.stats.total_kills + 1}{of}: SIGKILL worker {slot.number} (pid "
                f"{slot.process.pid}) placing {self.orders[index].order_id}, {_where(point)}"
            )

    def _died(self, slot: _Slot) -> None:
        exitcode = slot.process.exitcode
        planned = slot.killed_at
        if planned is None and slot.attempt is not None and slot.attempt[1] is not None:
            fault = slot.attempt[1]
            if fault.how == SELF and exitcode == -signal.SIGKILL:
                planned = fault.point
        if planned is None:
            self.stats.unexpected.append(f"worker {slot.number} exited with {exitcode}")
        else:
            self.stats.kills[planned] += 1
        if slot.attempt is not None:
            index = slot.attempt[0]
            self.stats.killed.setdefault(index, []).append(planned or f"exit {exitcode}")
            self._again(index)
        slot.conn.close()
        replacement = self._start(slot.number)
        self.slots[self.slots.index(slot)] = replacement
        self.stats.restarts += 1

    def _again(self, index: int) -> None:
        """Put an order whose outcome is unknown back at the front: the next free worker
        places it again."""
        if self.attempts[index] >= MAX_ATTEMPTS:
            self.stats.gave_up.append(index)
            return
        self.queue.appendleft(index)

    def _stop(self) -> None:
        for slot in self.slots:
            with contextlib.suppress(OSError):  # a worker that died just now
                slot.conn.send(None)
        deadline = time.monotonic() + STOP_TIMEOUT
        for slot in self.slots:
            slot.process.join(max(0.0, deadline - time.monotonic()))
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join()
            slot.conn.close()


def _where(point: str) -> str:
    return {
        "begun": "inside its transaction, before any write",
        "after_order": "inside its transaction, after step 'order'",
        "after_stock": "inside its transaction, after step 'stock'",
        "after_payment": "after its last step, before the COMMIT",
        "in_commit": "around its COMMIT",
        "after_commit": "after its COMMIT, before it could report it",
        "before_refusal": "after its refused transaction rolled back, before the refusal "
        "was recorded",
    }.get(point, "at a random moment")


def _retold(kind: str, reason: str) -> str:
    if kind == ALREADY:
        return "already placed (its commit had landed before the kill; the retry found its row)"
    if kind == PLACED:
        return "placed whole (the killed attempt had left nothing)"
    if kind == REFUSED:
        return f"refused again: {reason} (the killed attempt had left nothing)"
    return kind
