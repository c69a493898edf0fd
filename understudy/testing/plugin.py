"""The pytest plugin: crash-test your sagas from your own test suite.

Installed with understudy (an entry point in the ``pytest11`` group), so its fixtures and
options are there as soon as understudy is. A test asks for ``chaos`` and gives it a
:class:`~understudy.testing.Scenario`; it runs on every base in ``--understudy-base`` (both the
in-process and the multi-process base unless told otherwise)::

    def test_my_saga_survives_every_crash(chaos):
        chaos(MyScenario()).exhaustive(sagas=2)

    def test_my_saga_under_random_faults(chaos):
        chaos(MyScenario()).campaign(sagas=10)

    def test_my_saga_with_operators_at_work(chaos):
        chaos(MyScenario()).campaign(sagas=10, verbs=3)  # operators' verbs, drawn at random

Options:

- ``--understudy-seed N``: the campaign's seed (default 1: the same faults on every run of the
  suite; change it to explore);
- ``--understudy-runs N``: runs per campaign (default 10);
- ``--understudy-replay FILE``: campaigns replay this saved schedule instead of drawing runs;
- ``--understudy-base NAME``: the actor system base(s) to run on (repeatable);
- ``--understudy-store URL``: run the saga store on this PostgreSQL server (a fresh database per
  run) instead of a SQLite file per run, and draw the server's own faults;
- ``--understudy-restart-command CMD``: a command that restarts that server (e.g.
  ``.ci/postgres restart DIR``): campaigns then restart it mid-run too.

A failing run saves its schedule (faults and workload) as JSON under pytest's cache directory
and the failure message says how to replay it.

Fixtures: ``chaos`` (the runner factory: real actor systems, a fresh store and ledgers per run,
the checker), ``fault_schedule`` (drawn from the seed, or the replayed one), ``saga_checker``,
``understudy_seed``, ``understudy_runs``, ``understudy_replay`` and ``understudy_store`` (a
fresh SQLite store path); a test that names ``understudy_base`` is parametrized over the bases.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from understudy.actors.system import IN_PROCESS, MULTIPROC_TCP
from understudy.testing.checker import InvariantViolation, Report, check
from understudy.testing.runner import ChaosRunner, RunResult, Scenario
from understudy.testing.schedule import FaultSchedule, random_schedule
from understudy.testing.stores import command_restarter

DEFAULT_BASES = (IN_PROCESS, MULTIPROC_TCP)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("understudy", "understudy crash-injection harness")
    group.addoption("--understudy-seed", type=int, default=1, help="campaign seed (default 1)")
    group.addoption(
        "--understudy-runs", type=int, default=10, help="runs per campaign (default 10)"
    )
    group.addoption(
        "--understudy-replay",
        metavar="FILE",
        default=None,
        help="replay this saved fault schedule instead of drawing campaign runs",
    )
    group.addoption(
        "--understudy-store",
        metavar="URL",
        default=None,
        help="a PostgreSQL server URL: chaos runs keep their saga store in a fresh database "
        "there (default: a SQLite file per run)",
    )
    group.addoption(
        "--understudy-restart-command",
        metavar="CMD",
        default=None,
        help="a command that restarts the --understudy-store server: campaigns restart it mid-run",
    )
    group.addoption(
        "--understudy-base",
        action="append",
        default=None,
        help=f"actor system base to run chaos tests on (repeatable; default: "
        f"{', '.join(DEFAULT_BASES)})",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "understudy_chaos: a crash-injection test run by understudy's harness"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    named = any(
        "understudy_base" in str(marker.args[0]).replace(" ", "").split(",")
        for marker in metafunc.definition.iter_markers("parametrize")
        if marker.args
    )
    if "understudy_base" in metafunc.fixturenames and not named:  # a test may name its bases
        bases = metafunc.config.getoption("understudy_base") or list(DEFAULT_BASES)
        metafunc.parametrize("understudy_base", bases, scope="function")


@pytest.fixture
def understudy_seed(request: pytest.FixtureRequest) -> int:
    return int(request.config.getoption("understudy_seed"))


@pytest.fixture
def understudy_runs(request: pytest.FixtureRequest) -> int:
    return int(request.config.getoption("understudy_runs"))


@pytest.fixture
def understudy_replay(request: pytest.FixtureRequest) -> FaultSchedule | None:
    path = request.config.getoption("understudy_replay")
    return FaultSchedule.load(path) if path else None


@pytest.fixture
def understudy_store(tmp_path: Path) -> Path:
    """The path of a fresh SQLite saga store (created by the first ``Understudy.start``)."""
    return tmp_path / "sagas.db"


@pytest.fixture
def fault_schedule(
    understudy_base: str, understudy_seed: int, understudy_replay: FaultSchedule | None
) -> FaultSchedule:
    """The ``--understudy-replay`` schedule, or one drawn from ``--understudy-seed`` for this
    test's base (10 sagas): pass it to ``chaos(scenario).run(...)``."""
    if understudy_replay is not None:
        return understudy_replay
    return random_schedule(understudy_seed, base=understudy_base, sagas=10)


