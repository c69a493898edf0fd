"""The suite's table and chart, and the goals checked as ratios between figures of one run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import LABELS, PG_LABELS

IN_PROCESS = LABELS["simpleSystemBase"]
TCP = LABELS["multiprocTCPBase"]
IN_PROCESS_PG = PG_LABELS["simpleSystemBase"]
DBOS_PG = "DBOS, PostgreSQL"
GROUP_FLOOR = "floor: group commit"


def _rate(results: dict[str, Any], system: str, concurrency: int) -> float | None:
    for run in results.get("throughput") or []:
        if run["system"] == system and run["concurrency"] == concurrency:
            return float(run["sagas_per_s"])
    return None


def _recovery(results: dict[str, Any], system: str) -> float | None:
    for run in results.get("recovery") or []:
        if run["system"] == system:
            return float(run["recovered_per_s"])
    return None


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of the suite: the ratio measured in this run, the target, and whether it holds
    (None when a figure it needs is missing)."""
    rows: list[dict[str, Any]] = []

    def ratio(name: str, num: float | None, den: float | None, target: float, at_most=False):
        value = num / den if num is not None and den else None
        ok = None if value is None else (value <= target if at_most else value >= target)
        rows.append({"goal": name, "ratio": value, "target": target, "at_most": at_most, "met": ok})

    ratio(
        "in-process ÷ DBOS, sagas/s at c=50",
        _rate(results, IN_PROCESS, 50),
        _rate(results, "DBOS", 50),
        50,
    )
    ratio(
        "in-process ÷ Temporal, sagas/s at c=50",
        _rate(results, IN_PROCESS, 50),
        _rate(results, "Temporal", 50),
        1,
    )
    ratio(
        "in-process ÷ group-commit floor, sagas/s at c=50",
        _rate(results, IN_PROCESS, 50),
        _rate(results, GROUP_FLOOR, 50),
        0.5,
    )
    ratio("TCP ÷ DBOS, sagas/s at c=50", _rate(results, TCP, 50), _rate(results, "DBOS", 50), 10)
    ratio(
        "in-process on PostgreSQL ÷ DBOS on PostgreSQL, sagas/s at c=50",
        _rate(results, IN_PROCESS_PG, 50),
        _rate(results, DBOS_PG, 50),
        10,
    )
    ratio(
        "in-process on PostgreSQL ÷ in-process on SQLite, sagas/s at c=50",
        _rate(results, IN_PROCESS_PG, 50),
        _rate(results, IN_PROCESS, 50),
        0.5,
    )
    integrity = results.get("checksums")
    if integrity:
        for row in integrity["rows"]:
            if row["sync"] == "FULL":
                ratio(
                    f"SQLite apply, {row['k']} saga(s) a batch: checksums ÷ constant, time",
                    row["us_per_batch"]["committed"],
                    row["us_per_batch"]["constant"],
                    1.05,
                    at_most=True,
                )
        whole = integrity["end_to_end"]
        ratio(
            "checksum CPU per saga ÷ in-process CPU per saga at c=50",
            integrity["checksum_us_per_saga"] / 1000,
            whole["cpu_ms_per_saga"]["committed"],
            0.05,
            at_most=True,
        )
        ratio(
            "in-process c=50, sagas/s: checksums ÷ constant",
            whole["sagas_per_s"]["committed"],
            whole["sagas_per_s"]["constant"],
            0.95,
        )
    for row in results.get("memory") or []:
        ratio(
            f"{row['base']}: total RSS with {row['sagas']:,} in flight ÷ 1 GiB",
            row["rss_total_mib"],
            1024.0,
            1,
            at_most=True,
        )
    dbos = _recovery(results, "DBOS")
    for system in (IN_PROCESS, TCP):
        ratio(f"{system} ÷ DBOS, recovered sagas/s", _recovery(results, system), dbos, 50)
    for row in results.get("overhead") or []:
        ratio(
            f"{row['base']}: per-step p50 ÷ (round trip + FULL commit)",
            row["per_step_p50_ms"],
            row["round_trip_ms"] + row["commit_ms"],
            3,
            at_most=True,
        )
    return rows


