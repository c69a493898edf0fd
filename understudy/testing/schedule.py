"""Fault schedules: which faults a run arms, drawn exhaustively or from a seed, saved as JSON.

A schedule is everything needed to repeat a run exactly: the faults, the workload's seed and
size, the actor system base, the number of saga hosts, the kind of saga store (a SQLite file or
a PostgreSQL database), on PostgreSQL when the runner restarts the database server, and the
operators' verbs the runner carries out (:class:`OperatorAction`). A
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
from understudy.actors.verbs import VERB_ARGS, VERBS
from understudy.failpoints import POINTS, SERVER_ACTIONS, VERB_POINTS, Fault, actions_for

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
#: How a schedule names the n-th saga of its workload where a saga id is expected (a fault's
#: ``saga_id``): a drawn schedule does not know the scenario's ids, the runner does.
WORKLOAD_SAGA = "#"
#: Chance that a drawn operator story's saga is also stuck: every request it sends from a drawn
#: hit on fails (a persistent ``raise`` at a participant point, for that saga only), so that it
#: retries, backs off, compensates, owes compensations and parks while the operator acts on it:
#: a saga that runs through in milliseconds is finished before any verb reaches it.
STUCK = 0.7
STUCK_POINTS = ("participant.before_apply", "participant.after_apply")
#: Bounds of a drawn operator action's timing: the saga's events it waits for (the first action
#: of a story in the faulty phase), the seconds after the story's previous action, and the
#: seconds into the heal (actions of the healing phase).
VERB_EVENTS = (1, 6)
VERB_DELAY = (0.1, 0.8)
VERB_HEAL_WINDOW = 1.0


def _check_phase(instance: ServerRestart | OperatorAction, attribute: Any, value: str) -> None:
    if value not in (FAULTY, RECOVERY):
        what = "a server restart happens" if isinstance(instance, ServerRestart) else "one acts"
        raise ValueError(f"{what} during {FAULTY!r} or {RECOVERY!r}, not {value!r}")


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


def _check_verb(instance: OperatorAction, attribute: Any, value: str) -> None:
    if value not in VERBS:
        raise ValueError(f"unknown verb {value!r}; the verbs are {', '.join(VERBS)}")


@attrs.frozen
class OperatorAction:
    """An operator's verb on one saga of the workload (``saga``: its index, from 0), carried
    out by the runner as ``chaos`` through :class:`understudy.operate.Operator`.

    When: in its ``phase`` (``faulty``: while the faulty runtime works; ``recovery``: while the
    healing runtime runs), once the saga's timeline holds ``after_events`` events and
    ``after_seconds`` have passed since the previous action on the same saga (or since the
    phase began). Actions on one saga go in the schedule's order, each once the saga has no
    command pending (an operator waits for their last verb to be applied or refused); what the
    faulty phase did not reach is carried out as soon as the heal begins.

    ``skip`` and ``resolve`` are a person's work done by hand, then recorded: the runner does
    the step's action (skip) or compensation (resolve) itself, through the participant's own
    handler and ledger under the step's idempotency key, and gives the verb what it returned.
    ``step`` names the step (its name or index); None: the one the saga is at (skip), or the
    next compensation it owes (resolve). A step it does not owe now is not worked on, and the
    verb not sent."""

    saga: int
    verb: str = attrs.field(validator=_check_verb)
    phase: str = attrs.field(default=FAULTY, validator=_check_phase)
    after_events: int = 0
    after_seconds: float = 0.0
    step: str | int | None = None

    def __attrs_post_init__(self) -> None:
        if self.step is not None and "step" not in VERB_ARGS[self.verb]:
            raise ValueError(f"{self.verb} takes no step (only {', '.join(BY_HAND)} do)")
        if self.saga < 0:
            raise ValueError(f"saga {self.saga}: sagas of the workload count from 0")

    def describe(self) -> str:
        step = f" step {self.step!r}" if self.step is not None else ""
        when = []
        if self.after_events:
            when.append(f"once it has {self.after_events} events")
        if self.after_seconds:
            when.append(f"{self.after_seconds:.2f} s after")
        where = "in the faulty phase" if self.phase == FAULTY else "in the heal"
        return f"{self.verb}{step} saga {WORKLOAD_SAGA}{self.saga} {where}" + (
            f" ({', '.join(when)})" if when else ""
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OperatorAction:
        step = data.get("step")
        return cls(
            int(data["saga"]),
            str(data["verb"]),
            str(data.get("phase", FAULTY)),
            int(data.get("after_events", 0)),
            float(data.get("after_seconds", 0.0)),
            step if isinstance(step, int) or step is None else str(step),
        )


#: The verbs whose work a person does by hand before recording it.
BY_HAND: Final = tuple(verb for verb in VERBS if "step" in VERB_ARGS[verb])


def workload_index(saga_id: str | None) -> int | None:
    """The workload index a fault's ``saga_id`` names as ``#N``; None for anything else."""
    if saga_id is None or not saga_id.startswith(WORKLOAD_SAGA):
        return None
    try:
        index = int(saga_id[len(WORKLOAD_SAGA) :])
    except ValueError:
        return None
    return index if index >= 0 else None


