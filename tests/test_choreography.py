"""Choreography: services publish events and react to one another's, through understudy's
event log, on the in-process and the TCP multi-process base (the shop of
``test_choreography_shop``: orders, inventory, payments)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from test_choreography_shop import (
    STOCK,
    Orders,
    effects,
    order_status,
    rows,
    services,
    stock,
    wait_chain,
)

from understudy import Understudy, choreography, failpoints
from understudy.actors.reactions import EventContext, reacts
from understudy.actors.reactor import Reactor
from understudy.cli import main
from understudy.errors import ChainNotFound, DefinitionError, PayloadError
from understudy.failpoints import Fault
from understudy.persistence import open_store
from understudy.persistence.base import APPLIED, COMPENSATED, COMPLETED, FAILED, REJECTED


@pytest.fixture
def shop(tmp_path: Path, base: str) -> Iterator[Callable[..., Understudy]]:
    """Start the shop over ``tmp_path / "sagas.db"`` on the parametrised base; shut down
    after. Called again after a shutdown, it starts it again on the same files."""
    running: list[Understudy] = []

    def start(**options: Any) -> Understudy:
        options.setdefault("base", base)
        us = Understudy.start(tmp_path / "sagas.db", [], services(tmp_path), **options)
        running.append(us)
        return us

    yield start
    for us in running:
        us.shutdown()


def order(name: str, qty: int = 2, **extra: Any) -> dict[str, Any]:
    return {"order": name, "sku": "A1", "qty": qty, **extra}


def reactions(chain: Any) -> list[tuple[str, str, str]]:
    """(topic, subscriber, outcome) of every delivery of the chain, in log order."""
    return [(e.topic, d.subscriber, d.outcome) for e in chain.events for d in e.deliveries]


def test_a_chain_runs_through_every_service_once(
    shop: Callable[..., Understudy], tmp_path: Path
) -> None:
    """Each service reacts to the event before it, once, and the chain completes."""
    us = shop()
    chain = wait_chain(us, us.publish("order.placed", order("o1")))
    assert COMPLETED == chain.status
    assert [
        ("order.placed", "orders", APPLIED),
        ("order.created", "inventory", APPLIED),
        ("stock.reserved", "payments", APPLIED),
        ("payment.charged", "orders", APPLIED),
    ] == reactions(chain)
    assert "confirmed" == order_status(tmp_path, "o1")
    assert STOCK - 2 == stock(tmp_path)
    done = effects(tmp_path)
    assert ["create", "confirm"] == [what for _, what in done["orders"]]
    assert ["reserve"] == [what for _, what in done["inventory"]]
    assert ["charge"] == [what for _, what in done["payments"]]
    # every effect belongs to one event of this chain, and no event was applied twice
    ids = {e.event_id for e in chain.events}
    applied = [event_id for found in done.values() for event_id, _ in found]
    assert len(applied) == len(set(applied)) and set(applied) <= ids


def test_the_correlation_id_is_the_first_events_and_every_event_inherits_it(
    shop: Callable[..., Understudy],
) -> None:
    us = shop()
    assert "order-9" == us.publish("order.placed", order("o9"), correlation_id="order-9")
    chain = wait_chain(us, "order-9")
    assert 4 == len(chain.events)
    first, *rest = chain.events
    assert first.causation_id is None and "" == first.source
    for before, after in zip(chain.events, rest, strict=False):
        assert before.event_id == after.causation_id  # each published reacting to the last
    fresh = us.publish("order.placed", order("o10"))
    assert fresh != "order-9" and len(fresh) >= 16
    assert COMPLETED == wait_chain(us, fresh).status


def test_a_refusal_publishes_a_failure_event_that_others_compensate(
    shop: Callable[..., Understudy], tmp_path: Path
) -> None:
    """Out of stock: inventory's Reject becomes order.created.failed, and orders cancels."""
    us = shop()
    chain = wait_chain(us, us.publish("order.placed", order("big", qty=STOCK + 1)))
    assert COMPENSATED == chain.status
    assert [
        ("order.placed", "orders", APPLIED),
        ("order.created", "inventory", REJECTED),
        ("order.created.failed", "orders", APPLIED),
    ] == reactions(chain)
    failure = chain.events[2]
    assert ("failure", "inventory", chain.events[1].event_id) == (
        failure.kind,
        failure.source,
        failure.causation_id,
    )
    assert "out of stock" == failure.data["reason"]
    assert {"asked": STOCK + 1} == failure.data["details"]
    assert order("big", qty=STOCK + 1) == failure.data["data"]
    assert "cancelled" == order_status(tmp_path, "big")
    assert STOCK == stock(tmp_path)  # nothing was reserved: the Reject rolled its writes back


