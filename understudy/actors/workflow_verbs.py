"""Operators' verbs applied to a workflow (:mod:`understudy.actors.workflow`): the same seven
verbs, and the same promises, as for a saga (:mod:`understudy.actors.verbs`), where a workflow
may wait on several steps at once.

- ``cancel`` compensates every step with an intent, following the graph in reverse; refused
  once an irreversible step has started.
- ``pause`` holds every new send (a step becoming ready, a retry, a compensation); requests out
  are still answered. ``resume`` sends what was held.
- ``retry`` sends the retries that are due now, or takes a parked workflow up again: its
  stopped steps are tried again (a new attempt, the same key), or its debt goes back to be
  compensated in graph order.
- ``skip`` gives one forward step that is due (its dependencies done, no request of it out) a
  result by hand; ``resolve`` marks one owed compensation done by hand, only one that is due
  (every step depending on it compensated); ``abandon`` records every compensation outstanding
  as debt.
"""

from __future__ import annotations

from typing import Any

from understudy.actors.saga import Command
from understudy.actors.verbs import _finished, _refuse, _step_arg, _stopped_in
from understudy.actors.workflow import (
    DO,
    DONE,
    DUE,
    HELD,
    OUT,
    OWED,
    SKIPPED,
    STOPPED,
    TODO,
    UNDO,
    UNDONE,
    Workflow,
)
from understudy.persistence.base import COMPENSATING, COMPLETED, FAILED, RUNNING


def check(saga: Workflow, verb: str, args: dict[str, Any]) -> None:
    """Raise :class:`~understudy.errors.VerbRefused` when ``verb`` does not apply."""
    _CHECKS[verb](saga, args)


def apply(
    saga: Workflow, verb: str, args: dict[str, Any], who: str, why: str, now: float
) -> list[Command]:
    return _APPLY[verb](saga, args, who, why, now)


# --- refusals ---------------------------------------------------------------------------------


def forward_only(saga: Workflow, verb: str) -> None:
    started = saga._irreversible_started()
    if started:
        raise _refuse(
            saga,
            verb,
            f"its irreversible step {saga._name(started[0])!r} has started, so it can only go "
            "forward: retry or skip the steps it stopped at"
            # Not "or abandon it" when the verb refused is abandon itself (it is refused for
            # the same reason: abandoning owes compensations, which go backward).
            + ("" if verb == "abandon" else ", or abandon it"),
        )


def _entries(saga: Workflow, *statuses: str) -> list[int]:
    return [i for i, e in enumerate(saga.state.track) if e is not None and e[0] in statuses]


def _check_cancel(saga: Workflow, args: dict[str, Any]) -> None:
    _finished(saga, "cancel")
    if _stopped_in(saga) != RUNNING:
        # What instead, as the saga's refusal says (a refusal says why and what instead).
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
    forward_only(saga, "cancel")


def _check_pause(saga: Workflow, args: dict[str, Any]) -> None:
    _finished(saga, "pause")
    s = saga.state
    if s.phase == FAILED:
        raise _refuse(saga, "pause", "a parked workflow sends nothing anyway")
    if s.paused is not None:
        raise _refuse(saga, "pause", f"it was paused already by {s.paused[0]} ({s.paused[1]})")


def _check_resume(saga: Workflow, args: dict[str, Any]) -> None:
    _finished(saga, "resume")
    if saga.state.paused is None:
        raise _refuse(
            saga,
            "resume",
            "it is not paused"
            # What instead, as the saga's refusal says.
            + ("; retry takes a parked workflow up again" if saga.state.phase == FAILED else ""),
        )


def _check_retry(saga: Workflow, args: dict[str, Any]) -> None:
    _finished(saga, "retry")
    s = saga.state
    if s.phase == FAILED:
        if s.stopped_in is None:
            raise _refuse(saga, "retry", "its state cannot be taken up again; finish it by hand")
        if s.stopped_in == "overflow":
            raise _refuse(
                saga,
                "retry",
                "its step results outgrew the snapshot cap and were dropped, so its later "
                "steps cannot run; finish it by hand",
            )
        if s.stopped_in == COMPENSATING and not s.debt and not _entries(saga, TODO, OUT, DUE, HELD):
            raise _refuse(saga, "retry", "it owes no compensation: nothing is left to retry")
        return
    if s.paused is not None:
        raise _refuse(saga, "retry", f"it is paused by {s.paused[0]}: resume it")
    if not _entries(saga, DUE):
        raise _refuse(
            saga,
            "retry",
            "nothing waits for a retry (requests out are answered or time out on their own)",
        )


