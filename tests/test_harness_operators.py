"""Operators' verbs as schedule actions of the crash-injection harness.

A schedule carries operator actions (cancel, pause, resume, retry, skip, resolve, abandon on a
saga of the workload, at a moment of the run); the runner carries them out as ``chaos``, doing a
skip's or a resolve's work by hand through the participant's own handler and ledger, and the
checker holds the run to the verbs' invariants. Seeded campaigns with operators acting at
random pass on both bases and on PostgreSQL; a deliberately broken engine for each new rule (a
cancel that drops the compensation stack, a resolve that drops debt without an event, a command
applied twice, a pause that still sends, a skip that loses the result given) is caught. The
crash sweeps of ``host.before_verb`` and ``host.after_verb`` run in tests/test_harness.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import pytest
from mutants import (
    AppliesCommandsTwice,
    CancelDropsCompensations,
    PauseStillSends,
    ResolveDropsDebt,
    SkipLosesTheResult,
)
from pg import PostgresServer, restart_server

from demo.chaos import CHAOS_ORDER, DemoScenario
from understudy import RetryPolicy, SagaDefinition
from understudy.actors.verbs import VERBS
from understudy.failpoints import Fault
from understudy.testing import ChaosRunner, FaultSchedule, OperatorAction, random_schedule
from understudy.testing.operators import NOT_SENT
from understudy.testing.runner import Figures, RunResult
from understudy.testing.schedule import FAULTY, RECOVERY, VERB_POINTS, single_fault


def retrying_every(seconds: float) -> tuple[SagaDefinition]:
    """The demo's order saga whose failed steps and compensations wait ``seconds`` before
    each of their two retries. The demo's own wait 50 to 200 ms, and a saga host applies a verb
    within half a second of its submission: a stuck saga of the demo has given up (compensated,
    parked) before most verbs reach it, as an operator's rarely would."""
    policy = RetryPolicy(attempts=3, backoff=seconds, max_backoff=seconds)
    steps = [
        attrs.evolve(step, retry=policy, compensation_retry=policy) for step in CHAOS_ORDER.steps
    ]
    return (attrs.evolve(CHAOS_ORDER, steps=steps),)


class SlowRetries(DemoScenario):
    """A second's backoff: a saga stuck at its charge is in it when the verb arrives."""

    definitions = retrying_every(1.0)


class OperatedShop(DemoScenario):
    """The campaigns' scenario: half a second's backoff."""

    definitions = retrying_every(0.5)


#: The first saga's charge (and its refund) fails until the heal, in the payments participant
#: on either base: it has created the order and reserved the stock when the operator acts.
STUCK_CHARGE = Fault(
    "participant.before_apply", "raise", persistent=True, saga_id="#0", participant="payments"
)
#: Its intent for the charge is its sixth event (started, then an intent and a reply a step).
AT_CHARGE = 6


def schedule(*verbs: OperatorAction, base: str = "simpleSystemBase") -> FaultSchedule:
    return FaultSchedule((STUCK_CHARGE,), sagas=2, base=base, verbs=verbs, label="operated")


CANCEL = schedule(OperatorAction(0, "cancel", after_events=AT_CHARGE))
#: Abandoned at its charge (every step it ran owed), then one debt settled by hand in the heal.
ABANDON_AND_RESOLVE = schedule(
    OperatorAction(0, "abandon", after_events=AT_CHARGE), OperatorAction(0, "resolve", RECOVERY)
)
#: The charge done by hand while it backs off, and skipped with what it returned.
SKIP = schedule(OperatorAction(0, "skip", after_events=AT_CHARGE))
PAUSE = schedule(
    OperatorAction(0, "pause", after_events=AT_CHARGE),
    OperatorAction(0, "resume", after_seconds=1.5),
)


def rules(result: RunResult) -> set[str]:
    return {violation.rule for violation in result.report.violations}


def applied(result: RunResult) -> list[str]:
    return [v.verb for v in result.verbs if v.outcome == "applied" and not v.diligent]


# --- schedules --------------------------------------------------------------------------------


