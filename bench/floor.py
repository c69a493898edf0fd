"""The floor: what a user would hand-roll instead of a saga coordinator, and what SQLite can do.

Run on demand: ``python bench/floor.py`` (or ``python -m bench.floor``) prints every figure once.

- ``plain``: the order saga as plain function calls in one thread, one FULL commit per step record
  (the durable, step-at-a-time orchestration a careful user writes by hand; no idempotency
  ledger, no coordinator).
- ``group_commit``: the same saga run by worker threads whose step records all go through one
  writer thread that commits whatever is queued in one transaction and then wakes the waiters.
  This is the fastest write-ahead design within reach in one Python process, so it is the bar.
- ``ceiling``: SQLite itself: single-row FULL commits/s, rows/s at 100 rows per commit, and the
  median single-row commit time.
- ``thread_round_trip``: one hand-off there and back between two threads through queue.Queue.

Everything runs in this process, on fresh SQLite files with WAL and synchronous=FULL. Absolute
figures drift on shared machines; compare ratios measured in the same run.
"""

from __future__ import annotations

import queue
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the ``bench`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    COMPENSATIONS,
    STEPS,
    Throughput,
    closed_loop,
    fails,
    full_sync,
    median,
)

PLAIN = "floor: plain functions"
GROUP = "floor: group commit"

# One row per step record. The primary key is what a careful user would declare (a step is
# recorded once per saga), and it makes every insert pay for an index, as a real log would.
SCHEMA = """
CREATE TABLE progress (
    saga_id INTEGER NOT NULL,
    step    TEXT    NOT NULL,
    status  TEXT    NOT NULL,
    result  TEXT,
    PRIMARY KEY (saga_id, step)
)
"""
INSERT = "INSERT INTO progress (saga_id, step, status, result) VALUES (?, ?, ?, ?)"

Row = tuple[int, str, str, str]
Record = Callable[[Row], None]  # makes one step record durable before it returns


class Refused(Exception):
    """A participant refused the step; the saga compensates."""


# The saga's steps and compensations: trivial in-memory work that returns a small result.
def create_order(index: int) -> str:
    return f'{{"order_id": "o-{index}"}}'


def reserve_inventory(index: int) -> str:
    return f'{{"sku": "sku-{index % 100}", "quantity": 1}}'


def charge_payment(index: int) -> str:
    if fails(index):
        raise Refused("card declined")
    return f'{{"charge_id": "c-{index}", "amount": 100}}'


def cancel_order(index: int) -> str:
    return f'{{"order_id": "o-{index}", "cancelled": true}}'


def release_inventory(index: int) -> str:
    return f'{{"sku": "sku-{index % 100}", "released": 1}}'


def refund_payment(index: int) -> str:
    return f'{{"charge_id": "c-{index}", "refunded": 100}}'


_CALLS: dict[str, Callable[[int], str]] = {
    f.__name__: f
    for f in (
        create_order,
        reserve_inventory,
        charge_payment,
        cancel_order,
        release_inventory,
        refund_payment,
    )
}
# COMPENSATIONS[k] undoes STEPS[k] (common.py lists them in step order).
_STEP_CALLS = [
    (_CALLS[step], step, _CALLS[undo], undo)
    for step, undo in zip(STEPS, COMPENSATIONS, strict=True)
]


def run_saga(index: int, record: Record) -> bool:
    """Run saga ``index`` to its end, recording each step durably before the next one runs.

    Returns whether it ended compensated. A refused step is recorded, then the completed steps
    are compensated in reverse order, each compensation recorded in its own commit.
    """
    completed: list[tuple[Callable[[int], str], str]] = []
    for call, step, undo, undo_name in _STEP_CALLS:
        try:
            result = call(index)
        except Refused as refusal:
            record((index, step, "refused", str(refusal)))
            for compensate, name in reversed(completed):
                record((index, name, "compensated", compensate(index)))
            return True
        record((index, step, "done", result))
        completed.append((undo, undo_name))
    return False


def fresh_db(path: Path, check_same_thread: bool = True) -> sqlite3.Connection:
    """A new SQLite file at ``path`` (any old one and its WAL removed), WAL + FULL, schema made.

    Autocommit mode (isolation_level=None) so that the explicit BEGIN IMMEDIATE ... COMMIT below
    are the only transactions: the module never pays for an implicit one.
    """
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    db = full_sync(sqlite3.connect(path, isolation_level=None, check_same_thread=check_same_thread))
    db.execute(SCHEMA)
    return db


def _commit(db: sqlite3.Connection, rows: list[Row]) -> None:
    """``rows`` in one FULL transaction. BEGIN IMMEDIATE takes the write lock up front, as a
    careful writer does, so a transaction never fails to upgrade half-way."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.executemany(INSERT, rows)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def plain(workdir: Path, total: int) -> Throughput:
    """``total`` sagas one after another as plain function calls, one commit per step record.

    ``cpu_seconds`` is this whole process's CPU during the run.
    """
    db = fresh_db(Path(workdir) / "floor-plain.db")

    def record(row: Row) -> None:
        _commit(db, [row])  # one transaction per step, durable before the next step runs

    latencies: list[float] = []
    compensated = 0
    cpu = time.process_time()
    began = time.perf_counter()
    try:
        for index in range(total):
            started = time.perf_counter()
            compensated += run_saga(index, record)
            latencies.append(time.perf_counter() - started)
        seconds = time.perf_counter() - began
        cpu = time.process_time() - cpu
    finally:
        db.close()
    return Throughput(PLAIN, 1, total, seconds, latencies, cpu, compensated)


class GroupCommitLog:
    """One writer thread owns the only connection and commits step records in groups.

    A worker calls ``record(row)`` and blocks until the transaction holding ``row`` has
    committed. The writer takes everything queued at once, commits it in one transaction, and
    only then wakes each waiter in the group.

    Why these primitives: queue.SimpleQueue is implemented in C, so a put costs no Python-level
    lock dance, and draining it with get_nowait is cheap. Each worker waits on its own
    pre-acquired threading.Lock, which the writer wakes with one C-level release(); a
    threading.Event or Condition per record would run Python code per wake-up under the GIL and
    make waking 50 workers after each commit a visible share of the writer's time.
    """

    def __init__(self, path: Path) -> None:
        # Made here so schema errors surface in the caller; handed to the writer thread after.
        self._db = fresh_db(path, check_same_thread=False)
        self._queue: queue.SimpleQueue[tuple[Row, threading.Lock] | None] = queue.SimpleQueue()
        self.failure: BaseException | None = None
        self.commits = 0
        self.rows = 0
        self._thread = threading.Thread(target=self._write, name="floor-writer", daemon=True)
        self._thread.start()

    def recorder(self) -> Record:
        """A ``record`` function for one worker thread (it owns the returned gate)."""
        gate = threading.Lock()
        gate.acquire()
        put = self._queue.put

        def record(row: Row) -> None:
            put((row, gate))
            gate.acquire()  # released by the writer once the row is durable
            if self.failure is not None:
                raise RuntimeError("the writer thread failed") from self.failure

        return record

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._db.close()

    def _write(self) -> None:
        get, get_nowait = self._queue.get, self._queue.get_nowait
        running = True
        while running:
            first = get()
            if first is None:
                break
            group = [first]
            # Everything queued while the previous commit was syncing goes into this one.
            while True:
                try:
                    item = get_nowait()
                except queue.Empty:
                    break
                if item is None:  # close() comes after every worker stopped: finish, then stop
                    running = False
                    break
                group.append(item)
            try:
                if self.failure is None:
                    _commit(self._db, [row for row, _ in group])
                    self.commits += 1
                    self.rows += len(group)
            except BaseException as error:
                # Keep serving: every waiter, now and later, wakes and sees the failure.
                self.failure = error
            for _, gate in group:
                gate.release()


def group_commit(workdir: Path, concurrency: int, total: int, workers: int = 50) -> Throughput:
    """``total`` sagas closed-loop, ``concurrency`` in flight, every step record group-committed.

    The sagas run in ``min(workers, concurrency)`` worker threads; each step's record goes to
    the one writer thread, and the worker waits for it to be durable before the next step.
    ``cpu_seconds`` is this whole process's CPU during the run (driver included).
    """
    log = GroupCommitLog(Path(workdir) / f"floor-group-c{concurrency}.db")
    sagas: queue.SimpleQueue[tuple[int, Callable[[bool], None]] | None] = queue.SimpleQueue()
    errors: list[BaseException] = []

    def work() -> None:
        record = log.recorder()
        while (job := sagas.get()) is not None:
            index, done = job
            try:
                compensated = run_saga(index, record)
            except BaseException as error:
                # End the saga anyway so the closed loop cannot hang; raised after the run.
                errors.append(error)
                compensated = False
            done(compensated)

    threads = [
        threading.Thread(target=work, name=f"floor-worker-{n}", daemon=True)
        for n in range(max(1, min(workers, concurrency)))
    ]
    for thread in threads:
        thread.start()
    try:
        cpu = time.process_time()
        # start() only queues the saga: with more sagas in flight than workers, they wait for
        # one, and that wait counts in their latency, as it would for the user.
        result = closed_loop(GROUP, concurrency, total, lambda i, done: sagas.put((i, done)))
        result.cpu_seconds = time.process_time() - cpu
    finally:
        for _ in threads:
            sagas.put(None)
        for thread in threads:
            thread.join()
        log.close()
    if errors:
        raise RuntimeError(f"{len(errors)} sagas failed") from errors[0]
    if log.failure is not None:
        raise RuntimeError("the writer thread failed") from log.failure
    return result


def ceiling(workdir: Path, seconds: float = 2.0) -> dict[str, float]:
    """SQLite's own limits on this disk, with the saga log's row shape and schema.

    Two timed loops of about ``seconds`` each on a fresh file: one row per BEGIN IMMEDIATE ...
    COMMIT, then 100 rows per commit. ``commit_ms`` is the median time of one whole single-row
    transaction (BEGIN, INSERT, COMMIT with its fsync).
    """
    db = fresh_db(Path(workdir) / "floor-ceiling.db")
    try:
        saga_id = 0
        times: list[float] = []
        began = now = time.perf_counter()
        deadline = began + seconds
        while now < deadline:
            _commit(db, [(saga_id, "create_order", "done", '{"order_id": "o"}')])
            saga_id += 1
            then, now = now, time.perf_counter()
            times.append(now - then)
        single = len(times) / (now - began)

        rows = 0
        began = now = time.perf_counter()
        deadline = began + seconds
        while now < deadline:
            _commit(
                db,
                [(saga_id + n, "create_order", "done", '{"order_id": "o"}') for n in range(100)],
            )
            saga_id += 100
            rows += 100
            now = time.perf_counter()
        batched = rows / (now - began)
    finally:
        db.close()
    return {
        "single_row_commits_per_s": single,
        "rows_per_s_at_100_per_commit": batched,
        "commit_ms": median(times) * 1000,
    }


def thread_round_trip(seconds: float = 1.0) -> float:
    """Median seconds for one item to go to another thread and back through queue.Queue."""
    requests: queue.Queue[int | None] = queue.Queue()
    replies: queue.Queue[int] = queue.Queue()

    def echo() -> None:
        while (item := requests.get()) is not None:
            replies.put(item)

    thread = threading.Thread(target=echo, name="floor-echo", daemon=True)
    thread.start()
    samples: list[float] = []
    try:
        deadline = time.perf_counter() + seconds
        while True:
            began = time.perf_counter()
            if began >= deadline:
                break
            requests.put(1)
            replies.get()
            samples.append(time.perf_counter() - began)
    finally:
        requests.put(None)
        thread.join()
    return median(samples)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="floor-") as tmp:
        workdir = Path(tmp)
        runs = [plain(workdir, 1000)]
        runs += [group_commit(workdir, c, 2000) for c in (1, 10, 50, 1000)]
        limits = ceiling(workdir)
    round_trip = thread_round_trip()

    print(
        f"{'system':<24} {'c':>5} {'sagas':>6} {'sagas/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'cpu ms/saga':>11} {'comp':>5}"
    )
    for run in runs:
        s = run.summary()
        print(
            f"{s['system']:<24} {s['concurrency']:>5} {s['sagas']:>6} {s['sagas_per_s']:>9,.0f}"
            f" {s['p50_ms']:>8.3f} {s['p99_ms']:>8.3f} {s['cpu_ms_per_saga']:>11.3f}"
            f" {s['compensated']:>5}"
        )
    print()
    print(f"SQLite FULL single-row commits/s      {limits['single_row_commits_per_s']:>10,.0f}")
    print(f"SQLite FULL rows/s at 100 per commit  {limits['rows_per_s_at_100_per_commit']:>10,.0f}")
    print(f"SQLite FULL single-row commit, median {limits['commit_ms']:>10.3f} ms")
    print(f"queue.Queue thread round trip, median {round_trip * 1e6:>10.1f} us")
    print()
    plain_rate = runs[0].sagas_per_s
    c50 = next(r for r in runs if r.concurrency == 50).sagas_per_s
    print(f"group commit c=50 / plain             {c50 / plain_rate:>10.2f}x")
    print(
        "rows/s at 100 per commit / commits/s  "
        f"{limits['rows_per_s_at_100_per_commit'] / limits['single_row_commits_per_s']:>10.1f}x"
    )


if __name__ == "__main__":
    main()


def aiosqlite_ratio(workdir: Path, n: int = 1000) -> float:
    """Commit rate through aiosqlite ÷ through sqlite3, same loop, same file settings: why the
    actors write with sqlite3 and only asyncio readers use aiosqlite (understudy.runtime)."""
    import asyncio

    import aiosqlite

    def plain_rate() -> float:
        db = fresh_db(workdir / "ratio-sync.db")
        db.execute("CREATE TABLE t (a INTEGER)")
        start = time.perf_counter()
        for i in range(n):
            db.execute("BEGIN")
            db.execute("INSERT INTO t VALUES (?)", (i,))
            db.execute("COMMIT")
        elapsed = time.perf_counter() - start
        db.close()
        return n / elapsed

    async def aio_rate() -> float:
        async with aiosqlite.connect(workdir / "ratio-aio.db", isolation_level=None) as db:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            await db.execute("CREATE TABLE t (a INTEGER)")
            start = time.perf_counter()
            for i in range(n):
                await db.execute("BEGIN")
                await db.execute("INSERT INTO t VALUES (?)", (i,))
                await db.execute("COMMIT")
            return n / (time.perf_counter() - start)

    return asyncio.run(aio_rate()) / plain_rate()
