"""The in-memory saga store: a reference backend for tests and experiments.

It keeps the same contract as :class:`~understudy.persistence.sqlite.SQLiteStore` (fencing,
write-once terminal status, all-or-nothing batches, event details stored as msgpack) so the
contract suite in ``tests/test_store_contract.py`` runs against both. It is not durable: it dies
with the process, so never use it where a saga must survive a crash.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import attrs

from understudy import codec
from understudy.errors import StoreError
from understudy.persistence.base import (
    ACTIVE_STATUSES,
    RUNNING,
    TERMINAL_STATUSES,
    Event,
    EventRecord,
    NewSaga,
    SagaRecord,
    SagaStore,
    Transition,
    Write,
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


class MemoryStore(SagaStore):
    """A :class:`SagaStore` held in dicts and lists; for tests and experiments only.

    Nothing is written anywhere: the sagas and their timelines die with the process.
    """

    def __init__(self) -> None:
        self._sagas: dict[str, SagaRecord] = {}
        self._events: list[_StoredEvent] = []
        self._closed = False

    def apply(self, writes: Sequence[Write]) -> list[bool]:
        self._check_open()
        # Stage every change first and publish only when the whole batch succeeded, so a write
        # that raises (an unencodable event detail, say) leaves nothing of the batch behind.
        staged: dict[str, SagaRecord] = {}
        new_events: list[_StoredEvent] = []
        results: list[bool] = []
        for write in writes:
            current = staged.get(write.saga_id, self._sagas.get(write.saga_id))
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
                applied = (
                    current is not None
                    and current.incarnation == write.incarnation
                    and current.status not in TERMINAL_STATUSES
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
            else:  # pragma: no cover - guarded by the type checker
                raise TypeError(f"not a store write: {write!r}")
            if applied:
                first_seq = self._next_seq() + len(new_events)
                new_events.extend(
                    self._stored(first_seq + offset, write.saga_id, incarnation, event)
                    for offset, event in enumerate(write.events)
                )
            results.append(applied)
        self._sagas.update(staged)
        self._events.extend(new_events)
        return results

    def get(self, saga_id: str) -> SagaRecord | None:
        self._check_open()
        return self._sagas.get(saga_id)

    def claim(self, saga_id: str, *, recovery: bool, at: float) -> SagaRecord | None:
        self._check_open()
        current = self._sagas.get(saga_id)
        if current is None or current.status in TERMINAL_STATUSES:
            return None
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
        return record

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
