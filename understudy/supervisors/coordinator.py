"""The coordinator: the top supervisor of one understudy runtime.

It validates starts (so a bad start is refused before anything is written), routes each saga to
the host that owns its shard, keeps the waiters of every saga (so a host crash loses no caller),
keeps the registry of participants, and supervises hosts and participants: when one dies
(``ChildActorExited``), it creates a new one. A new host resumes every unfinished saga of its shard
from the store, which is also how a restarted process resumes everything: the first hosts of a
runtime run the same startup scan.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from datetime import timedelta
from typing import Any

import attrs

from understudy import codec, failpoints
from understudy.actors.batching import Outbox
from understudy.actors.plumbing import Batch, CommandFiled, Stop, Stopped, handle_batched
from understudy.actors.system import (
    ActorExitRequest,
    ActorTypeDispatcher,
    ChildActorExited,
    WakeupMessage,
    in_process,
    load_class,
)
from understudy.actors.watch import OwnerWatch
from understudy.definitions import SagaDefinition, with_children
from understudy.errors import PayloadError, StoreError, UnderstudyError
from understudy.messages import (
    AddParticipant,
    ConfigureParticipant,
    ParticipantReady,
    Ping,
    Pong,
    QueryStatus,
    RegisterParticipant,
    SagaAccepted,
    SagaFinished,
    SagaStatus,
    StartRejected,
    StartSaga,
)
from understudy.persistence import open_store
from understudy.supervisors.fanout import EventFanout
from understudy.supervisors.host import SagaHost, shard_of
from understudy.supervisors.leases import RUNNING_HERE
from understudy.supervisors.policy import RestartWindow
from understudy.supervisors.protocol import (
    CoordinatorReady,
    CoordinatorSetup,
    HostLeaseLost,
    HostReady,
    HostRetrying,
    HostSetup,
    HostsInfo,
    HostStart,
    HostStarted,
    HostStartFailed,
    ParticipantTable,
    QueryHosts,
    Reconfigure,
    Respawn,
    StandDown,
    StartCoordinator,
    StoreConfig,
)
from understudy.supervisors.starting import (
    FLUSH_WINDOW,
    give_back_shards,
    participant_specs,
    refuse_memory,
    take_shards,
    with_children_participant,
)

log = logging.getLogger("understudy.coordinator")

#: What batches carry (starts from clients, ends and acknowledgements from hosts): handled
#: without Thespian's type dispatch (see handle_batched).
_DIRECT = frozenset({StartSaga, SagaFinished, HostStarted, HostStartFailed})

#: How long before the start's bound a start still waiting on a failing store is failed: at
#: most this, and at most a fifth of the bound, so that the answer reaches the runtime before
#: it gives up on its own (it would then say only that it timed out).
START_ANSWER_MARGIN = 2.0


@attrs.frozen
class StartRunsOut:
    """The coordinator's reminder that the runtime's start is about to stop waiting."""


class _Child:
    """A supervised child: a saga host (``shard``) or a participant (``participant``)."""

    def __init__(
        self, address: Any, shard: int | None = None, participant: AddParticipant | None = None
    ) -> None:
        self.address = address
        self.shard = shard
        self.participant = participant
        self.pid = 0


class Coordinator(EventFanout, OwnerWatch, ActorTypeDispatcher):
    def __init__(self) -> None:
        super().__init__()
        self._fanout_init()
        self.setup: CoordinatorSetup | None = None
        # No store connection stays open here: on multi-process bases this process forks every
        # saga host and participant, and a SQLite connection open across fork() breaks the
        # file locking of the children's own connections (SQLite forbids it; it showed as lost
        # commits under chaos). The store is opened per query instead.
        self.store_ok = False
        self.routing: Outbox | None = None  # see receiveMsg_Batch
        self.batch_clients: list[Any] = []
        self.definitions: dict[tuple[str, int], SagaDefinition] = {}
        self.latest: dict[str, int] = {}
        # Thespian addresses are unhashable, and the address createActor returns prints
        # differently from the one the child later reports with, so children are found by ==.
        self.children: list[_Child] = []
        self.hosts: dict[int, _Child] = {}
        self.participants: dict[str, Any] = {}  # name -> address
        self.participant_pids: dict[str, int] = {}
        self.limits: dict[str, int | None] = {}  # name -> max_in_flight, as each reported it
        self.waiters: dict[str, list[tuple[Any, bool, str]]] = {}  # (sender, wait, request id)
        # Starts of sagas someone waits for, resent to a new host if theirs dies: HostStart is
        # idempotent, and it answers with the saga's end if the dead host committed it but
        # never reported it.
        self.starting: dict[str, HostStart] = {}
        self.setup_reply: Any = None
        self.pending_ready: set[str] = set()
        self.resumed = 0
        self.host_restarts = 0
        self.add_requests: dict[str, list[Any]] = {}
        self.window: RestartWindow | None = None
        self.stopping = False
        self.stop_reply: Any = None
        self.stop_pending: set[int | str] = set()
        self.known_participants: set[str] = set()
        self.participant_windows: dict[str, RestartWindow] = {}
        self.respawning: dict[str, AddParticipant] = {}  # restarts waiting out their delay
        # Shards another holder took over (a host found its lease lost): never restarted here,
        # and starts routed to them are refused with the reason.
        self.lost_shards: dict[int, str] = {}
        self.start_leases: dict[int, Any] = {}  # leases the start took, for the first hosts
        # The last transient store error of each first host the start waits for: the start
        # waits for the host's retry, and names this error if its bound runs out first.
        self.host_errors: dict[int, str] = {}
        self.start_bound: float | None = None  # when the start stops waiting (monotonic)
        # Started by an application's actor (StartCoordinator): this runtime's id, registered
        # as running in this process, and the leases its start took.
        self.runtime_here: str | None = None
        self.start_taken: dict[int, Any] = {}

    # --- setup --------------------------------------------------------------------------------

    def receiveMsg_StartCoordinator(self, msg: StartCoordinator, sender: Any) -> None:
        """Started by an application's actor, not by the runtime: take what the runtime's start
        takes in the application's thread (understudy.supervisors.starting), then set up."""
        if self.setup is not None or self.runtime_here is not None:
            self.send(sender, CoordinatorReady(0, (), error="coordinator is already set up"))
            return
        multiprocess = not in_process(self)
        store = StoreConfig(msg.store, dict(msg.store_options))
        runtime = uuid.uuid4().hex
        try:
            refuse_memory(store)
            definitions = with_children(msg.definitions)
            participants = with_children_participant(list(msg.participants), definitions, store)
            specs = participant_specs(participants, not multiprocess)
            RUNNING_HERE.add(runtime)
            self.runtime_here = runtime
            hosts, leases = take_shards(
                store, msg.hosts, multiprocess, runtime, max(msg.lease_ttl, msg.timeout), None
            )
        except UnderstudyError as exc:
            self._leave_here()
            self.send(sender, CoordinatorReady(0, (), error=str(exc)))
            return
        self.start_taken = leases
        setup = CoordinatorSetup(
            store,
            definitions,
            hosts,
            msg.policy,
            specs,
            max_snapshot_bytes=msg.max_snapshot_bytes,
            watch_interval=msg.watch_interval if multiprocess else None,
            flush_window=FLUSH_WINDOW if multiprocess else 0.0,
            runtime=runtime,
            lease_ttl=msg.lease_ttl,
            leases=leases,
            timeout=msg.timeout,
            owns_system=False,
        )
        self.receiveMsg_CoordinatorSetup(setup, sender)

    def _leave_here(self) -> None:
        if self.runtime_here is not None:
            RUNNING_HERE.discard(self.runtime_here)
            self.runtime_here = None

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: Any) -> None:
        # Thespian stops the children (saga hosts let go of their shards, participants close
        # their databases) after this.
        self.stopping = True
        self._leave_here()

    def receiveMsg_CoordinatorSetup(self, msg: CoordinatorSetup, sender: Any) -> None:
        if self.setup is not None:
            self.send(sender, CoordinatorReady(0, (), error="coordinator is already set up"))
            return
        self.setup = msg
        self.setup_reply = sender
        self.start_leases = dict(msg.leases)
        failpoints.arm(msg.faults)
        self.window = RestartWindow(msg.policy)
        self.watch(msg.owner, msg.watch_interval)
        for definition in msg.definitions:
            self.definitions[definition.key] = definition
            self.latest[definition.name] = max(
                self.latest.get(definition.name, 0), definition.version
            )
        try:
            # The shard count is fixed here too (the runtime's start fixed it already, but a
            # coordinator can be set up without one); a store with another count is refused.
            with open_store(msg.store.location, **msg.store.options) as store:
                store.fix_shards(msg.hosts)
            self.store_ok = True
        except UnderstudyError as exc:
            self.send(sender, CoordinatorReady(0, (), error=str(exc)))
            return
        left = msg.timeout  # how long the runtime's start waits for this answer
        if left is not None:
            answer_in = max(0.0, left - min(START_ANSWER_MARGIN, left / 5))
            self.start_bound = time.monotonic() + answer_in
            self.wakeupAfter(timedelta(seconds=answer_in), StartRunsOut())
        # Participants first, so that resumed sagas find them; hosts once they are all ready.
        for spec in msg.participants:
            self._create_participant(spec)
            self.pending_ready.add(f"participant:{spec.name}")
        if not msg.participants:
            self._create_hosts()

    def _create_hosts(self) -> None:
        assert self.setup is not None
        for shard in range(self.setup.hosts):
            self.pending_ready.add(f"host:{shard}")
            self._create_host(shard)

    def _create_host(self, shard: int) -> None:
        assert self.setup is not None
        address = self.createActor(
            load_class(self.setup.host_class) if self.setup.host_class else SagaHost
        )
        child = _Child(address, shard=shard)
        self.children.append(child)
        self.hosts[shard] = child
        self.send(
            address,
            HostSetup(
                shard,
                self.setup.hosts,
                self.setup.store,
                self.setup.definitions,
                dict(self.participants),
                self.setup.policy,
                self.setup.faults,
                self.setup.max_snapshot_bytes,
                self.setup.watch_interval,
                self.setup.flush_window,
                self.setup.runtime,
                self.setup.lease_ttl,
                self.setup.owner,
                self.start_leases.pop(shard, None),
                dict(self.limits),
            ),
        )
        self._send_table_to(address)

    def _create_participant(self, spec: AddParticipant) -> None:
        try:
            cls = load_class(spec.actor_class)
            address = self.createActor(cls)
        except Exception as exc:
            self._participant_ready(
                ParticipantReady(spec.name, f"{type(exc).__name__}: {exc}"), None
            )
            return
        self.children.append(_Child(address, participant=spec))
        faults = self.setup.faults if self.setup is not None else ()
        self.send(
            address, ConfigureParticipant(spec.name, spec.options, faults, self._watch_interval())
        )

    def receiveMsg_HostReady(self, msg: HostReady, sender: Any) -> None:
        host = self.hosts.get(msg.shard)
        if host is not None:
            host.pid = msg.pid
        self.resumed += msg.resumed
        if msg.error:
            # An error that waiting cannot cure (transient ones come as HostRetrying): a start
            # waiting for this host fails at once, with it.
            log.error("saga host %d failed to start: %s", msg.shard, msg.error)
        else:
            self.host_errors.pop(msg.shard, None)
        self._ready_step(f"host:{msg.shard}", msg.error)

    def receiveMsg_HostRetrying(self, msg: HostRetrying, sender: Any) -> None:
        # The store is busy, locked, unreachable or timed out: the host retries its recovery by
        # itself and reports HostReady once it gets through, so a start waiting for it waits,
        # within its own bound (_start_runs_out), instead of failing on a passing error.
        host = self.hosts.get(msg.shard)
        if host is not None:
            host.pid = msg.pid
        log.warning("saga host %d cannot recover yet and retries: %s", msg.shard, msg.error)
        if f"host:{msg.shard}" in self.pending_ready and self.setup_reply is not None:
            self.host_errors[msg.shard] = msg.error
            if self.start_bound is not None and time.monotonic() >= self.start_bound:
                self._start_runs_out()  # its first report came after the bound: answer now

    def _start_runs_out(self) -> None:
        """The start is about to stop waiting. If it still waits for hosts whose store keeps
        failing, fail it now naming the store's last error, which says what to fix (a database
        down or unreachable, a writer holding the lock), rather than let it time out saying
        nothing. A start that waits on anything else times out as it would have."""
        if self.setup_reply is None:
            return
        failing = sorted(
            (shard, error)
            for shard, error in self.host_errors.items()
            if f"host:{shard}" in self.pending_ready
        )
        if not failing:
            return
        error = "; ".join(
            f"host:{shard}: saga host {shard} could not resume its shard's sagas within the "
            f"start's timeout: its store kept failing, last with: {error}"
            for shard, error in failing
        )
        log.error("understudy could not start: %s", error)
        self._fail_start(error)

    def _fail_start(self, error: str) -> None:
        """Answer the start with ``error``, once its hosts are told to stand down (the runtime
        shuts the actor system down next; in-process, where messages run in the order sent,
        they have closed their stores by the time the runtime reads the answer)."""
        for host in self.hosts.values():
            self.send(host.address, StandDown())
        if self.runtime_here is not None:
            # Started by an actor: nobody else gives back what the start took. Its hosts stand
            # down and its participants go with it (there is no runtime to shut them down).
            assert self.setup is not None
            give_back_shards(self.setup.store, self.start_taken)
            for child in self.children:
                if child.participant is not None:
                    self.send(child.address, ActorExitRequest())
            self.children = [c for c in self.children if c.participant is None]
            self._leave_here()
        self.send(self.setup_reply, CoordinatorReady(0, (), error=error))
        self.setup_reply = None

    def receiveMsg_ParticipantReady(self, msg: ParticipantReady, sender: Any) -> None:
        self._participant_ready(msg, sender)

    def _participant_ready(self, msg: ParticipantReady, sender: Any) -> None:
        lacking = self._lacking(msg) if msg.error is None else None
        if lacking is not None:
            # A definition names an action the participant does not serve: every saga would
            # compensate at that step. Refused now, before any saga is sent to it.
            msg = attrs.evolve(msg, error=lacking)
            child = self._child(sender)
            if child is not None:
                self.children.remove(child)  # not restarted: it would be refused again
                self.send(sender, ActorExitRequest())
            sender = None
        if msg.error is None and sender is not None:
            self.known_participants.add(msg.name)
            self.participants[msg.name] = sender
            self.participant_pids[msg.name] = msg.pid
            self.limits[msg.name] = msg.max_in_flight
            child = self._child(sender)
            if child is not None:
                child.pid = msg.pid
            self._broadcast_participants()
        else:
            log.error("participant %s failed to start: %s", msg.name, msg.error)
            restarted = msg.name in self.known_participants
            if (
                restarted
                and lacking is None
                and self.setup_reply is None
                and self._child_named(msg.name) is not None
            ):
                # A restart after startup: nobody is waiting to hear the error, so keep trying.
                self.wakeupAfter(timedelta(seconds=1.0), Reconfigure(msg.name))
        for requester in self.add_requests.pop(msg.name, []):
            self.send(requester, msg)
        self._ready_step(f"participant:{msg.name}", msg.error)

    def _lacking(self, msg: ParticipantReady) -> str | None:
        """What the registered definitions ask of participant ``msg.name`` that it does not
        serve (None when it serves it all, or does not say what it serves)."""
        served = {"action": msg.actions, "compensation": msg.compensations}
        missing = []
        for definition in self.definitions.values():
            for step in definition.steps:
                if step.participant != msg.name:
                    continue
                for what, name in (("action", step.action), ("compensation", step.compensation)):
                    have = served[what]
                    if name is not None and have is not None and name not in have:
                        missing.append(
                            f"step {step.name!r} of saga definition {definition.name!r} "
                            f"v{definition.version} names {what} {name!r}, which it does not "
                            f"have (its {what}s: {', '.join(have) or 'none'})"
                        )
        if not missing:
            return None
        return (
            f"participant {msg.name!r} cannot serve the saga definitions: "
            + "; ".join(missing)
            + ". Fix the definition's step or add the handler (@action / @compensation)"
        )

    def _ready_step(self, what: str, error: str | None) -> None:
        if what not in self.pending_ready:
            return
        self.pending_ready.discard(what)
        if error and self.setup_reply is not None:
            self._fail_start(f"{what}: {error}")
            return
        if not self.pending_ready and self.setup_reply is not None:
            if not self.hosts:
                self._create_hosts()
                return
            self.send(
                self.setup_reply,
                CoordinatorReady(self.resumed, tuple(h.pid for _, h in sorted(self.hosts.items()))),
            )
            self.setup_reply = None

    def _broadcast_participants(self) -> None:
        for host in self.hosts.values():
            self.send(host.address, ParticipantTable(dict(self.participants), dict(self.limits)))

    # --- participants ---------------------------------------------------------------------------

    def receiveMsg_AddParticipant(self, msg: AddParticipant, sender: Any) -> None:
        self.add_requests.setdefault(msg.name, []).append(sender)
        self._create_participant(msg)

    def receiveMsg_RegisterParticipant(self, msg: RegisterParticipant, sender: Any) -> None:
        # Configured first (a Participant opens its ledger with these options, or keeps the
        # one it has when they are None), registered once it answers ParticipantReady; the
        # answer goes to whoever registered it too.
        participant = msg.participant if msg.participant is not None else sender
        if msg.participant is not None:
            self.add_requests.setdefault(msg.name, []).append(sender)
        faults = self.setup.faults if self.setup is not None else ()
        self.send(
            participant,
            ConfigureParticipant(msg.name, msg.options, faults, self._watch_interval()),
        )

    # --- sagas ----------------------------------------------------------------------------------

    def receiveMsg_Batch(self, msg: Batch, sender: Any) -> None:
        # The starts of a batch go to each saga host as one message, not one per saga, and
        # the ends a host reports together go back as one message to each client that sends
        # batches itself (the runtime's bridge; an app actor gets its replies one by one).
        if not any(client == sender for client in self.batch_clients):
            self.batch_clients.append(sender)
        outer, self.routing = self.routing, Outbox()
        try:
            for message in msg.messages:
                handle_batched(self, message, sender, _DIRECT)
        finally:
            routed, self.routing = self.routing, outer
            routed.send_all(self.send)

    def _answer(self, address: Any, message: Any) -> None:
        """Reply to a caller: batched with the others of this input when it takes batches."""
        if any(client == address for client in self.batch_clients):
            self._route(address, message)
        else:
            self.send(address, message)

    def _route(self, address: Any, message: Any) -> None:
        if self.routing is None:
            self.send(address, message)
        else:
            self.routing.add(address, message)

    def receiveMsg_StartSaga(self, msg: StartSaga, sender: Any) -> None:
        if self.setup is None or not self.store_ok:
            self.send(
                sender,
                StartRejected(
                    msg.saga_id, "ActorSystemError", "the coordinator has not been set up"
                ),
            )
            return
        rejection = self._validate(msg)
        if rejection is not None:
            self.send(sender, attrs.evolve(rejection, request_id=msg.request_id))
            return
        version = msg.version if msg.version is not None else self.latest[msg.definition]
        self.waiters.setdefault(msg.saga_id, []).append((sender, msg.wait, msg.request_id))
        start = HostStart(msg.saga_id, msg.definition, version, msg.payload, msg.parent)
        self.starting[msg.saga_id] = start
        shard = shard_of(msg.saga_id, self.setup.hosts)
        if shard in self.lost_shards:
            self.receiveMsg_HostStartFailed(
                HostStartFailed(msg.saga_id, "LeaseLost", self.lost_shards[shard]), sender
            )
            return
        host = self.hosts[shard]
        verdict = failpoints.hit("coordinator.before_route", msg.saga_id)
        if verdict == "drop":
            return  # lost on the way; resent if that host restarts, else the caller times out
        self._route(host.address, start)
        if verdict == "duplicate":
            self._route(host.address, start)

    def receiveMsg_CommandFiled(self, msg: CommandFiled, sender: Any) -> None:
        host = self.hosts.get(msg.shard) if self.setup is not None else None
        if host is not None:
            self.send(host.address, msg)

    def _validate(self, msg: StartSaga) -> StartRejected | None:
        if not isinstance(msg.saga_id, str) or not msg.saga_id:
            return StartRejected(
                str(msg.saga_id), "SagaRejected", "a saga id must be a non-empty string"
            )
        if "\x00" in msg.saga_id:
            return StartRejected(
                msg.saga_id,
                "SagaRejected",
                "a saga id must not contain NUL characters (PostgreSQL cannot store them); "
                "use printable text",
            )
        if msg.definition not in self.latest:
            return StartRejected(
                msg.saga_id,
                "UnknownDefinition",
                f"no saga definition named {msg.definition!r} is registered "
                f"(known: {', '.join(sorted(self.latest)) or 'none'}); pass it "
                "in definitions=[...] when starting understudy",
            )
        version = msg.version if msg.version is not None else self.latest[msg.definition]
        definition = self.definitions.get((msg.definition, version))
        if definition is None:
            return StartRejected(
                msg.saga_id,
                "UnknownDefinition",
                f"saga definition {msg.definition!r} has no version {version}",
            )
        # Known, not live: a participant being restarted is still a participant (hosts hold
        # its requests until it is back).
        missing = sorted(definition.participants - self.known_participants)
        if missing:
            steps = [s.name for s in definition.steps if s.participant in missing]
            return StartRejected(
                msg.saga_id,
                "UnknownParticipant",
                f"saga definition {msg.definition!r} v{version} names "
                f"participant(s) {', '.join(map(repr, missing))} (steps "
                f"{', '.join(map(repr, steps))}) that are not registered "
                f"(registered: {', '.join(sorted(self.participants)) or 'none'}); "
                "add them with add_participant() first",
            )
        try:
            codec.check_encodable(msg.payload, f"payload of saga {msg.saga_id!r}")
            if not isinstance(msg.payload, dict):
                raise PayloadError(
                    f"the payload of saga {msg.saga_id!r} must be a dict, "
                    f"not {type(msg.payload).__name__}"
                )
        except PayloadError as exc:
            return StartRejected(msg.saga_id, "PayloadError", str(exc))
        return None

    def receiveMsg_HostStarted(self, msg: HostStarted, sender: Any) -> None:
        waiters = self.waiters.get(msg.saga_id, [])
        for index, (address, wait, request_id) in enumerate(waiters):
            if not wait:
                # Only the first start created the saga; starts that joined it found it.
                existing = msg.existing or index > 0
                self._answer(address, SagaAccepted(msg.saga_id, existing, request_id))
        remaining = [w for w in waiters if w[1]]
        if remaining:
            self.waiters[msg.saga_id] = remaining
        else:
            self.waiters.pop(msg.saga_id, None)
            self.starting.pop(msg.saga_id, None)

    def receiveMsg_HostStartFailed(self, msg: HostStartFailed, sender: Any) -> None:
        self.starting.pop(msg.saga_id, None)
        for address, _wait, request_id in self.waiters.pop(msg.saga_id, []):
            self._answer(address, StartRejected(msg.saga_id, msg.error, msg.reason, request_id))

    def receiveMsg_SagaFinished(self, msg: SagaFinished, sender: Any) -> None:
        self.starting.pop(msg.saga_id, None)
        waiters = self.waiters.pop(msg.saga_id, [])
        verdict = failpoints.hit("coordinator.before_reply", msg.saga_id) if waiters else None
        if verdict == "drop":
            return  # the caller never hears; the saga's end is in the store regardless
        for address, _wait, request_id in waiters:
            self._answer(address, attrs.evolve(msg, request_id=request_id))
            if verdict == "duplicate":
                self._answer(address, attrs.evolve(msg, request_id=request_id))

    def receiveMsg_HostLeaseLost(self, msg: HostLeaseLost, sender: Any) -> None:
        log.error("saga host %d lost its shard to another holder: %s", msg.shard, msg.reason)
        assert self.setup is not None
        self.lost_shards[msg.shard] = (
            f"shard {msg.shard} of this runtime was taken over by another holder of the store "
            f"({msg.reason}); this runtime no longer runs its sagas: shut it down"
        )
        for saga_id in [s for s in self.starting if shard_of(s, self.setup.hosts) == msg.shard]:
            self.receiveMsg_HostStartFailed(
                HostStartFailed(saga_id, "LeaseLost", self.lost_shards[msg.shard]), sender
            )
        # A first host that loses its shard will never be ready: no retry brings it back, so a
        # start waiting for it fails now rather than when its timeout runs out.
        self._ready_step(
            f"host:{msg.shard}",
            f"shard {msg.shard} was taken over by another holder of the store while this "
            f"runtime started ({msg.reason}); is another understudy runtime working on it?",
        )

    def receiveMsg_QueryStatus(self, msg: QueryStatus, sender: Any) -> None:
        assert self.setup is not None
        try:
            # Read-only: a status query never takes the writer's lock.
            with open_store(self.setup.store.location, read_only=True) as store:
                record = store.get(msg.saga_id)
        except StoreError as exc:
            self.send(sender, SagaStatus(msg.saga_id, None, str(exc)))
            return
        self.send(
            sender,
            SagaStatus(
                msg.saga_id, record.status if record else None, record.reason if record else None
            ),
        )

    def receiveMsg_QueryHosts(self, msg: QueryHosts, sender: Any) -> None:
        self.send(
            sender,
            HostsInfo(
                {s: h.pid for s, h in self.hosts.items()},
                dict(self.participant_pids),
                self.host_restarts,
                os.getpid(),
            ),
        )

    def receiveMsg_Ping(self, msg: Ping, sender: Any) -> None:
        self.send(sender, Pong(msg.token, os.getpid()))

    # --- supervision ------------------------------------------------------------------------

    def _watch_interval(self) -> float | None:
        return self.setup.watch_interval if self.setup is not None else None

    def _child_named(self, name: str) -> _Child | None:
        for child in self.children:
            if child.participant is not None and child.participant.name == name:
                return child
        return None

    def _child(self, address: Any) -> _Child | None:
        for child in self.children:
            if child.address == address:
                return child
        return None

    def receiveMsg_ChildActorExited(self, msg: ChildActorExited, sender: Any) -> None:
        # Thespian may report one exit twice (requested exit, SIGTERM): the first pops the child.
        child = self._child(msg.childAddress)
        if child is None or self.setup is None or self.stopping:
            return
        self.children.remove(child)
        if child.shard is not None and child.shard in self.lost_shards:
            return  # it stopped because another holder owns its shard: do not fight it
        if child.shard is not None:
            log.warning("saga host %d (pid %d) exited; starting a new one", child.shard, child.pid)
            self.host_restarts += 1
            assert self.window is not None
            if not self.window.allow(time.time()):
                # Past the intensity: slow down instead of spinning; sagas are safe on disk,
                # and each one's persisted recovery cap parks a saga that keeps killing hosts.
                time.sleep(self.setup.policy.host_restart_delay)
            self._create_host(child.shard)
            shards = self.setup.hosts
            for saga_id, start in self.starting.items():
                if shard_of(saga_id, shards) == child.shard:
                    self.send(self.hosts[child.shard].address, start)
        elif child.participant is not None:
            spec = child.participant
            self.participants.pop(spec.name, None)
            self.participant_pids.pop(spec.name, None)
            window = self.participant_windows.setdefault(
                spec.name, RestartWindow(self.setup.policy)
            )
            if window.allow(time.time()):
                log.warning("participant %s exited; starting a new one", spec.name)
                self._create_participant(spec)
            else:
                delay = self.setup.policy.participant_restart_delay
                log.warning(
                    "participant %s exited again (more than %d times in %s s); starting a new "
                    "one in %s s",
                    spec.name,
                    self.setup.policy.max_restarts,
                    self.setup.policy.within,
                    delay,
                )
                self.respawning[spec.name] = spec
                self.wakeupAfter(timedelta(seconds=delay), Respawn(spec.name))

    # --- the owner process -------------------------------------------------------------------

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        if isinstance(msg.payload, StartRunsOut):
            self._start_runs_out()
        elif isinstance(msg.payload, Respawn):
            spec = self.respawning.pop(msg.payload.name, None)
            if spec is not None and not self.stopping:
                self._create_participant(spec)
        elif isinstance(msg.payload, Reconfigure):
            child = self._child_named(msg.payload.name)
            if (
                child is not None
                and child.participant is not None
                and (msg.payload.name not in self.participants)
            ):
                faults = self.setup.faults if self.setup is not None else ()
                spec = child.participant
                self.send(
                    child.address,
                    ConfigureParticipant(spec.name, spec.options, faults, self._watch_interval()),
                )

    def owner_gone(self) -> None:
        # Thespian's multi-process admin outlives the process that started it. Without its
        # owner nobody waits for these sagas, and a restarted owner starts a second system on
        # the same store: stop, and let that restart resume every unfinished saga.
        log.error(
            "the application process that started understudy has exited; shutting the actor "
            "system down (unfinished sagas resume when understudy starts again on this store)"
        )
        self.stopping = True
        if self.setup is None or self.setup.owns_system:
            self.actorSystemShutdown()
            # Should the admin not carry the shutdown out, this actor and its children go.
            self.send(self.myAddress, ActorExitRequest())
        else:
            # The application's own actor system: only understudy's actors go (Thespian stops
            # this actor's children, the hosts and participants, with it).
            self.send(self.myAddress, ActorExitRequest())

    def receiveMsg_Stop(self, msg: Stop, sender: Any) -> None:
        self.stopping = True
        self.stop_reply = sender
        self.stop_pending = set[int | str](self.hosts)
        for host in self.hosts.values():
            self.send(host.address, Stop())
        # Participants close their databases too: on the in-process base nothing else would
        # before garbage collection, and a later runtime must not inherit open connections.
        for child in self.children:
            if child.participant is not None and child.participant.name in self.participants:
                self.stop_pending.add(child.participant.name)
                self.send(child.address, Stop())
        if self.setup is not None and self.setup.owns_system:
            # Participants the application registered go with understudy's own actor system
            # (which does not tell them it is going, in-process): they close theirs too. Not
            # waited for: the application may have stopped them already.
            children = [c.address for c in self.children]
            for address in self.participants.values():
                if not any(address == child for child in children):
                    self.send(address, Stop())
        self._stopped_step()

    def receiveMsg_Stopped(self, msg: Stopped, sender: Any) -> None:
        self.stop_pending.discard(msg.participant if msg.participant is not None else msg.shard)
        self._stopped_step()

    def _stopped_step(self) -> None:
        if not self.stop_pending and self.stop_reply is not None:
            self.send(self.stop_reply, Pong("stop", os.getpid()))
            self.stop_reply = None
