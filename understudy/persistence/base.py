"""The saga store interface: what the coordinator needs from a database, and nothing of SQL.

A backend implements :class:`SagaStore` (SQLite now; PostgreSQL can follow). The contract suite in
``tests/test_store_contract.py`` runs against every backend. The rules every backend keeps:

- :meth:`SagaStore.apply` runs a batch of writes in ONE transaction, durable when it returns.
  Writes from many sagas share that transaction (group commit): nothing a batch describes may be
  sent before ``apply`` returns, which is how write-ahead survives batching.
- A :class:`Transition` is fenced: it applies only if the row still has the writer's incarnation,
  is not terminal, and its snapshot version is older. A fenced write changes nothing (not even its
  events) and is reported as ``False``; this is what makes a stale saga actor harmless.
- A terminal status is written once and never changed.
- Every state change carries its events; the event log is append-only and is what ``understudy
  show`` prints as a saga's timeline.
- Driver errors are translated to :mod:`understudy.errors` (``StoreUnavailable`` for locked, busy,
  read-only or full databases; ``CorruptRecord`` for rows that fail to decode).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, Final

import attrs

RUNNING: Final = "running"
COMPENSATING: Final = "compensating"
COMPLETED: Final = "completed"
COMPENSATED: Final = "compensated"
FAILED: Final = "failed"  # failed, needs attention: a person must look at it

ACTIVE_STATUSES: Final = (RUNNING, COMPENSATING)
TERMINAL_STATUSES: Final = (COMPLETED, COMPENSATED, FAILED)
ALL_STATUSES: Final = ACTIVE_STATUSES + TERMINAL_STATUSES


@attrs.frozen
class Event:
    """One entry of a saga's timeline, as written."""

    kind: str
    at: float
    step: int | None = None
    attempt: int | None = None
    detail: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class EventRecord:
    """One entry of a saga's timeline, as read back (``seq`` orders the whole log)."""

    seq: int
    saga_id: str
    kind: str
    at: float
    step: int | None
    attempt: int | None
    incarnation: int
    detail: dict[str, Any]


@attrs.frozen
class SagaRecord:
    """A saga's row: identity, pinned definition, status and latest snapshot."""

    saga_id: str
    definition: str
    version: int
    status: str
    payload: bytes
    snapshot: bytes | None
    snapshot_version: int
    incarnation: int
    recovery_attempts: int
    reason: str | None
    created_at: float
    updated_at: float

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


@attrs.frozen
class NewSaga:
    """Insert a saga row (status running, incarnation 1). Applied only if the id is new."""

    saga_id: str
    definition: str
    version: int
    payload: bytes
    at: float
    events: tuple[Event, ...] = ()


@attrs.frozen
class Transition:
    """Replace a saga's snapshot and status, fenced by incarnation and snapshot version."""

    saga_id: str
    incarnation: int
    status: str
    snapshot: bytes
    snapshot_version: int
    recovery_attempts: int
    at: float
    reason: str | None = None
    events: tuple[Event, ...] = ()


Write = NewSaga | Transition


class SagaStore(abc.ABC):
    """Durable home of sagas and their timelines. One instance per process; not thread-safe."""

    @abc.abstractmethod
    def apply(self, writes: Sequence[Write]) -> list[bool]:
        """Apply ``writes`` in one durable transaction; one bool per write (False: not applied).

        On error nothing of the batch is applied and a :class:`~understudy.errors.StoreError`
        is raised.
        """

    @abc.abstractmethod
    def get(self, saga_id: str) -> SagaRecord | None:
        """The saga's row, or None."""

    def get_many(self, saga_ids: Sequence[str]) -> dict[str, SagaRecord]:
        """:meth:`get` for many sagas (the startup scan); unknown ids are left out.
        Backends override it to read them all in one query."""
        found: dict[str, SagaRecord] = {}
        for saga_id in saga_ids:
            record = self.get(saga_id)
            if record is not None:
                found[saga_id] = record
        return found

    @abc.abstractmethod
    def claim(self, saga_id: str, *, recovery: bool, at: float) -> SagaRecord | None:
        """Take ownership of an unfinished saga: bump its incarnation, and its recovery count
        when ``recovery`` is true, recording a ``claimed`` event. Returns the updated row, or
        None when the saga is unknown or already terminal. Older incarnations are fenced from
        then on."""

    def claim_all(
        self, saga_ids: Sequence[str], *, recovery: bool, at: float
    ) -> dict[str, SagaRecord]:
        """:meth:`claim` for many sagas (the startup scan); only claimed sagas are returned.
        Backends override it to claim them all in one transaction."""
        claimed: dict[str, SagaRecord] = {}
        for saga_id in saga_ids:
            record = self.claim(saga_id, recovery=recovery, at=at)
            if record is not None:
                claimed[saga_id] = record
        return claimed

    @abc.abstractmethod
    def unfinished(self) -> list[str]:
        """Ids of every saga that is not terminal, oldest first."""

    @abc.abstractmethod
    def list_sagas(self, status: str | None = None, limit: int = 100) -> list[SagaRecord]:
        """Sagas, newest first, optionally only those with ``status``."""

    @abc.abstractmethod
    def count_by_status(self) -> dict[str, int]:
        """How many sagas are in each status (statuses with none are left out)."""

    @abc.abstractmethod
    def events(self, saga_id: str) -> list[EventRecord]:
        """The saga's timeline, in the order it was written."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection. Idempotent."""

    def __enter__(self) -> SagaStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
