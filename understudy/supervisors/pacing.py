"""Pacing: how many requests a saga host has out at each participant, and the queue of the rest.

A participant declares the most requests it takes in flight (``Participant.max_in_flight``, 64
by default; None for no limit). Each of the runtime's saga hosts, one per shard, sends it at
most its share, ``ceil(limit / shards)``, of requests that are sent and not answered yet; the
others wait in the host, first in first out, and go as slots free. A request that waits here
has not been sent, and its reply timeout has not started: the host arms the saga's reply timer
when it sends the request, not when the saga committed its intent. So a burst of starts, or a
recovery that resends thousands of outstanding requests at once, reaches a participant at the
pace the participant asked for, and no saga times out (and retries, or compensates) merely
because its request queued behind the others in the participant's mailbox.

Write-ahead (I3) is untouched: a request reaches a window only once its intent is committed,
and waiting here delays its send further, never brings it forward.

A slot is taken when a request leaves the host, and freed when

- a reply with the request's saga id and key arrives, stale or not (a request Thespian bounced
  as a PoisonMessage comes back as an error reply, which counts);
- the request's deadline passes: the saga's reply timeout, counted from the send. The same
  saga's next request (its retry, or a compensation) takes the slot over in any case: a saga
  waits on one request at a time, so its earlier one was answered or given up. A workflow
  waits on one request per step at a time: each of its steps holds a slot of its own (a
  *lane*, keyed by saga id and step), taken over by that step's next request;
- the saga leaves the host's memory (it finished, crashed, was fenced, the lease was lost);
- the participant is replaced (its address changes): its mailbox died with it, so its window
  starts empty.

Each slot carries its deadline, so no slot can leak: a window that is full while requests wait
is looked at again at its earliest deadline (:class:`WindowCheck`), whatever else happens.

This module sends nothing and sets no timer: the saga host (:mod:`understudy.supervisors.host`)
does, and asks it what may go. With the default limit and ordinary load a window never fills,
and a request costs a dict insertion when it is sent and a deletion when it is answered.
"""

from __future__ import annotations

from collections import deque
from typing import TypeAlias

import attrs

from understudy.messages import StepRequest

__all__ = ["Pacing", "Queued", "SendWindow", "WindowCheck", "share_of"]

#: Who holds a slot: a saga (its id), or one step of a workflow ((saga id, step)).
Slot: TypeAlias = str | tuple[str, int]


def lane(saga_id: str, key: str) -> tuple[str, int]:
    """The slot of a workflow's request under ``key`` (``saga:step:kind``): its step's lane,
    which its forward request and its compensation share."""
    return (saga_id, int(key.rsplit(":", 2)[1]))


