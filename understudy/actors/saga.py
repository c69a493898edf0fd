"""The saga actor's behaviour: a state machine over one saga instance.

It is pure logic: it never touches a database or a socket. Each input (begin, resume, a reply, a
timer) changes the state, appends timeline events and returns commands (send a request, set a
timer, report the end). The host (:mod:`understudy.supervisors.host`) commits the new snapshot
and the events first and only then carries out the commands: that ordering is the write-ahead
rule (I3), and keeping it in one place is why this class does no I/O.

Rules it keeps:
- a step is pushed on the compensation stack when its intent is recorded, so every step that may
  have run is compensated on abort (I4), in reverse order (I5);
- idempotency keys are derived from (saga, step, kind) and never change across attempts and
  restarts, so a participant applies each at most once (I6);
- a reply counts only if it matches the outstanding request's step, kind, attempt and the
  saga's incarnation (I10);
- after the pivot (the first irreversible step) failures recover forward, never backward.
"""

from __future__ import annotations

from typing import Any

import attrs

from understudy.actors.inputs import InputMissing, request_data
from understudy.actors.instance import (
    DO,
    OVERFLOW,
    UNDO,
    Command,
    Finish,
    Instance,
    Send,
    Timer,
    failure_of,
    idempotency_key,
)
from understudy.definitions import SagaDefinition, Step
from understudy.messages import ACCEPTED, StepReply, StepRequest
from understudy.persistence.base import (
    COMPENSATED,
    COMPENSATING,
    COMPLETED,
    FAILED,
    RUNNING,
    TERMINAL_STATUSES,
)


@attrs.define
class SagaState:
    """Everything a saga needs to go on after a crash; stored as its msgpack snapshot."""

    phase: str = RUNNING
    step: int = 0
    attempt: int = 0
    stack: list[int] = attrs.field(factory=list)
    results: dict[str, Any] = attrs.field(factory=dict)
    pending: list[Any] | None = None  # [kind, step, attempt, deadline]: a request is out
    waiting: list[Any] | None = None  # [kind, step, next attempt, due]: a retry is due
    pivot_passed: bool = False
    reason: str | None = None
    outstanding: list[str] = attrs.field(factory=list)
    timer: int = 0
    recovery_attempts: int = 0
    # Added with operators' verbs: snapshots written before them lack these fields and restore
    # with their defaults (_LATER_FIELDS).
    paused: list[Any] | None = None  # [who, why, at]: an operator paused it; nothing new is sent
    held: list[Any] | None = None  # [kind, step, attempt]: a send held back while paused
    # Compensations owed and not being attempted: [step, error, attempts, since] each, for a
    # compensation that exhausted its retries or one an operator abandoned. Never dropped: an
    # entry leaves only when a retry pays it or an operator resolves it (I2).
    debt: list[list[Any]] = attrs.field(factory=list)
    stopped_in: str | None = None  # the phase a parked saga stopped in (running, compensating)
    # Why it is compensating (the abort's reason): a saga parked while compensating has another
    # reason meanwhile, and says this one again when it ends compensated.
    cause: str | None = None
    # The forward step's failure that stopped it: [step name, reason, data the refusal carried].
    failure: list[Any] | None = None


