"""The checker, on hand-built files: a real SQLite saga store and real participant ledgers.

Each test writes one small on-disk state, correct or broken in exactly one way, and asserts the
checker names exactly the rule it breaks and the saga it concerns. Every such test runs twice:
with the participants' ledgers in SQLite files, and in PostgreSQL databases (one per participant,
on the test server of ``tests/pg.py``), which the checker must judge alike. Participants sharing
one PostgreSQL database, what the checker shows of a PostgreSQL URL, and chaos runs whose
participants keep their ledgers in PostgreSQL come last.
"""

from __future__ import annotations

import random
import sqlite3
import uuid
from collections.abc import Iterable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import PARTICIPANTS, order_definition
from participants import PgRecorder
from pg import database_url
from psycopg import sql

from understudy import codec
from understudy.actors.ledger import SQLITE_SCHEMA as _LEDGER_SCHEMA
from understudy.actors.ledger import PostgresLedger
from understudy.definitions import SagaDefinition, Step
from understudy.errors import LedgerError
from understudy.persistence import redact
from understudy.persistence.base import (
    CommandDone,
    Event,
    NewSaga,
    OperatorCommand,
    Transition,
)
from understudy.persistence.sqlite import SQLiteStore
from understudy.supervisors.policy import RestartPolicy
from understudy.testing import ChaosRunner, Participants, Scenario, single_fault
from understudy.testing.checker import (
    Invariant,
    InvariantViolation,
    Report,
    RunView,
    SagaStart,
    check,
)

ORDER = SagaDefinition(
    "order",
    1,
    [
        Step("create", "orders", "create", "cancel"),
        Step("reserve", "inventory", "reserve", "release"),
        Step("charge", "payments", "charge", "refund"),
    ],
)
T = 1_000.0  # the clock every hand-built timeline starts from
Effect = tuple[int, str, str, float]  # step, kind ("do"/"undo"), outcome, at
Timeline = tuple[list[Event], list[Effect]]
REAL_OUTSTANDING = ["compensate step 'reserve' (release)", "compensate step 'create' (cancel)"]


def intent(saga_id: str, step: int, at: float, kind: str = "do") -> Event:
    spec = ORDER.steps[step]
    action = spec.action if kind == "do" else spec.compensation
    detail = {"name": spec.name, "key": f"{saga_id}:{step}:{kind}", "action": action}
    kind_name = "intent" if kind == "do" else "compensation-intent"
    return Event(kind_name, at, step, 1, {**detail, "participant": spec.participant})


class Story:
    """A saga's timeline and its ledger effects, one step a second from T: each intent is
    followed by its effect 0.1 s later and the reply 0.5 s later."""

    def __init__(self, saga_id: str) -> None:
        self.saga_id, self.at = saga_id, T
        self.events: list[Event] = []
        self.effects: list[Effect] = []

    def step(self, kind: str, i: int, outcome: str = "applied") -> Story:
        reply = "rejected" if outcome == "rejected" else "done" if kind == "do" else "compensated"
        self.events += [intent(self.saga_id, i, self.at, kind), Event(reply, self.at + 0.5, i, 1)]
        self.effects.append((i, kind, outcome, self.at + 0.1))
        self.at += 1
        return self

    def end(self, kind: str, **detail: Any) -> Timeline:
        self.events.append(Event(kind, self.at, detail=detail))  # no step: the terminal event
        return self.events, self.effects


def operator_event(verb: str, command: int, at: float, **args: Any) -> Event:
    """The ``operator`` event of an applied verb (the story's clock: it is in the timeline)."""
    detail = {"verb": verb, "who": "alice", "why": "test", "command": command, **args}
    return Event("operator", at, detail=detail)


def completed_story(saga_id: str) -> Timeline:
    """Intents at T, T+1, T+2; completed at T+3."""
    return Story(saga_id).step("do", 0).step("do", 1).step("do", 2).end("completed")


def compensated_story(saga_id: str, order: Iterable[int] = (2, 1, 0)) -> Timeline:
    """create and reserve applied, charge rejected (intents at T, T+1, T+2), then compensations
    in ``order`` at T+3, T+4, T+5 (charge's is a no-op: it never applied)."""
    story = Story(saga_id).step("do", 0).step("do", 1).step("do", 2, "rejected")
    for i in order:
        story.step("undo", i, "noop" if i == 2 else "applied")
    return story.end("compensated")


def failed_story(saga_id: str, outstanding: list[str]) -> Timeline:
    """Like compensated_story, but reserve's release is rejected: create and reserve stay."""
    story = Story(saga_id).step("do", 0).step("do", 1).step("do", 2, "rejected")
    story.step("undo", 2, "noop").step("undo", 1, "rejected")
    return story.end("failed", outstanding=outstanding)


