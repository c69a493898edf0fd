"""``python -m demo --style local``: the seed's order as one local transaction, workers SIGKILLed.

Run the way a reader runs it, as a command from the repository root: every check passes with
workers killed mid-order, on a SQLite file and on a PostgreSQL database; a used database is
refused; a ledger broken behind the demo's back fails the check; and the commands docs/local.md
gives are ones the command lines accept.
"""

from __future__ import annotations

import re
import shlex
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 120  # seconds; a run takes one or two, far more on a loaded machine

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from demo.__main__ import parse as parse_demo  # noqa: E402
from demo.local_chaos import parse as parse_campaign  # noqa: E402
from demo.local_check import check_shop  # noqa: E402
from demo.local_db import Database  # noqa: E402
from demo.workload import make_orders, opening_stock  # noqa: E402


def run_demo(tmp_path: Path, *args: str) -> tuple[int, str, Path]:
    """``python -m demo --style local`` from the repository root: (exit status, output, data
    directory). Output goes to a file: a pipe would make the test wait for any straggler."""
    data = tmp_path / "data"
    log = tmp_path / "demo.log"
    with log.open("w") as out:
        completed = subprocess.run(
            [sys.executable, "-m", "demo", "--style", "local", "--dir", str(data), *args],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=RUN_TIMEOUT,
            check=False,
        )
    return completed.returncode, log.read_text(), data


def assert_all_checks_passed(output: str) -> None:
    verdicts = re.findall(r"^  (PASS|FAIL)  (.*)$", output, re.MULTILINE)
    assert len(verdicts) == 6, output
    assert all(verdict == "PASS" for verdict, _ in verdicts), output
    assert re.search(r"^ALL 6 CHECKS PASSED", output, re.MULTILINE), output


def test_local_style_survives_worker_kills(tmp_path: Path) -> None:
    """120 orders, 3 workers SIGKILLed inside an order each: every check passes, each killed
    order was retried, and the summary reads like the other styles' (orders/s for sagas/s)."""
    status, output, data = run_demo(tmp_path, "--orders", "120", "--kills", "3", "--seed", "11")
    assert status == 0, output
    assert_all_checks_passed(output)
    assert "120 orders (local: one transaction each, no saga)" in output, output
    assert re.search(r"^  orders: 120 \| placed \d+ \| refused \d+$", output, re.MULTILINE)
    assert "refused because card declined:" in output, output
    assert "refused because out of stock:" in output, output
    assert re.search(r"throughput: 120 orders in [\d.]+ s = [\d.]+ orders/s", output), output
    assert "worker kills: 3 | worker restarts: 3 | orders retried after a kill: 3" in output
    assert len(re.findall(r"^kill [1-3]/3: SIGKILL worker", output, re.MULTILINE)) == 3, output
    assert len(re.findall(r"^  order-\d+ retried by worker", output, re.MULTILINE)) == 3, output
    assert (data / "shop.db").exists()
    assert not (data / "sagas.db").exists()  # no saga, no saga store


def test_local_style_on_postgresql_and_a_used_database_is_refused(
    tmp_path: Path, postgres_url: str
) -> None:
    """``--store postgresql://...`` is the shop's one database: the checks pass there, the URL's
    user stays out of the output, and a second run on the same database is refused (status 2)
    rather than checked against another run's rows."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    status, output, data = run_demo(
        tmp_path / "a", "--orders", "80", "--kills", "2", "--store", postgres_url
    )
    assert status == 0, output
    assert_all_checks_passed(output)
    assert "worker kills: 2 | worker restarts: 2" in output, output
    assert "understudy@" not in output  # the user (and any password) stays out of the output
    assert not (data / "shop.db").exists()
    status, output, _ = run_demo(
        tmp_path / "b", "--orders", "5", "--kills", "0", "--store", postgres_url
    )
    assert status == 2, output
    assert "give it an empty database" in output, output


@pytest.fixture(scope="module")
def passed_shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shop database of a passing run of 30 orders (seed 3), for the tests to break."""
    status, output, data = run_demo(
        tmp_path_factory.mktemp("shop"), "--orders", "30", "--kills", "0", "--seed", "3"
    )
    assert status == 0, output
    return data / "shop.db"


@pytest.mark.parametrize(
    ("tamper", "failed"),
    [
        (
            "DELETE FROM payments WHERE id = (SELECT MIN(id) FROM payments)",
            "every order fully applied or left no trace",
        ),
        (
            "INSERT INTO payments (order_id, card, amount, at) "
            "SELECT order_id, card, amount, at FROM payments LIMIT 1",
            "no double charge",
        ),
        ("UPDATE stock SET available = available + 1 WHERE sku = 'mug'", "stock conserved"),
        (
            "DELETE FROM refusals WHERE order_id = (SELECT MIN(order_id) FROM refusals)",
            "every order attempted to the end",
        ),
        (
            "INSERT INTO orders SELECT order_id, 'c', 'mug', 1, 899, at FROM refusals LIMIT 1",
            "refused orders kept nothing",
        ),
    ],
)
def test_the_checks_catch_a_broken_shop(
    tmp_path: Path, passed_shop: Path, tamper: str, failed: str
) -> None:
    """A shop database broken behind the demo's back fails the check that guards it: a demo
    that always printed PASS could not go unnoticed."""
    shop = tmp_path / "shop.db"
    with closing(sqlite3.connect(passed_shop)) as source, closing(sqlite3.connect(shop)) as copy:
        source.backup(copy)
    orders = make_orders(30, 3)
    database = Database(str(shop))
    assert check_shop(database, orders, opening_stock(orders)).passed
    with closing(sqlite3.connect(shop)) as db, db:
        db.execute(tamper)
    report = check_shop(database, orders, opening_stock(orders))
    assert not report.passed
    assert failed in {check.name for check in report.checks if not check.ok}, report.checks


def _documented_commands() -> list[str]:
    """The commands docs/local.md's section on the demo shows, in its ``$ ...`` lines."""
    text = (ROOT / "docs" / "local.md").read_text()
    section = text.partition("## Proven under SIGKILL")[2]
    return re.findall(r"^\$ (python -m demo.*)$", section, re.MULTILINE)


def test_the_docs_commands_are_ones_the_command_lines_accept(tmp_path: Path) -> None:
    """Each documented command parses, options and all (the runs themselves are the tests
    above and tests/test_local_chaos.py)."""
    commands = _documented_commands()
    assert any("--style local" in command for command in commands), commands
    assert any("demo.local_chaos" in command for command in commands), commands
    for command in commands:
        words = shlex.split(command)[3:]
        if command.startswith("python -m demo.local_chaos"):
            config = parse_campaign(words)
            assert config.runs * config.orders >= 1
        else:
            assert parse_demo([*words, "--dir", str(tmp_path / "d")]).style == "local"
