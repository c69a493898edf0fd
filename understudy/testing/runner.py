"""The chaos runner: run a workload under a fault schedule, heal, quiesce, check.

One run, in its own directory (a fresh store and fresh participant ledgers):

1. **faulty phase**: start understudy with the schedule's faults armed, start every saga of the
   workload, and wait until they are all terminal, or nothing has changed for ``stall`` seconds
   (a persistent fault, a dead actor system), or ``window`` seconds have passed; the schedule's
   operator actions due meanwhile are carried out (:mod:`understudy.testing.operators`);
2. **heal**: shut that runtime down (whatever is left of it), start a clean one on the same
   files with no faults: it resumes every unfinished saga, exactly as a restarted application
   does. Starts that were never acknowledged are sent again, as a client that retries would
   (starts are idempotent by saga id);
   The workload's last ``probes`` sagas are started only now: a healed system must work
   again on the same files, and a run where the faults parked every saga still shows progress;
   the operator actions of the heal, and those the faulty phase did not reach, are carried out
   while it runs, and then a diligent operator resumes every saga still paused;
3. **quiesce**: wait until the store holds no unfinished saga and no operator's command is
   pending (and, for a choreography, every chain ended and every reactor's outbox is
   relayed), at most ``recovery_bound`` seconds, and shut down;
4. **check**: :func:`understudy.testing.checker.check` reads the store and the ledgers.

Runs are independent and repeatable: a :class:`FaultSchedule` names the faults and the workload.

A workload may start choreographed chains (:class:`~understudy.testing.checker.ChainStart`) as
well as sagas: the faulty phase publishes their first events (and waits for the chains to end,
as for the sagas), the heal publishes again those whose publish never returned, with the same
event ids, so nothing is appended twice (:mod:`understudy.testing.chain_driver`).

The saga store is a SQLite file in the run's directory, or (``store="postgresql://..."``) a
fresh database on that PostgreSQL server, dropped after a passing run and kept after a failing
one (:mod:`understudy.testing.stores`). Every read of the store goes through
:func:`understudy.persistence.open_store` read-only, and rides out the store's outages. On
PostgreSQL the schedule can also restart the database server, while the faulty runtime works or
while the healing runtime recovers (:class:`~understudy.testing.schedule.ServerRestart`), when
the runner is given ``restart_server``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs

from understudy import failpoints
from understudy.actors.reactor import Reactor
from understudy.actors.watch import process_identity
from understudy.definitions import SagaDefinition, with_children
from understudy.errors import StoreUnavailable, UnderstudyError
from understudy.failpoints import HANG_SECONDS, POINTS
from understudy.messages import SagaAccepted, SagaFinished
from understudy.persistence import POSTGRES_SCHEMES, SagaStore, open_store, redact
from understudy.persistence.base import ACTIVE_STATUSES, TERMINAL_STATUSES
from understudy.runtime import Understudy
from understudy.supervisors.leases import holder_state
from understudy.supervisors.policy import RestartPolicy
from understudy.testing import stores
from understudy.testing.chain_driver import ChainDriver
from understudy.testing.checker import (
    ChainStart,
    Invariant,
    Report,
    RunView,
    SagaStart,
    Start,
    check,
    ledger_location,
)
from understudy.testing.operators import Operators, VerbTaken, figures, verb_lines
from understudy.testing.schedule import (
    FAULTY,
    RECOVERY,
    SQLITE,
    FaultSchedule,
    ServerRestart,
    random_schedule,
    single_fault,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
#: Events that are not progress: a saga claimed and resumed over and over (a commit that keeps
#: failing, a host that keeps dying) goes nowhere. See also :func:`_newest_progress`.
CHURN = frozenset({"claimed", "resumed"})
RESTART_PAUSE = 0.25  # seconds between starts the healing phase's client sends again
#: Seconds between looks at the store while a phase waits: short for the first second, in which
#: most phases end (a run's few sagas take a few hundred milliseconds, and every look sooner is
#: time a sweep of a hundred runs does not wait), longer after it, so that a long phase (sagas
#: timing out, a hang) does not keep a core busy with queries the actors need.
POLL_SOON = 0.01
POLL_LATER = 0.05
SOON = 1.0

Participants = list[tuple[str, type, dict[str, Any]]]


class Scenario:
    """What to put under fault: your definitions, your participants and a workload.

    Subclass it, set :attr:`definitions`, and implement :meth:`participants` and
    :meth:`workload`; add domain invariants by overriding :meth:`invariants`. Give steps short
    timeouts (a second or so): dropped messages and hung actors are noticed by them.

    Choreography: participants may be reactors (:class:`~understudy.choreography.Reactor`),
    and a workload may start chains (:class:`ChainStart`: an event published from plain code)
    as well as sagas; name the reactors in :attr:`reactors` so that the exhaustive mode sweeps
    the participant failpoints in each of them.
    """

    definitions: Sequence[SagaDefinition] = ()
    #: The names of the scenario's reactors (its definitions name its participants).
    reactors: Sequence[str] = ()
    #: The failpoints campaigns draw faults at, and the exhaustive mode sweeps by default: all
    #: of them, unless the scenario reaches only some (a choreography reaches only the
    #: participant points a reactor hits; drawing the others would only dilute its faults).
    points: Sequence[str] = POINTS
    #: Sagas (or chains) that must complete in a run for it to count (the progress rule).
    min_completed: int = 1

    def participants(self, directory: Path, sagas: list[Any]) -> Participants:
        """``(name, ParticipantClass, options)`` for each participant (and reactor), with its
        database under ``directory``; ``sagas``: the workload (its :class:`SagaStart` and
        :class:`ChainStart` values)."""
        raise NotImplementedError

    def workload(self, rng: random.Random, count: int) -> Sequence[Start]:
        """``count`` sagas (or chains) to start, drawn from ``rng`` (a run is repeatable from
        its seed)."""
        raise NotImplementedError

    def invariants(self) -> Iterable[Invariant]:
        """Domain invariants: callables that get a :class:`RunView` and return complaints."""
        return ()


@attrs.frozen
class RunResult:
    schedule: FaultSchedule
    directory: Path
    report: Report
    fired: tuple[str, ...]  # one line per fault that fired: "point action pid=... saga=..."
    sagas: int
    acknowledged: int
    host_restarts: int
    resumed: int  # sagas the healing runtime resumed
    recovery_seconds: float  # heal start until no saga unfinished
    started_ok: bool  # the faulty runtime started (a fault can stop it starting)
    saved: Path | None = None  # where the schedule was saved because the run failed
    #: The run's saga store, as it may be shown (a PostgreSQL URL without credentials): a
    #: failing run's database is kept, to be read with ``understudy show``.
    store: str = ""
    server_restarts: int = 0  # database server restarts carried out
    heal_starts: int = 1  # starts the healing runtime took (a restart can fail a start)
    #: Leases still in this process's name when the heal began, freed as a new process finds
    #: them (see ``_as_a_new_process``).
    stale_leases: int = 0
    heal_began_at: float = 0.0  # when the heal began (time.time(), as faults.log's at=)
    heal_start_seconds: float = 0.0  # how long the healing runtime's start took, retries included
    #: The operators' verbs carried out (the schedule's, and the heal's diligent resumes), each
    #: with what became of it as the store says at the end.
    verbs: tuple[VerbTaken, ...] = ()
    chains: int = 0  # chains the workload started (``sagas`` counts its sagas)

    @property
    def ok(self) -> bool:
        return self.report.ok

    def fired_kinds(self) -> Counter[str]:
        return Counter(line.split()[1] for line in self.fired)

    def fired_at(self, point: str) -> int:
        """How many times a fault fired at ``point``."""
        return sum(line.split()[0] == point for line in self.fired)


class ChaosRunner:
    """Runs schedules of one :class:`Scenario` on one actor system base.

    ``failures``: where a failing run's schedule is saved (default: next to the run's data).
    ``store``: None for a SQLite file in each run's directory, or the URL of a PostgreSQL server
    on which each run gets a database of its own (created, and dropped after a passing run
    unless ``keep_stores``). ``restart_server``: a callable that restarts that server and
    returns once it accepts connections again; with it, drawn PostgreSQL schedules restart the
    server mid-run.
    """

    def __init__(
        self,
        scenario: Scenario,
        directory: str | Path,
        *,
        base: str = "simpleSystemBase",
        hosts: int = 1,
        policy: RestartPolicy | None = None,
        window: float = 30.0,
        stall: float = 1.5,
        recovery_bound: float = 60.0,
        failures: str | Path | None = None,
        host_class: type | None = None,
        probes: int = 2,
        scenario_path: str | None = None,
        store: str | None = None,
        restart_server: Callable[[], None] | None = None,
        keep_stores: bool = False,
    ) -> None:
        self.scenario = scenario
        self.directory = Path(directory)
        self.base = base
        self.hosts = hosts
        self.policy = policy or RestartPolicy()
        self.window = window
        self.stall = stall
        self.recovery_bound = recovery_bound
        self.failures = Path(failures) if failures is not None else None
        self.host_class = host_class
        self.probes = probes
        self.scenario_path = scenario_path  # "module:attr", saved with failing schedules
        self.store_kind = stores.kind_of(store)
        self.store = store  # holds credentials when the URL has them: never shown
        self.restart_server = restart_server
        self.keep_stores = keep_stores
        self._runs = 0

    def __repr__(self) -> str:
        where = redact(self.store) if self.store else "a SQLite file per run"
        return f"ChaosRunner({type(self.scenario).__name__}, {self.base}, store {where})"

    # --- one run ----------------------------------------------------------------------------

    def run(self, schedule: FaultSchedule, name: str | None = None) -> RunResult:
        """Run ``schedule`` (its base, hosts and store kind win over the runner's) and check
        the result."""
        if schedule.restarts and self.restart_server is None:
            raise ValueError(
                f"{schedule.describe()}: the schedule restarts the database server, and this "
                "runner cannot (give it restart_server, or understudy chaos --restart-command)"
            )
        self._runs += 1
        directory = self.directory / (name or f"run-{self._runs:05d}")
        directory.mkdir(parents=True, exist_ok=False)
        server = None
        if schedule.store == SQLITE:
            location = stores.sqlite_location(directory)
        else:
            server = stores.server_for_replay(self.store)
            location = stores.create_database(server, directory.name)
        result = self._run(schedule, directory, location)
        if server is not None and result.ok and not self.keep_stores:
            try:
                stores.drop_database(server, location)
            except Exception as exc:  # the run passed; a database left behind is only litter
                log.warning("could not drop %s after its run: %s", redact(location), exc)
        return result

    def _run(self, schedule: FaultSchedule, directory: Path, location: str) -> RunResult:
        # A saved schedule carries how its run was driven: a replay repeats that, not ours.
        policy = self.policy
        if "policy" in schedule.runner:
            policy = RestartPolicy(**schedule.runner["policy"])
        probe_count = int(schedule.runner.get("probes", self.probes))
        rng = random.Random(schedule.workload_seed)
        everything = self.scenario.workload(rng, schedule.sagas + probe_count)
        first, probes = everything[: schedule.sagas], everything[schedule.sagas :]
        sagas = [s for s in first if isinstance(s, SagaStart)]
        saga_probes = [s for s in probes if isinstance(s, SagaStart)]
        # Faults scoped to the workload's N-th start (#N) name a chain by its correlation id.
        saga_ids = [s.saga_id for s in everything]
        participants, ledgers = _fresh_ledgers(
            self.scenario.participants(directory, list(everything)), directory.name
        )
        reactors = {
            name: ledger_location(opts["database"])
            for name, cls, opts in participants
            if isinstance(cls, type) and issubclass(cls, Reactor)
        }
        chains = ChainDriver([s for s in everything if isinstance(s, ChainStart)], reactors)
        first_chains = [s.correlation_id for s in first if isinstance(s, ChainStart)]
        operators = Operators(
            location, self.scenario.definitions, participants, schedule.verbs, saga_ids
        )
        options: dict[str, Any] = {
            "base": schedule.base,
            "hosts": schedule.hosts,
            "policy": policy,
            "host_class": self.host_class,
        }
        restarts = _Restarts(self.restart_server, schedule.restarts, directory / "faults.log")
        acknowledged: set[str] = set()
        host_restarts = 0
        started_ok = alive = True
        # A ping must outwait the longest hang or delay the schedule can inflict, or a slow
        # system would be taken for a dead one and cut short.
        longest = max(
            (
                f.delay or (HANG_SECONDS if f.action == "hang" else 0.0)
                for f in schedule.faults
                if f.action in ("hang", "delay")
            ),
            default=0.0,
        )
        patience = max(self.stall, longest + 1.0)
        runtime: Understudy | None = None
        try:
            try:
                runtime = Understudy.start(
                    location,
                    self.scenario.definitions,
                    participants,
                    faults=schedule.armed(directory, saga_ids),
                    timeout=self.window,
                    **options,
                )
            except UnderstudyError:
                started_ok = False
            if runtime is not None:
                try:
                    # Half the callers wait for the end (the reply path), half only for the
                    # acknowledgement (what the checker's lost-saga rule holds the store to).
                    futures = {
                        s.saga_id: runtime.submit_future(
                            s.saga_id, s.definition, s.payload, wait=index % 2 == 1
                        )
                        for index, s in enumerate(sagas)
                    }
                    chains.publish(runtime, first_chains)
                    alive = self._faulty_phase(
                        runtime,
                        location,
                        futures,
                        acknowledged,
                        patience,
                        restarts,
                        directory / "faults.log",
                        operators,
                        chains,
                        first_chains,
                    )
                    if alive:
                        with contextlib.suppress(UnderstudyError):
                            host_restarts = runtime.hosts(timeout=patience).restarts
                finally:
                    # A restart drawn for this phase happens in it, whatever ended the phase;
                    # and the phase's runtime stops with the server up, as a crash would find it.
                    restarts.finish(FAULTY)
                    runtime.shutdown(timeout=patience if alive else 0.5)
                # Answers that arrived while the phase ended still count.
                acknowledged.update(
                    saga_id
                    for saga_id, future in futures.items()
                    if future.done() and isinstance(_reply(future), SagaAccepted | SagaFinished)
                )
            else:
                restarts.finish(FAULTY)
        finally:
            failpoints.disarm()  # the in-process base armed them in this very process

        # A shard still held when the heal starts (an actor process of the faulty runtime
        # that outlived its shutdown) can refuse or delay the heal: name the holder if it fails.
        held_before = _lease_holders(location)
        # The heal is the restart of the application: a new process, in which nothing of this
        # process's runtimes runs. Leases still in this process's name are freed, as the new
        # process would find them (counted: each one is a lease a shutdown or a failed start
        # left behind).
        stale_leases = _as_a_new_process(location)
        heal_started, heal_began_at = time.monotonic(), time.time()
        restart_in_heal = restarts.has(RECOVERY)
        restarts.begin(RECOVERY)
        try:
            healed, resumed, recovery, healer_start, heal_starts = self._heal(
                location,
                participants,
                options,
                sagas + saga_probes,
                acknowledged,
                heal_started,
                operators,
                retry=restart_in_heal,
                chains=chains,
            )
        finally:
            restarts.finish(RECOVERY)
        verbs = _riding_out(lambda: _read(location, operators.settle))

        view = RunView(
            directory,
            Path(location) if schedule.store == SQLITE else location,
            {
                name: ledger_location(opts["database"])
                for name, _cls, opts in participants
                # A participant without a database keeps no ledger (understudy.children's
                # effects are its child sagas, in the store).
                if name not in reactors and "database" in opts
            },
            tuple(self.scenario.definitions),
            tuple(s for s in everything if isinstance(s, SagaStart)),
            frozenset(acknowledged),
            policy,
            frozenset(operators.by_hand),
            # The healing runtime ran until no command was pending: one still pending is lost.
            commands_settled=healed is None,
            reactors=reactors,
            chains=tuple(chains.starts.values()),
            published=frozenset(chains.published),
        )
        report = _riding_out(
            lambda: check(view, self.scenario.invariants(), self.scenario.min_completed)
        )
        if healed is not None:
            report.add(
                "recovery",
                None,
                f"the healing runtime did not start: {healed}"
                + _diagnosis(location, held_before, healer_start),
            )
        elif recovery > self.recovery_bound:
            report.add(
                "recovery",
                None,
                f"sagas or chains were still unfinished {recovery:.1f} s after the heal "
                f"(bound {self.recovery_bound} s)"
                + _diagnosis(location, held_before, healer_start, chains),
            )
        for error in restarts.errors:
            report.add("server-restart", None, error)
        log_file = directory / "faults.log"
        fired = tuple(log_file.read_text().splitlines()) if log_file.exists() else ()
        saved = None
        if not report.ok:
            target = self.failures or directory
            driven = {"policy": attrs.asdict(policy), "probes": probe_count}
            if self.scenario_path:
                driven["scenario"] = self.scenario_path
            saved = attrs.evolve(schedule, runner=driven).save(
                target / f"{directory.name}.{schedule.base}.schedule.json"
            )
        elif not self.keep_stores:
            _drop_ledgers(ledgers)  # a failing run's stay, named in its report
        return RunResult(
            schedule,
            directory,
            report,
            fired,
            len(everything) - len(chains.starts),
            len(acknowledged),
            host_restarts,
            resumed,
            recovery,
            started_ok,
            saved,
            redact(location),
            restarts.done,
            heal_starts,
            stale_leases,
            heal_began_at,
            healer_start,
            verbs,
            len(chains.starts),
        )

    def _heal(
        self,
        location: str,
        participants: Participants,
        options: dict[str, Any],
        starts: list[SagaStart],
        acknowledged: set[str],
        since: float,
        operators: Operators,
        retry: bool = False,
        chains: ChainDriver | None = None,
    ) -> tuple[str | None, int, float, float, int]:
        """Start a clean runtime on the run's store, resend what was never acknowledged,
        start the probes, carry out the operator's actions of the heal, and wait for quiet: (why
        it could not start, resumed, seconds, seconds the healing runtime took to start, starts
        it took).

        ``retry``: the database server restarts during the heal. A start that meets it waits
        while a saga host's recovery scan cannot reach the store, but fails when the store
        cannot be reached at all (the start's own checks); the start is then tried again, as
        the supervisor of a real application restarts it, until the recovery bound.

        ``chains``: the workload's chains; their starts no publish returned for (and the
        probes') are published again until one returns, and the heal waits until every chain
        ended and every reactor's outbox is relayed."""
        # The recovery bound runs from here and covers the start: a start allowed to take
        # longer than the bound would leave the probes no time at all, and a slow start would
        # be reported as probes "still running" instead of as what it is.
        attempts = 0
        while True:
            attempts += 1
            left = self.recovery_bound - (time.monotonic() - since)
            try:
                healer = Understudy.start(
                    location,
                    self.scenario.definitions,
                    participants,
                    timeout=max(left, 1.0),
                    **options,
                )
                break
            except UnderstudyError as exc:
                took = time.monotonic() - since
                if retry and took + 1.0 < self.recovery_bound:
                    log.warning("the healing runtime did not start (%s); starting it again", exc)
                    time.sleep(0.5)
                    _as_a_new_process(location)
                    continue
                return f"{type(exc).__name__}: {exc}", 0, took, took, attempts
        started = time.monotonic() - since
        try:
            client = _RetryingClient(healer, [s for s in starts if s.saga_id not in acknowledged])
            operators.begin(RECOVERY)

            def poll() -> None:
                client.poll()
                if chains:
                    chains.publish(healer)

            def busy(store: SagaStore) -> bool:
                # Operators first: tending carries out what is due.
                return operators.tend(store) or bool(chains and not chains.settled(store))

            recovery = self._quiesce(location, [s.saga_id for s in starts], since, poll, busy)
            acknowledged.update(client.acknowledged)
        finally:
            healer.shutdown()
        return None, healer.resumed, recovery, started, attempts

    def _faulty_phase(
        self,
        runtime: Understudy,
        location: str,
        futures: dict[str, concurrent.futures.Future[Any]],
        acknowledged: set[str],
        patience: float,
        restarts: _Restarts,
        fired: Path,
        operators: Operators,
        chains: ChainDriver | None = None,
        published: Sequence[str] = (),
    ) -> bool:
        """Wait for the faulty runtime to finish or get stuck; False when it is dead. A server
        restart drawn for this phase starts once the store holds its number of events; while
        it runs the phase is not taken for stuck. The operator's actions of this phase are
        carried out as they fall due. ``fired``: the run's ``faults.log``. ``chains``: the
        workload's chains, ``published`` those this phase starts: it waits for them to end
        too, and any event or acknowledgement they gain is progress."""
        started = last_change = next_ping = time.monotonic()
        last: tuple[int, int, tuple[int, int] | None] = (-1, -1, None)
        seq_seen = -1
        progress = 0
        with contextlib.closing(_Reader(location)) as store:
            while True:
                for saga_id, future in futures.items():
                    if future.done() and isinstance(_reply(future), SagaAccepted | SagaFinished):
                        acknowledged.add(saga_id)
                counts = store.read(lambda s: s.count_by_status())
                seq = store.read(lambda s: s.last_seq())
                moved: tuple[int, int] | None = (0, 0)
                if chains and published:
                    chains.publish(runtime, published)
                    moved = store.read(chains.progress)
                now = time.monotonic()
                store.read(operators.poll)
                if seq is not None:
                    restarts.at_events(seq)
                    if seq != seq_seen:
                        # Something was written: was it more than churn?
                        newest = store.read(_newest_progress)
                        if newest is not None:
                            seq_seen, progress = seq, max(progress, newest)
                done = sum(n for s, n in (counts or {}).items() if s in TERMINAL_STATUSES)
                # Any new event (a step, a retry, a recovery) is progress, not only an end.
                seen = (done, progress, moved)
                if seen != last or restarts.busy() or counts is None or moved is None:
                    last, last_change = seen, now
                if (
                    counts is not None
                    and all(f.done() for f in futures.values())
                    and (done >= len(futures) or store.read(lambda s: s.unfinished()) == [])
                    and (not published or (moved is not None and moved[0] >= len(published)))
                ):
                    return True  # every start answered, and nothing stored is unfinished
                if now - last_change > self.stall or now - started > self.window:
                    return True
                if now - last_change > 0.5 and now >= next_ping:
                    # Stuck: is anybody there? (a killed actor system never answers, and a
                    # ping would only wait ``patience`` to learn it)
                    if _killed_for_good(fired):
                        return False
                    next_ping = now + 0.5
                    try:
                        runtime.hosts(timeout=patience)
                    except UnderstudyError:
                        return False
                _pause(now - started)

    def _quiesce(
        self,
        location: str,
        saga_ids: list[str],
        since: float,
        poll: Callable[[], None] = lambda: None,
        busy: Callable[[SagaStore], bool] = lambda store: False,
    ) -> float:
        """Wait until no saga is unfinished (nor missing, for the resent starts) and ``busy``
        (given the store, at every look) says nothing is left to do; ``poll`` is called at
        every look."""
        wanted = set(saga_ids)
        looking = time.monotonic()
        with contextlib.closing(_Reader(location)) as store:
            while True:
                poll()
                now = time.monotonic()
                # Which of the wanted sagas are there, read before what is unfinished: a start
                # that lands in between is then seen unfinished, never missed. (The store's
                # count would not do: it holds child sagas the workload never started.)
                present = store.read(lambda s: len(s.get_many(sorted(wanted))))
                working = store.read(busy)
                counts = store.read(lambda s: s.count_by_status())
                quiet = (
                    counts is not None
                    and working is False
                    and not any(counts.get(status) for status in ACTIVE_STATUSES)
                    and present is not None
                    and present >= len(wanted)
                )
                if quiet or now - since > self.recovery_bound:
                    return now - since
                _pause(now - looking)

    # --- the two modes ----------------------------------------------------------------------

    def exhaustive(
        self,
        *,
        sagas: int = 2,
        points: Sequence[str] | None = None,
        persistent: bool = False,
        max_nth: int = 60,
        workload_seed: int = 0,
        action: str | None = None,
        on_result: Callable[[RunResult], None] | None = None,
    ) -> list[RunResult]:
        """Crash once at the n-th hit of every point (of each participant, for participant
        points), for n = 1, 2, ... until a run in which the fault never fired (the run
        completed untouched). ``persistent``: the crash repeats at every later hit too, until
        the heal. ``action`` replaces the crash (kill, or raise in-process) with another
        action the points accept. ``points``: the scenario's :attr:`Scenario.points` unless
        given."""
        results = []
        points = self.scenario.points if points is None else points
        # Each participant counts its own hits in its own process: sweep them one by one
        # (child sagas' participants too, and understudy's own that runs the children).
        names = sorted(
            {p for d in with_children(self.scenario.definitions) for p in d.participants}
            | set(self.scenario.reactors)
        )
        targets = [
            (point, name)
            for point in points
            for name in (names if point.startswith("participant.") else [None])
        ]
        for point, participant in targets:
            for nth in range(1, max_nth + 1):
                schedule = single_fault(
                    point,
                    nth,
                    base=self.base,
                    sagas=sagas,
                    hosts=self.hosts,
                    persistent=persistent,
                    workload_seed=workload_seed,
                    participant=participant,
                    action=action,
                    store=self.store_kind,
                )
                where = f"-{participant}" if participant else ""
                label = f"{point}{where}-{nth}{'-persistent' if persistent else ''}"
                result = self.run(schedule, name=label)
                results.append(result)
                if on_result is not None:
                    on_result(result)
                if not result.fired_at(point):
                    break
        return results

    def campaign(
        self,
        seed: int,
        runs: int,
        *,
        sagas: int = 20,
        enable: float = 0.3,
        fire: float = 0.05,
        actions: Iterable[str] | None = None,
        verbs: int = 0,
        on_result: Callable[[RunResult], None] | None = None,
    ) -> list[RunResult]:
        """Seeded random mode: ``runs`` runs, the i-th drawn from ``seed`` and i. On PostgreSQL
        the server's own faults are drawn too, and server restarts when the runner can restart
        it; ``verbs``: operator stories drawn per run (see
        :func:`~understudy.testing.schedule.random_schedule`)."""
        results = []
        for index in range(runs):
            schedule = random_schedule(
                seed * 1_000_003 + index,
                base=self.base,
                sagas=sagas,
                hosts=self.hosts,
                actions=actions,
                enable=enable,
                fire=fire,
                points=self.scenario.points,
                label=f"campaign seed {seed} run {index}",
                store=self.store_kind,
                restarts=self.restart_server is not None,
                verbs=verbs,
            )
            result = self.run(schedule, name=f"seed{seed}-run{index:05d}")
            results.append(result)
            if on_result is not None:
                on_result(result)
        return results


class _RetryingClient:
    """The healing phase's client: it starts the sagas never acknowledged (and the probes), and
    starts again, every quarter of a second, those whose start was refused (the store could
    not be reached: the server restarting), as a client that retries does. Starts are
    idempotent by saga id."""

    def __init__(self, runtime: Understudy, starts: list[SagaStart]) -> None:
        self.runtime = runtime
        self.starts = {s.saga_id: s for s in starts}
        self.futures = {saga_id: self._submit(saga_id) for saga_id in self.starts}
        self.acknowledged: set[str] = set()
        self.next_retry = time.monotonic() + RESTART_PAUSE

    def _submit(self, saga_id: str) -> concurrent.futures.Future[Any]:
        start = self.starts[saga_id]
        return self.runtime.submit_future(saga_id, start.definition, start.payload, wait=False)

    def poll(self) -> None:
        now = time.monotonic()
        retry = now >= self.next_retry
        if retry:
            self.next_retry = now + RESTART_PAUSE
        for saga_id, future in list(self.futures.items()):
            if not future.done():
                continue
            if isinstance(_reply(future), SagaAccepted | SagaFinished):
                self.acknowledged.add(saga_id)
                del self.futures[saga_id]
            elif retry:
                self.futures[saga_id] = self._submit(saga_id)


def _newest_progress(store: SagaStore) -> int:
    """The newest event of an unfinished saga that is progress (sagas that ended count as
    progress through their status); 0 when there is none.

    A resumed saga sends its outstanding request again, recorded as an intent marked
    ``resent`` (same step, attempt and key). The first such resend of a request is progress, as
    the resume it ends is; the same request resent again is the same resume over again: a host
    that dies right after every commit (a persistent crash at ``store.after_commit``) claims,
    resumes, resends and dies in a loop that would otherwise keep the phase going until the
    window runs out."""
    newest = 0
    for saga_id in store.unfinished():
        resent: set[tuple[str, int | None, int | None]] = set()
        for event in store.events(saga_id):
            if event.kind in CHURN:
                continue
            if event.detail.get("resent"):
                request = (event.kind, event.step, event.attempt)
                if request in resent:
                    continue
                resent.add(request)
            newest = max(newest, event.seq)
    return newest


class _Reader:
    """The run's store opened read-only, riding out its outages (a server restarting, a
    connection dropped): a read that fails returns None, and the next one opens it again."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.store: SagaStore | None = None

    def read(self, query: Callable[[SagaStore], T]) -> T | None:
        try:
            if self.store is None:
                self.store = open_store(self.location, read_only=True)
            return query(self.store)
        except UnderstudyError:
            self.close()
            return None

    def close(self) -> None:
        store, self.store = self.store, None
        if store is not None:
            with contextlib.suppress(UnderstudyError):
                store.close()


class _Restarts:
    """A schedule's server restarts, each carried out in a thread of its own (a restart takes
    a second or more: the run watches the store meanwhile) and logged to ``faults.log`` as a
    fault that fired (``server.faulty restart ...``)."""

    def __init__(
        self,
        restart: Callable[[], None] | None,
        planned: tuple[ServerRestart, ...],
        log_file: Path,
    ) -> None:
        self.restart = restart
        self.pending = list(planned)
        self.log_file = log_file
        self.threads: list[threading.Thread] = []
        self.errors: list[str] = []
        self.done = 0

    def has(self, phase: str) -> bool:
        return any(r.phase == phase for r in self.pending)

    def at_events(self, stored: int) -> None:
        """The faulty phase's restarts whose number of events the store has reached."""
        for planned in [r for r in self.pending if r.phase == FAULTY]:
            if stored >= planned.after_events:
                self._launch(planned, 0.0)

    def begin(self, phase: str) -> None:
        """Start the timed restarts of ``phase`` (each waits its ``after_seconds`` first)."""
        for planned in [r for r in self.pending if r.phase == phase]:
            self._launch(planned, planned.after_seconds)

    def busy(self) -> bool:
        return any(thread.is_alive() for thread in self.threads)

    def finish(self, phase: str) -> None:
        """Carry out what is left of ``phase`` now, and wait until the server is back."""
        for planned in [r for r in self.pending if r.phase == phase]:
            self._launch(planned, 0.0)
        for thread in self.threads:
            thread.join()
        self.threads = []

    def _launch(self, planned: ServerRestart, wait: float) -> None:
        self.pending.remove(planned)
        assert self.restart is not None  # the runner refuses a schedule it cannot carry out
        restart = self.restart

        def carry_out() -> None:
            time.sleep(wait)
            line = f"server.{planned.phase} restart pid={os.getpid()} saga=- at={time.time()}\n"
            with open(self.log_file, "a") as log_file:
                log_file.write(line)
            try:
                restart()
                self.done += 1
            except BaseException as exc:  # pytest.fail raises a BaseException
                self.errors.append(
                    f"{planned.describe()}: the server could not be restarted: "
                    f"{type(exc).__name__}: {exc}"
                )

        thread = threading.Thread(target=carry_out, name=f"restart-{planned.phase}", daemon=True)
        thread.start()
        self.threads.append(thread)


