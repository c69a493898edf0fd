"""The saga store interface: what the coordinator needs from a database, and nothing of SQL.

A backend implements :class:`SagaStore` (SQLite now; PostgreSQL can follow). The contract suite in
``tests/test_store_contract.py`` runs against every backend. The rules every backend keeps:

- :meth:`SagaStore.apply` runs a batch of writes in ONE transaction, durable when it returns.
  Writes from many sagas share that transaction (group commit): nothing a batch describes may be
  sent before ``apply`` returns, which is how write-ahead survives batching.
- A :class:`Transition` is fenced: it applies only if the row still has the writer's incarnation,
  is not terminal, and its snapshot version is older. A fenced write changes nothing (not even its
  events) and is reported as ``False``; this is what makes a stale saga actor harmless.
- Ownership: the shard count is fixed in the store when it is created
  (:meth:`SagaStore.fix_shards`). A saga host holds its shard through a :class:`Lease`
  (holder, epoch, expiry in the database's own clock), taken with :meth:`SagaStore.acquire`
  and kept with :meth:`SagaStore.renew`. Every write a host makes (``apply``, ``claim_all``,
  ``blame``) passes its lease and is applied only while that lease's epoch is still the
  shard's: after another holder took the shard, the write raises
  :class:`~understudy.errors.LeaseLost` and nothing of it is applied. So a host that was
  paused or cut off past its lease can never overwrite its successor's work.
- Blame for a host death lives in the store, per batch: before a host commits a batch it records
  the batch's sagas with :meth:`SagaStore.blame`; a successful ``apply`` under the lease clears
  it; a clean :meth:`SagaStore.release` leaves nobody to blame. The next holder reads what was
  left in :attr:`Lease.blamed`.
- Integrity: every saga row and event row carries a checksum written in the same transaction
  (:mod:`understudy.persistence.integrity`); a row that fails it is returned with ``corrupt`` set
  (a short reason), never raised for a whole query, so one damaged saga does not stop the others.
- A terminal status is written once and never changed.
- Every state change carries its events; the event log is append-only and is what ``understudy
  show`` prints as a saga's timeline. What a runtime says about a saga it leaves alone (recovery
  suspending a saga whose definition version it lacks) is a :class:`Note`: events appended
  without changing the saga's row (:meth:`SagaStore.note`).
- Choreography's event log (:meth:`SagaStore.append_events` and the methods after it): an event
  id is appended once, an acknowledgement recorded once per (subscriber, event), both in one
  transaction with what they came with; what a subscriber has not acknowledged is computed,
  never stored, so only its own acknowledgement takes an event off its list
  (:mod:`understudy.persistence.eventlog`).
- Driver errors are translated to :mod:`understudy.errors` (``StoreUnavailable`` for locked, busy,
  read-only or full databases; ``CorruptRecord`` for rows that fail to decode).
"""

from __future__ import annotations

import abc
import zlib
from collections.abc import Sequence
from typing import Any, Final

import attrs

from understudy import failpoints

RUNNING: Final = "running"
COMPENSATING: Final = "compensating"
COMPLETED: Final = "completed"
COMPENSATED: Final = "compensated"
FAILED: Final = "failed"  # failed, needs attention: a person must look at it

#: What became of an operator's command (:class:`CommandRecord.state`).
PENDING: Final = "pending"  # submitted, not applied yet: the saga's owner applies it
APPLIED: Final = "applied"
REFUSED: Final = "refused"
COMMAND_STATES: Final = (PENDING, APPLIED, REFUSED)

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
    #: Why this row cannot be trusted (fails its checksum or does not decode); None when intact.
    corrupt: str | None = None


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
    #: Why this row cannot be trusted (a checksum that fails); None when intact. A corrupt row is
    #: never acted on: its saga parks with this reason.
    corrupt: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


#: ``Lease.blamed`` when nothing narrower is known: the previous holder died without saying what
#: it was doing (or while recovering), so every saga of the shard gets a recovery counted.
EVERYONE: Final = None


@attrs.frozen
class Lease:
    """A holder's claim on one shard, valid while ``epoch`` is the shard's current epoch.

    ``expires_at`` is in the database's clock (seconds since the epoch), never a node's.
    ``blamed`` is what the previous holder left when this lease was acquired: the sagas its death
    is blamed on (empty: nobody, it stopped cleanly or between batches), or :data:`EVERYONE`.
    ``about`` says who holds it (host name, process ids), for people and for the start check.
    """

    shard: int
    holder: str
    epoch: int
    expires_at: float
    blamed: tuple[str, ...] | None = ()
    about: dict[str, Any] = attrs.field(factory=dict)


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
    #: Applies to a saga parked as failed too (never to a completed or compensated one): an
    #: operator's verb takes a parked saga up again (retry, resolve, cancel).
    reopen: bool = False
    #: Applies to a saga that completed too (never to a compensated or failed one): a child
    #: saga whose parent compensates the step that ran it is compensated in turn.
    unwind: bool = False


