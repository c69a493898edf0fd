"""understudy's own figures: throughput, per-step overhead and step scaling, on a given base.

Each measurement runs in a fresh child process (``python -m bench.understudy_saga ...``), so one
run's actor processes, caches and allocator state cannot leak into the next, and the CPU of the
whole system (the child and, on a multi-process base, every actor process it forked) is read
from /proc at the start and end of the measured window.
"""

from __future__ import annotations

import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    LABELS,
    PG_LABELS,
    SERVER_PID_VARIABLE,
    STORE_VARIABLE,
    Throughput,
    closed_loop,
    cpu_of,
    emit,
    full_sync,
    parse,
    percentile,
    server_cpu,
)
from bench.participants import (
    STYLES,
    Echo,
    chain_definition,
    order_participants,
    payload,
)
from bench.understudy_crash import admin_sessions, system_pids
from understudy import Understudy
from understudy.actors.system import ActorTypeDispatcher, start_actor_system

ROOT = Path(__file__).resolve().parent.parent


#: Set in a child's environment: the store's checksums are replaced by a constant there.
CONSTANT_CHECKSUMS_VARIABLE = "UNDERSTUDY_BENCH_CONSTANT_CHECKSUMS"

#: A saga's terminal status as ``closed_loop`` counts it: compensated, completed, or neither.
ENDINGS = {"compensated": True, "completed": False}


def _child(args: list[str], timeout: float = 900.0, env: dict[str, str] | None = None) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "bench.understudy_saga", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env} if env else None,
    )  # the children of a PostgreSQL run (and only those) learn the server from ``env``
    if done.returncode != 0:
        raise RuntimeError(
            f"bench child {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-4000:]}"
        )
    return parse(done.stdout)


# --- throughput -------------------------------------------------------------------------------


def throughput(
    base: str,
    workdir: Path,
    concurrency: int,
    total: int,
    store: str | None = None,
    server_pid: int | None = None,
    constant_checksums: bool = False,
    style: str = "orchestrated",
) -> Throughput:
    """``total`` sagas at ``concurrency`` on ``base``, the saga store in ``workdir/sagas.db``
    or, with ``store`` (a fresh PostgreSQL database's URL), there; the participants' ledgers
    are SQLite files in ``workdir`` either way. ``server_pid``: the PostgreSQL server's
    postmaster, whose CPU then counts in the run's. ``constant_checksums``: the store's checksum
    functions return a constant in the child (``bench.checksums``; on the in-process base only,
    where the store runs in the child itself). ``style``: the order as an orchestrated saga
    (create, reserve, charge) or as a workflow (reserve and charge at once after create)."""
    args = ["throughput", base, str(workdir), str(concurrency), str(total), style]
    env = {}
    if constant_checksums:
        if base != "simpleSystemBase":
            raise ValueError("constant checksums reach the store only on the in-process base")
        env[CONSTANT_CHECKSUMS_VARIABLE] = "1"
    if store:
        env[STORE_VARIABLE] = store
        if server_pid:
            env[SERVER_PID_VARIABLE] = str(server_pid)
    return Throughput(**_child(args, env=env))


def _throughput(
    base: str, workdir: Path, concurrency: int, total: int, style: str = "orchestrated"
) -> dict[str, Any]:
    store = os.environ.get(STORE_VARIABLE)
    label = PG_LABELS[base] if store else LABELS[base]
    if style != "orchestrated":
        label += f", {style}"
    if os.environ.get(CONSTANT_CHECKSUMS_VARIABLE):
        from bench.checksums import constant_checksums

        constant_checksums()
        label += ", checksums constant"
    with Understudy.start(
        store or workdir / "sagas.db", [STYLES[style]()], order_participants(workdir), base=base
    ) as us:
        for i in range(20):  # warm up: imports, caches, every participant's first commit
            us.run(f"warm-{i}", "order", payload(i))
        # Every process of the system: on a multi-process base, Thespian's admin detaches
        # into its own session with the actor processes it forks.
        pids = system_pids(admin_sessions(us))

        def start(index: int, done: Any) -> None:
            future = us.submit_future(f"s-{index}", "order", payload(index))
            future.add_done_callback(lambda f: done(ENDINGS.get(f.result().status)))

        cpu_before, server_before = cpu_of(pids), server_cpu()
        result = closed_loop(label, concurrency, total, start)
        result.cpu_seconds = cpu_of(pids) - cpu_before
        server_after = server_cpu()
        if server_before is not None and server_after is not None:
            # The saga store's server works for this system: its CPU counts as the system's.
            result.server_cpu_seconds = server_after - server_before
            result.cpu_seconds += result.server_cpu_seconds
    return result.__dict__


# --- per-step overhead ------------------------------------------------------------------------


class _Pong(ActorTypeDispatcher):
    def receiveMsg_str(self, msg: str, sender: Any) -> None:
        self.send(sender, msg)


class _Pinger(ActorTypeDispatcher):
    """Times ``n`` actor-to-actor round trips to a :class:`_Pong` (what a step's request and
    reply cost on this base, without understudy)."""

    def receiveMsg_tuple(self, msg: tuple[Any, ...], sender: Any) -> None:
        n, target = msg
        self.n, self.target, self.requester = n, target, sender
        self.times: list[float] = []
        self.at = time.perf_counter()
        self.send(target, "ping")

    def receiveMsg_str(self, msg: str, sender: Any) -> None:
        now = time.perf_counter()
        self.times.append(now - self.at)
        if len(self.times) >= self.n:
            self.send(self.requester, statistics.median(self.times))
            return
        self.at = time.perf_counter()
        self.send(self.target, "ping")


