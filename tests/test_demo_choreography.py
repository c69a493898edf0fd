"""``python -m demo --style choreography`` end to end, as a reader runs it: a subprocess from the
repository root, on the multi-process base with reactor processes SIGKILLed mid-run and on the
in-process base; every ledger check must pass. A ledger broken on purpose must fail the check,
so that a demo that always printed PASS could not go unnoticed."""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from test_demo import assert_all_checks_passed, run_demo

from demo.choreography_check import check_choreography
from demo.workload import make_orders, opening_stock


@pytest.mark.multiproc
def test_reactors_killed_mid_run_lose_nothing_and_apply_nothing_twice(tmp_path: Path) -> None:
    status, output, data = run_demo(
        tmp_path, "--style", "choreography", "--orders", "80", "--kills", "2", "--seed", "3"
    )
    assert status == 0, output
    assert_all_checks_passed(output)
    kills = re.findall(r"^kill \d/2: SIGKILL reactor (\w+) \(pid \d+\)", output, re.MULTILINE)
    assert 2 == len(kills), output
    assert 2 == len(re.findall(r"^reactor \w+ is back as pid \d+", output, re.MULTILINE)), output
    assert re.search(r"^  chains: 80 \| compensated \d+ \| completed \d+$", output, re.M), output
    assert "compensated because card declined" in output
    assert (data / "sagas.db").exists() and (data / "inventory.db").exists()


def test_the_in_process_base_runs_it_without_kills(tmp_path: Path) -> None:
    status, output, _ = run_demo(
        tmp_path, "--style", "choreography", "--orders", "40", "--base", "simpleSystemBase"
    )
    assert status == 0, output
    assert_all_checks_passed(output)
    assert "no reactor process to SIGKILL" in output


def test_a_double_charge_fails_the_check(tmp_path: Path) -> None:
    """The check reads the files: a charge written twice behind the reactors' back is found."""
    status, output, data = run_demo(
        tmp_path, "--style", "choreography", "--orders", "20", "--base", "simpleSystemBase"
    )
    assert status == 0, output
    with closing(sqlite3.connect(data / "payments.db")) as db, db:
        db.execute(
            "INSERT INTO charges (order_id, card, amount, status, at) "
            "SELECT order_id, card, amount, status, at FROM charges LIMIT 1"
        )
    orders = make_orders(20, 7)
    report = check_choreography(data, orders, opening_stock(orders))
    failed = {check.name for check in report.checks if not check.ok}
    assert {"no double charge", "card balances match charges"} <= failed
