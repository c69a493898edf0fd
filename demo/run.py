"""The demo run: start understudy, submit the orders in waves, crash hosts, then check.

Orders go out in waves through ``submit_future`` so that many sagas are in flight at once (that
is what the host's group commit and the crashes need). How far the run has got is read from the
saga store, not from the futures: a caller's reply can be lost in a crash while the saga itself
is safe on disk, and the store is what a real application would trust. A start that never
reached the store (it was on its way to a host that died) is sent again: starts are idempotent
by saga id, so resending is always safe.
"""

from __future__ import annotations

import concurrent.futures
import sys
import time
from collections import deque
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any, TextIO

import attrs

from demo.check import TERMINAL, check_ledgers
from demo.choreography_style import run_choreography
from demo.crash import HostKiller
from demo.local_run import run_local_demo
from demo.participants import Inventory, Orders, Payments
from demo.saga import INVENTORY, ORDERS, PAYMENTS, STYLES
from demo.workload import Order, make_orders, opening_stock
from understudy import MULTIPROC_TCP, SagaFinished, Understudy
from understudy.persistence import SagaStore, open_store, redact

TICK = 0.1  # how often the store is read for the done count
PROGRESS_EVERY = 0.5
LOST_AFTER = 3.0  # seconds without a saga row before a start counts as lost and is resent
MAX_RESENDS = 5
STALL_SECONDS = 90.0  # give up waiting when nothing finishes for this long


@attrs.frozen
class Config:
    """What ``python -m demo`` was asked to do."""

    directory: Path
    orders: int = 300
    kills: int = 3
    seed: int = 7
    base: str = MULTIPROC_TCP
    hosts: int = 2
    wave: int = 40
    store: str | None = None  # a saga store URL; default: sagas.db in the directory
    style: str = "orchestrated"  # a key of demo.saga.STYLES, or "local" (demo.local_run)

    @property
    def store_location(self) -> str:
        return self.store or str(self.directory / "sagas.db")


@attrs.define
class RunStats:
    """What the run observed while it drove the workload (the check does not rely on it)."""

    elapsed: float = 0.0
    kills: int = 0
    planned_kills: int = 0
    restarts_observed: int = 0
    coordinator_restarts: int = 0
    resent: int = 0
    rejected: dict[str, str] = attrs.field(factory=dict)
    gave_up: bool = False