@attrs.frozen
class Note:
    """Append ``events`` to an unfinished saga's timeline and change nothing of its row (not its
    snapshot, version, status or ``updated_at``). Applied only while the saga is not terminal
    and still at ``incarnation``."""

    saga_id: str
    incarnation: int
    events: tuple[Event, ...]


@attrs.frozen
class OperatorCommand:
    """An operator's verb for one saga, as submitted (:meth:`SagaStore.submit`): ``verb`` is one
    of cancel, pause, resume, retry, skip, resolve, abandon, with its ``args``; ``who`` and
    ``why`` are recorded with it and in the saga's timeline. ``shard`` is the saga's shard, so
    that its owner finds it."""

    saga_id: str
    shard: int
    verb: str
    args: dict[str, Any]
    who: str
    why: str
    at: float


@attrs.frozen
class CommandRecord:
    """An operator's command as stored: ``state`` is pending until the saga's owner applies or
    refuses it, in the same transaction as what it did (``outcome`` says what, or why not)."""

    id: int
    saga_id: str
    shard: int
    verb: str
    args: dict[str, Any]
    who: str
    why: str
    at: float
    state: str
    outcome: str | None
    done_at: float | None
    #: Why this row cannot be trusted (fails its checksum or does not decode); None when intact.
    #: A damaged command is refused, never applied.
    corrupt: str | None = None


@attrs.frozen
class CommandDone:
    """Mark command ``command_id`` applied or refused (``state``), with ``outcome``, and append
    ``events`` to its saga's timeline. Applied only while the command is still pending and the
    saga's row is at ``incarnation`` (None: whatever the row, or no row at all, for a command
    refused because its saga does not exist); so a command is applied exactly once, in the
    same transaction as the saga's transition it caused."""

    command_id: int
    saga_id: str
    incarnation: int | None
    state: str
    outcome: str
    at: float
    events: tuple[Event, ...] = ()


Write = NewSaga | Transition | CommandDone


# --- choreography: the event log -----------------------------------------------------------------

#: :attr:`TopicEvent.kind`: an event a service or plain code published, or the failure event a
#: reaction that refused or kept failing published in its place (its subscribers compensate).
EVENT: Final = "event"
FAILURE: Final = "failure"
#: What a subscriber did with an event (:attr:`Acknowledgement.outcome`): its handler's effects
#: committed (APPLIED), it refused (REJECTED, a business refusal), or it kept failing past its
#: attempts or the event was damaged (FAILED). The last two published a failure event.
REJECTED: Final = "rejected"
REACTION_OUTCOMES: Final = (APPLIED, REJECTED, FAILED)


@attrs.frozen
class TopicEvent:
    """An event published to ``topic``, as appended to the event log. ``data`` is msgpack
    bytes. ``correlation_id`` names the chain (the first event's, inherited by every event
    published while reacting to it); ``causation_id`` is the event whose reaction published
    this one (None for a chain's first); ``source`` who published it ("" for plain code)."""

    event_id: str
    topic: str
    correlation_id: str
    data: bytes
    at: float
    source: str = ""
    causation_id: str | None = None
    kind: str = EVENT


@attrs.frozen
class Acknowledgement:
    """Subscriber ``subscriber`` is done with event ``event_id`` (``outcome``, one of
    :data:`REACTION_OUTCOMES`, with ``reason`` for a refusal or a failure); ``published``
    names the events its reaction published."""

    subscriber: str
    event_id: str
    correlation_id: str
    outcome: str
    at: float
    reason: str | None = None
    published: tuple[str, ...] = ()


@attrs.frozen
class PublishedEvent:
    """An event of the log as read back: ``seq`` orders the log, ``data`` is decoded."""

    seq: int
    event_id: str
    topic: str
    correlation_id: str
    source: str
    causation_id: str | None
    kind: str
    data: Any
    at: float
    #: Why this row cannot be trusted (fails its checksum or does not decode); None when intact.
    corrupt: str | None = None


@attrs.frozen
class AckRecord:
    """An :class:`Acknowledgement` as read back."""

    subscriber: str
    event_id: str
    correlation_id: str
    outcome: str
    reason: str | None
    published: tuple[str, ...]
    at: float
    corrupt: str | None = None


