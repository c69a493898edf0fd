"""The one error tree of understudy.

Every error understudy raises derives from :class:`UnderstudyError`; where the standard library has
an exception of the same meaning, the error subclasses it too, so ``except TimeoutError`` and
``except LookupError`` keep working::

    UnderstudyError
    ├── DefinitionError (ValueError)      a saga definition that cannot run as written
    ├── PayloadError (TypeError)          a payload or result that msgpack cannot encode
    ├── UnknownDefinition (LookupError)   a start names a definition that is not registered
    ├── UnknownParticipant (LookupError)  a definition names a participant that is not registered
    ├── SagaNotFound (LookupError)        a status query for a saga id the store does not hold
    ├── ChainNotFound (LookupError)       a choreographed chain the store's event log does not hold
    ├── SagaRejected                      the coordinator refused to start a saga
    ├── LocalStepFailed                   a step of a local transaction failed: nothing was kept
    ├── VerbRefused                       an operator's verb would break an invariant: not applied
    ├── StoreError                        the saga store failed; driver errors are translated here
    │   ├── StoreUnavailable              locked, busy, read-only or unwritable database
    │   ├── CorruptRecord                 a stored row that fails to decode or its checksum
    │   ├── LeaseLost                     a saga host's shard lease was taken over: it stops
    │   ├── ShardCountMismatch (ValueError)  a start asks for another shard count than the store's
    │   └── StoreInUse                    another live understudy runtime works on this store
    ├── LedgerError                       a participant's ledger database failed (driver errors)
    ├── CompletionRefused                 a deferred step's completion was refused: not recorded
    └── ActorSystemError                  the actor system could not be started or reached
        ├── CoordinatorTimeout (TimeoutError)  no reply within the timeout
        └── CoordinatorGone                the coordinator's process exited under the runtime

Messages name the saga, the step or the file concerned and say what to do next.
"""

from __future__ import annotations

from typing import Any


class UnderstudyError(Exception):
    """Base class of every error raised by understudy."""


class DefinitionError(UnderstudyError, ValueError):
    """A saga definition that cannot run as written (for example a step without compensation)."""


class PayloadError(UnderstudyError, TypeError):
    """A payload or result that msgpack cannot encode; the message names the offending field."""


class UnknownDefinition(UnderstudyError, LookupError):
    """A start names a saga definition (name, version) that the coordinator does not know."""


class UnknownParticipant(UnderstudyError, LookupError):
    """A saga definition names a participant that is not registered with the coordinator."""


class SagaNotFound(UnderstudyError, LookupError):
    """The store holds no saga with the given id."""


class ChainNotFound(UnderstudyError, LookupError):
    """The store's event log holds no event of the given correlation id (choreography)."""


class SagaRejected(UnderstudyError):
    """The coordinator refused to start a saga; the message says why."""


class LocalStepFailed(UnderstudyError):
    """A step of a :class:`Local` transaction failed, and nothing any step wrote was kept.

    ``step`` names it; the step's own exception is ``__cause__`` (none when the step broke the
    transaction itself without raising: the message says how)."""

    def __init__(self, message: str, step: str) -> None:
        super().__init__(message)
        self.step = step

    def __reduce__(self) -> tuple[Any, ...]:
        # Keeps ``step`` when pickled (a multi-process actor system pickles what it sends).
        return (type(self), (str(self), self.step))


class VerbRefused(UnderstudyError):
    """An operator's verb that would break an invariant (or has nothing to act on) was refused;
    the message says why and what to do instead. Nothing of the saga changed."""


class StoreError(UnderstudyError):
    """The saga store failed. Driver errors are translated to this tree at the store boundary."""


class StoreUnavailable(StoreError):
    """The database is locked, busy, read-only or cannot be written."""


class CorruptRecord(StoreError):
    """A stored row (snapshot, payload or event) failed to decode or its checksum."""


class LeaseLost(StoreError):
    """A saga host's lease on its shard ended (another holder took the shard, with a newer
    epoch): nothing it wrote was applied, and it must stop working that shard."""


class ShardCountMismatch(StoreError, ValueError):
    """A runtime asked for a shard count other than the one fixed in the store when it was
    created; sagas are assigned to shards by that count, so it cannot change."""


class StoreInUse(StoreError):
    """Another live understudy runtime holds the shards of this store."""


class LedgerError(UnderstudyError):
    """A participant's ledger database failed; driver errors are translated to this at the
    ledger boundary, with the database named without its credentials. ``lost``: the connection
    is gone (a server restart, a terminated backend); the participant abandons its batch and
    connects again on its next request."""

    def __init__(self, message: str, *, lost: bool = False) -> None:
        super().__init__(message)
        self.lost = lost


class CompletionRefused(UnderstudyError):
    """A completion of a deferred step (``understudy.complete``, ``reject`` or ``fail``) was
    refused, and nothing was recorded. ``state`` says why: ``"unknown"`` (no step of that
    database was deferred under the handle, or the handle is malformed or was not made there),
    ``"cancelled"`` (the saga compensated the step while it waited: undo what the completion
    stands for, if anything), or the outcome already recorded (``"applied"``, ``"rejected"``,
    ``"failed"``) when this completion says otherwise: a handle completes once."""

    def __init__(self, message: str, state: str) -> None:
        super().__init__(message)
        self.state = state

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.state))


class ActorSystemError(UnderstudyError):
    """The actor system could not be started, reached or configured."""


class CoordinatorTimeout(ActorSystemError, TimeoutError):
    """The coordinator did not answer within the timeout."""


class CoordinatorGone(ActorSystemError):
    """The coordinator's process exited (killed, crashed) while the runtime ran: nothing can be
    started or answered any more. Shut the runtime down and start it again on the same store;
    every unfinished saga resumes."""