def test_operator_actions_are_saved_loaded_described_and_checked(tmp_path: Path) -> None:
    drawn = random_schedule(4, base="multiprocTCPBase", sagas=8, verbs=4)
    assert 4 <= len(drawn.verbs) and all(0 <= a.saga < 8 for a in drawn.verbs)
    assert FaultSchedule.load(drawn.save(tmp_path / "drawn.json")) == drawn
    text = drawn.describe()
    assert all(a.describe() in text for a in drawn.verbs)
    assert "saga #" in OperatorAction(3, "cancel", after_events=2).describe()
    # A schedule saved before operators' verbs has none, and loads as it always did.
    old = json.loads((tmp_path / "drawn.json").read_text())
    del old["verbs"]
    old["faults"] = [f for f in old["faults"] if not str(f["saga_id"]).startswith("#")]
    assert () == FaultSchedule.from_dict(old).verbs
    with pytest.raises(ValueError, match="unknown verb 'undo'"):
        OperatorAction(0, "undo")
    with pytest.raises(ValueError, match="cancel takes no step"):
        OperatorAction(0, "cancel", step="charge_payment")
    with pytest.raises(ValueError, match="during 'faulty' or 'recovery'"):
        OperatorAction(0, "retry", phase="later")
    with pytest.raises(ValueError, match="saga\\(s\\) #2 of a workload of 2 sagas"):
        FaultSchedule((), sagas=2, verbs=(OperatorAction(2, "pause"),))
    with pytest.raises(KeyError, match="verb"):
        OperatorAction.from_dict({"saga": 0, "action": "pause"})


def test_drawing_verbs_leaves_a_seeds_faults_and_workload_as_they_were() -> None:
    """A separate draw: a seed's faults, workload and restarts do not depend on whether
    operator stories are drawn, which add only stuck sagas' faults and faults at the points of
    verbs (drawn only with verbs: hit only while one is applied)."""
    for seed in range(30):
        options: dict[str, Any] = {"base": "multiprocTCPBase", "sagas": 6}
        plain = random_schedule(seed, **options, store="postgres", restarts=True)
        operated = random_schedule(seed, **options, store="postgres", restarts=True, verbs=3)
        assert plain.verbs == () and 3 <= len(operated.verbs)
        assert not {f.point for f in plain.faults} & set(VERB_POINTS)
        assert operated.faults[: len(plain.faults)] == plain.faults
        added = operated.faults[len(plain.faults) :]
        assert all(
            f.point in VERB_POINTS or (f.saga_id and f.saga_id.startswith("#") and f.persistent)
            for f in added
        )
        assert (plain.workload_seed, plain.restarts) == (
            operated.workload_seed,
            operated.restarts,
        )
    drawn = [random_schedule(seed, base="simpleSystemBase", sagas=6, verbs=3) for seed in range(60)]
    assert set(VERBS) == {a.verb for s in drawn for a in s.verbs}


def test_the_verb_points_are_swept_with_an_operator_story() -> None:
    swept = single_fault("host.before_verb", 2, base="simpleSystemBase", sagas=2)
    assert swept.verbs and swept.faults[-1] == Fault("host.before_verb", "raise", nth=2)
    assert {a.phase for a in swept.verbs} == {FAULTY, RECOVERY}
    assert () == single_fault("host.after_send", 2, base="simpleSystemBase", sagas=2).verbs


# --- what the runner does ---------------------------------------------------------------------


def test_verbs_are_carried_out_and_a_resolve_is_done_by_hand_first(tmp_path: Path) -> None:
    """The abandoned saga owes every step it ran; the resolve in the heal does the charge's
    refund by hand (the charge never applied: the participant's ledger writes its no-op and
    tombstone), then settles that debt; the rest stays owed, listed, and the saga parked."""
    runner = ChaosRunner(SlowRetries(), tmp_path)
    result = runner.run(ABANDON_AND_RESOLVE)
    assert result.ok, result.report
    abandon, resolve = [v for v in result.verbs if not v.diligent]
    assert (abandon.verb, abandon.outcome, abandon.phase) == ("abandon", "applied", FAULTY)
    assert (resolve.verb, resolve.outcome, resolve.step) == ("resolve", "applied", 2)
    assert {"abandon applied": 1, "resolve applied": 1} == dict(result.report.verbs)
    assert {"failed": 1, "completed": 2, "compensated": 1} == dict(result.report.statuses)
    assert 1 == Figures.of([result]).verbs["resolve applied"]
    assert "operator verbs: 2 (2 applied; abandon applied 1, resolve applied 1)" in list(
        Figures.of([result]).lines()
    )


