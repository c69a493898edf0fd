"""Fault schedules: which faults a run arms, drawn exhaustively or from a seed, saved as JSON.

A schedule is everything needed to repeat a run exactly: the faults, the workload's seed and
size, the actor system base, the number of saga hosts, the kind of saga store (a SQLite file or
a PostgreSQL database) and, on PostgreSQL, when the runner restarts the database server. A
failing run saves its schedule to a file, and :meth:`FaultSchedule.load` plus
:meth:`understudy.testing.ChaosRunner.run` (or ``pytest --understudy-replay FILE``) replays it.
JSON, not pickle: a schedule is data a person reads and edits.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from understudy.actors.system import is_multiprocess
from understudy.failpoints import POINTS, SERVER_ACTIONS, Fault, actions_for

FORMAT = "understudy-fault-schedule/1"

#: Actions that kill processes, replaced by ``raise`` where every actor shares the test's
#: process (the in-process base): an exception at the same boundary restarts the saga actor
#: from its snapshot, as a crash of its process would.
KILLS = ("kill", "kill_system")
HANG = 2.0  # seconds a ``hang`` lasts in drawn schedules: longer than a chaos step timeout
DELAY = 0.2

#: The kinds of saga store a schedule runs on.
SQLITE: Final = "sqlite"
POSTGRES: Final = "postgres"
STORES: Final = (SQLITE, POSTGRES)
#: When a server restart happens: while the faulty runtime works, or while the healing runtime
#: starts and recovers.
FAULTY: Final = "faulty"
RECOVERY: Final = "recovery"
#: Chances that a drawn PostgreSQL schedule restarts the server in each phase (when the runner
#: can restart it), and the bounds of when.
RESTART_IN_FAULTY = 0.3
RESTART_IN_RECOVERY = 0.2
RECOVERY_RESTART_WINDOW = 1.5  # seconds after the heal begins
#: The share of a PostgreSQL store point's drawn actions that are the server's own faults.
SERVER_SHARE = 0.5


def _check_phase(instance: ServerRestart, attribute: Any, value: str) -> None:
    if value not in (FAULTY, RECOVERY):
        raise ValueError(
            f"a server restart happens during {FAULTY!r} or {RECOVERY!r}, not {value!r}"
        )


@attrs.frozen
class ServerRestart:
    """Restart the database server (``pg_ctl restart -m fast``: every connection dropped, open
    transactions rolled back): a runner-level fault of PostgreSQL runs, not a failpoint.

    ``faulty``: once the store holds ``after_events`` events (sagas in flight); ``recovery``:
    ``after_seconds`` after the healing runtime begins to start (its recovery scan, or the
    resumed sagas' first steps)."""

    phase: str = attrs.field(validator=_check_phase)
    after_events: int = 0
    after_seconds: float = 0.0

    def describe(self) -> str:
        when = (
            f"once {self.after_events} events are stored"
            if self.phase == FAULTY
            else f"{self.after_seconds:.2f} s into the heal"
        )
        return f"server restart {when}"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServerRestart:
        return cls(
            str(data["phase"]),
            int(data.get("after_events", 0)),
            float(data.get("after_seconds", 0.0)),
        )


def _faults(faults: Iterable[Fault]) -> tuple[Fault, ...]:
    return tuple(faults)


def _restarts(restarts: Iterable[ServerRestart]) -> tuple[ServerRestart, ...]:
    return tuple(restarts)


def _check_store(instance: FaultSchedule, attribute: Any, value: str) -> None:
    if value not in STORES:
        raise ValueError(f"a schedule runs on a {' or '.join(STORES)} store, not {value!r}")


@attrs.frozen
class FaultSchedule:
    """One run's faults and workload. ``workload_seed`` and ``sagas`` pick the workload."""

    faults: tuple[Fault, ...] = attrs.field(converter=_faults)
    workload_seed: int = 0
    sagas: int = 4
    base: str = "simpleSystemBase"
    hosts: int = 1
    label: str = ""
    #: How the run was driven, recorded when a failing run is saved so that a replay repeats
    #: it: the restart policy's fields, the probes, and the scenario's import path if known.
    runner: dict[str, Any] = attrs.field(factory=dict, hash=False)
    #: The kind of saga store: ``sqlite`` (a file in the run's directory) or ``postgres`` (a
    #: fresh database on the runner's server). A replay runs on the same kind.
    store: str = attrs.field(default=SQLITE, validator=_check_store)
    #: Server restarts (PostgreSQL only), carried out by the runner.
    restarts: tuple[ServerRestart, ...] = attrs.field(default=(), converter=_restarts)

    def __attrs_post_init__(self) -> None:
        if self.store != POSTGRES:
            server = [f.describe() for f in self.faults if f.action in SERVER_ACTIONS]
            if self.restarts or server:
                what = "; ".join(server + [r.describe() for r in self.restarts])
                raise ValueError(f"{what}: database server faults need a {POSTGRES} store")

    def for_base(self) -> tuple[Fault, ...]:
        """The faults as they can fire on :attr:`base` (kills become raises in-process)."""
        if is_multiprocess(self.base):
            return self.faults
        return tuple(
            attrs.evolve(fault, action="raise") if fault.action in KILLS else fault
            for fault in self.faults
        )

    def armed(self, directory: Path) -> tuple[Fault, ...]:
        """The faults to arm for a run in ``directory``: each single fault fires once across
        every process and restart, and every firing is logged to ``faults.log``."""
        log = str(directory / "faults.log")
        return tuple(
            attrs.evolve(
                fault,
                once_file=None if fault.persistent else str(directory / f"fault-{index}.fired"),
                log_file=log,
            )
            for index, fault in enumerate(self.for_base())
        )

    def describe(self) -> str:
        faults = (
            "; ".join([f.describe() for f in self.faults] + [r.describe() for r in self.restarts])
            or "no faults"
        )
        return (
            f"{self.label or 'run'}: {faults} ({self.sagas} sagas, seed {self.workload_seed}, "
            f"{self.store} store)"
        )

    # --- files ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "label": self.label,
            "base": self.base,
            "hosts": self.hosts,
            "workload_seed": self.workload_seed,
            "sagas": self.sagas,
            "runner": self.runner,
            "store": self.store,
            "faults": [
                {k: v for k, v in f.to_dict().items() if k not in ("once_file", "log_file")}
                for f in self.faults
            ],
            "restarts": [attrs.asdict(r) for r in self.restarts],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaultSchedule:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(
                f"not an understudy fault schedule (format {found!r}, expected {FORMAT!r})"
            )
        return cls(
            tuple(Fault.from_dict(f) for f in data["faults"]),
            int(data["workload_seed"]),
            int(data["sagas"]),
            str(data["base"]),
            int(data.get("hosts", 1)),
            str(data.get("label", "")),
            dict(data.get("runner") or {}),
            str(data.get("store", SQLITE)),
            tuple(ServerRestart.from_dict(r) for r in data.get("restarts") or ()),
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FaultSchedule:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read fault schedule {os.fspath(path)!r}: {exc}") from exc
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"fault schedule {os.fspath(path)!r} is malformed: {exc}") from exc


def crash_action(base: str) -> str:
    """The crash of the exhaustive mode: SIGKILL where actors have processes of their own."""
    return "kill" if is_multiprocess(base) else "raise"


def random_schedule(
    seed: int,
    *,
    base: str,
    sagas: int,
    hosts: int = 1,
    points: Sequence[str] = POINTS,
    actions: Iterable[str] | None = None,
    enable: float = 0.3,
    fire: float = 0.05,
    label: str = "",
    store: str = SQLITE,
    restarts: bool = False,
) -> FaultSchedule:
    """Seeded random mode: each point is enabled with probability ``enable`` (with one of its
    actions, drawn), and fires at each of its hits with probability ``fire``. The hits that fire
    are drawn here, so the schedule lists them and a replay repeats them exactly.

    On a ``postgres`` store the database server's own faults are drawn too (lost connections,
    serialization failures, deadlocks, statement timeouts at the store points) and, with
    ``restarts`` (the runner can restart the server), a server restart while the faulty runtime
    works (probability :data:`RESTART_IN_FAULTY`) and one while the healing runtime recovers
    (:data:`RESTART_IN_RECOVERY`). A SQLite schedule of a seed is what it always was."""
    rng = random.Random(seed)
    allowed = set(actions) if actions is not None else None
    horizon = max(8, 6 * sagas)  # more hits than any point gets in a run of this size
    faults: list[Fault] = []
    for point in points:
        if rng.random() >= enable:
            continue
        choices = [a for a in actions_for(point) if allowed is None or a in allowed]
        if store != POSTGRES:
            choices = [a for a in choices if a not in SERVER_ACTIONS]
        if not is_multiprocess(base):
            choices = [a for a in choices if a not in KILLS]
        if not choices:
            continue
        server = [a for a in choices if a in SERVER_ACTIONS]
        if server and len(server) < len(choices):
            # On PostgreSQL half of a store point's draws are the server's own faults: drawn
            # evenly among a dozen actions they would be rare.
            action = rng.choice(
                server
                if rng.random() < SERVER_SHARE
                else [a for a in choices if a not in SERVER_ACTIONS]
            )
        else:
            action = rng.choice(choices)
        delay = HANG if action == "hang" else DELAY if action == "delay" else 0.0
        hits = [n for n in range(1, horizon + 1) if rng.random() < fire]
        faults.extend(Fault(point, action, nth=n, delay=delay) for n in hits)
    workload_seed = rng.randrange(1 << 30)
    drawn: list[ServerRestart] = []
    if store == POSTGRES and restarts:
        # Drawn after everything else: the faults and workload of a seed do not depend on
        # whether the runner can restart the server.
        if rng.random() < RESTART_IN_FAULTY:
            # Every saga writes a few events per step: a restart among the first 4 per saga
            # lands while they are in flight.
            drawn.append(ServerRestart(FAULTY, after_events=rng.randint(1, 4 * sagas)))
        if rng.random() < RESTART_IN_RECOVERY:
            after = round(rng.uniform(0.0, RECOVERY_RESTART_WINDOW), 3)
            drawn.append(ServerRestart(RECOVERY, after_seconds=after))
    return FaultSchedule(
        tuple(faults),
        workload_seed,
        sagas,
        base,
        hosts,
        label or f"seed {seed}",
        store=store,
        restarts=tuple(drawn),
    )


#: Points reached only while a saga is recovered: the exhaustive mode crashes first at the
#: point given here (once), so that there is a recovery to crash in.
PRIMERS = {"store.claim": "host.after_intent_commit"}


def single_fault(
    point: str,
    nth: int,
    *,
    base: str,
    sagas: int,
    hosts: int = 1,
    persistent: bool = False,
    action: str | None = None,
    workload_seed: int = 0,
    participant: str | None = None,
    store: str = SQLITE,
) -> FaultSchedule:
    """The exhaustive mode's schedule: one crash (or ``action``) at the ``nth`` hit of
    ``point`` (in ``participant``, for participant points), after a first crash at its
    :data:`PRIMERS` point when it is reached only during recovery."""
    crash = crash_action(base)
    action = action or crash
    kind = "persistent" if persistent else "single"
    fault = Fault(point, action, nth=nth, persistent=persistent, participant=participant)
    primer = PRIMERS.get(point)
    return FaultSchedule(
        (Fault(primer, crash), fault) if primer else (fault,),
        workload_seed,
        sagas,
        base,
        hosts,
        f"{kind} {action} at hit {nth} of {point}" + (f" in {participant}" if participant else ""),
        store=store,
    )
