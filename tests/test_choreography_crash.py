"""Choreography under SIGKILL, on the TCP multi-process base: a reacting service's process is
killed at each boundary of an event's way, the coordinator starts it again, and every event is
still delivered to every subscriber and applied exactly once, and every chain ends consistent.

The boundaries (participant failpoints, which a reactor hits; see
:mod:`understudy.actors.reactor`):

- ``participant.after_apply``: a reaction and its outbox committed in the service's database,
  not relayed to the store yet;
- ``participant.before_reply``: relayed (the store has the events), the outbox not yet marked,
  so the restarted service relays them again;
- ``participant.before_apply``: the subscriber took the event from the store and dies before
  applying it (between the relay and the delivery).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_choreography_shop import STOCK, effects, rows, services, stock, wait_chain

from understudy import Understudy
from understudy.failpoints import Fault
from understudy.persistence import open_store
from understudy.persistence.base import APPLIED, COMPLETED

ORDERS = 4

pytestmark = pytest.mark.multiproc


@pytest.mark.parametrize(
    ("point", "victim"),
    [
        ("participant.after_apply", "inventory"),  # between its commit and the relay
        ("participant.before_reply", "inventory"),  # between the relay and marking it relayed
        ("participant.before_apply", "payments"),  # between the relay and the delivery
        ("participant.after_apply", "payments"),  # applied, its acknowledgement not relayed
    ],
)
def test_a_killed_service_loses_nothing_and_applies_nothing_twice(
    tmp_path: Path, point: str, victim: str
) -> None:
    once = tmp_path / "fired"
    fault = Fault(point, "kill", participant=victim, once_file=str(once))
    with Understudy.start(
        tmp_path / "sagas.db", [], services(tmp_path), base="multiprocTCPBase", faults=[fault]
    ) as us:
        before = us.hosts().participant_pids[victim]
        chain_ids = [
            us.publish("order.placed", {"order": f"o{n}", "sku": "A1", "qty": 1})
            for n in range(ORDERS)
        ]
        chains = [wait_chain(us, chain_id) for chain_id in chain_ids]
        after = us.hosts().participant_pids.get(victim)
    assert once.exists(), f"the fault at {point} never fired"
    assert before != after, f"{victim} was not started again"
    for chain in chains:
        assert COMPLETED == chain.status
        # exactly the four events of the shop: a reaction run twice would publish new ids
        assert ["order.placed", "order.created", "stock.reserved", "payment.charged"] == [
            e.topic for e in chain.events
        ]
        for event in chain.events:
            assert [APPLIED] == [d.outcome for d in event.deliveries], event
    done = effects(tmp_path)
    for name, applied in done.items():
        ids = [event_id for event_id, _ in applied]
        assert len(ids) == len(set(ids)), f"{name} applied an event twice: {applied}"
    assert ORDERS == len(done["inventory"]) == len(done["payments"])
    assert 2 * ORDERS == len(done["orders"])
    assert STOCK - ORDERS == stock(tmp_path)
    with open_store(tmp_path / "sagas.db", read_only=True) as store:
        for name in ("orders", "inventory", "payments"):
            assert [] == store.undelivered(name)
    # Each outbox relayed everything, and holds what one run of each reaction wrote: the
    # events it published and its acknowledgements, none written twice.
    published = {"orders": ORDERS, "inventory": ORDERS, "payments": ORDERS}
    for name, count in published.items():
        outbox = rows(
            tmp_path / f"{name}.db", "SELECT kind, event_id, relayed FROM understudy_outbox"
        )
        assert all(relayed == 1 for _, _, relayed in outbox), outbox
        assert count == sum(kind == "event" for kind, _, _ in outbox)
        assert len(done[name]) == len({event_id for kind, event_id, _ in outbox if kind == "ack"})
