"""The local style's crash campaign: SIGKILLs inside the order's transaction, judged from disk.

A bounded campaign passes (as the command a reader runs); its schedule is a function of the seed;
and the mutation test: the same orders and the same kills, run by a deliberately broken order
that commits each step on its own, are caught by the checks, kills that no refusal explains
included, while the real transaction under the same seed leaves no violation.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 180  # seconds; a bounded campaign takes a few, far more on a loaded machine

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from demo.local_chaos import ANYWHERE, CampaignConfig, Schedule, run_campaign  # noqa: E402
from demo.local_order import POINTS  # noqa: E402
from demo.workload import make_orders  # noqa: E402

INSIDE = ("begun", "after_order", "after_stock", "after_payment")


def test_a_bounded_campaign_passes(tmp_path: Path) -> None:
    """``python -m demo.local_chaos``: 3 runs of 60 orders, kills at points inside the
    transaction among them, every order retried to the end, no violation."""
    log = tmp_path / "campaign.log"
    with log.open("w") as out:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "demo.local_chaos",
                "--seed",
                "5",
                "--runs",
                "3",
                "--orders",
                "60",
                "--kill-rate",
                "0.3",
                "--dir",
                str(tmp_path / "runs"),
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=RUN_TIMEOUT,
            check=False,
        )
    output = log.read_text()
    assert done.returncode == 0, output
    assert re.search(r"^CAMPAIGN PASSED: 0 violation\(s\) in 3 run\(s\), 180 orders", output, re.M)
    assert len(re.findall(r"^run [1-3]/3: .* \| violations 0$", output, re.MULTILINE)) == 3
    kills = dict(re.findall(r"(\w+) (\d+)", output.split("kills by point: ")[1].split("\n")[0]))
    assert set(kills) == {*POINTS, ANYWHERE}, output
    assert sum(int(kills[point]) for point in INSIDE) > 0, output


def test_the_schedule_is_a_function_of_the_seed() -> None:
    """The same seed draws the same kills, whichever worker asks first; another seed others."""
    drawn = [Schedule(9, 1, 0.5)(index, 1, 0) for index in range(200)]
    assert drawn == [Schedule(9, 1, 0.5)(index, 1, 0) for index in reversed(range(200))][::-1]
    assert drawn != [Schedule(10, 1, 0.5)(index, 1, 0) for index in range(200)]
    assert {fault.point for fault in drawn if fault is not None} == {*POINTS, ANYWHERE}
    assert all(Schedule(9, 1, 1.0)(index, 3, 0) is None for index in range(50))  # 3rd: none


def test_a_transaction_per_step_is_caught_and_the_real_one_is_not(tmp_path: Path) -> None:
    """The mutation test. ``autocommit`` runs the same steps with a commit after each: the
    checks report violations, among them every order with a good card whose worker was killed
    after its stock was taken, before its payment committed: the order's row was committed on
    its own, so the retry finds it and takes the order for placed. Only the kill can have broken
    those. The real order, same seed, same kills: no violation."""
    same = {"seed": 3, "runs": 2, "orders": 80, "kill_rate": 0.3}
    config = CampaignConfig(**same, variant="autocommit", directory=tmp_path / "broken")
    broken = run_campaign(config, io.StringIO())
    assert broken.violations > 0
    failed = {name for run in broken.runs for name in run.report.bad}
    assert "every order fully applied or left no trace" in failed, failed
    by_kill = set()
    for run in broken.runs:
        orders = {o.order_id: o for o in make_orders(run.orders, run.workload_seed)}
        for order_id, points in run.killed_orders().items():
            order = orders[order_id]
            # A kill recorded at a point is one that got there: the stock had been taken.
            if points[0] in ("after_stock", "after_payment") and not order.declined:
                assert order_id in run.violating_orders(), (order_id, run.report.bad)
                by_kill.add(order_id)
    assert by_kill, "the schedule killed no good order after its stock: pick another seed"

    real = run_campaign(CampaignConfig(**same, directory=tmp_path / "real"), io.StringIO())
    assert real.violations == 0, [run.report.bad for run in real.runs]
    assert sum(real.kills.values()) > 0


def test_a_bounded_campaign_on_postgresql(postgres_url: str) -> None:
    """``--store postgresql://...``: each run in a schema of its own, checked there, no
    violation, and the schema of a passing run dropped."""
    import psycopg

    result = run_campaign(
        CampaignConfig(seed=8, runs=2, orders=50, kill_rate=0.3, store=postgres_url),
        io.StringIO(),
    )
    assert result.violations == 0, [run.report.bad for run in result.runs]
    assert sum(result.kills.values()) > 0
    with psycopg.connect(postgres_url) as db:
        left = db.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'local_chaos_%'"
        ).fetchall()
    assert [] == left
