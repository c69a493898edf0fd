"""Reading a choreographed chain back from the store: who reacted to what, what is pending,
what failed and what was compensated.

A chain is every event that carries one correlation id (the first event's, inherited by every
event published while reacting to it). Nothing coordinates it, so its state is computed here
from the event log, the subscribers' acknowledgements and the subscriptions (what
``understudy list`` and ``understudy show`` print, and :meth:`understudy.Understudy.chain`
returns):

- a **delivery** is one subscriber's part in one event: ``applied``, ``rejected``, ``failed``,
  or ``pending`` (the event is in the log, the subscriber has not acknowledged it: it is down,
  slow, or retrying);
- a **failure** is a delivery that was rejected or failed; its reactor published a failure
  event in its place, and the reactions to that event (and to what they publish) are the
  chain's **compensation**;
- the chain's status, as a saga's: ``running`` while any delivery is pending; else ``failed``
  (needs attention) when a failure went unhandled (a failure event nobody reacts to, a damaged
  event) or a compensating reaction itself failed; else ``compensated`` when anything failed;
  else ``completed``. ``outstanding`` says what a person must look at.

A chain seen while a reactor has committed but not yet relayed shows what the store has: the
relay runs right after the commit, and a reactor that died in between relays at its restart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import attrs

from understudy.persistence.base import (
    APPLIED,
    COMPENSATED,
    COMPLETED,
    FAILED,
    FAILURE,
    RUNNING,
    AckRecord,
    PublishedEvent,
    SagaStore,
    TopicSubscription,
)

PENDING: Final = "pending"
CHAIN_STATUSES: Final = (RUNNING, COMPLETED, COMPENSATED, FAILED)


@attrs.frozen
class Delivery:
    """One subscriber's part in one event."""

    subscriber: str
    outcome: str  # applied, rejected, failed, or pending
    reason: str | None = None
    at: float | None = None
    published: tuple[str, ...] = ()  # what its reaction published (a failure event, if any)
    damaged: str | None = None


@attrs.frozen
class ChainEvent:
    """An event of the chain with every subscriber's part in it."""

    seq: int
    event_id: str
    topic: str
    source: str  # who published it: a reactor's name, "" for plain code
    causation_id: str | None
    kind: str  # "event", or "failure" (published in place of a reaction that failed)
    data: Any
    at: float
    deliveries: tuple[Delivery, ...]
    #: Inside the compensation: a failure event, or published by reacting to one.
    compensating: bool = False
    damaged: str | None = None


@attrs.frozen
class Chain:
    """A chain as read from the store (see the module docstring)."""

    correlation_id: str
    status: str
    events: tuple[ChainEvent, ...]
    outstanding: tuple[str, ...] = ()

    @property
    def terminal(self) -> bool:
        return self.status != RUNNING

    @property
    def started_at(self) -> float:
        return self.events[0].at if self.events else 0.0

    @property
    def last_at(self) -> float:
        times = [e.at for e in self.events] + [
            d.at for e in self.events for d in e.deliveries if d.at is not None
        ]
        return max(times, default=0.0)

    @property
    def pending(self) -> tuple[tuple[ChainEvent, Delivery], ...]:
        """(event, delivery) of every delivery not acknowledged yet."""
        return tuple((e, d) for e in self.events for d in e.deliveries if d.outcome == PENDING)

    @property
    def failures(self) -> tuple[tuple[ChainEvent, Delivery], ...]:
        """(event, delivery) of every reaction that was rejected or failed."""
        return tuple(
            (e, d) for e in self.events for d in e.deliveries if d.outcome not in (APPLIED, PENDING)
        )

    def event(self, event_id: str) -> ChainEvent | None:
        return next((e for e in self.events if e.event_id == event_id), None)


def read_chain(store: SagaStore, correlation_id: str) -> Chain | None:
    """The chain ``correlation_id``, or None when the log holds none of its events."""
    acks, events = _read(store, correlation_id)
    if not events:
        return None
    return build_chain(correlation_id, events, acks, store.subscriptions())


