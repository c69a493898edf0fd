"""The bridge: the one thread of an embedded runtime that drives its actor system handle.

Application code reaches the actor system through ONE bridge thread that owns the handle. A
Thespian handle shared by several threads loses replies, and the in-process base runs every
actor in whichever thread calls it, so exactly one thread may drive it. Callers put a command
on a queue and get a ``concurrent.futures.Future``; synchronous calls wait on it, asyncio calls
await it through ``asyncio.wrap_future``. Commands that arrive while the bridge is busy go to
the coordinator as one :class:`Batch`, so concurrent starts share commits.

No caller is left waiting forever. Every future the bridge accepts ends, with the reply or with
an :class:`~understudy.errors.ActorSystemError`:

- Once the runtime stops (its ``Stop`` is submitted, or :meth:`Bridge.stop` is called), new
  commands are refused at once, and those still queued or waiting when the thread ends fail
  with "understudy has been shut down". Accepting a command and closing take one lock, so a
  command racing with the stop is either accepted before it (and ended by it) or refused.
- On a multi-process base the coordinator is a process of its own, and Thespian tells this
  handle nothing when it dies: a message sent to its address goes nowhere (at most to the
  admin's dead letters, without an error here), and the replies callers wait for never come.
  The bridge learns the coordinator's process from a ``Ping`` when it starts, and every
  :data:`WATCH_INTERVAL` seconds asks the operating system whether that process (pid and
  start time) still runs. Only the OS's answer counts, never a missed deadline: a coordinator
  that is merely slow (a busy machine, a long commit) is never declared dead. Once it is gone,
  every waiting caller and every later command gets an error that says so and what to do
  (shut down and start again: unfinished sagas resume). The processes it forked (saga hosts,
  participants) stop themselves once they see it gone; the bridge thread ends only once they
  have (waiting at most :data:`ORPHANS_PATIENCE` seconds), so that a shutdown, which waits for
  the thread, leaves no process behind, and a start right after it finds the store's shards
  free rather than held by a host still winding down. In-process, the coordinator runs in
  this very thread and cannot die on its own; nothing is watched.
- A message the coordinator failed on twice comes back as Thespian's ``PoisonMessage``; the
  callers of the commands in it get an error instead of waiting for replies that never come.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import queue
import threading
import time
from typing import Any

from understudy.actors.plumbing import Batch, Stop
from understudy.actors.system import PoisonMessage
from understudy.actors.watch import ProcessIdentity, is_running, process_identity
from understudy.errors import ActorSystemError, CoordinatorGone
from understudy.lifecycle import SagaEvent, Subscribe, Subscribed
from understudy.messages import (
    AddParticipant,
    ParticipantReady,
    Ping,
    Pong,
    SagaAccepted,
    SagaFinished,
    StartRejected,
    StartSaga,
)
from understudy.supervisors.protocol import CoordinatorReady, HostsInfo, QueryHosts

__all__ = ["ORPHANS_PATIENCE", "WATCH_INTERVAL", "Bridge"]

log = logging.getLogger("understudy.bridge")

#: Seconds between the bridge's checks that the coordinator's process still runs (multi-process
#: bases only): a check is one ``kill(pid, 0)`` and one read of ``/proc/<pid>/stat``.
WATCH_INTERVAL = 0.5

#: Seconds the bridge thread waits, once the coordinator is gone, for the processes it had
#: forked (saga hosts, participants) to stop themselves; they check it every watch interval.
ORPHANS_PATIENCE = 20.0

#: Seconds between the bridge's sweeps of the futures whose callers gave up waiting.
SWEEP_INTERVAL = 1.0

#: Why a command fails once the runtime stops.
SHUT_DOWN = "understudy has been shut down"


_GONE = "understudy's coordinator (pid "


def coordinator_gone(pid: int) -> str:
    """Why a command fails once the coordinator's process has exited (CoordinatorGone)."""
    return (
        f"{_GONE}{pid}) has exited, so this runtime can no longer start "
        "sagas or report their ends: shut it down (Understudy.shutdown) and start understudy "
        "again on the same store, where every unfinished saga resumes"
    )


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
        # Set once the thread has ended and failed everything it held.
        self.stopped = threading.Event()
        # Taken to accept a command and to close: once ``_refusal`` (why commands fail) is set,
        # nothing more is queued, so what the queue holds when the thread ends is all it fails.
        self._lock = threading.Lock()
        self._refusal: str | None = None
        # The coordinator's process, once its Pong told its pid (None in-process: not watched),
        # and its child processes as last seen, by pid.
        self._watched: ProcessIdentity | None = None
        self._children: dict[int, ProcessIdentity] = {}
        self._next_check = 0.0
        self._next_sweep = 0.0
        self._token = f"bridge-{os.getpid()}-{id(self):x}"
        #: Lifecycle subscriptions of this runtime, by id: the events the coordinator sends
        #: here are delivered into them (see understudy.subscription).
        self.subscriptions: dict[str, Any] = {}

    def submit(self, message: Any, key: Any) -> concurrent.futures.Future[Any]:
        """Send ``message`` to the coordinator; the future resolves with the reply for ``key``,
        or fails with :class:`ActorSystemError` when no reply can come (the runtime stopped,
        the coordinator is gone)."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            refusal = self._refusal
            if refusal is None:
                self.commands.put((message, key, future))
                if type(message) is Stop:
                    # The runtime is stopping: hosts let go of the store, nothing new can run.
                    self._refusal = SHUT_DOWN
                return future
        future.set_exception(_error(refusal))
        return future

    def stop(self) -> None:
        """End the thread: commands queued before this are sent, then everything still
        waiting fails; commands submitted from now on are refused at once."""
        with self._lock:
            self._refusal = SHUT_DOWN
            self.commands.put(None)  # the last item ever queued

    def run(self) -> None:
        reason = SHUT_DOWN
        try:
            reason = self._serve()
        except BaseException as exc:
            reason = (
                f"understudy's bridge to its actor system failed ({type(exc).__name__}: {exc}); "
                "shut understudy down and start it again: unfinished sagas resume on the next "
                "start"
            )
            raise
        finally:
            self._close(reason)
            if self._children and self._watched is not None and not is_running(self._watched):
                self._await_orphans()
            self.stopped.set()

    def _serve(self) -> str:
        """Run until stopped or the coordinator is gone; returns why what is left fails."""
        try:
            # Learn the coordinator's pid for the watch (see the module docstring). A Batch, as
            # every command: it also tells the coordinator that this client takes its replies
            # in batches (see _resolve).
            self.asys.tell(self.coordinator, Batch((Ping(self._token),)))
        except Exception as exc:
            log.warning("could not ask understudy's coordinator for its pid: %s", exc)
        while True:
            batch = self._drain(block=not self.waiting)
            if batch:
                self._send(batch)
            elif batch is None:
                return SHUT_DOWN
            self._listen()
            if self.waiting and time.monotonic() >= self._next_sweep:
                self._sweep()
            if self._watched is not None and time.monotonic() >= self._next_check:
                gone = self._coordinator_gone()
                if gone is not None:
                    return gone

    def _send(self, batch: list[Any]) -> None:
        messages = tuple(message for message, _key, _future in batch)
        try:
            self.asys.tell(self.coordinator, Batch(messages))
        except Exception as exc:
            # On a multi-process base a send to a dead coordinator is mostly dropped silently,
            # but it may fail: these callers hear now, and the watch checks at once.
            reason = f"could not send to understudy's coordinator ({type(exc).__name__}: {exc})"
            for _message, _key, future in batch:
                _fail(future, reason)
            self._next_check = 0.0
            return
        waiting = self.waiting
        for _message, key, future in batch:
            if key is None:  # told, no reply expected
                future.set_result(None)
                continue
            futures = waiting.get(key)
            if futures is None:
                waiting[key] = [future]
            else:
                futures.append(future)

    def _sweep(self) -> None:
        """Let go of the futures whose callers gave up (cancelled on their timeout): their
        replies may never come, and while anything waits the bridge listens without pause."""
        self._next_sweep = time.monotonic() + SWEEP_INTERVAL
        for key in list(self.waiting):
            futures = [future for future in self.waiting[key] if not future.cancelled()]
            if futures:
                self.waiting[key] = futures
            else:
                del self.waiting[key]

    def _coordinator_gone(self) -> str | None:
        """Why commands fail once the watched coordinator process has exited; None while it
        runs, however slow it is."""
        assert self._watched is not None
        self._next_check = time.monotonic() + WATCH_INTERVAL
        if is_running(self._watched):
            pids = _children_of(self._watched[0])
            if pids != self._children.keys():
                known = self._children
                self._children = {pid: known.get(pid) or process_identity(pid) for pid in pids}
            return None
        self._listen()  # replies it sent before it died are here already: hand them over
        reason = coordinator_gone(self._watched[0])
        log.error("%s", reason)
        return reason

    def _close(self, reason: str) -> None:
        """Fail every future still held: waiting for a reply, or queued and never sent."""
        with self._lock:
            if self._refusal is None:
                self._refusal = reason
            # Nothing is queued after this: submit sees the refusal under the same lock.
        for futures in self.waiting.values():
            for future in futures:
                _fail(future, reason)
        self.waiting.clear()
        for subscription in list(self.subscriptions.values()):
            subscription.end(reason)
        while True:
            try:
                item = self.commands.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                _fail(item[2], reason)

    def _await_orphans(self) -> None:
        """Wait until the dead coordinator's children (saga hosts, participants) have stopped
        themselves: until then a host holds its shard, and a new start would be refused."""
        deadline = time.monotonic() + ORPHANS_PATIENCE
        left = list(self._children.values())
        while True:
            left = [identity for identity in left if is_running(identity)]
            if not left:
                return
            if time.monotonic() >= deadline:
                log.warning(
                    "processes of understudy's dead coordinator still run after %s s (pids %s)",
                    ORPHANS_PATIENCE,
                    ", ".join(str(pid) for pid, _started in left),
                )
                return
            time.sleep(0.05)

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
                self.commands.put(None)  # stop after sending these
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
        if isinstance(reply, SagaEvent):
            subscription = self.subscriptions.get(reply.subscription_id)
            if subscription is not None:
                subscription.deliver(reply)
            return
        if isinstance(reply, (SagaFinished, SagaAccepted, StartRejected)):
            key: Any = ("request", reply.request_id)
        elif isinstance(reply, ParticipantReady):
            key = ("participant", reply.name)
        elif isinstance(reply, HostsInfo):
            key = ("hosts",)
        elif isinstance(reply, Pong):
            if reply.token == self._token:
                self._watch(reply.pid)
                return
            key = ("pong", reply.token)
        elif isinstance(reply, CoordinatorReady):
            key = ("ready",)
        elif isinstance(reply, Subscribed):
            key = ("subscribed", reply.subscription_id)
        elif isinstance(reply, PoisonMessage):
            self._poisoned(reply)
            return
        else:
            return
        future = self._take(key)
        if future is not None:
            # Not contextlib.suppress: this runs for every reply, and try costs nothing.
            try:  # noqa: SIM105
                future.set_result(reply)
            except concurrent.futures.InvalidStateError:
                pass  # cancelled by its caller meanwhile

    def _take(self, key: Any) -> concurrent.futures.Future[Any] | None:
        futures = self.waiting.get(key)
        if not futures:
            return None
        future = futures.pop(0)
        if not futures:
            del self.waiting[key]
        return future

    def _watch(self, pid: int) -> None:
        if pid != os.getpid():  # in-process, the coordinator is this very process
            self._watched = process_identity(pid)
            self._children = {child: process_identity(child) for child in _children_of(pid)}
            self._next_check = time.monotonic() + WATCH_INTERVAL

    def _poisoned(self, reply: Any) -> None:
        """The coordinator failed twice on a message of ours and Thespian sent it back: its
        callers would wait for replies that never come. Fail them, saying why."""
        poison = reply.poisonMessage
        messages = poison.messages if isinstance(poison, Batch) else (poison,)
        details = str(reply.details or "").strip().splitlines()
        reason = (
            "understudy's coordinator failed on this request"
            + (f" ({details[-1]})" if details else "")
            + "; a saga it names may have started regardless: query its status, and see the "
            "coordinator's log for the error"
        )
        log.error("understudy's coordinator failed on %r: %s", poison, reply.details)
        for message in messages:
            key = _request_key(message)
            future = self._take(key) if key is not None else None
            if future is not None:
                _fail(future, reason)


def _request_key(message: Any) -> Any:
    """The key the reply to ``message`` is routed by (as the runtime submits it)."""
    if isinstance(message, StartSaga):
        return ("request", message.request_id)
    if isinstance(message, QueryHosts):
        return ("hosts",)
    if isinstance(message, AddParticipant):
        return ("participant", message.name)
    if isinstance(message, Stop):
        return ("pong", "stop")
    if isinstance(message, Ping):
        return ("pong", message.token)
    if isinstance(message, Subscribe):
        return ("subscribed", message.subscription_id)
    return None


def _children_of(pid: int) -> set[int]:
    """The pids of the processes ``pid`` forked that still run (empty without /proc)."""
    pids: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return pids
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", "rb") as children:
                pids.update(int(child) for child in children.read().split())
        except OSError:
            continue
    return pids


def _error(reason: str) -> ActorSystemError:
    if reason.startswith(_GONE):
        return CoordinatorGone(reason)
    return ActorSystemError(reason)


def _fail(future: concurrent.futures.Future[Any], reason: str) -> None:
    with contextlib.suppress(concurrent.futures.InvalidStateError):  # done, or cancelled
        future.set_exception(_error(reason))
