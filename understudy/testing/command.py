"""``understudy chaos``: a long seeded fault campaign, with progress and figures at the end.

By default it runs the demo's order saga (``demo.chaos:scenario``, importable from a checkout of
understudy); ``--scenario module:attribute`` runs your own :class:`~understudy.testing.Scenario`.
Every run gets its own directory under ``--dir``; a run that breaks an invariant keeps its data
and saves its schedule there, and the exit status is 1.

``--store postgresql://...`` puts each run's saga store in a fresh database of that server
(dropped after a passing run, kept and named after a failing one) and draws the server's own
faults too; with ``--restart-command CMD`` (a command that restarts that server and returns once
it accepts connections, e.g. ``.ci/postgres restart DIR``) runs also restart the server mid-run.
``--verbs N`` draws N operator stories a run (operators' verbs on its sagas, carried out by the
runner) and the figures count the verbs applied, refused and not sent.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

from understudy.actors.system import IN_PROCESS, MULTIPROC_TCP
from understudy.errors import UnderstudyError
from understudy.persistence import redact
from understudy.testing import stores
from understudy.testing.runner import ChaosRunner, Figures, RunResult, Scenario
from understudy.testing.schedule import FaultSchedule
from understudy.testing.stores import command_restarter

DEFAULT_SCENARIO = "demo.chaos:scenario"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scenario",
        default=DEFAULT_SCENARIO,
        metavar="MODULE:ATTR",
        help="the Scenario to run (default: the demo's order saga, demo.chaos:scenario)",
    )
    parser.add_argument("--seed", type=int, default=1, help="campaign seed (default 1)")
    parser.add_argument("--runs", type=int, default=50, help="runs (default 50)")
    parser.add_argument("--sagas", type=int, default=20, help="sagas per run (default 20)")
    parser.add_argument(
        "--base",
        default=MULTIPROC_TCP,
        choices=(IN_PROCESS, MULTIPROC_TCP),
        help=f"actor system base (default {MULTIPROC_TCP}: real SIGKILLs)",
    )
    parser.add_argument("--hosts", type=int, default=2, help="saga hosts (default 2)")
    parser.add_argument(
        "--enable", type=float, default=0.3, help="chance a failpoint is armed in a run (0.3)"
    )
    parser.add_argument(
        "--fire", type=float, default=0.03, help="chance an armed failpoint fires per hit (0.03)"
    )
    parser.add_argument(
        "--verbs",
        type=int,
        default=0,
        metavar="N",
        help="operator stories drawn per run: operators cancel, pause, resume, retry, skip, "
        "resolve and abandon sagas as the run goes (default 0: none)",
    )
    parser.add_argument("--dir", help="where runs keep their data (default: a temporary directory)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the data of runs that passed, too"
    )
    parser.add_argument("--replay", metavar="FILE", help="replay one saved schedule and stop")
    parser.add_argument(
        "--store",
        metavar="URL",
        default=None,
        help="a PostgreSQL server's URL (postgresql://user@host:port/db, a role that may create "
        "databases): each run gets a fresh database there and the server's own faults are drawn "
        "(default: a SQLite file per run)",
    )
    parser.add_argument(
        "--restart-command",
        metavar="CMD",
        default=None,
        help="a command that restarts the --store server (e.g. '.ci/postgres restart DIR'): "
        "runs then also restart the server while sagas are in flight or recovering",
    )


def load_scenario(spec: str) -> Scenario:
    module_name, _, attribute = spec.partition(":")
    if not attribute:
        raise ValueError(f"--scenario must look like module:attribute, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as ``python -m`` would: scenarios of this project
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = (
            " (the demo ships in understudy's source tree: run from a checkout)"
            if module_name.startswith("demo")
            else ""
        )
        raise ValueError(f"cannot import scenario module {module_name!r}: {exc}{hint}") from exc
    scenario = getattr(module, attribute, None)
    if isinstance(scenario, type):
        scenario = scenario()
    if not isinstance(scenario, Scenario):
        raise ValueError(f"{spec} is not an understudy.testing.Scenario (got {scenario!r})")
    return scenario


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout  # looked up now: it may have been replaced
    try:
        replay = FaultSchedule.load(args.replay) if args.replay else None
        spec = args.scenario
        if replay is not None and spec == DEFAULT_SCENARIO:
            spec = replay.runner.get("scenario", spec)  # the scenario the run was saved from
        scenario = load_scenario(spec)
    except ValueError as exc:
        print(f"understudy: error: {exc}", file=sys.stderr)
        return 2
    if args.runs <= 0 or args.sagas <= 0 or args.verbs < 0:
        print(
            "understudy: error: --runs and --sagas must be greater than 0, --verbs at least 0",
            file=sys.stderr,
        )
        return 2
    try:
        stores.kind_of(args.store)
        restart = command_restarter(args.restart_command) if args.restart_command else None
    except ValueError as exc:
        print(f"understudy: error: {exc}", file=sys.stderr)
        return 2
    if restart is not None and args.store is None:
        print("understudy: error: --restart-command needs --store URL", file=sys.stderr)
        return 2
    directory = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="understudy-chaos-"))
    directory.mkdir(parents=True, exist_ok=True)
    runner = ChaosRunner(
        scenario,
        directory,
        base=args.base,
        hosts=args.hosts,
        scenario_path=spec,
        store=args.store,
        restart_server=restart,
        keep_stores=args.keep,
    )
    started = time.monotonic()
    results: list[RunResult] = []

    def progress(result: RunResult) -> None:
        results.append(result)
        figures = Figures.of(results)
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(result.fired_kinds().items()))
        print(
            f"[{time.monotonic() - started:7.1f} s] run {len(results)}/{total}: "
            f"{_started(result.sagas, result.chains)}, faults {kinds or 'none fired'}, recovery "
            f"{result.recovery_seconds:.2f} s | total {_started(figures.sagas, figures.chains)}, "
            f"{sum(figures.faults.values())} faults, {figures.violations} violations",
            file=out,
            flush=True,
        )
        if not result.ok:
            print(f"  VIOLATED {result.schedule.describe()}\n{result.report}", file=out)
            print(f"  saga store kept: {result.store}", file=out)
            print(f"  schedule saved to {result.saved}", file=out, flush=True)
        elif not args.keep:
            shutil.rmtree(result.directory, ignore_errors=True)

    if replay is not None:
        total = 1
        try:
            replayed = runner.run(replay, name="replay")
        except (ValueError, UnderstudyError) as exc:
            print(f"understudy: error: {exc}", file=sys.stderr)
            return 2
        progress(replayed)
    else:
        total = args.runs
        where = f"PostgreSQL {redact(args.store)}" if args.store else "SQLite"
        restarts = ", with server restarts" if restart is not None else ""
        verbs = f", {args.verbs} operator stories a run" if args.verbs else ""
        print(
            f"understudy chaos: {args.runs} runs of {args.sagas} sagas on {args.base} "
            f"({args.hosts} saga hosts), seed {args.seed}, saga store on {where}{restarts}"
            f"{verbs}; data in {directory}",
            file=out,
            flush=True,
        )
        runner.campaign(
            args.seed,
            args.runs,
            sagas=args.sagas,
            enable=args.enable,
            fire=args.fire,
            verbs=args.verbs,
            on_result=progress,
        )
    figures = Figures.of(results)
    print(f"\nchaos campaign finished in {time.monotonic() - started:.1f} s", file=out)
    for line in figures.lines():
        print(f"  {line}", file=out)
    out.flush()
    return 0 if figures.violations == 0 else 1


def _started(sagas: int, chains: int) -> str:
    """What a run (or the runs) started: sagas, chains or both."""
    parts = [f"{sagas} sagas"] if sagas or not chains else []
    return ", ".join([*parts, f"{chains} chains"] if chains else parts)
