"""Run understudy's benchmark suite: ``python -m bench`` (``--quick`` for a smoke run).

Every figure is measured in this one run, side by side, and the goals are checked as ratios
between figures of the same run: the machines these run on are shared, and absolute times
drift from one minute to the next. Prints a table, and writes ``results.json`` and
``figures.png`` to ``--out`` (default ``bench-results/``).

The peers (DBOS, Temporal) and the chart need the ``bench`` extra:
``pip install -e '.[bench]'``. Without it their rows say so and the rest still runs.

The PostgreSQL rows (understudy's saga store and DBOS's system database on PostgreSQL, and
PostgreSQL's own ceiling) run on the server given by ``--postgres URL`` or
``UNDERSTUDY_BENCH_POSTGRES_URL``, else on a throwaway server the suite starts with
``.ci/postgres`` and stops at the end; each run gets a database of its own. Without a server or
the PostgreSQL binaries, those rows say why and the rest still runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench import checksums, floor, understudy_crash, understudy_saga
from bench import postgres as pg
from bench.common import BASES, LABELS, PG_LABELS, Throughput
from bench.peers import dbos_saga, temporal_saga
from bench.report import render_chart, render_table

CONCURRENCY = (1, 10, 50, 1000)
PEERS = (dbos_saga, temporal_saga)
SECTIONS = ("storage", "throughput", "checksums", "overhead", "steps", "memory", "recovery")
#: What a run on PostgreSQL is called in the results when there is no server for it.
POSTGRES = "PostgreSQL"


class Sizes:
    """How many sagas each figure uses; ``quick`` is the smoke run CI makes (seconds, not
    minutes: it proves every part of the suite still runs, its figures mean little)."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        # Sagas per closed-loop run, by system and concurrency: enough for a few seconds each,
        # and never fewer than the concurrency (1,000 in flight needs 1,000 sagas).
        if quick:
            self.concurrency: tuple[int, ...] = (1, 10, 50)
            self.throughput = {
                "simpleSystemBase": {1: 20, 10: 50, 50: 100},
                "multiprocTCPBase": {1: 10, 10: 30, 50: 50},
                "peer": {1: 10, 10: 20, 50: 50},
                "floor": {1: 50, 10: 100, 50: 200},
            }
        else:
            self.concurrency = CONCURRENCY
            self.throughput = {
                "simpleSystemBase": {1: 400, 10: 1500, 50: 3000, 1000: 5000},
                "multiprocTCPBase": {1: 150, 10: 600, 50: 1500, 1000: 3000},
                "peer": {1: 60, 10: 200, 50: 400, 1000: 1000},
                "floor": {1: 2000, 10: 3000, 50: 5000, 1000: 5000},
            }
        self.overhead_sagas = 10 if quick else 300
        self.step_sagas = {
            "simpleSystemBase": 20 if quick else 1000,
            "multiprocTCPBase": 10 if quick else 300,
        }
        # The store's integrity micro-benchmark: rounds of the three modes, sagas per loop.
        self.checksum_rounds = 1 if quick else 7
        self.checksum_sagas = 120 if quick else 600
        self.in_flight = 300 if quick else 10_000
        self.unfinished = 300 if quick else 10_000
        self.peer_unfinished = 10 if quick else 500

    def total(self, kind: str, concurrency: int) -> int:
        return max(self.throughput[kind][concurrency], concurrency)


