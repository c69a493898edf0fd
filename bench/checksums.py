"""What the SQLite store's integrity work costs: checksums on every row, a lease check per batch.

``SQLiteStore.apply`` is timed on realistic batches, in fresh child processes, three ways:

- ``committed``: the store as committed, called as a saga host calls it (``blame`` with the
  batch's saga ids, then ``apply`` under the host's lease, whose epoch it checks);
- ``constant``: the same, with every checksum function of ``understudy.persistence.integrity``
  replaced by a constant in the child (the rows get 0 for a checksum), so the difference is
  exactly what computing the checksums costs;
- ``no-lease``: checksums as committed, ``apply`` without a lease and no ``blame``: the
  difference is what the lease check and the blame file cost per batch.

The batches are real: a child first runs two order sagas (one completed, one declined and
compensated) through understudy on the in-process base and records every batch the saga host
handed to ``apply``. Those writes are then replayed, renamed, as a closed loop of ``k`` sagas:
each batch carries the next write group of each of ``k`` sagas in flight (``k`` = 1 and 50), a
saga that ends makes room for a new one, one in ten is the compensated one. Every timed loop
runs with ``synchronous=FULL`` (what the suite's SQLite rows pay) and with
``synchronous=NORMAL`` (in WAL mode no fsync at commit: nearly only the CPU the same statements
cost, where a checksum is the largest share it can be).
The modes take turns, round after round, and each figure is the median over the rounds.

``checksum_us_per_saga`` is the CPU of computing every checksum one saga's writes carry (as
``apply`` computes them), timed apart: divided by a throughput row's CPU per saga it is the
checksums' share of that row.

``end_to_end`` is the suite's own in-process row at concurrency 50, run as committed and with
constant checksums in turns: what the checksums cost that figure, whole.

Run by hand: ``python -m bench.checksums``.
"""

from __future__ import annotations

import itertools
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from bench.common import emit, fails, parse

ROOT = Path(__file__).resolve().parent.parent
MODES = ("committed", "constant", "no-lease")
SYNCS = ("FULL", "NORMAL")
CHECKSUM_FUNCTIONS = ("checksum", "payload_sum", "snapshot_sum", "event_sum")


def _child(args: list[str], timeout: float = 300.0) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "bench.checksums", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"bench.checksums {args[0]} failed ({done.returncode}):\n{done.stderr[-4000:]}"
        )
    return parse(done.stdout)


def measure(
    workdir: Path,
    rounds: int = 5,
    sizes: tuple[int, ...] = (1, 50),
    sagas: int = 2000,
    end_to_end_sagas: int = 3000,
) -> dict[str, Any]:
    """The three modes, ``rounds`` times each in turn (a fresh child each), on batches of each
    of ``sizes`` sagas, ``sagas`` sagas per timed loop (fewer batches for larger ``k``); then
    :func:`end_to_end` with ``end_to_end_sagas`` sagas a run."""
    templates = workdir / "templates.pickle"
    _child(["capture", str(workdir), str(templates)])
    runs: list[dict[str, Any]] = []
    for round_ in range(rounds):
        # Rotate who goes first: a drift over the run must not always favour the same mode.
        order = MODES[round_ % len(MODES) :] + MODES[: round_ % len(MODES)]
        for mode in order:
            out = Path(tempfile.mkdtemp(prefix=f"{mode}-", dir=workdir))
            found = _child(
                ["apply", mode, str(templates), str(out), ",".join(map(str, sizes)), str(sagas)]
            )
            runs += found["runs"]
            if mode == "committed":
                checksum_us = found["checksum_us_per_saga"]
    for run in runs:
        stored = run["stored"]
        zero = stored["zero_checksum_sagas"], stored["zero_checksum_events"]
        expected = (stored["sagas"], stored["events"]) if run["mode"] == "constant" else (0, 0)
        if zero != expected or not stored["terminal"]:
            raise RuntimeError(f"mode {run['mode']} left rows that do not match it: {run}")
    rows = []
    for size, sync in itertools.product(sizes, SYNCS):
        per_batch = {
            mode: statistics.median(
                r["us_per_batch"]
                for r in runs
                if r["mode"] == mode and r["k"] == size and r["sync"] == sync
            )
            for mode in MODES
        }
        cpu = {
            mode: statistics.median(
                r["cpu_us_per_batch"]
                for r in runs
                if r["mode"] == mode and r["k"] == size and r["sync"] == sync
            )
            for mode in MODES
        }
        rows.append(
            {
                "k": size,
                "sync": sync,
                "us_per_batch": per_batch,
                "cpu_us_per_batch": cpu,
                # > 1: the committed store is slower; 1.05 is a 5% cost.
                "checksums_ratio": per_batch["committed"] / per_batch["constant"],
                "lease_ratio": per_batch["committed"] / per_batch["no-lease"],
            }
        )
    return {
        "rounds": rounds,
        "rows": rows,
        "checksum_us_per_saga": checksum_us,
        "runs": runs,
        "end_to_end": end_to_end(workdir, rounds, end_to_end_sagas),
    }