class Run:
    """A run directory: the saga store, one ledger per participant, what the driver knows.
    ``ledgers``: where each participant keeps its ledger, a SQLite file (the default, in the
    directory) or a PostgreSQL URL."""

    def __init__(self, directory: Path, ledgers: dict[str, Path | str] | None = None) -> None:
        self.directory = directory
        self.store_path = directory / "sagas.db"
        self.store = SQLiteStore(self.store_path, synchronous="NORMAL")
        self.ledgers: dict[str, Path | str] = ledgers or {
            s.participant: directory / f"{s.participant}.db" for s in ORDER.steps
        }
        self.submitted: list[SagaStart] = []
        self.acknowledged: set[str] = set()

    def saga(
        self,
        saga_id: str,
        status: str,
        story: Timeline,
        *,
        outstanding: Iterable[str] = (),
        attempts: int | None = None,
        before: Iterable[Event] = (),
        claims: int = 0,
        state: dict[str, Any] | None = None,
    ) -> None:
        """Write the saga: ``before`` with its start, then ``claims`` recoveries through the
        store's own claim (recorded as "claimed" events), then ``story`` in one transition.
        ``state``: more of its snapshot (its stack, debt, results)."""
        events, effects = story
        self.submitted.append(SagaStart(saga_id, "order", {"sku": "x"}))
        self.acknowledged.add(saga_id)
        start = NewSaga(
            saga_id, "order", 1, codec.encode({"sku": "x"}), T - 1, (Event("started", T), *before)
        )
        assert self.store.apply([start]) == [True]
        for n in range(claims):
            assert self.store.claim(saga_id, recovery=True, at=T + 0.9 + n / 100) is not None
        end = max((e.at for e in events), default=T) + 0.01
        snapshot: dict[str, Any] = {"phase": status, "outstanding": list(outstanding)}
        snapshot.update(state or {})
        attempts = claims if attempts is None else attempts
        encoded = codec.encode(snapshot)
        change = Transition(
            saga_id, 1 + claims, status, encoded, 1, attempts, end, None, tuple(events)
        )
        assert self.store.apply([change]) == [True]
        for step, kind, outcome, at in effects:
            self.effect(saga_id, step, kind, outcome, at)

    def command(self, saga_id: str, verb: str, state: str = "applied", **args: Any) -> int:
        """Store an operator's command for ``saga_id`` (written already) and mark it ``state``;
        its number (commands are numbered from 1 in a fresh store). Its timeline events are the
        story's: ``operator_event`` makes them."""
        command = self.store.submit(OperatorCommand(saga_id, 0, verb, args, "alice", "test", T))
        if state != "pending":
            done = CommandDone(command.id, saga_id, None, state, state, T + 9)
            assert self.store.apply([done]) == [True]
        return command.id

    def effect(self, saga_id: str, step: int, kind: str, outcome: str, at: float) -> None:
        spec = ORDER.steps[step]
        action = spec.action if kind == "do" else spec.compensation
        location = self.ledgers[spec.participant]
        if isinstance(location, str):
            # The participant's own ledger class makes the table, as a participant's setup does.
            ledger = PostgresLedger(location)
            try:
                ledger.begin()
                ledger.create_schema()
                ledger.connection.execute(
                    "INSERT INTO understudy_ledger (key, saga_id, step, kind, action, digest, "
                    "outcome, result, reason, at) VALUES (%s, %s, %s, %s, %s, %s, %s, NULL, NULL, "
                    "%s)",
                    (f"{saga_id}:{step}:{kind}", saga_id, step, kind, action, b"", outcome, at),
                )
                ledger.commit()
            finally:
                ledger.close()
            return
        with closing(sqlite3.connect(location)) as db, db:
            db.execute("PRAGMA synchronous=OFF")
            db.execute(_LEDGER_SCHEMA)
            db.execute(
                "INSERT INTO understudy_ledger (key, saga_id, step, kind, action, digest, outcome, "
                "result, reason, at) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?)",
                (f"{saga_id}:{step}:{kind}", saga_id, step, kind, action, b"", outcome, at),
            )

    def check(
        self,
        invariants: Iterable[Invariant] = (),
        min_completed: int = 0,
        policy: RestartPolicy | None = None,
        by_hand: Iterable[tuple[str, int, str]] = (),
        commands_settled: bool = False,
    ) -> Report:
        view = RunView(
            self.directory,
            self.store_path,
            self.ledgers,
            (ORDER,),
            tuple(self.submitted),
            frozenset(self.acknowledged),
            policy or RestartPolicy(),
            frozenset(by_hand),
            commands_settled,
        )
        return check(view, invariants, min_completed)


@pytest.fixture(scope="module")
def participant_database_names(postgres_server_url: str) -> Iterator[dict[str, str]]:
    """A PostgreSQL database of its own for each participant of ORDER, created once for the
    module and dropped after it: creating a database copies its template through the server's
    WAL, and three of them took half a second for each of some fifty tests on a busy machine.
    ``participant_databases`` empties them for each test."""
    tag = uuid.uuid4().hex[:12]
    names = {s.participant: f"ut_checker_{tag}_{s.participant}" for s in ORDER.steps}
    with psycopg.connect(postgres_server_url, autocommit=True) as admin:
        for dbname in names.values():
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    try:
        yield names
    finally:
        with psycopg.connect(postgres_server_url, autocommit=True) as admin:
            for dbname in names.values():
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(dbname)
                    )
                )


@pytest.fixture
def participant_databases(
    postgres_server_url: str, participant_database_names: dict[str, str]
) -> dict[str, Path | str]:
    """A PostgreSQL database of its own for each participant of ORDER, as empty as a new one:
    the module's databases, each with every connection to it ended (as DROP DATABASE ... WITH
    (FORCE) ends them) and its ``public`` schema, where everything a ledger or a test creates
    goes, dropped with all it holds and made anew."""
    with psycopg.connect(postgres_server_url, autocommit=True) as admin:
        for dbname in participant_database_names.values():
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (dbname,),
            )
    urls: dict[str, Path | str] = {}
    for participant, dbname in participant_database_names.items():
        urls[participant] = database_url(postgres_server_url, dbname)
        with psycopg.connect(str(urls[participant]), autocommit=True) as db:
            schemas = db.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%'"
                " AND nspname <> 'information_schema'"
            ).fetchall()
            assert [("public",)] == schemas, f"{dbname} holds schemas a new one would not"
            db.execute("DROP SCHEMA public CASCADE")
            db.execute("CREATE SCHEMA public")
    return urls


