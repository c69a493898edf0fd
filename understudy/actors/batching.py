"""When an actor that group-commits (a saga host, a participant) commits what it gathered.

On the in-process base every message already queued is delivered before the actor's reminder
to itself, so a reminder sent at once gathers everything that arrived together. On the
multi-process bases a reminder to oneself is delivered before what is still waiting on the
sockets, and batches stayed at one to three sagas: each commit and each message then served
one saga, and at 50 sagas in flight the processes spent their CPU moving messages. There, when
a saga host's previous flush carried more than one input (sagas are running side by side), the
reminder waits one window (``FLUSH_WINDOW`` in :mod:`understudy.supervisors.starting`, 10 ms)
so that what arrives meanwhile joins the batch; after a flush of one input the next flushes at
once, so a lone saga pays no delay. Measured on two cores at 50 sagas in flight on the TCP base: 102
sagas/s with no window, 175 with 5 ms, 300 with 10 ms, 250 with 20 ms.

Participants flush at once (no window): their requests already come batched, one message per
saga host flush, and a window of their own cost about 10% at 50 in flight."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from understudy.actors.plumbing import Batch, Flush


class GroupCommit:
    """Mixin for Thespian actors that gather work and commit it with one :class:`Flush`."""

    flush_window: float = 0.0  # seconds; 0 on the in-process base
    flush_scheduled: bool = False
    _last_size: int = 0

    def schedule_flush(self) -> None:
        if self.flush_scheduled:
            return
        self.flush_scheduled = True
        window = self.flush_window
        if window and self._last_size > 1:
            self.wakeupAfter(timedelta(seconds=window), Flush())  # type: ignore[attr-defined]
        else:
            self.send(self.myAddress, Flush())  # type: ignore[attr-defined]

    def flush_started(self, size: int) -> None:
        """Call first thing in the flush of ``size`` inputs: the next input schedules a new
        one."""
        self.flush_scheduled = False
        self._last_size = size


class Outbox:
    """Messages gathered for several destinations, sent as one message per destination (a
    :class:`Batch` when there are several): on a multi-process base each message is a socket
    write and a wake-up of another process."""

    def __init__(self) -> None:
        self._queued: list[tuple[Any, list[Any]]] = []

    def add(self, address: Any, message: Any) -> None:
        for destination, messages in self._queued:
            # Addresses compare equal but do not hash; most are the very same object, and
            # Thespian's equality is slow.
            if destination is address or destination == address:
                messages.append(message)
                return
        self._queued.append((address, [message]))

    def send_all(self, send: Callable[[Any, Any], None]) -> None:
        """Empty the outbox through ``send(address, message)`` (an actor's ``send``)."""
        queued, self._queued = self._queued, []
        for address, messages in queued:
            send(address, messages[0] if len(messages) == 1 else Batch(tuple(messages)))
