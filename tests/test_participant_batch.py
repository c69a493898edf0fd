"""Participants group-commit: requests that arrive together share one ledger transaction. One
request's failing handler must not undo, nor leak into, the others in the same batch."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

from conftest import all_effects


def test_a_failing_handler_in_a_batch_undoes_only_its_own_writes(
    start: Any, tmp_path: Path
) -> None:
    us = start()
    # Started together, these sagas reach each participant together, so their requests share
    # ledger transactions; every fourth one's charge handler raises every time it runs.
    futures = {
        f"b-{i}": us.submit_future(
            f"b-{i}", "order", {"fail": {"charge": -1}} if i % 4 == 0 else {}
        )
        for i in range(40)
    }
    outcomes = {saga_id: future.result(120).status for saga_id, future in futures.items()}
    failing = {f"b-{i}" for i in range(0, 40, 4)}
    assert {s for s, status in outcomes.items() if status == "compensated"} == failing
    assert {s for s, status in outcomes.items() if status == "completed"} == set(futures) - failing
    us.shutdown()

    effects = all_effects(tmp_path)
    charged = [saga for saga, step, kind in effects["payments"] if kind == "do"]
    # Each completed saga charged exactly once, and no raising handler left a charge behind.
    assert sorted(charged) == sorted(set(futures) - failing)
    with closing(sqlite3.connect(tmp_path / "payments.db")) as db:
        ledger = dict(
            db.execute(
                "SELECT saga_id, outcome FROM understudy_ledger WHERE kind = 'do' AND step = 2"
            ).fetchall()
        )
    for saga_id in failing:
        # The failed charge recorded nothing under its key (the refund then left a tombstone),
        # so a later attempt with the same key would still run the handler.
        assert ledger.get(saga_id) == "tombstone", (saga_id, ledger.get(saga_id))
    for saga_id in set(futures) - failing:
        assert ledger[saga_id] == "applied"