def share_of(limit: int | None, shards: int) -> int | None:
    """One host's share of a participant's ``limit`` (None: no limit), rounded up so that
    every host may send at least one request."""
    if limit is None:
        return None
    return -(-limit // max(1, shards))


class Queued:
    """A request waiting for a slot, with the reply timer to arm when it goes: ``delay``
    seconds, under the saga's timer ``token`` (None: no timer to arm)."""

    __slots__ = ("cancelled", "delay", "participant", "request", "slot", "token")

    def __init__(
        self,
        participant: str,
        request: StepRequest,
        delay: float,
        token: int | None,
        lanes: bool = False,
    ) -> None:
        self.participant = participant
        self.request = request
        self.delay = delay
        self.token = token
        self.cancelled = False
        #: A saga's requests wait in one place (its id); a workflow's, one per step (``lanes``).
        self.slot: Slot = lane(request.saga_id, request.key) if lanes else request.saga_id


class SendWindow:
    """One participant's window in one saga host."""

    __slots__ = ("check_at", "name", "queue", "share", "used")

    def __init__(self, name: str, share: int) -> None:
        self.name = name
        self.share = share
        #: slot -> (idempotency key, deadline) of each request sent and not answered yet
        self.used: dict[Slot, tuple[str, float]] = {}
        self.queue: deque[Queued] = deque()
        self.check_at: float | None = None  # when a WindowCheck for it is due, if one is

    def open(self) -> bool:
        """Whether a request may go at once: a free slot, and nobody waiting ahead of it."""
        return not self.queue and len(self.used) < self.share

    def blocked(self) -> bool:
        """Requests wait and every slot is taken: only a freed slot lets them go."""
        return bool(self.queue) and len(self.used) >= self.share

    def earliest(self) -> float:
        """The earliest deadline of a slot taken (call only when one is)."""
        return min(deadline for _key, deadline in self.used.values())

    def __repr__(self) -> str:
        return (
            f"SendWindow({self.name!r}, share={self.share}, in flight={len(self.used)}, "
            f"waiting={len(self.queue)})"
        )


@attrs.frozen
class WindowCheck:
    """An entry of the host's timer heap: look at window ``name`` again at ``at``, the earliest
    deadline of its slots (ignored unless it is still the window's ``check_at``)."""

    name: str
    at: float


#: Shares above this are as good as no limit; a limit that went away keeps its window.
UNLIMITED = 1 << 62


class Pacing:
    """Every participant window of one saga host, and which saga holds which slot."""

    def __init__(self) -> None:
        self.windows: dict[str, SendWindow] = {}  # participant name -> window (limited only)
        self.holder: dict[Slot, SendWindow] = {}  # slot -> the window it is in
        self.waiting: dict[Slot, Queued] = {}  # slot -> its request waiting in a queue
        #: workflow id -> its lanes holding a slot or waiting for one (to free them together)
        self.lanes: dict[str, set[tuple[str, int]]] = {}
        #: Windows with a free slot and requests waiting: the host sends from them next.
        self.ready: dict[str, SendWindow] = {}

    def configure(self, limits: dict[str, int | None], shards: int) -> None:
        """Set each participant's share from ``limits`` (name -> max_in_flight, None or absent:
        no limit); a window whose share grew may send at once."""
        for name, limit in limits.items():
            share = share_of(limit, shards)
            window = self.windows.get(name)
            if share is None:
                if window is not None:
                    window.share = UNLIMITED  # what waits goes at once; nothing waits again
                    self._wake(window)
                continue
            if window is None:
                self.windows[name] = SendWindow(name, share)
            else:
                window.share = share
                self._wake(window)

    def take(
        self, window: SendWindow, saga_id: str, key: str, deadline: float, lanes: bool = False
    ) -> None:
        """A request of ``saga_id`` under ``key`` is being sent: it takes a slot until
        ``deadline`` (and frees the slot of the saga's previous request, if any; ``lanes``: of
        the workflow step's previous request)."""
        slot = self._slot(saga_id, key, lanes)
        previous = self.holder.get(slot)
        if previous is not None and previous is not window:
            self._free(previous, slot)
        window.used[slot] = (key, deadline)
        self.holder[slot] = window

    def replied(self, saga_id: str, key: str) -> None:
        """A reply under ``key`` arrived for ``saga_id`` (stale or not)."""
        slot: Slot = saga_id
        window = self.holder.get(slot)
        if window is None and saga_id in self.lanes:
            slot = lane(saga_id, key)
            window = self.holder.get(slot)
        if window is not None and window.used[slot][0] == key:
            self._free(window, slot)

    def expire(self, saga_id: str, now: float) -> None:
        """A timer of ``saga_id`` fired at ``now``: its requests' slots free where their
        deadline has passed."""
        for slot in self._slots(saga_id):
            window = self.holder.get(slot)
            if window is not None and window.used[slot][1] <= now:
                self._free(window, slot)

    def forget(self, saga_id: str) -> None:
        """``saga_id`` left the host's memory: free its slots, drop its waiting requests."""
        for slot in self._slots(saga_id):
            window = self.holder.get(slot)
            if window is not None:
                self._free(window, slot)
            queued = self.waiting.pop(slot, None)
            if queued is not None:
                queued.cancelled = True
        self.lanes.pop(saga_id, None)

    def purge(self, window: SendWindow, now: float) -> None:
        """Free every slot of ``window`` whose deadline has passed."""
        for slot in [s for s, (_key, deadline) in window.used.items() if deadline <= now]:
            self._free(window, slot)

    def reset(self, name: str) -> None:
        """Participant ``name`` was replaced: nothing is in flight at the new one. Requests that
        wait stay in order; they go to the new address."""
        window = self.windows.get(name)
        if window is None:
            return
        for slot in window.used:
            del self.holder[slot]
        window.used.clear()
        window.check_at = None
        self._wake(window)

    def enqueue(self, window: SendWindow, queued: Queued) -> None:
        """``queued`` waits for a slot of ``window``, behind those already waiting; it replaces
        any earlier waiting request of the same saga (of the same workflow step)."""
        slot = queued.slot
        if isinstance(slot, tuple):
            self.lanes.setdefault(slot[0], set()).add(slot)
        earlier = self.waiting.get(slot)
        if earlier is not None:
            earlier.cancelled = True
        self.waiting[slot] = queued
        window.queue.append(queued)
        self._wake(window)

    def is_waiting(self, saga_id: str, key: str | None = None) -> bool:
        """Whether a request of ``saga_id`` waits for a slot (with ``key``: of that request's
        workflow step, for a workflow)."""
        if saga_id in self.waiting:
            return True
        if key is not None:
            return lane(saga_id, key) in self.waiting
        return any(slot in self.waiting for slot in self.lanes.get(saga_id, ()))

    def next_waiting(self, window: SendWindow) -> Queued | None:
        """The first request of ``window`` still waiting (taken off its queue), or None."""
        queue = window.queue
        while queue:
            queued = queue.popleft()
            if queued.cancelled:
                continue
            if self.waiting.get(queued.slot) is queued:
                del self.waiting[queued.slot]
            return queued
        return None

    def take_ready(self) -> list[SendWindow]:
        """The windows that may send now (and forget that they may)."""
        ready = list(self.ready.values())
        self.ready.clear()
        return ready

    def clear(self) -> None:
        """Forget every slot and waiting request (the host lost its shard)."""
        for window in self.windows.values():
            window.used.clear()
            window.queue.clear()
            window.check_at = None
        self.holder.clear()
        self.waiting.clear()
        self.lanes.clear()
        self.ready.clear()

    def _slot(self, saga_id: str, key: str, lanes: bool) -> Slot:
        if not lanes:
            return saga_id
        slot = lane(saga_id, key)
        self.lanes.setdefault(saga_id, set()).add(slot)
        return slot

    def _slots(self, saga_id: str) -> list[Slot]:
        slots: list[Slot] = [saga_id]
        slots.extend(self.lanes.get(saga_id, ()))
        return slots

    def _free(self, window: SendWindow, slot: Slot) -> None:
        del window.used[slot]
        del self.holder[slot]
        if window.queue:
            self.ready[window.name] = window

    def _wake(self, window: SendWindow) -> None:
        if window.queue and len(window.used) < window.share:
            self.ready[window.name] = window
