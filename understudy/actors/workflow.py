"""The workflow actor's behaviour: a state machine over one instance of a
:class:`~understudy.definitions.WorkflowDefinition`, whose steps depend on each other.

The host runs it exactly as it runs a :class:`~understudy.actors.saga.Saga` (same inputs, same
commands, same write-ahead rule, I3): only what it does between differs. Several requests may be
out at once, one per step at most:

- fan-out and fan-in: a step is sent once every step it depends on is done, in the same
  transition that records the last of them, and reads their results;
- each step has its own reply deadline, retries and idempotency keys (the saga's key rule, I6);
- every step whose intent is recorded is compensated on abort (I4), and compensation follows the
  graph in reverse (I5 for a graph): a step's compensation is sent only once every step that
  depends on it was compensated (or never started); independent branches are compensated at the
  same time. Requests of other branches still out when a step fails are compensated too, their
  late replies ignored (the participant's ledger refuses a forward that arrives after its
  compensation, I7);
- once an irreversible step has started, the workflow recovers forward only: a step that then
  fails for good parks it, as a failure after a saga's pivot does.
"""

from __future__ import annotations

from typing import Any

import attrs

from understudy.actors.inputs import InputMissing, request_data
from understudy.actors.instance import Instance
from understudy.actors.saga import (
    DO,
    OVERFLOW,
    UNDO,
    Command,
    Finish,
    Send,
    Timer,
    failure_of,
    idempotency_key,
)
from understudy.definitions import WorkflowDefinition
from understudy.messages import ACCEPTED, StepReply, StepRequest
from understudy.persistence.base import (
    COMPENSATED,
    COMPENSATING,
    COMPLETED,
    FAILED,
    RUNNING,
    TERMINAL_STATUSES,
)

# What a step's entry of ``WorkflowState.track`` says: [status, kind, attempt, at, token].
OUT = "out"  # a request is out; ``at`` is its reply deadline, ``token`` its timer's
DUE = "due"  # a retry is due at ``at``
HELD = "held"  # paused: the send waits for a resume
DONE = "done"  # the forward step completed
STOPPED = "stopped"  # the forward step failed for good (the workflow aborts or parks)
TODO = "todo"  # to compensate, once every step depending on it is compensated
UNDONE = "undone"  # compensated
SKIPPED = "skipped"  # nothing to compensate (an irreversible step that was refused)
OWED = "owed"  # its compensation failed for good: debt, listed until paid or resolved
_STATUSES = frozenset({OUT, DUE, HELD, DONE, STOPPED, TODO, UNDONE, SKIPPED, OWED})
_WAITING = (OUT, DUE, HELD)
_SETTLED = (UNDONE, SKIPPED)


@attrs.define
class WorkflowState:
    """Everything a workflow needs to go on after a crash; stored as its msgpack snapshot."""

    phase: str = RUNNING
    results: dict[str, Any] = attrs.field(factory=dict)
    #: Steps whose forward intent is recorded, in that order: what an abort compensates (I4).
    started: list[int] = attrs.field(factory=list)
    #: Per step (by index): None before it starts, else [status, kind, attempt, at, token].
    track: list[Any] = attrs.field(factory=list)
    reason: str | None = None
    cause: str | None = None  # why it compensates (the abort's reason)
    outstanding: list[str] = attrs.field(factory=list)
    timer: int = 0  # the last timer token handed out
    recovery_attempts: int = 0
    paused: list[Any] | None = None  # [who, why, at]
    debt: list[list[Any]] = attrs.field(factory=list)  # [step, error, attempts, since] each
    stopped_in: str | None = None
    failure: list[Any] | None = None  # [step name, reason, data]


