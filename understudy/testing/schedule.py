"""Fault schedules: which faults a run arms, drawn exhaustively or from a seed, saved as JSON.

A schedule is everything needed to repeat a run exactly: the faults, the workload's seed and
size, the actor system base and the number of saga hosts. A failing run saves its schedule to a
file, and :meth:`FaultSchedule.load` plus :meth:`understudy.testing.ChaosRunner.run` (or
``pytest --understudy-replay FILE``) replays it. JSON, not pickle: a schedule is data a person
reads and edits.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs

from understudy.actors.system import is_multiprocess
from understudy.failpoints import POINTS, Fault, actions_for

FORMAT = "understudy-fault-schedule/1"

#: Actions that kill processes, replaced by ``raise`` where every actor shares the test's
#: process (the in-process base): an exception at the same boundary restarts the saga actor
#: from its snapshot, as a crash of its process would.
KILLS = ("kill", "kill_system")
HANG = 2.0  # seconds a ``hang`` lasts in drawn schedules: longer than a chaos step timeout
DELAY = 0.2


def _faults(faults: Iterable[Fault]) -> tuple[Fault, ...]:
    return tuple(faults)


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
        faults = "; ".join(f.describe() for f in self.faults) or "no faults"
        return f"{self.label or 'run'}: {faults} ({self.sagas} sagas, seed {self.workload_seed})"

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
            "faults": [
                {k: v for k, v in f.to_dict().items() if k not in ("once_file", "log_file")}
                for f in self.faults
            ],
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
) -> FaultSchedule:
    """Seeded random mode: each point is enabled with probability ``enable`` (with one of its
    actions, drawn), and fires at each of its hits with probability ``fire``. The hits that fire
    are drawn here, so the schedule lists them and a replay repeats them exactly."""
    rng = random.Random(seed)
    allowed = set(actions) if actions is not None else None
    horizon = max(8, 6 * sagas)  # more hits than any point gets in a run of this size
    faults: list[Fault] = []
    for point in points:
        if rng.random() >= enable:
            continue
        choices = [a for a in actions_for(point) if allowed is None or a in allowed]
        if not is_multiprocess(base):
            choices = [a for a in choices if a not in KILLS]
        if not choices:
            continue
        action = rng.choice(choices)
        delay = HANG if action == "hang" else DELAY if action == "delay" else 0.0
        hits = [n for n in range(1, horizon + 1) if rng.random() < fire]
        faults.extend(Fault(point, action, nth=n, delay=delay) for n in hits)
    return FaultSchedule(
        tuple(faults), rng.randrange(1 << 30), sagas, base, hosts, label or f"seed {seed}"
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
    )
