"""The chaos runner's operator: it carries out a schedule's operators' verbs during a run.

Each :class:`~understudy.testing.schedule.OperatorAction` is carried out, when it is due, as
an operator would: through :class:`understudy.operate.Operator` (``who="chaos"``, with the
scenario's definitions, so that with no runtime owning the saga it applies the verb itself), not
waiting for the outcome (the run goes on; the command's fate is read from the store at the end).
A refusal is an expected outcome, and so is a command still pending when the faulty runtime
dies: the healing runtime applies it.

``skip`` and ``resolve`` are a person's work done by hand, then recorded. The runner does that
work through the participant's own code: its handler for the step's action (skip) or
compensation (resolve), in its own database, inside its ledger's transaction and under the
step's idempotency key (:func:`by_hand`), exactly as the participant applies a request. So the
participant's effects stay whole, the domain's totals conserved (I17) with no allowance made
for hand work, and a request of the saga for the same step, late or resent, finds the key and
replays it instead of applying twice (I6, I7). The checker is told which ledger rows were
written by hand (:attr:`~understudy.testing.checker.RunView.by_hand`): those alone need no
intent before them. The work is done only when the saga's stored state says the verb applies
(the step it is at and no request out, for skip; the next compensation it owes, for resolve):
a person who did the work for a verb then refused must never leave an effect no compensation
will undo.

At the heal the runner is a diligent operator: once every action has been carried out and no
command is pending, it resumes every saga still paused, so that every saga can come to rest. A
saga parked owing compensations (debt) is left parked: failed-needs-attention is a state of
rest, and the checker holds its debt to being listed, never dropped.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import attrs

from understudy import codec
from understudy.actors.ledger import open_ledger
from understudy.actors.participant import Participant
from understudy.actors.saga import DO, UNDO, Saga, Send
from understudy.definitions import SagaDefinition
from understudy.errors import CorruptRecord, SagaNotFound, UnderstudyError, VerbRefused
from understudy.operate import Operator
from understudy.persistence import SagaStore
from understudy.persistence.base import (
    APPLIED,
    COMPENSATING,
    FAILED,
    PENDING,
    REFUSED,
    RUNNING,
)
from understudy.testing.schedule import BY_HAND, FAULTY, RECOVERY, OperatorAction

#: Who the runner's verbs are recorded as done by.
WHO: Final = "chaos"
#: What became of an action that never reached the store as a command (the saga was not
#: stored yet, nothing was due for the work by hand, the store could not be reached).
NOT_SENT: Final = "not sent"
OUTCOMES: Final = (APPLIED, REFUSED, PENDING, NOT_SENT)
#: Resumes the diligent operator sends one saga at most (it is paused again only by a verb
#: applied meanwhile; more than this is a saga that never stays resumed).
DILIGENT_RESUMES = 3
DILIGENT_WHY = "the diligent operator resumes every paused saga before the run is judged"

Participants = Sequence[tuple[str, type, dict[str, Any]]]


@attrs.frozen
class VerbTaken:
    """One verb the runner carried out (or did not send), and what became of it: ``outcome``
    is one of :data:`OUTCOMES`; ``detail`` is the refusal, or why it was not sent."""

    verb: str
    saga_id: str
    phase: str
    outcome: str
    detail: str = ""
    command: int | None = None
    #: The step worked on by hand (skip, resolve).
    step: int | None = None
    #: Sent by the heal's diligent operator, not by the schedule.
    diligent: bool = False

    def describe(self) -> str:
        step = f" step {self.step}" if self.step is not None else ""
        number = f" (command {self.command})" if self.command is not None else ""
        why = f": {self.detail}" if self.detail and self.outcome != APPLIED else ""
        return f"{self.verb}{step} of {self.saga_id}{number} {self.outcome}{why}"


@attrs.frozen
class Done:
    """What a participant's handler did with a request served by hand: ``outcome`` ``ok``,
    ``rejected`` (the participant refused it, or its key was refused) or ``error``."""

    outcome: str
    result: Any = None
    reason: str | None = None


def by_hand(participants: Participants, send: Send) -> Done:
    """Serve ``send``'s request as its participant would, in this process: the participant's
    own decision code (its ledger's rules, then its handler, in one transaction of its database
    under the request's idempotency key), with no actor and no failpoint in between. A key
    recorded already (the saga's own request got there first) answers its recorded outcome,
    as it would to the saga. An external handler's effect is outside any database, so it cannot
    be done here: that is refused with an error."""
    found = [(cls, options) for name, cls, options in participants if name == send.participant]
    if not found:
        return Done("error", reason=f"no participant {send.participant!r} in the scenario")
    cls, options = found[0]
    ledger = open_ledger(str(options["database"]), options)
    try:
        # An actor object that is never started: only its decision code and handler run. Its
        # reply is the participant's own, built exactly as for a request that came by message.
        worker: Participant = cls()
        worker.name, worker.ledger = send.participant, ledger
        ledger.begin()
        staged = worker._decide(send.request, None)
        if staged.reply is None:
            ledger.rollback()
            return Done("error", reason="an external handler's effect is outside any database")
        ledger.commit()
        reply = staged.reply
        return Done(reply.outcome, reply.result, reply.reason)
    except Exception as exc:  # the handler failed, or the database did: nothing was written
        ledger.rollback()
        return Done("error", reason=f"{type(exc).__name__}: {exc}")
    finally:
        ledger.close()


def _stopped_in(saga: Saga) -> str | None:
    s = saga.state
    return s.stopped_in if s.phase == FAILED else s.phase


def forward_step(saga: Saga) -> int | str:
    """The forward step a person may do by hand and skip: the one the saga is at, when no
    request for it is out; else why not."""
    s = saga.state
    if _stopped_in(saga) != RUNNING:
        return f"it is {s.phase}: it has no forward step to do by hand"
    if s.pending is not None:
        return f"a request for step {saga._name(s.pending[1])!r} is out: it may still apply"
    return int(s.held[1] if s.held is not None else s.step)


def owed_step(saga: Saga) -> int | str:
    """The compensation a person may do by hand and resolve: the highest step owed as debt, or
    the compensation due next when none is (reverse order, I5); else why none."""
    s = saga.state
    if s.debt:
        return max(int(entry[0]) for entry in s.debt)
    if _stopped_in(saga) != COMPENSATING or not s.stack:
        return f"it is {s.phase}: it owes no compensation now"
    if s.pending is not None:
        return f"a compensation request for step {saga._name(s.stack[-1])!r} is out"
    return int(s.stack[-1])


class Operators:
    """The operator of one run: its schedule's actions, carried out as they fall due."""

    def __init__(
        self,
        location: str,
        definitions: Iterable[SagaDefinition],
        participants: Participants,
        actions: Sequence[OperatorAction],
        saga_ids: Sequence[str],
    ) -> None:
        self.location = location
        self.definitions = tuple(definitions)
        self.participants = participants
        self.saga_ids = saga_ids
        self.waiting = list(actions)
        self.pauses = any(a.verb == "pause" for a in actions)
        self.phase = FAULTY
        self.began = time.monotonic()
        self.fired: dict[int, float] = {}  # saga index -> when its last action was carried out
        self.taken: list[VerbTaken] = []
        #: (saga id, step, kind) of every ledger key the runner served by hand.
        self.by_hand: set[tuple[str, int, str]] = set()
        self.resumes: Counter[str] = Counter()

    def begin(self, phase: str) -> None:
        """A phase begins: its actions' seconds count from now; the faulty phase's actions
        not carried out yet are due at once."""
        self.phase, self.began = phase, time.monotonic()

    # --- carrying actions out -------------------------------------------------------------

    def poll(self, store: SagaStore) -> None:
        """Carry out every action that is due (``store``: the run's store, read-only)."""
        if not self.waiting:
            return
        now = time.monotonic()
        looked: set[int] = set()
        for action in list(self.waiting):
            if action.saga in looked:
                continue  # actions on one saga go in the schedule's order
            looked.add(action.saga)
            taken = self._due(action, store, now) and self._carry_out(action, store)
            if taken:
                self.waiting.remove(action)
                self.fired[action.saga] = now
                self.taken.append(taken)

    def _due(self, action: OperatorAction, store: SagaStore, now: float) -> bool:
        if action.phase == RECOVERY and self.phase == FAULTY:
            return False
        saga_id = self.saga_ids[action.saga]
        record = store.get(saga_id)
        if record is None:
            return False  # not stored yet: its start is on its way, or sent again in the heal
        if action.phase == self.phase:
            since = max(self.began, self.fired.get(action.saga, 0.0))
            if now - since < action.after_seconds:
                return False
            if (
                action.after_events
                and not record.terminal  # it would wait for events that never come
                and len(store.events(saga_id)) < action.after_events
            ):
                return False
        # An operator waits for their last verb on a saga to be applied or refused.
        return not store.commands(saga_id=saga_id, limit=1)

    def _carry_out(self, action: OperatorAction, store: SagaStore) -> VerbTaken | None:
        """Carry ``action`` out; None when the work by hand must wait (see
        :meth:`_work_by_hand`)."""
        saga_id = self.saga_ids[action.saga]
        why = f"{WHO}: {action.describe()}"
        if action.verb not in BY_HAND:
            return self._submit(action.verb, saga_id, why, {})
        work = self._work_by_hand(action, saga_id, store)
        if work is None:
            return None
        if isinstance(work, str):
            return VerbTaken(action.verb, saga_id, self.phase, NOT_SENT, work)
        return attrs.evolve(self._submit(action.verb, saga_id, why, work), step=work["step"])

    def _work_by_hand(
        self, action: OperatorAction, saga_id: str, store: SagaStore
    ) -> dict[str, Any] | str | None:
        """Do the step's work by hand when the saga's stored state says the verb applies: the
        verb's arguments; or why nothing was done; or None, to look again later: a person
        waits while the saga still moves and may come to where the verb applies (a request
        out, a compensation not due yet), but not for a saga at rest or held by a pause."""
        record = store.get(saga_id)
        if record is None:
            return "the saga was never stored"
        key = (record.definition, record.version)
        definition = next((d for d in self.definitions if d.key == key), None)
        if definition is None:
            return f"no definition {record.definition!r} v{record.version} in the scenario"
        if record.terminal and record.status != FAILED:
            return f"it is {record.status}: nothing is left to do by hand"
        try:
            saga = Saga.from_record(record, definition)
        except CorruptRecord as exc:
            return f"its stored state cannot be read: {exc}"
        skip = action.verb == "skip"
        step = forward_step(saga) if skip else owed_step(saga)
        if isinstance(step, str):
            # Compensating, a saga never goes forward again: nothing to skip will come.
            gone = skip and _stopped_in(saga) == COMPENSATING
            # A paused saga moves only until the request it has out is answered.
            held = saga.state.paused is not None and saga.state.pending is None
            moving = not record.terminal and not held and not gone
            return None if moving else step
        if action.step is not None and action.step not in (step, definition.steps[step].name):
            return f"the step to work on by hand is {saga._name(step)!r}, not {action.step!r}"
        kind = DO if skip else UNDO
        self.by_hand.add((saga_id, step, kind))
        done = by_hand(self.participants, saga._request(kind, step, 1))
        if done.outcome != "ok":
            return f"step {saga._name(step)!r} was not done by hand: {done.reason}"
        return {"step": step, "result": done.result} if skip else {"step": step}

    def _submit(
        self, verb: str, saga_id: str, why: str, args: dict[str, Any], diligent: bool = False
    ) -> VerbTaken:
        taken = VerbTaken(verb, saga_id, self.phase, NOT_SENT, diligent=diligent)
        if "://" not in self.location and not os.path.exists(self.location):
            return attrs.evolve(taken, detail="there is no saga store yet")
        try:
            with Operator(self.location, who=WHO, definitions=self.definitions, wait=0.0) as op:
                command = op.apply(saga_id, verb, why, **args)
        except VerbRefused as exc:  # refused by this operator itself: nobody owned the saga
            return attrs.evolve(taken, outcome=REFUSED, detail=str(exc))
        except SagaNotFound:
            return attrs.evolve(taken, detail="the saga was never stored")
        except UnderstudyError as exc:
            # Perhaps stored before the store went away: the store says at the end.
            return attrs.evolve(taken, detail=f"{type(exc).__name__}: {exc}")
        return attrs.evolve(taken, outcome=command.state, command=command.id)

    # --- the heal -------------------------------------------------------------------------

    def tend(self, store: SagaStore) -> bool:
        """In the heal: carry out what is due; once nothing is left to carry out and no
        command is pending, resume every saga still paused. Whether the operator is still
        busy (actions left, or commands pending)."""
        self.poll(store)
        if self.waiting:
            return True
        if store.commands(limit=1):
            return True
        resumed = False
        if self.pauses:
            for saga_id in store.unfinished():
                record = store.get(saga_id)
                paused = _snapshot(record.snapshot).get("paused") if record else None
                if paused is not None and self.resumes[saga_id] < DILIGENT_RESUMES:
                    self.resumes[saga_id] += 1
                    self.taken.append(self._submit("resume", saga_id, DILIGENT_WHY, {}, True))
                    resumed = True
        return resumed

    def settle(self, store: SagaStore) -> tuple[VerbTaken, ...]:
        """What became of each verb, as the store says at the end of the run; actions never
        carried out (the heal ended first) are listed as not sent."""
        commands = {c.id: c for c in store.commands(pending=False, limit=1 << 62)}
        settled = []
        for taken in self.taken:
            command = commands.get(taken.command) if taken.command is not None else None
            if command is not None:
                detail = command.outcome if command.state == REFUSED else ""
                taken = attrs.evolve(taken, outcome=command.state, detail=detail or "")
            settled.append(taken)
        for action in self.waiting:
            settled.append(
                VerbTaken(
                    action.verb, self.saga_ids[action.saga], action.phase, NOT_SENT, "never due"
                )
            )
        return tuple(settled)


def _snapshot(snapshot: bytes | None) -> dict[str, Any]:
    with contextlib.suppress(CorruptRecord):
        state = codec.decode(snapshot or b"\xc0")
        if isinstance(state, dict):
            return state
    return {}


def figures(verbs: Iterable[VerbTaken]) -> Counter[str]:
    """``"verb outcome"`` -> how many."""
    return Counter(f"{v.verb} {v.outcome}" for v in verbs)


def verb_lines(counts: Mapping[str, int]) -> str:
    """The verbs of a set of runs in one line: per outcome, then per verb."""
    outcomes: Counter[str] = Counter()
    for key, n in counts.items():
        outcomes[key.split(" ", 1)[1]] += n
    total = sum(outcomes.values())
    by_outcome = ", ".join(f"{n} {o}" for o, n in sorted(outcomes.items()))
    by_verb = ", ".join(f"{k} {n}" for k, n in sorted(counts.items()))
    return f"operator verbs: {total} ({by_outcome}; {by_verb})"
