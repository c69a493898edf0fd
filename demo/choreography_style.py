"""``python -m demo --style choreography``: the orders as chains of events between reactors,
while reactor processes are SIGKILLed, then the ledger checks.

No saga and no coordinator in the order's way: each order is an ``order.placed`` event whose
correlation id is the order id, and Orders, Inventory and Payments react to one another's
events (:mod:`demo.reactors`). The shop publishes the orders in waves from plain code
(``Understudy.publish`` with a fixed event id, so that a publish sent again appends nothing);
on the multi-process base it kills a reactor's process now and then, the coordinator starts it
again, and the restarted reactor relays what it committed and takes up the events it had not
acknowledged. How far the run has got is read from the store's event log (each order's chain),
and the checks read only the reactors' SQLite files and the log (:mod:`demo.choreography_check`).
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from collections.abc import Callable
from contextlib import closing
from typing import TYPE_CHECKING, TextIO

from demo.check import Report
from demo.choreography_check import check_choreography
from demo.reactors import PLACED, placed_id, services
from demo.saga import PARTICIPANT_NAMES
from demo.workload import Order, make_orders, opening_stock
from understudy import MULTIPROC_TCP, Understudy
from understudy.chains import read_chain
from understudy.errors import UnderstudyError
from understudy.persistence import SagaStore, open_store, redact

if TYPE_CHECKING:
    from demo.run import Config, Progress, RunStats

TICK = 0.1  # how often the log is read for the done count
PROGRESS_EVERY = 0.5
STALL_SECONDS = 90.0  # give up waiting when no chain ends for this long


def run_choreography(config: Config, out: TextIO | None = None) -> int:
    """Run the choreographed demo; the exit status is 1 when any ledger check fails, 2 when
    the store given already holds chains."""
    # Imported when run: demo.run routes --style choreography here, and imports this module.
    from demo.run import Progress, RunStats

    out = out if out is not None else sys.stdout
    started = time.monotonic()
    orders = make_orders(config.orders, config.seed)
    stock = opening_stock(orders)
    progress = Progress(out)
    kills = config.kills
    if config.base != MULTIPROC_TCP and kills:
        progress.say(
            f"{config.base}: every actor runs inside this process, so there is no reactor "
            f"process to SIGKILL; skipping the {kills} planned kill(s)"
        )
        kills = 0
    progress.say(
        f"understudy demo: {len(orders)} orders (choreography: orders, inventory and payments "
        f"react to one another's events) on {config.base}, {kills} reactor kill(s), "
        f"seed {config.seed}"
    )
    progress.say(f"data directory: {config.directory}")
    location = config.store_location
    if config.store is not None:
        progress.say(f"saga store: {redact(config.store)}")
        with closing(open_store(location)) as fresh:
            if fresh.list_chains(1):
                progress.say(
                    f"the store {redact(config.store)} already holds chains; the demo checks "
                    "its ledgers against a store of its own: give it an empty database"
                )
                return 2
    runtime = Understudy.start(
        location, [], services(config.directory, stock), base=config.base, hosts=config.hosts
    )
    stats = RunStats()
    try:
        killer = ReactorKiller(runtime, kills, len(orders), config.seed, progress.say)
        with closing(open_store(location, read_only=True)) as store:
            drive(runtime, store, orders, config.wave, killer, progress, stats)
        killer.poll()
        stats.kills, stats.planned_kills = killer.kills, killer.planned
        stats.restarts_observed = killer.restarts_observed
    finally:
        runtime.shutdown()
    report = check_choreography(config.directory, orders, stock, location)
    print_summary(out, report, stats, time.monotonic() - started, len(orders))
    return 0 if report.passed else 1


def drive(
    runtime: Understudy,
    store: SagaStore,
    orders: list[Order],
    wave: int,
    killer: ReactorKiller,
    progress: Progress,
    stats: RunStats,
) -> None:
    """Publish every order, keeping about ``wave`` chains unfinished, kill reactors on the way,
    and return once the log shows every chain ended (or nothing ends any more)."""
    queue = list(reversed(orders))
    unfinished: set[str] = set()
    counts: dict[str, int] = {}
    published = 0
    t0 = last_change = time.monotonic()
    next_progress = t0
    while True:
        while queue and len(unfinished) < wave:
            order = queue[-1]
            try:
                runtime.publish(
                    PLACED, order.payload(), order.order_id, event_id=placed_id(order.order_id)
                )
            except UnderstudyError as exc:  # the store busy or away: the same publish later
                stats.resent += 1
                stats.rejected[order.order_id] = str(exc)
                break
            queue.pop()
            unfinished.add(order.order_id)
            published += 1
        if killer.due(published):
            killer.kill(len(unfinished))
        now = time.monotonic()
        for order_id in list(unfinished):
            chain = read_chain(store, order_id)
            if chain is not None and chain.terminal:
                unfinished.discard(order_id)
                counts[chain.status] = counts.get(chain.status, 0) + 1
                last_change = now
        done = sum(counts.values())
        if not queue and not unfinished:
            stats.elapsed = now - t0
            break
        if now - last_change > STALL_SECONDS:
            progress.say(f"no chain ended for {STALL_SECONDS:.0f} s; giving up waiting")
            stats.elapsed, stats.gave_up = now - t0, True
            break
        if killer.planned:
            killer.poll()
        # While a killed reactor is being replaced the coordinator logs it on stderr; holding
        # the progress line back keeps that log line from landing in the middle of it.
        if now >= next_progress and killer.awaiting is None:
            next_progress = now + PROGRESS_EVERY
            progress.line(status_line(now - t0, done, len(orders), counts, len(unfinished), killer))
        time.sleep(TICK)
    progress.line(status_line(stats.elapsed, done, len(orders), counts, 0, killer))
    progress.end()


def status_line(
    elapsed: float,
    done: int,
    total: int,
    counts: dict[str, int],
    in_flight: int,
    killer: ReactorKiller,
) -> str:
    return (
        f"[{elapsed:6.1f} s] {done}/{total} done | completed {counts.get('completed', 0)} | "
        f"compensated {counts.get('compensated', 0)} | failed {counts.get('failed', 0)} | "
        f"in flight {in_flight} | kills {killer.kills}/{killer.planned} | "
        f"reactor restarts {killer.restarts_observed}"
    )


def print_summary(out: TextIO, report: Report, stats: RunStats, wall: float, total: int) -> None:
    """The summary and the checks, as the orchestrated demo prints them, about chains."""
    w = out.write
    w("summary (read back from the reactors' SQLite files and the store's event log)\n")
    w(
        f"  chains: {sum(report.statuses.values())} | "
        + " | ".join(f"{s} {n}" for s, n in sorted(report.statuses.items()))
        + "\n"
    )
    for reason, count in report.reasons.most_common():
        w(f"  compensated because {reason}: {count}\n")
    w(f"  failed, needs attention: {len(report.attention)}\n")
    for order_id, reason in report.attention:
        w(f"    {order_id}: {reason}\n")
    rate = total / report.span if report.span > 0 else 0.0
    w(f"  throughput: {total} orders in {report.span:.2f} s = {rate:.1f} orders/s\n")
    w(
        f"  reactor kills: {stats.kills} | reactor restarts observed: {stats.restarts_observed} "
        f"| publishes retried: {stats.resent}\n"
    )
    if stats.kills < stats.planned_kills:
        w(
            f"  only {stats.kills} of {stats.planned_kills} planned kills happened: the run "
            "ended first (each kill waits until the last killed reactor is replaced)\n"
        )
    if stats.gave_up:
        w("  the run stopped waiting: chains were still unfinished when nothing moved\n")
    if report.example:
        w(f"  follow an order's chain with\n    understudy show {report.store} {report.example}\n")
    for check in report.checks:
        w(f"  {'PASS' if check.ok else 'FAIL'}  {check.name}: {check.detail}\n")
    failed = [c for c in report.checks if not c.ok]
    verdict = (
        f"ALL {len(report.checks)} CHECKS PASSED"
        if not failed
        else f"{len(failed)} OF {len(report.checks)} CHECKS FAILED"
    )
    w(f"{verdict} in {wall:.1f} s\n")
    out.flush()


class ReactorKiller:
    """SIGKILLs reactor processes at planned points of the run, one at a time: the next kill
    waits until the coordinator reports the killed reactor's new process."""

    def __init__(
        self, runtime: Understudy, kills: int, total: int, seed: int, say: Callable[[str], None]
    ) -> None:
        self.runtime = runtime
        self.say = say
        self.rng = random.Random(seed)
        # Spread evenly over the publishes, never at the very start or end.
        self.points = [(k + 1) * total // (kills + 1) for k in range(kills)]
        self.kills = 0
        self.restarts_observed = 0
        self.awaiting: tuple[str, int, float] | None = None  # reactor, old pid, killed at
        self.pids = self._pids()

    @property
    def planned(self) -> int:
        return len(self.points)

    def _pids(self) -> dict[str, int]:
        pids = self.runtime.hosts().participant_pids
        return {name: pids[name] for name in PARTICIPANT_NAMES if pids.get(name)}

    def due(self, published: int) -> bool:
        return (
            self.awaiting is None
            and self.kills < len(self.points)
            and published >= self.points[self.kills]
        )

    def kill(self, in_flight: int) -> None:
        """SIGKILL one reactor's process, chosen by the seed."""
        pids = self._pids()
        if not pids:
            return  # every reactor is starting: try again at the next turn
        name = self.rng.choice(sorted(pids))
        os.kill(pids[name], signal.SIGKILL)
        self.kills += 1
        self.awaiting = (name, pids[name], time.monotonic())
        self.say(
            f"kill {self.kills}/{len(self.points)}: SIGKILL reactor {name} (pid {pids[name]}) "
            f"with {in_flight} chain(s) in flight"
        )

    def poll(self) -> None:
        """Count each reactor whose pid changed as a restart; end the wait for a new one."""
        for name, pid in self._pids().items():
            before = self.pids.get(name)
            if before is not None and before != pid:
                self.restarts_observed += 1
                if self.awaiting is not None and self.awaiting[0] == name:
                    self.say(
                        f"reactor {name} is back as pid {pid} "
                        f"({time.monotonic() - self.awaiting[2]:.2f} s after the kill)"
                    )
                    self.awaiting = None
            self.pids[name] = pid
