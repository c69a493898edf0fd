"""The benchmark suite's smoke run: every part of ``python -m bench`` still runs and measures
what it says (every saga terminal, one in ten compensated, sagas held and recovered). Figures
are printed, never asserted: timing belongs to the benchmark, not to tests.

The PostgreSQL rows run on the test PostgreSQL server (``postgres_server_url`` in tests/pg.py:
CI's, named by UNDERSTUDY_TEST_POSTGRES_URL, or a throwaway one), given to the suite with
``--postgres``."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PEERS = {"DBOS": "dbos", "Temporal": "temporalio"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory, postgres_server_url: str) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--out",
            str(out),
            "--postgres",
            postgres_server_url,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    results = json.loads((out / "results.json").read_text())
    return results, done.stdout


def test_every_section_is_measured(smoke: tuple[dict, str]) -> None:
    results, table = smoke
    assert results["errors"] == []
    storage = results["storage"]
    assert storage["single_row_commits_per_s"] > 0
    assert storage["rows_per_s_at_100_per_commit"] > 0
    for section in ("Order saga", "Per-step overhead", "Steps per saga", "in flight", "Goals"):
        assert section in table


def test_every_system_runs_the_order_saga_to_its_end(smoke: tuple[dict, str]) -> None:
    results, _table = smoke
    runs = results["throughput"]
    systems = {r["system"] for r in runs}
    expected = {
        "understudy in-process",
        "understudy TCP",
        "understudy in-process, PostgreSQL",
        "understudy TCP, PostgreSQL",
        "floor: plain functions",
        "floor: group commit",
    }
    assert expected <= systems
    for run in runs:
        # Every saga of the run ended, and exactly the declined ones (index % 10 == 9)
        # compensated: a figure from a run that lost or misrouted sagas would mean nothing.
        assert run["sagas"] >= run["concurrency"]
        assert run["compensated"] == run["sagas"] // 10, run
        assert run["misrouted"] == 0, run
        assert run["sagas_per_s"] > 0 and run["p99_ms"] >= run["p50_ms"] > 0


def test_the_postgresql_rows_run_on_a_durable_server_a_fresh_database_each(
    smoke: tuple[dict, str], postgres_server_url: str
) -> None:
    results, table = smoke
    server = results["postgres"]
    # What the figures rest on: every commit waits for its WAL flush to disk.
    assert (server["fsync"], server["synchronous_commit"]) == ("on", "on")
    runs = [r for r in results["throughput"] if r["system"].endswith(", PostgreSQL")]
    understudy = {r["system"] for r in runs if r["system"].startswith("understudy")}
    assert understudy == {"understudy in-process, PostgreSQL", "understudy TCP, PostgreSQL"}
    for system in understudy:
        assert {r["concurrency"] for r in runs if r["system"] == system} == {1, 10, 50}
    ceiling = results["postgres_storage"]
    assert ceiling["single_row_commits_per_s"] > 0 and ceiling["rows_per_s_at_100_per_commit"] > 0
    assert "Storage ceiling (PostgreSQL" in table
    import psycopg

    # One database per run, each dropped after it: none is left on the server.
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        left = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'bench_%'")
        assert left.fetchall() == []


def test_the_checksum_figures_compare_what_they_say(smoke: tuple[dict, str]) -> None:
    results, table = smoke
    integrity = results["checksums"]
    assert {(r["k"], r["sync"]) for r in integrity["rows"]} == {
        (1, "FULL"),
        (1, "NORMAL"),
        (50, "FULL"),
        (50, "NORMAL"),
    }
    for run in integrity["runs"]:
        stored = run["stored"]
        # Every batch applied; constant mode wrote a zero checksum on every row, the others none.
        assert stored["terminal"] > 0 and stored["events"] > stored["sagas"]
        zero = (stored["zero_checksum_sagas"], stored["zero_checksum_events"])
        expected = (stored["sagas"], stored["events"]) if run["mode"] == "constant" else (0, 0)
        assert zero == expected, run
    assert {r["mode"] for r in integrity["runs"]} == {"committed", "constant", "no-lease"}
    assert integrity["checksum_us_per_saga"] > 0
    whole = integrity["end_to_end"]
    for mode in ("committed", "constant"):
        for run in whole["runs"][mode]:
            assert run["compensated"] == run["sagas"] // 10 and run["misrouted"] == 0, run
    assert whole["runs"]["constant"][0]["system"].endswith("checksums constant")
    assert "SQLiteStore.apply" in table


@pytest.mark.parametrize("peer", sorted(PEERS))
def test_peers_run_the_same_saga(smoke: tuple[dict, str], peer: str) -> None:
    if importlib.util.find_spec(PEERS[peer]) is None:
        pytest.skip(f"{peer} is not installed: pip install -e '.[bench]'")
    results, _table = smoke
    runs = [r for r in results["throughput"] if r["system"] == peer]
    assert {r["concurrency"] for r in runs} == {1, 10, 50}
    for run in runs:
        assert run["compensated"] == run["sagas"] // 10, run
    recovered = [r for r in results["recovery"] if r["system"] == peer]
    assert len(recovered) == 1 and recovered[0]["recovered_per_s"] > 0


def test_dbos_runs_the_same_saga_on_postgresql(smoke: tuple[dict, str]) -> None:
    if importlib.util.find_spec("dbos") is None:
        pytest.skip("DBOS is not installed: pip install -e '.[bench]'")
    results, _table = smoke
    runs = [r for r in results["throughput"] if r["system"] == "DBOS, PostgreSQL"]
    assert {r["concurrency"] for r in runs} == {1, 10, 50}
    for run in runs:
        assert run["compensated"] == run["sagas"] // 10 and run["misrouted"] == 0, run


def test_without_a_postgresql_server_its_rows_say_why_and_the_rest_runs(
    tmp_path: Path,
) -> None:
    from bench.__main__ import Sizes, _run_suite
    from bench.report import render_table

    why = "no PostgreSQL server binaries on this machine (a test says so)"
    results = _run_suite(Sizes(quick=True), tmp_path, {"storage"}, why)
    assert results["errors"] == []
    assert results["unavailable"]["PostgreSQL"] == why
    assert results["storage"]["single_row_commits_per_s"] > 0
    assert "postgres_storage" not in results
    assert f"PostgreSQL: not measured ({why})" in render_table(results)


def test_sagas_in_flight_and_recovery_are_measured_on_both_bases(
    smoke: tuple[dict, str],
) -> None:
    results, _table = smoke
    assert {m["base"] for m in results["memory"]} == {"simpleSystemBase", "multiprocTCPBase"}
    for row in results["memory"]:
        assert row["sagas"] == 300 and row["rss_total_mib"] > 0
    recovered = {r["system"]: r for r in results["recovery"]}
    for system in ("understudy in-process", "understudy TCP"):
        run = recovered[system]
        assert run["unfinished"] == 300
        assert run["detail"]["completed"] + run["detail"]["compensated"] == 300
        assert run["detail"]["failed"] == 0
    for row in results["overhead"]:
        # Measured, not compared: per-step p50 is a difference of two p50s, which a handful of
        # sagas on a busy machine can make negative.
        assert row["saga_1_step_p50_ms"] > 0 and row["saga_11_steps_p50_ms"] > 0
        assert row["round_trip_ms"] > 0 and row["commit_ms"] > 0
    for row in results["steps"]:
        assert [s["steps"] for s in row["rows"]] == [3, 10, 30]


def test_the_chart_is_drawn_when_matplotlib_is_installed(
    smoke: tuple[dict, str], tmp_path: Path
) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not installed: pip install -e '.[bench]'")
    from bench.report import render_chart

    results, _table = smoke
    path = render_chart(results, tmp_path / "figures.png")
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_status_async_bench_runs_and_prints_its_ratios() -> None:
    """``python -m bench.status_async`` (small sizes): both ways answer every call."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.status_async", "30", "200", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "status_async: 200 concurrent calls beside 30 sagas, 1 rounds each"
    assert all("failed calls: 0" in line for line in lines[1:3])
    assert lines[3].startswith("  shared / per-call: stall x")


@pytest.mark.parametrize("style", ["workflow", "child"])
def test_the_style_bench_runs_and_prints_its_ratio(style: str) -> None:
    """``python -m bench.workflow`` (small sizes): the order in ``style`` against the
    orchestrated order, both run to their ends, and the ratio printed."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.workflow", "simpleSystemBase", "10", "60", "1", style],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "order throughput on simpleSystemBase, 10 in flight, 60 sagas a round"
    assert all("misrouted 0" in line for line in lines[1:3]), lines
    assert lines[-1].startswith(f"{style} / orchestrated: sagas/s x"), lines
