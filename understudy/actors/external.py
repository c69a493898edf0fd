"""External handlers in flight: a participant's small thread pool, and how the actor learns that
a call has returned.

A Thespian actor handles one message at a time on one thread, and must not be sent messages (nor
have its methods called) from threads of its own: ``send`` from a foreign thread is unsafe on
every base. So the worker threads only run the handler and leave its outcome in a
:class:`concurrent.futures.Future`; the actor looks at its futures itself, on a
``wakeupAfter`` every :data:`POLL_INTERVAL` seconds, and only while a call is in flight (an idle
participant wakes up for nothing).

Why polling and not Thespian's ``ThespianWatch`` (the actor is woken when a file descriptor, say
a pipe the workers write to, becomes readable): the in-process base (``simpleSystemBase``) does
not support it, and it must be returned from every ``receiveMessage`` of the actor, including
those of subclasses and of mixins that intercept messages. A few milliseconds of added latency
on a call that takes tens or hundreds of them (it leaves the machine) costs nothing that matters.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import attrs

from understudy.actors.handlers import StepContext
from understudy.messages import StepRequest

#: Seconds between two looks at the futures while calls are in flight.
POLL_INTERVAL = 0.005
#: Worker threads per participant unless its ``external_workers`` option says otherwise.
DEFAULT_WORKERS = 8


@attrs.frozen
class PollCalls:
    """A participant's reminder to itself to collect the external calls that have returned."""


@attrs.frozen
class Launch:
    """An external handler to run once the ledger row saying it started has committed."""

    msg: StepRequest
    sender: Any
    method: str
    context: StepContext


class ExternalCalls:
    """The external calls of one participant: started on a pool of ``workers`` threads (created
    on the first call), collected by the actor with :meth:`finished`."""

    def __init__(self, workers: int, name: str) -> None:
        if workers < 1:
            raise ValueError(f"external_workers must be 1 or more, not {workers}")
        self._workers = workers
        self._name = name
        self._pool: ThreadPoolExecutor | None = None
        self._running: list[tuple[Launch, Future[Any]]] = []
        #: Forward keys of the steps with a call started and its outcome not yet committed:
        #: another request for the same step (a retry, its compensation) waits for it.
        self.busy: set[str] = set()

    def submit(self, launch: Launch, call: Callable[[str, StepContext], Any]) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix=self._name)
        future = self._pool.submit(call, launch.method, launch.context)
        self._running.append((launch, future))

    @property
    def in_flight(self) -> bool:
        return bool(self._running)

    def finished(self) -> list[tuple[Launch, Future[Any]]]:
        """The calls that have returned (or raised) since the last look, in the order started."""
        done: list[tuple[Launch, Future[Any]]] = []
        running: list[tuple[Launch, Future[Any]]] = []
        for call in self._running:  # one look per future: one may finish during this loop
            (done if call[1].done() else running).append(call)
        self._running = running
        return done

    def close(self) -> None:
        """Stop taking calls. Calls still running are not waited for: their rows stay
        ``started``, which a retry of the same key resolves (it runs the handler again)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._running = []
