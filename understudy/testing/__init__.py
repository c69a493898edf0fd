"""Prove your own sagas survive crashes: fault schedules, a chaos runner and a checker.

Quick start (the pytest plugin gives you these as fixtures; see ``docs/testing.md``)::

    from understudy.testing import ChaosRunner, Scenario, SagaStart

    class MyScenario(Scenario):
        definitions = (MY_SAGA,)
        def participants(self, directory, sagas):
            return [("payments", Payments, {"database": str(directory / "payments.db")})]
        def workload(self, rng, count):
            return [SagaStart(f"s{i}", "my-saga", {"amount": rng.randint(1, 99)})
                    for i in range(count)]

    runner = ChaosRunner(MyScenario(), tmp_path, base="multiprocTCPBase")
    for result in runner.exhaustive(sagas=2):
        result.report.assert_ok(result.schedule.describe())

Choreography: a scenario's participants may be reactors, and its workload may start chains
(:class:`ChainStart`: an event published from plain code with the chain's correlation id) as
well as sagas; the runner waits for every chain to end and every reactor's outbox to be
relayed, and the checker holds chains to their own rules (delivered to every subscriber,
applied once, nothing published by a reaction that rolled back, nothing left unrelayed, every
chain completed or compensated). ``demo.chaos:choreography`` is the demo's order so.

A schedule can also carry operators' verbs (:class:`OperatorAction`: cancel, pause, resume,
retry, skip, resolve, abandon on a saga of the workload), which the runner carries out while
the run is under fault and while it heals; ``campaign(verbs=N)`` draws N operator stories per
run.

``ChaosRunner(..., store="postgresql://...")`` keeps each run's saga store in a fresh database
on that server and adds the server's own faults (and, with ``restart_server``, restarts).
Faults are armed at the named failpoints of :mod:`understudy.failpoints`. The checker reads only
the store and the participants' ledgers (:mod:`understudy.testing.checker` lists the invariants).
"""

from understudy.failpoints import ACTIONS, POINTS, SERVER_ACTIONS, Fault
from understudy.testing.checker import (
    ChainStart,
    Invariant,
    InvariantViolation,
    Report,
    RunView,
    SagaStart,
    Violation,
    check,
)
from understudy.testing.operators import VerbTaken
from understudy.testing.runner import (
    ChaosRunner,
    Figures,
    Participants,
    RunResult,
    Scenario,
)
from understudy.testing.schedule import (
    FaultSchedule,
    OperatorAction,
    ServerRestart,
    random_schedule,
    single_fault,
)

__all__ = [
    "ACTIONS",
    "POINTS",
    "SERVER_ACTIONS",
    "ChainStart",
    "ChaosRunner",
    "Fault",
    "FaultSchedule",
    "Figures",
    "Invariant",
    "InvariantViolation",
    "OperatorAction",
    "Participants",
    "Report",
    "RunResult",
    "RunView",
    "SagaStart",
    "Scenario",
    "ServerRestart",
    "VerbTaken",
    "Violation",
    "check",
    "random_schedule",
    "single_fault",
]