@pytest.fixture(params=["sqlite", "postgres"])
def run(tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    """A run whose participants keep their ledgers in SQLite files, or in PostgreSQL."""
    ledgers = None
    if request.param == "postgres":
        ledgers = request.getfixturevalue("participant_databases")
    run = Run(tmp_path, ledgers)
    yield run
    run.store.close()


def found(report: Report) -> list[tuple[str, str | None]]:
    return [(v.rule, v.saga_id) for v in report.violations]


def test_correct_completed_and_compensated_sagas_pass(run: Run) -> None:
    run.saga("s-done", "completed", completed_story("s-done"))
    run.saga("s-undone", "compensated", compensated_story("s-undone"))
    # charge's request never reached payments: its compensation left a tombstone and a no-op
    events, effects = compensated_story("s-tomb")
    effects[2] = (2, "do", "tombstone", T + 3.1)
    run.saga("s-tomb", "compensated", (events, effects))
    report = run.check(min_completed=1)
    assert [] == found(report), str(report)
    assert report.ok
    assert 3 == report.sagas
    assert {"completed": 1, "compensated": 2} == dict(report.statuses)
    assert 15 == report.effects
    assert str(report).startswith("every invariant held: 3 sagas")
    report.assert_ok()


def test_acknowledged_saga_missing_is_lost(run: Run) -> None:
    run.saga("s-done", "completed", completed_story("s-done"))
    run.acknowledged.add("s-lost")
    run.submitted.append(SagaStart("s-unacked", "order"))  # never acknowledged: may be missing
    assert [("lost", "s-lost")] == found(run.check())


@pytest.mark.parametrize("status", ["running", "compensating"])
def test_unfinished_saga_after_quiesce(run: Run, status: str) -> None:
    story = Story("s1").step("do", 0)
    run.saga("s1", status, (story.events, story.effects))
    report = run.check()
    assert [("quiesce", "s1")] == found(report)
    assert f"still {status}" in report.violations[0].detail


@pytest.mark.parametrize(
    "terminal",
    [
        [Event("completed", T + 3), Event("completed", T + 4)],
        [Event("failed", T + 3)],  # stored as completed, written as failed
        [],
    ],
    ids=["twice", "other-status", "none"],
)
def test_terminal_state_written_once(run: Run, terminal: list[Event]) -> None:
    events, effects = completed_story("s1")
    run.saga("s1", "completed", (events[:-1] + terminal, effects))
    assert [("terminal-once", "s1")] == found(run.check())


def test_effect_without_intent_breaks_write_ahead(run: Run) -> None:
    events, effects = compensated_story("s1")
    # charge's compensation reached payments (a no-op) but no compensation intent was recorded
    events = [e for e in events if not (e.step == 2 and e.at >= T + 3)]
    run.saga("s1", "compensated", (events, effects))
    report = run.check()
    assert [("write-ahead", "s1")] == found(report)
    assert "recorded no intent" in report.violations[0].detail
    assert "'charge'" in report.violations[0].detail


def test_effect_older_than_first_intent_breaks_write_ahead(run: Run) -> None:
    events, effects = completed_story("s1")
    effects[2] = (2, "do", "applied", T + 1.9)  # charge's intent is at T+2
    run.saga("s1", "completed", (events, effects))
    report = run.check()
    assert [("write-ahead", "s1")] == found(report)
    assert "0.100 s before" in report.violations[0].detail


def test_write_ahead_is_measured_from_the_first_intent(run: Run) -> None:
    events, effects = completed_story("s1")
    resent = intent("s1", 2, T + 2.8)  # a resent intent after the effect landed
    effects[2] = (2, "do", "applied", T + 2.4)
    run.saga("s1", "completed", ([*events[:-1], resent, events[-1]], effects))
    assert [] == found(run.check())


def test_effects_of_a_saga_the_store_lacks(run: Run) -> None:
    run.saga("s-done", "completed", completed_story("s-done"))
    run.effect("ghost", 1, "do", "applied", T)
    report = run.check()
    assert [("unknown-saga", "ghost")] == found(report)
    assert "inventory step 1 do (applied)" in report.violations[0].detail


@pytest.mark.parametrize(
    "steps",
    [[("do", 0), ("do", 1)], [("do", 0), ("do", 1), ("do", 2), ("undo", 1)]],
    ids=["charge-missing", "reserve-undone"],
)
def test_completed_saga_applied_every_step_and_undid_none(run: Run, steps: list[Any]) -> None:
    story = Story("s1")
    for kind, i in steps:
        story.step(kind, i)
    run.saga("s1", "completed", story.end("completed"))
    assert [("completed", "s1")] == found(run.check())


def test_compensated_saga_left_an_intended_step_uncompensated(run: Run) -> None:
    events, effects = compensated_story("s1")
    effects = [e for e in effects if e[:2] != (0, "undo")]  # create was never cancelled
    run.saga("s1", "compensated", (events, effects))
    report = run.check()
    assert [("compensated", "s1")] == found(report)
    assert "['create'] had an intent and were never compensated" in report.violations[0].detail


def test_compensations_out_of_reverse_order(run: Run) -> None:
    run.saga("s1", "compensated", compensated_story("s1", order=(2, 0, 1)))
    report = run.check()
    assert [("compensated", "s1")] == found(report)
    assert "['charge', 'create', 'reserve'], not in reverse" in report.violations[0].detail


def test_forward_applied_after_its_compensation(run: Run) -> None:
    events, effects = compensated_story("s1")
    effects[1] = (1, "do", "applied", T + 4.5)  # reserve's release applied at T+4.1
    run.saga("s1", "compensated", (events, effects))
    report = run.check()
    assert [("forward-after-undo", "s1")] == found(report)
    assert "'reserve'" in report.violations[0].detail


@pytest.mark.parametrize(
    ("outstanding", "flagged"),
    [
        ([], True),
        (["compensate step 'create' (cancel)"], True),  # reserve is left out
        (REAL_OUTSTANDING, False),
    ],
    ids=["empty", "partial", "complete"],
)
def test_failed_saga_lists_what_is_unresolved(
    run: Run, outstanding: list[str], flagged: bool
) -> None:
    run.saga("s1", "failed", failed_story("s1", outstanding), outstanding=outstanding)
    expected = [("needs-attention", "s1")] if flagged else []
    assert expected == found(run.check())


def test_failed_saga_with_no_effects_needs_no_outstanding(run: Run) -> None:
    run.saga("s1", "failed", ([Event("failed", T + 1)], []))
    assert [] == found(run.check())


def test_failed_saga_outstanding_must_name_the_unresolved_steps(run: Run) -> None:
    story = Story("s1").step("do", 0).step("do", 1).step("do", 2)
    story.step("undo", 2).step("undo", 1, "rejected")
    # create and reserve stay applied, yet the saga lists something unrelated
    outstanding = ["call the on-call engineer"]
    run.saga("s1", "failed", story.end("failed"), outstanding=outstanding)
    assert [("needs-attention", "s1")] == found(run.check())


def test_a_saga_parked_while_compensating_must_list_every_applied_step(run: Run) -> None:
    """Parked before any compensation ran: naming only the never-applied step (as if it had
    parked going forward) is not enough, every applied step must be listed."""
    story = Story("s1").step("do", 0).step("do", 1)
    outstanding = ["compensate step 'charge' (refund)", "compensate step 'reserve' (release)"]
    run.saga("s1", "failed", story.end("failed"), outstanding=outstanding)
    assert [("needs-attention", "s1")] == found(run.check())


@pytest.mark.parametrize(
    ("status", "attempts", "flagged"),
    [("completed", 2, False), ("completed", 3, True), ("failed", 4, False)],
)
def test_restart_limit_parks_a_saga_past_the_cap(
    run: Run, status: str, attempts: int, flagged: bool
) -> None:
    story = completed_story("s1") if status == "completed" else ([Event("failed", T + 1)], [])
    run.saga("s1", status, story, attempts=attempts)
    report = run.check(policy=RestartPolicy(max_recovery_attempts=2))
    assert ([("restart-limit", "s1")] if flagged else []) == found(report)


@pytest.mark.parametrize("stepped", [False, True])
def test_restart_limit_no_step_after_a_claim_past_the_cap(run: Run, stepped: bool) -> None:
    parked = ["finish step 'reserve' (reserve)", "finish step 'charge' (charge)"]
    before = [intent("s1", 0, T), Event("done", T + 0.5, 0, 1)]  # progress before the claims
    after = [intent("s1", 1, T + 2)] if stepped else []
    events = [*after, Event("failed", T + 3, detail={"outstanding": parked})]
    story = (events, [(0, "do", "applied", T + 0.1)])
    run.saga("s1", "failed", story, outstanding=parked, before=before, claims=3)
    report = run.check(policy=RestartPolicy(max_recovery_attempts=2))
    assert ([("restart-limit", "s1")] if stepped else []) == found(report)
    if stepped:
        assert "took step 1 (intent) after 2 recoveries" in report.violations[0].detail


@pytest.mark.parametrize(("completed", "minimum"), [(0, 1), (1, 2)])
def test_progress_needs_enough_completed_sagas(run: Run, completed: int, minimum: int) -> None:
    run.saga("s-undone", "compensated", compensated_story("s-undone"))
    for n in range(completed):
        run.saga(f"s-done-{n}", "completed", completed_story(f"s-done-{n}"))
    report = run.check(min_completed=minimum)
    assert [("progress", None)] == found(report)
    assert f"{completed} saga(s) completed, fewer than {minimum}" in report.violations[0].detail


def test_domain_invariants(run: Run) -> None:
    run.saga("s-done", "completed", completed_story("s-done"))

    def charges_once(view: RunView) -> list[str]:
        with closing(view.connect("payments")) as db:
            (n,) = db.execute("SELECT COUNT(*) FROM understudy_ledger").fetchone()
        return [f"{n} charge(s) seen, expected 0"] if n else []

    def holds(view: RunView) -> list[str]:
        return []

    def explodes(view: RunView) -> list[str]:
        raise ValueError("boom")

    report = run.check([charges_once, holds, explodes])
    assert [("domain", None), ("domain", None)] == found(report)
    assert "charges_once: 1 charge(s) seen, expected 0" == report.violations[0].detail
    assert "explodes: the invariant itself raised ValueError: boom" == report.violations[1].detail


def test_assert_ok_raises_naming_the_saga(run: Run) -> None:
    run.saga("s-done", "completed", completed_story("s-done"))
    run.acknowledged.add("s-lost-42")
    report = run.check()
    with pytest.raises(InvariantViolation, match="s-lost-42") as raised:
        report.assert_ok("after seed 7")
    assert str(raised.value).startswith("after seed 7\n")
    assert isinstance(raised.value, AssertionError)


def test_report_lists_violations(run: Run) -> None:
    run.saga("s1", "running", ([], []))
    run.acknowledged.update(f"lost-{n:02}" for n in range(25))
    text = str(run.check())
    lines = text.splitlines()
    assert lines[0] == "26 invariant violation(s) in 1 sagas (running 1), 0 ledger rows:"
    assert "  [lost] lost-00: its start was acknowledged but the store has no such saga" in lines
    assert "  [quiesce] s1: still running after the heal-and-quiesce phase" in lines
    assert "  ... and 5 more [lost]" in lines
    assert not any("lost-24" in line for line in lines)  # past the 20 shown per rule


# --- participants sharing one PostgreSQL database ---------------------------------------------


@pytest.fixture
def shared(tmp_path: Path, postgres_url: str) -> Iterator[Run]:
    """A run whose three participants keep their ledgers in one PostgreSQL database: one
    ``understudy_ledger`` table holds every participant's rows."""
    run = Run(tmp_path, {s.participant: postgres_url for s in ORDER.steps})
    yield run
    run.store.close()


def test_a_shared_postgres_ledger_is_read_once(shared: Run) -> None:
    shared.saga("s-done", "completed", completed_story("s-done"))
    shared.saga("s-undone", "compensated", compensated_story("s-undone"))
    report = shared.check(min_completed=1)
    assert [] == found(report), str(report)
    assert 9 == report.effects  # each row once, not once per participant naming the database


def test_a_shared_postgres_ledger_puts_each_row_down_to_its_participant(shared: Run) -> None:
    events, effects = compensated_story("s1")
    # charge's compensation reached payments (a no-op) but no compensation intent was recorded
    events = [e for e in events if not (e.step == 2 and e.at >= T + 3)]
    shared.saga("s1", "compensated", (events, effects))
    report = shared.check()
    assert [("write-ahead", "s1")] == found(report)
    assert report.violations[0].detail.startswith("payments compensated step 'charge' (noop)")


def test_a_shared_postgres_ledger_with_a_compensated_completed_saga(shared: Run) -> None:
    story = Story("s1").step("do", 0).step("do", 1).step("do", 2).step("undo", 1)
    shared.saga("s1", "completed", story.end("completed"))
    report = shared.check()
    assert [("completed", "s1")] == found(report)
    assert "compensated ['reserve']" in report.violations[0].detail


def test_a_shared_postgres_ledger_with_effects_of_an_unknown_saga(shared: Run) -> None:
    shared.saga("s-done", "completed", completed_story("s-done"))
    shared.effect("ghost", 1, "do", "applied", T)
    report = shared.check()
    assert [("unknown-saga", "ghost")] == found(report)
    # The store has no such saga: the row's participant is one of those sharing the table.
    assert "orders/inventory/payments step 1 do (applied)" in report.violations[0].detail


# --- PostgreSQL ledgers: what the checker shows and how it connects -----------------------------


def test_a_ledger_not_created_yet_has_no_rows(run: Run) -> None:
    """payments never configured its ledger: there is no SQLite file, or its PostgreSQL
    database has no ``understudy_ledger`` table. Either is read as no rows."""
    story = Story("s1").step("do", 0).step("do", 1)
    run.saga("s1", "completed", story.end("completed"))
    report = run.check()
    assert [("completed", "s1")] == found(report)
    assert 2 == report.effects


def test_a_failed_report_names_the_postgres_ledgers_without_credentials(
    run: Run, postgres_url: str
) -> None:
    user = postgres_url.split("//", 1)[1].split("@", 1)[0]
    secret = "pw-that-must-not-show"  # the test server trusts its user: it is never asked for
    run.ledgers["payments"] = postgres_url.replace(f"//{user}@", f"//{user}:{secret}@")
    run.saga("s-done", "completed", completed_story("s-done"))
    run.acknowledged.add("s-lost")
    report = run.check()
    assert [("lost", "s-lost")] == found(report)
    text = str(report)
    assert f"ledger of payments: {redact(postgres_url)}" in text.splitlines()
    assert secret not in text and f"{user}@" not in text


def test_an_unreachable_postgres_ledger_fails_the_check_without_credentials(run: Run) -> None:
    """A ledger that cannot be read must not pass as an empty one: the check raises, and its
    message names the database but not the password."""
    run.saga("s-done", "completed", completed_story("s-done"))
    secret = "pw-that-must-not-show"
    run.ledgers["payments"] = f"postgresql://someone:{secret}@127.0.0.1:1/shop?password={secret}"
    with pytest.raises(LedgerError) as raised:
        run.check()
    assert "ledger of payments at postgresql://127.0.0.1:1/shop cannot be reached" in str(
        raised.value
    )
    assert secret not in str(raised.value) and "someone" not in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_connect_gives_domain_invariants_a_read_only_postgres_connection(
    run: Run, postgres_url: str
) -> None:
    run.ledgers["payments"] = postgres_url
    run.saga("s-done", "completed", completed_story("s-done"))
    view = RunView(run.directory, run.store_path, run.ledgers, (ORDER,), (), frozenset())
    with view.connect("payments") as db:
        assert isinstance(db, psycopg.Connection)
        row = db.execute("SELECT saga_id, kind FROM understudy_ledger WHERE step = %s", (2,))
        assert [("s-done", "do")] == row.fetchall()
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            db.execute("DELETE FROM understudy_ledger")
    with closing(view.connect("orders")) as other:  # a SQLite file, or a PostgreSQL database
        (n,) = other.execute("SELECT COUNT(*) FROM understudy_ledger").fetchone()
        assert 1 == n


# --- chaos runs whose participants keep their ledgers in PostgreSQL ----------------------------


class PgOrders(Scenario):
    """The order saga with its three participants' state and ledgers in PostgreSQL: each
    ``database`` option names ``url``, in which each run gets a fresh database. Half the orders
    have their charge refused, so that compensations run too. ``seen`` collects, per run, how
    many ledger rows a domain invariant found through ``RunView.connect``."""

    definitions = (order_definition(timeout=1.0),)

    def __init__(self, url: str, complaint: str | None = None) -> None:
        self.url = url
        self.complaint = complaint
        self.seen: list[int] = []

    def participants(self, directory: Path, sagas: list[SagaStart]) -> Participants:
        return [(name, PgRecorder, {"database": self.url}) for name in PARTICIPANTS]

    def workload(self, rng: random.Random, count: int) -> list[SagaStart]:
        return [
            SagaStart(f"o-{i}", "order", {"reject": "charge"} if i % 2 else {})
            for i in range(count)
        ]

    def invariants(self) -> list[Invariant]:
        return [self.ledger_rows]

    def ledger_rows(self, view: RunView) -> list[str]:
        with view.connect("payments") as db:  # the database all three share
            (rows,) = db.execute("SELECT COUNT(*) FROM understudy_ledger").fetchone()
        self.seen.append(rows)
        return [self.complaint] if self.complaint else []


def _databases(server_url: str, prefix: str) -> list[str]:
    with psycopg.connect(server_url, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY datname",
            (prefix + "%",),
        ).fetchall()
    return [str(name) for (name,) in rows]


def _ledger_schedule(base: str = "simpleSystemBase") -> Any:
    # The payments participant crashes once right after its effect and ledger row committed
    # (a SIGKILL of its process on the multi-process base).
    return single_fault("participant.after_apply", 1, base=base, sagas=2, participant="payments")


def test_a_chaos_run_checks_ledgers_in_postgres_each_run_in_fresh_databases(
    tmp_path: Path, postgres_url: str, base: str
) -> None:
    """Two runs of the same workload (the same saga ids) both pass: each run's ledgers start
    empty in a database of their own, dropped after the run passed, and the checker read them:
    every row the participants wrote, each once."""
    scenario = PgOrders(postgres_url)
    runner = ChaosRunner(scenario, tmp_path, base=base)
    results = [runner.run(_ledger_schedule(base), name=f"pg-ledgers-{n}") for n in (1, 2)]
    for result in results:
        result.report.assert_ok(result.schedule.describe())
        assert result.fired_at("participant.after_apply")
        assert result.report.statuses["completed"] >= 1
        assert result.report.statuses["compensated"] >= 1
        assert result.report.effects > 0
    assert [r.report.effects for r in results] == scenario.seen
    places = [set(r.report.databases.values()) for r in results]
    assert all(len(p) == 1 for p in places) and places[0] != places[1]
    assert set(PARTICIPANTS) == set(results[0].report.databases)
    assert [] == _databases(postgres_url, "understudy_chaos_ledger_pg_ledgers")
    with psycopg.connect(postgres_url) as db:  # the database named was never written to
        assert db.execute("SELECT to_regclass('understudy_ledger')").fetchone() == (None,)


def test_a_failing_chaos_run_keeps_its_postgres_ledgers_and_names_them(
    tmp_path: Path, postgres_url: str, postgres_server_url: str
) -> None:
    scenario = PgOrders(postgres_url, complaint="the test says no")
    runner = ChaosRunner(scenario, tmp_path, base="simpleSystemBase")
    result = runner.run(_ledger_schedule(), name="kept-ledgers")
    kept = _databases(postgres_url, "understudy_chaos_ledger_kept_ledgers")
    try:
        assert not result.ok
        assert [("domain", None)] == found(result.report)
        assert 1 == len(kept)
        (where,) = set(result.report.databases.values())
        assert where == redact(database_url(postgres_url, kept[0]))
        assert f"ledger of {', '.join(PARTICIPANTS)}: {where}" in str(result.report)
        with psycopg.connect(database_url(postgres_url, kept[0])) as db:
            (rows,) = db.execute("SELECT COUNT(*) FROM understudy_ledger").fetchone()
        assert result.report.effects == rows > 0
    finally:
        with psycopg.connect(postgres_server_url, autocommit=True) as admin:
            for dbname in kept:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(dbname)
                    )
                )