def _check_skip(saga: Workflow, args: dict[str, Any]) -> None:
    _finished(saga, "skip")
    step = _step_arg(saga, "skip", args)
    name = saga._name(step)
    if _stopped_in(saga) != RUNNING:
        raise _refuse(
            saga,
            "skip",
            "skip gives a forward step a result; this workflow is compensating: resolve its "
            "compensations instead",
        )
    s = saga.state
    entry = s.track[step]
    if entry is not None and entry[0] == DONE:
        raise _refuse(saga, "skip", f"step {name!r} is done already")
    pending = [saga._name(d) for d in saga.definition.dependencies[step] if not _done(saga, d)]
    if pending:
        raise _refuse(
            saga,
            "skip",
            f"step {name!r} is not due: it waits for {', '.join(pending)}",
        )
    if entry is not None and entry[0] == OUT:
        raise _refuse(
            saga,
            "skip",
            f"a request for step {name!r} is out and could still apply: "
            # A parked workflow cannot be paused, and waits for no reply: a retry sends the
            # request again, and its reply or timeout settles the step.
            + (
                "retry the workflow and wait for its reply or timeout, then skip"
                if s.phase == FAILED
                else "pause the workflow and wait for its reply or timeout, then skip"
            ),
        )


def _check_resolve(saga: Workflow, args: dict[str, Any]) -> None:
    _finished(saga, "resolve")
    step = _step_arg(saga, "resolve", args)
    name = saga._name(step)
    s = saga.state
    entry = s.track[step]
    if entry is not None and entry[0] == OWED:
        return
    compensating = _stopped_in(saga) == COMPENSATING
    if compensating and entry is not None and entry[:2] == [OUT, UNDO]:
        # Its own refusal: "owes no compensation that is due" would be wrong (it is due, and
        # out), and resolving it could double the compensation the request may still apply.
        raise _refuse(
            saga,
            "resolve",
            f"a compensation request for step {name!r} is out and could still apply: "
            + (
                "retry the workflow and wait for its reply or timeout"
                if s.phase == FAILED
                else "pause the workflow and wait for its reply or timeout"
            ),
        )
    due = compensating and entry is not None and entry[0] in (TODO, DUE, HELD)
    if not due or not _dependents_settled(saga, step):
        # Only compensations are owed: a forward request out (kind do) is not (it listed
        # running workflows' forward steps as "owed now").
        owed = [saga._name(e[0]) for e in s.debt] + [
            saga._name(i)
            for i in _entries(saga, TODO, DUE, HELD, OUT)
            if s.track[i][1] == UNDO and _dependents_settled(saga, i)
        ]
        raise _refuse(
            saga,
            "resolve",
            f"step {name!r} owes no compensation that is due (owed now: "
            f"{', '.join(owed) or 'none'}; a step is compensated only after every step that "
            "depends on it)",
        )


def _check_abandon(saga: Workflow, args: dict[str, Any]) -> None:
    _finished(saga, "abandon")
    s = saga.state
    if _stopped_in(saga) == RUNNING:
        forward_only(saga, "abandon")
        return
    if s.phase == FAILED and not _entries(saga, TODO, OUT, DUE, HELD):
        raise _refuse(
            saga,
            "abandon",
            "it is parked with nothing left to compensate"
            + (": its debt is listed already (understudy debt)" if s.debt else ""),
        )


def _done(saga: Workflow, step: int) -> bool:
    entry = saga.state.track[step]
    return entry is not None and entry[0] == DONE


def _dependents_settled(saga: Workflow, step: int) -> bool:
    track = saga.state.track
    return all(
        track[j] is None or track[j][0] in (UNDONE, SKIPPED)
        for j in saga.definition.dependents[step]
    )


# --- what each verb does ----------------------------------------------------------------------


def _reopen(saga: Workflow, phase: str, now: float) -> list[Command]:
    """Take a parked workflow up again in ``phase``: what it was waiting on when it parked is
    sent again (a new attempt under the same key)."""
    s = saga.state
    commands: list[Command] = []
    if s.phase == FAILED:
        s.phase, s.stopped_in, s.reason, s.outstanding = phase, None, None, []
        for i, entry in enumerate(s.track):
            if entry is None or entry[0] not in (OUT, DUE, HELD):
                continue
            if entry[1] == DO and i not in s.started:
                s.track[i] = None  # held before its intent: it starts afresh when due
                continue
            # A new attempt only for a request that was out: a retry due (DUE) or held (HELD)
            # records the attempt not sent yet (it sent DUE's attempt + 1, skipping one).
            commands += saga._send(entry[1], i, entry[2] + (entry[0] == OUT), now)
    return commands


def _cancel(saga: Workflow, args: dict[str, Any], who: str, why: str, now: float) -> list[Command]:
    s = saga.state
    s.paused = None  # cancelling a paused workflow sends its compensations
    s.phase, s.stopped_in, s.outstanding = RUNNING, None, []
    return saga._abort(f"cancelled by {who}: {why}", now)


def _pause(saga: Workflow, args: dict[str, Any], who: str, why: str, now: float) -> list[Command]:
    saga.state.paused = [who, why, now]
    return []


