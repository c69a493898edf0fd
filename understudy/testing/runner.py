"""The chaos runner: run a workload under a fault schedule, heal, quiesce, check.

One run, in its own directory (a fresh store and fresh participant ledgers):

1. **faulty phase**: start understudy with the schedule's faults armed, start every saga of the
   workload, and wait until they are all terminal, or nothing has changed for ``stall`` seconds
   (a persistent fault, a dead actor system), or ``window`` seconds have passed;
2. **heal**: shut that runtime down (whatever is left of it), start a clean one on the same
   files with no faults: it resumes every unfinished saga, exactly as a restarted application
   does. Starts that were never acknowledged are sent again, as a client that retries would
   (starts are idempotent by saga id);
   The workload's last ``probes`` sagas are started only now: a healed system must work
   again on the same files, and a run where the faults parked every saga still shows progress;
3. **quiesce**: wait until the store holds no unfinished saga, at most ``recovery_bound``
   seconds, and shut down;
4. **check**: :func:`understudy.testing.checker.check` reads the store and the ledgers.

Runs are independent and repeatable: a :class:`FaultSchedule` names the faults and the workload.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import random
import sqlite3
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from understudy import failpoints
from understudy.definitions import SagaDefinition
from understudy.errors import UnderstudyError
from understudy.failpoints import HANG_SECONDS, POINTS
from understudy.messages import SagaAccepted, SagaFinished
from understudy.persistence import open_store
from understudy.persistence.base import TERMINAL_STATUSES
from understudy.persistence.sqlite import SQLiteStore
from understudy.runtime import Understudy
from understudy.supervisors.leases import holder_state
from understudy.supervisors.policy import RestartPolicy
from understudy.testing.checker import Invariant, Report, RunView, SagaStart, check
from understudy.testing.schedule import FaultSchedule, random_schedule, single_fault

Participants = list[tuple[str, type, dict[str, Any]]]


class Scenario:
    """What to put under fault: your definitions, your participants and a workload.

    Subclass it, set :attr:`definitions`, and implement :meth:`participants` and
    :meth:`workload`; add domain invariants by overriding :meth:`invariants`. Give steps short
    timeouts (a second or so): dropped messages and hung actors are noticed by them.
    """

    definitions: Sequence[SagaDefinition] = ()
    #: Sagas that must complete in a run for it to count (see the checker's progress rule).
    min_completed: int = 1

    def participants(self, directory: Path, sagas: list[SagaStart]) -> Participants:
        """``(name, ParticipantClass, options)`` for each participant, with its database under
        ``directory``."""
        raise NotImplementedError

    def workload(self, rng: random.Random, count: int) -> list[SagaStart]:
        """``count`` sagas to start, drawn from ``rng`` (a run is repeatable from its seed)."""
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
        self._runs = 0

    # --- one run ----------------------------------------------------------------------------

    def run(self, schedule: FaultSchedule, name: str | None = None) -> RunResult:
        """Run ``schedule`` (its base and hosts win over the runner's) and check the result."""
        self._runs += 1
        directory = self.directory / (name or f"run-{self._runs:05d}")
        directory.mkdir(parents=True, exist_ok=False)
        # A saved schedule carries how its run was driven: a replay repeats that, not ours.
        policy = self.policy
        if "policy" in schedule.runner:
            policy = RestartPolicy(**schedule.runner["policy"])
        probe_count = int(schedule.runner.get("probes", self.probes))
        rng = random.Random(schedule.workload_seed)
        everything = self.scenario.workload(rng, schedule.sagas + probe_count)
        sagas, probes = everything[: schedule.sagas], everything[schedule.sagas :]
        participants = self.scenario.participants(directory, everything)
        store = directory / "sagas.db"
        options: dict[str, Any] = {
            "base": schedule.base,
            "hosts": schedule.hosts,
            "policy": policy,
            "host_class": self.host_class,
        }
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
                    store,
                    self.scenario.definitions,
                    participants,
                    faults=schedule.armed(directory),
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
                    alive = self._faulty_phase(runtime, store, futures, acknowledged, patience)
                    if alive:
                        with contextlib.suppress(UnderstudyError):
                            host_restarts = runtime.hosts(timeout=patience).restarts
                finally:
                    runtime.shutdown(timeout=patience if alive else 0.5)
                # Answers that arrived while the phase ended still count.
                acknowledged.update(
                    saga_id
                    for saga_id, future in futures.items()
                    if future.done() and isinstance(_reply(future), SagaAccepted | SagaFinished)
                )
        finally:
            failpoints.disarm()  # the in-process base armed them in this very process

        # A shard still held when the heal starts (an actor process of the faulty runtime
        # that outlived its shutdown) can refuse or delay the heal: name the holder if it fails.
        held_before = _lease_holders(store)
        heal_started = time.monotonic()
        healed, resumed, recovery, healer_start = self._heal(
            store, participants, options, sagas + probes, acknowledged, heal_started
        )

        view = RunView(
            directory,
            store,
            {name: Path(opts["database"]) for name, _cls, opts in participants},
            tuple(self.scenario.definitions),
            tuple(everything),
            frozenset(acknowledged),
            policy,
        )
        report = check(view, self.scenario.invariants(), self.scenario.min_completed)
        if healed is not None:
            report.add(
                "recovery",
                None,
                f"the healing runtime did not start: {healed}"
                + _diagnosis(store, held_before, healer_start),
            )
        elif recovery > self.recovery_bound:
            report.add(
                "recovery",
                None,
                f"sagas were still unfinished {recovery:.1f} s after the heal "
                f"(bound {self.recovery_bound} s)" + _diagnosis(store, held_before, healer_start),
            )
        log = directory / "faults.log"
        fired = tuple(log.read_text().splitlines()) if log.exists() else ()
        saved = None
        if not report.ok:
            target = self.failures or directory
            driven = {"policy": attrs.asdict(policy), "probes": probe_count}
            if self.scenario_path:
                driven["scenario"] = self.scenario_path
            saved = attrs.evolve(schedule, runner=driven).save(
                target / f"{directory.name}.{schedule.base}.schedule.json"
            )
        return RunResult(
            schedule,
            directory,
            report,
            fired,
            len(everything),
            len(acknowledged),
            host_restarts,
            resumed,
            recovery,
            started_ok,
            saved,
        )

    def _heal(
        self,
        store: Path,
        participants: Participants,
        options: dict[str, Any],
        starts: list[SagaStart],
        acknowledged: set[str],
        since: float,
    ) -> tuple[str | None, int, float, float]:
        """Start a clean runtime on the run's files, resend what was never acknowledged,
        start the probes, and wait for quiet: (why it could not start, resumed, seconds, seconds
        the healing runtime took to start)."""
        # The recovery bound runs from here and covers the start: a start allowed to take
        # longer than the bound would leave the probes no time at all, and a slow start would
        # be reported as probes "still running" instead of as what it is.
        try:
            healer = Understudy.start(
                store,
                self.scenario.definitions,
                participants,
                timeout=self.recovery_bound,
                **options,
            )
        except UnderstudyError as exc:
            took = time.monotonic() - since
            return f"{type(exc).__name__}: {exc}", 0, took, took
        started = time.monotonic() - since
        try:
            for start in starts:
                if start.saga_id not in acknowledged:
                    healer.submit_future(start.saga_id, start.definition, start.payload, wait=False)
            recovery = self._quiesce(store, [s.saga_id for s in starts], since)
        finally:
            healer.shutdown()
        return None, healer.resumed, recovery, started

    def _faulty_phase(
        self,
        runtime: Understudy,
        store_path: Path,
        futures: dict[str, concurrent.futures.Future[Any]],
        acknowledged: set[str],
        patience: float,
    ) -> bool:
        """Wait for the faulty runtime to finish or get stuck; False when it is dead."""
        started = last_change = next_ping = time.monotonic()
        last: tuple[int, int] = (-1, -1)
        with (
            contextlib.closing(SQLiteStore(store_path, read_only=True)) as store,
            contextlib.closing(sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)) as db,
        ):
            while True:
                for saga_id, future in futures.items():
                    if future.done() and isinstance(_reply(future), SagaAccepted | SagaFinished):
                        acknowledged.add(saga_id)
                done = sum(n for s, n in store.count_by_status().items() if s in TERMINAL_STATUSES)
                now = time.monotonic()
                # Any new event (a step, a retry, a recovery) is progress, not only an end.
                seen = (done, _last_event(db))
                if seen != last:
                    last, last_change = seen, now
                if all(f.done() for f in futures.values()) and (
                    done >= len(futures) or not store.unfinished()
                ):
                    return True  # every start answered, and nothing stored is unfinished
                if now - last_change > self.stall or now - started > self.window:
                    return True
                if now - last_change > 0.5 and now >= next_ping:
                    # Stuck: is anybody there? (a killed actor system never answers)
                    next_ping = now + 0.5
                    try:
                        runtime.hosts(timeout=patience)
                    except UnderstudyError:
                        return False
                time.sleep(0.05)

    def _quiesce(self, store_path: Path, saga_ids: list[str], since: float) -> float:
        """Wait until no saga is unfinished (nor missing, for the resent starts)."""
        wanted = set(saga_ids)
        with contextlib.closing(SQLiteStore(store_path, read_only=True)) as store:
            while True:
                now = time.monotonic()
                quiet = not store.unfinished() and (
                    sum(store.count_by_status().values()) >= len(wanted)
                )
                if quiet or now - since > self.recovery_bound:
                    return now - since
                time.sleep(0.05)

    # --- the two modes ----------------------------------------------------------------------

    def exhaustive(
        self,
        *,
        sagas: int = 2,
        points: Sequence[str] = POINTS,
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
        action the points accept."""
        results = []
        # Each participant counts its own hits in its own process: sweep them one by one.
        names = sorted({p for d in self.scenario.definitions for p in d.participants})
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
        on_result: Callable[[RunResult], None] | None = None,
    ) -> list[RunResult]:
        """Seeded random mode: ``runs`` runs, the i-th drawn from ``seed`` and i."""
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
                label=f"campaign seed {seed} run {index}",
            )
            result = self.run(schedule, name=f"seed{seed}-run{index:05d}")
            results.append(result)
            if on_result is not None:
                on_result(result)
        return results


def _last_event(db: sqlite3.Connection) -> int:
    """The newest event that is progress: a saga claimed and resumed over and over (a commit
    that keeps failing) is not."""
    row = db.execute(
        "SELECT coalesce(max(seq), 0) FROM understudy_events "
        "WHERE kind NOT IN ('claimed', 'resumed')"
    ).fetchone()
    return int(row[0])


def _reply(future: concurrent.futures.Future[Any]) -> Any:
    return future.exception() or future.result()


def _diagnosis(store_path: Path, held_before: list[str], healer_start: float) -> str:
    """What a failed heal needs to be understood: how long the healing runtime took to start,
    who held a shard before it started and after it stopped, and where each unfinished
    saga stopped (its last event and how long before the check)."""
    lines = [f"the healing runtime took {healer_start:.1f} s to start"]
    if held_before:
        lines.append("shards held when the heal started: " + "; ".join(held_before))
    held_after = _lease_holders(store_path)
    if held_after:
        lines.append("shards still held after it stopped: " + "; ".join(held_after))
    now = time.time()
    try:
        with contextlib.closing(SQLiteStore(store_path, read_only=True)) as store:
            for saga_id in store.unfinished():
                events = store.events(saga_id)
                last = events[-1] if events else None
                lines.append(
                    f"{saga_id}: {len(events)} event(s), the last "
                    + (f"{last.kind!r} {now - last.at:.1f} s ago" if last else "none")
                )
    except UnderstudyError as exc:
        lines.append(f"(the store could not be read: {exc})")
    return "".join(f"\n    {line}" for line in lines)


def _lease_holders(store_path: Path) -> list[str]:
    """The shards of ``store_path`` someone still holds, each with its holder's state (a live
    process, an orphan, a dead one) and how long its lease has to run."""
    try:
        with contextlib.closing(open_store(str(store_path), read_only=True)) as store:
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

    @classmethod
    def of(cls, results: Iterable[RunResult]) -> Figures:
        results = list(results)
        recoveries = sorted(r.recovery_seconds for r in results)
        faults: Counter[str] = Counter()
        statuses: Counter[str] = Counter()
        for result in results:
            faults.update(result.fired_kinds())
            statuses.update(result.report.statuses)
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
        )

    def lines(self) -> Iterator[str]:
        yield f"runs: {self.runs} ({self.failed_runs} with violations)"
        yield (
            f"sagas run: {self.sagas} ("
            + ", ".join(f"{s} {n}" for s, n in sorted(self.statuses.items()))
            + ")"
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