# --- operators' verbs and compensation debt ----------------------------------------------------


def cancelled_story(saga_id: str, compensate: Iterable[int] = (1, 0)) -> Story:
    """create and reserve applied (T, T+1), cancelled by command 1 at T+2, then ``compensate``
    compensated from T+3 (the terminal event is left to the test)."""
    story = Story(saga_id).step("do", 0).step("do", 1)
    story.events += [operator_event("cancel", 1, T + 2), Event("aborted", T + 2)]
    story.at = T + 3
    for step in compensate:
        story.step("undo", step)
    return story


def test_a_cancelled_saga_with_its_verbs_recorded_once_passes(run: Run) -> None:
    story = cancelled_story("s1")
    story.events.append(Event("operator-refused", story.at, detail={"verb": "pause", "command": 2}))
    run.saga("s1", "compensated", story.end("compensated"))
    assert 1 == run.command("s1", "cancel")
    assert 2 == run.command("s1", "pause", "refused")
    report = run.check(commands_settled=True)
    assert [] == found(report), str(report)
    assert {"cancel applied": 1, "pause refused": 1} == dict(report.verbs)


@pytest.mark.parametrize(
    ("recorded", "state", "detail"),
    [
        (2, "applied", "(retry by alice) is applied, but the timeline has 2 operator event(s)"),
        (0, "applied", "is applied, but the timeline has 0 operator event(s) and 0 refusal"),
        (1, "refused", "is refused, but the timeline has 1 operator event(s) and 0 refusal"),
        (1, "pending", "is pending, but the timeline has 1 operator event(s)"),
    ],
    ids=["applied-twice", "applied-unrecorded", "refused-but-applied", "pending-but-applied"],
)
def test_each_command_is_applied_or_refused_exactly_once(
    run: Run, recorded: int, state: str, detail: str
) -> None:
    events, effects = completed_story("s1")
    verbs = [operator_event("retry", 1, T + 0.2 + n / 10) for n in range(recorded)]
    run.saga("s1", "completed", ([*verbs, *events], effects))
    run.command("s1", "retry", state)
    report = run.check()
    assert [("verb-once", "s1")] == found(report)
    assert detail in report.violations[0].detail