_LATER_FIELDS = frozenset({"paused", "held", "debt", "stopped_in", "cause", "failure"})
_PHASES = (RUNNING, COMPENSATING, *TERMINAL_STATUSES)
_ACTIVE = (RUNNING, COMPENSATING)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_state(s: SagaState, definition: SagaDefinition) -> str | None:
    """What makes ``s`` impossible for ``definition``, in a few words; None when it is sound.

    The rules follow from how :class:`Saga` moves: steps are pushed on the compensation stack in
    order as their intents are recorded and popped from its end as they are compensated, so the
    stack is always ``[0, 1, ..., k-1]``; a running saga has pushed every step up to its current
    one; a request out or a retry due names the current step (forward) or the stack's top
    (compensating)."""
    n = len(definition.steps)
    if s.phase not in _PHASES:
        return f"unknown phase {str(s.phase)[:20]!r}"
    if not _is_int(s.step) or not 0 <= s.step < n:
        return f"step {str(s.step)[:20]} is not one of the definition's {n} steps"
    for name in ("attempt", "timer", "recovery_attempts"):
        if not _is_int(getattr(s, name)) or getattr(s, name) < 0:
            return f"{name} {str(getattr(s, name))[:20]} is not a count"
    if not isinstance(s.stack, list) or s.stack != list(range(len(s.stack))):
        return f"compensation stack {str(s.stack)[:40]} is not the steps 0..k in order"
    if len(s.stack) > n:
        return f"compensation stack holds {len(s.stack)} steps, the definition has {n}"
    if s.phase == RUNNING and len(s.stack) != s.step + 1:
        return f"running at step {s.step} with {len(s.stack)} step(s) on the stack"
    if s.phase == COMPENSATED and s.stack:
        return "compensated with steps still on the compensation stack"
    if not isinstance(s.results, dict) or not all(isinstance(k, str) for k in s.results):
        return "step results are not a map of step names"
    if not isinstance(s.pivot_passed, bool) or (s.pivot_passed and definition.pivot is None):
        return "passed a pivot the definition does not have"
    if s.reason is not None and not isinstance(s.reason, str):
        return "reason is not text"
    if not isinstance(s.outstanding, list) or not all(isinstance(o, str) for o in s.outstanding):
        return "outstanding work is not a list of text"
    if sum(w is not None for w in (s.pending, s.waiting, s.held)) > 1:
        return "waits on more than one of a reply, a retry and a resume"
    for label, wait in (("request out", s.pending), ("retry due", s.waiting)):
        if wait is None:
            continue
        if s.phase not in (RUNNING, COMPENSATING):
            return f"a {label} in a finished saga"
        if not isinstance(wait, list) or len(wait) != 4:
            return f"{label} {str(wait)[:40]} is malformed"
        kind, step, attempt, due = wait
        expected = (DO, s.step) if s.phase == RUNNING else (UNDO, s.stack[-1] if s.stack else None)
        if [kind, step] != list(expected):
            return f"{label} for {str(kind)[:8]} step {str(step)[:20]} while {s.phase} at " + (
                f"step {s.step}" if s.phase == RUNNING else f"stack {s.stack}"
            )
        if not _is_int(attempt) or attempt < 1 or not isinstance(due, (int, float)):
            return f"{label} has a malformed attempt or deadline"
    return _check_operated(s, n)


def _check_operated(s: SagaState, n: int) -> str | None:
    """The part of :func:`check_state` about what operators' verbs add: a pause, a send held
    back by it, compensation debt and the phase a parked saga stopped in."""
    if s.paused is not None and (
        not isinstance(s.paused, list) or len(s.paused) != 3 or s.phase not in _ACTIVE
    ):
        return f"pause {str(s.paused)[:40]} is malformed or in a finished saga"
    if s.held is not None:
        if s.paused is None or not isinstance(s.held, list) or len(s.held) != 3:
            return f"send held back {str(s.held)[:40]} without a pause, or malformed"
        kind, step, attempt = s.held
        if s.phase == RUNNING:
            # A forward send held before its step was pushed (the next step) or after (a retry).
            fits = kind == DO and step in (s.step, s.step + 1) and _is_int(step) and step < n
        else:
            fits = kind == UNDO and bool(s.stack) and step == s.stack[-1]
        if not fits or not _is_int(attempt) or attempt < 1:
            return f"send held back {str(s.held)[:40]} does not fit {s.phase} at step {s.step}"
    if not isinstance(s.debt, list):
        return "debt is not a list"
    owed = set()
    for entry in s.debt:
        if not isinstance(entry, list) or len(entry) != 4 or not _is_int(entry[0]):
            return f"debt entry {str(entry)[:40]} is malformed"
        if not 0 <= entry[0] < n or entry[0] in s.stack or entry[0] in owed:
            return f"debt for step {entry[0]} that is not owed apart from the stack"
        owed.add(entry[0])
    if s.debt and s.phase not in (FAILED, COMPENSATING):
        return f"compensation debt in a {s.phase} saga"
    if s.stopped_in not in (None, RUNNING, COMPENSATING, OVERFLOW):
        return f"stopped in unknown phase {str(s.stopped_in)[:20]!r}"
    if s.cause is not None and not isinstance(s.cause, str):
        return "cause is not text"
    if s.failure is not None and (not isinstance(s.failure, list) or len(s.failure) != 3):
        return f"failure {str(s.failure)[:40]} is malformed"
    return None


