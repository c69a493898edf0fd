"""The crash-injection harness over the demo's order run as a workflow (``demo.chaos:workflow``):
an exhaustive crash sweep and a seeded campaign find no violation, and workflows broken on
purpose (one that ignores dependencies, one that compensates in the wrong order) are caught by
the checker's graph rules."""

from __future__ import annotations

from pathlib import Path

import pytest
from mutants import CompensatesForwards, IgnoresDependencies

from demo.chaos import WorkflowScenario
from understudy.failpoints import POINTS, VERB_POINTS
from understudy.testing import ChaosRunner, FaultSchedule, RunResult

#: Every crash point but those hit only while an operator's verb is applied (the operators'
#: stories of the harness drive a saga's verbs) and ``participant.before_reply``, whose crash
#: is ``participant.after_apply``'s (see tests/test_harness.py's SAME_CRASH).
CRASH_POINTS = tuple(p for p in POINTS if p not in VERB_POINTS and p != "participant.before_reply")


def _violations(results: list[RunResult]) -> list[str]:
    return [f"{r.schedule.describe()}: {v}" for r in results for v in r.report.violations]


def _sweep(tmp_path: Path, base: str, max_nth: int) -> None:
    runner = ChaosRunner(WorkflowScenario(), tmp_path, base=base)
    results = runner.exhaustive(sagas=2, points=CRASH_POINTS, max_nth=max_nth)
    assert _violations(results) == []
    fired = {line.split()[0] for r in results for line in r.fired}
    assert fired >= {p for p in CRASH_POINTS if p.startswith("host.")}


def test_every_crash_point_keeps_the_invariants(tmp_path: Path, understudy_base: str) -> None:
    """In-process, every hit of every point; with real processes killed, the first two hits of
    each (the full multi-process sweep takes several minutes: it is a soak run, below)."""
    _sweep(tmp_path, understudy_base, 60 if understudy_base == "simpleSystemBase" else 2)


@pytest.mark.soak
@pytest.mark.parametrize("understudy_base", ["multiprocTCPBase"])
def test_every_hit_of_every_crash_point_with_real_kills(
    tmp_path: Path, understudy_base: str
) -> None:
    _sweep(tmp_path, understudy_base, 60)


def test_a_seeded_campaign_keeps_the_invariants(tmp_path: Path, understudy_base: str) -> None:
    runner = ChaosRunner(WorkflowScenario(), tmp_path, base=understudy_base)
    results = runner.campaign(seed=5, runs=3, sagas=10)
    assert _violations(results) == []
    assert sum(r.report.statuses["completed"] for r in results) > 0
    assert sum(r.report.statuses["compensated"] for r in results) > 0


def test_a_workflow_that_ignores_its_dependencies_is_caught(
    tmp_path: Path, understudy_base: str
) -> None:
    mutant = ChaosRunner(
        WorkflowScenario(), tmp_path, base=understudy_base, host_class=IgnoresDependencies
    )
    result = mutant.run(FaultSchedule((), base=understudy_base, sagas=4), name="no-faults")
    assert not result.ok
    assert "graph-order" in {v.rule for v in result.report.violations}


def test_a_workflow_that_compensates_forwards_is_caught(
    tmp_path: Path, understudy_base: str
) -> None:
    mutant = ChaosRunner(
        WorkflowScenario(), tmp_path, base=understudy_base, host_class=CompensatesForwards
    )
    result = mutant.run(FaultSchedule((), base=understudy_base, sagas=4), name="no-faults")
    assert not result.ok
    rules = {v.rule for v in result.report.violations}
    assert "compensated" in rules, result.report
    assert any("which depends on it" in v.detail for v in result.report.violations)