def end_to_end(workdir: Path, rounds: int, sagas: int, concurrency: int = 50) -> dict[str, Any]:
    """The suite's in-process order saga at ``concurrency``, as committed and with constant
    checksums, in turns (a fresh child each; the first mode alternates), ``rounds`` each: what
    the checksums cost the SQLite row itself. In-process only: there the saga store runs in the
    child, where the checksums are replaced."""
    from bench.understudy_saga import throughput

    found: dict[str, list[dict[str, Any]]] = {"committed": [], "constant": []}
    for round_ in range(rounds):
        order = ("committed", "constant") if round_ % 2 == 0 else ("constant", "committed")
        for mode in order:
            out = Path(tempfile.mkdtemp(prefix=f"e2e-{mode}-", dir=workdir))
            run = throughput(
                "simpleSystemBase", out, concurrency, sagas, constant_checksums=mode == "constant"
            )
            found[mode].append(run.check().summary())
    rate = {m: statistics.median(r["sagas_per_s"] for r in runs) for m, runs in found.items()}
    cpu = {m: statistics.median(r["cpu_ms_per_saga"] for r in runs) for m, runs in found.items()}
    return {
        "concurrency": concurrency,
        "sagas": sagas,
        "sagas_per_s": rate,
        "cpu_ms_per_saga": cpu,
        # < 1: the committed store is slower; 0.95 is a 5% cost.
        "rate_ratio": rate["committed"] / rate["constant"],
        "runs": found,
    }


# --- the children -----------------------------------------------------------------------------


def _capture(workdir: Path, out: Path) -> None:
    """Run saga 1 (completed) and saga 9 (compensated) one at a time through understudy and
    keep, for each, the list of write groups the saga host applied, in order."""
    from bench.participants import order_definition, order_participants, payload
    from understudy import Understudy
    from understudy.persistence import sqlite

    applied: list[list[Any]] = []
    original = sqlite.SQLiteStore.apply

    def recording(self: Any, writes: Any, lease: Any = None) -> list[bool]:
        applied.append(list(writes))
        return original(self, writes, lease)

    sqlite.SQLiteStore.apply = recording  # type: ignore[method-assign]
    groups: dict[str, list[list[Any]]] = {}
    with Understudy.start(
        workdir / "sagas.db", [order_definition()], order_participants(workdir)
    ) as us:
        for index in (1, 9):
            saga_id = f"template-{index}"
            outcome = us.run(saga_id, "order", payload(index))
            groups[outcome.status] = [
                [w for w in batch if w.saga_id == saga_id]
                for batch in applied
                if any(w.saga_id == saga_id for w in batch)
            ]
    if set(groups) != {"completed", "compensated"}:
        raise RuntimeError(f"the template sagas ended {sorted(groups)}")
    out.write_bytes(pickle.dumps(groups))
    emit({"groups": {status: len(g) for status, g in groups.items()}})


def batches(groups: dict[str, list[list[Any]]], k: int, sagas: int) -> list[list[Any]]:
    """A closed loop of ``k`` sagas replaying the templates until ``sagas`` sagas ended: each
    batch holds the next write group of every saga in flight."""
    numbers = itertools.count()
    slots: list[tuple[int, int]] = [(next(numbers), 0) for _ in range(k)]
    out: list[list[Any]] = []
    ended = 0
    while ended < sagas:
        batch: list[Any] = []
        for position, (number, stage) in enumerate(slots):
            template = groups["compensated" if fails(number) else "completed"]
            batch += [attrs.evolve(w, saga_id=f"s-{number}") for w in template[stage]]
            if stage + 1 == len(template):
                ended += 1
                slots[position] = (next(numbers), 0)
            else:
                slots[position] = (number, stage + 1)
        out.append(batch)
    return out


def constant_checksums() -> None:
    """Every checksum the store computes becomes 0 (read through the module at each call, as
    ``apply`` and ``rows`` call them)."""
    from understudy.persistence import integrity

    for name in CHECKSUM_FUNCTIONS:
        setattr(integrity, name, lambda *parts: 0)


def _time_apply(
    path: Path, sync: str, work: list[list[Any]], lease_on: bool, warm: int
) -> tuple[float, float]:
    """Seconds and CPU seconds for the batches of ``work`` after the first ``warm`` (which
    compile the statements and fill the caches), applied as a saga host does."""
    from understudy.persistence.sqlite import SQLiteStore

    store = SQLiteStore(path, synchronous=sync)
    try:
        store.fix_shards(1)
        lease = store.acquire(0, "bench", 3600.0, {"by": "bench.checksums"})
        assert lease is not None
        for batch in work[:warm]:
            _apply(store, batch, lease if lease_on else None)
        began, cpu = time.perf_counter(), time.process_time()
        for batch in work[warm:]:
            _apply(store, batch, lease if lease_on else None)
        return time.perf_counter() - began, time.process_time() - cpu
    finally:
        store.close()