def test_a_verb_that_finds_nothing_to_do_is_refused_or_not_sent(tmp_path: Path) -> None:
    """A cancel of a saga that completed is refused by its owner (an expected outcome); a
    skip of a saga at rest has no work to do by hand, so it is not sent."""
    runner = ChaosRunner(DemoScenario(), tmp_path)
    result = runner.run(
        FaultSchedule(
            (),
            sagas=2,
            verbs=(
                OperatorAction(1, "cancel", RECOVERY),
                OperatorAction(1, "skip", RECOVERY, after_seconds=0.1),
            ),
        )
    )
    assert result.ok, result.report
    cancel, skip = result.verbs
    assert (cancel.outcome, skip.outcome) == ("refused", NOT_SENT)
    assert "a finished saga is never changed" in cancel.detail
    assert "nothing is left to do by hand" in skip.detail


def test_the_diligent_operator_resumes_a_saga_left_paused(tmp_path: Path) -> None:
    runner = ChaosRunner(SlowRetries(), tmp_path)
    result = runner.run(schedule(OperatorAction(0, "pause", after_events=AT_CHARGE)))
    assert result.ok, result.report
    assert ["pause"] == applied(result)
    (resume,) = [v for v in result.verbs if v.diligent]
    assert ("resume", "applied", RECOVERY) == (resume.verb, resume.outcome, resume.phase)


# --- broken engines the checker catches ---------------------------------------------------------


@pytest.mark.parametrize(
    ("mutant", "planned", "rule"),
    [
        (CancelDropsCompensations, CANCEL, "cancel"),
        (ResolveDropsDebt, ABANDON_AND_RESOLVE, "debt"),
        (AppliesCommandsTwice, CANCEL, "verb-once"),
        (PauseStillSends, PAUSE, "paused"),
        (SkipLosesTheResult, SKIP, "skipped"),
    ],
    ids=[
        "cancel-drops-compensations",
        "resolve-drops-debt",
        "applied-twice",
        "pause-sends",
        "skip-loses-the-result",
    ],
)
def test_a_broken_verb_is_caught(
    tmp_path: Path, mutant: type, planned: FaultSchedule, rule: str
) -> None:
    """Each mutant is caught by the rule it breaks, and the same schedule passes with the real
    saga host, which applies every verb of it: the rule does not flag the verbs themselves."""
    caught = ChaosRunner(SlowRetries(), tmp_path / "mutant", host_class=mutant).run(planned)
    assert rule in rules(caught), caught.report
    assert caught.saved is not None
    assert planned.verbs == FaultSchedule.load(caught.saved).verbs  # replays with its verbs
    real = ChaosRunner(SlowRetries(), tmp_path / "real").run(planned)
    assert real.ok, real.report
    assert [action.verb for action in planned.verbs] == applied(real)


# --- seeded campaigns -------------------------------------------------------------------------


def _operated_campaign(results: list[RunResult]) -> None:
    """What a campaign with operators acting at random must have done to prove anything: many
    verbs applied, most of cancel, pause, retry and resolve among them, and some refused. (How
    many land on a saga still where they apply depends on timing: the bounds are loose.)"""
    verbs = Figures.of(results).verbs
    applied = sum(n for key, n in verbs.items() if key.endswith(" applied"))
    done = {key.split()[0] for key, n in verbs.items() if key.endswith(" applied") and n}
    assert applied >= 10 and len(done & {"cancel", "pause", "retry", "resolve"}) >= 3, verbs
    assert sum(n for key, n in verbs.items() if key.endswith(" refused")) >= 1, verbs


#: Runs of the in-process campaign with operators (at most; ``--understudy-runs`` is the
#: multi-process one's). Why a bound: in-process, a hang blocks every actor for its two seconds,
#: and the runs' hangs make ten runs take about a minute, the slowest test of its kind. Why
#: six: with seed 1 they apply about twenty verbs (cancel, pause, retry and resolve among them)
#: and refuse a few, twice what _operated_campaign asks for, and their schedules draw every
#: fault action and every verb the ten draw (at 17 of their 18 points: not host.send, which
#: the multi-process campaign draws); the multi-process campaign runs all ten, the PostgreSQL
#: one ten more, and the soak run all ten in-process (below) and a long campaign of a hundred
#: per base.
IN_PROCESS_RUNS = 6


