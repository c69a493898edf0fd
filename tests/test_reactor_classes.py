"""A reactor class gathers the reactions of every class it is built from, and a chain whose
acknowledgement names an event the log lacks reads as failed, saying what was lost."""

from __future__ import annotations

from understudy.chains import build_chain
from understudy.choreography import Reactor, reacts
from understudy.persistence.base import AckRecord, PublishedEvent, TopicSubscription


class Audit(Reactor):
    @reacts("order.placed")
    def note(self, event: object, db: object) -> None: ...


class Billing(Reactor):
    @reacts("order.confirmed")
    def bill(self, event: object, db: object) -> None: ...


class Both(Audit, Billing):
    @reacts("order.cancelled")
    def undo(self, event: object, db: object) -> None: ...


def test_a_reactor_built_from_several_keeps_every_reaction() -> None:
    assert set(Both._reactions) == {"order.placed", "order.confirmed", "order.cancelled"}
    assert Both._reactions["order.confirmed"].method == "bill"
    assert set(Audit._reactions) == {"order.placed"}  # the bases keep only their own


def test_an_event_named_by_an_acknowledgement_and_missing_from_the_log_fails_the_chain() -> None:
    placed = PublishedEvent(
        seq=1,
        event_id="e-1",
        topic="order.placed",
        correlation_id="c-1",
        causation_id=None,
        source="",
        kind="event",
        data={},
        at=1.0,
    )
    ack = AckRecord(
        subscriber="audit",
        event_id="e-1",
        correlation_id="c-1",
        outcome="applied",
        at=2.0,
        reason=None,
        published=("e-2",),
    )
    subscription = TopicSubscription("audit", "order.placed", 0, 0.0)
    chain = build_chain("c-1", [placed], [ack], [subscription])
    assert chain.status == "failed"
    assert any("e-2" in line and "lost" in line for line in chain.outstanding)
