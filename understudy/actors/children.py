"""The participant that runs child sagas: the steps built with :meth:`understudy.Step.child`.

The runtime registers it as participant ``understudy.children`` when a definition has a child
step. It keeps nothing of its own: the child saga's row in the store is the step's whole state,
and the child's id, ``"<parent id>.<step name>"``, is derived from the request, so every retry,
resend and restart of the parent finds the same child.

- ``run:<name>:<version>`` starts the child through the coordinator (a start of an id that
  exists finds that saga: it is started once) and answers when the child ends: ``ok`` with the
  child's results when it completed, ``rejected`` with the child's failure as data when it ended
  compensated, ``error`` while it is parked (a person must resolve it).
- ``unwind:<name>:<version>`` files the ``unwind`` verb for the child in the store, the way an
  operator's command is filed, so that it is applied exactly once by the host that owns the
  child, whatever crashes (:mod:`understudy.actors.verbs`): a running child is cancelled, a
  completed one compensated in reverse, and one that never started is recorded as compensated,
  so that a run request still on its way finds it finished. It tells the coordinator it filed
  one (:class:`~understudy.actors.plumbing.CommandFiled`), which tells the child's host to look
  now. It answers ``ok`` once the child is compensated, ``error`` when the child is parked or
  the verb was refused.

It answers a request only once its child has ended (it sets no limit on requests in flight,
so no saga host holds a slot for it meanwhile), sends what one input causes as one message per
destination (on the multi-process bases every message is a socket write, and Thespian's
transmit queue scans itself at every send: hundreds of children in flight answered one by one
starved it), and never blocks: it learns how a child ended from the coordinator's answer to
the start, and, for everything, by reading the store while anything waits: every
``child_poll`` seconds while an unwind waits, every :data:`RUN_POLL` while only runs do (the
coordinator's answer can be lost with a crash; the store cannot).

A saga someone else started under a child's id is not taken for the child: the row must be of
the step's definition and version and name the parent in its ``started`` event. The run is
refused, and nothing is unwound under that id.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import timedelta
from typing import Any

import attrs

from understudy import failpoints
from understudy.actors.batching import GroupCommit, Outbox
from understudy.actors.instance import finished_from_record
from understudy.actors.plumbing import Batch, CommandFiled, Flush, Stop, Stopped, handle_batched
from understudy.actors.system import ActorTypeDispatcher, WakeupMessage, in_process
from understudy.actors.verbs import UNWIND
from understudy.actors.watch import OwnerWatch
from understudy.definitions import CHILDREN, RUN, child_id, child_ref
from understudy.errors import StoreError
from understudy.messages import (
    ConfigureParticipant,
    ParticipantReady,
    SagaFinished,
    StartRejected,
    StartSaga,
    StepReply,
    StepRequest,
)
from understudy.persistence import SagaStore, open_store
from understudy.persistence.base import (
    COMPENSATED,
    COMPLETED,
    FAILED,
    REFUSED,
    CommandRecord,
    OperatorCommand,
    SagaRecord,
    shard_of,
)

log = logging.getLogger("understudy.children")

#: The options the runtime passes: where the saga store is, and how to open it.
STORE_OPTION = "understudy_store"
STORE_OPTIONS = "understudy_store_options"
#: On the multi-process bases, how long what it sends gathers once a flush carried several
#: inputs (as a saga host's batches do, :mod:`understudy.actors.batching`).
GATHER_WINDOW = 0.01
#: Seconds between two reads of the store while an unwind waits, unless ``child_poll`` says
#: otherwise: what a child's compensation costs its parent at most beyond its own time.
CHILD_POLL = 0.1
#: Seconds between two reads of the store while only runs wait: the coordinator answers a run
#: when its child ends, and this read is for an answer a crash lost.
RUN_POLL = 1.0


@attrs.frozen
class PollChildren:
    """The children participant's reminder to itself to read how its children stand."""


@attrs.define
class _Waiting:
    """The requests waiting on one child saga: the latest of each kind (a newer attempt
    replaces an older one, which its saga no longer waits on)."""

    parent: str
    definition: tuple[str, int]  # the child's definition and version, as the step names them
    requests: dict[str, tuple[StepRequest, Any]] = attrs.field(factory=dict)
    command: int | None = None  # the unwind filed for it by this incarnation
    checked: bool = False  # its row was found to be this step's child