@attrs.frozen
class TopicSubscription:
    """``subscriber`` gets every event of ``topic`` whose ``seq`` is above ``since_seq`` (the
    log's end when it first subscribed)."""

    subscriber: str
    topic: str
    since_seq: int
    at: float


@attrs.frozen
class ChainHead:
    """One chain of the log, for listing: its first event and its extent."""

    correlation_id: str
    topic: str
    source: str
    started_at: float
    last_at: float
    events: int


class SagaStore(abc.ABC):
    """Durable home of sagas and their timelines. One instance per process; not thread-safe."""

    @abc.abstractmethod
    def apply(self, writes: Sequence[Write], lease: Lease | None = None) -> list[bool]:
        """Apply ``writes`` in one durable transaction; one bool per write (False: not applied).

        With ``lease``, the batch applies only while the lease's epoch is the shard's current
        one (else :class:`~understudy.errors.LeaseLost`), and clears the shard's blame.
        On error nothing of the batch is applied and a :class:`~understudy.errors.StoreError`
        is raised.
        """

    @abc.abstractmethod
    def note(self, notes: Sequence[Note], lease: Lease | None = None) -> list[bool]:
        """Append each note's events, in one durable transaction; one bool per note (False:
        the saga is unknown, terminal, or at another incarnation, and nothing of it is written).

        With ``lease``, fenced by its epoch as :meth:`apply` is (else
        :class:`~understudy.errors.LeaseLost` and nothing is written), but the shard's blame is
        left as it stands: a note is no batch of the sagas' own work.
        """

    # --- operators' commands ------------------------------------------------------------------

    @abc.abstractmethod
    def submit(self, command: OperatorCommand) -> CommandRecord:
        """Store ``command`` as pending (durable when this returns) and return it with its id.
        Anyone may submit, holding no lease: the saga's owner applies it with a
        :class:`CommandDone` in its next batch."""

    @abc.abstractmethod
    def commands(
        self,
        *,
        shard: int | None = None,
        saga_id: str | None = None,
        pending: bool = True,
        limit: int = 100,
    ) -> list[CommandRecord]:
        """Commands, oldest first: only pending ones unless ``pending`` is false, optionally
        only those of ``shard`` or of ``saga_id``. Cheap when few are pending (what every saga
        host polls)."""

    @abc.abstractmethod
    def command(self, command_id: int) -> CommandRecord | None:
        """One command by id, or None."""

    # --- sagas ------------------------------------------------------------------------------

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

    def claim(
        self, saga_id: str, *, recovery: bool, at: float, lease: Lease | None = None
    ) -> SagaRecord | None:
        """Take ownership of an unfinished saga: bump its incarnation, and its recovery count
        when ``recovery`` is true, recording a ``claimed`` event. Returns the updated row, or
        None when the saga is unknown or already terminal. Older incarnations are fenced from
        then on. With ``lease``, fenced by its epoch as :meth:`apply` is."""
        return self.claim_all([saga_id], recovery=recovery, at=at, lease=lease).get(saga_id)

    @abc.abstractmethod
    def claim_all(
        self,
        saga_ids: Sequence[str],
        *,
        recovery: bool,
        at: float,
        lease: Lease | None = None,
    ) -> dict[str, SagaRecord]:
        """:meth:`claim` for many sagas, in one transaction; only claimed sagas are returned."""

    # --- ownership --------------------------------------------------------------------------

    @abc.abstractmethod
    def fix_shards(self, shards: int) -> int:
        """Fix the store's shard count to ``shards`` if it has none yet, and return it.
        A store created with another count raises
        :class:`~understudy.errors.ShardCountMismatch`, naming both counts."""

    @abc.abstractmethod
    def leases(self) -> list[Lease]:
        """Every shard's current lease (``holder`` empty for a shard nobody holds), in shard
        order, with ``blamed`` as it stands now."""

    @abc.abstractmethod
    def now(self) -> float:
        """The database's clock, the time base of every lease."""

    @abc.abstractmethod
    def acquire(
        self, shard: int, holder: str, ttl: float, about: dict[str, Any] | None = None
    ) -> Lease | None:
        """Take ``shard`` for ``holder`` for ``ttl`` seconds with a new epoch, when nobody holds
        it, its lease expired, or ``holder`` already holds it (a restarted host of the same
        runtime takes over at once). None when another holder's lease is still running. The
        shard's blame is handed over in :attr:`Lease.blamed` and set to :data:`EVERYONE` until
        the new holder says otherwise (a holder that dies while recovering blames everyone)."""

    @abc.abstractmethod
    def renew(self, lease: Lease, ttl: float, about: dict[str, Any] | None = None) -> Lease:
        """Extend ``lease`` to ``ttl`` seconds from now; :class:`~understudy.errors.LeaseLost`
        when its epoch is no longer the shard's. With ``about``, the lease says from now on
        who holds it (a runtime's start hands the leases it took to its saga hosts)."""

    @abc.abstractmethod
    def release(self, lease: Lease) -> None:
        """Give the shard up cleanly (nobody to blame); a lease already lost is left alone."""

    @abc.abstractmethod
    def expire(self, shard: int, epoch: int) -> None:
        """End the lease of ``shard`` at ``epoch`` now, because its holder is known to have
        exited (its process is gone): the next :meth:`acquire` takes the shard at once. Nothing
        happens when the shard has moved on to another epoch."""

    @abc.abstractmethod
    def blame(self, lease: Lease, saga_ids: Sequence[str] | None) -> None:
        """Record whom the holder's death would be blamed on until its next successful
        :meth:`apply`: ``saga_ids`` (a batch about to be committed), or :data:`EVERYONE`.
        Durable across the holder's death, not necessarily across the database's (a database
        crash restarts every saga anyway), so backends may write it without waiting for a
        flush; :class:`~understudy.errors.LeaseLost` when the lease was lost."""

    def commit_batch(self, writes: Sequence[Write], lease: Lease) -> list[bool]:
        """What a saga host does with each batch: :meth:`blame` the batch's sagas, then
        :meth:`apply` it under ``lease`` (which clears the blame). The failpoint
        ``host.before_commit`` is hit in between, once the blame is recorded and nothing of the
        batch is. A backend may do both in fewer round trips (PostgreSQL sends them in one
        pipeline), keeping that order."""
        self.blame(lease, batch_sagas(writes))
        failpoints.hit("host.before_commit")
        return self.apply(writes, lease)

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
    def last_seq(self) -> int:
        """The ``seq`` of the latest event, 0 when there is none. Cheap (one index lookup), and
        it changes whenever anything is written, since every write carries events: what a
        watcher polls to tell progress from a standstill."""

    # --- choreography: the event log ---------------------------------------------------------

    @abc.abstractmethod
    def append_events(
        self, events: Sequence[TopicEvent], acks: Sequence[Acknowledgement] = ()
    ) -> list[bool]:
        """Append ``events`` to the event log and record ``acks``, in one durable transaction;
        one bool per event (False: an event with that id is in the log already, and nothing of
        it changes). An acknowledgement is recorded once per (subscriber, event); a repeated
        one changes nothing. So a relay that dies after the commit and runs again appends
        nothing twice, and an acknowledgement is never visible before the events its reaction
        published."""

    @abc.abstractmethod
    def subscribe(
        self, subscriber: str, topics: Sequence[str], at: float
    ) -> list[TopicSubscription]:
        """Make ``topics`` the topics ``subscriber`` gets (durable when this returns): a topic
        new to it starts at the log's end, one it had keeps its start, one it no longer lists
        is dropped. Returns its subscriptions, by topic."""

    @abc.abstractmethod
    def undelivered(self, subscriber: str, limit: int = 100) -> list[PublishedEvent]:
        """The events of ``subscriber``'s topics, past each subscription's start, that it has
        not acknowledged, oldest first (at most ``limit``): what it must still react to."""

    @abc.abstractmethod
    def chain_events(self, correlation_id: str) -> list[PublishedEvent]:
        """Every event of the chain ``correlation_id``, in log order."""

    @abc.abstractmethod
    def chain_acks(self, correlation_id: str) -> list[AckRecord]:
        """Every acknowledgement of the chain's events, in the order recorded."""

    @abc.abstractmethod
    def subscriptions(self) -> list[TopicSubscription]:
        """Every subscription, by subscriber and topic."""

    @abc.abstractmethod
    def list_chains(self, limit: int = 100) -> list[ChainHead]:
        """The chains of the log, the newest first (by their first event)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection. Idempotent."""

    def __enter__(self) -> SagaStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def shard_of(saga_id: str, shards: int) -> int:
    """The shard ``saga_id`` belongs to, of ``shards`` (stable across processes, unlike
    ``hash``): its saga host owns it, and its operators' commands are filed under it."""
    return zlib.crc32(saga_id.encode()) % shards


def batch_sagas(writes: Sequence[Write]) -> list[str]:
    """The distinct sagas a batch writes, in order: whom its commit is blamed on."""
    return list(dict.fromkeys(write.saga_id for write in writes))
