"""Participants whose state and ledger live in PostgreSQL: the same rules and the same group
commit as on SQLite, and a lost connection costs a retry, never the participant.

The saga store stays the SQLite file (``tmp_path / "sagas.db"``); the three participants of the
order saga are :class:`PgRecorder` s sharing the test's own PostgreSQL database."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from conftest import PARTICIPANTS
from participants import PgRecorder
from pg import terminate_backends

from understudy import Understudy
from understudy.actors.plumbing import Stop, Stopped
from understudy.actors.saga import idempotency_key
from understudy.actors.system import start_actor_system
from understudy.messages import ConfigureParticipant, ParticipantReady, StepReply, StepRequest

Start = Callable[..., Understudy]
FORWARD = [("create", "do"), ("reserve", "do"), ("charge", "do")]


def pg_participants(url: str) -> list[tuple[str, type, dict[str, Any]]]:
    return [(name, PgRecorder, {"database": url}) for name in PARTICIPANTS]


def pg_effects(url: str, saga_id: str | None = None) -> list[tuple[str, str, str, str]]:
    """(participant, saga_id, step, kind) of every effect, in the order applied."""
    with psycopg.connect(url, autocommit=True) as db:
        rows = db.execute(
            "SELECT participant, saga_id, step, kind FROM effects "
            "WHERE %s::text IS NULL OR saga_id = %s ORDER BY seq",
            (saga_id, saga_id),
        ).fetchall()
    return [(str(a), str(b), str(c), str(d)) for a, b, c, d in rows]


def pg_ledger(url: str) -> dict[str, str]:
    """Outcome by key of the shared ledger."""
    with psycopg.connect(url, autocommit=True) as db:
        rows = db.execute("SELECT key, outcome FROM understudy_ledger").fetchall()
    return {str(key): str(outcome) for key, outcome in rows}


def steps_of(url: str, saga_id: str) -> list[tuple[str, str]]:
    return [(step, kind) for _p, _s, step, kind in pg_effects(url, saga_id)]


def test_the_order_saga_completes_and_compensates_with_its_state_in_postgres(
    start: Start, postgres_url: str
) -> None:
    us = start(participants=pg_participants(postgres_url))
    assert "completed" == us.run("o-1", "order", {}).status
    assert "compensated" == us.run("o-2", "order", {"reject": "charge"}).status
    assert FORWARD == steps_of(postgres_url, "o-1")
    assert [
        ("create", "do"),
        ("reserve", "do"),
        ("reserve", "undo"),
        ("create", "undo"),
    ] == steps_of(postgres_url, "o-2")
    ledger = pg_ledger(postgres_url)
    assert "applied" == ledger[idempotency_key("o-1", 2, "do")]
    assert "rejected" == ledger[idempotency_key("o-2", 2, "do")]
    # The refund of the refused charge had nothing to undo: a no-op (the refused forward's row
    # stays; a tombstone is for a forward never seen).
    assert "noop" == ledger[idempotency_key("o-2", 2, "undo")]
    # Each participant wrote its own effects, in its own steps.
    owners = {(participant, step) for participant, _s, step, _k in pg_effects(postgres_url)}
    assert {("orders", "create"), ("inventory", "reserve"), ("payments", "charge")} == owners


def test_concurrent_sagas_apply_each_effect_once_per_key(start: Start, postgres_url: str) -> None:
    us = start(participants=pg_participants(postgres_url))
    futures = {
        f"c-{i}": us.submit_future(f"c-{i}", "order", {"reject": "charge"} if i % 5 == 0 else {})
        for i in range(30)
    }
    statuses = Counter(future.result(120).status for future in futures.values())
    assert {"completed": 24, "compensated": 6} == dict(statuses)
    with psycopg.connect(postgres_url, autocommit=True) as db:
        per_key = db.execute("SELECT key, count(*) FROM effects GROUP BY key").fetchall()
    assert per_key and all(count == 1 for _key, count in per_key)
    assert 24 * 3 + 6 * 4 == len(per_key)


def test_a_failing_handler_in_a_batch_undoes_only_its_own_writes(
    start: Start, postgres_url: str
) -> None:
    """Started together, the sagas' requests share ledger transactions; every fourth charge
    handler writes its effect and then raises, every time: its savepoint undoes that write, and
    only that one."""
    us = start(participants=pg_participants(postgres_url))
    futures = {
        f"b-{i}": us.submit_future(
            f"b-{i}", "order", {"fail": {"charge": -1}} if i % 4 == 0 else {}
        )
        for i in range(24)
    }
    outcomes = {saga_id: future.result(120).status for saga_id, future in futures.items()}
    failing = {f"b-{i}" for i in range(0, 24, 4)}
    assert failing == {s for s, status in outcomes.items() if status == "compensated"}
    assert set(futures) - failing == {s for s, status in outcomes.items() if status == "completed"}
    charged = [saga for _p, saga, step, kind in pg_effects(postgres_url) if step == "charge"]
    assert sorted(set(futures) - failing) == sorted(charged)
    ledger = pg_ledger(postgres_url)
    for saga_id in failing:
        assert "tombstone" == ledger[idempotency_key(saga_id, 2, "do")]
    for saga_id in set(futures) - failing:
        assert "applied" == ledger[idempotency_key(saga_id, 2, "do")]


@pytest.fixture
def participant(base: str, postgres_url: str) -> Iterator[Callable[[Any], StepReply]]:
    """A PgRecorder actor on its own, configured, and a function that sends it a request and
    returns its reply."""
    asys = start_actor_system(base)
    try:
        address = asys.createActor(PgRecorder)
        ready = asys.ask(address, ConfigureParticipant("payments", {"database": postgres_url}), 30)
        assert isinstance(ready, ParticipantReady) and ready.error is None, ready

        def ask(request: StepRequest) -> StepReply:
            reply = asys.ask(address, request, 30)
            assert isinstance(reply, StepReply), reply
            return reply

        yield ask
        # The in-process base tells no actor that the system goes away: stop it, so that it
        # closes its connection.
        assert isinstance(asys.ask(address, Stop(), 30), Stopped)
    finally:
        asys.shutdown()


def request(kind: str, payload: dict[str, Any] | None = None, saga_id: str = "r-1") -> StepRequest:
    action = "charge" if kind == "do" else "refund"
    return StepRequest(
        saga_id,
        2,
        "charge",
        kind,
        action,
        idempotency_key(saga_id, 2, kind),
        idempotency_key(saga_id, 2, "do"),
        payload or {"amount": 5},
        {},
        1,
        1,
    )


def test_a_repeated_key_replays_and_a_changed_payload_is_refused(
    participant: Callable[[StepRequest], StepReply], postgres_url: str
) -> None:
    first = participant(request("do"))
    again = participant(request("do"))
    assert ("ok", False) == (first.outcome, first.replayed)
    assert ("ok", True, first.result) == (again.outcome, again.replayed, again.result)
    changed = participant(request("do", {"amount": 6}))
    assert "rejected" == changed.outcome and "different action or payload" in (changed.reason or "")
    assert [("payments", "r-1", "charge", "do")] == pg_effects(postgres_url)


def test_a_compensation_before_its_forward_leaves_a_tombstone_that_refuses_the_forward(
    participant: Callable[[StepRequest], StepReply], postgres_url: str
) -> None:
    undo = participant(request("undo", saga_id="t-1"))
    assert "ok" == undo.outcome and "nothing to undo" in (undo.reason or "")
    late = participant(request("do", saga_id="t-1"))
    assert "rejected" == late.outcome and "already compensated" in (late.reason or "")
    assert [] == pg_effects(postgres_url)
    assert {
        idempotency_key("t-1", 2, "do"): "tombstone",
        idempotency_key("t-1", 2, "undo"): "noop",
    } == pg_ledger(postgres_url)


def test_terminated_connections_are_survived(
    start: Start, postgres_url: str, postgres_server_url: str
) -> None:
    """Every participant's connection is killed between requests, and again while sagas run:
    the sagas complete, and nothing is applied twice."""
    dbname = urlsplit(postgres_url).path.lstrip("/")
    us = start(participants=pg_participants(postgres_url))
    assert "completed" == us.run("k-0", "order", {}).status
    assert terminate_backends(postgres_server_url, dbname) >= len(PARTICIPANTS)
    assert "completed" == us.run("k-1", "order", {}, timeout=60).status
    futures = [us.submit_future(f"k-{i}", "order", {}) for i in range(2, 22)]
    terminate_backends(postgres_server_url, dbname)
    assert {"completed"} == {future.result(120).status for future in futures}
    effects = pg_effects(postgres_url)
    assert len(effects) == len(set(effects)) == 22 * 3
    for i in range(22):
        assert FORWARD == steps_of(postgres_url, f"k-{i}")


def test_credentials_never_appear_in_errors(base: str, postgres_url: str) -> None:
    """A ledger that cannot connect says so naming the server, never the password."""
    parts = urlsplit(postgres_url)
    host = parts.hostname or "127.0.0.1"
    secret = "s3cret-Pa55word"
    # A port nobody listens on, with a password in the URL.
    bad = urlunsplit(parts._replace(netloc=f"someone:{secret}@{host}:1"))
    asys = start_actor_system(base)
    try:
        address = asys.createActor(PgRecorder)
        options = {"database": bad, "connect_timeout": 2}
        ready = asys.ask(address, ConfigureParticipant("payments", options), 30)
    finally:
        asys.shutdown()
    assert isinstance(ready, ParticipantReady) and ready.error
    assert secret not in ready.error and "someone" not in ready.error
    assert f"{host}:1" in ready.error
