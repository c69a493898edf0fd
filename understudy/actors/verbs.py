"""Operators' verbs as inputs of the saga state machine: cancel, pause, resume, retry, skip,
resolve and abandon.

Like every other input of :class:`~understudy.actors.saga.Saga`, a verb changes the state, adds
timeline events and returns commands; the saga host (or, with no runtime running, the
operator's own process) commits the result together with the command's
:class:`~understudy.persistence.base.CommandDone`, so a verb is applied exactly once, and only
then carries out the commands (write-ahead, I3). A verb that would break an invariant raises
:class:`~understudy.errors.VerbRefused` before changing anything, saying why and what instead.

What each verb keeps:
- ``cancel`` compensates everything that may have run, in reverse order (I4, I5): never skipped.
  Refused once an irreversible step has run (the saga recovers forward only).
- ``pause`` sends nothing new: a request already out is still answered and recorded, the next
  send is held (``held``) until ``resume``. A held forward step is not pushed on the stack, so
  nothing is compensated for a step that never had an intent (I4).
- ``retry`` sends a backed-off request now, or takes a parked saga up again where it stopped:
  forward at its step, or compensating with its debt back on the stack.
- ``skip`` gives the current forward step a result by hand; refused while a request for it is
  out (it could still apply: one effect per key, I6).
- ``resolve`` marks one owed compensation done by hand; only the next one due (I5).
- ``abandon`` stops the saga and records every outstanding compensation as debt (never dropped).

One more verb is understudy's own, never an operator's: ``unwind`` compensates a child saga
(:meth:`understudy.Step.child`) because its parent compensates the step that ran it. A running
child is cancelled; a completed one is taken up again and compensated in reverse (its
transition is written with ``unwind``, which the store allows from completed only); one already
compensating goes on; a parked one is refused (a person resolves it first). Applied to a child
that was never started, it records it as compensated, so that a late start finds it finished.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from understudy.actors.workflow import Workflow
from understudy.errors import VerbRefused
from understudy.persistence.base import (
    COMPENSATED,
    COMPENSATING,
    COMPLETED,
    FAILED,
    REFUSED,
    RUNNING,
    TERMINAL_STATUSES,
    CommandDone,
    CommandRecord,
    Event,
)

if TYPE_CHECKING:
    from understudy.actors.machines import Machine
    from understudy.actors.saga import Command, Saga

VERBS: Final = ("cancel", "pause", "resume", "retry", "skip", "resolve", "abandon")
#: A parent compensating the child saga one of its steps ran (see the module docstring).
UNWIND: Final = "unwind"
#: The arguments each verb takes beyond who and why (all optional unless named here).
VERB_ARGS: Final[dict[str, tuple[str, ...]]] = {
    "cancel": (),
    "pause": (),
    "resume": (),
    "retry": (),
    "skip": ("step", "result"),
    "resolve": ("step",),
    "abandon": (),
    UNWIND: ("parent", "step", "definition", "version"),
}


def operate(
    saga: Machine, verb: str, args: dict[str, Any], who: str, why: str, command: int, now: float
) -> list[Command]:
    """Apply ``verb`` to ``saga``: the commands to carry out once it is durable. Raises
    :class:`VerbRefused` (and changes nothing) when the verb does not apply."""
    if verb not in VERBS and verb != UNWIND:
        raise VerbRefused(f"unknown verb {verb!r}; the verbs are {', '.join(VERBS)}")
    from understudy.actors import workflow_verbs  # it builds on this module's refusals

    if verb == UNWIND:
        _check_unwind(saga, args)
    elif isinstance(saga, Workflow):
        workflow_verbs.check(saga, verb, args)
    else:
        _CHECKS[verb](saga, args)
    s = saga.state
    detail: dict[str, Any] = {"verb": verb, "who": who, "why": why, "command": command}
    detail.update({k: v for k, v in args.items() if k in VERB_ARGS[verb]})
    saga._event("operator", now, detail=detail)
    if s.phase == FAILED:
        # Taken up again by a person: its restarts start counting afresh (I11).
        s.recovery_attempts = 0
    if verb == UNWIND:
        return _unwind(saga, args, now)
    if isinstance(saga, Workflow):
        return workflow_verbs.apply(saga, verb, args, who, why, now)
    return _APPLY[verb](saga, args, who, why, now)


def refusal(
    command: CommandRecord, incarnation: int | None, reason: str, now: float
) -> CommandDone:
    """The write that refuses ``command`` for ``reason``: the command marked refused, and an
    ``operator-refused`` event (who, why, the reason) in its saga's timeline."""
    detail = {
        "verb": command.verb,
        "who": command.who,
        "why": command.why,
        "command": command.id,
        "refused": reason,
    }
    return CommandDone(
        command.id,
        command.saga_id,
        incarnation,
        REFUSED,
        reason,
        now,
        (Event("operator-refused", now, detail=detail),),
    )


