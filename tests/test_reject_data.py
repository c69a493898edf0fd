"""A refusal can carry data: ``Reject("card declined", data={...})``. The ledger records it
with the refusal (msgpack), a repeated request gets it again, and the reply carries it in
``StepReply.data``; ``Reject("reason")`` alone works as before, and an error carries none."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import msgpack
import psycopg
import pytest
from participants import Refuser

from understudy import SagaDefinition, Step, Understudy
from understudy.actors.plumbing import Stop, Stopped
from understudy.actors.saga import idempotency_key
from understudy.actors.system import child_pids, reap, start_actor_system
from understudy.messages import ConfigureParticipant, ParticipantReady, StepReply, StepRequest

Ask = Callable[[StepRequest], StepReply]
DATA = {"code": "card_declined", "retry_after": 30, "tried": [1, 2]}


def request(action: str, payload: dict[str, Any], saga_id: str = "s-1") -> StepRequest:
    key = idempotency_key(saga_id, 0, "do")
    return StepRequest(saga_id, 0, "charge", "do", action, key, key, payload, {}, 1, 1)


def ledger_row(database: str, saga_id: str) -> tuple[Any, ...] | None:
    """(outcome, reason, result) of the saga's step 0 in the ledger."""
    statement = "SELECT outcome, reason, result FROM understudy_ledger WHERE key = ?"
    key = idempotency_key(saga_id, 0, "do")
    if database.startswith("postgres"):
        with psycopg.connect(database, autocommit=True) as db:
            row = db.execute(statement.replace("?", "%s"), (key,)).fetchone()
    else:
        with closing(sqlite3.connect(database)) as db:
            row = db.execute(statement, (key,)).fetchone()
    return None if row is None else (row[0], row[1], None if row[2] is None else bytes(row[2]))


@pytest.fixture
def database(tmp_path: Path) -> str:
    return str(tmp_path / "refuser.db")


@pytest.fixture
def refuser(base: str, database: str) -> Iterator[Ask]:
    """A Refuser actor on its own, configured, and a function that asks it."""
    before = child_pids()
    asys = start_actor_system(base)
    admin = child_pids() - before  # a multi-process base's admin: collected after, no zombie
    try:
        address = asys.createActor(Refuser)
        ready = asys.ask(address, ConfigureParticipant("payments", {"database": database}), 30)
        assert isinstance(ready, ParticipantReady) and ready.error is None, ready

        def ask(msg: StepRequest) -> StepReply:
            reply = asys.ask(address, msg, 30)
            assert isinstance(reply, StepReply), reply
            return reply

        yield ask
        assert isinstance(asys.ask(address, Stop(), 30), Stopped)
    finally:
        asys.shutdown()
        reap(admin)


@pytest.mark.parametrize("action", ["check", "verify"])
def test_the_refusal_data_is_replied_recorded_and_replayed(
    refuser: Ask, database: str, action: str
) -> None:
    """Ordinary ("check") and external ("verify") handlers alike."""
    payload = {"reason": "card declined", "data": DATA}
    first = refuser(request(action, payload))
    again = refuser(request(action, payload))
    assert ("rejected", "card declined", DATA, False) == (
        first.outcome,
        first.reason,
        first.data,
        first.replayed,
    )
    assert ("rejected", "card declined", DATA, True) == (
        again.outcome,
        again.reason,
        again.data,
        again.replayed,
    )
    row = ledger_row(database, "s-1")
    assert row is not None and ("rejected", "card declined") == row[:2]
    assert DATA == msgpack.unpackb(row[2], raw=False)  # msgpack, never pickle


def test_a_refusal_without_data_works_as_before(refuser: Ask, database: str) -> None:
    first = refuser(request("check", {"reason": "out of stock"}))
    again = refuser(request("check", {"reason": "out of stock"}))
    assert [("rejected", "out of stock", None)] * 2 == [
        (reply.outcome, reply.reason, reply.data) for reply in (first, again)
    ]
    assert ("rejected", "out of stock", None) == ledger_row(database, "s-1")


def test_an_error_carries_no_data(refuser: Ask, database: str) -> None:
    reply = refuser(request("check", {"raise": True, "data": DATA}))
    assert ("error", None) == (reply.outcome, reply.data)
    assert "the check broke" in (reply.reason or "")
    assert ledger_row(database, "s-1") is None


@pytest.mark.parametrize("action", ["check", "verify"])
def test_unencodable_data_is_an_error_naming_the_step_and_the_fix(
    refuser: Ask, database: str, action: str
) -> None:
    """Nothing is recorded: the refusal is not kept without its data, and a retry of the key
    (after the handler is fixed) runs it again."""
    reply = refuser(request(action, {"unencodable": True}))
    assert ("error", None) == (reply.outcome, reply.data)
    reason = reply.reason or ""
    assert "refusal of step 'charge'" in reason and "datetime" in reason
    assert "ISO string" in reason  # the fix
    row = ledger_row(database, "s-1")
    assert row is None or "started" == row[0]  # an external call's row stays "started"


def test_a_saga_whose_step_refuses_with_data_compensates(
    start: Callable[..., Understudy], database: str
) -> None:
    definition = SagaDefinition("pay", 1, [Step("charge", "payments", "check", "uncheck")])
    us = start([definition], [("payments", Refuser, {"database": database})])
    finished = us.run("p-1", "pay", {"reason": "card declined", "data": DATA})
    assert "compensated" == finished.status and "card declined" in (finished.reason or "")


def test_refusal_data_on_postgres(base: str, postgres_url: str) -> None:
    asys = start_actor_system(base)
    try:
        address = asys.createActor(Refuser)
        ready = asys.ask(address, ConfigureParticipant("payments", {"database": postgres_url}), 30)
        assert isinstance(ready, ParticipantReady) and ready.error is None, ready
        payload = {"reason": "card declined", "data": DATA}
        replies = [asys.ask(address, request("check", payload), 30) for _ in range(2)]
        assert isinstance(asys.ask(address, Stop(), 30), Stopped)
    finally:
        asys.shutdown()
    assert [(DATA, False), (DATA, True)] == [(r.data, r.replayed) for r in replies]
    row = ledger_row(postgres_url, "s-1")
    assert row is not None and DATA == msgpack.unpackb(row[2], raw=False)