def _stored(path: Path) -> dict[str, int]:
    """What the timed loop left in the file: its rows, and how many carry a zero checksum
    (all of them in ``constant`` mode, none otherwise: the proof the modes differ as said)."""
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(path)) as db:
        sagas, zero_sagas, terminal = db.execute(
            "SELECT count(*), coalesce(sum(payload_sum = 0 AND snapshot_sum = 0), 0), "
            "coalesce(sum(status IN ('completed', 'compensated')), 0) FROM understudy_sagas"
        ).fetchone()
        events, zero_events = db.execute(
            "SELECT count(*), coalesce(sum(detail_sum = 0), 0) FROM understudy_events"
        ).fetchone()
    return {
        "sagas": sagas,
        "terminal": terminal,
        "zero_checksum_sagas": zero_sagas,
        "events": events,
        "zero_checksum_events": zero_events,
    }


def _apply(store: Any, batch: list[Any], lease: Any) -> None:
    if lease is not None:
        store.blame(lease, list(dict.fromkeys(w.saga_id for w in batch)))
    results = store.apply(batch, lease)
    if not all(results):
        raise RuntimeError(f"{results.count(False)} writes of a batch were not applied")


def _checksum_us_per_saga(groups: dict[str, list[list[Any]]], repeat: int = 2000) -> float:
    """The CPU of every checksum one saga's writes carry, as apply computes them, averaged over
    the one-in-ten mix of completed and compensated sagas; in microseconds."""
    from understudy import codec
    from understudy.persistence import integrity
    from understudy.persistence.base import NewSaga

    def sums(writes: list[Any]) -> Callable[[], None]:
        details = [
            (w, e, codec.encode(e.detail, "event detail") if e.detail else None)
            for w in writes
            for e in w.events
        ]

        def run() -> None:
            for w in writes:
                if isinstance(w, NewSaga):
                    integrity.payload_sum(w.saga_id, w.definition, w.version, w.payload)
                    integrity.snapshot_sum(w.saga_id, "running", 0, None, None)
                else:
                    integrity.snapshot_sum(
                        w.saga_id, w.status, w.snapshot_version, w.snapshot, w.reason
                    )
            for w, e, detail in details:
                integrity.event_sum(w.saga_id, e.kind, e.step, e.attempt, 1, detail)

        return run

    cost = {}
    for status, template in groups.items():
        run = sums([w for group in template for w in group])
        began = time.process_time()
        for _ in range(repeat):
            run()
        cost[status] = (time.process_time() - began) / repeat
    return (cost["completed"] * 9 + cost["compensated"]) / 10 * 1e6


def _apply_child(mode: str, templates: Path, out: Path, sizes: list[int], sagas: int) -> None:
    groups = pickle.loads(templates.read_bytes())
    checksum_us = _checksum_us_per_saga(groups) if mode == "committed" else None
    if mode == "constant":
        constant_checksums()
    runs = []
    for k in sizes:
        work = batches(groups, k, sagas)
        warm = min(5, len(work) // 4)
        timed = len(work) - warm
        for sync in SYNCS:
            path = out / f"k{k}-{sync}.db"
            seconds, cpu = _time_apply(path, sync, work, mode != "no-lease", warm)
            runs.append(
                {
                    "mode": mode,
                    "k": k,
                    "sync": sync,
                    "batches": timed,
                    "us_per_batch": seconds / timed * 1e6,
                    "cpu_us_per_batch": cpu / timed * 1e6,
                    "stored": _stored(path),
                }
            )
    emit({"runs": runs, "checksum_us_per_saga": checksum_us})


def main(argv: list[str]) -> None:
    if not argv:
        with tempfile.TemporaryDirectory(prefix="checksums-") as tmp:
            result = measure(Path(tmp))
        for row in result["rows"]:
            print(
                f"k={row['k']:<3} {row['sync']:<4} "
                + "  ".join(f"{m} {v:8.1f} us" for m, v in row["us_per_batch"].items())
                + f"  checksums x{row['checksums_ratio']:.3f}  lease x{row['lease_ratio']:.3f}"
            )
        print(f"checksums per saga: {result['checksum_us_per_saga']:.1f} us of CPU")
        return
    if argv[0] == "capture":
        _capture(Path(argv[1]), Path(argv[2]))
    elif argv[0] == "apply":
        sizes = [int(k) for k in argv[4].split(",")]
        _apply_child(argv[1], Path(argv[2]), Path(argv[3]), sizes, int(argv[5]))
    else:
        raise SystemExit("usage: python -m bench.checksums [capture|apply ...]")


if __name__ == "__main__":
    # Run from the importable module, not __main__: the participants travel by import path.
    from bench import checksums

    checksums.main(sys.argv[1:])
