"""The checker's chain rules, each shown to fire: a clean choreographed run passes, and the same
run's files, each damaged in one way a broken engine would leave them, fail with the rule that
names it, its chain and its event. The files are real (a run of ``demo.chaos:choreography``
in-process, its SQLite store and the reactors' SQLite databases); only the damage is done by
hand."""

from __future__ import annotations

import random
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import attrs
import pytest

from demo.chaos import ChoreographyScenario
from understudy import codec
from understudy.persistence import open_store
from understudy.persistence.base import FAILURE, TopicEvent
from understudy.testing import ChainStart, ChaosRunner, FaultSchedule, RunView, check

SAGAS = 4


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run without faults; every test works on a copy of its directory."""
    directory = tmp_path_factory.mktemp("chains")
    runner = ChaosRunner(ChoreographyScenario(), directory, base="simpleSystemBase")
    result = runner.run(FaultSchedule((), base="simpleSystemBase", sagas=SAGAS), name="clean")
    assert result.ok, result.report
    return result.directory


@pytest.fixture
def run(clean_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    copy.mkdir()
    for source in clean_run.glob("*.db"):
        with (
            closing(sqlite3.connect(source)) as db,
            closing(sqlite3.connect(copy / source.name)) as to,
        ):
            db.backup(to)  # a consistent copy of a WAL database
    return copy


def view_of(directory: Path) -> RunView:
    scenario = ChoreographyScenario()
    starts = scenario.workload(random.Random(0), SAGAS + 2)  # the schedule's seed, 2 probes
    chains = tuple(s for s in starts if isinstance(s, ChainStart))
    return RunView(
        directory,
        directory / "sagas.db",
        {},
        (),
        (),
        frozenset(),
        reactors={name: directory / f"{name}.db" for name in scenario.reactors},
        chains=chains,
        published=frozenset(s.correlation_id for s in chains),
    )


def violations(directory: Path, view: RunView | None = None) -> dict[str, list[str]]:
    report = check(view or view_of(directory))
    found: dict[str, list[str]] = {}
    for violation in report.violations:
        found.setdefault(violation.rule, []).append(str(violation))
    return found


def execute(path: Path, statement: str, *params: object) -> int:
    with closing(sqlite3.connect(path)) as db, db:
        return db.execute(statement, params).rowcount


def test_a_clean_run_holds_every_chain_rule(run: Path) -> None:
    report = check(view_of(run))
    assert report.ok, report
    assert SAGAS + 2 == sum(report.chains.values())
    assert report.chains["completed"] and report.chains["compensated"]
    assert report.events > SAGAS + 2 and report.reactions >= report.events - 2


def test_an_acknowledgement_lost_is_pending_and_applied_unacknowledged(run: Path) -> None:
    assert 1 == execute(
        run / "sagas.db",
        "DELETE FROM understudy_topic_acks WHERE rowid = (SELECT min(rowid) FROM "
        "understudy_topic_acks WHERE subscriber = 'inventory')",
    )
    found = violations(run)
    assert {"chain-pending", "chain-once"} <= set(found), found
    [pending] = found["chain-pending"]
    assert "chain order-" in pending and "inventory never acknowledged order.created (" in pending
    assert any("the relay never happened" in text for text in found["chain-once"])


def test_an_outbox_row_left_unrelayed_is_reported(run: Path) -> None:
    assert 1 == execute(
        run / "payments.db",
        "UPDATE understudy_outbox SET relayed = 0 WHERE id = (SELECT min(id) FROM "
        "understudy_outbox WHERE kind = 'event')",
    )
    [text] = violations(run)["chain-outbox"]
    assert "chain order-" in text and "payments's outbox still holds payment." in text


def test_an_event_from_no_committed_reaction_is_reported(run: Path) -> None:
    """What a reactor publishing before its commit leaves: an event in the log that no
    acknowledgement names and no outbox holds."""
    with closing(open_store(run / "sagas.db")) as store:
        placed = store.chain_events("order-00001")[0]
        stray = TopicEvent(
            "f" * 32,
            "order.created",
            "order-00001",
            codec.encode(placed.data),
            time.time(),
            "orders",
            placed.event_id,
        )
        store.append_events([stray])
    found = violations(run)
    assert {"chain-caused", "chain-outbox", "chain-pending"} <= set(found), found
    [caused] = found["chain-caused"]
    assert caused.startswith("[chain-caused] chain order-00001: order.created (" + "f" * 32)
    assert "a reaction that ran again, or rolled back" in caused


def test_an_acknowledgement_without_its_ledger_row_is_reported(run: Path) -> None:
    assert 1 == execute(
        run / "orders.db",
        "DELETE FROM understudy_ledger WHERE key = (SELECT min(key) FROM understudy_ledger)",
    )
    [text] = violations(run)["chain-once"]
    assert "orders acknowledged" in text and "acknowledged without being applied" in text


def test_a_failure_nobody_compensates_leaves_the_chain_inconsistent(run: Path) -> None:
    with closing(open_store(run / "sagas.db")) as store:
        failure = TopicEvent(
            "e" * 32, "nobody.failed", "order-00002", codec.encode({}), time.time(), kind=FAILURE
        )
        store.append_events([failure])
    [text] = violations(run)["chain-consistent"]
    assert text.startswith("[chain-consistent] chain order-00002: ended failed: ")
    assert "has no subscriber" in text


def test_a_published_start_missing_and_an_unknown_chain_are_reported(run: Path) -> None:
    view = view_of(run)
    missing = ChainStart("order-09999", "order.placed", {})
    known = tuple(s for s in view.chains if s.correlation_id != "order-00003")
    found = violations(
        run,
        attrs.evolve(view, chains=(*known, missing), published=view.published | {"order-09999"}),
    )
    [lost] = found["chain-lost"]
    assert "chain order-09999" in lost and missing.first_event in lost
    [unknown] = found["unknown-chain"]
    assert "chain order-00003" in unknown and "order.placed (" in unknown
