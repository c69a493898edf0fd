"""The crash-injection harness, used on the demo's order saga as a user would use it on theirs.

The exhaustive mode crashes every failpoint at every hit on both bases; a seeded random campaign
with fixed seeds mixes every fault kind; and a deliberately broken saga host (one that sends
before it commits) must be caught by the checker, with a saved schedule that replays the catch.
The full persistent sweep on the multi-process base is a soak run (``-m soak``); the default
suite sweeps its first hits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mutants import SendsBeforeCommit

from demo.chaos import DemoScenario
from understudy import RestartPolicy
from understudy.cli import main
from understudy.failpoints import POINTS
from understudy.testing import ChaosRunner, FaultSchedule, RunResult, check


def _fired_everywhere(results: list[RunResult]) -> None:
    """The sweep reached every failpoint: a point that never fires tests nothing."""
    swept = [r.schedule.faults[-1].point for r in results]
    fired = {point for point, r in zip(swept, results, strict=True) if r.fired_at(point)}
    assert set(POINTS) == fired


def test_exhaustive_single_crash_at_every_hit_of_every_failpoint(
    chaos: Any, understudy_base: str
) -> None:
    results = chaos(DemoScenario()).exhaustive(sagas=2, persistent=False)
    _fired_everywhere(results)
    assert all(r.report.statuses["completed"] >= 1 for r in results)


def test_exhaustive_persistent_crashes_from_the_first_hit(chaos: Any) -> None:
    # A persistent crash keeps firing until the heal, so these runs last until the sagas park
    # or stall: the default suite starts each one at the first hit; soak runs sweep every hit.
    # A lower persisted recovery cap parks a saga that keeps killing its host sooner.
    harness = chaos(DemoScenario(), policy=RestartPolicy(max_recovery_attempts=3))
    results = harness.exhaustive(sagas=2, persistent=True, max_nth=1)
    _fired_everywhere(results)


@pytest.mark.soak
def test_exhaustive_persistent_crashes_at_every_hit(chaos: Any) -> None:
    chaos(DemoScenario()).exhaustive(sagas=2, persistent=True)


def test_seeded_random_campaign(chaos: Any, understudy_replay: Any) -> None:
    results = chaos(DemoScenario()).campaign(sagas=10)
    if understudy_replay is None:
        kinds = {kind for r in results for kind in r.fired_kinds()}
        assert len(kinds) >= 3, f"a campaign of fixed seeds fired only {kinds}"
        assert sum(r.report.statuses["completed"] for r in results) >= len(results)


def test_a_host_that_sends_before_it_commits_is_caught(
    tmp_path: Path, understudy_base: str
) -> None:
    """The mutation test: write-ahead turned around is invisible without faults, and caught
    by the checker as soon as a store error lands between the send and the commit."""
    mutant = ChaosRunner(
        DemoScenario(), tmp_path / "mutant", base=understudy_base, host_class=SendsBeforeCommit
    )
    untouched = mutant.run(FaultSchedule((), base=understudy_base, sagas=2), name="no-faults")
    assert untouched.ok, untouched.report

    # A failed commit: the requests are out, the intents are not durable, and the saga
    # records them again later, after the participants applied them.
    results = mutant.exhaustive(sagas=2, points=["store.in_transaction"], action="io_error")
    caught = [r for r in results if not r.ok]
    assert caught, "the checker missed a host that sends before it commits"
    rules = {v.rule for r in caught for v in r.report.violations}
    assert rules & {"write-ahead", "unknown-saga"}, rules

    # The saved schedule replays the catch; the same schedule passes with the real host.
    assert caught[0].saved is not None
    schedule = FaultSchedule.load(caught[0].saved)
    assert not mutant.run(schedule, name="replay").ok
    real = ChaosRunner(DemoScenario(), tmp_path / "real", base=understudy_base)
    assert real.run(schedule).ok


def test_the_chaos_command_runs_a_campaign_and_prints_its_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        [
            *("chaos", "--runs", "2", "--sagas", "4", "--base", "simpleSystemBase"),
            *("--seed", "3", "--dir", str(tmp_path)),
        ]
    )
    out = capsys.readouterr().out
    assert 0 == status, out
    assert "run 2/2" in out
    assert "sagas run: 12 (" in out  # 2 runs of 4 sagas and 2 probes each
    assert "invariant violations: 0" in out
    assert "recovery time (heal to quiet): p50" in out
    assert [] == list(tmp_path.glob("seed3-run*")), "passing runs' data is removed"


def test_the_chaos_command_refuses_a_scenario_it_cannot_load(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert 2 == main(["chaos", "--scenario", "no_such_module:scenario"])
    assert "cannot import scenario module 'no_such_module'" in capsys.readouterr().err
    assert 2 == main(["chaos", "--scenario", "demo.chaos"])
    assert "module:attribute" in capsys.readouterr().err


def test_the_plugin_fixtures_draw_a_schedule_for_the_base_and_run_it(
    chaos: Any, fault_schedule: FaultSchedule, saga_checker: Any, understudy_base: str
) -> None:
    assert understudy_base == fault_schedule.base
    assert saga_checker is check
    result = chaos(DemoScenario()).run(fault_schedule)
    assert result.report.statuses["completed"] >= 1


def test_a_saved_schedule_replays_with_the_policy_and_probes_it_ran_with(
    tmp_path: Path,
) -> None:
    """A replay repeats how the run was driven, not the replaying runner's settings."""
    policy = RestartPolicy(max_recovery_attempts=3)
    mutant = ChaosRunner(
        DemoScenario(),
        tmp_path / "saved",
        host_class=SendsBeforeCommit,
        policy=policy,
        probes=1,
        scenario_path="demo.chaos:scenario",
    )
    failed = next(
        r
        for r in mutant.exhaustive(sagas=2, points=["store.in_transaction"], action="io_error")
        if not r.ok
    )
    assert failed.saved is not None
    schedule = FaultSchedule.load(failed.saved)
    assert 3 == schedule.runner["policy"]["max_recovery_attempts"]
    assert 1 == schedule.runner["probes"]
    assert "demo.chaos:scenario" == schedule.runner["scenario"]
    again = ChaosRunner(DemoScenario(), tmp_path / "again", host_class=SendsBeforeCommit)
    replayed = again.run(schedule, name="replay")
    assert 3 == replayed.sagas  # 2 sagas and the 1 probe it was saved with, not the default 2