def _killed_for_good(fired: Path) -> bool:
    """Whether a fault in ``fired`` (a run's ``faults.log``) killed its runtime for good: a
    ``kill`` of the coordinator, the runtime's root that no supervisor restarts, or a
    ``kill_system`` of every actor process. Other kills are of processes the coordinator
    restarts: whether those runtimes still answer is for a ping to tell."""
    try:
        lines = fired.read_text().splitlines()
    except FileNotFoundError:
        return False
    for line in lines:
        point, action = [*line.split(), "", ""][:2]
        if action == "kill_system" or (action == "kill" and point.startswith("coordinator.")):
            return True
    return False


def _pause(waited: float) -> None:
    """Sleep until the next look at the store, ``waited`` seconds into a wait."""
    time.sleep(POLL_SOON if waited < SOON else POLL_LATER)


def _riding_out(read: Callable[[], T], patience: float = 30.0) -> T:
    """``read()``, again while the store cannot be reached (a server restarting) for at most
    ``patience`` seconds."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return read()
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _as_a_new_process(location: str) -> int:
    """Before the healing runtime starts in this process: free the shards still leased in this
    process's name, as the restart of a real application, a new process, finds them (its
    predecessor's process gone: taken over at once). Returns how many there were.

    None of this process's runtimes runs at this point, but leases can still name it: those
    of in-process saga hosts that did not get to release them (a shutdown of a hung runtime)
    and those of a start that failed while the store was unreachable (it could not give them
    back). ``understudy.supervisors.leases.holder_state`` takes this very process for a live
    holder, so a start from the same process is refused with StoreInUse until they expire
    (10 s, or 60 s for a failed start's)."""
    if not os.path.exists(location) and "://" not in location:
        return 0  # the faulty runtime never created its SQLite file
    me = process_identity(os.getpid())
    freed = 0
    try:
        with contextlib.closing(open_store(location)) as store:
            now = store.now()
            for lease in store.leases():
                mine = (lease.about.get("pid"), lease.about.get("started")) == me
                if lease.holder and mine and lease.expires_at > now:
                    store.expire(lease.shard, lease.epoch)
                    freed += 1
    except UnderstudyError as exc:
        log.warning("could not free this process's leases before starting again: %s", exc)
    return freed


def _read(location: str, query: Callable[[SagaStore], T]) -> T:
    """``query`` on the run's store, opened read-only for it."""
    with contextlib.closing(open_store(location, read_only=True)) as store:
        return query(store)


def _reply(future: concurrent.futures.Future[Any]) -> Any:
    return future.exception() or future.result()


def _fresh_ledgers(participants: Participants, label: str) -> tuple[Participants, dict[str, str]]:
    """``participants`` with each PostgreSQL ``database`` option replaced by a database created
    for this run on that server, as the run's store is (:mod:`understudy.testing.stores`): a
    run starts from empty ledgers, as from fresh SQLite files in its directory (the workload's
    saga ids repeat from run to run). Participants naming the same URL share the run's
    database, as they share the one named. Also: the URL named -> the run's database."""
    created: dict[str, str] = {}
    fresh: Participants = []
    try:
        for name, cls, options in participants:
            database = options.get("database")
            if isinstance(database, str) and database.startswith(POSTGRES_SCHEMES):
                if database not in created:
                    created[database] = stores.create_database(database, f"ledger {label}")
                options = {**options, "database": created[database]}
            fresh.append((name, cls, options))
    except BaseException:
        _drop_ledgers(created)
        raise
    return fresh, created


def _drop_ledgers(created: dict[str, str]) -> None:
    for server, location in created.items():
        try:
            stores.drop_database(server, location)
        except Exception as exc:  # the run passed; a database left behind is only litter
            log.warning("could not drop %s after its run: %s", redact(location), exc)


def _diagnosis(
    location: str, held_before: list[str], healer_start: float, chains: ChainDriver | None = None
) -> str:
    """What a failed heal needs to be understood: how long the healing runtime took to start,
    who held a shard before it started and after it stopped, and where each unfinished
    saga stopped (its last event and how long before the check)."""
    lines = [f"the healing runtime took {healer_start:.1f} s to start"]
    if held_before:
        lines.append("shards held when the heal started: " + "; ".join(held_before))
    held_after = _lease_holders(location)
    if held_after:
        lines.append("shards still held after it stopped: " + "; ".join(held_after))
    now = time.time()
    try:
        with contextlib.closing(open_store(location, read_only=True)) as store:
            for saga_id in store.unfinished():
                events = store.events(saga_id)
                last = events[-1] if events else None
                lines.append(
                    f"{saga_id}: {len(events)} event(s), the last "
                    + (f"{last.kind!r} {now - last.at:.1f} s ago" if last else "none")
                )
            if chains:
                lines += chains.diagnosis(store)
    except UnderstudyError as exc:
        lines.append(f"(the store could not be read: {exc})")
    return "".join(f"\n    {line}" for line in lines)


def _lease_holders(location: str) -> list[str]:
    """The shards of ``location`` someone still holds, each with its holder's state (a live
    process, an orphan, a dead one) and how long its lease has to run."""
    try:
        with contextlib.closing(open_store(location, read_only=True)) as store:
            now = store.now()
            leases = store.leases()
    except UnderstudyError:
        return []
    return [
        f"shard {lease.shard} by pid {lease.about.get('pid')} ({holder_state(lease)}), epoch "
        f"{lease.epoch}, {lease.expires_at - now:.1f} s left"
        for lease in leases
        if lease.holder and lease.expires_at > now
    ]


@attrs.frozen
class Figures:
    """What a set of runs adds up to (what ``understudy chaos`` prints)."""

    runs: int
    sagas: int
    faults: Counter[str]
    host_restarts: int
    resumed: int
    violations: int
    failed_runs: int
    recovery_p50: float
    recovery_p99: float
    statuses: Counter[str]
    server_restarts: int = 0
    heal_restarts: int = 0  # healing runtimes started again after a server restart failed them
    stale_leases: int = 0  # leases left in the test process's name, freed before a heal
    verbs: Counter[str] = attrs.field(factory=Counter)  # "verb outcome" -> operators' verbs
    chains: int = 0  # chains started
    chain_statuses: Counter[str] = attrs.field(factory=Counter)
    events: int = 0  # events in the runs' logs
    reactions: int = 0  # reactors' acknowledgements in them

    @classmethod
    def of(cls, results: Iterable[RunResult]) -> Figures:
        results = list(results)
        recoveries = sorted(r.recovery_seconds for r in results)
        faults: Counter[str] = Counter()
        statuses: Counter[str] = Counter()
        chains: Counter[str] = Counter()
        for result in results:
            faults.update(result.fired_kinds())
            statuses.update(result.report.statuses)
            chains.update(result.report.chains)
        return cls(
            len(results),
            sum(r.sagas for r in results),
            faults,
            sum(r.host_restarts for r in results),
            sum(r.resumed for r in results),
            sum(len(r.report.violations) for r in results),
            sum(not r.ok for r in results),
            _quantile(recoveries, 0.5),
            _quantile(recoveries, 0.99),
            statuses,
            sum(r.server_restarts for r in results),
            sum(r.heal_starts - 1 for r in results),
            sum(r.stale_leases for r in results),
            figures(v for r in results for v in r.verbs),
            sum(r.chains for r in results),
            chains,
            sum(r.report.events for r in results),
            sum(r.report.reactions for r in results),
        )

    def lines(self) -> Iterator[str]:
        yield f"runs: {self.runs} ({self.failed_runs} with violations)"
        if self.sagas or not self.chains:
            yield (
                f"sagas run: {self.sagas} ("
                + ", ".join(f"{s} {n}" for s, n in sorted(self.statuses.items()))
                + ")"
            )
        if self.chains:
            yield (
                f"chains run: {self.chains} ("
                + ", ".join(f"{s} {n}" for s, n in sorted(self.chain_statuses.items()))
                + f"), {self.events} events, {self.reactions} reactions"
            )
        yield (
            f"faults injected: {sum(self.faults.values())} ("
            + ", ".join(f"{k} {n}" for k, n in sorted(self.faults.items()))
            + ")"
        )
        yield (
            f"saga host restarts: {self.host_restarts}; "
            f"sagas resumed by a healing restart: {self.resumed}"
        )
        if self.server_restarts or self.heal_restarts:
            yield (
                f"database server restarts: {self.server_restarts}; healing runtimes started "
                f"again after a restart failed their start: {self.heal_restarts}"
            )
        if self.stale_leases:
            yield (
                f"leases left in this process's name by a stopped runtime, freed before the "
                f"heal as a new process finds them: {self.stale_leases}"
            )
        if self.verbs:
            yield verb_lines(self.verbs)
        yield f"invariant violations: {self.violations}"
        yield (
            f"recovery time (heal to quiet): p50 {self.recovery_p50:.2f} s, "
            f"p99 {self.recovery_p99:.2f} s"
        )


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, round(q * 100) - 1)]