class Progress:
    """One updating line on a terminal, or one line per update when the output is a pipe."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.open = False

    def line(self, text: str) -> None:
        if self.tty:
            self.out.write("\r\033[K" + text)
            self.open = True
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def end(self) -> None:
        """Keep the last progress line and leave a blank line under it."""
        self.out.write("\n\n" if self.open else "\n")
        self.open = False
        self.out.flush()

    def say(self, text: str) -> None:
        """A message that stays (a kill, a restart), printed above the progress line."""
        if self.open:
            self.out.write("\r\033[K")
            self.open = False
        self.out.write(text + "\n")
        self.out.flush()


def participants(directory: Path, stock: dict[str, int]) -> list[tuple[str, type, dict[str, Any]]]:
    """Each participant keeps its ledger in its own SQLite file, as separate services would."""
    return [
        (ORDERS, Orders, {"database": str(directory / "orders.db")}),
        (INVENTORY, Inventory, {"database": str(directory / "inventory.db"), "stock": stock}),
        (PAYMENTS, Payments, {"database": str(directory / "payments.db")}),
    ]


def run_demo(config: Config, out: TextIO | None = None) -> int:
    """Run the whole demo; the exit status is 1 when any ledger check fails."""
    if config.style == "local":  # no saga, so no saga definition in STYLES: see demo.local_run
        return run_local_demo(config, out)
    if config.style == "choreography":  # reactors and events, no saga: demo.choreography_style
        return run_choreography(config, out)
    out = out if out is not None else sys.stdout
    started = time.monotonic()
    orders = make_orders(config.orders, config.seed)
    stock = opening_stock(orders)
    progress = Progress(out)
    kills = config.kills
    if config.base != MULTIPROC_TCP and kills:
        progress.say(
            f"{config.base}: every actor runs inside this process, so there is no saga host "
            f"process to SIGKILL; skipping the {kills} planned kill(s)"
        )
        kills = 0
    progress.say(
        f"understudy demo: {len(orders)} orders ({config.style}) on {config.base} with "
        f"{config.hosts} saga host(s), {kills} host kill(s), seed {config.seed}"
    )
    progress.say(f"data directory: {config.directory}")
    store_path = config.store_location
    if config.store is not None:
        progress.say(f"saga store: {redact(config.store)}")
        with closing(open_store(store_path)) as fresh:
            if fresh.count_by_status():
                progress.say(
                    f"the saga store {redact(config.store)} already holds sagas; the demo "
                    "checks its ledgers against a store of its own: give it an empty database"
                )
                return 2
    runtime = Understudy.start(
        store_path,
        [STYLES[config.style]],
        participants(config.directory, stock),
        base=config.base,
        hosts=config.hosts,
    )
    try:
        killer = HostKiller(runtime, kills, len(orders), config.seed, progress.say)
        store = open_store(store_path, read_only=True)
        try:
            stats = drive(runtime, store, orders, config.wave, killer, progress)
        finally:
            store.close()
        killer.poll()
        stats.kills, stats.planned_kills = killer.kills, killer.planned
        stats.restarts_observed = killer.restarts_observed
        stats.coordinator_restarts = runtime.hosts().restarts
    finally:
        runtime.shutdown()
    report = check_ledgers(config.directory, orders, stock, store=config.store_location)
    report.print(out, stats, time.monotonic() - started)
    return 0 if report.passed else 1


def drive(
    runtime: Understudy,
    store: SagaStore,
    orders: list[Order],
    wave: int,
    killer: HostKiller,
    progress: Progress,
) -> RunStats:
    """Submit every order, keep about ``wave`` to ``2 * wave`` in flight, kill hosts on the way,
    and return once the store holds every saga as terminal (or nothing moves any more)."""
    stats = RunStats()
    queue = deque(orders)
    by_id = {order.order_id: order for order in orders}
    futures: dict[str, concurrent.futures.Future[Any]] = {}
    sent_at: dict[str, float] = {}
    resends: dict[str, int] = {}
    finished: set[str] = set()
    counts: dict[str, int] = {}
    t0 = time.monotonic()
    next_progress = next_sweep = last_change = t0
    last_done = 0

    def send(order_id: str) -> None:
        futures[order_id] = runtime.submit_future(order_id, "order", by_id[order_id].payload())
        sent_at[order_id] = time.monotonic()

    while True:
        for order_id, future in list(futures.items()):
            if future.done():
                del futures[order_id]
                reply = future.result() if future.exception() is None else future.exception()
                if isinstance(reply, SagaFinished):
                    finished.add(order_id)
                else:
                    stats.rejected[order_id] = str(getattr(reply, "reason", reply))
        if queue and len(sent_at) - len(finished) < wave:
            for _ in range(min(wave, len(queue))):
                send(queue.popleft().order_id)
        in_flight = len(sent_at) - len(finished)
        if killer.due(len(sent_at)):
            killer.kill(in_flight)
        now = time.monotonic()
        counts = store.count_by_status()
        done = sum(counts.get(status, 0) for status in TERMINAL)
        if done != last_done:
            last_done, last_change = done, now
        if done >= len(orders) and not queue:
            stats.elapsed = now - t0
            break
        if now - last_change > STALL_SECONDS:
            progress.say(f"nothing finished for {STALL_SECONDS:.0f} s; giving up waiting")
            stats.elapsed, stats.gave_up = now - t0, True
            break
        if now >= next_sweep:
            next_sweep = now + PROGRESS_EVERY
            if killer.planned:
                killer.poll()
            stats.resent += sweep(store, sent_at, finished, resends, send, now)
        # While a killed host is being replaced the coordinator logs it on stderr; holding
        # the progress line back keeps that log line from landing in the middle of it.
        if now >= next_progress and killer.awaiting is None:
            next_progress = now + PROGRESS_EVERY
            progress.line(status_line(now - t0, done, len(orders), counts, in_flight, killer))
        time.sleep(TICK)
    progress.line(status_line(stats.elapsed, last_done, len(orders), counts, 0, killer))
    progress.end()
    return stats


def sweep(
    store: SagaStore,
    sent_at: dict[str, float],
    finished: set[str],
    resends: dict[str, int],
    send: Callable[[str], None],
    now: float,
) -> int:
    """Mark sagas the store holds as terminal; resend starts the store never received."""
    resent = 0
    for order_id, when in list(sent_at.items()):
        if order_id in finished or now - when < LOST_AFTER:
            continue
        record = store.get(order_id)
        if record is not None:
            if record.terminal:
                finished.add(order_id)
            continue
        if resends.get(order_id, 0) < MAX_RESENDS:
            resends[order_id] = resends.get(order_id, 0) + 1
            send(order_id)
            resent += 1
    return resent


def status_line(
    elapsed: float,
    done: int,
    total: int,
    counts: dict[str, int],
    in_flight: int,
    killer: HostKiller,
) -> str:
    return (
        f"[{elapsed:6.1f} s] {done}/{total} done | completed {counts.get('completed', 0)} | "
        f"compensated {counts.get('compensated', 0)} | failed {counts.get('failed', 0)} | "
        f"in flight {in_flight} | kills {killer.kills}/{killer.planned} | "
        f"host restarts {killer.restarts_observed}"
    )
