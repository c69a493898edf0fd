"""Deliberately broken saga hosts: the harness must catch each of them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from understudy.actors import verbs
from understudy.actors.saga import Saga, Send
from understudy.actors.workflow import Workflow
from understudy.definitions import WorkflowDefinition
from understudy.persistence.base import CommandDone, CommandRecord, NewSaga
from understudy.supervisors.host import SagaHost


class SendsBeforeCommit(SagaHost):
    """Broken on purpose: sends each batch's requests before committing its intents and
    snapshots (write-ahead turned around). Nothing goes wrong until a crash or a store error
    lands between the send and the commit."""

    def receiveMsg_Flush(self, msg: Any, sender: Any) -> None:
        for staged in self.batch:
            sends = [c for c in staged.commands if isinstance(c, Send)]
            if sends and staged.saga is not None:
                self._carry_out(staged.saga, sends, [])
                staged.commands = [c for c in staged.commands if not isinstance(c, Send)]
        self._send_outbox()  # out the door now, before the commit below
        super().receiveMsg_Flush(msg, sender)


class _BreaksAVerb(SagaHost):
    """Broken on purpose: applies operators' verbs with some of the verb functions of
    :mod:`understudy.actors.verbs` replaced by ``broken`` (verb -> function), for the time it
    applies one; every other input runs as written."""

    broken: ClassVar[dict[str, Callable[..., list[Any]]]] = {}

    def _apply_command(self, command: CommandRecord) -> None:
        real = dict(verbs._APPLY)
        verbs._APPLY.update(self.broken)
        try:
            super()._apply_command(command)
        finally:
            verbs._APPLY.update(real)


def _cancel_dropping_the_stack(saga: Saga, *args: Any) -> list[Any]:
    saga.state.stack.clear()  # the bug: nothing is left to compensate
    return _REAL_CANCEL(saga, *args)


def _resolve_dropping_every_debt(saga: Saga, args: dict[str, Any], *rest: Any) -> list[Any]:
    # The bug: the other debts go with the one settled, and no event says so.
    step = verbs._step_arg(saga, "resolve", args)
    saga.state.debt = [entry for entry in saga.state.debt if entry[0] == step]
    return _REAL_RESOLVE(saga, args, *rest)


def _pause_that_holds_nothing(saga: Saga, *args: Any) -> list[Any]:
    return []  # the bug: recorded as applied, but the saga is not paused and sends on


def _skip_losing_the_result(saga: Saga, args: dict[str, Any], *rest: Any) -> list[Any]:
    return _REAL_SKIP(saga, {**args, "result": None}, *rest)  # the bug: the result given is lost


_REAL_CANCEL = verbs._APPLY["cancel"]
_REAL_RESOLVE = verbs._APPLY["resolve"]
_REAL_SKIP = verbs._APPLY["skip"]


class CancelDropsCompensations(_BreaksAVerb):
    """A cancel that drops the compensation stack: the saga ends compensated with nothing
    compensated."""

    broken: ClassVar[dict[str, Callable[..., list[Any]]]] = {"cancel": _cancel_dropping_the_stack}


class ResolveDropsDebt(_BreaksAVerb):
    """A resolve that settles every debt of the saga while recording only the one named."""

    broken: ClassVar[dict[str, Callable[..., list[Any]]]] = {
        "resolve": _resolve_dropping_every_debt
    }


class PauseStillSends(_BreaksAVerb):
    """A pause recorded as applied that does not pause."""

    broken: ClassVar[dict[str, Callable[..., list[Any]]]] = {"pause": _pause_that_holds_nothing}


class SkipLosesTheResult(_BreaksAVerb):
    """A skip that gives the step no result, whatever the operator gave."""

    broken: ClassVar[dict[str, Callable[..., list[Any]]]] = {"skip": _skip_losing_the_result}


class AppliesCommandsTwice(SagaHost):
    """Broken on purpose: the first time it applies a command it commits the saga's
    transition without marking the command applied, so the next poll applies it again."""

    def _run(
        self,
        saga: Saga,
        step: Any,
        new: NewSaga | None = None,
        done: CommandDone | None = None,
        reopen: bool = False,
    ) -> None:
        seen: set[int] = self.__dict__.setdefault("_applied_once", set())
        if done is not None and done.command_id not in seen:
            seen.add(done.command_id)
            super()._run(saga, step, new, None, reopen)
            self.applying.discard(done.command_id)  # looked at again at the next poll
            return
        super()._run(saga, step, new, done, reopen)


class _LaunchesEverything(Workflow):
    """Broken on purpose: every step is sent as soon as the workflow starts, waiting for none of
    the steps it depends on."""

    def _advance(self, now: float) -> list[Any]:
        commands: list[Any] = []
        for step, entry in enumerate(self.state.track):
            if entry is None and self.state.phase == "running":
                commands += self._launch(step, now)
        return commands


class IgnoresDependencies(SagaHost):
    """A saga host whose workflows run every step at once."""

    workflow_class = _LaunchesEverything


class _Reversed:
    """A workflow definition seen with its graph turned around: each step's dependents are the
    steps it depends on."""

    def __init__(self, real: WorkflowDefinition) -> None:
        self._real = real
        self.dependents = real.dependencies

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class _CompensatesForwards(Workflow):
    """Broken on purpose: compensates in the order the steps ran (the order first, the stock and
    the charge after it), not the graph's reverse."""

    def _compensate_ready(self, now: float) -> list[Any]:
        real = self.definition
        self.definition = _Reversed(real)  # type: ignore[assignment]
        try:
            return super()._compensate_ready(now)
        finally:
            self.definition = real


class CompensatesForwards(SagaHost):
    """A saga host whose workflows compensate a step before the steps that depend on it."""

    workflow_class = _CompensatesForwards
