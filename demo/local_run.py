"""``python -m demo --style local``: the seed's order as one local transaction per order.

No saga: the orders, the stock and the payments share one database (``shop.db`` in the data
directory, or the PostgreSQL database ``--store`` names), so one transaction holds each order
whole, as the seed's decision table prefers whenever one database suffices. Worker processes
place the orders; ``--kills N`` SIGKILLs a worker N times, each time while it holds an order at a
point of its transaction (after a step, before the COMMIT, or just after it), and a new worker
takes its place and places that order again. The checks then read the database alone: every
order applied whole or not at all, stock conserved, nobody charged twice, refusals kept nothing.
"""

from __future__ import annotations

import random
import sys
import time
from typing import TYPE_CHECKING, TextIO

from demo.local_check import check_shop
from demo.local_db import Database, NotEmpty, default_location
from demo.local_order import ALREADY, PLACED, REFUSED
from demo.local_workers import HOLD, Fault, Pool, PoolStats
from demo.workload import make_orders, opening_stock

if TYPE_CHECKING:
    from demo.run import Config

#: Worker processes placing orders: more than the cores of a small machine, so that a kill always
#: finds others at work.
WORKERS = 3
#: Where the demo's kills land: each of them leaves something different to get right.
KILL_POINTS = ("after_order", "after_stock", "after_payment", "after_commit")


class DemoKills:
    """The demo's kills, spread evenly over the orders handed out: at each planned point the next
    order handed out is held at a crash point drawn from the seed, and its worker SIGKILLed
    there. An order refused before it reached the point is not killed; the next one is."""

    def __init__(self, kills: int, total: int, seed: int) -> None:
        self.points = [(k + 1) * total // (kills + 1) for k in range(kills)]
        self.rng = random.Random(seed)
        self.handed_out = 0

    @property
    def planned(self) -> int:
        return len(self.points)

    def __call__(self, index: int, attempt: int, kills: int) -> Fault | None:
        self.handed_out += 1
        due = sum(1 for point in self.points if point < self.handed_out)
        if attempt > 1 or due <= kills:
            return None
        return Fault(self.rng.choice(KILL_POINTS), HOLD)


def run_local_demo(config: Config, out: TextIO | None = None) -> int:
    """The local style of the demo; the exit status is 1 when a check fails, 2 when the database
    already holds the demo's tables."""
    out = out if out is not None else sys.stdout
    from demo.run import Progress  # demo.run routes here: imported late to avoid a cycle

    started = time.monotonic()
    orders = make_orders(config.orders, config.seed)
    stock = opening_stock(orders)
    database = Database(config.store or default_location(config.directory))
    progress = Progress(out)
    progress.say(
        f"understudy demo: {len(orders)} orders (local: one transaction each, no saga) placed "
        f"by {WORKERS} worker processes, {config.kills} worker kill(s), seed {config.seed}"
    )
    progress.say(f"data directory: {config.directory}")
    progress.say(f"the shop's one database (orders, stock, payments): {database.shown}")
    try:
        database.create(stock)
    except NotEmpty as refused:
        progress.say(str(refused))
        return 2
    kills = DemoKills(config.kills, len(orders), config.seed)
    pool = Pool(
        database,
        len(orders),
        config.seed,
        WORKERS,
        faults=kills,
        say=progress.say,
        planned_kills=kills.planned,
    )
    t0 = time.monotonic()

    def show(stats: PoolStats, done: int) -> None:
        progress.line(_status(time.monotonic() - t0, stats, done, len(orders), kills))

    stats = pool.run(show)
    show(stats, len(stats.outcomes))
    progress.end()
    report = check_shop(database, orders, stock)
    report.print(out, stats, time.monotonic() - started)
    if stats.total_kills < kills.planned:
        out.write(
            f"(only {stats.total_kills} of {kills.planned} planned kills happened: the orders "
            "ran out first)\n"
        )
    return 0 if report.passed else 1


def _status(elapsed: float, stats: PoolStats, done: int, total: int, kills: DemoKills) -> str:
    kinds = [kind for kind, _reason in stats.outcomes.values()]
    return (
        f"[{elapsed:6.1f} s] {done}/{total} done | placed "
        f"{kinds.count(PLACED) + kinds.count(ALREADY)} | refused {kinds.count(REFUSED)} | "
        f"kills {stats.total_kills}/{kills.planned} | worker restarts {stats.restarts}"
    )
