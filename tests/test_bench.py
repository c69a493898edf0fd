"""The benchmark suite's smoke run: every part of ``python -m bench`` still runs and measures
what it says (every saga terminal, one in ten compensated, sagas held and recovered). Figures
are printed, never asserted: timing belongs to the benchmark, not to tests."""

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
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    results = json.loads((out / "results.json").read_text())
    return results, done.stdout


def test_every_section_is_measured(smoke: tuple[dict, str]) -> None:
    results, table = smoke
    assert results["errors"] == []
    storage = results["storage"]
    assert storage["single_row_commits_per_s"] > 0
    assert storage["rows_per_s_at_100_per_commit"] > storage["single_row_commits_per_s"]
    for section in ("Order saga", "Per-step overhead", "Steps per saga", "in flight", "Goals"):
        assert section in table


def test_every_system_runs_the_order_saga_to_its_end(smoke: tuple[dict, str]) -> None:
    results, _table = smoke
    runs = results["throughput"]
    systems = {r["system"] for r in runs}
    expected = {
        "understudy in-process",
        "understudy TCP",
        "floor: plain functions",
        "floor: group commit",
    }
    assert expected <= systems
    for run in runs:
        # Every saga of the run ended, and exactly the declined ones (index % 10 == 9)
        # compensated: a figure from a run that lost or misrouted sagas would mean nothing.
        assert run["sagas"] >= run["concurrency"]
        assert run["compensated"] == run["sagas"] // 10, run
        assert run["sagas_per_s"] > 0 and run["p99_ms"] >= run["p50_ms"] > 0


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
        assert row["per_step_p50_ms"] > 0 and row["round_trip_ms"] > 0
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