def _read(store: SagaStore, correlation_id: str) -> tuple[list[AckRecord], list[PublishedEvent]]:
    """The chain's acknowledgements, then its events. In this order, because they are two
    reads that may see two states of the store: an acknowledgement commits with the events its
    reaction published, so every event an acknowledgement read first names is in the events
    read after it. The other order could see a reaction done without what it published, and
    call a chain complete that is not; this one at worst sees an event whose reactions it has
    not read yet, and calls the chain running."""
    acks = store.chain_acks(correlation_id)
    return acks, store.chain_events(correlation_id)


def build_chain(
    correlation_id: str,
    events: Sequence[PublishedEvent],
    acks: Sequence[AckRecord],
    subscriptions: Sequence[TopicSubscription],
) -> Chain:
    """A :class:`Chain` from what the store holds of it."""
    by_event: dict[str, dict[str, AckRecord]] = {}
    for ack in acks:
        by_event.setdefault(ack.event_id, {}).setdefault(ack.subscriber, ack)
    compensating: dict[str, bool] = {}
    read: list[ChainEvent] = []
    outstanding: list[str] = []
    broken = False
    for event in events:  # log order: a cause is always before what it caused
        inside = event.kind == FAILURE or compensating.get(event.causation_id or "", False)
        compensating[event.event_id] = inside
        acked = by_event.get(event.event_id, {})
        expected = [
            s.subscriber
            for s in subscriptions
            if s.topic == event.topic and s.since_seq < event.seq
        ]
        deliveries = []
        for subscriber in dict.fromkeys([*expected, *acked]):
            found = acked.get(subscriber)
            if found is None:
                deliveries.append(Delivery(subscriber, PENDING))
                continue
            ack = found
            deliveries.append(
                Delivery(subscriber, ack.outcome, ack.reason, ack.at, ack.published, ack.corrupt)
            )
            where = f"{subscriber} on {event.topic} ({event.event_id})"
            if ack.corrupt:
                broken = True
                outstanding.append(f"the acknowledgement of {where} is damaged: {ack.corrupt}")
            elif ack.outcome != APPLIED and inside:
                broken = True
                outstanding.append(
                    f"compensating reaction of {where} {ack.outcome}: {ack.reason or '-'}"
                )
            elif ack.outcome != APPLIED and not ack.published:
                broken = True
                outstanding.append(
                    f"{where} {ack.outcome} and published no failure event: {ack.reason or '-'}"
                )
        if event.corrupt:
            broken = True
            outstanding.append(
                f"event {event.event_id} ({event.topic}) is damaged: {event.corrupt}"
            )
        if event.kind == FAILURE and not deliveries:
            broken = True
            outstanding.append(
                f"failure event {event.topic} ({event.event_id}) has no subscriber: nothing "
                "compensates it; add a reaction to it"
            )
        read.append(
            ChainEvent(
                event.seq,
                event.event_id,
                event.topic,
                event.source,
                event.causation_id,
                event.kind,
                event.data,
                event.at,
                tuple(deliveries),
                inside,
                event.corrupt,
            )
        )
    # An acknowledgement names what its reaction published; an event named and not in the log
    # was lost on its way (never a state the relay leaves: the store writes the events and the
    # acknowledgement in one transaction), and what it would have caused never happened.
    logged = {event.event_id for event in events}
    for ack in acks:
        for missing in (p for p in ack.published if p not in logged):
            broken = True
            outstanding.append(
                f"{ack.subscriber} published {missing} reacting to {ack.event_id}, and the log "
                "does not hold it: lost"
            )
    chain = Chain(correlation_id, RUNNING, tuple(read), tuple(outstanding))
    if chain.pending:
        status = RUNNING
    elif broken:
        status = FAILED
    elif chain.failures:
        status = COMPENSATED
    else:
        status = COMPLETED
    return attrs.evolve(chain, status=status)


def list_chains(store: SagaStore, status: str | None = None, limit: int = 100) -> list[Chain]:
    """The newest chains (at most ``limit`` read), optionally only those with ``status``."""
    subscriptions = store.subscriptions()
    found = []
    for head in store.list_chains(limit):
        acks, events = _read(store, head.correlation_id)
        chain = build_chain(head.correlation_id, events, acks, subscriptions)
        if status is None or chain.status == status:
            found.append(chain)
    return found