def _table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False))  # noqa: E731
    out = [f"\n{title}", line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def render_table(results: dict[str, Any]) -> str:
    parts: list[str] = []
    storage = results.get("storage")
    if storage:
        parts.append(
            _table(
                "Storage ceiling (SQLite WAL, synchronous=FULL)",
                ["figure", "value"],
                [
                    ["single-row commits/s", _num(storage["single_row_commits_per_s"])],
                    [
                        "rows/s at 100 rows per commit",
                        _num(storage["rows_per_s_at_100_per_commit"]),
                    ],
                    ["median commit", f"{storage['commit_ms']:.3f} ms"],
                    [
                        "thread hand-off round trip",
                        f"{_num(storage.get('thread_round_trip_ms'), 3)} ms",
                    ],
                    [
                        "aiosqlite ÷ sqlite3 commit rate",
                        f"{_num(storage.get('aiosqlite_over_sqlite3'), 2)}x",
                    ],
                ],
            )
        )
    pg_storage = results.get("postgres_storage")
    if pg_storage:
        server = results.get("postgres") or {}
        parts.append(
            _table(
                f"Storage ceiling (PostgreSQL {server.get('server_version', '?')}, "
                f"fsync={server.get('fsync', '?')}, "
                f"synchronous_commit={server.get('synchronous_commit', '?')}, psycopg, loopback)",
                ["figure", "value"],
                [
                    ["single-row commits/s", _num(pg_storage["single_row_commits_per_s"])],
                    [
                        "rows/s at 100 rows per commit",
                        _num(pg_storage["rows_per_s_at_100_per_commit"]),
                    ],
                    ["median commit", f"{pg_storage['commit_ms']:.3f} ms"],
                ],
            )
        )
    runs = results.get("throughput") or []
    if runs:
        levels = sorted({r["concurrency"] for r in runs})
        systems = list(dict.fromkeys(r["system"] for r in runs))
        rows = []
        for system in systems:
            row = [system]
            for c in levels:
                run = next(
                    (r for r in runs if r["system"] == system and r["concurrency"] == c), None
                )
                row.append(
                    "-"
                    if run is None
                    else f"{run['sagas_per_s']:,.0f} ({run['p50_ms']:.1f}/{run['p99_ms']:.0f})"
                )
            cpu = next(
                (
                    r["cpu_ms_per_saga"]
                    for r in runs
                    if r["system"] == system
                    and r.get("cpu_ms_per_saga") is not None
                    and r["concurrency"] == max(levels)
                ),
                None,
            )
            row.append(_num(cpu, 2))
            rows.append(row)
        parts.append(
            _table(
                "Order saga, sagas/s (p50/p99 latency ms), closed loop at concurrency c",
                ["system", *[f"c={c}" for c in levels], f"CPU ms/saga at c={max(levels)}"],
                rows,
            )
        )
        if any("server_cpu_ms_per_saga" in r for r in runs):
            parts.append(
                "(PostgreSQL rows: CPU includes the PostgreSQL server's processes; the "
                "participants' ledgers stay in SQLite files)"
            )
    integrity = results.get("checksums")
    if integrity:
        parts.append(
            _table(
                f"SQLiteStore.apply, us per batch (median of {integrity['rounds']} rounds): "
                "checksums and lease check",
                [
                    "sagas/batch",
                    "synchronous",
                    "as committed",
                    "checksums constant",
                    "no lease, no blame",
                    "checksums cost",
                    "lease cost",
                ],
                [
                    [
                        str(r["k"]),
                        r["sync"],
                        f"{r['us_per_batch']['committed']:.0f}",
                        f"{r['us_per_batch']['constant']:.0f}",
                        f"{r['us_per_batch']['no-lease']:.0f}",
                        f"{(r['checksums_ratio'] - 1) * 100:+.1f}%",
                        f"{(r['lease_ratio'] - 1) * 100:+.1f}%",
                    ]
                    for r in integrity["rows"]
                ],
            )
        )
        whole = integrity["end_to_end"]
        parts.append(
            f"checksums computed per saga: {integrity['checksum_us_per_saga']:.1f} us of CPU\n"
            f"in-process order saga at c={whole['concurrency']} (median of "
            f"{len(whole['runs']['committed'])} turns each): "
            f"{whole['sagas_per_s']['committed']:,.0f} sagas/s as committed "
            f"({whole['cpu_ms_per_saga']['committed']:.3f} CPU ms/saga), "
            f"{whole['sagas_per_s']['constant']:,.0f} with constant checksums "
            f"({whole['cpu_ms_per_saga']['constant']:.3f}): "
            f"{(whole['rate_ratio'] - 1) * 100:+.1f}%"
        )
    if results.get("overhead"):
        parts.append(
            _table(
                "Per-step overhead (c=1, a participant that answers at once)",
                ["base", "per-step p50", "round trip", "FULL commit", "÷ (RTT+commit)"],
                [
                    [
                        r["base"],
                        f"{r['per_step_p50_ms']:.3f} ms",
                        f"{r['round_trip_ms']:.3f} ms",
                        f"{r['commit_ms']:.3f} ms",
                        f"{r['ratio_to_rtt_plus_commit']:.2f}x",
                    ]
                    for r in results["overhead"]
                ],
            )
        )
    if results.get("steps"):
        rows = []
        for r in results["steps"]:
            for s in r["rows"]:
                rows.append(
                    [
                        r["base"],
                        str(s["steps"]),
                        _num(s["sagas_per_s"]),
                        f"{s['ms_per_step']:.3f}",
                        f"{s['per_step_vs_fewest']:.2f}x",
                    ]
                )
        parts.append(
            _table(
                "Steps per saga (c=50): cost per step stays flat when growth is linear",
                ["base", "steps", "sagas/s", "ms per step", "per step vs 3 steps"],
                rows,
            )
        )
    if results.get("memory"):
        parts.append(
            _table(
                "Sagas in flight (waiting on a participant that answers later)",
                ["base", "sagas", "total RSS, all processes", "per saga", "processes"],
                [
                    [
                        r["base"],
                        f"{r['sagas']:,}",
                        f"{r['rss_total_mib']:.0f} MiB",
                        f"{r['per_saga_kib']:.2f} KiB",
                        str(r.get("processes", "-")),
                    ]
                    for r in results["memory"]
                ],
            )
        )
    if results.get("recovery"):
        parts.append(
            _table(
                "Recovery: SIGKILL with sagas unfinished, restart, until all are terminal",
                ["system", "unfinished", "seconds", "recovered/s"],
                [
                    [
                        r["system"],
                        f"{r['unfinished']:,}",
                        f"{r['seconds']:.2f}",
                        _num(r["recovered_per_s"]),
                    ]
                    for r in results["recovery"]
                ],
            )
        )
    rows = [
        [
            g["goal"],
            "-" if g["ratio"] is None else f"{g['ratio']:.2f}",
            f"{'<=' if g['at_most'] else '>='} {g['target']:g}",
            {True: "met", False: "NOT MET", None: "no figure"}[g["met"]],
        ]
        for g in goals(results)
    ]
    parts.append(_table("Goals (ratios within this run)", ["goal", "ratio", "target", ""], rows))
    for name, reason in (results.get("unavailable") or {}).items():
        parts.append(f"{name}: not measured ({reason})")
    for error in results.get("errors") or []:
        parts.append(f"FAILED: {error}")
    return "\n".join(parts)


def render_chart(results: dict[str, Any], path: Path) -> Path | None:
    """Draw the figures into ``path`` (PNG); None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    ax = axes[0][0]
    runs = results.get("throughput") or []
    for system in dict.fromkeys(r["system"] for r in runs):
        points = sorted((r["concurrency"], r["sagas_per_s"]) for r in runs if r["system"] == system)
        if system.startswith("understudy"):
            style = "o--" if "PostgreSQL" in system else "o-"
        else:
            style = "s--" if "floor" in system else ("v-." if "PostgreSQL" in system else "^:")
        ax.plot([p[0] for p in points], [p[1] for p in points], style, label=system)
    ax.set(xscale="log", yscale="log", xlabel="sagas in flight", ylabel="sagas/s")
    ax.set_title("Order saga throughput (closed loop)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)

    ax = axes[0][1]
    recoveries = results.get("recovery") or []
    if recoveries:
        names = [f"{r['system']}\n({r['unfinished']:,})" for r in recoveries]
        ax.bar(names, [r["recovered_per_s"] for r in recoveries], color="tab:green")
        ax.set_yscale("log")
    ax.set_title("Recovery after SIGKILL: recovered sagas/s")
    ax.tick_params(axis="x", labelsize=8)

    ax = axes[1][0]
    for r in results.get("steps") or []:
        ax.plot(
            [s["steps"] for s in r["rows"]],
            [s["ms_per_step"] for s in r["rows"]],
            "o-",
            label=r["base"],
        )
    ax.set(xlabel="steps per saga", ylabel="ms per step (c=50)", yscale="log")
    ax.set_title("Cost per step as sagas grow (flat = linear)")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)

    ax = axes[1][1]
    memory = results.get("memory") or []
    if memory:
        ax.bar(
            [f"{m['base']}\n{m['sagas']:,} in flight" for m in memory],
            [m["rss_total_mib"] for m in memory],
            color="tab:purple",
        )
        ax.axhline(1024, color="red", linestyle="--", label="1 GiB")
        ax.legend(fontsize=8)
    ax.set(ylabel="total RSS of all processes, MiB")
    ax.set_title("Memory with sagas in flight")
    ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(
        f"understudy benchmark suite{' (quick)' if results.get('quick') else ''}, "
        f"{results.get('started', '')}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