# --- refusals: each says why, and what to do instead ------------------------------------------


def _where(saga: Machine) -> str:
    s = saga.state
    if s.phase == FAILED:
        return f"is parked (failed: {s.reason or 'no reason recorded'})"
    return f"is {s.phase}"


def _refuse(saga: Machine, verb: str, why: str) -> VerbRefused:
    return VerbRefused(f"cannot {verb} saga {saga.saga_id!r}: it {_where(saga)}; {why}")


def _finished(saga: Machine, verb: str) -> None:
    s = saga.state
    if s.phase in TERMINAL_STATUSES and s.phase != FAILED:
        raise VerbRefused(
            f"cannot {verb} saga {saga.saga_id!r}: it is {s.phase}, and a finished saga is "
            "never changed"
        )


def _forward_only(saga: Saga, verb: str) -> None:
    s = saga.state
    if s.pivot_passed:
        pivot = saga.definition.steps[saga.definition.pivot or 0].name
        raise _refuse(
            saga,
            verb,
            f"its irreversible step {pivot!r} has run, so it can only go forward: retry or "
            "skip the step it stopped at, or abandon it",
        )


def _stopped_in(saga: Machine) -> str | None:
    """The phase a saga is in, or stopped in when parked."""
    s = saga.state
    return s.stopped_in if s.phase == FAILED else s.phase


def _check_cancel(saga: Saga, args: dict[str, Any]) -> None:
    _finished(saga, "cancel")
    if _stopped_in(saga) != RUNNING:
        raise _refuse(
            saga,
            "cancel",
            "it is already compensating"
            + (
                ": retry it, resolve what it owes, or abandon it"
                if saga.state.phase == FAILED
                else ""
            ),
        )
    _forward_only(saga, "cancel")


def _check_unwind(saga: Machine, args: dict[str, Any]) -> None:
    expected = (args.get("definition"), args.get("version"))
    if expected != saga.definition.key:
        raise _refuse(
            saga,
            UNWIND,
            f"it is {saga.definition.name!r} v{saga.definition.version}, not the child "
            f"{expected[0]!r} v{expected[1]} of saga {args.get('parent')!r}",
        )
    if saga.state.phase == COMPENSATED:
        _finished(saga, UNWIND)
    if saga.state.phase == FAILED:
        raise _refuse(
            saga,
            UNWIND,
            "its parent's compensation waits until an operator retries, resolves or abandons it",
        )
    if isinstance(saga, Workflow):
        from understudy.actors import workflow_verbs

        workflow_verbs.forward_only(saga, UNWIND)
    else:
        _forward_only(saga, UNWIND)


def _unwind(saga: Machine, args: dict[str, Any], now: float) -> list[Command]:
    s = saga.state
    if s.phase == COMPENSATING:
        return []  # compensating already (cancelled, or a step failed): it goes on
    s.paused = None  # the parent's compensation does not wait for a pause
    return saga._abort(
        f"its parent saga {args.get('parent')!r} compensates step {args.get('step')!r}", now
    )


def _check_pause(saga: Saga, args: dict[str, Any]) -> None:
    _finished(saga, "pause")
    s = saga.state
    if s.phase == FAILED:
        raise _refuse(saga, "pause", "a parked saga sends nothing anyway")
    if s.paused is not None:
        raise _refuse(saga, "pause", f"it was paused already by {s.paused[0]} ({s.paused[1]})")


def _check_resume(saga: Saga, args: dict[str, Any]) -> None:
    _finished(saga, "resume")
    if saga.state.paused is None:
        raise _refuse(
            saga,
            "resume",
            "it is not paused"
            + ("; retry takes a parked saga up again" if saga.state.phase == FAILED else ""),
        )