def test_a_pending_command_is_lost_only_when_a_runtime_ran_after_it(run: Run) -> None:
    run.saga("s1", "completed", completed_story("s1"))
    run.command("s1", "cancel", "pending")
    assert [] == found(run.check())  # nothing ran after it: the next runtime applies it
    report = run.check(commands_settled=True)
    assert [("verb-once", "s1")] == found(report)
    assert "still pending, though a runtime ran after it was stored" in str(report)


def test_an_operator_event_names_a_command_the_store_holds(run: Run) -> None:
    events, effects = completed_story("s1")
    run.saga("s1", "completed", ([operator_event("retry", 7, T), *events], effects))
    report = run.check()
    assert [("verb-once", "s1")] == found(report)
    assert "records command 7, which the store does not hold" in str(report)


def test_a_cancel_compensates_everything_that_ran(run: Run) -> None:
    story = cancelled_story("s1", compensate=(1,))  # create never compensated
    run.saga("s1", "compensated", story.end("compensated"))
    run.command("s1", "cancel")
    report = run.check()
    assert {("cancel", "s1"), ("compensated", "s1")} == set(found(report))
    assert "steps ['create'] had run and were never compensated, resolved or owed" in str(report)


def test_a_cancelled_saga_goes_no_further(run: Run) -> None:
    story = cancelled_story("s1")
    story.step("do", 2, "rejected")  # a forward intent after the cancel
    run.saga("s1", "compensated", story.end("compensated"))
    run.command("s1", "cancel")
    report = run.check()
    assert ("cancel", "s1") in found(report)
    assert "went forward (intent of step 'charge') after it was cancelled by alice" in str(report)