def round_trip(base: str, n: int = 500) -> float:
    """Median actor-to-actor round trip on ``base``, in seconds."""
    asys = start_actor_system(base)
    try:
        pong = asys.createActor(_Pong)
        pinger = asys.createActor(_Pinger)
        asys.ask(pinger, (20, pong), 30)  # warm up (connections on TCP)
        return float(asys.ask(pinger, (n, pong), 60))
    finally:
        asys.shutdown()


def commit_time(path: Path, n: int = 300) -> float:
    """Median time of one single-row FULL commit, in seconds."""
    db = full_sync(sqlite3.connect(path, isolation_level=None))
    db.execute("CREATE TABLE t (a INTEGER)")
    times = []
    for i in range(n):
        at = time.perf_counter()
        db.execute("BEGIN")
        db.execute("INSERT INTO t VALUES (?)", (i,))
        db.execute("COMMIT")
        times.append(time.perf_counter() - at)
    db.close()
    return statistics.median(times)


def step_overhead(base: str, workdir: Path, sagas: int = 200) -> dict[str, Any]:
    return dict(_child(["overhead", base, str(workdir), str(sagas)]))


def _step_overhead(base: str, workdir: Path, sagas: int) -> dict[str, Any]:
    rtt = round_trip(base)
    commit = commit_time(workdir / "commit.db")
    short, long_ = chain_definition(1), chain_definition(11)
    echo = [("echo", Echo, {"database": str(workdir / "echo.db")})]
    p50: dict[int, float] = {}
    with Understudy.start(workdir / "sagas.db", [short, long_], echo, base=base) as us:
        for definition in (short, long_):
            for i in range(10):
                us.run(f"warm-{definition.name}-{i}", definition.name, {})
            latencies = []
            for i in range(sagas):
                at = time.perf_counter()
                us.run(f"{definition.name}-{i}", definition.name, {})
                latencies.append(time.perf_counter() - at)
            p50[len(definition.steps)] = percentile(latencies, 0.5)
    per_step = (p50[11] - p50[1]) / 10
    return {
        "base": base,
        "round_trip_ms": rtt * 1000,
        "commit_ms": commit * 1000,
        "saga_1_step_p50_ms": p50[1] * 1000,
        "saga_11_steps_p50_ms": p50[11] * 1000,
        "per_step_p50_ms": per_step * 1000,
        "ratio_to_rtt_plus_commit": per_step / (rtt + commit),
    }


# --- steps per saga ---------------------------------------------------------------------------


def step_scaling(
    base: str,
    workdir: Path,
    counts: tuple[int, ...] = (3, 10, 30),
    concurrency: int = 50,
    sagas: int = 600,
) -> dict[str, Any]:
    return dict(
        _child(
            ["steps", base, str(workdir), ",".join(map(str, counts)), str(concurrency), str(sagas)]
        )
    )


def _step_scaling(
    base: str, workdir: Path, counts: list[int], concurrency: int, sagas: int
) -> dict[str, Any]:
    definitions = [chain_definition(n) for n in counts]
    echo = [("echo", Echo, {"database": str(workdir / "echo.db")})]
    rows = []
    with Understudy.start(workdir / "sagas.db", definitions, echo, base=base) as us:
        for definition in definitions:
            name = definition.name
            for i in range(5):
                us.run(f"warm-{name}-{i}", name, {})

            def start(index: int, done: Any, name: str = name) -> None:
                future = us.submit_future(f"{name}-{index}", name, {})
                future.add_done_callback(lambda f: done(False))

            result = closed_loop(name, concurrency, sagas, start, declined=None)
            steps = len(definition.steps)
            rows.append(
                {
                    "steps": steps,
                    "sagas_per_s": result.sagas_per_s,
                    "ms_per_saga": 1000 / result.sagas_per_s,
                    "ms_per_step": 1000 / (result.sagas_per_s * steps),
                }
            )
    first = rows[0]["ms_per_step"]
    for row in rows:
        # 1.0 is linear growth; a cost rewritten whole at every step shows as growing ratios.
        row["per_step_vs_fewest"] = row["ms_per_step"] / first
    return {"base": base, "concurrency": concurrency, "rows": rows}


def main(argv: list[str]) -> None:
    mode, base, workdir = argv[0], argv[1], Path(argv[2])
    if mode == "throughput":
        style = argv[5] if len(argv) > 5 else "orchestrated"
        emit(_throughput(base, workdir, int(argv[3]), int(argv[4]), style))
    elif mode == "overhead":
        emit(_step_overhead(base, workdir, int(argv[3])))
    elif mode == "steps":
        counts = [int(c) for c in argv[3].split(",")]
        emit(_step_scaling(base, workdir, counts, int(argv[4]), int(argv[5])))
    elif mode == "selftest":
        for b in ("simpleSystemBase", "multiprocTCPBase"):
            for c in (1, 50):
                with tempfile.TemporaryDirectory() as tmp:
                    print(json.dumps(throughput(b, Path(tmp), c, 200).summary()))
            with tempfile.TemporaryDirectory() as tmp:
                print(json.dumps(step_overhead(b, Path(tmp), 50)))
            with tempfile.TemporaryDirectory() as tmp:
                print(json.dumps(step_scaling(b, Path(tmp), sagas=100)))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    # Run from the importable module, not __main__: actor classes travel by import path.
    from bench import understudy_saga

    understudy_saga.main(sys.argv[1:])