_PHASES = (RUNNING, COMPENSATING, *TERMINAL_STATUSES)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_state(s: WorkflowState, definition: WorkflowDefinition) -> str | None:
    """What makes ``s`` impossible for ``definition``, in a few words; None when it is sound."""
    n = len(definition.steps)
    if s.phase not in _PHASES:
        return f"unknown phase {str(s.phase)[:20]!r}"
    if not isinstance(s.track, list) or len(s.track) != n:
        return f"tracks {str(s.track)[:40]} steps, the definition has {n}"
    if not isinstance(s.started, list) or len(set(map(str, s.started))) != len(s.started):
        return "started steps repeat"
    for i in s.started:
        if not _is_int(i) or not 0 <= i < n or s.track[i] is None:
            return f"started step {str(i)[:20]} is not a step under way"
    for i, entry in enumerate(s.track):
        if entry is None:
            continue
        if not isinstance(entry, list) or len(entry) != 5 or entry[0] not in _STATUSES:
            return f"step {i}'s entry {str(entry)[:40]} is malformed"
        status, kind, attempt, _at, token = entry
        if kind not in (DO, UNDO) or not _is_int(attempt) or not _is_int(token):
            return f"step {i}'s entry {str(entry)[:40]} is malformed"
        if status in (OUT, DUE) and not isinstance(_at, (int, float)):
            return f"step {i}'s deadline is not a time"
        if (status in (DONE, STOPPED) and kind != DO) or (
            status in (TODO, UNDONE, SKIPPED, OWED) and kind != UNDO
        ):
            return f"step {i} is {status} for a {kind} request"
        if kind == UNDO and i not in s.started:
            return f"step {i} is compensated but never started"
        if status == DONE or (kind == DO and status in (OUT, DUE, STOPPED)):
            for d in definition.dependencies[i]:
                dep = s.track[d]
                if dep is None or (dep[0] != DONE and dep[1] == DO):
                    return f"step {i} ran before step {d} it depends on was done"
    if s.phase == RUNNING and any(e is not None and e[1] == UNDO for e in s.track):
        return "running with compensations under way"
    # Added with the tests: two states that would break I4 on abort, or compensate around a
    # forward request, which the machine never reaches (an intent records the step started
    # before its request goes out; an abort turns every forward entry into a compensation).
    for i, entry in enumerate(s.track):
        if (
            entry is not None
            and entry[1] == DO
            and entry[0] in (OUT, DUE, DONE)
            and i not in s.started
        ):
            return f"step {i} is under way or done but never started"
    if s.phase == COMPENSATING and any(e is not None and e[1] == DO for e in s.track):
        return "compensating with forward steps under way"
    if s.phase == COMPLETED and any(e is None or e[0] != DONE for e in s.track):
        return "completed with steps not done"
    if s.phase == COMPENSATED and any(s.track[i][0] not in _SETTLED for i in s.started):
        return "compensated with steps not compensated"
    if not isinstance(s.results, dict) or not all(isinstance(k, str) for k in s.results):
        return "step results are not a map of step names"
    if not isinstance(s.debt, list) or not all(
        isinstance(e, list) and len(e) == 4 and _is_int(e[0]) and 0 <= e[0] < n for e in s.debt
    ):
        return "debt is malformed"
    for e in s.debt:
        if s.track[e[0]] is None or s.track[e[0]][0] != OWED:
            return f"debt for step {e[0]} that is not owed"
    if s.paused is not None and (not isinstance(s.paused, list) or len(s.paused) != 3):
        return "pause is malformed"
    if s.stopped_in not in (None, RUNNING, COMPENSATING, OVERFLOW):
        return f"stopped in unknown phase {str(s.stopped_in)[:20]!r}"
    for name in ("timer", "recovery_attempts"):
        if not _is_int(getattr(s, name)) or getattr(s, name) < 0:
            return f"{name} is not a count"
    if s.failure is not None and (not isinstance(s.failure, list) or len(s.failure) != 3):
        return "failure is malformed"
    return None


