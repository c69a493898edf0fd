"""What every system in the suite shares: the workload, the figures, and the closed-loop driver.

The workload is the order saga: three steps (create order, reserve inventory, charge payment),
one saga in ten refused at the third step and compensated in reverse order (release, cancel).
Every system keeps its durable state in SQLite with WAL and synchronous=FULL.

Concurrency is closed-loop: ``c`` sagas are in flight at all times; when one ends, the next
starts. Latency is from the start call to the moment the terminal outcome is seen.
"""

from __future__ import annotations

import json
import os
import sqlite3
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

#: The understudy bases every figure is measured on, and their labels in tables.
BASES = ("simpleSystemBase", "multiprocTCPBase")
LABELS = {"simpleSystemBase": "understudy in-process", "multiprocTCPBase": "understudy TCP"}
#: The same, with the saga store in PostgreSQL instead of a SQLite file.
PG_LABELS = {base: f"{label}, PostgreSQL" for base, label in LABELS.items()}

#: Where a child finds the PostgreSQL server's postmaster, to count the server's CPU.
SERVER_PID_VARIABLE = "UNDERSTUDY_BENCH_PG_PID"
#: Where an understudy child finds the URL of its saga store's PostgreSQL database (never on
#: its command line: a URL may carry a password).
STORE_VARIABLE = "UNDERSTUDY_BENCH_STORE"

STEPS = ("create_order", "reserve_inventory", "charge_payment")
COMPENSATIONS = ("cancel_order", "release_inventory", "refund_payment")


def fails(index: int) -> bool:
    """Saga number ``index`` is refused at its third step (one in ten)."""
    return index % 10 == 9


def full_sync(db: sqlite3.Connection) -> sqlite3.Connection:
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    return db


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass
class Throughput:
    """One closed-loop run: ``sagas`` sagas at ``concurrency`` in flight."""

    system: str
    concurrency: int
    sagas: int
    seconds: float
    latencies: list[float] = field(repr=False, default_factory=list)
    cpu_seconds: float | None = None  # CPU of every process of the system, when known
    compensated: int = 0  # how many ended compensated (expect one in ten)
    # How many ended otherwise than their index says (compensated though not declined, not
    # compensated though declined, or neither completed nor compensated): must be 0.
    misrouted: int = 0
    # Of cpu_seconds, what the PostgreSQL server's processes spent (rows on PostgreSQL only).
    server_cpu_seconds: float | None = None

    @property
    def sagas_per_s(self) -> float:
        return self.sagas / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "concurrency": self.concurrency,
            "sagas": self.sagas,
            "seconds": round(self.seconds, 4),
            "sagas_per_s": round(self.sagas_per_s, 2),
            "p50_ms": round(percentile(self.latencies, 0.5) * 1000, 3),
            "p99_ms": round(percentile(self.latencies, 0.99) * 1000, 3),
            "cpu_ms_per_saga": (
                round(self.cpu_seconds * 1000 / self.sagas, 3)
                if self.cpu_seconds is not None and self.sagas
                else None
            ),
            "compensated": self.compensated,
            "misrouted": self.misrouted,
            **(
                {"server_cpu_ms_per_saga": round(self.server_cpu_seconds * 1000 / self.sagas, 3)}
                if self.server_cpu_seconds is not None and self.sagas
                else {}
            ),
        }

    def check(self) -> Throughput:
        """Raise unless every saga of the run ended and exactly the declined ones (index % 10
        == 9) compensated: a figure from a run that lost or misrouted sagas would mean nothing."""
        expected = sum(1 for index in range(self.sagas) if fails(index))
        if self.misrouted or self.compensated != expected:
            raise RuntimeError(
                f"{self.system} c={self.concurrency}: {self.compensated} of {self.sagas} sagas "
                f"compensated (expected {expected}), {self.misrouted} ended otherwise than "
                "their index says"
            )
        return self


@dataclass
class Recovery:
    """Kill -9 with ``unfinished`` sagas in flight, restart, time until all are terminal."""

    system: str
    unfinished: int
    seconds: float  # from the restart call to the last saga terminal
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def recovered_per_s(self) -> float:
        return self.unfinished / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "seconds": round(self.seconds, 4),
            "recovered_per_s": round(self.recovered_per_s, 2),
        }


def closed_loop(
    system: str,
    concurrency: int,
    total: int,
    start: Callable[[int, Callable[[bool | None], None]], None],
    declined: Callable[[int], bool] | None = fails,
) -> Throughput:
    """Drive ``total`` sagas, ``concurrency`` at a time.

    ``start(index, done)`` must start saga ``index`` without blocking for its end and arrange
    for ``done(compensated)`` to be called once (from any thread) when it is terminal:
    ``compensated`` is True when it ended compensated, False when completed, None when it
    ended any other way (failed). A system whose start call blocks can run it in its own
    threads. Each ending is checked against ``declined(index)`` (None: not checked), and the
    sagas that ended otherwise are counted in ``misrouted``.
    """
    lock = threading.Lock()
    finished = threading.Event()
    started_at: dict[int, float] = {}
    latencies: list[float] = []
    state = {"next": 0, "ended": 0, "compensated": 0, "misrouted": 0}

    def launch() -> None:
        with lock:
            if state["next"] >= total:
                return
            index = state["next"]
            state["next"] += 1
            started_at[index] = time.perf_counter()
        start(index, lambda compensated, i=index: ended(i, compensated))

    def ended(index: int, compensated: bool | None) -> None:
        now = time.perf_counter()
        with lock:
            latencies.append(now - started_at.pop(index))
            state["ended"] += 1
            state["compensated"] += int(bool(compensated))
            if declined is not None and compensated is not declined(index):
                state["misrouted"] += 1
            last = state["ended"] >= total
        if last:
            finished.set()
        else:
            launch()

    began = time.perf_counter()
    for _ in range(min(concurrency, total)):
        launch()
    finished.wait()
    seconds = time.perf_counter() - began
    return Throughput(
        system,
        concurrency,
        total,
        seconds,
        latencies,
        None,
        state["compensated"],
        state["misrouted"],
    )


def emit(result: Any) -> None:
    """A child process's answer: one JSON line on stdout, prefixed so logs cannot be mistaken."""
    sys.stdout.write("BENCH-RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()


def parse(output: str) -> Any:
    for line in output.splitlines():
        if line.startswith("BENCH-RESULT "):
            return json.loads(line[len("BENCH-RESULT ") :])
    raise RuntimeError(f"no BENCH-RESULT line in the child's output:\n{output[-4000:]}")


def cpu_of(pids: list[int]) -> float:
    """User+system CPU seconds of the given live processes (from /proc), for CPU per saga."""
    total = 0.0
    tick = 100.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def tree_cpu(pid: int) -> float:
    """User+system CPU seconds of process ``pid``, of its children that exited (as the kernel
    adds them to it when it reaps them) and of its live children: a PostgreSQL server's whole
    CPU, backends included, when ``pid`` is its postmaster."""
    tick = 100.0
    total = 0.0
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        total += sum(int(f) for f in fields[11:15]) / tick
    except (OSError, IndexError, ValueError):
        return 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def server_cpu() -> float | None:
    """The PostgreSQL server's CPU so far (:func:`tree_cpu` of the postmaster the suite names
    in ``UNDERSTUDY_BENCH_PG_PID``); None when it named none (the server is not on this
    machine, or the run is not on PostgreSQL)."""
    pid = os.environ.get(SERVER_PID_VARIABLE)
    return tree_cpu(int(pid)) if pid else None


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
