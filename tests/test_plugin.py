"""The pytest plugin (``understudy.testing.plugin``) and the user guide's example, run by pytest.

Every test writes a test module into a fresh directory and runs pytest on it in a subprocess (the
plugin is installed through its ``pytest11`` entry point, so it is active there as in a user's
project): the multi-process base and the modules its actors import behave as they would there.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from understudy.testing import FaultSchedule

DOCS = Path(__file__).resolve().parent.parent / "docs" / "testing.md"
IN_PROCESS = "simpleSystemBase"
MULTIPROC = "multiprocTCPBase"
TIMEOUT = 240  # seconds for one inner pytest run: a hung run fails instead of blocking the suite

# A stock move: take units off a shelf, pack them in a box (refused for fragile goods, so half
# the sagas compensate). ``LeakyStock`` is a genuinely wrong participant: its compensation
# records itself but never puts the units back, which only the domain invariant can see.
STOCK = """
import random
from pathlib import Path

from understudy import Participant, Reject, RetryPolicy, SagaDefinition, Step, action, compensation
from understudy.testing import RunView, SagaStart, Scenario

FAST = RetryPolicy(attempts=4, backoff=0.05, max_backoff=0.5)
MOVE = SagaDefinition(
    "move",
    1,
    [
        Step("take", "shelf", "take", "put_back", retry=FAST, compensation_retry=FAST, timeout=1),
        Step("pack", "box", "pack", "unpack", retry=FAST, compensation_retry=FAST, timeout=1),
    ],
)
OPENING = {"shelf": 100, "box": 0}


class Stock(Participant):
    def setup(self, db, options):
        db.execute("CREATE TABLE IF NOT EXISTS stock (id INTEGER PRIMARY KEY, units INTEGER)")
        db.execute("INSERT OR IGNORE INTO stock VALUES (1, ?)", (options["units"],))

    def _add(self, db, units):
        db.execute("UPDATE stock SET units = units + ?", (units,))

    @action("take")
    def take(self, step, db):
        self._add(db, -step.payload["units"])

    @compensation("put_back")
    def put_back(self, step, db):
        self._add(db, step.payload["units"])

    @action("pack")
    def pack(self, step, db):
        if step.payload["fragile"]:
            raise Reject("no fragile goods in this box")
        self._add(db, step.payload["units"])

    @compensation("unpack")
    def unpack(self, step, db):
        self._add(db, -step.payload["units"])


class LeakyStock(Stock):
    def put_back(self, step, db):
        pass  # the bug: the units taken off the shelf never go back


def stock_is_conserved(view: RunView) -> list[str]:
    if any(r.status == "failed" for r in view.records().values()):
        return []
    total = 0
    for name in OPENING:
        with view.connect(name) as db:
            total += db.execute("SELECT units FROM stock").fetchone()[0]
    expected = sum(OPENING.values())
    return [] if total == expected else [f"{total} units in stock, not {expected}"]


class Moves(Scenario):
    definitions = (MOVE,)

    def __init__(self, participant=Stock):
        self.participant = participant

    def participants(self, directory: Path, sagas):
        return [
            (name, self.participant, {"database": str(directory / f"{name}.db"), "units": units})
            for name, units in OPENING.items()
        ]

    def workload(self, rng: random.Random, count: int):
        return [
            SagaStart(f"move-{i}", "move", {"units": rng.randint(1, 9), "fragile": i % 2 == 1})
            for i in range(count)
        ]

    def invariants(self):
        return [stock_is_conserved]


def test_leaky_campaign(chaos):
    chaos(Moves(LeakyStock)).campaign(sagas=2, actions=["delay"])


def test_leaky_exhaustive(chaos):
    chaos(Moves(LeakyStock)).exhaustive(
        sagas=2, persistent=False, points=["coordinator.before_route"]
    )


def test_drawn(chaos):
    results = chaos(Moves()).campaign(sagas=2, actions=["delay"])
    Path("drawn.txt").write_text("".join(r.schedule.describe() + "\\n" for r in results))
"""


def docs_examples() -> list[str]:
    """The user guide's ```python blocks, each a complete test module: the one to copy, then
    the operators' one (which imports the first as ``test_transfer_saga``)."""
    return re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.DOTALL)


def docs_example() -> str:
    """The user guide's test module to copy."""
    first, _operators = docs_examples()
    return first


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*args, timeout=TIMEOUT)


def message(result: pytest.RunResult) -> str:
    """The failure messages (``E`` lines; the source pytest shows around them is left out)."""
    return "\n".join(line for line in result.outlines if line.startswith("E "))


def violation_lines(result: pytest.RunResult) -> list[str]:
    """The failure message's lines that name the schedule, the summary and each violation."""
    return re.findall(
        r"^E\s+(.*(?:InvariantViolation: |invariant violation\(s\) in ).*|\[[\w-]+\] .*)$",
        message(result),
        re.MULTILINE,
    )