class Saga(Instance[SagaState, SagaDefinition]):
    """One saga instance: its definition, payload, incarnation and :class:`SagaState`."""

    kind = "saga"
    state_class = SagaState
    label = "saga"
    later_fields = _LATER_FIELDS

    @staticmethod
    def problem(state: Any, definition: Any) -> str | None:
        return check_state(state, definition)

    # --- inputs -----------------------------------------------------------------------------

    def begin(self, now: float, parent: str | None = None) -> list[Command]:
        """Start a new saga at its first step (``parent``: the saga it is a child of)."""
        self._started(now, parent)
        return self._send_forward(0, 1, now)

    def resume(self, now: float) -> list[Command]:
        """Go on after a restart: resend what was outstanding with the same key, or compensate
        when the definition says so and the pivot has not passed."""
        s = self.state
        self._event(
            "resumed", now, detail={"phase": s.phase, "recovery_attempts": s.recovery_attempts}
        )
        if s.held is not None:
            return []  # paused by an operator: the held send goes when they resume it
        if (
            s.phase == RUNNING
            and self.definition.on_recovery == "compensate"
            and not s.pivot_passed
        ):
            pivot = self.definition.pivot
            in_doubt = (s.pending or s.waiting or [None, None])[:2]
            if pivot is not None and in_doubt == [DO, pivot]:
                # The crash left the pivot in doubt: it may have applied, and it cannot be
                # compensated, so compensating the steps before it could leave it standing.
                spec = self.definition.steps[pivot]
                return self._park(
                    f"interrupted by a crash while pivot step {spec.name!r} was in doubt; it "
                    f"cannot be compensated, so this saga does not recover by compensating; "
                    f"instead: {_instead(spec)}",
                    now,
                )
            return self._abort("interrupted by a crash; definition recovers by compensating", now)
        if s.pending is not None:
            kind, step, attempt, _deadline = s.pending
            return self._send(kind, step, attempt, now, resent=True)
        if s.waiting is not None:
            return [self._arm_timer(max(0.0, s.waiting[3] - now))]
        if s.phase == RUNNING:
            return self._send_forward(s.step, max(1, s.attempt), now)
        return self._compensate_next(now)

    def on_reply(self, reply: StepReply, now: float) -> list[Command] | None:
        """Apply a participant's reply; None when it is stale and changes nothing."""
        s = self.state
        if (
            s.pending is None
            or reply.incarnation != self.incarnation
            or [reply.kind, reply.step, reply.attempt] != s.pending[:3]
        ):
            return None
        kind, step, attempt, _deadline = s.pending
        if reply.outcome == ACCEPTED:
            # Taken, to be finished later: still waited on, under the same deadline.
            self._event("accepted", now, step, attempt, {"kind": kind})
            return []
        s.pending = None
        detail: dict[str, Any] = {"outcome": reply.outcome}
        if reply.reason:
            detail["reason"] = reply.reason
        if reply.replayed:
            detail["replayed"] = True
        name = self.definition.steps[step].name
        if reply.outcome == "ok":
            s.recovery_attempts = 0
            if kind == DO:
                self._event("done", now, step, attempt, detail)
                s.results[name] = reply.result
                if step == self.definition.pivot:
                    s.pivot_passed = True
                if step + 1 == len(self.definition.steps):
                    return self._finish(COMPLETED, None, (), now)
                return self._send_forward(step + 1, 1, now)
            self._event("compensated", now, step, attempt, detail)
            s.stack.pop()
            return self._compensate_next(now)
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
        if token != s.timer or self.terminal:
            return None
        if s.pending is not None:
            kind, step, attempt, deadline = s.pending
            if now + 1e-3 < deadline:  # a clock that moved back: wait out the rest
                return [self._arm_timer(deadline - now)]
            s.pending = None
            timeout = self.definition.steps[step].timeout
            self._event("timeout", now, step, attempt, {"kind": kind, "after": timeout})
            return self._failed(kind, step, attempt, False, f"no reply within {timeout} s", now)
        if s.waiting is not None:
            kind, step, attempt, _due = s.waiting
            s.waiting = None
            return self._send(kind, step, attempt, now)
        return None

    # --- transitions ------------------------------------------------------------------------

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
        definition, s = self.definition, self.state
        spec = definition.steps[step]
        policy = spec.retry if kind == DO else spec.compensation_retry
        # A business rejection is recorded under the key by the participant, so retrying it
        # would replay the same refusal; only errors and timeouts are retried.
        if not rejected and attempt < policy.attempts:
            delay = policy.delay(attempt)
            s.waiting = [kind, step, attempt + 1, now + delay]
            self._event("retry-scheduled", now, step, attempt + 1, {"kind": kind, "in": delay})
            return [self._arm_timer(delay)]
        if kind == DO:
            s.failure = [spec.name, reason, data]
        if kind == UNDO:
            # The compensation becomes debt: durable, listed by `understudy debt`, paid by a
            # retry or resolved by hand, never dropped. The steps before it stay on the stack:
            # they are compensated only after it (I5), so the saga parks here.
            s.stack.pop()
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
            return self._park(
                f"compensation {spec.compensation!r} of step {spec.name!r} failed after "
                f"{attempt} attempt(s): {reason}",
                now,
            )
        if s.pivot_passed:
            return self._park(
                f"step {spec.name!r} failed after the pivot "
                f"{definition.steps[definition.pivot or 0].name!r} ({attempt} attempt(s)): "
                f"{reason}; the saga recovers forward only, so finish this step by hand",
                now,
            )
        if step == definition.pivot and not rejected:
            return self._park(
                f"pivot step {spec.name!r} did not confirm after {attempt} attempt(s) ({reason}) "
                f"and cannot be compensated; instead: {_instead(spec)}",
                now,
            )
        return self._abort(
            f"step {spec.name!r} {'was rejected' if rejected else 'failed'}"
            f"{'' if rejected else f' after {attempt} attempt(s)'}: {reason}",
            now,
        )

    def _abort(self, reason: str, now: float) -> list[Command]:
        s = self.state
        s.phase = COMPENSATING
        s.reason = s.cause = reason
        s.pending = s.waiting = s.held = None
        self._event(
            "aborted",
            now,
            detail={"reason": reason, "to_compensate": [self._name(i) for i in reversed(s.stack)]},
        )
        return self._compensate_next(now)

    def _compensate_next(self, now: float) -> list[Command]:
        s = self.state
        while s.stack:
            index = s.stack[-1]
            spec = self.definition.steps[index]
            if spec.compensation is None:
                # Only an irreversible step that did not confirm reaches here; it was refused
                # or never applied, so there is nothing to undo, only to report.
                self._event(
                    "compensation-skipped",
                    now,
                    index,
                    detail={
                        "irreversible": True,
                        "instead": spec.irreversible.instead if spec.irreversible else None,
                    },
                )
                s.stack.pop()
                continue
            return self._send(UNDO, index, 1, now)
        if s.debt:
            # Never reported compensated while a compensation is owed: it stays parked, its
            # debt listed, until a retry pays it or an operator resolves it.
            return self._park(s.reason or "compensations are owed", now)
        return self._finish(COMPENSATED, s.cause or s.reason, (), now)

    def _park(self, reason: str, now: float) -> list[Command]:
        s = self.state
        if s.phase in _ACTIVE:
            s.stopped_in = s.phase
        return self._finish(FAILED, reason, tuple(self._outstanding()), now)

    def _outstanding(self) -> list[str]:
        """What a parked saga leaves for a person: compensations owed (debt first, then the
        stack in the order they are due), or the forward steps not finished."""
        s = self.state
        steps = self.definition.steps
        if s.stopped_in == RUNNING and not s.debt:
            return [
                f"finish step {self._name(i)!r} ({steps[i].action})"
                for i in range(s.step, len(steps))
            ]
        owed = [
            f"compensate step {self._name(e[0])!r} ({steps[e[0]].compensation}): owed, {e[1]}"
            for e in s.debt
        ]
        return owed + [
            f"compensate step {self._name(i)!r} ({steps[i].compensation})"
            for i in reversed(s.stack)
        ]

    def _finish(
        self, status: str, reason: str | None, outstanding: tuple[str, ...], now: float
    ) -> list[Command]:
        s = self.state
        s.phase = status
        s.reason = reason
        s.outstanding = list(outstanding)
        s.pending = s.waiting = s.held = s.paused = None
        detail: dict[str, Any] = {}
        if reason:
            detail["reason"] = reason
        if outstanding:
            detail["outstanding"] = list(outstanding)
        self._event(status, now, detail=detail)
        return [Finish(status, reason, outstanding, dict(s.results), failure_of(s.failure))]

    def _send_forward(self, step: int, attempt: int, now: float) -> list[Command]:
        s = self.state
        if s.paused is not None and step not in s.stack:
            # Held before the step is pushed: no intent, nothing to compensate for it (I4).
            return self._hold(DO, step, attempt, now)
        spec = self.definition.steps[step]
        if spec.inputs and step not in s.stack:
            try:
                request_data(spec, self.payload, s.results, None)
            except InputMissing as exc:
                # Nothing was sent (no intent, nothing to compensate for this step): the
                # definition asks for a value its earlier steps did not return, which no retry
                # changes, so it counts as a refusal.
                reason = f"its request cannot be built: {exc}"
                self._event(
                    "rejected", now, step, attempt, {"outcome": "rejected", "reason": reason}
                )
                return self._failed(DO, step, attempt, True, reason, now)
        s.step = step
        if step not in s.stack:
            s.stack.append(step)
        return self._send(DO, step, attempt, now)

    def _send(
        self, kind: str, step: int, attempt: int, now: float, resent: bool = False
    ) -> list[Command]:
        s = self.state
        if s.paused is not None:
            return self._hold(kind, step, attempt, now)
        spec = self.definition.steps[step]
        action = spec.action if kind == DO else spec.compensation
        assert action is not None
        key = idempotency_key(self.saga_id, step, kind)
        s.attempt = attempt
        s.pending = [kind, step, attempt, now + spec.timeout]
        self._event(
            "intent" if kind == DO else "compensation-intent",
            now,
            step,
            attempt,
            {
                "name": spec.name,
                "key": key,
                "participant": spec.participant,
                "action": action,
                **self._child_of(spec),
                **({"resent": True} if resent else {}),
            },
        )
        return [self._request(kind, step, attempt), self._arm_timer(spec.timeout)]

    def _hold(self, kind: str, step: int, attempt: int, now: float) -> list[Command]:
        """Paused: keep the send for when an operator resumes the saga, and send nothing."""
        s = self.state
        s.pending = s.waiting = None
        s.held = [kind, step, attempt]
        who = s.paused[0] if s.paused is not None else None
        self._event("held", now, step, attempt, {"kind": kind, "paused_by": who})
        return []

    def sends(self) -> list[Send]:
        """Every request this saga waits on (one at most), as :meth:`outstanding`."""
        send = self.outstanding()
        return [] if send is None else [send]

    def waits_on(self, request: StepRequest) -> bool:
        """Whether this incarnation still waits on exactly ``request``."""
        pending = self.state.pending
        return (
            request.incarnation == self.incarnation
            and pending is not None
            and pending[:3] == [request.kind, request.step, request.attempt]
        )

    def rearm(self, step: int) -> Timer:
        """A new reply timer for the request it waits on, sent again now (the running timer's
        token goes stale)."""
        self.state.timer += 1
        return Timer(self.definition.steps[step].timeout, self.state.timer)

    def outstanding(self) -> Send | None:
        """The request this saga waits on, rebuilt identically (same key, attempt and
        incarnation): re-sending it is safe, and needs no new intent."""
        if self.state.pending is None:
            return None
        kind, step, attempt, _deadline = self.state.pending
        return self._request(kind, step, attempt)

    def _arm_timer(self, delay: float) -> Timer:
        self.state.timer += 1
        return Timer(delay, self.state.timer)


def _instead(step: Step) -> str:
    return step.irreversible.instead if step.irreversible is not None else "-"
