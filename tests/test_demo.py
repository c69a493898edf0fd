"""The demo end to end: ``python -m demo`` in a subprocess must pass every ledger check.

The demo is the project's first impression, so it is tested the way a reader runs it: as a
command, from the repository root, on the multi-process base with a host SIGKILLed mid-run and
on the in-process base. A third test breaks a ledger on purpose and expects the check to say so,
so that a demo that always printed PASS could not go unnoticed.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 60  # seconds; each run takes a few


def run_demo(tmp_path: Path, *args: str) -> tuple[int, str, Path]:
    """Run ``python -m demo`` from the repository root; returns (exit status, output, data dir).

    Output goes to a file, not a pipe: an actor process that outlives the demo for a few seconds
    would hold a pipe open and make the test wait for it.
    """
    data = tmp_path / "data"
    log = tmp_path / "demo.log"
    with log.open("w") as out:
        completed = subprocess.run(
            [sys.executable, "-m", "demo", "--dir", str(data), *args],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=RUN_TIMEOUT,
            check=False,
        )
    return completed.returncode, log.read_text(), data


def assert_all_checks_passed(output: str) -> None:
    verdicts = re.findall(r"^  (PASS|FAIL)  (.*)$", output, re.MULTILINE)
    assert verdicts, output
    assert all(verdict == "PASS" for verdict, _ in verdicts), output
    assert re.search(rf"^ALL {len(verdicts)} CHECKS PASSED", output, re.MULTILINE), output


@pytest.mark.multiproc
def test_demo_runs_on_postgresql_and_passes_its_ledger_checks(
    tmp_path: Path, postgres_url: str
) -> None:
    """``python -m demo --store postgresql://...``: the same orders, a host SIGKILLed, every
    ledger check passes, and the URL's credentials are never printed."""
    status, output, _ = run_demo(
        tmp_path, "--orders", "60", "--kills", "1", "--store", postgres_url
    )
    assert status == 0, output
    assert_all_checks_passed(output)
    assert "sagas: 60 |" in output, output
    assert re.search(r"host kills: 1 \| host restarts observed: [1-9]", output), output
    assert "understudy@" not in output  # the user (and any password) stays out of the output


def test_demo_refuses_a_store_that_already_holds_sagas(tmp_path: Path, postgres_url: str) -> None:
    """The demo checks its ledgers against a store of its own: a used one is refused."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, output, _ = run_demo(
        tmp_path / "a", "--orders", "5", "--kills", "0", "--store", postgres_url
    )
    assert first == 0, output
    status, output, _ = run_demo(
        tmp_path / "b", "--orders", "5", "--kills", "0", "--store", postgres_url
    )
    assert status == 2, output
    assert "already holds sagas" in output, output


@pytest.mark.multiproc
def test_demo_survives_a_host_kill_on_tcp(tmp_path: Path) -> None:
    """60 orders with one saga host SIGKILLed: all checks pass and the restart was seen."""
    status, output, _ = run_demo(tmp_path, "--orders", "60", "--kills", "1")
    assert status == 0, output
    assert_all_checks_passed(output)
    assert "sagas: 60 |" in output, output
    assert re.search(r"host kills: 1 \| host restarts observed: [1-9]", output), output
    assert re.search(r"\d+(\.\d+)? sagas/s", output), output


@pytest.mark.parametrize("base", ["multiprocTCPBase", "simpleSystemBase"])
def test_demo_as_a_workflow(tmp_path: Path, base: str) -> None:
    """``--style workflow``: reserve and charge at once once the order exists; with a host
    SIGKILLed on TCP, every check passes, and the timeline shows both branches sent together."""
    kills = "1" if base == "multiprocTCPBase" else "0"
    status, output, data = run_demo(
        tmp_path, "--style", "workflow", "--base", base, "--orders", "60", "--kills", kills
    )
    assert status == 0, output
    assert_all_checks_passed(output)
    assert "60 orders (workflow)" in output, output
    with closing(sqlite3.connect(data / "sagas.db")) as db:
        sent = db.execute(
            "SELECT COUNT(*) FROM (SELECT saga_id, at FROM understudy_events "
            "WHERE kind = 'intent' AND step IN (1, 2) GROUP BY saga_id, at HAVING COUNT(*) = 2)"
        ).fetchone()[0]
    assert sent > 0  # some order sent reserve and charge in one transition


def test_demo_in_process(tmp_path: Path) -> None:
    """On the in-process base the demo says it skips the kills, and every check passes."""
    status, output, data = run_demo(
        tmp_path, "--base", "simpleSystemBase", "--kills", "0", "--orders", "60"
    )
    assert status == 0, output
    assert_all_checks_passed(output)
    assert "failed, needs attention: 0" in output, output
    for ledger in ("sagas.db", "orders.db", "inventory.db", "payments.db"):
        assert (data / ledger).exists(), ledger


def test_check_catches_a_double_charge(tmp_path: Path) -> None:
    """A charge written twice behind the saga's back fails the check, and the demo exit status."""
    status, output, data = run_demo(
        tmp_path, "--base", "simpleSystemBase", "--kills", "0", "--orders", "20", "--seed", "3"
    )
    assert status == 0, output
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from demo.check import check_ledgers
    from demo.workload import make_orders, opening_stock

    with closing(sqlite3.connect(data / "payments.db")) as db, db:
        db.execute(
            "INSERT INTO charges (order_id, card, amount, status, at) "
            "SELECT order_id, card, amount, status, at FROM charges LIMIT 1"
        )
    orders = make_orders(20, 3)
    report = check_ledgers(data, orders, opening_stock(orders))
    failed = {check.name for check in report.checks if not check.ok}
    assert not report.passed
    assert {"no double charge", "card balances match charges"} <= failed, report.checks