def _resume(saga: Workflow, args: dict[str, Any], who: str, why: str, now: float) -> list[Command]:
    s = saga.state
    s.paused = None
    commands: list[Command] = []
    for i in _entries(saga, HELD):
        _status, kind, attempt, _at, _token = s.track[i]
        if kind == DO and i not in s.started:
            s.track[i] = None
            launched = saga._launch(i, now)
            if s.phase != RUNNING:
                return launched
            commands += launched
        else:
            commands += saga._send(kind, i, attempt, now)
    if s.phase == RUNNING:
        return saga._go_on(commands, now)  # not commands + _advance: see _go_on
    return commands + saga._compensate_ready(now)


def _retry(saga: Workflow, args: dict[str, Any], who: str, why: str, now: float) -> list[Command]:
    s = saga.state
    if s.phase != FAILED:
        commands: list[Command] = []
        for i in _entries(saga, DUE):
            _status, kind, attempt, _at, _token = s.track[i]
            commands += saga._send(kind, i, attempt, now)
        return commands
    if s.stopped_in == RUNNING and not s.debt:
        commands = _reopen(saga, RUNNING, now)
        for i in _entries(saga, STOPPED):
            attempt = s.track[i][2]
            if i in s.started:
                commands += saga._send(DO, i, attempt + 1, now)
            else:  # its request could not be built: build it again
                s.track[i] = None
        return saga._go_on(commands, now)  # not commands + _advance: see _go_on
    commands = _reopen(saga, COMPENSATING, now)
    for entry in sorted(s.debt, key=lambda e: e[0]):
        s.track[entry[0]] = [TODO, UNDO, 0, 0, 0]
        saga._event("debt-retried", now, entry[0], detail={"who": who})
    s.debt = []
    return commands + saga._compensate_ready(now)


def _skip(saga: Workflow, args: dict[str, Any], who: str, why: str, now: float) -> list[Command]:
    s = saga.state
    step = _step_arg(saga, "skip", args)
    if step not in s.started:
        s.started.append(step)  # as if its intent had been recorded: compensated on abort
    name = saga._name(step)
    # Done before taking a parked workflow up again: _reopen sends again what it waited on,
    # and a retry of this step due or held when it parked would go out for a step done by hand.
    s.track[step] = [DONE, DO, max(1, (s.track[step] or [0, 0, 1])[2]), None, 0]
    commands = _reopen(saga, RUNNING, now)
    s.results[name] = args.get("result")
    saga._event("skipped", now, step, detail={"name": name, "who": who})
    if all(e is not None and e[0] == DONE for e in s.track):
        return saga._finish(COMPLETED, None, (), now)
    # Not commands + _advance (see _go_on). With another step stopped and nothing else to
    # move, _advance parks it again (it ran on, waiting on nothing, for ever).
    return saga._go_on(commands, now)


def _resolve(saga: Workflow, args: dict[str, Any], who: str, why: str, now: float) -> list[Command]:
    s = saga.state
    step = _step_arg(saga, "resolve", args)
    detail = {"name": saga._name(step), "who": who, "note": why}
    if s.track[step][0] == OWED:
        s.debt = [entry for entry in s.debt if entry[0] != step]
        saga._event("debt-settled", now, step, detail=detail)
    else:
        saga._event("resolved", now, step, detail=detail)
    s.track[step] = [UNDONE, UNDO, 0, None, 0]
    commands = _reopen(saga, COMPENSATING, now)
    return commands + saga._compensate_ready(now)


def _abandon(saga: Workflow, args: dict[str, Any], who: str, why: str, now: float) -> list[Command]:
    s = saga.state
    steps = saga.definition.steps
    reason = f"abandoned by {who}: {why}"
    unknown: list[str] = []
    for index in reversed(s.started):
        entry = s.track[index]
        if entry[0] in (UNDONE, SKIPPED, OWED):
            continue
        spec = steps[index]
        if spec.compensation is None:
            if entry[1] == UNDO:  # refused: it did not run, nothing to check
                s.track[index] = [SKIPPED, UNDO, 0, None, 0]
                continue
            instead = spec.irreversible.instead if spec.irreversible else "-"
            unknown.append(f"check step {spec.name!r}: irreversible, it may have run; {instead}")
            continue
        s.track[index] = [OWED, UNDO, 0, None, 0]
        s.debt.append([index, reason, 0, now])
        saga._event(
            "debt",
            now,
            index,
            detail={
                "name": spec.name,
                "participant": spec.participant,
                "compensation": spec.compensation,
                "error": reason,
                "attempts": 0,
            },
        )
    for i, entry in enumerate(s.track):
        if entry is not None and entry[1] == DO and i not in s.started:
            s.track[i] = None
    s.stopped_in = COMPENSATING
    s.phase = COMPENSATING
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
