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
        unwind: bool = False,
    ) -> None:
        seen: set[int] = self.__dict__.setdefault("_applied_once", set())
        if done is not None and done.command_id not in seen:
            seen.add(done.command_id)
            super()._run(saga, step, new, None, reopen, unwind)
            self.applying.discard(done.command_id)  # looked at again at the next poll
            return
        super()._run(saga, step, new, done, reopen, unwind)


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


# --- broken reactors (choreography) --------------------------------------------------------------
# Imported here, not at the top: this part of the file was appended to it.
import time  # noqa: E402

from demo import reactors as demo_reactors  # noqa: E402
from understudy import codec, failpoints  # noqa: E402
from understudy.actors import outbox as outbox_rows  # noqa: E402
from understudy.actors.reacting import ledger_request  # noqa: E402
from understudy.actors.reactor import Reactor  # noqa: E402
from understudy.errors import UnderstudyError  # noqa: E402
from understudy.persistence.base import PublishedEvent, TopicEvent  # noqa: E402


class _ReactsFirst(Reactor):
    """Not broken: a reactor that looks at the log before it relays what it left (the real one
    relays first). After a crash between its commit and its relay it is handed the event again,
    and its ledger answers: the redelivery runs nothing. The mutants below build on it."""

    def _look(self) -> bool:
        if self.store is None or self.ledger is None or self.name is None:
            return False
        try:
            events = self.store.undelivered(self.name, self.batch_size)
            now = time.monotonic()
            due = [e for e in events if self.retry_at.get(e.event_id, 0.0) <= now]
            if due:
                self._react(due)
            self._relay()
            return bool(due)
        except (UnderstudyError, failpoints.InjectedFault):
            return False


class _ForgetsRedeliveries(_ReactsFirst):
    """Broken on purpose: skips its ledger check, so an event handed to it again is applied
    again (and what the reaction publishes is published again, under new ids)."""

    def _react_one(self, event: PublishedEvent) -> None:
        assert self.ledger is not None and self.name is not None
        key = ledger_request(event, self.name).key
        self.ledger._execute("DELETE FROM understudy_ledger WHERE key = ?", (key,))  # the bug
        super()._react_one(event)


class _PublishesBeforeCommit(Reactor):
    """Broken on purpose: relays each reaction's outbox rows to the store as soon as the
    reaction ran, inside the batch's transaction, before it commits ("to cut latency"). Nothing
    shows until a crash lands between that relay and the commit: the store then holds events
    and an acknowledgement of a reaction that rolled back."""

    def _react_one(self, event: PublishedEvent) -> None:
        super()._react_one(event)
        assert self.outbox is not None and self.store is not None and self.name is not None
        rows = self.outbox._execute(outbox_rows._PENDING, (self.name, 500)).fetchall()
        events, acks = [], []
        for _id, kind, body in rows:
            value = codec.decode(bytes(body), "outbox row")
            if kind == outbox_rows.EVENT_ROW:
                events.append(TopicEvent(**value))
            else:
                acks.append(outbox_rows._ack(value))
        self.store.append_events(events, acks)  # the bug: before the commit


class _MarksBeforeRelaying(Reactor):
    """Broken on purpose: marks its outbox rows relayed before the store has them. A crash
    between the two loses the events its reactions published (and their acknowledgement, so
    the event is handed to it again; its ledger replays the reaction without publishing)."""

    def _relay(self) -> None:
        assert self.outbox is not None and self.store is not None and self.name is not None
        while True:
            pending = self.outbox.pending()
            if not pending.ids:
                return
            self.outbox.mark_relayed(pending.ids)  # the bug: marked first
            if failpoints.hit("participant.before_reply", None, self.name) == "drop":
                return
            self.store.append_events(pending.events, pending.acks)


class ReactsFirstOrders(demo_reactors.Orders, _ReactsFirst):
    pass


class ReactsFirstInventory(demo_reactors.Inventory, _ReactsFirst):
    pass


class ReactsFirstPayments(demo_reactors.Payments, _ReactsFirst):
    pass


class ForgetfulOrders(demo_reactors.Orders, _ForgetsRedeliveries):
    pass


class ForgetfulInventory(demo_reactors.Inventory, _ForgetsRedeliveries):
    pass


class ForgetfulPayments(demo_reactors.Payments, _ForgetsRedeliveries):
    pass


class HastyOrders(demo_reactors.Orders, _PublishesBeforeCommit):
    # Looks seldom, so that the orders placed at once reach it in one batch: a crash at the
    # batch's second event or later then lands after the first one's early relay.
    poll_interval = 0.5


class HastyInventory(demo_reactors.Inventory, _PublishesBeforeCommit):
    pass


class HastyPayments(demo_reactors.Payments, _PublishesBeforeCommit):
    pass


class CarelessOrders(demo_reactors.Orders, _MarksBeforeRelaying):
    pass


class CarelessInventory(demo_reactors.Inventory, _MarksBeforeRelaying):
    pass


class CarelessPayments(demo_reactors.Payments, _MarksBeforeRelaying):
    pass


# The service comes first among the bases: a reactor's reactions are collected from its first
# base's (understudy.actors.reactions.collect), and the broken part, a Reactor itself, has none.

#: Each broken (or, for REACTS_FIRST, merely reordered) reactor of the choreographed demo, by
#: the name it replaces (the scenario's ``classes``).
REACTS_FIRST: dict[str, type] = {
    "orders": ReactsFirstOrders,
    "inventory": ReactsFirstInventory,
    "payments": ReactsFirstPayments,
}
FORGETS_REDELIVERIES = {
    "orders": ForgetfulOrders,
    "inventory": ForgetfulInventory,
    "payments": ForgetfulPayments,
}
PUBLISHES_BEFORE_COMMIT = {
    "orders": HastyOrders,
    "inventory": HastyInventory,
    "payments": HastyPayments,
}
MARKS_BEFORE_RELAYING = {
    "orders": CarelessOrders,
    "inventory": CarelessInventory,
    "payments": CarelessPayments,
}


class FailsCommandsOfOneSaga(SagaHost):
    """A saga host with a bug that strikes every command for saga ``b-1``, outside any saga's
    guard (in the command intake itself)."""

    def _apply_command(self, command: Any) -> None:
        if command.saga_id == "b-1":
            raise RuntimeError("a bug in the command intake, on purpose")
        super()._apply_command(command)
