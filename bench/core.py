"""Core figures, measured side by side in one run (run on demand: ``python bench/core.py``).

Prints, for the order saga (3 steps, 10% rejected at the third step and compensated):
- sagas/s through ``Understudy.run``-style waits at concurrency 1 and 50, on the in-process and
  the TCP multi-process base, each as a ratio to the SQLite FULL single-row commit rate measured
  in the same run (the storage baseline);
- memory per in-flight saga (sagas waiting on a participant that never answers): growth of the
  saga host's resident memory divided by the number of sagas (in-process, the host is this
  whole process);
- the sync/async bridge: aiosqlite vs sqlite3 commit loop, and a start through the bridge thread
  vs the same work called from the actor system's own thread.
Absolute times drift on shared machines; compare the ratios.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import aiosqlite  # noqa: E402
from conftest import PARTICIPANTS, order_definition  # noqa: E402
from participants import Recorder, Silent  # noqa: E402

from understudy import SagaDefinition, Step, Understudy  # noqa: E402


def commit_rate(path: str, n: int = 2000) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (a INTEGER)")
    start = time.perf_counter()
    for i in range(n):
        db.execute("BEGIN")
        db.execute("INSERT INTO t VALUES (?)", (i,))
        db.execute("COMMIT")
    elapsed = time.perf_counter() - start
    db.close()
    return n / elapsed


async def aio_commit_rate(path: str, n: int = 2000) -> float:
    async with aiosqlite.connect(path, isolation_level=None) as db:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute("CREATE TABLE t (a INTEGER)")
        start = time.perf_counter()
        for i in range(n):
            await db.execute("BEGIN")
            await db.execute("INSERT INTO t VALUES (?)", (i,))
            await db.execute("COMMIT")
        return n / (time.perf_counter() - start)


def saga_rate(base: str, concurrency: int, total: int, workdir: Path) -> float:
    participants = [(n, Recorder, {"database": str(workdir / f"{n}.db")}) for n in PARTICIPANTS]
    with Understudy.start(
        workdir / "sagas.db", [order_definition()], participants, base=base
    ) as us:
        us.run("warm-up", "order", {})
        start = time.perf_counter()
        done = 0
        while done < total:
            wave = [
                us.submit_future(
                    f"s-{done + i}", "order", {"reject": "charge"} if (done + i) % 10 == 0 else {}
                )
                for i in range(min(concurrency, total - done))
            ]
            for future in wave:
                future.result(120)
            done += len(wave)
        return total / (time.perf_counter() - start)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def memory_per_saga(base: str, sagas: int, workdir: Path) -> tuple[float, int]:
    """Host memory growth per in-flight saga, from the slope after a first warm-up wave (the
    first wave also grows allocator arenas and caches, which would inflate the figure)."""
    definition = SagaDefinition(
        "wait", 1, [Step("charge", "silent", "charge", "refund", timeout=600.0)]
    )
    participants = [("silent", Silent, {"database": str(workdir / "silent.db")})]
    wave = 1000
    with Understudy.start(
        workdir / "sagas.db", [definition], participants, base=base, hosts=1
    ) as us:
        pid = us.hosts().host_pids[0]
        before = 0
        for start in range(0, wave + sagas, wave):
            futures = [
                us.submit_future(f"m-{start + i}", "wait", {}, wait=False) for i in range(wave)
            ]
            for future in futures:
                future.result(300)
            if start == 0:
                before = rss_kib(pid)
        after = rss_kib(pid)
        return (after - before) * 1024 / sagas, after


def main() -> None:
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        base_rate = commit_rate(os.path.join(tmp, "c.db"))
        aio_rate = asyncio.run(aio_commit_rate(os.path.join(tmp, "a.db")))
        rows.append(("SQLite FULL single-row commits/s (baseline)", f"{base_rate:,.0f}"))
        rows.append(("aiosqlite / sqlite3 commit rate", f"{aio_rate / base_rate:.2f}x"))
        for base in ("simpleSystemBase", "multiprocTCPBase"):
            for concurrency in (1, 50):
                with tempfile.TemporaryDirectory() as work:
                    total = 200 if concurrency == 1 else 1000
                    rate = saga_rate(base, concurrency, total, Path(work))
                rows.append(
                    (
                        f"{base} sagas/s at concurrency {concurrency}",
                        f"{rate:,.0f}  ({rate / base_rate:.3f} x commit rate)",
                    )
                )
            with tempfile.TemporaryDirectory() as work:
                per_saga, total_kib = memory_per_saga(base, 3000, Path(work))
            rows.append(
                (
                    f"{base} host memory per in-flight saga",
                    f"{per_saga / 1024:.1f} KiB (host RSS {total_kib / 1024:.0f} MiB)",
                )
            )
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