def saved_schedules(result: pytest.RunResult) -> list[str]:
    return re.findall(r"^E\s+schedule saved to (\S+); replay it with:$", message(result), re.M)


def run_directories(result: pytest.RunResult) -> list[str]:
    return re.findall(r"^E\s+run data: (\S+)$", message(result), re.MULTILINE)


# --- the user guide's example ---------------------------------------------------------------


@pytest.mark.soak
@pytest.mark.timeout(900)
def test_the_docs_example_passes_as_written(pytester: pytest.Pytester) -> None:
    """Both tests of the guide pass in-process. Left out of the default run: the exhaustive
    test makes 126 runs, four of which (persistent raises at ``host.before_commit`` and
    ``store.in_transaction``) last the whole 30 s faulty-phase window, ~3 minutes in all."""
    pytester.makepyfile(test_transfer_saga=docs_example())
    result = pytester.runpytest_subprocess(
        "--understudy-base", IN_PROCESS, "--understudy-runs", "2", timeout=800
    )
    result.assert_outcomes(passed=2)


def test_the_docs_example_collects_both_tests_and_its_campaign_passes(
    pytester: pytest.Pytester,
) -> None:
    """The quick part of the guide's example in-process: both tests on both bases by default,
    and the seeded campaign passes."""
    pytester.makepyfile(test_transfer_saga=docs_example())
    collected = run(pytester, "--collect-only", "-q")
    collected.stdout.fnmatch_lines(
        [
            f"test_transfer_saga.py::test_transfers_survive_every_single_crash[{IN_PROCESS}]",
            f"test_transfer_saga.py::test_transfers_survive_every_single_crash[{MULTIPROC}]",
            f"test_transfer_saga.py::test_transfers_under_random_faults[{IN_PROCESS}]",
            f"test_transfer_saga.py::test_transfers_under_random_faults[{MULTIPROC}]",
        ]
    )
    result = run(
        pytester, "--understudy-base", IN_PROCESS, "--understudy-runs", "2", "-k", "random"
    )
    result.assert_outcomes(passed=1, deselected=1)


def test_the_docs_operators_example_passes(pytester: pytest.Pytester) -> None:
    """The guide's operators' example, beside the module it imports, in-process: the
    hand-written schedule's verbs are carried out, and the campaign with verbs passes."""
    first, operators = docs_examples()
    pytester.makepyfile(test_transfer_saga=first, test_operators=operators)
    result = run(
        pytester, "--understudy-base", IN_PROCESS, "--understudy-runs", "2", "test_operators.py"
    )
    result.assert_outcomes(passed=2)


@pytest.mark.multiproc
def test_the_docs_example_campaign_passes_on_the_multiprocess_base(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_transfer_saga=docs_example())
    result = run(pytester, "--understudy-base", MULTIPROC, "--understudy-runs", "2", "-k", "random")
    result.assert_outcomes(passed=1, deselected=1)


# --- failures and replay --------------------------------------------------------------------


def test_a_failing_run_prints_a_saved_schedule_that_replays_it(pytester: pytest.Pytester) -> None:
    """A participant whose compensation does nothing is caught by the domain invariant; the
    failure names the schedule file (under the pytest cache, as the guide says) and the
    command that replays it, and the replay is one run that fails the same way."""
    pytester.makepyfile(test_stock=STOCK)
    nodeid = f"test_stock.py::test_leaky_campaign[{IN_PROCESS}]"
    first = run(pytester, "--understudy-base", IN_PROCESS, "--understudy-runs", "1", nodeid)
    first.assert_outcomes(failed=1)
    output = message(first)
    assert "replay it with" in output
    assert "[domain] stock_is_conserved: " in output
    (directory,) = run_directories(first)
    assert ["seed1-run00000"] == [path.name for path in Path(directory).parent.iterdir()]
    (saved,) = saved_schedules(first)
    # One folder per test under pytest's cache, so failures never overwrite each other.
    assert pytester.path / ".pytest_cache" / "d" / "understudy-schedules" == (
        Path(saved).parent.parent
    )
    schedule = FaultSchedule.load(saved)
    assert (IN_PROCESS, 2, "campaign seed 1 run 0") == (
        schedule.base,
        schedule.sagas,
        schedule.label,
    )
    assert all(fault.action == "delay" for fault in schedule.faults)
    assert f"pytest --understudy-replay {saved} --understudy-base {IN_PROCESS} '{nodeid}'" in output

    again = run(pytester, "--understudy-replay", saved, "--understudy-base", IN_PROCESS, nodeid)
    again.assert_outcomes(failed=1)
    (directory,) = run_directories(again)
    assert ["replay"] == [path.name for path in Path(directory).parent.iterdir()]
    assert violation_lines(first) == violation_lines(again)
    assert any("[domain] stock_is_conserved: " in line for line in violation_lines(again))
    (resaved,) = saved_schedules(again)
    assert schedule == FaultSchedule.load(resaved)