def test_a_compensation_resolved_by_hand_needs_no_effect(run: Run) -> None:
    """After the cancel, reserve's compensation was resolved by an operator (done by hand,
    outside the participants' ledgers): the saga is compensated with only create's undone."""
    story = cancelled_story("s1", compensate=())
    story.events += [
        operator_event("resolve", 2, story.at, step=1),
        Event("resolved", story.at, 1, detail={"name": "reserve", "who": "alice"}),
    ]
    story.at += 1
    story.step("undo", 0)
    run.saga("s1", "compensated", story.end("compensated"))
    run.command("s1", "cancel")
    run.command("s1", "resolve", step=1)
    assert [] == found(run.check())


def test_a_resolved_event_needs_an_applied_resolve(run: Run) -> None:
    story = cancelled_story("s1", compensate=())
    story.events.append(Event("resolved", story.at, 1, detail={"name": "reserve"}))
    story.at += 1
    story.step("undo", 0)
    run.saga("s1", "compensated", story.end("compensated"))
    run.command("s1", "cancel")
    report = run.check()
    assert ("skipped", "s1") in found(report)
    assert "resolved step 'reserve' without an applied resolve before it" in str(report)


DEBT = Event("debt", T + 5, 1, 3, {"name": "reserve", "error": "no reply", "attempts": 3})
OWED = ["compensate step 'reserve' (release): owed, no reply", "compensate step 'create' (cancel)"]


