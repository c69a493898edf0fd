"""The embedded runtime: start understudy inside a process and talk to it from plain or asyncio
code.

How synchronous Thespian and asyncio meet (the decision, and why):

- Actors stay synchronous and use ``sqlite3`` directly: a Thespian handler cannot await, and
  running an event loop inside a handler would add a loop turn to every commit. Each saga host
  owns one connection and group-commits (see :mod:`understudy.supervisors.host`).
- Application code reaches the actor system through ONE bridge thread that owns the
  ``ActorSystem`` handle. A Thespian handle shared by several threads loses replies, and the
  in-process base runs every actor in whichever thread calls it, so exactly one thread may drive
  it. Callers put a command on a queue and get a ``concurrent.futures.Future``; synchronous calls
  wait on it, asyncio calls await it through ``asyncio.wrap_future``. Commands that arrive while
  the bridge is busy go to the coordinator as one :class:`Batch`, so concurrent starts share
  commits.
- Read-only queries from asyncio code (``status_async``) run in two reader threads the runtime
  keeps, each with its store reader open for the runtime's life, so that the event loop never
  blocks on the store and thousands of concurrent calls cost no connection or thread each (an
  aiosqlite connection per call stalled the loop for seconds: ``python -m bench.status_async``).
  They never go through the actors. Writes never come from the asyncio side: one writer per
  process per file.

``python -m bench`` measures the aiosqlite/sqlite3 commit ratio behind the first choice (0.41x
when this was decided).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from understudy import choreography, codec
from understudy.actors.plumbing import Stop
from understudy.actors.reactor import with_store
from understudy.actors.system import (
    IN_PROCESS,
    LOOPBACK,
    ActorExitRequest,
    base_of,
    child_pids,
    class_path,
    is_multiprocess,
    private_handle,
    reap,
    start_actor_system,
)
from understudy.actors.watch import is_running, process_identity
from understudy.bridge import Bridge
from understudy.chains import Chain, read_chain
from understudy.definitions import SagaDefinition, with_children
from understudy.errors import (
    ActorSystemError,
    ChainNotFound,
    CoordinatorTimeout,
    LeaseLost,
    PayloadError,
    SagaNotFound,
    SagaRejected,
    StoreUnavailable,
    UnderstudyError,
    UnknownDefinition,
    UnknownParticipant,
)
from understudy.failpoints import Fault
from understudy.lifecycle import Subscribe, Unsubscribe, check_kinds
from understudy.messages import (
    AddParticipant,
    SagaAccepted,
    SagaFinished,
    StartRejected,
    StartSaga,
)
from understudy.operate import Operator
from understudy.persistence import SagaStore, open_store, redact
from understudy.persistence.base import SagaRecord
from understudy.subscription import Subscription
from understudy.supervisors.coordinator import Coordinator
from understudy.supervisors.leases import (
    DEFAULT_TTL,
    RUNNING_HERE,
)
from understudy.supervisors.policy import RestartPolicy
from understudy.supervisors.protocol import (
    CoordinatorSetup,
    HostsInfo,
    QueryHosts,
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

_ERRORS: dict[str, type[UnderstudyError]] = {
    "UnknownDefinition": UnknownDefinition,
    "UnknownParticipant": UnknownParticipant,
    "PayloadError": PayloadError,
    "StoreUnavailable": StoreUnavailable,
    "LeaseLost": LeaseLost,
}


def _rejection_error(reply: StartRejected) -> UnderstudyError:
    return _ERRORS.get(reply.error, SagaRejected)(reply.reason)


#: Threads that read the store for asyncio queries (status_async): SQLite readers do not block
#: one another, and two keep one slow read from holding up the rest.
ASYNC_READERS = 2


class Understudy:
    """An understudy runtime embedded in this process: actor system, coordinator, hosts.

    Start it with :meth:`start` (or use it as a context manager) and stop it with
    :meth:`shutdown`. Saga starts are idempotent by saga id.
    """

    def __init__(
        self,
        asys: Any,
        coordinator: Any,
        store: StoreConfig,
        base: str,
        resumed: int,
    ) -> None:
        self._asys = asys
        #: The coordinator's address: app actors send it StartSaga and QueryStatus.
        self.address = coordinator
        self._store_config = store
        self.base = base
        self.resumed = resumed
        self._bridge = Bridge(asys, coordinator)
        self._bridge.start()
        self._local = threading.local()
        self._readers: list[SagaStore] = []
        self._admin: set[int] = set()
        self._readers_lock = threading.Lock()
        # The threads asyncio queries read the store in (each with its own reader, opened once):
        # a query costs a hop to one of them, not a connection and a thread of its own.
        self._async_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._tokens = itertools.count()
        self._client_id = f"{os.getpid()}-{id(self):x}"
        self._runtime_id = ""  # set by start: the holder of this runtime's shard leases
        self._close_handle: Any = asys.shutdown  # set by start
        self._system: Any = asys  # the actor system's own handle (private() clones it)
        self._owned = True  # understudy started the actor system (and shuts it down)

    @classmethod
    def start(
        cls,
        store: str | os.PathLike[str],
        definitions: Iterable[SagaDefinition],
        participants: Iterable[tuple[str, type, dict[str, Any]]] = (),
        *,
        base: str | None = None,
        actor_system: Any = None,
        hosts: int | None = None,
        policy: RestartPolicy | None = None,
        store_options: dict[str, Any] | None = None,
        admin_port: int | None = None,
        faults: Sequence[Fault] = (),
        max_snapshot_bytes: int = 1 << 20,
        watch_interval: float = 2.0,
        timeout: float = 60.0,
        host_class: type | None = None,
        lease_ttl: float = DEFAULT_TTL,
    ) -> Understudy:
        """Start understudy's coordinator over the store at ``store``, in an actor system of
        its own (``base``, the in-process one by default), or in the application's own
        (``actor_system``: a Thespian ``ActorSystem`` handle of any base, which keeps its
        admin port, capabilities and logging).

        In an actor system of its own, :meth:`shutdown` shuts that system down. In the
        application's, it stops only what understudy started (its coordinator, saga hosts and
        participants) and leaves the system running. While understudy runs, its bridge thread
        drives the handle it was given: reach the system from other threads through
        :meth:`private` (on the in-process base every actor runs in the thread that drives the
        handle, and a Thespian handle shared by threads loses replies).

        ``participants`` are ``(name, ParticipantClass, options)`` triples created, configured
        and supervised by the coordinator before any unfinished saga resumes. ``hosts`` is the
        number of saga host actors, one per shard of the store. The shard count is fixed in the
        store when it is first used; by default a start takes the store's count, or for a new
        store 1 in-process and the CPU count on multi-process bases. Asking for another count
        than the store's raises :class:`~understudy.errors.ShardCountMismatch`. A store that
        another live runtime works on is refused with :class:`~understudy.errors.StoreInUse`;
        each saga host holds its shard through a lease of ``lease_ttl`` seconds, renewed
        every third of it.
        Every unfinished saga in the store is resumed before this returns. A saga whose
        snapshot would exceed ``max_snapshot_bytes`` parks as failed instead of growing.

        On multi-process bases Thespian's actor processes would outlive the process that
        started them; every ``watch_interval`` seconds they check that it still runs, and shut
        themselves down once it has exited (a new start resumes their sagas).

        ``faults`` arms :mod:`understudy.failpoints` in every actor (crash tests), and
        ``host_class`` replaces the saga host with a subclass: both exist to test understudy
        itself (:mod:`understudy.testing` uses them), not for production.
        """
        # The definitions of child sagas (Step.child) are registered with their parents'.
        definitions = with_children(definitions)
        participants = list(participants)
        if actor_system is not None:
            given = base_of(actor_system)
            if base is not None and base != given:
                raise ActorSystemError(
                    f"base={base!r} was asked for, but the actor system given is a {given}; "
                    "leave base out when passing actor_system"
                )
            base = given
        elif base is None:
            base = IN_PROCESS
        store_config = StoreConfig(os.fspath(store), dict(store_options or {}))
        participants = with_store(participants, store_config.location)  # reactors: the log
        participants = with_children_participant(participants, definitions, store_config)
        if not is_multiprocess(base) and any(f.action in ("kill", "kill_system") for f in faults):
            raise ActorSystemError(
                f"a kill fault on the in-process base ({base}) would kill this very process "
                "(every actor runs in it); use action='raise' there, or a multi-process base"
            )
        if is_multiprocess(base) and actor_system is None:
            _refuse_open_databases(
                [store_config.location]
                + [str(opts["database"]) for _n, _c, opts in participants if "database" in opts]
            )
        refuse_memory(store_config)
        # Checked before anything is taken: a class the actors cannot load fails the start here.
        in_process = not is_multiprocess(base)
        specs = participant_specs(participants, in_process)
        host_path = class_path(host_class, in_process) if host_class is not None else None
        runtime_id = uuid.uuid4().hex
        RUNNING_HERE.add(runtime_id)
        # Fail fast, in the caller's thread, on a store that cannot be opened or written, that
        # was created with another shard count, or that another live runtime works on.
        try:
            # Held for the start's own bound: the hosts renew them once they run.
            hosts, leases = take_shards(
                store_config,
                hosts,
                is_multiprocess(base),
                runtime_id,
                max(lease_ttl, timeout),
                process_identity(os.getpid()),
            )
        except BaseException:
            RUNNING_HERE.discard(runtime_id)
            raise
        # Only a multi-process system understudy starts forks a process of this one (its admin).
        forks = actor_system is None and is_multiprocess(base)
        children = child_pids() if forks else set()
        try:
            if actor_system is None:
                _refuse_taken_port(admin_port)
                asys = start_actor_system(base, admin_port=admin_port)
                handle, close_handle, owned = asys, asys.shutdown, True
            elif is_multiprocess(base):
                # A handle of understudy's own on the application's system: its replies come
                # to the bridge alone, and closing it leaves the system running.
                handle, close_handle = private_handle(actor_system)
                owned = False
            else:
                # In-process, the thread that drives the handle runs every actor: the bridge
                # drives the application's handle (the application uses private() meanwhile).
                handle, close_handle, owned = actor_system, _nothing, False
        except BaseException:
            give_back_shards(store_config, leases)
            RUNNING_HERE.discard(runtime_id)
            raise
        coordinator = None
        try:
            coordinator = handle.createActor(Coordinator)
            setup = CoordinatorSetup(
                store_config,
                definitions,
                hosts,
                policy or RestartPolicy(),
                specs,
                tuple(faults),
                max_snapshot_bytes,
                process_identity(os.getpid()) if is_multiprocess(base) else None,
                watch_interval if is_multiprocess(base) else None,
                host_path,
                FLUSH_WINDOW if is_multiprocess(base) else 0.0,
                runtime_id,
                lease_ttl,
                leases,
                timeout,
                owned,
            )
            reply = handle.ask(coordinator, setup, timeout)
            if reply is None:
                raise CoordinatorTimeout(f"understudy did not start within {timeout} s")
            if reply.error:
                raise ActorSystemError(f"understudy could not start: {reply.error}")
        except BaseException:
            if not owned and coordinator is not None:
                handle.tell(coordinator, ActorExitRequest())
                if not is_multiprocess(base):
                    handle.listen(0.05)  # in-process, this thread runs what was just sent
            close_handle()
            if forks:
                reap(child_pids() - children)  # a failed start leaves no zombie admin either
            give_back_shards(store_config, leases)
            RUNNING_HERE.discard(runtime_id)
            raise
        runtime = cls(handle, coordinator, store_config, base, reply.resumed)
        runtime._close_handle = close_handle
        runtime._system = actor_system if actor_system is not None else handle
        runtime._owned = owned
        runtime._admin = child_pids() - children if forks else set()
        runtime._runtime_id = runtime_id
        return runtime

    # --- starting sagas ------------------------------------------------------------------------

    def _start_message(
        self,
        saga_id: str,
        definition: str | SagaDefinition,
        payload: dict[str, Any] | None,
        version: int | None,
        wait: bool,
    ) -> StartSaga:
        name = definition if isinstance(definition, str) else definition.name
        if isinstance(definition, SagaDefinition):
            version = definition.version
        payload = {} if payload is None else payload
        codec.check_encodable(payload, f"payload of saga {saga_id!r}")
        return StartSaga(
            saga_id, name, payload, version, wait, f"{self._client_id}-{next(self._tokens)}"
        )

    def submit_future(
        self,
        saga_id: str,
        definition: str | SagaDefinition,
        payload: dict[str, Any] | None = None,
        *,
        version: int | None = None,
        wait: bool = True,
    ) -> concurrent.futures.Future[Any]:
        """Start a saga without blocking: the future resolves as :meth:`run` returns (with
        ``wait``) or :meth:`submit` returns (without), and raises as they raise. For many
        starts at once from plain code: they share commits."""
        message = self._start_message(saga_id, definition, payload, version, wait)
        reply = self._bridge.submit(message, ("request", message.request_id))
        outcome: concurrent.futures.Future[Any] = concurrent.futures.Future()
        settle = _finished if wait else _accepted

        def resolve(done: concurrent.futures.Future[Any]) -> None:
            if outcome.done():
                return  # cancelled: its caller gave up
            try:
                outcome.set_result(settle(done.result()))
            except BaseException as exc:
                outcome.set_exception(exc)

        def forget(given_up: concurrent.futures.Future[Any]) -> None:
            if given_up.cancelled():
                reply.cancel()  # the bridge stops holding it (Bridge sweeps cancelled ones)

        reply.add_done_callback(resolve)
        outcome.add_done_callback(forget)
        return outcome

    def run(
        self,
        saga_id: str,
        definition: str | SagaDefinition,
        payload: dict[str, Any] | None = None,
        *,
        version: int | None = None,
        timeout: float | None = 60.0,
    ) -> SagaFinished:
        """Start a saga (or find the one with this id) and wait until it is terminal."""
        future = self.submit_future(saga_id, definition, payload, version=version)
        return _result(future, timeout, saga_id)

    def submit(
        self,
        saga_id: str,
        definition: str | SagaDefinition,
        payload: dict[str, Any] | None = None,
        *,
        version: int | None = None,
        timeout: float | None = 60.0,
    ) -> SagaAccepted:
        """Start a saga without waiting for its end; returns once the start is durable."""
        future = self.submit_future(saga_id, definition, payload, version=version, wait=False)
        return _result(future, timeout, saga_id)

    async def run_async(
        self,
        saga_id: str,
        definition: str | SagaDefinition,
        payload: dict[str, Any] | None = None,
        *,
        version: int | None = None,
        timeout: float | None = 60.0,
    ) -> SagaFinished:
        """asyncio twin of :meth:`run`."""
        future = self.submit_future(saga_id, definition, payload, version=version)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except TimeoutError as exc:
            raise CoordinatorTimeout(
                f"saga {saga_id!r} did not finish within {timeout} s; it "
                "goes on, query its status later"
            ) from exc

    async def submit_async(
        self,
        saga_id: str,
        definition: str | SagaDefinition,
        payload: dict[str, Any] | None = None,
        *,
        version: int | None = None,
        timeout: float | None = 60.0,
    ) -> SagaAccepted:
        """asyncio twin of :meth:`submit`."""
        future = self.submit_future(saga_id, definition, payload, version=version, wait=False)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except TimeoutError as exc:
            raise CoordinatorTimeout(
                f"no answer about saga {saga_id!r} within {timeout} s; if its start was made "
                "durable it goes on, query its status later"
            ) from exc

    # --- queries --------------------------------------------------------------------------------

    def _reader(self) -> SagaStore:
        store = getattr(self._local, "store", None)
        if store is None:
            store = open_store(self._store_config.location, read_only=True)
            self._local.store = store
            with self._readers_lock:
                self._readers.append(store)
        return store

    def record(self, saga_id: str) -> SagaRecord:
        """The saga's stored row; raises :class:`SagaNotFound`."""
        record = self._reader().get(saga_id)
        if record is None:
            raise SagaNotFound(
                f"no saga with id {saga_id!r} in {redact(self._store_config.location)!r}"
            )
        return record

    def status(self, saga_id: str) -> str:
        """The saga's stored status (running, compensating, completed, compensated, failed)."""
        return self.record(saga_id).status

    async def status_async(self, saga_id: str) -> str:
        """asyncio twin of :meth:`status`. The store is read in one of two threads this runtime
        keeps for asyncio queries, each with its reader open for the runtime's life, so that
        thousands of concurrent calls cost the event loop a hand-off each, never a connection
        or a thread of their own."""
        loop = asyncio.get_running_loop()
        record = await loop.run_in_executor(self._async_readers(), self.record, saga_id)
        return record.status

    def _async_readers(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._readers_lock:
            if self._async_pool is None:
                self._async_pool = concurrent.futures.ThreadPoolExecutor(
                    ASYNC_READERS, thread_name_prefix="understudy-reader"
                )
            return self._async_pool

    def operator(self, who: str | None = None, wait: float = 10.0) -> Operator:
        """Operators' verbs (cancel, pause, resume, retry, skip, resolve, abandon) and
        compensation debt for this runtime's sagas, recorded as done by ``who`` (default
        ``user@host``). Its saga hosts apply each verb within about half a second; a verb
        waits up to ``wait`` seconds for that. Close it when done (it is a context manager)::

            with us.operator(who="alice") as op:
                op.cancel("order-17", why="the customer called it off")
        """
        return Operator(self._store_config.location, who=who, wait=wait)

    def wait(self, saga_id: str, timeout: float = 60.0, poll: float = 0.02) -> SagaRecord:
        """Poll the store until the saga is terminal (works across process restarts)."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.record(saga_id)
            if record.terminal:
                return record
            if time.monotonic() > deadline:
                raise CoordinatorTimeout(
                    f"saga {saga_id!r} is still {record.status} after {timeout} s"
                )
            time.sleep(poll)

    def add_participant(
        self, name: str, participant: type, options: dict[str, Any], timeout: float = 30.0
    ) -> None:
        """Create, configure and supervise a participant actor registered as ``name``."""
        future = self._bridge.submit(
            AddParticipant(
                name,
                class_path(participant, not is_multiprocess(self.base)),
                with_store([(name, participant, options)], self._store_config.location)[0][2],
            ),
            ("participant", name),
        )
        reply = _result(future, timeout, name)
        if reply.error:
            raise ActorSystemError(f"participant {name!r} could not start: {reply.error}")

    def subscribe(
        self,
        definition: str | None = None,
        saga_id: str | None = None,
        kinds: Sequence[str] | None = None,
        *,
        buffer: int = 10_000,
        timeout: float = 10.0,
    ) -> Subscription:
        """Lifecycle events (:mod:`understudy.lifecycle`) of every saga, of one definition's
        or of one saga's, of every kind or of ``kinds``, as they are committed from now on:
        iterate the :class:`~understudy.subscription.Subscription` (``for``, or ``async for``
        in asyncio code) and close it when done (it is a context manager). A reader that falls
        more than ``buffer`` events behind loses the oldest. Returns once every saga host
        sends them. Unknown kinds raise :class:`ValueError`."""
        checked = check_kinds(kinds)
        subscription_id = f"sub-{uuid.uuid4().hex[:12]}"
        bridge = self._bridge
        subscription = Subscription(
            subscription_id, buffer, lambda: self._unsubscribe(subscription_id)
        )
        bridge.subscriptions[subscription_id] = subscription
        try:
            reply = _result(
                bridge.submit(
                    Subscribe(definition, saga_id, checked, subscription_id),
                    ("subscribed", subscription_id),
                ),
                timeout,
                "a subscription to lifecycle events",
            )
        except BaseException:
            bridge.subscriptions.pop(subscription_id, None)
            raise
        if reply.error:
            bridge.subscriptions.pop(subscription_id, None)
            raise ValueError(reply.error)
        return subscription

    async def subscribe_async(
        self,
        definition: str | None = None,
        saga_id: str | None = None,
        kinds: Sequence[str] | None = None,
        *,
        buffer: int = 10_000,
        timeout: float = 10.0,
    ) -> Subscription:
        """asyncio twin of :meth:`subscribe` (it waits for the saga hosts without blocking the
        event loop): ``async for event in await us.subscribe_async(...)``."""
        return await asyncio.to_thread(
            self.subscribe, definition, saga_id, kinds, buffer=buffer, timeout=timeout
        )

    def _unsubscribe(self, subscription_id: str) -> None:
        self._bridge.subscriptions.pop(subscription_id, None)
        self._bridge.submit(Unsubscribe(subscription_id), None)

    # --- choreography -------------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        data: Any = None,
        correlation_id: str | None = None,
        *,
        event_id: str | None = None,
    ) -> str:
        """Publish an event on ``topic`` to the store's event log, for every reactor that
        reacts to it (see :mod:`understudy.actors.reactor`); durable when this returns.
        Returns the chain's correlation id: ``correlation_id``, or a new one. The same
        ``event_id`` published again appends nothing."""
        store = getattr(self._local, "publisher", None)
        if store is None:
            store = open_store(self._store_config.location, **self._store_config.options)
            self._local.publisher = store
            with self._readers_lock:
                self._readers.append(store)  # closed with the readers at shutdown
        return choreography.publish(store, topic, data, correlation_id, event_id=event_id)

    def chain(self, correlation_id: str) -> Chain:
        """The chain ``correlation_id`` as read from the store now: who reacted to what, what
        is pending, failed and compensated (:class:`~understudy.chains.Chain`)."""
        chain = read_chain(self._reader(), correlation_id)
        if chain is None:
            raise ChainNotFound(
                f"no event of chain {correlation_id!r} in {redact(self._store_config.location)!r}"
            )
        return chain

    def hosts(self, timeout: float = 10.0) -> HostsInfo:
        """Pids of the saga hosts and participants (for crash tests and diagnostics)."""
        return _result(self._bridge.submit(QueryHosts(), ("hosts",)), timeout, "hosts")

    # --- the actor system -------------------------------------------------------------------

    @contextlib.contextmanager
    def private(self) -> Iterator[Any]:
        """A Thespian handle of this thread's own on the actor system understudy runs in, for
        as long as the ``with`` block lasts: create app actors with it, ``tell`` and ``ask``
        them. Replies to what it sends come to it alone (Thespian's ``ActorSystem.private``),
        so it works beside understudy's bridge and beside other threads' handles. Use one
        handle per thread; do not share it."""
        handle, close = private_handle(self._system)
        try:
            yield handle
        finally:
            close()

    # --- lifecycle ------------------------------------------------------------------------------

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop understudy: its saga hosts (they get ``timeout`` seconds to let go of the store
        cleanly), participants and coordinator, then its bridge thread. An actor system
        understudy started is shut down with it (every actor process on multi-process bases);
        the application's own is left running, with its other actors."""
        pids: set[int] = set()
        if not self._owned and is_multiprocess(self.base) and self._bridge.is_alive():
            with contextlib.suppress(UnderstudyError):
                info = self.hosts(timeout)
                pids = {info.coordinator_pid, *info.host_pids.values()}
                pids.update(info.participant_pids.values())
        if self._bridge.is_alive():
            # Shutting down regardless: a child restarted now would only be orphaned.
            with contextlib.suppress(concurrent.futures.TimeoutError, ActorSystemError):
                self._bridge.submit(Stop(), ("pong", "stop")).result(timeout)
        self._bridge.stop()
        self._bridge.join(timeout=30)
        with self._readers_lock:
            readers, self._readers = self._readers, []
            pool, self._async_pool = self._async_pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        for reader in readers:  # every thread's, so that no connection outlives the runtime
            reader.close()
        self._local = threading.local()
        if not self._owned:
            self._leave(pids, timeout)
        self._close_handle()
        RUNNING_HERE.discard(self._runtime_id)
        reap(self._admin)  # Thespian detached its admin: collect it, or it stays a zombie

    def _leave(self, pids: set[int], timeout: float) -> None:
        """Take understudy's actors out of the application's actor system: the coordinator
        exits, and Thespian stops its children (hosts and participants) with it."""
        self._asys.tell(self.address, ActorExitRequest())
        if not is_multiprocess(self.base):
            # In-process, what is sent runs while the handle is listened to (the bridge that
            # did that has stopped); the application's own handle is free again after this.
            self._asys.listen(0.05)
            return
        deadline = time.monotonic() + timeout
        for pid in pids:
            while pid and is_running(process_identity(pid)) and time.monotonic() < deadline:
                time.sleep(0.02)

    def __enter__(self) -> Understudy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()


def _nothing() -> None:
    pass


def _refuse_taken_port(port: int | None) -> None:
    """An admin port something listens on already: Thespian would join the actor system
    there instead of starting one, and understudy's shutdown would then shut it down."""
    if port is None:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        if probe.connect_ex((LOOPBACK, port)) != 0:
            return
    raise ActorSystemError(
        f"admin_port {port} is taken (by a running actor system?). To run understudy in your "
        "application's actor system, pass its handle as actor_system=...; otherwise choose a "
        "free port, or leave admin_port out for a free one"
    )


def _refuse_open_databases(paths: list[str]) -> None:
    """Refuse to start a multi-process runtime while this process has one of its databases
    open. Thespian forks every actor process from this one (through its admin), and a SQLite
    connection must never cross fork(): the children inherit its file descriptors and lock
    state, their own connections to the same file then lose locks, and commits can be lost.
    Linux only (it reads /proc/self/fd); elsewhere nothing is checked."""
    fd_dir = "/proc/self/fd"
    if not os.path.isdir(fd_dir):
        return
    watched = {
        os.path.realpath(path) + suffix: path
        for path in paths
        if "://" not in path
        for suffix in ("", "-wal", "-shm", "-journal")
    }
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if target in watched:
            raise ActorSystemError(
                f"this process has {target!r} open (a SQLite connection to "
                f"{watched[target]!r}?) while starting a multi-process actor system. Its actor "
                "processes are forked from this one, and a SQLite connection must not cross "
                "fork(): close that connection before Understudy.start and open it again after"
            )


def _result(future: concurrent.futures.Future[Any], timeout: float | None, what: str) -> Any:
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError as exc:
        future.cancel()  # nobody waits for it any more: the bridge lets go of it
        raise CoordinatorTimeout(
            f"no answer about {what!r} within {timeout} s; a saga goes "
            "on regardless, query its status later"
        ) from exc


def _finished(reply: Any) -> SagaFinished:
    if isinstance(reply, StartRejected):
        raise _rejection_error(reply)
    assert isinstance(reply, SagaFinished), reply
    return reply


def _accepted(reply: Any) -> SagaAccepted:
    if isinstance(reply, StartRejected):
        raise _rejection_error(reply)
    if isinstance(reply, SagaFinished):
        return SagaAccepted(reply.saga_id, existing=True)
    assert isinstance(reply, SagaAccepted), reply
    return reply