def _faults(faults: Iterable[Fault]) -> tuple[Fault, ...]:
    return tuple(faults)


def _restarts(restarts: Iterable[ServerRestart]) -> tuple[ServerRestart, ...]:
    return tuple(restarts)


def _verbs(verbs: Iterable[OperatorAction]) -> tuple[OperatorAction, ...]:
    return tuple(verbs)


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
    #: Operators' verbs, carried out by the runner (schedules saved before them have none).
    verbs: tuple[OperatorAction, ...] = attrs.field(default=(), converter=_verbs)

    def __attrs_post_init__(self) -> None:
        if self.store != POSTGRES:
            server = [f.describe() for f in self.faults if f.action in SERVER_ACTIONS]
            if self.restarts or server:
                what = "; ".join(server + [r.describe() for r in self.restarts])
                raise ValueError(f"{what}: database server faults need a {POSTGRES} store")
        named = [workload_index(f.saga_id) for f in self.faults] + [a.saga for a in self.verbs]
        beyond = sorted({n for n in named if n is not None and n >= self.sagas})
        if beyond:
            raise ValueError(
                f"saga(s) {', '.join(f'{WORKLOAD_SAGA}{n}' for n in beyond)} of a workload of "
                f"{self.sagas} sagas (counted from 0)"
            )

    def for_base(self) -> tuple[Fault, ...]:
        """The faults as they can fire on :attr:`base` (kills become raises in-process)."""
        if is_multiprocess(self.base):
            return self.faults
        return tuple(
            attrs.evolve(fault, action="raise") if fault.action in KILLS else fault
            for fault in self.faults
        )

    def armed(self, directory: Path, saga_ids: Sequence[str] = ()) -> tuple[Fault, ...]:
        """The faults to arm for a run in ``directory``: each single fault fires once across
        every process and restart, and every firing is logged to ``faults.log``. A fault
        scoped to ``#N`` is scoped to ``saga_ids[N]``, the N-th saga of the run's workload."""
        log = str(directory / "faults.log")
        armed = []
        for index, fault in enumerate(self.for_base()):
            workload = workload_index(fault.saga_id)
            armed.append(
                attrs.evolve(
                    fault,
                    saga_id=fault.saga_id if workload is None else saga_ids[workload],
                    once_file=None if fault.persistent else str(directory / f"fault-{index}.fired"),
                    log_file=log,
                )
            )
        return tuple(armed)

    def describe(self) -> str:
        faults = (
            "; ".join(
                [f.describe() for f in self.faults]
                + [r.describe() for r in self.restarts]
                + [a.describe() for a in self.verbs]
            )
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
            "verbs": [attrs.asdict(a) for a in self.verbs],
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
            tuple(OperatorAction.from_dict(a) for a in data.get("verbs") or ()),
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
    verbs: int = 0,
) -> FaultSchedule:
    """Seeded random mode: each point is enabled with probability ``enable`` (with one of its
    actions, drawn), and fires at each of its hits with probability ``fire``. The hits that fire
    are drawn here, so the schedule lists them and a replay repeats them exactly.

    On a ``postgres`` store the database server's own faults are drawn too (lost connections,
    serialization failures, deadlocks, statement timeouts at the store points) and, with
    ``restarts`` (the runner can restart the server), a server restart while the faulty runtime
    works (probability :data:`RESTART_IN_FAULTY`) and one while the healing runtime recovers
    (:data:`RESTART_IN_RECOVERY`). A SQLite schedule of a seed is what it always was.

    ``verbs``: how many operator stories to draw (:func:`draw_verbs`), from a draw of their
    own: the faults, workload and restarts of a seed are the same with or without them."""
    rng = random.Random(seed)
    allowed = set(actions) if actions is not None else None
    horizon = max(8, 6 * sagas)  # more hits than any point gets in a run of this size

    def draw_at(point: str, rng: random.Random) -> list[Fault]:
        if rng.random() >= enable:
            return []
        choices = [a for a in actions_for(point) if allowed is None or a in allowed]
        if store != POSTGRES:
            choices = [a for a in choices if a not in SERVER_ACTIONS]
        if not is_multiprocess(base):
            choices = [a for a in choices if a not in KILLS]
        if not choices:
            return []
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
        return [Fault(point, action, nth=n, delay=delay) for n in hits]

    # The points of operators' verbs are hit only while a verb is applied: they are drawn with
    # the verbs, from their draw, so that a seed draws the faults and workload it drew before
    # verbs existed, with or without them.
    faults = [f for point in points if point not in VERB_POINTS for f in draw_at(point, rng)]
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
    verbs_rng = random.Random(f"verbs of seed {seed}")
    stuck, operations = draw_verbs(verbs_rng, sagas, verbs)
    if verbs:
        stuck += [f for point in points if point in VERB_POINTS for f in draw_at(point, verbs_rng)]
    return FaultSchedule(
        (*faults, *stuck),
        workload_seed,
        sagas,
        base,
        hosts,
        label or f"seed {seed}",
        store=store,
        restarts=tuple(drawn),
        verbs=operations,
    )