class Workflow(Instance[WorkflowState, WorkflowDefinition]):
    """One workflow instance: its definition, payload, incarnation and :class:`WorkflowState`."""

    kind = "workflow"
    state_class = WorkflowState
    label = "workflow"

    @staticmethod
    def problem(state: Any, definition: Any) -> str | None:
        return check_state(state, definition)

    @classmethod
    def fresh_state(cls, definition: WorkflowDefinition) -> WorkflowState:
        return WorkflowState(track=[None] * len(definition.steps))

    # --- what the host reads ----------------------------------------------------------------

    def sends(self) -> list[Send]:
        """Every request this workflow waits on, rebuilt identically (same keys): re-sending
        them is safe and needs no new intent."""
        if self.terminal:
            # A parked workflow keeps in ``track`` what it was waiting on (a retry takes it up
            # again), but waits on nothing meanwhile, as a parked saga (which drops ``pending``).
            return []
        return [
            self._request(entry[1], i, entry[2])
            for i, entry in enumerate(self.state.track)
            if entry is not None and entry[0] == OUT
        ]

    def waits_on(self, request: StepRequest) -> bool:
        """Whether this incarnation still waits on exactly ``request``."""
        if (
            self.terminal  # parked: its requests out are no longer waited on (see sends)
            or request.incarnation != self.incarnation
            or not 0 <= request.step < len(self.state.track)
        ):
            return False
        entry = self.state.track[request.step]
        return (
            entry is not None and entry[0] == OUT and entry[1:3] == [request.kind, request.attempt]
        )

    def rearm(self, step: int) -> Timer:
        """A new reply timer for the request of ``step`` sent again now (the running one's token
        goes stale)."""
        entry = self.state.track[step]
        token = self._token()
        if entry is not None and entry[0] == OUT:
            entry[4] = token
        return Timer(self.definition.steps[step].timeout, token)

    # --- inputs -----------------------------------------------------------------------------

    def begin(self, now: float, parent: str | None = None) -> list[Command]:
        self._started(now, parent)
        return self._advance(now)

    def _started_detail(self) -> dict[str, Any]:
        return {
            **super()._started_detail(),
            "workflow": True,
            # The graph, so that a timeline draws it from the log alone.
            "after": {step.name: list(step.after) for step in self.definition.steps},
        }

    def resume(self, now: float) -> list[Command]:
        """Go on after a restart: resend what was out with the same keys, re-arm the retries due,
        send what became ready; or compensate when the definition says so."""
        s = self.state
        self._event(
            "resumed", now, detail={"phase": s.phase, "recovery_attempts": s.recovery_attempts}
        )
        if s.phase == RUNNING and self.definition.on_recovery == "compensate":
            doubt = [
                i
                for i in s.started
                if self.definition.steps[i].irreversible is not None and s.track[i][0] != DONE
            ]
            if doubt:
                spec = self.definition.steps[doubt[0]]
                return self._park(
                    f"interrupted by a crash while irreversible step {spec.name!r} was in "
                    "doubt; it cannot be compensated, so this workflow does not recover by "
                    f"compensating; instead: {_instead(spec.irreversible)}",
                    now,
                )
            if not self._irreversible_started():
                return self._abort(
                    "interrupted by a crash; definition recovers by compensating", now
                )
        commands: list[Command] = []
        for i, entry in enumerate(s.track):
            if entry is None:
                continue
            if entry[0] == OUT:
                commands += self._send(entry[1], i, entry[2], now, resent=True)
            elif entry[0] == DUE:
                entry[4] = self._token()
                commands.append(Timer(max(0.0, entry[3] - now), entry[4]))
        if s.phase == RUNNING:
            return self._go_on(commands, now)
        return commands + self._compensate_ready(now)

    def on_reply(self, reply: StepReply, now: float) -> list[Command] | None:
        """Apply a participant's reply; None when it is stale and changes nothing."""
        s = self.state
        step = reply.step
        # A parked (failed) workflow keeps its requests out in ``track`` for a retry to send
        # again; a late reply to one must not move it (it would record a step done, start the
        # steps after it, or even report it completed, from a parked state): stale, as a reply
        # to a parked saga, whose ``_finish`` drops ``pending``.
        if self.terminal or reply.incarnation != self.incarnation or not 0 <= step < len(s.track):
            return None
        entry = s.track[step]
        if entry is None or entry[0] != OUT or entry[1:3] != [reply.kind, reply.attempt]:
            return None
        kind, attempt = entry[1], entry[2]
        if reply.outcome == ACCEPTED:
            # Taken, to be finished later: still waited on, under the same deadline.
            self._event("accepted", now, step, attempt, {"kind": kind})
            return []
        detail: dict[str, Any] = {"outcome": reply.outcome}
        if reply.reason:
            detail["reason"] = reply.reason
        if reply.replayed:
            detail["replayed"] = True
        if reply.outcome == "ok":
            s.recovery_attempts = 0
            if kind == DO:
                self._event("done", now, step, attempt, detail)
                s.track[step] = [DONE, DO, attempt, None, 0]
                s.results[self._name(step)] = reply.result
                if all(e is not None and e[0] == DONE for e in s.track):
                    return self._finish(COMPLETED, None, (), now)
                return self._advance(now)
            self._event("compensated", now, step, attempt, detail)
            s.track[step] = [UNDONE, UNDO, attempt, None, 0]
            return self._compensate_ready(now)
        self._event(
            "rejected" if reply.outcome == "rejected" else "failed", now, step, attempt, detail
        )
        return self._failed(
            kind,
            step,
            attempt,
            reply.outcome == "rejected",
            reply.reason or reply.outcome,
            now,
            reply.data,
        )

    def on_timer(self, token: int, now: float) -> list[Command] | None:
        """A timer fired: a reply deadline passed, or a retry is due. None when stale."""
        s = self.state
        if self.terminal:
            return None
        for step, entry in enumerate(s.track):
            if entry is None or entry[4] != token or entry[0] not in (OUT, DUE):
                continue
            status, kind, attempt, at, _token = entry
            if status == DUE:
                return self._send(kind, step, attempt, now)
            if now + 1e-3 < at:  # a clock that moved back: wait out the rest
                entry[4] = self._token()
                return [Timer(at - now, entry[4])]
            timeout = self.definition.steps[step].timeout
            self._event("timeout", now, step, attempt, {"kind": kind, "after": timeout})
            return self._failed(kind, step, attempt, False, f"no reply within {timeout} s", now)
        return None

    # --- transitions ------------------------------------------------------------------------

    def _advance(self, now: float) -> list[Command]:
        """Send every step whose dependencies are all done and that has not started (fan-out,
        fan-in)."""
        s, definition = self.state, self.definition
        commands: list[Command] = []
        for i, entry in enumerate(s.track):
            if entry is not None:
                continue
            if all(
                s.track[d] is not None and s.track[d][0] == DONE for d in definition.dependencies[i]
            ):
                launched = self._launch(i, now)
                if s.phase != RUNNING:
                    # A step whose request could not be built stopped the workflow: the
                    # forward sends staged before it in this transition are not sent (their
                    # steps are compensated instead, which the stop's commands hold).
                    return launched
                commands += launched
        stopped = [i for i, e in enumerate(s.track) if e is not None and e[0] == STOPPED]
        if (
            stopped
            and not commands
            and not any(e is not None and e[0] in _WAITING for e in s.track)
        ):
            # A step stopped for good stays so in a running workflow only when an operator
            # took it up again by skipping another step; once nothing else can move it would
            # run for ever waiting on nothing: it parks again, listing what is left.
            names = ", ".join(repr(self._name(i)) for i in stopped)
            why = f" ({s.failure[1]})" if s.failure is not None else ""
            return self._park(
                f"step {names} stopped{why} and nothing else can move: retry or skip it", now
            )
        return commands

    def _go_on(self, staged: list[Command], now: float) -> list[Command]:
        """``staged`` (requests sent again, retries re-armed), then :meth:`_advance`. When what
        became ready stopped the workflow (a request that cannot be built), the staged
        forward sends are dropped with the rest, as :meth:`_advance` drops its own: they were
        returned with the stop's commands, so a workflow parked again still sent them (its
        snapshot then waiting on nothing), or an aborted one sent forward requests along with
        their compensations."""
        advanced = self._advance(now)
        if self.state.phase != RUNNING:
            return advanced
        return staged + advanced

    def _launch(self, step: int, now: float) -> list[Command]:
        s = self.state
        if s.paused is not None:
            # Held before its intent: nothing to compensate for it (I4).
            return self._hold(DO, step, 1, now)
        spec = self.definition.steps[step]
        if spec.inputs:
            try:
                request_data(spec, self.payload, s.results, self._readable(step))
            except InputMissing as exc:
                reason = f"its request cannot be built: {exc}"
                s.track[step] = [STOPPED, DO, 1, None, 0]
                self._event("rejected", now, step, 1, {"outcome": "rejected", "reason": reason})
                return self._give_up(step, True, reason, now, None)
        s.started.append(step)
        return self._send(DO, step, 1, now)

    def _send(
        self, kind: str, step: int, attempt: int, now: float, resent: bool = False
    ) -> list[Command]:
        s = self.state
        if s.paused is not None:
            return self._hold(kind, step, attempt, now)
        spec = self.definition.steps[step]
        action = spec.action if kind == DO else spec.compensation
        assert action is not None
        token = self._token()
        s.track[step] = [OUT, kind, attempt, now + spec.timeout, token]
        self._event(
            "intent" if kind == DO else "compensation-intent",
            now,
            step,
            attempt,
            {
                "name": spec.name,
                "key": idempotency_key(self.saga_id, step, kind),
                "participant": spec.participant,
                "action": action,
                **self._child_of(spec),
                **({"resent": True} if resent else {}),
            },
        )
        return [self._request(kind, step, attempt), Timer(spec.timeout, token)]

    def _hold(self, kind: str, step: int, attempt: int, now: float) -> list[Command]:
        s = self.state
        s.track[step] = [HELD, kind, attempt, None, 0]
        who = s.paused[0] if s.paused is not None else None
        self._event("held", now, step, attempt, {"kind": kind, "paused_by": who})
        return []

    def _failed(
        self,
        kind: str,
        step: int,
        attempt: int,
        rejected: bool,
        reason: str,
        now: float,
        data: Any = None,
    ) -> list[Command]:
        s = self.state
        spec = self.definition.steps[step]
        policy = spec.retry if kind == DO else spec.compensation_retry
        if not rejected and attempt < policy.attempts:
            delay = policy.delay(attempt)
            token = self._token()
            s.track[step] = [DUE, kind, attempt + 1, now + delay, token]
            self._event("retry-scheduled", now, step, attempt + 1, {"kind": kind, "in": delay})
            return [Timer(delay, token)]
        if kind == UNDO:
            # Debt: durable, listed, never dropped (I2). Other branches go on compensating;
            # the steps this one depends on wait for it (I5), and the workflow parks once
            # nothing else can move.
            s.track[step] = [OWED, UNDO, attempt, None, 0]
            s.debt.append([step, reason, attempt, now])
            self._event(
                "debt",
                now,
                step,
                attempt,
                {
                    "name": spec.name,
                    "participant": spec.participant,
                    "compensation": spec.compensation,
                    "error": reason,
                    "attempts": attempt,
                },
            )
            return self._compensate_ready(now)
        s.track[step] = [STOPPED, DO, attempt, None, 0]
        return self._give_up(step, rejected, reason, now, data, attempt)

    def _give_up(
        self,
        step: int,
        rejected: bool,
        reason: str,
        now: float,
        data: Any,
        attempt: int = 1,
    ) -> list[Command]:
        """Forward step ``step`` failed for good: compensate everything started, or park when
        an irreversible step may have run."""
        s = self.state
        spec = self.definition.steps[step]
        s.failure = [spec.name, reason, data]
        if spec.irreversible is not None and not rejected:
            return self._park(
                f"irreversible step {spec.name!r} did not confirm after {attempt} attempt(s) "
                f"({reason}) and cannot be compensated; instead: {_instead(spec.irreversible)}",
                now,
            )
        others = self._irreversible_started(besides=step if rejected else None)
        if others:
            return self._park(
                # "was rejected" for a refusal, as the abort's reason says (it said "failed").
                f"step {spec.name!r} {'was rejected' if rejected else 'failed'} ({reason}) "
                "after the irreversible step "
                f"{self._name(others[0])!r} started; the workflow recovers forward only, so "
                "finish this step by hand",
                now,
            )
        return self._abort(
            f"step {spec.name!r} {'was rejected' if rejected else 'failed'}"
            f"{'' if rejected else f' after {attempt} attempt(s)'}: {reason}",
            now,
        )

    def _irreversible_started(self, besides: int | None = None) -> list[int]:
        steps = self.definition.steps
        return [i for i in self.state.started if steps[i].irreversible is not None and i != besides]

    def _abort(self, reason: str, now: float) -> list[Command]:
        s = self.state
        s.phase = COMPENSATING
        s.reason = s.cause = reason
        for i, entry in enumerate(s.track):
            if i in s.started:
                s.track[i] = [TODO, UNDO, 0, 0, 0]
            elif entry is not None and entry[1] == DO:
                s.track[i] = None  # held or refused before its intent: never started
        self._event(
            "aborted",
            now,
            detail={
                "reason": reason,
                "to_compensate": [self._name(i) for i in reversed(s.started)],
            },
        )
        return self._compensate_ready(now)

    def _compensate_ready(self, now: float) -> list[Command]:
        """Send every compensation whose dependents are all compensated (or never started);
        finish or park once nothing is left to wait for."""
        s, definition = self.state, self.definition
        commands: list[Command] = []
        moved = True
        while moved:
            moved = False
            for i in reversed(s.started):
                entry = s.track[i]
                if entry[0] != TODO:
                    continue
                if not all(
                    s.track[j] is None or s.track[j][0] in _SETTLED
                    for j in definition.dependents[i]
                ):
                    continue
                spec = definition.steps[i]
                if spec.compensation is None:
                    # Only an irreversible step that was refused gets here (otherwise the
                    # workflow parks): nothing to undo, only to report.
                    self._event(
                        "compensation-skipped",
                        now,
                        i,
                        detail={"irreversible": True, "instead": _instead(spec.irreversible)},
                    )
                    s.track[i] = [SKIPPED, UNDO, 0, None, 0]
                    moved = True
                    continue
                commands += self._send(UNDO, i, 1, now)
        if commands or any(e is not None and e[0] in _WAITING for e in s.track):
            return commands
        if s.debt or any(s.track[i][0] == TODO for i in s.started):
            return self._park(s.reason or "compensations are owed", now)
        return self._finish(COMPENSATED, s.cause or s.reason, (), now)

    def _park(self, reason: str, now: float) -> list[Command]:
        s = self.state
        if s.phase in (RUNNING, COMPENSATING):
            s.stopped_in = s.phase
        return self._finish(FAILED, reason, tuple(self._outstanding()), now)

    def _outstanding(self) -> list[str]:
        s, steps = self.state, self.definition.steps
        if s.stopped_in == RUNNING and not s.debt:
            return [
                f"finish step {step.name!r} ({step.action})"
                for i, step in enumerate(steps)
                if s.track[i] is None or s.track[i][0] != DONE
            ]
        owed = [
            f"compensate step {self._name(e[0])!r} ({steps[e[0]].compensation}): owed, {e[1]}"
            for e in s.debt
        ]
        return owed + [
            f"compensate step {self._name(i)!r} ({steps[i].compensation})"
            for i in reversed(s.started)
            if s.track[i][0] not in (*_SETTLED, OWED) and steps[i].compensation is not None
        ]

    def _finish(
        self, status: str, reason: str | None, outstanding: tuple[str, ...], now: float
    ) -> list[Command]:
        s = self.state
        s.phase = status
        s.reason = reason
        s.outstanding = list(outstanding)
        s.paused = None
        detail: dict[str, Any] = {}
        if reason:
            detail["reason"] = reason
        if outstanding:
            detail["outstanding"] = list(outstanding)
        self._event(status, now, detail=detail)
        return [Finish(status, reason, outstanding, dict(s.results), failure_of(s.failure))]

    def _readable(self, step: int) -> frozenset[str]:
        return self.definition.earlier(step)

    def _token(self) -> int:
        self.state.timer += 1
        return self.state.timer


def _instead(irreversible: Any) -> str:
    return irreversible.instead if irreversible is not None else "-"
