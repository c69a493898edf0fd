"""A runtime's subscription to lifecycle events, for plain and asyncio code.

:meth:`understudy.Understudy.subscribe` returns a :class:`Subscription`: iterate it (``for event
in sub``, blocking), ``async for event in sub`` in asyncio code, or ``sub.get(timeout)``. The
runtime's bridge thread delivers the :class:`~understudy.lifecycle.SagaEvent` messages into it;
readers in any thread or event loop take them out. It ends (iteration stops) when it is closed
or the runtime shuts down. A reader that falls more than ``buffer`` events behind loses the
oldest (counted in :attr:`Subscription.dropped`): events are notifications, and the saga's
timeline in the store stays the record.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from understudy.lifecycle import SagaEvent

__all__ = ["Subscription"]


class Subscription:
    """Lifecycle events as they are committed (see the module's doc)."""

    def __init__(
        self, subscription_id: str, buffer: int, on_close: Callable[[], None] | None = None
    ) -> None:
        if buffer < 1:
            raise ValueError(f"a subscription's buffer holds at least 1 event, got {buffer}")
        self.id = subscription_id
        self.buffer = buffer
        #: Events lost because the reader fell more than ``buffer`` events behind.
        self.dropped = 0
        self._events: collections.deque[SagaEvent] = collections.deque()
        self._ready = threading.Condition()
        self._ended: str | None = None
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._on_close = on_close

    # --- the bridge's side --------------------------------------------------------------------

    def deliver(self, event: SagaEvent) -> None:
        with self._ready:
            if self._ended is not None:
                return
            if len(self._events) >= self.buffer:
                self._events.popleft()
                self.dropped += 1
            self._events.append(event)
            self._wake()

    def end(self, reason: str) -> None:
        """No more events: readers get what is left, then iteration stops."""
        with self._ready:
            if self._ended is None:
                self._ended = reason
            self._wake()

    def _wake(self) -> None:
        self._ready.notify_all()
        waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits there
                loop.call_soon_threadsafe(_resolve, future)

    # --- readers ------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._ended is not None

    def get(self, timeout: float | None = None) -> SagaEvent | None:
        """The next event, waiting up to ``timeout`` seconds (None: as long as it takes); None
        when none came in time or the subscription has ended and nothing is left."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._ready:
            while not self._events:
                if self._ended is not None:
                    return None
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._ready.wait(left)
            return self._events.popleft()

    def __iter__(self) -> Iterator[SagaEvent]:
        while True:
            event = self.get()
            if event is None:
                return
            yield event

    def __aiter__(self) -> AsyncIterator[SagaEvent]:
        return self._events_async()

    async def _events_async(self) -> AsyncIterator[SagaEvent]:
        loop = asyncio.get_running_loop()
        while True:
            with self._ready:
                if self._events:
                    event: SagaEvent | None = self._events.popleft()
                elif self._ended is not None:
                    return
                else:
                    event = None
                    future: asyncio.Future[None] = loop.create_future()
                    self._waiters.append((loop, future))
            if event is not None:
                yield event
            else:
                await future

    def close(self) -> None:
        """End the subscription: the coordinator sends no more events for it."""
        if self._ended is None and self._on_close is not None:
            self._on_close()
        self.end("closed")

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "ended" if self._ended is not None else "open"
        return f"<Subscription {self.id} {state}, {len(self._events)} waiting>"


def _resolve(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_result(None)