def _attempt(errors: list[str], what: str, run: Callable[[], Any]) -> Any:
    """Run one measurement; a failure is reported in the results instead of ending the suite."""
    started = time.perf_counter()
    print(f"  {what} ...", end="", flush=True, file=sys.stderr)
    try:
        value = run()
    except Exception as exc:  # one broken figure must not hide the others
        print(f" FAILED: {exc}", file=sys.stderr)
        errors.append(f"{what}: {type(exc).__name__}: {exc}")
        traceback.print_exc(file=sys.stderr)
        return None
    print(f" {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return value


def run_suite(
    sizes: Sizes,
    root: Path,
    only: set[str] | None = None,
    postgres: str | None = None,
) -> dict[str, Any]:
    """Every wanted section, on ``postgres`` (a server's URL) or a throwaway PostgreSQL server
    for the PostgreSQL rows (see :mod:`bench.postgres`)."""
    wants_server = only is None or bool({"storage", "throughput"} & only)
    if not wants_server:
        return _run_suite(sizes, root, only, None)
    with pg.server(postgres) as server:
        return _run_suite(sizes, root, only, server)


def _run_suite(
    sizes: Sizes, root: Path, only: set[str] | None, server: pg.Server | str | None
) -> dict[str, Any]:
    errors: list[str] = []
    results: dict[str, Any] = {
        "quick": sizes.quick,
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "errors": errors,
    }

    def wanted(name: str) -> bool:
        return only is None or name in only

    peers = {p.NAME: p for p in PEERS if p.available() is None}
    results["unavailable"] = {p.NAME: p.available() for p in PEERS if p.available() is not None}

    def tmp() -> Path:
        return Path(tempfile.mkdtemp(dir=root))

    # The PostgreSQL server, what it is, and its postmaster (whose CPU counts in the runs').
    postgres: pg.Server | None = None
    server_pid: int | None = None
    if isinstance(server, str):
        results["unavailable"][POSTGRES] = server
    elif server is not None:
        described = _attempt(errors, "PostgreSQL server", server.describe)
        if described is not None:
            postgres = server
            server_pid = server.postmaster_pid()
            results["postgres"] = {**described, "postmaster_cpu_counted": server_pid is not None}

    def on_postgres(label: str, run: Callable[[str], Throughput]) -> Callable[[], Throughput]:
        """``run`` on a database created for it alone on the server, dropped after."""
        assert postgres is not None

        def measure() -> Throughput:
            with postgres.database(label) as url:
                return run(url)

        return measure

    if wanted("storage"):
        print("storage ceiling", file=sys.stderr)
        results["storage"] = _attempt(errors, "SQLite FULL commits", lambda: floor.ceiling(tmp()))
        rtt = _attempt(errors, "thread hand-off", floor.thread_round_trip)
        aio = _attempt(errors, "aiosqlite ÷ sqlite3 commits", lambda: floor.aiosqlite_ratio(tmp()))
        if results["storage"] is not None:
            results["storage"]["thread_round_trip_ms"] = None if rtt is None else rtt * 1000
            results["storage"]["aiosqlite_over_sqlite3"] = aio
        if postgres is not None:
            results["postgres_storage"] = _attempt(
                errors, "PostgreSQL commits (psycopg)", lambda: pg.ceiling(postgres)
            )

    if wanted("throughput"):
        runs: list[dict[str, Any]] = []
        results["throughput"] = runs
        for c in sizes.concurrency:
            print(f"throughput at concurrency {c}", file=sys.stderr)
            candidates: list[tuple[str, Callable[[], Throughput]]] = []
            for base in BASES:
                n = sizes.total(base, c)
                candidates.append(
                    (
                        LABELS[base],
                        partial(understudy_saga.throughput, base, tmp(), c, n),
                    )
                )
            if postgres is not None:
                for base in BASES:
                    n = sizes.total(base, c)
                    candidates.append(
                        (
                            PG_LABELS[base],
                            on_postgres(
                                f"understudy_{base}_c{c}",
                                partial(_understudy_on, base, tmp(), c, n, server_pid=server_pid),
                            ),
                        )
                    )
            for name, peer in peers.items():
                n = sizes.total("peer", c)
                candidates.append((name, partial(peer.throughput, tmp(), c, n)))
                if peer is dbos_saga and postgres is not None:
                    candidates.append(
                        (
                            dbos_saga.PG_NAME,
                            on_postgres(
                                f"dbos_c{c}",
                                partial(_dbos_on, tmp(), c, n, server_pid=server_pid),
                            ),
                        )
                    )
            if c == 1:
                n = sizes.total("floor", 1)
                candidates.append(("floor: plain functions", partial(floor.plain, tmp(), n)))
            n = sizes.total("floor", c)
            candidates.append(("floor: group commit", partial(floor.group_commit, tmp(), c, n)))
            for label, measure in candidates:
                # A run that lost or misrouted a saga is a failure, not a figure.
                result = _attempt(errors, f"{label} c={c}", lambda m=measure: m().check())
                if result is not None:
                    runs.append(result.summary())

    if wanted("checksums"):
        print("the SQLite store's checksums and lease check", file=sys.stderr)
        results["checksums"] = _attempt(
            errors,
            f"SQLiteStore.apply, {sizes.checksum_rounds} round(s) of 3 modes",
            lambda: checksums.measure(
                tmp(),
                rounds=sizes.checksum_rounds,
                sagas=sizes.checksum_sagas,
                end_to_end_sagas=sizes.total("simpleSystemBase", 50),
            ),
        )

    def per_base(label: str, measure: Callable[[str], Any]) -> list[Any]:
        found = [_attempt(errors, f"{label} {base}", partial(measure, base)) for base in BASES]
        return [r for r in found if r is not None]

    if wanted("overhead"):
        print("per-step overhead", file=sys.stderr)
        results["overhead"] = per_base(
            "per-step overhead",
            lambda b: understudy_saga.step_overhead(b, tmp(), sizes.overhead_sagas),
        )

    if wanted("steps"):
        print("steps per saga", file=sys.stderr)
        results["steps"] = per_base(
            "steps 3/10/30",
            lambda b: understudy_saga.step_scaling(b, tmp(), sagas=sizes.step_sagas[b]),
        )

    if wanted("memory"):
        print(f"{sizes.in_flight} sagas in flight", file=sys.stderr)
        results["memory"] = per_base(
            "memory", lambda b: understudy_crash.memory(b, tmp(), sizes.in_flight)
        )

    if wanted("recovery"):
        print("recovery after SIGKILL", file=sys.stderr)
        recoveries = []
        for base in BASES:
            r = _attempt(
                errors,
                f"recovery {base} ({sizes.unfinished} unfinished)",
                lambda b=base: understudy_crash.recovery(b, tmp(), sizes.unfinished),
            )
            if r is not None:
                recoveries.append(r.summary())
        for name, peer in peers.items():
            r = _attempt(
                errors,
                f"recovery {name} ({sizes.peer_unfinished} unfinished)",
                lambda p=peer: p.recovery(tmp(), sizes.peer_unfinished),
            )
            if r is not None:
                recoveries.append(r.summary())
        results["recovery"] = recoveries
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    return results


def _understudy_on(
    base: str, workdir: Path, c: int, n: int, url: str, server_pid: int | None
) -> Throughput:
    return understudy_saga.throughput(base, workdir, c, n, store=url, server_pid=server_pid)


def _dbos_on(workdir: Path, c: int, n: int, url: str, server_pid: int | None) -> Throughput:
    return dbos_saga.throughput(workdir, c, n, database_url=url, server_pid=server_pid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run (a minute or two)")
    parser.add_argument(
        "--out", default="bench-results", help="folder for results.json, figures.png"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        help="run only these sections (repeatable)",
    )
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help=f"a PostgreSQL server for the PostgreSQL rows (a role that may create databases; "
        f"default: ${pg.URL_VARIABLE}, else a throwaway server started with .ci/postgres)",
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="understudy-bench-") as root:
        results = run_suite(
            Sizes(args.quick),
            Path(root),
            set(args.only) if args.only else None,
            postgres=args.postgres,
        )
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(render_table(results))
    chart = render_chart(results, out / "figures.png")
    print(f"\nwrote {out / 'results.json'}" + (f" and {chart}" if chart else ""))
    if results["errors"]:
        print(f"{len(results['errors'])} figure(s) failed: see above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