def owing_story(saga_id: str) -> Story:
    """create and reserve applied, charge rejected, its refund a no-op, then reserve's release
    failing on every attempt: reserve becomes debt at T+5 and the saga parks owing it."""
    story = Story(saga_id).step("do", 0).step("do", 1).step("do", 2, "rejected")
    story.step("undo", 2, "noop")
    story.events += [intent(saga_id, 1, T + 4, "undo"), DEBT]
    story.at = T + 6
    return story


@pytest.mark.parametrize("listed", [True, False], ids=["listed", "dropped"])
def test_compensation_debt_is_never_dropped(run: Run, listed: bool) -> None:
    debt = [[1, "no reply", 3, T + 5]] if listed else []
    run.saga(
        "s1",
        "failed",
        owing_story("s1").end("failed", outstanding=OWED),
        outstanding=OWED,
        state={"debt": debt, "stack": [0], "stopped_in": "compensating"},
    )
    report = run.check()
    assert ([] if listed else [("debt", "s1")]) == found(report), str(report)
    if not listed:
        assert "step 'reserve' became debt and was neither paid nor settled" in str(report)


def test_debt_settled_by_an_operator_or_paid_by_a_retry_is_gone(run: Run) -> None:
    settled = owing_story("s1")
    settled.events += [
        Event("failed", settled.at),
        operator_event("resolve", 1, settled.at + 1, step=1),
        Event("debt-settled", settled.at + 1, 1, detail={"name": "reserve"}),
    ]
    settled.at += 2
    settled.step("undo", 0)
    run.saga("s1", "compensated", settled.end("compensated"))
    run.command("s1", "resolve", step=1)
    paid = owing_story("s2")
    paid.events += [
        Event("failed", paid.at),
        operator_event("retry", 2, paid.at + 1),
        Event("debt-retried", paid.at + 1, 1),
    ]
    paid.at += 2
    paid.step("undo", 1).step("undo", 0)
    run.saga("s2", "compensated", paid.end("compensated"))
    run.command("s2", "retry")
    report = run.check()
    assert [] == found(report), str(report)