class Children(GroupCommit, OwnerWatch, ActorTypeDispatcher):
    """Participant ``understudy.children``: see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.name = CHILDREN
        self.store: SagaStore | None = None
        self.coordinator: Any = None
        self.poll = CHILD_POLL
        self.waiting: dict[str, _Waiting] = {}
        self._due: float | None = None  # when the next look at the store is due (monotonic)
        self._out = Outbox()  # what the inputs since the last flush send
        self._gathered = 0  # messages gathered since the last flush

    def _post(self, address: Any, message: Any) -> None:
        """Send ``message`` with what the other inputs gathered send (see the module docstring):
        at the next :class:`Flush`, which goes to the back of this actor's queue (on the
        multi-process bases, after a window when the last flush carried several inputs)."""
        self._out.add(address, message)
        self._gathered += 1
        self.schedule_flush()

    def receiveMsg_Flush(self, msg: Flush, sender: Any) -> None:
        self.flush_started(self._gathered)
        self._gathered = 0
        self._out.send_all(self.send)

    # --- configuration ----------------------------------------------------------------------

    def receiveMsg_ConfigureParticipant(self, msg: ConfigureParticipant, sender: Any) -> None:
        if self.store is None:
            try:
                failpoints.arm(msg.faults)
                options = dict(msg.options or {})
                location = options.get(STORE_OPTION)
                if not location:
                    raise ValueError(
                        f"participant {msg.name!r} was not told where the saga store is; the "
                        "runtime registers it itself when a definition has a child step"
                    )
                self.poll = float(options.get("child_poll", CHILD_POLL))
                if not self.poll > 0:
                    raise ValueError(f"child_poll must be a positive number, not {self.poll!r}")
                self.store = open_store(str(location), **dict(options.get(STORE_OPTIONS) or {}))
            except Exception as exc:
                self._post(sender, ParticipantReady(msg.name, f"{type(exc).__name__}: {exc}"))
                return
            self.name = msg.name
            self.flush_window = 0.0 if in_process(self) else GATHER_WINDOW
            self.watch_parent(msg.watch_interval)
        self.coordinator = sender
        # Its actions are "run:<definition>" for every child definition: not declared.
        self._post(sender, ParticipantReady(msg.name, None, os.getpid()))
        # A client that sends batches gets the ends of its sagas in batches too (as saga hosts
        # report them together): an empty one says so.
        self._post(sender, Batch(()))

    # --- requests ---------------------------------------------------------------------------

    def receiveMsg_Batch(self, msg: Batch, sender: Any) -> None:
        for message in msg.messages:
            handle_batched(self, message, sender, frozenset())

    def receiveMsg_StepRequest(self, msg: StepRequest, sender: Any) -> None:
        failpoints.hit("participant.before_apply", msg.saga_id, self.name)
        try:
            verb, definition, version = child_ref(msg.action)
        except ValueError:
            self._post(sender, _reply(msg, "error", reason=f"{msg.action!r} is not a child step"))
            return
        if self.store is None:
            self._post(sender, _reply(msg, "error", reason=f"{self.name} is not configured"))
            return
        child = self.child_of(msg)
        waiting = self.waiting.setdefault(child, _Waiting(msg.saga_id, (definition, version)))
        waiting.requests[msg.kind] = (msg, sender)
        try:
            record = self.store.get(child)
            if record is not None and self._settle_record(child, record):
                return
            if verb == RUN:
                self._post(
                    self.coordinator,
                    StartSaga(child, definition, msg.payload, version, True, child, msg.saga_id),
                )
            elif waiting.command is None:
                filed = self._file_unwind(msg, child, definition, version)
                waiting.command = filed.id
                self._post(self.coordinator, CommandFiled(filed.shard))  # applied now, not later
        except StoreError as exc:
            self._answer(child, msg.kind, "error", reason=f"the saga store failed: {exc}")
            return
        failpoints.hit("participant.after_apply", msg.saga_id, self.name)
        self._schedule()

    def child_of(self, msg: StepRequest) -> str:
        """The id of the child saga ``msg``'s step runs (a method: the harness's tests break
        it on purpose)."""
        return child_id(msg.saga_id, msg.step_name)

    def _file_unwind(
        self, msg: StepRequest, child: str, definition: str, version: int
    ) -> CommandRecord:
        assert self.store is not None
        shards = len(self.store.leases()) or 1
        return self.store.submit(
            OperatorCommand(
                child,
                shard_of(child, shards),
                UNWIND,
                {
                    "parent": msg.saga_id,
                    "step": msg.step_name,
                    "definition": definition,
                    "version": version,
                },
                f"saga {msg.saga_id}",
                f"its step {msg.step_name!r} is compensated",
                time.time(),
            )
        )

    # --- how children end -------------------------------------------------------------------

    def receiveMsg_SagaFinished(self, msg: SagaFinished, sender: Any) -> None:
        # Read back from the store rather than trusted: the row says whose saga it is.
        if self.store is not None and msg.saga_id in self.waiting:
            try:
                record = self.store.get(msg.saga_id)
            except StoreError:
                return  # the next poll reads it
            if record is not None:
                self._settle_record(msg.saga_id, record)

    def receiveMsg_StartRejected(self, msg: StartRejected, sender: Any) -> None:
        self._answer(
            msg.saga_id,
            "do",
            "error",
            reason=f"child saga {msg.saga_id!r} could not start ({msg.error}): {msg.reason}",
        )

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        if isinstance(msg.payload, Flush):
            self.receiveMsg_Flush(msg.payload, sender)
            return
        if not isinstance(msg.payload, PollChildren):
            return
        if self._due is not None and time.monotonic() >= self._due - 0.005:
            self._due = None  # this is that look (an earlier one, rescheduled, leaves it)
        if self.store is None or not self.waiting:
            return
        try:
            # The unwinds refused, read before the rows: one refused because its child ended
            # meanwhile (filed again by a restarted participant, it found the child
            # compensated) is answered by that end, which the rows read next show.
            refused = {}
            for child, waiting in self.waiting.items():
                if waiting.command is not None and "undo" in waiting.requests:
                    command = self.store.command(waiting.command)
                    if command is not None and command.state == REFUSED:
                        waiting.command = None
                        refused[child] = command.outcome
            for child, record in self.store.get_many(list(self.waiting)).items():
                self._settle_record(child, record)
            for child, outcome in refused.items():
                reason = f"child saga {child!r} cannot be compensated: {outcome}"
                self._answer(child, "undo", "error", reason=reason)
        except StoreError as exc:
            log.warning("could not read child sagas (%s); trying again", exc)
        self._schedule()

    def _settle_record(self, child: str, record: SagaRecord) -> bool:
        """:meth:`_settle` with the child's row, once it is known to be this step's child: a
        saga someone else started under the id is not, and is never waited on nor unwound.
        Whether nothing waits on the child any more."""
        waiting = self.waiting.get(child)
        if waiting is None:
            return True
        if not waiting.checked:
            stranger = self._stranger(record, waiting)
            if stranger is not None:
                self._answer(child, "do", "rejected", reason=stranger)
                self._answer(child, "undo", "ok")  # nothing of this step's ran under the id
                return True
            waiting.checked = True
        return self._settle(child, _ending(record))

    def _stranger(self, record: SagaRecord, waiting: _Waiting) -> str | None:
        """Why ``record`` is not the child the waiting step runs (None: it is)."""
        assert self.store is not None
        name, version = waiting.definition
        if (record.definition, record.version) == (name, version):
            started = [e for e in self.store.events(record.saga_id) if e.kind == "started"]
            if started and started[0].detail.get("parent") == waiting.parent:
                return None
        return (
            f"a saga {record.saga_id!r} ({record.definition!r} v{record.version}) exists that "
            f"is not the child of saga {waiting.parent!r} ({name!r} v{version}): a child "
            "saga's id is '<parent id>.<step name>'; start other sagas under other ids"
        )

    def _settle(self, child: str, end: SagaFinished | None) -> bool:
        """Answer what waits on ``child`` now that it stands as ``end`` (None: running).
        Whether nothing waits on it any more."""
        if end is None:
            return child not in self.waiting
        status = end.status
        if status == COMPLETED:
            self._answer(child, "do", "ok", result=dict(end.results))
        elif status == COMPENSATED:
            self._answer(
                child,
                "do",
                "rejected",
                reason=f"child saga {child!r} was compensated: {end.reason or 'no reason'}",
                data=end.failure,
            )
            self._answer(child, "undo", "ok")
        elif status == FAILED:
            reason = (
                f"child saga {child!r} is parked ({end.reason or 'no reason'}): an operator "
                "must retry, resolve or abandon it"
            )
            self._answer(child, "do", "error", reason=reason)
            self._answer(child, "undo", "error", reason=reason)
        return child not in self.waiting

    def _answer(self, child: str, kind: str, outcome: str, **reply: Any) -> None:
        waiting = self.waiting.get(child)
        if waiting is None or kind not in waiting.requests:
            return
        msg, sender = waiting.requests.pop(kind)
        if not waiting.requests:
            del self.waiting[child]
        verdict = failpoints.hit("participant.before_reply", msg.saga_id, self.name)
        if verdict == "drop":
            return  # lost on the way: the parent's timeout sends the request again
        self._post(sender, _reply(msg, outcome, **reply))
        if verdict == "duplicate":
            self._post(sender, _reply(msg, outcome, **reply))

    def _schedule(self) -> None:
        if not self.waiting:
            return
        unwinding = any("undo" in w.requests for w in self.waiting.values())
        delay = self.poll if unwinding else max(self.poll, RUN_POLL)
        due = time.monotonic() + delay
        if self._due is None or due < self._due - 0.005:
            self._due = due
            self.wakeupAfter(timedelta(seconds=delay), PollChildren())

    # --- stopping ---------------------------------------------------------------------------

    def receiveMsg_Stop(self, msg: Stop, sender: Any) -> None:
        self._close()
        self._out.send_all(self.send)  # what was gathered goes before the answer
        self.send(sender, Stopped(-1, self.name))

    def receiveMsg_ActorExitRequest(self, msg: Any, sender: Any) -> None:
        self._close()

    def _close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None


def _ending(record: SagaRecord) -> SagaFinished | None:
    """How the child ``record`` holds ended (None: it has not)."""
    return finished_from_record(record) if record.terminal else None


def _reply(msg: StepRequest, outcome: str, **fields: Any) -> StepReply:
    return StepReply(
        msg.saga_id, msg.step, msg.kind, msg.key, msg.attempt, msg.incarnation, outcome, **fields
    )