def _check_retry(saga: Saga, args: dict[str, Any]) -> None:
    _finished(saga, "retry")
    s = saga.state
    if s.phase == FAILED:
        if s.stopped_in is None:
            raise _refuse(
                saga,
                "retry",
                "its state cannot be taken up again (it parked before "
                "understudy recorded where it stopped, or its stored state was "
                "unreadable); finish it by hand",
            )
        if s.stopped_in == "overflow":
            raise _refuse(
                saga,
                "retry",
                "its step results outgrew the snapshot cap and were "
                "dropped, so its later steps cannot run; finish it by hand",
            )
        if s.stopped_in == COMPENSATING and not s.debt and not s.stack:
            raise _refuse(saga, "retry", "it owes no compensation: nothing is left to retry")
        return
    if s.paused is not None:
        raise _refuse(saga, "retry", f"it is paused by {s.paused[0]}: resume it")
    if s.waiting is None:
        what = (
            f"a request for step {saga._name(s.pending[1])!r} is out and is answered or "
            "times out on its own"
            if s.pending is not None
            else "nothing waits for a retry"
        )
        raise _refuse(saga, "retry", what)


def _step_arg(saga: Machine, verb: str, args: dict[str, Any]) -> int:
    """The step named by ``args['step']`` (its name or index)."""
    wanted = args.get("step")
    steps = saga.definition.steps
    for index, step in enumerate(steps):
        if wanted in (step.name, index) and not isinstance(wanted, bool):
            return index
    names = ", ".join(step.name for step in steps)
    raise VerbRefused(
        f"cannot {verb} saga {saga.saga_id!r}: its definition {saga.definition.name!r} has no "
        f"step {wanted!r}; its steps are {names}"
    )


def _check_skip(saga: Saga, args: dict[str, Any]) -> None:
    _finished(saga, "skip")
    s = saga.state
    step = _step_arg(saga, "skip", args)
    if _stopped_in(saga) != RUNNING:
        raise _refuse(
            saga,
            "skip",
            "skip gives a forward step a result; this saga is "
            "compensating: resolve its compensations instead",
        )
    current = s.held[1] if s.held is not None else s.step
    if step != current:
        raise _refuse(
            saga,
            "skip",
            f"the step it is at is {saga._name(current)!r}, not "
            f"{saga._name(step)!r}: only the current step can be skipped",
        )
    if s.pending is not None:
        raise _refuse(
            saga,
            "skip",
            f"a request for step {saga._name(step)!r} is out and could "
            "still apply: pause the saga and wait for its reply or timeout, then skip",
        )


def _check_resolve(saga: Saga, args: dict[str, Any]) -> None:
    _finished(saga, "resolve")
    s = saga.state
    step = _step_arg(saga, "resolve", args)
    name = saga._name(step)
    if any(entry[0] == step for entry in s.debt):
        return
    # The stack's top is due only once nothing later is owed (I5: reverse order).
    due = s.stack[-1] if s.stack and not s.debt and _stopped_in(saga) == COMPENSATING else None
    if step != due:
        owed = [saga._name(e[0]) for e in s.debt] + ([saga._name(due)] if due is not None else [])
        raise _refuse(
            saga,
            "resolve",
            f"step {name!r} owes no compensation that is due "
            f"(owed now: {', '.join(owed) or 'none'}; compensations are resolved in "
            "reverse order)",
        )
    if s.pending is not None:
        raise _refuse(
            saga,
            "resolve",
            f"a compensation request for step {name!r} is out and "
            "could still apply: pause the saga and wait for its reply or timeout",
        )


def _check_abandon(saga: Saga, args: dict[str, Any]) -> None:
    _finished(saga, "abandon")
    s = saga.state
    if s.phase == FAILED and (_stopped_in(saga) != RUNNING and not s.stack):
        raise _refuse(
            saga,
            "abandon",
            "it is parked with nothing left to compensate"
            + (": its debt is listed already (understudy debt)" if s.debt else ""),
        )
    if _stopped_in(saga) == RUNNING:
        _forward_only(saga, "abandon")


# --- what each verb does ----------------------------------------------------------------------


def _cancel(saga: Saga, args: dict[str, Any], who: str, why: str, now: float) -> list[Command]:
    s = saga.state
    s.paused = None  # cancelling a paused saga sends its compensations
    s.phase, s.stopped_in, s.outstanding = RUNNING, None, []
    return saga._abort(f"cancelled by {who}: {why}", now)


def _pause(saga: Saga, args: dict[str, Any], who: str, why: str, now: float) -> list[Command]:
    saga.state.paused = [who, why, now]
    return []


