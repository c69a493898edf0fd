"""The crash-injection harness over the demo's order choreographed (``demo.chaos:choreography``):
Orders, Inventory and Payments as reactors, every order a chain, no coordinator in its way.

An exhaustive sweep kills (in-process: raises in) each reactor at each of its boundaries
(``participant.before_apply``: a batch taken from the log, not applied; ``after_apply``:
committed, not relayed; ``before_reply``: the store has it, the outbox is not marked), and a
seeded campaign mixes kills, hangs, delays and dropped or doubled relays; both find no
violation of the chain rules (:mod:`understudy.testing.chain_rules`) nor of the demo's ledger
checks. Reactors broken on purpose (tests/mutants.py) are caught: one that applies an event
handed to it again, one that publishes before its transaction commits, one that marks its
outbox relayed before the store has it; none shows without the fault that matters. The full
multi-process sweep is a soak run (``-m soak``); the default suite sweeps the first hits.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mutants import (
    FORGETS_REDELIVERIES,
    MARKS_BEFORE_RELAYING,
    PUBLISHES_BEFORE_COMMIT,
    REACTS_FIRST,
)

from demo.chaos import REACTOR_POINTS, ChoreographyScenario
from demo.saga import PARTICIPANT_NAMES
from understudy.cli import main
from understudy.testing import ChaosRunner, FaultSchedule, RunResult, single_fault

#: A campaign seed whose third run kills reactors at their boundaries on the multi-process
#: base (the first two hang and delay them).
CAMPAIGN_SEED = 15


def _violations(results: list[RunResult]) -> list[str]:
    return [f"{r.schedule.describe()}: {v}" for r in results for v in r.report.violations]


def _scenario(classes: dict[str, type] | None = None) -> ChoreographyScenario:
    scenario = ChoreographyScenario()
    scenario.classes = dict(classes or {})
    return scenario


def _sweep(tmp_path: Path, base: str, max_nth: int) -> None:
    runner = ChaosRunner(_scenario(), tmp_path, base=base)
    results = runner.exhaustive(sagas=2, max_nth=max_nth)
    assert _violations(results) == []
    fired = {
        (r.schedule.faults[-1].point, r.schedule.faults[-1].participant)
        for r in results
        if r.fired_at(r.schedule.faults[-1].point)
    }
    # Every boundary of every reactor was struck, not only swept.
    assert {(p, name) for p in REACTOR_POINTS for name in PARTICIPANT_NAMES} == fired
    assert all(r.report.chains["completed"] >= 1 for r in results)
    assert sum(r.report.chains["compensated"] for r in results) > 0
    assert all(r.chains == 4 and r.sagas == 0 for r in results)  # 2 chains and 2 probes


def test_every_boundary_of_every_reactor_keeps_the_invariants(
    tmp_path: Path, understudy_base: str
) -> None:
    """In-process, every hit; with real processes SIGKILLed, the first hit of each (the full
    multi-process sweep is a soak run, below)."""
    _sweep(tmp_path, understudy_base, 60 if understudy_base == "simpleSystemBase" else 1)


@pytest.mark.soak
@pytest.mark.parametrize("understudy_base", ["multiprocTCPBase"])
def test_every_hit_of_every_boundary_with_real_kills(tmp_path: Path, understudy_base: str) -> None:
    _sweep(tmp_path, understudy_base, 60)


@pytest.mark.soak
def test_persistent_crashes_from_the_first_hit(tmp_path: Path, understudy_base: str) -> None:
    """A reactor that crashes at every hit of a boundary until the heal: its chains wait, and
    the healed reactor finishes them, losing nothing and applying nothing twice."""
    runner = ChaosRunner(_scenario(), tmp_path, base=understudy_base)
    results = runner.exhaustive(sagas=2, persistent=True, max_nth=1)
    assert _violations(results) == []
    assert all(r.fired for r in results)


def test_a_seeded_campaign_keeps_the_invariants(tmp_path: Path, understudy_base: str) -> None:
    runner = ChaosRunner(_scenario(), tmp_path, base=understudy_base)
    results = runner.campaign(seed=CAMPAIGN_SEED, runs=3, sagas=10)
    assert _violations(results) == []
    assert sum(r.report.chains["completed"] for r in results) > 0
    assert sum(r.report.chains["compensated"] for r in results) > 0
    fired = [line.split() for r in results for line in r.fired]
    assert fired, "no fault fired: the campaign tested nothing"
    assert {point for point, *_ in fired} <= set(REACTOR_POINTS)
    if understudy_base == "multiprocTCPBase":
        assert any(action == "kill" for _point, action, *_ in fired), fired


def test_understudy_chaos_runs_the_choreography(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        [
            "chaos",
            "--scenario",
            "demo.chaos:choreography",
            "--runs",
            "2",
            "--sagas",
            "4",
            "--base",
            "simpleSystemBase",
            "--dir",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert 0 == status, out
    assert "run 2/2: 6 chains" in out
    assert "chains run: 12 (" in out
    assert "invariant violations: 0" in out


# --- broken reactors ------------------------------------------------------------------------------


def _mutant(tmp_path: Path, base: str, classes: dict[str, type]) -> ChaosRunner:
    runner = ChaosRunner(_scenario(classes), tmp_path, base=base)
    untouched = runner.run(FaultSchedule((), base=base, sagas=4), name="no-faults")
    assert untouched.ok, untouched.report  # nothing shows without the fault that matters
    return runner


def _struck(runner: ChaosRunner, base: str, point: str, nth: int, reactor: str) -> RunResult:
    schedule = single_fault(point, nth, base=base, sagas=4, participant=reactor)
    result = runner.run(schedule, name=f"{point}-{reactor}-{nth}")
    assert result.fired_at(point), result.fired
    return result


def _rules(result: RunResult) -> set[str]:
    return {v.rule for v in result.report.violations}


def test_a_reactor_that_applies_an_event_again_is_caught(
    tmp_path: Path, understudy_base: str
) -> None:
    """Killed after its commit, before its relay, a reactor is handed the event again: the
    real one's ledger runs nothing (the control: a reactor that looks before it relays, so
    that it is handed the event again); one that skips its ledger applies it twice."""
    point = "participant.after_apply"
    control = ChaosRunner(_scenario(REACTS_FIRST), tmp_path / "control", base=understudy_base)
    handed_again = _struck(control, understudy_base, point, 1, "inventory")
    assert handed_again.ok, handed_again.report

    mutant = _mutant(tmp_path / "mutant", understudy_base, FORGETS_REDELIVERIES)
    caught = _struck(mutant, understudy_base, point, 1, "inventory")
    assert not caught.ok
    assert "chain-caused" in _rules(caught), caught.report
    texts = [str(v) for v in caught.report.violations if v.rule == "chain-caused"]
    assert all("chain order-" in t and "inventory" in t for t in texts), texts
    assert any("a reaction that ran again" in t for t in texts), texts
    assert "domain" in _rules(caught)  # the stock held twice, the card charged twice


def test_a_reactor_that_publishes_before_its_commit_is_caught(
    tmp_path: Path, understudy_base: str
) -> None:
    """Its events reach the store inside the batch's transaction: a crash at the next event
    of the batch rolls the reaction back, and the store keeps what it published."""
    mutant = _mutant(tmp_path, understudy_base, PUBLISHES_BEFORE_COMMIT)
    # Orders (this one looks seldom) takes the orders placed at once in one batch: a crash at
    # a later hit lands inside the batch, after an earlier order's reaction was relayed.
    results = [
        _struck(mutant, understudy_base, "participant.before_apply", nth, "orders")
        for nth in (2, 3, 4)
    ]
    caught = [r for r in results if not r.ok]
    assert caught, "the checker missed a reactor that publishes before its commit"
    rules = set().union(*map(_rules, caught))
    assert {"chain-once", "chain-outbox"} <= rules, [str(r.report) for r in caught]
    texts = [str(v) for r in caught for v in r.report.violations]
    assert any("published outside its reaction's transaction" in t for t in texts), texts
    # The saved schedule replays the catch.
    assert caught[0].saved is not None
    replayed = mutant.run(FaultSchedule.load(caught[0].saved), name="replay")
    assert not replayed.ok


def test_a_reactor_that_marks_its_outbox_before_the_store_has_it_is_caught(
    tmp_path: Path, understudy_base: str
) -> None:
    """A crash between the mark and the store's commit loses what its reactions published."""
    mutant = _mutant(tmp_path, understudy_base, MARKS_BEFORE_RELAYING)
    caught = _struck(mutant, understudy_base, "participant.before_reply", 1, "inventory")
    assert not caught.ok
    assert {"chain-caused", "chain-outbox"} <= _rules(caught), caught.report
    texts = [str(v) for v in caught.report.violations]
    assert any("relayed, but the store does not hold it" in t for t in texts), texts
    assert any("lost on its way from the outbox" in t for t in texts), texts
