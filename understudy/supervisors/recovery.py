"""Recovery: how a saga host takes its shard and resumes every unfinished saga of it.

The rule this module keeps (the one every durable engine keeps): a saga's outcome is read from
the store before anything is re-run. A host that takes a shard (a runtime's first host, or the
host that replaces one that died) claims each unfinished saga with a new incarnation, which
fences every older copy of it, and resumes it from its last durable snapshot: outstanding
requests are sent again under the same idempotency keys, so a participant that already applied
one replays its recorded outcome instead of applying it twice (I3, I6, I9). A saga that ended
meanwhile only has its end reported again.

Taking the shard comes first: a host works only under its shard's lease (see
:mod:`understudy.supervisors.leases`), and every write it makes is fenced by the lease's epoch.
Before counting a recovery against a saga, the host asks whom its predecessor's death is
blamed on (the batch the store names, and the input its marker file names): only those sagas
get a recovery counted against the persisted cap (I11), so innocent sagas that shared the
host are never parked for someone else's crash (I12). A saga whose stored state cannot be
trusted (a checksum that fails, a snapshot that makes no sense for its definition) is parked
with the reason, never acted on.

:class:`ShardRecovery` is a mixin of the saga host (:mod:`understudy.supervisors.host`), which
owns the state it works on.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import attrs

from understudy.actors import machines
from understudy.actors.batching import Outbox
from understudy.actors.instance import finished_from_record
from understudy.actors.machines import Machine
from understudy.actors.system import ActorExitRequest
from understudy.actors.watch import process_identity
from understudy.actors.workflow import Workflow
from understudy.definitions import SagaDefinition
from understudy.errors import (
    CorruptRecord,
    LeaseLost,
    StoreError,
    StoreUnavailable,
    UnderstudyError,
)
from understudy.messages import SagaFinished, StepRequest
from understudy.persistence import SagaStore, open_store
from understudy.persistence.base import (
    EVERYONE,
    FAILED,
    Event,
    Lease,
    NewSaga,
    Note,
    SagaRecord,
    Transition,
    shard_of,
)
from understudy.supervisors.inflight import InFlight, marker_path
from understudy.supervisors.leases import about_me, renew_every, take_over_dead
from understudy.supervisors.protocol import (
    HostLeaseLost,
    HostReady,
    HostRetrying,
    HostSetup,
    HostStarted,
    HostStartFailed,
    RenewLease,
    RetrySetup,
    StandDown,
)

log = logging.getLogger("understudy.host")

SETUP_RETRY_DELAY = 1.0
RECOVERY_CHUNK = 500  # sagas claimed per transaction by the startup scan


def transient(exc: UnderstudyError) -> bool:
    """Whether waiting may cure ``exc``: the store busy or locked, unreachable, cut off or
    timed out (what the stores report as :class:`StoreUnavailable`). A lost lease, a shard
    count that does not match, damaged data or a store that refuses this configuration (a bad
    URL, credentials, a missing table) stay as they are however often the host retries."""
    return isinstance(exc, StoreUnavailable)


def seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


class ShardRecovery:
    """Taking a shard and resuming its sagas; mixed into the saga host, which provides the
    state below and the methods :meth:`_run`, :meth:`_stage_raw`, :meth:`_working_on` and
    :meth:`_idle`."""

    setup: HostSetup | None
    store: SagaStore | None
    coordinator: Any
    definitions: dict[tuple[str, int], SagaDefinition]
    sagas: dict[str, Machine]
    workflow_class: type[Workflow]
    held: dict[str, list[StepRequest]]
    batch: list[Any]
    timers: list[Any]
    unanswered: dict[str, tuple[str, str]]
    inflight: InFlight | None
    lease: Lease | None
    lost: bool
    stopped: bool
    outbox: Outbox
    # The sagas this host's scan has counted a recovery against, and the lease epoch it
    # counted them under. A scan that fails after a claim committed is run again, and must not
    # count the same death twice: a store flapping for long would otherwise park the blamed
    # sagas for its own failures (I11, I12). None (the class default) until a scan counts.
    counted: set[str] | None = None
    scanned: set[str] | None = None  # the sagas a scan found, across its retries
    counted_epoch: int = 0

    if TYPE_CHECKING:  # provided by the saga host and by Thespian's Actor, not here
        myAddress: Any

        def _run(self, saga: Machine, step: Any, new: NewSaga | None = None) -> None: ...

        def _stage_raw(self, saga_id: str, write: Transition, finished: SagaFinished) -> None: ...

        def _working_on(self, saga_id: str) -> None: ...

        def _idle(self) -> None: ...

        def _start_polling(self) -> None: ...

        def send(self, address: Any, message: Any) -> None: ...

        def wakeupAfter(self, delay: timedelta, payload: Any = None) -> None: ...

    def _open_and_recover(self) -> None:
        """Open the store and resume this shard's sagas; on a store error, report it and try
        again shortly (a host restarted while the store is busy must not stay idle)."""
        assert self.setup is not None
        shard = self.setup.shard
        if self.lost or self.stopped:
            return
        try:
            if self.store is None:
                self.store = open_store(self.setup.store.location, **self.setup.store.options)
            if self.lease is None:
                self.lease = self._adopt_or_acquire(self.store)
                if self.lease is None:
                    # Another holder's lease runs: an earlier runtime's host whose owner just
                    # died and that has not noticed yet (it releases the shard when it does),
                    # or a holder on another machine (its lease expires unless renewed). Wait
                    # rather than work the same sagas in parallel.
                    log.warning("saga host %d waits: its shard is held by another holder", shard)
                    self.wakeupAfter(seconds(SETUP_RETRY_DELAY), RetrySetup())
                    return
                self.wakeupAfter(seconds(renew_every(self.setup.lease_ttl)), RenewLease())
            resumed = self._recover()
        except LeaseLost as exc:
            self._lose_lease(exc)
            return
        except UnderstudyError as exc:
            log.error("saga host %d cannot recover yet (%s); retrying", shard, exc)
            if transient(exc):
                self.send(self.coordinator, HostRetrying(shard, os.getpid(), str(exc)))
            else:
                self.send(self.coordinator, HostReady(shard, os.getpid(), 0, error=str(exc)))
            # Retried either way: a host restarted long after the start has nobody to fail.
            self.wakeupAfter(seconds(SETUP_RETRY_DELAY), RetrySetup())
            return
        self.send(self.coordinator, HostReady(shard, os.getpid(), resumed))
        self._start_polling()

    def receiveMsg_StandDown(self, msg: StandDown, sender: Any) -> None:
        # The runtime shuts its actor system down after a failed start; on the in-process base
        # no actor is told (no exit request reaches the hosts), so close the store now rather
        # than leave its connection to the garbage collector. The lease is not released: the
        # runtime gives the start's leases back keeping their blame, where a release would
        # blame nobody and the next holder would forget whom the last death is blamed on (I12).
        self.stopped = True
        if self.inflight is not None:
            self.inflight.idle()  # nothing crashed here: the store's blame stands
            self.inflight.close()
            self.inflight = None
        self.lease = None
        if self.store is not None:
            self.store.close()
            self.store = None

    def _about(self) -> dict[str, Any]:
        """What this host's lease says of it: on multi-process bases its coordinator too (the
        process it was forked from), so that a host whose coordinator died is waited for, not
        taken for a live runtime's (leases.holder_state)."""
        assert self.setup is not None
        multiprocess = self.setup.watch_interval is not None
        return about_me(self.setup.app, process_identity(os.getppid()) if multiprocess else None)

    def _adopt_or_acquire(self, store: SagaStore) -> Lease | None:
        """The lease the runtime's start took for this shard (renewed now: the start may have
        been slow), or, for a host restarted later, the shard's lease taken anew: at once from
        a holder of this runtime or one whose process has exited."""
        assert self.setup is not None
        if self.setup.lease is not None:
            # The lease says who holds it from now on: this process, not the application's.
            renewed = store.renew(self.setup.lease, self.setup.lease_ttl, self._about())
            # Dropped only once renewed: after a store error the retry renews it again. Taking
            # the shard anew instead would start an epoch that blames everyone, forgetting whom
            # the previous holder's death is blamed on (I12).
            self.setup = attrs.evolve(self.setup, lease=None)
            return renewed
        shard, holder, ttl = self.setup.shard, self.setup.runtime, self.setup.lease_ttl
        about = self._about()
        lease = store.acquire(shard, holder, ttl, about)
        if lease is None and take_over_dead(store, store.leases()[shard]):
            lease = store.acquire(shard, holder, ttl, about)
        return lease

    def _recover(self) -> int:
        """Load every unfinished saga of this shard: the startup scan after any crash."""
        assert self.setup is not None and self.store is not None and self.lease is not None
        path = marker_path(self.setup.store.location, self.setup.shard)
        if self.inflight is None and path is not None:
            self.inflight = InFlight(path, self.lease.epoch)
        blamed = blamed_on(
            self.lease.blamed, self.inflight.blamed() if self.inflight is not None else set()
        )
        if self.inflight is not None:
            self.inflight.recovering()
        mine = [
            sid
            for sid in self.store.unfinished()
            if shard_of(sid, self.setup.shards) == self.setup.shard
        ]
        # What a scan that failed part-way had already resumed counts as resumed too: by the
        # retry those sagas may have finished, and the start would report fewer than it did.
        found = set(mine) if self.scanned is None else self.scanned | set(mine)
        self.scanned = found
        for chunk in range(0, len(mine), RECOVERY_CHUNK):
            self._load(mine[chunk : chunk + RECOVERY_CHUNK], blamed, scan=True)
        # The scan is over: from now on a death blames only the batch or input it names.
        self.store.blame(self.lease, ())
        self.counted = None  # no scan runs again under this lease
        self.scanned = None
        if self.inflight is not None:
            self.inflight.idle()
        return len(found)

    def _renew(self) -> None:
        if self.store is None or self.lease is None or self.setup is None:
            return
        try:
            self.lease = self.store.renew(self.lease, self.setup.lease_ttl)
        except LeaseLost as exc:
            self._lose_lease(exc)
            return
        except StoreError as exc:
            # Not lost, only not renewed (a busy store): the lease may still run out, and then
            # the next write finds out whether another holder took the shard.
            log.warning("saga host %d could not renew its lease (%s)", self.setup.shard, exc)
        self.wakeupAfter(seconds(renew_every(self.setup.lease_ttl)), RenewLease())

    def _lose_lease(self, exc: LeaseLost) -> None:
        """Another holder owns this shard now: drop everything in memory (nothing staged was
        sent: requests leave only after their commit), write nothing more, and stop."""
        shard = self.setup.shard if self.setup is not None else -1
        log.error("saga host %d stops: %s", shard, exc)
        self.lost = True
        self.sagas.clear()
        self.batch = []
        self.timers = []
        self.held.clear()
        self.outbox = Outbox()
        self.lease = None
        if self.inflight is not None:
            self.inflight.close()  # the file is the new holder's now: leave it as it is
            self.inflight = None
        if self.store is not None:
            self.store.close()
            self.store = None
        self.send(self.coordinator, HostLeaseLost(shard, str(exc)))
        self.send(self.myAddress, ActorExitRequest())

    def _load(
        self, saga_ids: list[str], blamed: set[str] | None = None, scan: bool = False
    ) -> None:
        """Claim stored sagas (new incarnations, one transaction) and resume them, or park
        those that cannot run."""
        assert self.store is not None
        now = time.time()
        runnable: list[str] = []
        suspended: list[Note] = []
        records = self.store.get_many(saga_ids)  # one query, not one per saga
        for saga_id in saga_ids:
            record = records.get(saga_id)
            failure = self.unanswered.pop(saga_id, None)
            if failure is not None:
                self._answer_start(saga_id, record, failure)
            if record is None:
                continue
            if record.terminal:
                # A crash between the terminal commit and the report to the coordinator
                # must not leave the caller waiting.
                self.send(self.coordinator, finished_from_record(record))
            elif (record.definition, record.version) not in self.definitions:
                suspended.append(self._suspend(record, now))
            else:
                runnable.append(saga_id)
        if suspended:
            self.store.note(suspended, lease=self.lease)
        if self.inflight is not None:
            self.inflight.recovering()  # a crash while loading these is the scan's, not theirs
        # Only the sagas blamed for the crash get a recovery counted (None: all of them), and
        # only once per death: not again when a scan is retried.
        counted = runnable if blamed is None else [s for s in runnable if s in blamed]
        if scan:
            already = self._counted_already()
            counted = [s for s in counted if s not in already]
        claimed = self.store.claim_all(counted, recovery=True, at=now, lease=self.lease)
        if scan:
            # Committed: counted. (A connection lost while committing leaves it unknown; then
            # a retried scan counts the death again, as before this record existed.)
            self._counted_now(counted)
        if len(counted) < len(runnable):
            chosen = set(counted)
            rest = [s for s in runnable if s not in chosen]
            claimed.update(self.store.claim_all(rest, recovery=False, at=now, lease=self.lease))
        for saga_id in runnable:
            record = claimed.get(saga_id)
            if record is None:  # ended meanwhile (another incarnation finished it)
                ended = self.store.get(saga_id)
                if ended is not None and ended.terminal:
                    self.send(self.coordinator, finished_from_record(ended))
                continue
            self._working_on(saga_id)
            self._resume_record(record, now)
        if scan and self.inflight is not None:
            self.inflight.recovering()
        else:
            self._idle()

    def _counted_already(self) -> set[str]:
        """The sagas a recovery was counted against under this host's current lease."""
        assert self.lease is not None
        if self.counted is None or self.counted_epoch != self.lease.epoch:
            return set()
        return self.counted

    def _counted_now(self, saga_ids: list[str]) -> None:
        assert self.lease is not None
        if self.counted is None or self.counted_epoch != self.lease.epoch:
            self.counted, self.counted_epoch = set(), self.lease.epoch
        self.counted.update(saga_ids)

    def _answer_start(
        self, saga_id: str, record: SagaRecord | None, failure: tuple[str, str]
    ) -> None:
        """Answer a start whose commit failed, now that the store says whether it exists."""
        if record is None:
            self.send(self.coordinator, HostStartFailed(saga_id, *failure))
        else:
            self.send(self.coordinator, HostStarted(saga_id, existing=False))

    def _suspend(self, record: SagaRecord, now: float) -> Note:
        """I15: a saga pinned to a definition version this runtime lacks is left as it is
        stored (not claimed, its row not changed), to resume under a runtime that has that
        version. The note returned puts a ``suspended`` event in its timeline, saying so."""
        known = sorted(f"{n} v{v}" for n, v in self.definitions)
        log.error(
            "saga %s was started under definition %r v%d, which this runtime does not have "
            "(it has: %s); it stays %s, untouched, and resumes when understudy starts with "
            "that version registered",
            record.saga_id,
            record.definition,
            record.version,
            ", ".join(known) or "none",
            record.status,
        )
        detail = {
            "definition": record.definition,
            "version": record.version,
            "registered": known,
            "pid": os.getpid(),
        }
        return Note(record.saga_id, record.incarnation, (Event("suspended", now, detail=detail),))

    def _resume_record(self, record: SagaRecord, now: float) -> None:
        assert self.setup is not None
        definition = self.definitions[(record.definition, record.version)]
        if record.recovery_attempts > self.setup.policy.max_recovery_attempts:
            self._park_record(
                record,
                f"recovered {record.recovery_attempts} times without "
                "progress (cap max_recovery_attempts="
                f"{self.setup.policy.max_recovery_attempts})",
                now,
            )
            return
        saga = self._restore(record, definition)
        if saga is None:
            return
        self.sagas[record.saga_id] = saga
        self._run(saga, lambda: saga.resume(now))

    def _restore(self, record: SagaRecord, definition: SagaDefinition) -> Machine | None:
        """The saga as stored, or None after parking it when its payload or snapshot is
        unreadable, fails its checksum, or makes no sense for its definition."""
        try:
            return machines.from_record(record, definition, self.workflow_class)
        except CorruptRecord as exc:
            self._park_unreadable(record, str(exc), time.time())
            return None

    def _park_record(self, record: SagaRecord, reason: str, now: float) -> None:
        """Park a saga as failed-needs-attention, listing what is outstanding (I2)."""
        saga = self._restore(record, self.definitions[(record.definition, record.version)])
        if saga is None:
            return
        log.error("parking saga %s: %s", record.saga_id, reason)
        self.sagas[record.saga_id] = saga
        self._run(saga, lambda: saga.park(reason, now))

    def _park_unreadable(self, record: SagaRecord, reason: str, now: float) -> None:
        """Park a saga whose stored state cannot be read, keeping its bytes for a person."""
        log.error("parking saga %s: %s", record.saga_id, reason)
        outstanding = (
            f"everything: the saga's state cannot be read; compare each participant's ledger "
            f"entries for keys {record.saga_id}:<step>:do and :undo",
        )
        detail = {"reason": reason, "outstanding": list(outstanding)}
        self._stage_raw(
            record.saga_id,
            Transition(
                record.saga_id,
                record.incarnation,
                FAILED,
                record.snapshot or b"",
                record.snapshot_version + 1,
                record.recovery_attempts,
                now,
                reason,
                (Event(FAILED, now, detail=detail),),
            ),
            SagaFinished(record.saga_id, FAILED, reason, outstanding),
        )


def blamed_on(stored: tuple[str, ...] | None, local: set[str] | None) -> set[str] | None:
    """Whom a predecessor's death is blamed on: the batch the store names, plus the input the
    marker file names; None (everyone) when either knows nothing narrower."""
    if stored is EVERYONE or local is None:
        return None
    return set(stored) | local