def test_a_compensated_saga_owes_nothing(run: Run) -> None:
    story = owing_story("s1")
    story.step("undo", 0)
    run.saga("s1", "compensated", story.end("compensated"), state={"debt": []})
    report = run.check()
    assert ("debt", "s1") in found(report)
    assert "compensated, yet it owes ['reserve']" in str(report)


@pytest.mark.parametrize("resumed", [True, False])
def test_a_paused_saga_sends_nothing_until_resumed(run: Run, resumed: bool) -> None:
    story = Story("s1").step("do", 0)
    story.events.append(operator_event("pause", 1, story.at))
    if resumed:
        story.events.append(operator_event("resume", 2, story.at + 0.5))
    story.at += 1
    story.step("do", 1).step("do", 2)
    run.saga("s1", "completed", story.end("completed"))
    run.command("s1", "pause")
    if resumed:
        run.command("s1", "resume")
    report = run.check()
    assert ([] if resumed else [("paused", "s1")]) == found(report), str(report)
    if not resumed:
        assert "sent intent of step 'reserve' while paused by alice (command 1)" in str(report)


@pytest.mark.parametrize("holds", [{"paid": "by hand"}, None], ids=["given", "other"])
def test_a_skipped_step_needs_no_effect_and_holds_the_result_given(run: Run, holds: Any) -> None:
    """reserve was skipped (done by hand outside the ledgers) with the result given: the saga
    completes with no effect of reserve, and holds the result."""
    story = Story("s1").step("do", 0)
    story.events += [
        operator_event("skip", 1, story.at, step=1, result={"paid": "by hand"}),
        Event("skipped", story.at, 1, detail={"name": "reserve", "who": "alice"}),
    ]
    story.at += 1
    story.step("do", 2)
    run.saga("s1", "completed", story.end("completed"), state={"results": {"reserve": holds}})
    run.command("s1", "skip", step=1, result={"paid": "by hand"})
    report = run.check()
    assert ([] if holds else [("skipped", "s1")]) == found(report), str(report)


def test_a_parked_saga_taken_up_again_may_end_again(run: Run) -> None:
    """Parked going forward (failed), retried by an operator, then completed: two terminal
    events, legitimately; and its recoveries before the retry no longer park it."""
    parked = ["finish step 'charge' (charge)"]
    story = Story("s1").step("do", 0).step("do", 1)
    claimed = Event("claimed", story.at, detail={"recovery_attempts": 5})  # past the cap
    story.events += [
        claimed,
        Event("failed", story.at, detail={"outstanding": parked}),
        operator_event("retry", 1, story.at + 0.5),
    ]
    story.at += 1
    story.step("do", 2)
    run.saga("s1", "completed", story.end("completed"))
    run.command("s1", "retry")
    assert [] == found(run.check(policy=RestartPolicy(max_recovery_attempts=2)))
    again = Story("s2").step("do", 0).step("do", 1)
    again.events.append(Event("failed", again.at))  # no verb took it up
    again.step("do", 2)
    run.saga("s2", "completed", again.end("completed"))
    assert [("terminal-once", "s2")] == found(run.check())


def test_ledger_rows_written_by_hand_need_no_intent(run: Run) -> None:
    """The driver did reserve's release by hand (a resolve's work) before the saga recorded
    any compensation intent for it: exempt from write-ahead, and only that row."""
    story = cancelled_story("s1", compensate=(0,))
    story.events += [
        operator_event("resolve", 2, T + 2.5, step=1),
        Event("resolved", T + 2.5, 1, detail={"name": "reserve"}),
    ]
    events, effects = story.end("compensated")
    run.saga("s1", "compensated", (events, [*effects, (1, "undo", "applied", T + 2.2)]))
    run.command("s1", "cancel")
    run.command("s1", "resolve", step=1)
    assert [("write-ahead", "s1")] == found(run.check())
    assert [] == found(run.check(by_hand=[("s1", 1, "undo")]))