@pytest.fixture
def saga_checker() -> Callable[..., Report]:
    """:func:`understudy.testing.check`: judge a run's files (a :class:`RunView`) yourself."""
    return check


class Chaos:
    """A :class:`ChaosRunner` whose modes fail the test on any violated invariant."""

    def __init__(
        self,
        runner: ChaosRunner,
        seed: int,
        runs: int,
        replay: FaultSchedule | None,
        nodeid: str,
    ) -> None:
        self.runner = runner
        self.seed = seed
        self.runs = runs
        self.replay = replay
        self.nodeid = nodeid

    def exhaustive(
        self, sagas: int = 2, persistent: bool | None = None, **options: Any
    ) -> list[RunResult]:
        """Single crashes at every hit of every point, then persistent ones (only one kind
        when ``persistent`` is given); fail on the first run that breaks an invariant. With
        ``--understudy-replay``, only the replayed run."""
        if self.replay is not None:
            return [self._replay()]
        results = []
        for kind in (False, True) if persistent is None else (persistent,):
            results += self.runner.exhaustive(
                sagas=sagas, persistent=kind, on_result=self._verdict, **options
            )
        return results

    def campaign(self, sagas: int = 10, **options: Any) -> list[RunResult]:
        """``--understudy-runs`` seeded random runs (or the ``--understudy-replay`` one)."""
        if self.replay is not None:
            return [self._replay()]
        return self.runner.campaign(
            self.seed, self.runs, sagas=sagas, on_result=self._verdict, **options
        )

    def run(self, schedule: FaultSchedule) -> RunResult:
        """Run one schedule (or, with ``--understudy-replay``, the replayed one)."""
        if self.replay is not None:
            return self._replay()
        result = self.runner.run(schedule)
        self._verdict(result)
        return result

    def _replay(self) -> RunResult:
        assert self.replay is not None
        result = self.runner.run(self.replay, name="replay")
        self._verdict(result)
        return result

    def _verdict(self, result: RunResult) -> None:
        if result.ok:
            return
        raise InvariantViolation(
            f"{result.schedule.describe()}\n{result.report}\n"
            f"run data: {result.directory}\n"
            f"saga store (kept): {result.store}\n"
            f"schedule saved to {result.saved}; replay it with:\n"
            f"  pytest --understudy-replay {result.saved} "
            f"--understudy-base {result.schedule.base} '{self.nodeid}'"
        )


@pytest.fixture
def chaos(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    understudy_base: str,
    understudy_seed: int,
    understudy_runs: int,
    understudy_replay: FaultSchedule | None,
) -> Callable[..., Chaos]:
    """``chaos(scenario, **runner_options)``: a harness for ``scenario`` on this test's base."""
    cache = getattr(request.config, "cache", None)
    failures = cache.mkdir("understudy-schedules") if cache is not None else tmp_path
    # One folder per test (and base): failures of different tests never overwrite each other.
    failures = failures / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)

    runners = itertools.count(1)  # one directory per chaos() call in this test

    store = request.config.getoption("understudy_store")
    command = request.config.getoption("understudy_restart_command")

    def make(scenario: Scenario, **options: Any) -> Chaos:
        """``options`` go to :class:`ChaosRunner`: ``store`` (a PostgreSQL server URL, or None
        for a SQLite file per run) and ``restart_server`` (a callable that restarts it) among
        them."""
        options.setdefault("base", understudy_base)
        options.setdefault("failures", failures)
        if store is not None:
            options.setdefault("store", store)
        if command is not None and options.get("store") is not None:
            options.setdefault("restart_server", command_restarter(command))
        if understudy_replay is not None and understudy_replay.base != options["base"]:
            pytest.skip(f"the replayed schedule runs on {understudy_replay.base}")
        runner = ChaosRunner(scenario, tmp_path / f"chaos-{next(runners)}", **options)
        return Chaos(
            runner, understudy_seed, understudy_runs, understudy_replay, request.node.nodeid
        )

    return make
