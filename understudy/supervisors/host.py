"""The saga host: many saga actors in one Thespian actor, committing together.

Hosting: a saga instance is "its own actor" here in everything but the OS process: its own
mailbox (messages are routed to it by saga id), state, incarnation and supervision. One Thespian
actor hosts many of them, because a process per saga costs 4-5 MB and 7-20 ms to create, which
caps throughput near a hundred sagas per second and ten thousand in flight near 50 GB. An idle
saga costs only its Python object (a few KB). If the host process dies, every saga it hosted is
rebuilt from its snapshot by the next host incarnation, exactly as a single saga would be.

Group commit: every input to a saga yields a new snapshot, events and commands. The host queues
the writes and the commands, and sends itself a :class:`Flush`; by the time the flush is handled,
everything that arrived meanwhile has joined the batch. The flush commits the batch in one
transaction and only then sends the requests it holds (write-ahead, I3). One FULL commit covers
as many saga steps as arrived while the previous one was being written.

Supervision: an exception in one saga's handling never leaves this actor (Thespian would redeliver
the message, then bounce it): the saga is dropped from memory and reloaded from its last durable
snapshot with a new incarnation, within the restart policy's intensity; past it, the saga parks.

Pacing: a participant takes at most its ``max_in_flight`` requests at once, and each host sends
at most its share of them (:mod:`understudy.supervisors.pacing`); the rest wait here, in order,
after their intents are committed, and a request's reply timer starts when it is sent. The
requests a recovery resends, and those resent to a restarted participant, wait their turn too.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
import traceback
from typing import Any

from understudy import codec, failpoints
from understudy.actors import machines
from understudy.actors.batching import GroupCommit, Outbox
from understudy.actors.machines import Machine
from understudy.actors.plumbing import Batch, Flush, Stop, Stopped, handle_batched
from understudy.actors.saga import DO, Finish, Send, Timer
from understudy.actors.system import (
    ActorTypeDispatcher,
    PoisonMessage,
    WakeupMessage,
)
from understudy.actors.watch import OwnerWatch
from understudy.actors.workflow import Workflow
from understudy.definitions import SagaDefinition
from understudy.errors import LeaseLost, StoreError
from understudy.messages import SagaFinished, StepReply, StepRequest
from understudy.persistence import SagaStore
from understudy.persistence.base import (
    CommandDone,
    Lease,
    NewSaga,
    SagaRecord,
    Transition,
)
from understudy.supervisors.commands import CommandIntake
from understudy.supervisors.inflight import InFlight
from understudy.supervisors.notify import Notifier
from understudy.supervisors.pacing import Pacing, Queued, SendWindow, WindowCheck
from understudy.supervisors.policy import RestartWindow
from understudy.supervisors.protocol import (
    HostSetup,
    HostStart,
    HostStarted,
    HostStartFailed,
    ParticipantTable,
    PollCommands,
    Reload,
    RenewLease,
    RetrySetup,
    SagaTimer,
    Tick,
)
from understudy.supervisors.recovery import (
    ShardRecovery,
    finished_from_record,
    seconds,
    shard_of,
)

__all__ = ["SagaHost", "shard_of"]

log = logging.getLogger("understudy.host")

STORE_RETRY_DELAY = 0.2
SETUP_RETRY_DELAY = 1.0
RECOVERY_CHUNK = 500  # sagas claimed per transaction by the startup scan
_DIRECT = frozenset({HostStart, StepReply})  # what batches carry: see handle_batched

# What became of a request handed to _deliver.
SENT = 0  # sent (or lost on the way by a failpoint): its reply deadline runs
QUEUED = 1  # waits for a slot of its participant's window: its reply deadline has not started
HELD = 2  # its participant is not registered yet: held, its reply deadline runs


class _Staged:
    """One saga's writes and the commands to carry out once they are durable."""

    __slots__ = ("commands", "new", "saga", "writes")

    def __init__(self, saga: Machine, writes: list[Any], commands: list[Any], new: bool) -> None:
        self.saga = saga
        self.writes = writes
        self.commands = commands
        self.new = new


