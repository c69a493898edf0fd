"""The crash harness proves child sagas: the demo's order with its stock reserved by a child
saga (``demo.chaos:child``) keeps every rule of the checker, the child rules included, while
the harness crashes saga hosts, the store and the children participant itself; and children
participants broken on purpose (``children_mutants``) are caught.

On both bases: a fault-free run that takes every path, a sweep of crashes at the children
participant's points (on the multi-process base a real SIGKILL, with children running and
unwinds filed while it is down), and a seeded campaign of every fault kind. The sweep of every
point and a longer campaign are soak runs (``-m soak``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from children_mutants import AnswersUnwindBeforeItEnds, NamesTheChildWrongly, UnwindsNothing

from demo.chaos import ChildScenario
from understudy.actors.children import Children
from understudy.definitions import CHILDREN
from understudy.failpoints import POINTS, VERB_POINTS
from understudy.persistence import open_store
from understudy.testing import ChaosRunner, FaultSchedule, RunResult, single_fault

#: The children participant's points, each a crash of its own there: a request received (a
#: run, a resend, an unwind), the child started or its unwind filed, an answer about to go.
PARTICIPANT_POINTS = (
    "participant.before_apply",
    "participant.after_apply",
    "participant.before_reply",
)


def _violations(results: list[RunResult]) -> list[str]:
    return [f"{r.schedule.describe()}: {v}" for r in results for v in r.report.violations]


def _timelines(result: RunResult) -> dict[str, list[tuple[str, dict[str, object]]]]:
    with open_store(result.directory / "sagas.db", read_only=True) as store:
        return {
            r.saga_id: [(e.kind, e.detail) for e in store.events(r.saga_id) if e.step is None]
            for r in store.list_sagas(limit=1000)
        }


def test_a_run_without_faults_takes_every_path(tmp_path: Path, understudy_base: str) -> None:
    """The scenario does what it says: orders complete with their child, a declined card
    unwinds a completed child (completed, then compensated by its parent's verb), and every
    rule holds (what the rules are then asked to hold under faults)."""
    runner = ChaosRunner(ChildScenario(), tmp_path, base=understudy_base)
    result = runner.run(FaultSchedule((), base=understudy_base, sagas=6), name="no-faults")
    result.report.assert_ok()
    timelines = _timelines(result)
    children = {s: t for s, t in timelines.items() if "." in s}
    parents = {s: t for s, t in timelines.items() if "." not in s}
    assert len(children) == len(parents) == 8  # six orders and the two probes, one child each
    ends = Counter(t[-1][0] for t in parents.values())
    assert ends["completed"] and ends["compensated"], ends
    unwound = [
        s
        for s, t in children.items()
        if [k for k, d in t if k in ("completed", "compensated") or d.get("verb") == "unwind"]
        == ["completed", "operator", "compensated"]
    ]
    assert unwound, "no completed child was unwound by its parent"
    for child in unwound:
        assert timelines[child.split(".")[0]][-1][0] == "compensated"


def test_every_crash_point_keeps_the_rules(tmp_path: Path, understudy_base: str) -> None:
    """In-process, every hit of every point (of every participant: the child's, the parent's
    and the children participant); with real processes killed, the first hit of each (the full
    multi-process sweep is a soak run, below)."""
    runner = ChaosRunner(ChildScenario(), tmp_path, base=understudy_base)
    max_nth = 60 if understudy_base == "simpleSystemBase" else 1
    results = runner.exhaustive(sagas=2, points=CRASH_POINTS, max_nth=max_nth)
    assert _violations(results) == []
    fired = {line.split()[0] for r in results for line in r.fired}
    assert fired >= {p for p in CRASH_POINTS if p.startswith(("host.", "participant."))}


@pytest.mark.parametrize("understudy_base", ["multiprocTCPBase"])
def test_kills_of_the_children_participant_keep_the_rules(
    tmp_path: Path, understudy_base: str
) -> None:
    """A SIGKILL of the children participant at each of its first hits of each point: what it
    waited on is lost with it, and the parents' resends find their children in the store."""
    runner = ChaosRunner(ChildScenario(), tmp_path, base=understudy_base)
    results = []
    for point in PARTICIPANT_POINTS:
        for nth in range(1, 4):
            schedule = single_fault(point, nth, base=understudy_base, sagas=4, participant=CHILDREN)
            result = runner.run(schedule, name=f"{point}-{nth}")
            results.append(result)
            if not result.fired_at(point):
                break
    assert _violations(results) == []
    assert all(any(r.fired_at(p) for r in results) for p in PARTICIPANT_POINTS)


def test_a_seeded_campaign_keeps_the_rules(tmp_path: Path, understudy_base: str) -> None:
    runner = ChaosRunner(ChildScenario(), tmp_path, base=understudy_base)
    results = runner.campaign(seed=7, runs=2, sagas=10)
    assert _violations(results) == []
    assert sum(sum(r.fired_kinds().values()) for r in results), "no fault fired"
    statuses = sum((r.report.statuses for r in results), Counter[str]())
    assert statuses["completed"] and statuses["compensated"], statuses


def _caught(base: str, tmp_path: Path, mutant: type[Children]) -> set[str]:
    """The rules a fault-free run with ``mutant`` as the children participant breaks."""
    runner = ChaosRunner(ChildScenario(mutant), tmp_path, base=base)
    result = runner.run(FaultSchedule((), base=base, sagas=4), name="no-faults")
    assert not result.ok, f"{mutant.__name__} was not caught"
    return {v.rule for v in result.report.violations}


def test_a_child_left_completed_under_a_compensated_parent_is_caught(
    tmp_path: Path, understudy_base: str
) -> None:
    caught = _caught(understudy_base, tmp_path, UnwindsNothing)
    assert {"compensated", "child-consistent"} <= caught, caught


def test_a_parent_that_does_not_wait_for_its_child_s_compensation_is_caught(
    tmp_path: Path, understudy_base: str
) -> None:
    caught = _caught(understudy_base, tmp_path, AnswersUnwindBeforeItEnds)
    assert "compensated" in caught, caught


def test_a_child_under_an_id_its_parent_does_not_name_is_caught(
    tmp_path: Path, understudy_base: str
) -> None:
    caught = _caught(understudy_base, tmp_path, NamesTheChildWrongly)
    assert {"child-parent", "child-consistent", "completed"} <= caught, caught


#: Every crash point but the operators' verbs' (no operator acts here).
CRASH_POINTS = tuple(p for p in POINTS if p not in VERB_POINTS)


@pytest.mark.soak
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("understudy_base", ["multiprocTCPBase"])
def test_every_hit_of_every_crash_point_keeps_the_rules(
    tmp_path: Path, understudy_base: str
) -> None:
    runner = ChaosRunner(ChildScenario(), tmp_path, base=understudy_base)
    results = runner.exhaustive(sagas=2, points=CRASH_POINTS, max_nth=60)
    assert _violations(results) == []


@pytest.mark.soak
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("understudy_base", ["multiprocTCPBase"])
def test_a_long_campaign_keeps_the_rules(tmp_path: Path, understudy_base: str) -> None:
    runner = ChaosRunner(ChildScenario(), tmp_path, base=understudy_base)
    results = runner.campaign(seed=11, runs=40, sagas=20)
    assert _violations(results) == []