def test_seeded_random_campaign_with_operators(
    chaos: Any, understudy_replay: Any, understudy_base: str
) -> None:
    harness = chaos(OperatedShop())
    if understudy_base == "simpleSystemBase":
        harness.runs = min(harness.runs, IN_PROCESS_RUNS)
    results = harness.campaign(sagas=8, verbs=3)
    if understudy_replay is None:
        _operated_campaign(results)


@pytest.mark.soak
@pytest.mark.parametrize("understudy_base", ["simpleSystemBase"])
def test_seeded_random_campaign_with_operators_every_run_in_process(
    chaos: Any, understudy_replay: Any, understudy_base: str
) -> None:
    """The in-process campaign without its bound: every ``--understudy-runs`` run."""
    results = chaos(OperatedShop()).campaign(sagas=8, verbs=3)
    if understudy_replay is None:
        _operated_campaign(results)


# On PostgreSQL one base is enough: the multi-process one, with real kills.
@pytest.mark.parametrize("understudy_base", ["multiprocTCPBase"])
def test_seeded_random_campaign_with_operators_on_postgres(
    chaos: Any, understudy_replay: Any, understudy_base: str, postgres_server: PostgresServer
) -> None:
    """With the server's own faults and, where the test server can be restarted, restarts."""
    restart = None
    if postgres_server.can_restart:
        restart = lambda: restart_server(postgres_server)  # noqa: E731
    harness = chaos(OperatedShop(), store=postgres_server.url, restart_server=restart)
    results = harness.campaign(sagas=8, verbs=3)
    if understudy_replay is None:
        _operated_campaign(results)
        assert all(r.schedule.store == "postgres" for r in results)


@pytest.mark.soak
def test_a_long_campaign_with_operators(chaos: Any) -> None:
    """A hundred runs of 20 sagas and 6 operator stories each (per base)."""
    for result in chaos(OperatedShop(), hosts=2).runner.campaign(7, 100, sagas=20, verbs=6):
        result.report.assert_ok(f"{result.schedule.describe()}\nsaved to {result.saved}")


# --- what the campaigns found -------------------------------------------------------------------

#: Found by a campaign (``campaign(5, 20, sagas=10, verbs=5)`` in-process, its run 16), cut down
#: to the faults and verbs it needs. A hang blocks every in-process actor for two seconds, during
#: which saga #1's compensation (after its cancel) times out and the chaos operator's resolve is
#: pending; after it the saga host handles the timeout (the saga owes the charge's refund as debt
#: and parks, staged in the batch, not committed yet) and then the command, on the saga still in
#: memory: the resolve applies, and is staged as a transition without ``reopen`` plus the
#: command's ``CommandDone``. The store refuses that transition (the row is terminal now) but
#: applies the ``CommandDone``: the command is marked applied while nothing of it happened (no
#: ``operator`` event, the debt still owed). [verb-once] catches it.
PARKED_IN_THE_SAME_BATCH = FaultSchedule(
    (
        Fault("host.send", "drop", nth=9),
        Fault("host.send", "drop", nth=22),
        Fault("host.send", "drop", nth=50),
        Fault("host.after_reply", "delay", nth=26, delay=0.2),
        Fault("host.after_verb", "delay", nth=23, delay=0.2),
        Fault("participant.after_apply", "hang", nth=54, delay=2.0),
        Fault("participant.before_apply", "raise", nth=3, persistent=True, saga_id="#4"),
        Fault("participant.after_apply", "raise", nth=3, persistent=True, saga_id="#1"),
        Fault("participant.after_apply", "raise", nth=2, persistent=True, saga_id="#3"),
    ),
    workload_seed=503242082,
    sagas=10,
    verbs=(
        OperatorAction(4, "retry", after_events=2),
        OperatorAction(1, "cancel", after_events=5),
        OperatorAction(1, "resolve", after_seconds=0.215),
    ),
    label="a verb applied to a saga parked in the same batch",
)


def test_a_verb_on_a_saga_parked_in_the_same_batch_is_applied_or_refused(tmp_path: Path) -> None:
    result = ChaosRunner(DemoScenario(), tmp_path).run(PARKED_IN_THE_SAME_BATCH)
    assert result.ok, result.report
