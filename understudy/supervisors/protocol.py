"""Messages between the coordinator and its saga hosts (internal; top-level for pickling)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from understudy.definitions import SagaDefinition
from understudy.failpoints import Fault
from understudy.lifecycle import SagaEvent, Subscribe
from understudy.persistence.base import Lease
from understudy.supervisors.policy import RestartPolicy


@attrs.frozen
class StoreConfig:
    """Where the saga store is and how to open it (each process opens its own connection)."""

    location: str
    options: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class HostSetup:
    shard: int
    shards: int
    store: StoreConfig
    definitions: tuple[SagaDefinition, ...]
    participants: dict[str, Any]  # name -> actor address
    policy: RestartPolicy
    faults: tuple[Fault, ...] = ()
    max_snapshot_bytes: int = 1 << 20
    watch_interval: float | None = None  # seconds between checks that the coordinator lives
    flush_window: float = 0.0  # see understudy.actors.batching
    runtime: str = ""  # the runtime's id: the holder of its hosts' shard leases
    lease_ttl: float = 10.0  # seconds a shard lease lasts unless renewed
    app: tuple[int, str | None] | None = None  # the application process (pid, start)
    lease: Lease | None = None  # the shard's lease the start took, for the first host only
    limits: dict[str, int | None] = attrs.field(factory=dict)  # as in ParticipantTable
    command_poll: float = 0.5  # seconds between looks for operators' commands to apply


@attrs.frozen
class RenewLease:
    """A host's reminder to renew its shard lease."""


@attrs.frozen
class HostLeaseLost:
    """A host found its shard taken over by another holder: it wrote nothing more and stopped."""

    shard: int
    reason: str


@attrs.frozen
class HostReady:
    shard: int
    pid: int
    resumed: int
    error: str | None = None


@attrs.frozen
class HostStart:
    saga_id: str
    definition: str
    version: int
    payload: dict[str, Any]
    parent: str | None = None  # the saga this one is a child of


@attrs.frozen
class HostStarted:
    saga_id: str
    existing: bool


@attrs.frozen
class HostStartFailed:
    saga_id: str
    error: str
    reason: str


@attrs.frozen
class ParticipantTable:
    participants: dict[str, Any]  # name -> actor address
    #: name -> the most requests the participant takes in flight (None or absent: no limit)
    limits: dict[str, int | None] = attrs.field(factory=dict)


@attrs.frozen
class SagaTimer:
    saga_id: str
    incarnation: int
    token: int


@attrs.frozen
class Tick:
    """The host's one armed wakeup, for the earliest deadline at ``at`` (wall clock)."""

    at: float


@attrs.frozen
class SubscriptionTable:
    """The coordinator's subscriptions (``version`` counts changes): a saga host sends the
    lifecycle events they match to the coordinator after each commit, and answers
    :class:`SubscriptionsApplied`."""

    version: int
    filters: tuple[Subscribe, ...]


@attrs.frozen
class SubscriptionsApplied:
    shard: int
    version: int


@attrs.frozen
class SagaEvents:
    """Lifecycle events a saga host committed, for the coordinator to hand to subscribers."""

    events: tuple[SagaEvent, ...]


@attrs.frozen
class PollCommands:
    """A host's reminder to look for operators' commands for its shard."""


@attrs.frozen
class RetrySetup:
    """A host whose store could not be opened or scanned tries again."""


@attrs.frozen
class Respawn:
    """The coordinator restarts participant ``name`` after a restart delay."""

    name: str


@attrs.frozen
class Reconfigure:
    """The coordinator retries configuring participant ``name`` after a failed restart."""

    name: str


@attrs.frozen
class Reload:
    saga_ids: tuple[str, ...]