def draw_verbs(
    rng: random.Random, sagas: int, stories: int
) -> tuple[list[Fault], list[OperatorAction]]:
    """``stories`` operator stories, each on a saga of its own while there are enough: the
    faults that make some of those sagas stuck (:data:`STUCK`) and the operator's actions.

    A story is what an operator does to one saga: cancel it (and perhaps resolve the
    compensation it then owes by hand), pause it (and resume it, perhaps skipping the step it
    holds by hand first; left paused, the heal's diligent operator resumes it), retry it, skip
    its step, abandon it (then settle its debt by hand, or retry it to pay it), or, while it
    heals, resolve or retry what it owes."""
    faults: list[Fault] = []
    actions: list[OperatorAction] = []
    free = list(range(sagas))
    for _ in range(stories):
        saga = free.pop(rng.randrange(len(free))) if free else rng.randrange(sagas)
        if rng.random() < STUCK:
            point = rng.choice(STUCK_POINTS)
            faults.append(
                Fault(
                    point,
                    "raise",
                    nth=rng.randint(1, 3),
                    persistent=True,
                    saga_id=f"{WORKLOAD_SAGA}{saga}",
                )
            )

        actions += _story(rng, saga)
    return faults, actions


def _story(rng: random.Random, saga: int) -> list[OperatorAction]:
    """One drawn operator story on ``saga`` (see :func:`draw_verbs`)."""

    def first(verb: str) -> OperatorAction:
        return OperatorAction(saga, verb, FAULTY, after_events=rng.randint(*VERB_EVENTS))

    def then(verb: str, phase: str = FAULTY) -> OperatorAction:
        delay = rng.uniform(*VERB_DELAY) if phase == FAULTY else rng.uniform(0.0, 0.5)
        return OperatorAction(saga, verb, phase, after_seconds=round(delay, 3))

    def healing(verb: str) -> OperatorAction:
        delay = round(rng.uniform(0.0, VERB_HEAL_WINDOW), 3)
        return OperatorAction(saga, verb, RECOVERY, after_seconds=delay)

    story = rng.choice(STORIES)
    if story == "cancel":
        return [first("cancel")] + ([then("resolve")] if rng.random() < 0.5 else [])
    if story == "pause":
        held = [then("skip")] if rng.random() < 0.3 else []
        resumed = [then("resume")] if rng.random() < 0.7 else []
        return [first("pause"), *held, *resumed]
    if story in ("retry", "skip"):
        return [first(story)]
    if story == "abandon":
        settle = [then("resolve", RECOVERY) for _ in range(rng.randint(1, 3))]
        return [first("abandon"), *(settle if rng.random() < 0.6 else [healing("retry")])]
    return [healing(story.split()[-1])]  # what the heal finds owed: resolved, or retried


#: What a drawn operator story does (see :func:`draw_verbs`), equally likely.
STORIES = ("cancel", "pause", "retry", "skip", "abandon", "heal resolve", "heal retry")


#: Points reached only while a saga is recovered: the exhaustive mode crashes first at the
#: point given here (once), so that there is a recovery to crash in.
PRIMERS = {"store.claim": "host.after_intent_commit"}
# VERB_POINTS (understudy.failpoints) are reached only while a saga host applies an operator's
# verb: the exhaustive mode runs them with :func:`verb_story`, so that there are verbs to crash in.


def verb_story() -> tuple[tuple[Fault, ...], tuple[OperatorAction, ...]]:
    """The operator story of the exhaustive mode's verb points: the workload's first saga is
    stuck (every request it sends fails until the heal, so it retries, compensates, owes its
    compensation and parks, for a second or so, instead of finishing in milliseconds), and an
    operator pauses it, resumes it and retries it while the faulty runtime works (each applied
    by a saga host, which is what the verb points are hit by), then retries it in the heal,
    which pays what it owes."""
    stuck = Fault("participant.before_apply", "raise", persistent=True, saga_id=f"{WORKLOAD_SAGA}0")
    return (stuck,), (
        OperatorAction(0, "pause", after_events=2),
        OperatorAction(0, "resume", after_seconds=0.2),
        OperatorAction(0, "retry", after_seconds=0.2),
        OperatorAction(0, "retry", RECOVERY),
    )


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
    :data:`PRIMERS` point when it is reached only during recovery, and with the operator story
    of :func:`verb_story` when it is reached only while a verb is applied."""
    crash = crash_action(base)
    action = action or crash
    kind = "persistent" if persistent else "single"
    fault = Fault(point, action, nth=nth, persistent=persistent, participant=participant)
    primer = PRIMERS.get(point)
    story, verbs = verb_story() if point in VERB_POINTS else ((), ())
    return FaultSchedule(
        (*story, Fault(primer, crash), fault) if primer else (*story, fault),
        workload_seed,
        sagas,
        base,
        hosts,
        f"{kind} {action} at hit {nth} of {point}" + (f" in {participant}" if participant else ""),
        store=store,
        verbs=verbs,
    )
