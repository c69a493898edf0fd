"""The in-memory saga store: a reference backend for tests and experiments.

It keeps the same contract as :class:`~understudy.persistence.sqlite.SQLiteStore` (fencing,
write-once terminal status, all-or-nothing batches, event details and command arguments stored as
msgpack) so the contract suite in ``tests/test_store_contract.py`` runs against both. It is not
durable: it dies with the process, so never use it where a saga must survive a crash.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import attrs

from understudy import codec
from understudy.errors import LeaseLost, StoreError
from understudy.persistence.base import (
    ACTIVE_STATUSES,
    EVERYONE,
    PENDING,
    RUNNING,
    TERMINAL_STATUSES,
    CommandDone,
    CommandRecord,
    Event,
    EventRecord,
    Lease,
    NewSaga,
    Note,
    OperatorCommand,
    SagaRecord,
    SagaStore,
    Transition,
    Write,
)
from understudy.persistence.memory_eventlog import MemoryEventLog
from understudy.persistence.rows import (
    check_done,
    command_record,
    command_row,
    fenced_statuses,
    shard_count_mismatch,
)


@attrs.frozen
class _StoredEvent:
    """An event as held in memory: its detail is encoded, as the SQLite backend stores it."""

    seq: int
    saga_id: str
    kind: str
    at: float
    step: int | None
    attempt: int | None
    incarnation: int
    detail: bytes | None


@attrs.frozen
class _StoredCommand:
    """A command as held in memory: a row as the SQL backends store it (COMMAND_COLUMNS), its
    arguments encoded and checksummed, read back through the same decoding (so a caller never
    holds the store's own dict)."""

    id: int
    saga_id: str
    shard: int
    verb: str
    args: bytes
    who: str
    why: str
    at: float
    command_sum: int
    state: str
    outcome: str | None = None
    done_at: float | None = None

    def record(self) -> CommandRecord:
        return command_record(attrs.astuple(self, recurse=False))


class MemoryStore(MemoryEventLog, SagaStore):
    """A :class:`SagaStore` held in dicts and lists; for tests and experiments only.

    Nothing is written anywhere: the sagas and their timelines die with the process.
    """

    def __init__(self) -> None:
        self._sagas: dict[str, SagaRecord] = {}
        self._events: list[_StoredEvent] = []
        self._closed = False
        self._shards: int | None = None
        self._leases: dict[int, Lease] = {}
        self._commands: dict[int, _StoredCommand] = {}
        self._last_command = 0  # ids are never reused, as an autoincrement key's

    def apply(self, writes: Sequence[Write], lease: Lease | None = None) -> list[bool]:
        self._check_open()
        self._check_lease(lease)
        # Stage every change first and publish only when the whole batch succeeded, so a write
        # that raises (an unencodable event detail, say) leaves nothing of the batch behind.
        staged: dict[str, SagaRecord] = {}
        staged_commands: dict[int, _StoredCommand] = {}
        new_events: list[_StoredEvent] = []
        results: list[bool] = []
        for write in writes:
            current = staged.get(write.saga_id, self._sagas.get(write.saga_id))
            incarnation: int | None
            if isinstance(write, NewSaga):
                applied = current is None
                incarnation = 1
                if applied:
                    at = float(write.at)
                    staged[write.saga_id] = SagaRecord(
                        saga_id=write.saga_id,
                        definition=write.definition,
                        version=write.version,
                        status=RUNNING,
                        payload=write.payload,
                        snapshot=None,
                        snapshot_version=0,
                        incarnation=1,
                        recovery_attempts=0,
                        reason=None,
                        created_at=at,
                        updated_at=at,
                    )
            elif isinstance(write, Transition):
                fenced = fenced_statuses(write)
                applied = (
                    current is not None
                    and current.incarnation == write.incarnation
                    and current.status not in fenced
                    and current.snapshot_version < write.snapshot_version
                )
                incarnation = write.incarnation
                if applied:
                    assert current is not None
                    staged[write.saga_id] = attrs.evolve(
                        current,
                        status=write.status,
                        snapshot=write.snapshot,
                        snapshot_version=write.snapshot_version,
                        recovery_attempts=write.recovery_attempts,
                        reason=write.reason,
                        updated_at=float(write.at),
                    )
            elif isinstance(write, CommandDone):
                check_done(write)
                stored = staged_commands.get(write.command_id, self._commands.get(write.command_id))
                applied = (
                    stored is not None
                    and stored.saga_id == write.saga_id
                    and stored.state == PENDING
                    and (
                        write.incarnation is None
                        or (current is not None and current.incarnation == write.incarnation)
                    )
                )
                # Its events go to the row's incarnation; without a row there is no timeline.
                incarnation = None if current is None else current.incarnation
                if applied:
                    assert stored is not None
                    staged_commands[write.command_id] = attrs.evolve(
                        stored, state=write.state, outcome=write.outcome, done_at=float(write.at)
                    )
            else:  # pragma: no cover - guarded by the type checker
                raise TypeError(f"not a store write: {write!r}")
            if applied and incarnation is not None:
                first_seq = self._next_seq() + len(new_events)
                new_events.extend(
                    self._stored(first_seq + offset, write.saga_id, incarnation, event)
                    for offset, event in enumerate(write.events)
                )
            results.append(applied)
        self._sagas.update(staged)
        self._commands.update(staged_commands)
        self._events.extend(new_events)
        if lease is not None:
            self._set_blame(lease.shard, ())
        return results

    def note(self, notes: Sequence[Note], lease: Lease | None = None) -> list[bool]:
        self._check_open()
        self._check_lease(lease)  # and the blame stays as it is
        new_events: list[_StoredEvent] = []
        results: list[bool] = []
        for note in notes:
            current = self._sagas.get(note.saga_id)
            applied = (
                current is not None
                and current.incarnation == note.incarnation
                and current.status not in TERMINAL_STATUSES
            )
            if applied:
                first_seq = self._next_seq() + len(new_events)
                new_events.extend(
                    self._stored(first_seq + offset, note.saga_id, note.incarnation, event)
                    for offset, event in enumerate(note.events)
                )
            results.append(applied)
        self._events.extend(new_events)
        return results

    def submit(self, command: OperatorCommand) -> CommandRecord:
        self._check_open()
        row = command_row(command)  # raises for unencodable arguments, before an id is used
        self._last_command += 1
        stored = _StoredCommand(self._last_command, *row)
        self._commands[stored.id] = stored
        return stored.record()

    def commands(
        self,
        *,
        shard: int | None = None,
        saga_id: str | None = None,
        pending: bool = True,
        limit: int = 100,
    ) -> list[CommandRecord]:
        self._check_open()
        found = [
            stored.record()
            for stored in self._commands.values()  # in id order: ids are inserted growing
            if (not pending or stored.state == PENDING)
            and (shard is None or stored.shard == shard)
            and (saga_id is None or stored.saga_id == saga_id)
        ]
        return found if limit < 0 else found[:limit]

    def command(self, command_id: int) -> CommandRecord | None:
        self._check_open()
        stored = self._commands.get(command_id)
        return None if stored is None else stored.record()

    def get(self, saga_id: str) -> SagaRecord | None:
        self._check_open()
        return self._sagas.get(saga_id)

    def claim_all(
        self,
        saga_ids: Sequence[str],
        *,
        recovery: bool,
        at: float,
        lease: Lease | None = None,
    ) -> dict[str, SagaRecord]:
        self._check_open()
        self._check_lease(lease)
        claimed: dict[str, SagaRecord] = {}
        for saga_id in saga_ids:
            current = self._sagas.get(saga_id)
            if current is None or current.status in TERMINAL_STATUSES:
                continue
            record = attrs.evolve(
                current,
                incarnation=current.incarnation + 1,
                recovery_attempts=current.recovery_attempts + (1 if recovery else 0),
                updated_at=float(at),
            )
            detail = {
                "recovery": recovery,
                "recovery_attempts": record.recovery_attempts,
                "pid": os.getpid(),
            }
            event = self._stored(
                self._next_seq(), saga_id, record.incarnation, Event("claimed", at, detail=detail)
            )
            self._sagas[saga_id] = record
            self._events.append(event)
            claimed[saga_id] = record
        return claimed

    # --- ownership --------------------------------------------------------------------------

    def fix_shards(self, shards: int) -> int:
        self._check_open()
        if shards < 1:
            raise ValueError(f"shards must be at least 1, got {shards}")
        if self._shards is None:
            self._shards = shards
            blamed = EVERYONE if self._sagas else ()
            self._leases = {n: Lease(n, "", 0, 0.0, blamed) for n in range(shards)}
        elif self._shards != shards:
            raise shard_count_mismatch("memory://", self._shards, shards)
        return self._shards

    def leases(self) -> list[Lease]:
        self._check_open()
        return [self._leases[n] for n in sorted(self._leases)]

    def now(self) -> float:
        return time.time()

    def acquire(
        self, shard: int, holder: str, ttl: float, about: dict[str, Any] | None = None
    ) -> Lease | None:
        current = self._lease(shard)
        now = self.now()
        if current.holder and current.holder != holder and current.expires_at > now:
            return None
        lease = Lease(
            shard, holder, current.epoch + 1, now + ttl, current.blamed, dict(about or {})
        )
        self._leases[shard] = attrs.evolve(lease, blamed=EVERYONE)
        return lease

    def renew(self, lease: Lease, ttl: float, about: dict[str, Any] | None = None) -> Lease:
        self._check_lease(lease)
        about = lease.about if about is None else dict(about)
        self._leases[lease.shard] = attrs.evolve(
            self._leases[lease.shard], expires_at=self.now() + ttl, about=about
        )
        return attrs.evolve(lease, expires_at=self._leases[lease.shard].expires_at, about=about)

    def release(self, lease: Lease) -> None:
        current = self._lease(lease.shard)
        if current.epoch == lease.epoch:
            self._leases[lease.shard] = attrs.evolve(current, holder="", expires_at=0.0, blamed=())

    def expire(self, shard: int, epoch: int) -> None:
        current = self._lease(shard)
        if current.epoch == epoch:
            self._leases[shard] = attrs.evolve(current, expires_at=0.0)

    def blame(self, lease: Lease, saga_ids: Sequence[str] | None) -> None:
        self._check_lease(lease)
        self._set_blame(lease.shard, EVERYONE if saga_ids is None else tuple(saga_ids))

    def _lease(self, shard: int) -> Lease:
        self._check_open()
        if shard not in self._leases:
            raise StoreError(f"the in-memory saga store has no shard {shard}; fix the shard count")
        return self._leases[shard]

    def _check_lease(self, lease: Lease | None) -> None:
        if lease is None:
            return
        current = self._lease(lease.shard)
        if current.epoch != lease.epoch:
            raise LeaseLost(
                f"shard {lease.shard}'s lease at epoch {lease.epoch} is no longer held (epoch "
                f"{current.epoch}, holder {current.holder or 'nobody'!r}): another saga host took "
                "the shard over; this one stops and writes nothing more"
            )

    def _set_blame(self, shard: int, blamed: tuple[str, ...] | None) -> None:
        self._leases[shard] = attrs.evolve(self._leases[shard], blamed=blamed)

    def unfinished(self) -> list[str]:
        self._check_open()
        active = [r for r in self._sagas.values() if r.status in ACTIVE_STATUSES]
        active.sort(key=lambda r: (r.created_at, r.saga_id))
        return [r.saga_id for r in active]

    def list_sagas(self, status: str | None = None, limit: int = 100) -> list[SagaRecord]:
        self._check_open()
        records = [r for r in self._sagas.values() if status is None or r.status == status]
        records.sort(key=lambda r: r.created_at, reverse=True)
        return records if limit < 0 else records[:limit]  # a negative LIMIT is no limit in SQL

    def count_by_status(self) -> dict[str, int]:
        self._check_open()
        counts: dict[str, int] = {}
        for record in self._sagas.values():
            counts[record.status] = counts.get(record.status, 0) + 1
        return counts

    def events(self, saga_id: str) -> list[EventRecord]:
        self._check_open()
        return [
            EventRecord(
                e.seq,
                e.saga_id,
                e.kind,
                e.at,
                e.step,
                e.attempt,
                e.incarnation,
                codec.decode(e.detail, f"event {e.seq} of saga {e.saga_id!r}") if e.detail else {},
            )
            for e in self._events
            if e.saga_id == saga_id
        ]

    def last_seq(self) -> int:
        self._check_open()
        return self._events[-1].seq if self._events else 0

    def close(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the in-memory saga store is closed; open a new one")

    def _next_seq(self) -> int:
        return self._events[-1].seq + 1 if self._events else 1

    @staticmethod
    def _stored(seq: int, saga_id: str, incarnation: int, event: Event) -> _StoredEvent:
        detail = codec.encode(event.detail, "event detail") if event.detail else None
        return _StoredEvent(
            seq,
            saga_id,
            event.kind,
            float(event.at),
            event.step,
            event.attempt,
            incarnation,
            detail,
        )