def _resume(saga: Saga, args: dict[str, Any], who: str, why: str, now: float) -> list[Command]:
    s = saga.state
    s.paused = None
    held, s.held = s.held, None
    if held is None:
        return []
    kind, step, attempt = held
    if kind == "do":
        return saga._send_forward(step, attempt, now)
    return saga._send(kind, step, attempt, now)


def _retry(saga: Saga, args: dict[str, Any], who: str, why: str, now: float) -> list[Command]:
    s = saga.state
    if s.phase != FAILED:
        assert s.waiting is not None
        kind, step, attempt, _due = s.waiting
        s.waiting = None
        return saga._send(kind, step, attempt, now)
    stopped, s.stopped_in = s.stopped_in, None
    s.reason, s.outstanding = None, []
    if stopped == RUNNING and not s.debt:
        s.phase = RUNNING
        return saga._send_forward(s.step, s.attempt + 1, now)
    # Compensating again: what it owes goes back on the stack, to be paid in order.
    s.phase = COMPENSATING
    for entry in sorted(s.debt, key=lambda e: e[0]):
        s.stack.append(entry[0])
        saga._event("debt-retried", now, entry[0], detail={"who": who})
    s.debt = []
    s.stack.sort()
    return saga._compensate_next(now)


def _skip(saga: Saga, args: dict[str, Any], who: str, why: str, now: float) -> list[Command]:
    s = saga.state
    step = _step_arg(saga, "skip", args)
    s.waiting = s.held = None
    s.phase, s.stopped_in, s.reason, s.outstanding = RUNNING, None, None, []
    s.step = step
    if step not in s.stack:
        s.stack.append(step)  # as if its intent had been recorded: it is compensated on abort
    name = saga._name(step)
    s.results[name] = args.get("result")
    saga._event("skipped", now, step, detail={"name": name, "who": who})
    if step == saga.definition.pivot:
        s.pivot_passed = True
    if step + 1 == len(saga.definition.steps):
        return saga._finish(COMPLETED, None, (), now)
    return saga._send_forward(step + 1, 1, now)


def _resolve(saga: Saga, args: dict[str, Any], who: str, why: str, now: float) -> list[Command]:
    s = saga.state
    step = _step_arg(saga, "resolve", args)
    detail = {"name": saga._name(step), "who": who, "note": why}
    if any(entry[0] == step for entry in s.debt):
        s.debt = [entry for entry in s.debt if entry[0] != step]
        saga._event("debt-settled", now, step, detail=detail)
    else:
        s.stack.pop()
        s.waiting = s.held = None
        saga._event("resolved", now, step, detail=detail)
    if s.debt:
        return saga._park(s.reason or "compensations are owed", now)
    if s.phase == FAILED:
        s.phase, s.stopped_in, s.outstanding = COMPENSATING, None, []
    return saga._compensate_next(now)


def _abandon(saga: Saga, args: dict[str, Any], who: str, why: str, now: float) -> list[Command]:
    s = saga.state
    steps = saga.definition.steps
    reason = f"abandoned by {who}: {why}"
    unknown: list[str] = []
    for index in reversed(s.stack):
        spec = steps[index]
        if spec.compensation is None:
            # An irreversible step (a pivot) on the stack did not confirm: it owes no
            # compensation, but it may have run, and a person must find out.
            instead = spec.irreversible.instead if spec.irreversible else "-"
            unknown.append(f"check step {spec.name!r}: irreversible, it may have run; {instead}")
            continue
        error = reason
        s.debt.append([index, error, 0, now])
        saga._event(
            "debt",
            now,
            index,
            detail={
                "name": steps[index].name,
                "participant": steps[index].participant,
                "compensation": steps[index].compensation,
                "error": error,
                "attempts": 0,
            },
        )
    # Always parked, never "compensated": nothing was compensated, and what is owed is listed.
    s.stopped_in = COMPENSATING
    s.stack = []
    return saga._finish(FAILED, reason, (*saga._outstanding(), *unknown), now)


_CHECKS = {
    "cancel": _check_cancel,
    "pause": _check_pause,
    "resume": _check_resume,
    "retry": _check_retry,
    "skip": _check_skip,
    "resolve": _check_resolve,
    "abandon": _check_abandon,
}
_APPLY = {
    "cancel": _cancel,
    "pause": _pause,
    "resume": _resume,
    "retry": _retry,
    "skip": _skip,
    "resolve": _resolve,
    "abandon": _abandon,
}
