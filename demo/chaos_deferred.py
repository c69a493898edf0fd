"""The demo's order with a payment approval that finishes later, as a chaos scenario:
``understudy chaos --scenario demo.chaos_deferred:scenario``.

The saga creates the order, reserves the stock, waits for an approver to approve the payment
(:mod:`demo.approvals`: the handler returns ``Later``), then charges the card. The approver is
a process of its own (:mod:`demo.completer`), started with each run's participants: it
completes, rejects (with data) or fails the approvals from outside the actor system, while the
harness kills and restarts the participants and saga hosts around it. Some approvals come after
the step's first attempt timed out (its request is sent again, and must run nothing again), some
never come (the step times out, its handle is cancelled, the saga compensates, and a late click
must be refused), some race the saga giving up, some are delivered twice.

Besides the checker's rules and the demo's ledger checks (stock and money conserved, every
order fully applied or fully undone), every run is held to the approval rules of
:mod:`demo.deferred_checks`, read from the approvals database, the saga store and the approver's
log. The approver is stopped by the scenario's first invariant, once the run has gone quiet:
its log is complete before it is judged.
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path
from typing import Any

import attrs

from demo import completer
from demo.approvals import APPROVE, APPROVE_SLOW, FAIL, NEVER, NOW, RACE, REJECT, TWICE, Approvals
from demo.chaos import CHAOS_ORDER, FAST
from demo.check import check_ledgers
from demo.deferred_checks import RULES
from demo.participants import DECLINED_SUFFIX
from demo.run import participants as demo_participants
from demo.workload import Order, make_orders, opening_stock
from understudy import COMPLETED, FAILED, Participant, RetryPolicy, SagaDefinition, Step
from understudy.testing import Invariant, Participants, RunView, SagaStart, Scenario

#: The approval's timeout, per attempt, and its attempts: a step nobody completes is given up
#: after about 1.7 s (two attempts and a backoff), and an approval after the first 0.8 s makes
#: the saga send its request again.
APPROVAL_TIMEOUT = 0.8
APPROVAL_RETRY = RetryPolicy(attempts=2, backoff=0.05, max_backoff=0.05)

_CREATE, _RESERVE, _CHARGE = CHAOS_ORDER.steps
APPROVED_ORDER = SagaDefinition(
    "approved-order",
    1,
    [
        _CREATE,
        _RESERVE,
        Step(
            "approve_payment",
            "approvals",
            "approve",
            "withdraw",
            timeout=APPROVAL_TIMEOUT,
            retry=APPROVAL_RETRY,
            compensation_retry=FAST,
        ),
        _CHARGE,
    ],
)

#: The plans in the order the workload gives them out (then again), so that even a run of two
#: sagas and its two probes meets an approval, a refusal, a resend and a cancel.
CYCLE = (APPROVE, REJECT, APPROVE_SLOW, NEVER, TWICE, FAIL, RACE, NOW)
#: Seconds from the handler's commit until the approver answers, per plan (drawn uniformly): a
#: slow approval comes after the first attempt's timeout and well before the second's; a race
#: about when the saga gives up.
DELAYS = {APPROVE_SLOW: (0.95, 1.2), RACE: (1.45, 1.85)}
QUICK = (0.0, 0.3)
#: Every third order (from the second) pays with a declined card: an approved step is then
#: compensated with the result its completion gave.
DECLINED_EVERY = 3

_ORDER_FIELDS = frozenset(field.name for field in attrs.fields(Order))


def orders_of(sagas: list[SagaStart] | tuple[SagaStart, ...]) -> list[Order]:
    return [Order(**{k: v for k, v in s.payload.items() if k in _ORDER_FIELDS}) for s in sagas]


class DeferredScenario(Scenario):
    """The order with an approval; ``approvals``: the participant class (a broken one, in the
    harness's own tests)."""

    definitions: tuple[SagaDefinition, ...] = (APPROVED_ORDER,)

    def __init__(self, approvals: type[Participant] = Approvals) -> None:
        self.approvals = approvals
        self._approvers: dict[Path, subprocess.Popen[bytes]] = {}

    def participants(self, directory: Path, sagas: list[SagaStart]) -> Participants:
        database = directory / "approvals.db"
        # The approver's world starts with the run's: it answers what the participant's
        # inbox holds, from now until the scenario's first invariant stops it.
        self._approvers[directory] = completer.start(directory, database)
        options: dict[str, Any] = {"database": str(database), "completion_poll": 0.05}
        return [
            *demo_participants(directory, opening_stock(orders_of(sagas))),
            ("approvals", self.approvals, options),
        ]

    def workload(self, rng: random.Random, count: int) -> list[SagaStart]:
        orders = make_orders(count, rng.randrange(1 << 30))
        name = self.definitions[0].name
        starts = []
        for index, order in enumerate(orders):
            declined = index % DECLINED_EVERY == 1
            card = order.card[: -len(DECLINED_SUFFIX)] + DECLINED_SUFFIX if declined else order.card
            plan = CYCLE[index % len(CYCLE)]
            low, high = DELAYS.get(plan, QUICK)
            approval = {"plan": plan, "delay": round(rng.uniform(low, high), 3)}
            payload = {**attrs.evolve(order, card=card).payload(), "approval": approval}
            starts.append(SagaStart(order.order_id, name, payload))
        return starts

    def invariants(self) -> list[Invariant]:
        return [self.stop_approver, order_ledger_checks, *RULES]

    def close(self) -> None:
        """Stop the approvers of runs that never reached their check (a run cut short by an
        error, or by a test's timeout); a run that was checked stopped its own."""
        while self._approvers:
            directory, process = self._approvers.popitem()
            completer.stop(process, directory)

    def stop_approver(self, view: RunView) -> list[str]:
        """Not a rule: the run is over, so the approver finishes (its log is then complete);
        complaints when it did not end well."""
        process = self._approvers.pop(view.directory, None)
        if process is None:
            return ["no approver was started for this run"]
        return completer.stop(process, view.directory)


#: Demo checks the generic checker covers already (with failed sagas allowed: a persistent
#: fault may park a saga on purpose).
_COVERED = ("every order is terminal", "every saga completed or fully compensated")


def order_ledger_checks(view: RunView) -> list[str]:
    """The demo's ledger checks (stock and money conserved, no double charge, every order
    fully applied or fully undone), on the orders of this workload."""
    orders = orders_of(view.submitted)
    report = check_ledgers(
        view.directory, orders, opening_stock(orders), (COMPLETED, FAILED), store=str(view.store)
    )
    return [f"{c.name}: {c.detail}" for c in report.checks if not c.ok and c.name not in _COVERED]


#: ``understudy chaos --scenario demo.chaos_deferred:scenario``.
scenario = DeferredScenario()