def test_a_replay_skips_the_bases_it_was_not_recorded_on(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_stock=STOCK)
    saved = FaultSchedule((), sagas=2, base=IN_PROCESS).save(pytester.path / "hand.json")
    result = run(pytester, "--understudy-replay", str(saved), "--understudy-base", MULTIPROC, "-rs")
    result.assert_outcomes(skipped=3)
    result.stdout.fnmatch_lines([f"*the replayed schedule runs on {IN_PROCESS}*"])


@pytest.mark.multiproc
def test_each_failure_keeps_its_own_schedule(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_stock=STOCK)
    result = run(pytester, "--understudy-runs", "1", "-k", "leaky_campaign")
    result.assert_outcomes(failed=2, deselected=4)
    saved = saved_schedules(result)
    assert 2 == len(saved)
    assert 2 == len(set(saved)), f"both failures saved to {saved[0]}"


def test_an_exhaustive_failure_replays_its_schedule(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_stock=STOCK)
    nodeid = f"test_stock.py::test_leaky_exhaustive[{IN_PROCESS}]"
    first = run(pytester, "--understudy-base", IN_PROCESS, nodeid)
    first.assert_outcomes(failed=1)
    (saved,) = saved_schedules(first)
    again = run(pytester, "--understudy-replay", saved, "--understudy-base", IN_PROCESS, nodeid)
    again.assert_outcomes(failed=1)
    (directory,) = run_directories(again)
    assert "replay" == Path(directory).name


# --- options --------------------------------------------------------------------------------


def drawn(pytester: pytest.Pytester, *options: str) -> list[str]:
    """What each run of a two-run campaign describes: its faults and its workload."""
    nodeid = f"test_stock.py::test_drawn[{IN_PROCESS}]"
    result = run(
        pytester, "--understudy-base", IN_PROCESS, "--understudy-runs", "2", *options, nodeid
    )
    result.assert_outcomes(passed=1)
    return (pytester.path / "drawn.txt").read_text().splitlines()


def test_the_seed_option_picks_the_campaign_schedules(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_stock=STOCK)
    default = drawn(pytester)
    assert 2 == len(default)
    assert default[0].startswith("campaign seed 1 run 0: ")
    assert default[1].startswith("campaign seed 1 run 1: ")
    assert default == drawn(pytester, "--understudy-seed", "1")  # the default, and repeatable
    other = drawn(pytester, "--understudy-seed", "7")
    assert other[0].startswith("campaign seed 7 run 0: ")

    def unlabelled(lines: list[str]) -> list[str]:
        return [line.split(": ", 1)[1] for line in lines]

    assert unlabelled(default) != unlabelled(other)
    assert not set(unlabelled(default)) & set(unlabelled(other))


def collected(pytester: pytest.Pytester, *options: str) -> list[str]:
    result = run(pytester, "--collect-only", "-q", *options, "test_stock.py::test_drawn")
    return [line for line in result.outlines if line.startswith("test_stock.py::")]


def test_the_base_option_restricts_the_parametrization(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_stock=STOCK)
    test = "test_stock.py::test_drawn"
    assert [f"{test}[{IN_PROCESS}]", f"{test}[{MULTIPROC}]"] == collected(pytester)
    assert [f"{test}[{IN_PROCESS}]"] == collected(pytester, "--understudy-base", IN_PROCESS)
    assert [f"{test}[{MULTIPROC}]", f"{test}[{IN_PROCESS}]"] == collected(
        pytester, "--understudy-base", MULTIPROC, "--understudy-base", IN_PROCESS
    )


def test_help_lists_the_options(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--help")
    assert 0 == result.ret
    text = " ".join(result.stdout.str().split())  # whatever the terminal's width wrapped
    for entry in [
        "understudy crash-injection harness: --understudy-seed=",
        "--understudy-seed=UNDERSTUDY_SEED campaign seed (default 1)",
        "--understudy-runs=UNDERSTUDY_RUNS runs per campaign (default 10)",
        "--understudy-replay=FILE replay this saved fault schedule instead of drawing campaign "
        "runs",
        "--understudy-base=UNDERSTUDY_BASE actor system base to run chaos tests on (repeatable; "
        f"default: {IN_PROCESS}, {MULTIPROC})",
    ]:
        assert entry in text


def test_the_fixtures_are_listed(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--fixtures")
    assert 0 == result.ret
    result.stdout.fnmatch_lines_random(
        [
            "chaos -- *plugin.py:*",
            "understudy_seed -- *",
            "understudy_runs -- *",
            "understudy_replay -- *",
            "understudy_store -- *",
        ]
    )