class SagaHost(
    ShardRecovery, CommandIntake, Notifier, GroupCommit, OwnerWatch, ActorTypeDispatcher
):
    #: The state machine that runs workflows (a subclass here is how tests break one on purpose).
    workflow_class: type[Workflow] = Workflow

    def __init__(self) -> None:
        super().__init__()
        self.setup: HostSetup | None = None
        self.store: SagaStore | None = None
        self.coordinator: Any = None
        self.definitions: dict[tuple[str, int], SagaDefinition] = {}
        self.sagas: dict[str, Machine] = {}
        self.participants: dict[str, Any] = {}
        self.held: dict[str, list[StepRequest]] = {}
        self.batch: list[_Staged] = []
        self.windows: dict[str, RestartWindow] = {}
        self.timers: list[tuple[float, int, SagaTimer | WindowCheck]] = []
        self.pacing = Pacing()  # requests in flight at each participant, and those waiting
        self.timer_seq = itertools.count()
        self.tick_at: float | None = None
        self.uncommitted: set[str] = set()  # new sagas whose start row is not committed yet
        # New sagas whose commit reported an error: the row may exist all the same (an error
        # after the commit), so the start is answered once a reload has looked.
        self.unanswered: dict[str, tuple[str, str]] = {}  # saga id -> (error, reason)
        self.inflight: InFlight | None = None
        self.lease: Lease | None = None
        self.lost = False  # the shard was taken over: this host writes nothing more
        # Set by Stop (and exit): a stopped host never opens the store or takes its shard again,
        # whatever retry is still pending (it would take the shard from the next runtime).
        self.stopped = False
        # Messages gathered while handling one input, sent together at its end.
        self.outbox = Outbox()
        # Stored rows of the sagas a batch of starts names, read with one query for the whole
        # batch (None: no batch is being handled); a start absent from it reads its own row.
        self.known: dict[str, SagaRecord | None] | None = None
        # Operators' commands staged and not committed yet: the next poll must not apply them
        # again while their batch is being written.
        self.applying: set[int] = set()
        self.polling = False

    # --- setup (recovery: see understudy.supervisors.recovery) -----------------------------

    def receiveMsg_HostSetup(self, msg: HostSetup, sender: Any) -> None:
        self.setup = msg
        self.coordinator = sender
        self.flush_window = msg.flush_window
        failpoints.arm(msg.faults)
        self.definitions = {d.key: d for d in msg.definitions}
        self.participants = dict(msg.participants)
        self.pacing.configure(msg.limits, msg.shards)
        self.watch_parent(msg.watch_interval)
        self._open_and_recover()

    # --- inputs -----------------------------------------------------------------------------

    def receiveMsg_HostStart(self, msg: HostStart, sender: Any) -> None:
        saga_id = msg.saga_id
        if self.store is None or self.lease is None:
            self.send(
                self.coordinator,
                HostStartFailed(
                    saga_id,
                    "StoreUnavailable",
                    "the saga host cannot open its store yet (it retries); start the saga again",
                ),
            )
            return
        if saga_id in self.sagas:
            # A start whose row is not committed yet is answered by the flush that commits it
            # (or fails it): acknowledging it now could acknowledge a saga that never exists.
            if saga_id not in self.uncommitted:
                self.send(self.coordinator, HostStarted(saga_id, existing=True))
            return
        try:
            if self.known is not None and saga_id in self.known:
                record = self.known.pop(saga_id)
            else:
                record = self.store.get(saga_id)
        except StoreError as exc:
            self.send(self.coordinator, HostStartFailed(saga_id, type(exc).__name__, str(exc)))
            return
        self.unanswered.pop(saga_id, None)  # this start gets its answer now
        if record is not None:
            if not record.terminal and (record.definition, record.version) not in self.definitions:
                self.send(
                    self.coordinator,
                    HostStartFailed(
                        saga_id,
                        "UnknownDefinition",
                        f"saga {saga_id!r} is pinned to definition {record.definition!r} "
                        f"v{record.version}, which this runtime does not have; it stays "
                        f"{record.status}, untouched, until a runtime with that version starts",
                    ),
                )
                return
            self.send(self.coordinator, HostStarted(saga_id, existing=True))
            if record.terminal:
                self.send(self.coordinator, finished_from_record(record))
            else:
                self._guarded_load(saga_id)
            return
        definition = self.definitions[(msg.definition, msg.version)]
        saga = machines.restore(
            saga_id, definition, msg.payload, 1, None, 0, 0, workflow=self.workflow_class
        )
        self.sagas[saga_id] = saga
        now = time.time()
        new = NewSaga(
            saga_id, definition.name, definition.version, codec.encode(msg.payload, "payload"), now
        )
        self.uncommitted.add(saga_id)
        self._run(saga, lambda: saga.begin(now, msg.parent), new=new)

    def receiveMsg_StepReply(self, msg: StepReply, sender: Any) -> None:
        pacing = self.pacing
        if pacing.holder:
            # Any reply under the request's key frees its slot, stale or not: the participant
            # is done with it. What waits for the slot goes out with the next flush.
            pacing.replied(msg.saga_id, msg.key)
            if pacing.ready:
                self.schedule_flush()
        saga = self.sagas.get(msg.saga_id)
        if saga is None or msg.incarnation != saga.incarnation:
            return  # stale: an earlier incarnation's reply, or a saga that already ended
        self._working_on(saga.saga_id)

        def apply_reply() -> Any:
            # Inside the guard: a raise here restarts the saga, as a crash would.
            if msg.kind == DO:
                failpoints.hit("host.after_reply", msg.saga_id)
            else:
                failpoints.hit("host.after_compensation_reply", msg.saga_id)
            return saga.on_reply(msg, time.time())

        self._run(saga, apply_reply)
        self._idle()

    def receiveMsg_Batch(self, msg: Batch, sender: Any) -> None:
        """Several messages from one sender (starts from the coordinator, replies from a
        participant): handled in order, as if each had come alone.

        A start must know whether its saga is stored already (a repeated start). The rows of a
        batch's starts are read first, with one query: a query per start would cost a round
        trip each on a database server, and the in-process base waits for every one."""
        starts = [
            m.saga_id
            for m in msg.messages
            if isinstance(m, HostStart) and m.saga_id not in self.sagas
        ]
        if len(starts) > 1 and self.store is not None and self.lease is not None:
            try:
                records = self.store.get_many(starts)
            except StoreError:
                pass  # each start then reads its own row, and answers its own error
            else:
                # Only this host writes its shard's rows: they cannot change meanwhile.
                self.known = {saga_id: records.get(saga_id) for saga_id in starts}
        try:
            for message in msg.messages:
                handle_batched(self, message, sender, _DIRECT)
        finally:
            self.known = None

    def receiveMsg_PoisonMessage(self, msg: PoisonMessage, sender: Any) -> None:
        # A participant whose handler raised twice: Thespian bounces the request back here.
        # It becomes a failed attempt, so the saga decides (retry, compensate or park).
        poison = msg.poisonMessage
        requests = poison.messages if isinstance(poison, Batch) else (poison,)
        for request in requests:
            if not isinstance(request, StepRequest):
                continue
            self.receiveMsg_StepReply(
                StepReply(
                    request.saga_id,
                    request.step,
                    request.kind,
                    request.key,
                    request.attempt,
                    request.incarnation,
                    "error",
                    reason=f"participant could not handle it (PoisonMessage: {msg.details})",
                ),
                sender,
            )

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        payload = msg.payload
        if isinstance(payload, Flush):
            self.receiveMsg_Flush(payload, sender)
        elif isinstance(payload, Tick):
            self._tick(payload)
        elif isinstance(payload, RetrySetup):
            self._open_and_recover()
        elif isinstance(payload, RenewLease):
            self._renew()
        elif isinstance(payload, PollCommands):
            self._poll_commands()
        elif isinstance(payload, Reload):
            for saga_id in payload.saga_ids:
                if saga_id not in self.sagas:
                    self._guarded_load(saga_id)

    # --- timers: one Thespian wakeup per host, a heap of saga deadlines behind it ------------

    def _set_timer(self, due: float, timer: SagaTimer | WindowCheck) -> None:
        # Thespian scans every pending wakeup on every message it delivers, so a wakeup per
        # request made message handling grow with the number of sagas in flight. Deadlines live
        # in this heap instead, and only the earliest one is armed with Thespian.
        heapq.heappush(self.timers, (due, next(self.timer_seq), timer))
        if self.tick_at is None or due < self.tick_at:
            self.tick_at = due
            self.wakeupAfter(seconds(max(0.0, due - time.time())), Tick(due))

    def _tick(self, tick: Tick) -> None:
        if tick.at == self.tick_at:
            self.tick_at = None  # the earliest armed wakeup fired; later ones may still come
        now = time.time()
        pacing = self.pacing
        while self.timers and self.timers[0][0] <= now:
            _due, _seq, timer = heapq.heappop(self.timers)
            if isinstance(timer, WindowCheck):
                self._check_window(timer, now)
                continue
            if pacing.holder:
                pacing.expire(timer.saga_id, now)  # a reply deadline that passed frees its slot
            saga = self.sagas.get(timer.saga_id)
            if saga is not None and saga.incarnation == timer.incarnation:
                self._working_on(saga.saga_id)
                self._run(saga, lambda s=saga, t=timer: s.on_timer(t.token, now))
        if pacing.ready:
            self.schedule_flush()
        self._idle()
        if self.timers and (self.tick_at is None or self.timers[0][0] < self.tick_at):
            self.tick_at = self.timers[0][0]
            self.wakeupAfter(seconds(max(0.0, self.tick_at - now)), Tick(self.tick_at))

    def receiveMsg_ParticipantTable(self, msg: ParticipantTable, sender: Any) -> None:
        replaced = {
            name
            for name, address in msg.participants.items()
            if name in self.participants and self.participants[name] != address
        }
        self.participants = dict(msg.participants)
        self.pacing.configure(msg.limits, self.setup.shards if self.setup is not None else 1)
        if replaced:
            # A participant was restarted: whatever it was handling when it died is lost, so
            # re-send each outstanding request to the new one now instead of waiting for its
            # reply deadline. Same key, attempt and incarnation: its ledger makes it harmless.
            # Sagas with staged writes are skipped: their in-memory request may not be durable
            # yet (write-ahead), and the flush sends it to the new address anyway. The new
            # participant's window starts empty (its predecessor's mailbox is gone); requests
            # waiting for a slot were never sent, so they are not resent: they go in turn.
            for name in replaced:
                self.pacing.reset(name)
            staged = {st.saga.saga_id for st in self.batch if st.saga is not None}
            for saga in list(self.sagas.values()):
                if saga.saga_id in staged:
                    continue
                for send in saga.sends():
                    if send.participant in replaced and not self.pacing.is_waiting(
                        saga.saga_id, send.request.key
                    ):
                        self._resend(saga, send.participant, send.request)
        for name in [n for n in self.held if n in self.participants]:
            for request in self.held.pop(name):
                waiting = self._waiting_saga(request)
                if waiting is not None:  # else the saga moved on: its newer request goes instead
                    self._resend(waiting, name, request)
        if self.pacing.ready:
            self.schedule_flush()  # the flush sends what waits for the slots freed here
        self._send_outbox()

    # --- running a saga, guarded ------------------------------------------------------------

    def _run(
        self,
        saga: Machine,
        step: Any,
        new: NewSaga | None = None,
        done: CommandDone | None = None,
        reopen: bool = False,
        unwind: bool = False,
    ) -> None:
        """Run one input through ``saga`` and stage the result; a crash restarts the saga.
        ``done``: the operator's command this input applies, committed with its transition
        (``reopen``: to a saga parked as failed; ``unwind``: to a completed child saga)."""
        try:
            commands = step()
            if commands is None:
                return
            assert self.setup is not None
            writes: list[Any] = [new] if new is not None else []
            snapshot = saga.snapshot()
            if len(snapshot) > self.setup.max_snapshot_bytes:
                # I16: an unbounded snapshot would slow every later step and recovery. Park
                # instead of sending anything, keeping the state minus the step results.
                commands = saga.overflow(len(snapshot), self.setup.max_snapshot_bytes, time.time())
                snapshot = saga.snapshot()
            saga.snapshot_version += 1
            writes.append(
                Transition(
                    saga.saga_id,
                    saga.incarnation,
                    saga.status,
                    snapshot,
                    saga.snapshot_version,
                    saga.state.recovery_attempts,
                    time.time(),
                    saga.state.reason,
                    saga.take_events(),
                    reopen,
                    unwind,
                )
            )
            if done is not None:
                writes.append(done)
        except Exception as exc:
            self._crash(saga.saga_id, exc, new is not None)
            return
        self.batch.append(_Staged(saga, writes, commands, new is not None))
        self.schedule_flush()

    def _stage_raw(self, saga_id: str, write: Transition, finished: SagaFinished) -> None:
        saga = self.sagas.pop(saga_id, None)
        self._forget(saga_id)
        holder = _Staged(saga, [write], [finished], False)  # type: ignore[arg-type]
        self.batch.append(holder)
        self.schedule_flush()

    def _stage_done(self, done: CommandDone) -> None:
        """Stage an operator's command refused: committed with the next batch."""
        self.batch.append(_Staged(None, [done], [], False))  # type: ignore[arg-type]
        self.schedule_flush()

    def _crash(self, saga_id: str, exc: BaseException, new: bool) -> None:
        """Supervise one saga: restart it from its snapshot, or park it past the intensity."""
        assert self.setup is not None
        log.error("saga %s crashed: %s", saga_id, "".join(traceback.format_exception(exc)))
        self.sagas.pop(saga_id, None)
        self._forget(saga_id)
        if new:
            self.uncommitted.discard(saga_id)
            self.send(self.coordinator, HostStartFailed(saga_id, type(exc).__name__, str(exc)))
            return
        window = self.windows.setdefault(saga_id, RestartWindow(self.setup.policy))
        if window.allow(time.time()):
            self._guarded_load(saga_id)
            return
        assert self.store is not None
        try:
            record = self.store.claim(saga_id, recovery=False, at=time.time(), lease=self.lease)
        except LeaseLost as lost:
            self._lose_lease(lost)
            return
        except StoreError as store_error:
            log.error("could not park saga %s (%s); retrying", saga_id, store_error)
            self.wakeupAfter(seconds(STORE_RETRY_DELAY), Reload((saga_id,)))
            return
        if record is not None:
            self._park_record(
                record,
                f"crashed more than {self.setup.policy.max_restarts} times "
                f"within {self.setup.policy.within} s; last error: "
                f"{type(exc).__name__}: {exc}",
                time.time(),
            )

    def _guarded_load(self, saga_id: str) -> None:
        """Load one saga outside the startup scan. No recovery is counted against it: its host
        did not die (a failed commit, a restart within the intensity, a start for a saga not in
        memory), and a store that stays busy must not park every saga that waits for it."""
        if self.store is None:
            return  # stopped: the next runtime's startup scan loads it
        try:
            self._load([saga_id], blamed=set())
        except LeaseLost as lost:
            self._lose_lease(lost)
        except StoreError as exc:
            # The store is busy or failing: wait for it as long as it takes.
            log.error("could not reload saga %s (%s); retrying", saga_id, exc)
            self.sagas.pop(saga_id, None)
            self.wakeupAfter(seconds(STORE_RETRY_DELAY), Reload((saga_id,)))
        except Exception as exc:
            # A bug in loading: retry within the restart intensity, then leave the saga as it
            # is stored for the next start of understudy instead of looping here.
            self.sagas.pop(saga_id, None)
            assert self.setup is not None
            window = self.windows.setdefault(saga_id, RestartWindow(self.setup.policy))
            if window.allow(time.time()):
                log.error("could not reload saga %s (%s); retrying", saga_id, exc)
                self.wakeupAfter(seconds(STORE_RETRY_DELAY), Reload((saga_id,)))
            else:
                log.error(
                    "could not reload saga %s (%s) %d times within %s s; it stays as stored "
                    "until understudy starts again",
                    saga_id,
                    exc,
                    self.setup.policy.max_restarts,
                    self.setup.policy.within,
                )

    # --- the flush: commit, then act --------------------------------------------------------

    def receiveMsg_Flush(self, msg: Flush, sender: Any) -> None:
        self.flush_started(len(self.batch))
        if self.store is None:
            return  # stopped: nothing staged was sent, so dropping it loses nothing durable
        batch, self.batch = self.batch, []
        if not batch:
            if self.pacing.ready:
                self._send_waiting()  # slots freed by replies or deadlines that changed nothing
            return
        writes = [w for staged in batch for w in staged.writes]
        try:
            # Blame for a death while committing goes to this batch, in the store (another
            # machine may take the shard over); the commit clears it.
            self._idle()
            assert self.lease is not None  # a store is open only under a lease
            results = self.store.commit_batch(writes, self.lease)
        except LeaseLost as exc:
            self._lose_lease(exc)
            return
        except Exception as exc:
            self._commit_failed(batch, exc)
            if self.pacing.ready:
                self._send_waiting()  # requests of other sagas, committed earlier, may go
            return
        finally:
            self.uncommitted.difference_update(s.saga.saga_id for s in batch if s.new)
            self.applying.difference_update(
                w.command_id for s in batch for w in s.writes if isinstance(w, CommandDone)
            )
        position = 0
        sent: list[tuple[Machine, StepRequest]] = []
        for staged in batch:
            applied = results[position : position + len(staged.writes)]
            position += len(staged.writes)
            saga = staged.saga
            if not all(applied):
                # Fenced: another incarnation owns this saga now; this copy must go quiet.
                if saga is not None and self.sagas.get(saga.saga_id) is saga:
                    del self.sagas[saga.saga_id]
                    self._forget(saga.saga_id)
                continue
            if staged.new:
                self._post(self.coordinator, HostStarted(saga.saga_id, existing=False))
            try:
                if saga is not None:
                    self._working_on(saga.saga_id)
                    if staged.writes and isinstance(staged.writes[-1], CommandDone):
                        failpoints.hit("host.after_verb", saga.saga_id)
                self._carry_out(saga, staged.commands, sent)
            except Exception as exc:
                # The saga's state is durable, its commands only half done: restart it from
                # the snapshot, which resends what is outstanding under the same keys.
                if saga is not None:
                    self._crash(saga.saga_id, exc, new=False)
        if self.pacing.ready:
            self._pump(sent)  # behind this batch's own requests, which queued behind them
        if self.watchers or self.logging_events:
            self._notify(batch, results)
        self._send_outbox()
        self._after_sends(sent)
        self._idle()

    def _after_sends(self, sent: list[tuple[Machine, StepRequest]]) -> None:
        for saga, request in sent:
            try:
                failpoints.hit(
                    "host.after_send" if request.kind == DO else "host.after_compensation_send",
                    request.saga_id,
                )
            except Exception as exc:
                if self.sagas.get(saga.saga_id) is saga:
                    self._crash(saga.saga_id, exc, new=False)

    def _carry_out(
        self, saga: Machine | None, commands: list[Any], sent: list[tuple[Machine, StepRequest]]
    ) -> None:
        deferred: Timer | None = None  # the reply timer of a request that waits for a slot
        for index, command in enumerate(commands):
            if isinstance(command, Send):
                request = command.request
                failpoints.hit(
                    "host.after_intent_commit"
                    if request.kind == DO
                    else "host.after_compensation_intent",
                    request.saga_id,
                )
                # A saga's Send comes with the Timer of its reply deadline right after it.
                following = commands[index + 1] if index + 1 < len(commands) else None
                timer = following if isinstance(following, Timer) else None
                if self._deliver(command.participant, request, timer) == QUEUED:
                    deferred = timer  # armed when the request is sent, not now
                elif saga is not None:
                    sent.append((saga, request))
            elif isinstance(command, Timer):
                assert saga is not None
                if command is deferred:
                    deferred = None
                    continue
                self._set_timer(
                    time.time() + command.delay,
                    SagaTimer(saga.saga_id, saga.incarnation, command.token),
                )
            elif isinstance(command, Finish):
                assert saga is not None
                failpoints.hit("host.after_terminal", saga.saga_id)
                if saga.terminal:
                    # Not when an operator's verb, staged in this batch after the end, took
                    # the parked saga up again: it goes on in memory.
                    self.sagas.pop(saga.saga_id, None)
                    self.windows.pop(saga.saga_id, None)
                    self._forget(saga.saga_id)
                self._post(
                    self.coordinator,
                    SagaFinished(
                        saga.saga_id,
                        command.status,
                        command.reason,
                        command.outstanding,
                        command.results,
                        failure=command.failure,
                    ),
                )
            elif isinstance(command, SagaFinished):
                self._post(self.coordinator, command)

    def _deliver(self, participant: str, request: StepRequest, timer: Timer | None = None) -> int:
        """Send ``request`` to ``participant`` within its window (:meth:`_send_outbox` sends
        what was posted), or queue it for a slot: SENT, QUEUED or HELD. ``timer``: the reply
        timer that goes with the request (the one the saga emitted with its Send, or the one
        :meth:`_resend` made). The caller arms it unless the request was QUEUED; then the host
        arms it when it sends the request, so that waiting for a slot costs no time of it."""
        address = self.participants.get(participant)
        if address is None:
            # Not registered (yet): hold it; the reply deadline still runs, so a participant
            # that never appears leads to retries and then compensation, never to a hang.
            self.held.setdefault(participant, []).append(request)
            return HELD
        window = self.pacing.windows.get(participant)
        if window is not None:
            delay = timer.delay if timer is not None else self._timeout_of(request)
            if not window.open() and not self._room_after_purge(window):
                token = timer.token if timer is not None else None
                self.pacing.enqueue(
                    window, Queued(participant, request, delay, token, self._lanes(request))
                )
                if self.pacing.ready:
                    self.schedule_flush()
                self._watch_window(window)
                return QUEUED
            self.pacing.take(
                window, request.saga_id, request.key, time.time() + delay, self._lanes(request)
            )
        self._transmit(address, request)
        return SENT

    def _resend(self, saga: Machine, participant: str, request: StepRequest) -> None:
        """Send ``request``, which ``saga`` waits on, again (same key, attempt and incarnation:
        the participant's ledger makes it harmless), with a whole reply timeout from when it is
        sent: the saga's running reply timer is detached (its token goes stale) and a new one
        armed now, or when a slot frees if the request has to wait for one."""
        timer = saga.rearm(request.step)
        if self._deliver(participant, request, timer) != QUEUED:
            self._set_timer(
                time.time() + timer.delay, SagaTimer(saga.saga_id, saga.incarnation, timer.token)
            )

    def _transmit(self, address: Any, request: StepRequest) -> None:
        verdict = failpoints.hit("host.send", request.saga_id)
        if verdict == "drop":
            return  # lost on the way: the reply deadline notices
        self._post(address, request)
        if verdict == "duplicate":
            self._post(address, request)

    # --- pacing: requests waiting for a slot of their participant's window -----------------

    def _room_after_purge(self, window: SendWindow) -> bool:
        """Whether ``window``, full with nobody waiting, has room once the slots whose deadline
        passed are freed (a reply lost on the way, a saga that went quiet)."""
        if window.queue:
            return False
        self.pacing.purge(window, time.time())
        self.pacing.ready.pop(window.name, None)  # nothing waits: there is nothing to send
        return window.open()

    def _timeout_of(self, request: StepRequest) -> float:
        """The reply timeout of ``request``'s step (0 for a saga no longer in memory)."""
        saga = self.sagas.get(request.saga_id)
        return 0.0 if saga is None else float(saga.definition.steps[request.step].timeout)

    def _lanes(self, request: StepRequest) -> bool:
        """Whether ``request``'s saga takes a slot per step (a workflow) rather than one."""
        saga = self.sagas.get(request.saga_id)
        return saga is not None and saga.kind == "workflow"

    def _waiting_saga(self, request: StepRequest) -> Machine | None:
        """The saga in memory that still waits on exactly ``request``, or None."""
        saga = self.sagas.get(request.saga_id)
        if saga is None or not saga.waits_on(request):
            return None
        return saga

    def _watch_window(self, window: SendWindow) -> None:
        """A window that is full while requests wait is looked at again at its earliest slot
        deadline: slots free on their own then, whatever happens to their replies."""
        if window.check_at is None and window.blocked():
            window.check_at = window.earliest()
            self._set_timer(window.check_at, WindowCheck(window.name, window.check_at))

    def _check_window(self, check: WindowCheck, now: float) -> None:
        window = self.pacing.windows.get(check.name)
        if window is None or window.check_at != check.at:
            return  # a later check replaced this one, or the window was reset
        window.check_at = None
        self.pacing.purge(window, now)
        self._watch_window(window)

    def _forget(self, saga_id: str) -> None:
        """``saga_id`` left memory: its slot frees and its waiting request is dropped."""
        pacing = self.pacing
        if pacing.holder or pacing.waiting:
            pacing.forget(saga_id)
            if pacing.ready:
                self.schedule_flush()

    def _pump(self, sent: list[tuple[Machine, StepRequest]]) -> None:
        """Send, in order, the requests that wait in windows with free slots, arming each one's
        reply timer now. A request whose saga moved on (a new incarnation, another attempt)
        or left memory is dropped: it is no longer what the saga waits on."""
        if self.lost or self.store is None:
            return
        now = time.time()
        for window in self.pacing.take_ready():
            while len(window.used) < window.share:
                queued = self.pacing.next_waiting(window)
                if queued is None:
                    break
                request = queued.request
                saga = self._waiting_saga(request)
                if saga is None:
                    continue
                if queued.token is not None:
                    self._set_timer(
                        now + queued.delay,
                        SagaTimer(request.saga_id, saga.incarnation, queued.token),
                    )
                address = self.participants.get(window.name)
                if address is None:  # no longer registered: held, its deadline running
                    self.held.setdefault(window.name, []).append(request)
                    continue
                self.pacing.take(
                    window, request.saga_id, request.key, now + queued.delay, self._lanes(request)
                )
                self._working_on(request.saga_id)
                try:
                    self._transmit(address, request)
                except Exception as exc:
                    self._crash(request.saga_id, exc, new=False)
                    continue
                sent.append((saga, request))
            self._watch_window(window)

    def _send_waiting(self) -> None:
        """Send what waits for slots freed outside a commit, on its own."""
        sent: list[tuple[Machine, StepRequest]] = []
        self._pump(sent)
        self._send_outbox()
        self._after_sends(sent)
        self._idle()

    def _lose_lease(self, exc: LeaseLost) -> None:
        self.pacing.clear()  # nothing waiting is sent: the shard's new holder resends it all
        super()._lose_lease(exc)

    def _post(self, address: Any, message: Any) -> None:
        self.outbox.add(address, message)

    def _send_outbox(self) -> None:
        self.outbox.send_all(self.send)

    def _commit_failed(self, batch: list[_Staged], exc: Exception) -> None:
        """Nothing of the batch is durable: forget it, refuse new starts, reload the rest."""
        log.error("commit of %d saga write(s) failed: %s", len(batch), exc)
        reload: list[str] = []
        for staged in batch:
            saga = staged.saga
            if saga is None:  # a parked record: park it again after the reload
                reload.extend(
                    w.saga_id
                    for w in staged.writes
                    if isinstance(w, Transition) and w.saga_id not in reload
                )
                continue
            self.sagas.pop(saga.saga_id, None)
            self._forget(saga.saga_id)
            if staged.new:
                # An error can come after the commit succeeded (the failpoint after commit,
                # a connection lost while COMMIT returned): reload decides what to answer.
                self.unanswered[saga.saga_id] = (type(exc).__name__, str(exc))
            if saga.saga_id not in reload:
                reload.append(saga.saga_id)
        if reload:
            self.wakeupAfter(seconds(STORE_RETRY_DELAY), Reload(tuple(reload)))

    def _working_on(self, saga_id: str) -> None:
        if self.inflight is not None:
            self.inflight.working_on(saga_id)

    def _idle(self) -> None:
        if self.inflight is not None:
            self.inflight.idle()

    def receiveMsg_Stop(self, msg: Stop, sender: Any) -> None:
        self._release()
        self.send(sender, Stopped(self.setup.shard if self.setup is not None else -1))

    def receiveMsg_ActorExitRequest(self, msg: Any, sender: Any) -> None:
        self._release()

    def _release(self) -> None:
        """Let go of the shard's lease and the store: a clean stop blames nobody."""
        self.stopped = True
        if self.inflight is not None:
            self.inflight.idle()
            self.inflight.close()
            self.inflight = None
        if self.store is not None:
            if self.lease is not None:
                try:
                    self.store.release(self.lease)
                except StoreError as exc:
                    # The lease runs out on its own; only the next start waits for it.
                    log.warning("saga host could not release its shard's lease: %s", exc)
                self.lease = None
            self.store.close()
            self.store = None