def test_a_declared_failure_topic_is_compensated_by_every_subscriber(
    shop: Callable[..., Understudy], tmp_path: Path
) -> None:
    """A declined card publishes payment.failed: inventory releases, orders cancels."""
    us = shop()
    chain = wait_chain(us, us.publish("order.placed", order("o2", qty=3, card="declined")))
    assert COMPENSATED == chain.status
    assert {("payment.failed", "inventory", APPLIED), ("payment.failed", "orders", APPLIED)} <= set(
        reactions(chain)
    )
    assert "cancelled" == order_status(tmp_path, "o2")
    assert STOCK == stock(tmp_path)  # reserved, then released
    assert [] == rows(tmp_path / "payments.db", "SELECT * FROM charges")


def test_a_reaction_that_keeps_failing_publishes_a_failure_after_its_tries(
    shop: Callable[..., Understudy], tmp_path: Path
) -> None:
    """Payments tries three times (its retry policy), then payment.failed is compensated."""
    us = shop()
    tries = tmp_path / "tries"
    chain = wait_chain(us, us.publish("order.placed", order("o3", flaky=str(tries), fail=99)))
    assert COMPENSATED == chain.status
    [(event, delivery)] = chain.failures
    assert ("stock.reserved", "payments", FAILED) == (
        event.topic,
        delivery.subscriber,
        delivery.outcome,
    )
    assert delivery.reason is not None and "timed out (try 3)" in delivery.reason
    assert 3 == len(tries.read_text().splitlines())
    assert STOCK == stock(tmp_path)


def test_a_reaction_that_fails_then_succeeds_applies_once(
    shop: Callable[..., Understudy], tmp_path: Path
) -> None:
    us = shop()
    tries = tmp_path / "tries"
    chain = wait_chain(us, us.publish("order.placed", order("o4", flaky=str(tries), fail=2)))
    assert COMPLETED == chain.status
    assert 3 == len(tries.read_text().splitlines())
    assert [("o4", 2)] == rows(tmp_path / "payments.db", "SELECT * FROM charges")
    assert ["charge"] == [what for _, what in effects(tmp_path)["payments"]]


def test_a_subscriber_that_was_down_gets_the_events_published_meanwhile(
    shop: Callable[..., Understudy], tmp_path: Path
) -> None:
    """Events published while no service ran are delivered once they start again."""
    us = shop()
    assert COMPLETED == wait_chain(us, us.publish("order.placed", order("first"))).status
    us.shutdown()
    with closing(open_store(tmp_path / "sagas.db")) as store:
        later = [choreography.publish(store, "order.placed", order(f"late-{n}")) for n in range(3)]
    us = shop()
    for chain_id in later:
        assert COMPLETED == wait_chain(us, chain_id).status
    assert STOCK - 8 == stock(tmp_path)
    assert 4 * 2 == len(effects(tmp_path)["orders"])


def test_a_redelivered_event_replays_its_outcome_and_runs_nothing(
    shop: Callable[..., Understudy], tmp_path: Path
) -> None:
    """An acknowledgement the store lost: the event is delivered again, the ledger answers
    from its record, and the acknowledgement comes back; no effect is applied twice."""
    us = shop()
    chain_id = us.publish("order.placed", order("o5"))
    assert COMPLETED == wait_chain(us, chain_id).status
    us.shutdown()
    with closing(sqlite3.connect(tmp_path / "sagas.db")) as db:
        db.execute("DELETE FROM understudy_topic_acks WHERE subscriber = 'inventory'")
        db.commit()
    with closing(open_store(tmp_path / "sagas.db", read_only=True)) as store:
        assert 1 == len(store.undelivered("inventory"))
    us = shop()
    chain = wait_chain(us, chain_id)
    assert COMPLETED == chain.status
    assert ["reserve"] == [what for _, what in effects(tmp_path)["inventory"]]
    assert STOCK - 2 == stock(tmp_path)
    inventory = [d for e in chain.events for d in e.deliveries if d.subscriber == "inventory"]
    assert [APPLIED] == [d.outcome for d in inventory]
    assert 1 == len(inventory[0].published)  # as first recorded: it published stock.reserved


