"""The bridge: the one thread of an embedded runtime that drives its actor system handle.

Application code reaches the actor system through ONE bridge thread that owns the handle. A
Thespian handle shared by several threads loses replies, and the in-process base runs every
actor in whichever thread calls it, so exactly one thread may drive it. Callers put a command
on a queue and get a ``concurrent.futures.Future``; synchronous calls wait on it, asyncio calls
await it through ``asyncio.wrap_future``. Commands that arrive while the bridge is busy go to
the coordinator as one :class:`Batch`, so concurrent starts share commits.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from typing import Any

from understudy.actors.plumbing import Batch
from understudy.errors import ActorSystemError
from understudy.messages import (
    ParticipantReady,
    Pong,
    SagaAccepted,
    SagaFinished,
    StartRejected,
)
from understudy.supervisors.protocol import CoordinatorReady, HostsInfo

__all__ = ["Bridge"]


class Bridge(threading.Thread):
    """The one thread that talks to the actor system (see the module docstring)."""

    def __init__(self, asys: Any, coordinator: Any) -> None:
        super().__init__(name="understudy-bridge", daemon=True)
        self.asys = asys
        self.coordinator = coordinator
        self.commands: queue.Queue[tuple[Any, Any, concurrent.futures.Future[Any]] | None] = (
            queue.Queue()
        )
        self.waiting: dict[Any, list[concurrent.futures.Future[Any]]] = {}
        self.stopped = threading.Event()

    def submit(self, message: Any, key: Any) -> concurrent.futures.Future[Any]:
        """Send ``message`` to the coordinator; the future resolves with the reply for ``key``."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if self.stopped.is_set():
            future.set_exception(ActorSystemError("understudy has been shut down"))
            return future
        self.commands.put((message, key, future))
        return future

    def run(self) -> None:
        try:
            while True:
                batch = self._drain(block=not self.waiting)
                if batch is None:
                    return
                if batch:
                    messages = tuple(message for message, _key, _future in batch)
                    for _message, key, future in batch:
                        self.waiting.setdefault(key, []).append(future)
                    # Always a Batch, even of one: it also tells the coordinator that this
                    # client takes its replies in batches (see _resolve).
                    self.asys.tell(self.coordinator, Batch(messages))
                self._listen()
        finally:
            self.stopped.set()
            for futures in self.waiting.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(ActorSystemError("understudy has been shut down"))

    def _drain(self, block: bool) -> list[Any] | None:
        items: list[Any] = []
        try:
            # Idle: block a little for the next command. Busy: only take what is there, and
            # keep listening (on the in-process base, timers fire only while we listen).
            first = self.commands.get(timeout=0.02) if block else self.commands.get_nowait()
        except queue.Empty:
            return items
        if first is None:
            return None
        items.append(first)
        while True:
            try:
                item = self.commands.get_nowait()
            except queue.Empty:
                return items
            if item is None:
                self.commands.put(None)
                return items
            items.append(item)

    def _listen(self) -> None:
        # A zero timeout would make the in-process base do nothing at all (it checks the
        # deadline before running anything); a short one runs what is queued and fires due
        # timers, then hands back so new commands are picked up.
        while True:
            reply = self.asys.listen(0.002)
            if reply is None:
                return
            self._resolve(reply)

    def _resolve(self, reply: Any) -> None:
        if isinstance(reply, Batch):
            for message in reply.messages:
                self._resolve(message)
            return
        if isinstance(reply, (SagaFinished, SagaAccepted, StartRejected)):
            key: Any = ("request", reply.request_id)
        elif isinstance(reply, ParticipantReady):
            key = ("participant", reply.name)
        elif isinstance(reply, HostsInfo):
            key = ("hosts",)
        elif isinstance(reply, Pong):
            key = ("pong", reply.token)
        elif isinstance(reply, CoordinatorReady):
            key = ("ready",)
        else:
            return
        futures = self.waiting.get(key)
        if not futures:
            return
        future = futures.pop(0)
        if not futures:
            del self.waiting[key]
        if not future.done():
            future.set_result(reply)

    def stop(self) -> None:
        self.commands.put(None)
