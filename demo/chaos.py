"""The demo's order saga as a chaos scenario: what ``understudy chaos`` runs by default.

Same steps, participants and ledger checks as ``python -m demo``, with step timeouts of a
second so that dropped messages and hung actors are noticed quickly. The demo's own ledger
checks (stock conserved, no double charge, money conserved, every order fully applied or fully
undone) are the scenario's domain invariants.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

from demo.check import check_ledgers
from demo.choreography_check import COVERED, check_choreography
from demo.participants import DECLINED_SUFFIX
from demo.reactors import PLACED, placed_id
from demo.reactors import services as reactor_services
from demo.run import participants as demo_participants
from demo.saga import ORDER, ORDER_CHILD, ORDER_WORKFLOW, PARTICIPANT_NAMES
from demo.workload import Order, make_orders, opening_stock
from understudy import COMPLETED, FAILED, RetryPolicy, SagaDefinition
from understudy.actors.children import Children
from understudy.definitions import CHILDREN
from understudy.testing import Invariant, Participants, RunView, SagaStart, Scenario
from understudy.testing.checker import ChainStart, Start

FAST = RetryPolicy(attempts=4, backoff=0.05, max_backoff=0.5)


def chaos_friendly(definition: SagaDefinition) -> SagaDefinition:
    """``definition`` with every step's timeout a second and quick retries, so that dropped
    messages and hung actors are noticed quickly; a child step (and its child saga, likewise)
    waits 5 s per attempt, longer than one of the child's own steps with its retries."""
    steps = [
        attrs.evolve(
            step,
            timeout=5.0 if step.saga else 1.0,
            retry=FAST,
            compensation_retry=FAST,
            saga=chaos_friendly(step.saga) if step.saga else None,
        )
        for step in definition.steps
    ]
    return attrs.evolve(definition, steps=steps)


#: The demo's ORDER saga with chaos-friendly timeouts and retries.
CHAOS_ORDER = chaos_friendly(ORDER)
#: The demo's order as a workflow (``python -m demo --style workflow``), as chaos-friendly.
CHAOS_WORKFLOW = chaos_friendly(ORDER_WORKFLOW)
#: The order running its stock reservation as a child saga (demo.saga.ORDER_CHILD).
CHAOS_CHILD = chaos_friendly(ORDER_CHILD)

#: Demo checks that the generic checker already covers (with failed sagas allowed, since a
#: persistent fault may park a saga as failed-needs-attention on purpose).
_COVERED = ("every order is terminal", "every saga completed or fully compensated")


def _orders(sagas: list[SagaStart]) -> list[Order]:
    return [Order(**start.payload) for start in sagas]


class DemoScenario(Scenario):
    definitions: tuple[SagaDefinition, ...] = (CHAOS_ORDER,)

    def participants(self, directory: Path, sagas: list[SagaStart]) -> Participants:
        return demo_participants(directory, opening_stock(_orders(sagas)))

    def workload(self, rng: random.Random, count: int) -> list[SagaStart]:
        orders = make_orders(count, rng.randrange(1 << 30))
        # Every fourth order from the second on pays with a declined card, so that even a
        # two-saga run goes through every compensation boundary.
        orders = [
            attrs.evolve(o, card=o.card[: -len(DECLINED_SUFFIX)] + DECLINED_SUFFIX)
            if i % 4 == 1
            else o
            for i, o in enumerate(orders)
        ]
        name = self.definitions[0].name
        return [SagaStart(o.order_id, name, o.payload()) for o in orders]

    def invariants(self) -> list[Invariant]:
        return [demo_ledger_checks]


def demo_ledger_checks(view: RunView) -> list[str]:
    """The demo's ledger checks, read from the run's files and its saga store (a SQLite file
    or a PostgreSQL database)."""
    orders = _orders(list(view.submitted))
    report = check_ledgers(
        view.directory, orders, opening_stock(orders), (COMPLETED, FAILED), store=str(view.store)
    )
    return [f"{c.name}: {c.detail}" for c in report.checks if not c.ok and c.name not in _COVERED]


class WorkflowScenario(DemoScenario):
    """The same orders, participants and ledger checks, run as the workflow: the stock is
    reserved and the card charged at once once the order exists."""

    definitions = (CHAOS_WORKFLOW,)


class ChildScenario(DemoScenario):
    """The same orders, participants and ledger checks, with the stock reserved by a child
    saga: a declined card unwinds the completed child, an order out of stock is refused by
    its child, and the faults strike the children participant as any other.

    ``children``: a subclass of understudy's children participant to run in its place (the
    harness's tests give broken ones, which the checker must catch)."""

    definitions = (CHAOS_CHILD,)

    def __init__(self, children: type[Children] | None = None) -> None:
        self.children = children

    def participants(self, directory: Path, sagas: list[SagaStart]) -> Participants:
        given = super().participants(directory, sagas)
        if self.children is None:
            return given
        return [*given, (CHILDREN, self.children, {})]


#: The scenario ``understudy chaos`` runs unless told otherwise.
scenario = DemoScenario()
#: ``understudy chaos --scenario demo.chaos:workflow``.
workflow = WorkflowScenario()
#: ``understudy chaos --scenario demo.chaos:child``.
child = ChildScenario()


# --- the order, choreographed ---------------------------------------------------------------------


#: The failpoints a reactor hits: before a batch is applied, after it committed (not relayed),
#: and in the relay (the store has it, the outbox is not marked).
REACTOR_POINTS = ("participant.before_apply", "participant.after_apply", "participant.before_reply")


def _chain_orders(starts: Iterable[Start]) -> list[Order]:
    return [Order(**start.data) for start in starts if isinstance(start, ChainStart)]


class ChoreographyScenario(Scenario):
    """The same orders (every fourth from the second one declined, scarce skus running out),
    placed as chains: each order is an ``order.placed`` event whose correlation id is the order
    id, and Orders, Inventory and Payments react to one another's events
    (:mod:`demo.reactors`); no saga, no coordinator in the order's way. Its domain invariants
    are the demo's ledger checks against each order's chain (:mod:`demo.choreography_check`).
    """

    definitions = ()
    reactors = PARTICIPANT_NAMES
    #: The failpoints a reactor hits (see understudy.actors.reactor): its campaigns draw only
    #: these, so that its runs kill, hang and cut reactors where they can be hurt.
    points = REACTOR_POINTS
    #: Reactor classes replaced by name (the harness's broken reactors, in tests).
    classes: dict[str, type] = {}

    def participants(self, directory: Path, sagas: list[Any]) -> Participants:
        return reactor_services(directory, opening_stock(_chain_orders(sagas)), self.classes)

    def workload(self, rng: random.Random, count: int) -> list[Start]:
        return [
            ChainStart(start.saga_id, PLACED, start.payload, placed_id(start.saga_id))
            for start in DemoScenario().workload(rng, count)
            if isinstance(start, SagaStart)
        ]

    def invariants(self) -> list[Invariant]:
        return [choreography_ledger_checks]


def choreography_ledger_checks(view: RunView) -> list[str]:
    """The demo's ledger checks against each order's chain, from the reactors' files and the
    run's saga store."""
    orders = _chain_orders(view.chains)
    report = check_choreography(view.directory, orders, opening_stock(orders), str(view.store))
    return [f"{c.name}: {c.detail}" for c in report.checks if not c.ok and c.name not in COVERED]


#: ``understudy chaos --scenario demo.chaos:choreography``.
choreography = ChoreographyScenario()