def test_list_and_show_present_a_chain(
    shop: Callable[..., Understudy], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Who reacted to what, what failed and what compensated it, from the store alone."""
    us = shop()
    ok = us.publish("order.placed", order("o6"), correlation_id="chain-ok")
    bad = us.publish("order.placed", order("o7", card="declined"), correlation_id="chain-bad")
    wait_chain(us, ok)
    wait_chain(us, bad)
    store = str(tmp_path / "sagas.db")
    capsys.readouterr()
    assert 0 == main(["list", store])
    listed = capsys.readouterr().out
    assert "2 chain(s) of events" in listed and "1 completed, 1 compensated" in listed
    assert any(
        line.startswith("chain-bad") and "compensated" in line for line in listed.splitlines()
    )
    assert 0 == main(["show", store, "chain-bad"])
    shown = capsys.readouterr().out
    assert "status: compensated" in shown
    assert "-> payments" in shown and "reason: card declined" in shown
    assert "FAILURE payment.failed" in shown and "(compensation)" in shown
    assert "payments rejected stock.reserved: card declined; compensated by: " in shown
    assert "inventory applied" in shown and "orders applied" in shown
    assert 0 == main(["show", store, "chain-ok", "--json"])
    assert '"status": "completed"' in capsys.readouterr().out
    assert 1 == main(["show", store, "no-such-chain"])
    assert "nor a chain" in capsys.readouterr().err


def test_a_chain_waiting_on_a_subscriber_is_running_and_says_on_whom(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Published and not applied: pending, named in show and list (no runtime needed)."""
    path = tmp_path / "sagas.db"
    with closing(open_store(path)) as store:
        store.subscribe("inventory", ["order.created"], 0.0)
        chain_id = choreography.publish(store, "order.created", order("o8"))
    assert 0 == main(["show", str(path), chain_id])
    shown = capsys.readouterr().out
    assert "status: running" in shown
    assert "order.created" in shown and "-> inventory" in shown and "pending" in shown
    assert 0 == main(["list", str(path)])
    assert "inventory has not applied order.created" in capsys.readouterr().out


def test_publishing_checks_what_it_is_given(shop: Callable[..., Understudy]) -> None:
    us = shop()
    with pytest.raises(PayloadError, match="when"):
        us.publish("order.placed", {"when": object()})
    with pytest.raises(ValueError):
        us.publish("", {})
    with pytest.raises(ChainNotFound):
        us.chain("never-published")
    assert "same" == us.publish("order.placed", order("o11"), "same", event_id="e-11")
    assert "same" == us.publish("order.placed", order("o11"), "same", event_id="e-11")
    assert 4 == len(wait_chain(us, "same").events)  # the second publish appended nothing


def test_a_reactor_must_not_replace_what_understudy_relies_on() -> None:
    with pytest.raises(DefinitionError, match="publish"):

        class Clumsy(Reactor):
            def publish(self, topic: str, data: Any = None) -> str:  # type: ignore[override]
                return ""

    with pytest.raises(RuntimeError, match="inside a reaction"):
        Orders().publish("order.created", {})


class Unreliable(Reactor):
    """Reacts to ``probe`` and fails with a message holding its database URL."""

    def setup(self, db: Any, options: dict[str, Any]) -> None:
        self._where = options["database"]

    @reacts("probe")
    def probe(self, event: EventContext, db: Any) -> None:
        raise RuntimeError(f"could not reach {self._where}")


def test_credentials_never_reach_the_stored_events(tmp_path: Path, postgres_url: str) -> None:
    """A failure whose text holds the service database's password is stored without it."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(postgres_url)
    secret = "s3cret-pw-123"
    url = urlunsplit(
        parts._replace(netloc=f"{parts.username}:{secret}@{parts.hostname}:{parts.port}")
    )
    options = {"database": url}
    with Understudy.start(tmp_path / "sagas.db", [], [("probe", Unreliable, options)]) as us:
        chain = wait_chain(us, us.publish("probe", {"n": 1}))
    assert FAILED == chain.status  # nobody reacts to probe.failed: a person must look
    dump = b"".join(p.read_bytes() for p in tmp_path.glob("sagas.db*"))
    assert secret.encode() not in dump
    reason = chain.failures[0][1].reason
    assert reason is not None and "could not reach" in reason and secret not in reason


def test_a_chain_runs_with_the_store_and_a_service_on_postgres(
    tmp_path: Path, postgres_url: str
) -> None:
    """The event log in a PostgreSQL saga store, inventory's ledger and outbox in PostgreSQL."""
    participants = [
        (name, cls, {"database": postgres_url} if name == "inventory" else options)
        for name, cls, options in services(tmp_path)
    ]
    with Understudy.start(postgres_url, [], participants) as us:
        ok = wait_chain(us, us.publish("order.placed", order("p1")))
        refused = wait_chain(us, us.publish("order.placed", order("p2", qty=STOCK + 5)))
    assert (COMPLETED, COMPENSATED) == (ok.status, refused.status)
    assert "confirmed" == order_status(tmp_path, "p1")
    assert "cancelled" == order_status(tmp_path, "p2")
    with closing(open_store(postgres_url, read_only=True)) as store:
        assert {ok.correlation_id, refused.correlation_id} == {
            head.correlation_id for head in store.list_chains()
        }


class Audit(Reactor):
    """Added while the shop runs: records every confirmed payment."""

    def setup(self, db: Any, options: dict[str, Any]) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS seen (event_id TEXT, orders TEXT)")

    @reacts("payment.charged")
    def note(self, event: EventContext, db: Any) -> None:
        db.execute("INSERT INTO seen VALUES (?, ?)", (event.event_id, event.data["order"]))


def test_a_service_added_later_reacts_to_what_is_published_from_then_on(
    shop: Callable[..., Understudy], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    us = shop()
    before = wait_chain(us, us.publish("order.placed", order("early")))
    us.add_participant("audit", Audit, {"database": str(tmp_path / "audit.db")})
    after = wait_chain(us, us.publish("order.placed", order("late")))
    assert (COMPLETED, COMPLETED) == (before.status, after.status)
    assert [("late",)] == rows(tmp_path / "audit.db", "SELECT orders FROM seen")
    assert ("payment.charged", "audit", APPLIED) in reactions(after)
    assert "audit" not in {d.subscriber for e in before.events for d in e.deliveries}
    capsys.readouterr()
    assert 0 == main(["list", str(tmp_path / "sagas.db"), "--status", "completed"])
    listed = capsys.readouterr().out
    assert before.correlation_id in listed and after.correlation_id in listed


@pytest.mark.parametrize(
    ("point", "action"),
    [
        ("participant.before_apply", "raise"),  # inside the reaction's transaction: rolled back
        ("participant.after_apply", "raise"),  # committed, the relay left for the next look
        ("participant.before_reply", "raise"),  # relayed, not marked: relayed again
        ("participant.before_reply", "drop"),
        ("participant.before_reply", "duplicate"),
    ],
)
def test_faults_in_a_reacting_service_lose_and_repeat_nothing(
    tmp_path: Path, point: str, action: str
) -> None:
    """In-process faults at each boundary of a reaction (a kill is for the multi-process
    base, test_choreography_crash): the chain still completes with one effect per event."""
    fault = Fault(point, action, participant="inventory", nth=1)
    try:
        with Understudy.start(tmp_path / "sagas.db", [], services(tmp_path), faults=[fault]) as us:
            chain = wait_chain(us, us.publish("order.placed", order("f1")))
    finally:
        failpoints.disarm()
    assert COMPLETED == chain.status
    assert 4 == len(chain.events)
    done = effects(tmp_path)
    assert [["create", "confirm"], ["reserve"], ["charge"]] == [
        [what for _, what in done[name]] for name in ("orders", "inventory", "payments")
    ]
