"""The crash harness proves steps that finish later: the demo's order with a payment approval
(``demo.chaos_deferred``), completed, rejected and failed from a process outside the actor
system while the harness crashes the participants and saga hosts, keeps every rule of
``demo.deferred_checks``; and approvals participants broken on purpose (``deferred_mutants``)
are caught by them.

On both bases: a sweep of crashes at every hit of the approvals participant's points (up to a
bound; on the multi-process base a real SIGKILL, with approvals waiting and completions
arriving while it is down), and a seeded campaign of every fault kind. The sweep of every point
and a longer campaign are soak runs (``-m soak``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from deferred_mutants import (
    AcceptsCompletionsAfterCancel,
    AnswersResendsWithoutWaiting,
    RunsAgainOnResend,
)

from demo.approvals import Approvals
from demo.chaos_deferred import DeferredScenario
from demo.deferred_checks import Evidence, Tally
from understudy import Participant
from understudy.failpoints import POINTS, VERB_POINTS
from understudy.testing import ChaosRunner, FaultSchedule, RunResult, single_fault

#: The approvals participant's points: a crash before a request is applied (a first request, a
#: resend of a waiting one, a compensation) and after one is committed (a completion answered).
PARTICIPANT_POINTS = ("participant.before_apply", "participant.after_apply")
DB = "approvals.db"  # the approvals participant's database, in each run's directory


Scenarios = Callable[..., DeferredScenario]


@pytest.fixture
def scenario() -> Iterator[Scenarios]:
    """Makes scenarios (with the approvals participant given); stops, after the test, the
    approvers of runs it cut short (a run that was checked stopped its own)."""
    made: list[DeferredScenario] = []

    def make(approvals: type[Participant] = Approvals) -> DeferredScenario:
        made.append(DeferredScenario(approvals))
        return made[-1]

    yield make
    for each in made:
        each.close()


def _violations(results: list[RunResult]) -> list[str]:
    return [f"{r.schedule.describe()}: {v}" for r in results for v in r.report.violations]


def _tally(results: list[RunResult]) -> tuple[Counter[str], Counter[str], int]:
    """(the approver's calls and answers, the approval steps' outcomes, resends) of ``results``."""
    answers: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    resends = 0
    for result in results:
        tally = Tally.of(result.directory, result.directory / "sagas.db")
        answers += tally.answers
        outcomes += tally.outcomes
        resends += tally.resends
    return answers, outcomes, resends


def _sweep(runner: ChaosRunner, base: str, max_nth: int) -> list[RunResult]:
    """A crash at each hit of each of the approvals participant's points, n = 1, 2, ... until
    a run in which it did not fire (or ``max_nth``)."""
    results = []
    for point in PARTICIPANT_POINTS:
        for nth in range(1, max_nth + 1):
            schedule = single_fault(point, nth, base=base, sagas=2, participant="approvals")
            result = runner.run(schedule, name=f"{point}-{nth}")
            results.append(result)
            if not result.fired_at(point):
                break
    return results


def test_a_run_without_faults_takes_every_path(
    tmp_path: Path, understudy_base: str, scenario: Scenarios
) -> None:
    """The scenario does what it says: one order of each plan, and each ends as its plan
    says, every rule holding (what the rules are then asked to hold under faults)."""
    runner = ChaosRunner(scenario(), tmp_path, base=understudy_base)
    result = runner.run(FaultSchedule((), base=understudy_base, sagas=6), name="no-faults")
    result.report.assert_ok()
    answers, outcomes, resends = _tally([result])
    least = {
        # Approved, approved twice (and, unless a busy machine made the slow approval later
        # than the step's last attempt, approved after a resend).
        "complete recorded": 2,
        "complete again": 1,  # the webhook delivered again: harmless
        "reject refused applied": 1,  # a refusal after the approval: refused
        "reject recorded": 1,
        "fail recorded": 1,
        "complete refused cancelled": 1,  # the late click on a request nobody answered
    }
    assert all(answers[seen] >= n for seen, n in least.items()), answers
    # (the race goes either way: approved, or cancelled and its approval refused)
    least = {"applied": 4, "rejected": 1, "failed": 1, "cancelled": 1}
    assert all(outcomes[seen] >= n for seen, n in least.items()), outcomes
    assert resends >= 2, resends  # the unanswered one's, the breakage's (and the slow one's)
    # What a caller gets: the first order's approval in its results; the second's refusal, with
    # its data, in its failure; the fourth, never approved, compensated (its late click refused).
    ev = Evidence.read(result.directory, result.directory / "sagas.db", result.directory / DB)
    [approval] = [c["args"][0] for c in ev.calls if c["saga"] == "order-00001"]
    assert "completed" == ev.status["order-00001"]
    assert approval == ev.states["order-00001"]["results"]["approve_payment"]
    [(reason, data)] = [c["args"] for c in ev.calls if c["saga"] == "order-00002"]
    assert "compensated" == ev.status["order-00002"]
    assert ["approve_payment", reason, data] == ev.states["order-00002"]["failure"]
    [late] = [c for c in ev.calls if c["saga"] == "order-00004"]
    assert ("compensated", "refused", "cancelled") == (
        ev.status["order-00004"],
        late["answer"],
        late["state"],
    )


@pytest.mark.parametrize("understudy_base", ["multiprocTCPBase"])
def test_kills_of_the_approvals_participant_keep_the_rules(
    tmp_path: Path, understudy_base: str, scenario: Scenarios
) -> None:
    """A SIGKILL of the approvals participant at each of its first hits of each point: requests
    waiting are lost with it, and completions arrive while it is down or restarting."""
    runner = ChaosRunner(scenario(), tmp_path, base=understudy_base)
    results = _sweep(runner, understudy_base, max_nth=3)
    assert _violations(results) == []
    assert {p for p in PARTICIPANT_POINTS if any(r.fired_at(p) for r in results)} == set(
        PARTICIPANT_POINTS
    )


def test_a_seeded_campaign_keeps_the_rules(
    tmp_path: Path, understudy_base: str, scenario: Scenarios
) -> None:
    runner = ChaosRunner(scenario(), tmp_path, base=understudy_base)
    results = runner.campaign(seed=7, runs=2, sagas=10)
    assert _violations(results) == []
    assert sum(sum(r.fired_kinds().values()) for r in results), "no fault fired"
    statuses = sum((r.report.statuses for r in results), Counter[str]())
    assert statuses["completed"] and statuses["compensated"], statuses


def _caught(scenario: Scenarios, base: str, tmp_path: Path, mutant: type[Participant]) -> set[str]:
    """What a fault-free run with ``mutant`` as the approvals participant is caught breaking:
    the names of the rules with complaints (a domain rule by its function's name)."""
    runner = ChaosRunner(scenario(mutant), tmp_path, base=base)
    result = runner.run(FaultSchedule((), base=base, sagas=4), name="no-faults")
    assert not result.ok, f"{mutant.__name__} was not caught"
    return {
        v.detail.split(":")[0] if v.rule == "domain" else v.rule for v in result.report.violations
    }


def test_a_handler_run_again_on_a_resend_is_caught(
    tmp_path: Path, understudy_base: str, scenario: Scenarios
) -> None:
    assert {"deferred_handlers_ran_once"} == _caught(
        scenario, understudy_base, tmp_path, RunsAgainOnResend
    )


def test_a_completion_accepted_after_the_cancel_is_caught(
    tmp_path: Path, understudy_base: str, scenario: Scenarios
) -> None:
    caught = _caught(scenario, understudy_base, tmp_path, AcceptsCompletionsAfterCancel)
    assert {"no_completion_after_cancel", "completions_reached_their_sagas"} <= caught, caught


def test_a_resend_answered_without_waiting_is_caught(
    tmp_path: Path, understudy_base: str, scenario: Scenarios
) -> None:
    caught = _caught(scenario, understudy_base, tmp_path, AnswersResendsWithoutWaiting)
    assert "completions_reached_their_sagas" in caught, caught


#: Every crash point but the operators' verbs' (no operator acts here) and
#: ``participant.before_reply``, whose crash is ``participant.after_apply``'s (see
#: tests/test_harness.py's SAME_CRASH).
CRASH_POINTS = tuple(p for p in POINTS if p not in VERB_POINTS and p != "participant.before_reply")


@pytest.mark.soak
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("understudy_base", ["multiprocTCPBase"])
def test_every_hit_of_every_crash_point_keeps_the_rules(
    tmp_path: Path, understudy_base: str, scenario: Scenarios
) -> None:
    runner = ChaosRunner(scenario(), tmp_path, base=understudy_base)
    results = runner.exhaustive(sagas=2, points=CRASH_POINTS, max_nth=60)
    assert _violations(results) == []


@pytest.mark.soak
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("understudy_base", ["multiprocTCPBase"])
def test_a_long_campaign_keeps_the_rules(
    tmp_path: Path, understudy_base: str, scenario: Scenarios
) -> None:
    runner = ChaosRunner(scenario(), tmp_path, base=understudy_base)
    results = runner.campaign(seed=11, runs=40, sagas=20)
    assert _violations(results) == []
