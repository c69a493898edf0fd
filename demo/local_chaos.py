"""The crash campaign of the local style: SIGKILLs inside the order's transaction, run after run.

``python -m demo.local_chaos --seed S --runs R --orders N`` places N orders per run with worker
processes (:mod:`demo.local_workers`), SIGKILLs them at points drawn from the seed, restarts them
so that every order is placed or refused in the end, and then checks every run from the database
alone (:mod:`demo.local_check`). A kill lands:

- at a crash point of the order's transaction (:data:`demo.local_order.POINTS`): inside it before
  any write, after each step, after the last step before the COMMIT, around the COMMIT (a thread
  kills the worker a random fraction of a millisecond or so after the last step, so the kill
  falls before, during or after the COMMIT), after the COMMIT before the worker could report it,
  and after a refused order rolled back before its refusal was written;
- or ``anywhere``: the parent SIGKILLs the worker a random few milliseconds after it handed the
  order out, wherever it is then (waiting for the write lock, inside a statement, between orders).

Which attempt of which order gets which kill is a pure function of the seed, the run and the
order (not of which worker takes it first), so a seed replays the same schedule. Where a timed
kill falls within its window is up to the machine: the summary says which side of the COMMIT the
``in_commit`` kills fell on, judged by whether the retry found the order placed.

``--variant autocommit`` runs a deliberately broken order (each step its own transaction): the
checks must then report violations (tests/test_local_chaos.py). Exit status: 0 when every run of
the campaign passed every check, 1 otherwise.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import TextIO

import attrs

from demo.local_check import LocalReport, check_shop
from demo.local_db import Database, default_location
from demo.local_order import ALREADY, POINTS, VARIANTS
from demo.local_workers import SELF, TIMER, Fault, Pool, PoolStats
from demo.workload import make_orders, opening_stock

ANYWHERE = "anywhere"
#: The in_commit thread's delay after the last step, drawn in [0, COMMIT_WINDOW] seconds: about
#: what a COMMIT takes on a disk that syncs (a millisecond or a few), so kills fall on both sides.
COMMIT_WINDOW = 0.003
#: The parent's timer kills, drawn in [0, ANYWHERE_WINDOW] seconds after the order was sent.
ANYWHERE_WINDOW = 0.006


@attrs.frozen
class CampaignConfig:
    seed: int
    runs: int
    orders: int
    workers: int = 3
    kill_rate: float = 0.2  # the share of first attempts killed (of second attempts: half that)
    variant: str = "local"
    store: str | None = None  # a postgresql:// URL: each run in a schema of its own
    directory: Path | None = None  # where the runs' SQLite files go; a temporary one if None
    keep: bool = False  # keep the databases of passing runs too


class Schedule:
    """The kills of one run: attempt ``attempt`` at order ``index`` gets a fault drawn from
    ``(seed, run, index, attempt)`` alone."""

    def __init__(self, seed: int, run: int, kill_rate: float) -> None:
        self.seed, self.run, self.kill_rate = seed, run, kill_rate

    def __call__(self, index: int, attempt: int, kills: int) -> Fault | None:
        rng = random.Random(f"local-chaos/{self.seed}/{self.run}/{index}/{attempt}")
        # Retries are killed too, less often (a crash during recovery), and never a third time,
        # so that every order gets to the end.
        rate = {1: self.kill_rate, 2: self.kill_rate / 2}.get(attempt, 0.0)
        if rng.random() >= rate:
            return None
        point = rng.choice([*POINTS, ANYWHERE])
        if point == ANYWHERE:
            return Fault(ANYWHERE, TIMER, rng.uniform(0.0, ANYWHERE_WINDOW))
        if point == "in_commit":
            return Fault(point, SELF, rng.uniform(0.0, COMMIT_WINDOW))
        return Fault(point, SELF)


@attrs.frozen
class RunResult:
    run: int
    workload_seed: int
    orders: int
    stats: PoolStats
    report: LocalReport
    location: str

    @property
    def violations(self) -> int:
        return self.report.violations

    def violating_orders(self) -> set[str]:
        """The order ids the checks named (a sku's stock off names none)."""
        return {
            item.split(" ", 1)[0]
            for items in self.report.bad.values()
            for item in items
            if item.startswith("order-")
        }

    def killed_orders(self) -> dict[str, list[str]]:
        """Order id -> the points its attempts were killed at."""
        orders = make_orders(self.orders, self.workload_seed)
        return {orders[index].order_id: points for index, points in self.stats.killed.items()}


@attrs.define
class CampaignResult:
    config: CampaignConfig
    runs: list[RunResult] = attrs.field(factory=list)

    @property
    def violations(self) -> int:
        return sum(run.violations for run in self.runs)

    @property
    def orders(self) -> int:
        return sum(run.orders for run in self.runs)

    @property
    def kills(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for run in self.runs:
            total.update(run.stats.kills)
        return total


def run_campaign(config: CampaignConfig, out: TextIO | None = None) -> CampaignResult:
    """Every run of the campaign, each checked as soon as it ends; a summary at the end."""
    out = out if out is not None else sys.stdout
    root = config.directory or Path(tempfile.mkdtemp(prefix="understudy-local-chaos-"))
    root.mkdir(parents=True, exist_ok=True)
    kind = "PostgreSQL" if config.store else "SQLite"
    out.write(
        f"local-transaction crash campaign: seed {config.seed}, {config.runs} run(s) x "
        f"{config.orders} orders, variant {config.variant}, {config.workers} workers, {kind}, "
        f"kill rate {config.kill_rate:g}\n"
    )
    out.flush()
    result = CampaignResult(config)
    started = time.monotonic()
    for run in range(1, config.runs + 1):
        result.runs.append(_one_run(config, run, root))
        out.write(_run_line(result.runs[-1], config.runs) + "\n")
        out.flush()
    _summary(result, out, time.monotonic() - started)
    if not config.keep and config.directory is None and result.violations == 0:
        shutil.rmtree(root, ignore_errors=True)
    return result


def _one_run(config: CampaignConfig, run: int, root: Path) -> RunResult:
    workload_seed = random.Random(f"local-chaos/{config.seed}/{run}").randrange(1 << 30)
    orders = make_orders(config.orders, workload_seed)
    stock = opening_stock(orders)
    if config.store:
        # A schema name takes no minus sign: a negative seed's is spelled with an m.
        schema = f"local_chaos_{config.seed}_{run}".replace("-", "m")
        database = Database(config.store, schema=schema)
    else:
        directory = root / f"run-{run:04d}"
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        database = Database(default_location(directory))
    database.create(stock)
    pool = Pool(
        database,
        config.orders,
        workload_seed,
        config.workers,
        variant=config.variant,
        faults=Schedule(config.seed, run, config.kill_rate),
    )
    stats = pool.run()
    report = check_shop(database, orders, stock)
    if not database.postgres:
        # Kills in the middle of a COMMIT are the ones that could tear a file: SQLite's own
        # check of every page and index, on top of the shop's checks.
        with closing(database.connect()) as db:
            found = [row[0] for row in db.execute("PRAGMA integrity_check")]
        report.add("database file intact", [] if found == ["ok"] else found, "ok", "problems")
    if report.passed and not config.keep:
        if config.store:
            database.drop_schema()
        else:
            shutil.rmtree(Path(database.location).parent, ignore_errors=True)
    return RunResult(run, workload_seed, config.orders, stats, report, database.shown)


def _run_line(run: RunResult, runs: int) -> str:
    kinds = Counter(kind for kind, _reason in run.stats.outcomes.values())
    line = (
        f"run {run.run}/{runs}: {run.orders} orders (workload seed {run.workload_seed}) | placed "
        f"{run.report.placed} | refused {sum(run.report.refused.values())} | kills "
        f"{run.stats.total_kills} | retried {len(run.stats.killed)} (found placed "
        f"{run.stats.retry_outcomes[ALREADY]}) | violations {run.violations}"
    )
    if kinds.get("error") or run.stats.errors:
        line += f" | attempts failed with an error {len(run.stats.errors)}"
    if not run.report.passed:
        failed = "; ".join(f"{c.name}: {c.detail}" for c in run.report.checks if not c.ok)
        line += f"\n  FAIL {failed}\n  database kept: {run.location}"
    return line


def _summary(result: CampaignResult, out: TextIO, wall: float) -> None:
    w = out.write
    kills = result.kills
    retried: Counter[str] = Counter()
    landed = not_landed = 0
    unexpected = errors = gave_up = 0
    for run in result.runs:
        retried.update(run.stats.retry_outcomes)
        unexpected += len(run.stats.unexpected)
        errors += len(run.stats.errors)
        gave_up += len(run.stats.gave_up)
        for index, points in run.stats.killed.items():
            if "in_commit" in points:
                if run.stats.outcomes.get(index, ("", ""))[0] == ALREADY:
                    landed += 1
                else:
                    not_landed += 1
    by_check: Counter[str] = Counter()
    for run in result.runs:
        by_check.update({name: len(items) for name, items in run.report.bad.items()})
    w("summary (each run checked from its database alone)\n")
    w(
        f"  runs: {len(result.runs)} | orders: {result.orders} | kills: {sum(kills.values())} | "
        f"worker restarts: {sum(r.stats.restarts for r in result.runs)} | violations: "
        f"{result.violations}\n"
    )
    w("  kills by point: " + ", ".join(f"{p} {kills[p]}" for p in [*POINTS, ANYWHERE]) + "\n")
    w(
        f"  orders retried after a kill: {sum(len(r.stats.killed) for r in result.runs)} ("
        + ", ".join(f"{kind} {n}" for kind, n in sorted(retried.items()))
        + ")\n"
    )
    w(
        f"  in_commit kills: the COMMIT had landed for {landed} (the retry found the order), "
        f"not for {not_landed}\n"
    )
    if unexpected or errors or gave_up:
        w(
            f"  workers died unplanned: {unexpected} | attempts failed with an error: {errors} | "
            f"orders given up: {gave_up}\n"
        )
    for name, count in by_check.most_common():
        w(f"  violations of '{name}': {count}\n")
    verdict = "PASSED" if result.violations == 0 else "FAILED"
    w(
        f"CAMPAIGN {verdict}: {result.violations} violation(s) in {len(result.runs)} run(s), "
        f"{result.orders} orders, {sum(kills.values())} kills, in {wall:.1f} s\n"
    )
    out.flush()


def parse(argv: list[str] | None = None) -> CampaignConfig:
    parser = argparse.ArgumentParser(
        prog="python -m demo.local_chaos",
        description="SIGKILL the local style's order workers inside their transactions, run "
        "after run, and check from each run's database that every order was applied whole or "
        "not at all.",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the campaign (default 1)")
    parser.add_argument("--runs", type=int, default=10, help="runs (default 10)")
    parser.add_argument("--orders", type=int, default=200, help="orders per run (default 200)")
    parser.add_argument("--workers", type=int, default=3, help="worker processes (default 3)")
    parser.add_argument(
        "--kill-rate",
        type=float,
        default=0.2,
        help="share of orders whose first attempt is killed (default 0.2; retries: half)",
    )
    parser.add_argument(
        "--variant",
        choices=sorted(VARIANTS),
        default="local",
        help="local (the order as one transaction; the default) or autocommit (BROKEN on "
        "purpose: each step committed on its own; the checks must fail)",
    )
    parser.add_argument(
        "--store",
        default=None,
        help="a postgresql:// URL: each run's tables in a schema of their own there, "
        "local_chaos_SEED_RUN, made anew (default: a SQLite file per run)",
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="where the runs' SQLite files go (default: temp)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the databases of passing runs too"
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.orders < 1 or args.workers < 1:
        parser.error("--runs, --orders and --workers must be at least 1")
    if not 0.0 <= args.kill_rate <= 1.0:
        parser.error("--kill-rate is a share: between 0 and 1")
    return CampaignConfig(
        seed=args.seed,
        runs=args.runs,
        orders=args.orders,
        workers=args.workers,
        kill_rate=args.kill_rate,
        variant=args.variant,
        store=args.store,
        directory=args.dir.resolve() if args.dir else None,
        keep=args.keep,
    )


def main(argv: list[str] | None = None) -> int:
    return 0 if run_campaign(parse(argv)).violations == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