@attrs.frozen
class CoordinatorSetup:
    store: StoreConfig
    definitions: tuple[SagaDefinition, ...]
    hosts: int
    policy: RestartPolicy
    participants: tuple[Any, ...] = ()  # AddParticipant values, created before any saga resumes
    faults: tuple[Fault, ...] = ()
    max_snapshot_bytes: int = 1 << 20
    owner: tuple[int, str | None] | None = None  # the application process (pid, start)
    watch_interval: float | None = None  # seconds between checks that the owner lives
    host_class: str | None = None  # a SagaHost subclass by import path (mutation tests)
    flush_window: float = 0.0  # see understudy.actors.batching
    runtime: str = ""  # the runtime's id: the holder of its hosts' shard leases
    lease_ttl: float = 10.0
    leases: dict[int, Lease] = attrs.field(factory=dict)  # taken by the start, per shard
    #: Seconds the runtime's start waits for CoordinatorReady (None: no bound known). A start
    #: still waiting on a failing store near the end of it is failed naming the store's error.
    timeout: float | None = None
    #: The runtime started the actor system (and shuts it down); False in the application's
    #: own system, which understudy's coordinator leaves running when it goes.
    owns_system: bool = True


def _participant_paths(
    participants: Iterable[tuple[str, type | str, dict[str, Any]]],
) -> tuple[tuple[str, str, dict[str, Any]], ...]:
    # Classes travel by import path (the message may cross processes); a class defined in the
    # script being run is taken as it is, as the in-process base does.
    return tuple(
        (name, cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}", options)
        for name, cls, options in participants
    )


@attrs.frozen
class StartCoordinator:
    """Start a :class:`~understudy.supervisors.coordinator.Coordinator` that an application's
    actor created as its child (``self.createActor(Coordinator)``): the actor-side twin of
    :meth:`understudy.Understudy.start`, with the same arguments and checks.

    The coordinator answers the sender :class:`CoordinatorReady` once every unfinished saga of
    the store has resumed, or with ``error`` set (nothing is left running). It then takes
    ``StartSaga`` and ``QueryStatus`` as from any app actor. Send it Thespian's
    ``ActorExitRequest`` to stop it: its saga hosts let go of the store and its participants
    close their databases. ``participants`` are ``(name, class or "module.Class", options)``.
    """

    store: str
    definitions: tuple[SagaDefinition, ...] = attrs.field(converter=tuple)
    participants: tuple[tuple[str, str, dict[str, Any]], ...] = attrs.field(
        default=(), converter=_participant_paths
    )
    hosts: int | None = None
    policy: RestartPolicy = attrs.field(factory=RestartPolicy)
    store_options: dict[str, Any] = attrs.field(factory=dict)
    max_snapshot_bytes: int = 1 << 20
    lease_ttl: float = 10.0
    #: Seconds between checks, on multi-process bases, that the coordinator's process lives
    #: (its saga hosts and participants stop when it is gone).
    watch_interval: float = 2.0
    #: How long the answer may take: a start still waiting on a failing store near its end
    #: fails naming the store's error.
    timeout: float = 60.0


@attrs.frozen
class CoordinatorReady:
    """The coordinator's answer to its start: how many unfinished sagas resumed and the pids of
    its saga hosts, or ``error`` (the start failed; nothing is left running)."""

    resumed: int
    host_pids: tuple[int, ...]
    error: str | None = None


@attrs.frozen
class QueryHosts:
    """Ask the coordinator for the pids of its saga hosts and participants."""


@attrs.frozen
class HostsInfo:
    host_pids: dict[int, int]  # shard -> pid
    participant_pids: dict[str, int]
    restarts: int
    coordinator_pid: int = 0


@attrs.frozen
class HostRetrying:
    """A host's recovery met a transient store error (``recovery.transient``) and tries again
    shortly: a start waiting for it goes on waiting, within its own timeout. An error that
    waiting cannot cure is a :class:`HostReady` with the error instead."""

    shard: int
    pid: int
    error: str


@attrs.frozen
class StandDown:
    """The start this host was created for failed, and its runtime is being shut down: stop
    retrying and close the store (``ShardRecovery.receiveMsg_StandDown``)."""
