"""What a reactor's reactions become, kept apart from the actor (:mod:`.reactor`): the request
the ledger keys a reaction by, the failure event a refused or failing reaction publishes, and
the relay of the outbox to the store's event log."""

from __future__ import annotations

import time
import uuid
from typing import Any

from understudy import codec, failpoints
from understudy.actors.outbox import Outbox
from understudy.errors import UnderstudyError
from understudy.messages import StepRequest
from understudy.persistence.base import FAILURE, PublishedEvent, SagaStore, TopicEvent


def new_id() -> str:
    """A new event id."""
    return uuid.uuid4().hex


def ledger_request(event: PublishedEvent, reactor: str) -> StepRequest:
    """``event`` as the ledger takes a request: keyed by the event id and the reactor's name,
    bound to the topic and the data (a reused key with other data is refused, as for steps)."""
    key = f"{event.event_id}@{reactor}"
    return StepRequest(
        event.correlation_id,
        event.seq,
        event.topic,
        "react",
        event.topic,
        key,
        key,
        event.data,
        {},
        1,
        0,
    )


def failure_event(
    event: PublishedEvent, topic: str, reactor: str, reason: str, details: Any
) -> TopicEvent:
    """The failure event ``reactor`` publishes on ``topic`` in place of its reaction to
    ``event``: why, who, and the event it failed on with its data, for the compensations."""
    data = {
        "reason": reason,
        "reactor": reactor,
        "topic": event.topic,
        "event_id": event.event_id,
        "data": event.data,
        "details": details,
    }
    try:
        encoded = codec.encode(data, f"failure event of {event.topic!r}")
    except UnderstudyError:  # what the Reject carried cannot be stored: leave it out
        encoded = codec.encode({**data, "details": None})
    return TopicEvent(
        new_id(),
        topic,
        event.correlation_id,
        encoded,
        time.time(),
        reactor,
        event.event_id,
        FAILURE,
    )


def relay(outbox: Outbox, store: SagaStore, reactor: str) -> None:
    """Append what ``outbox`` has not relayed to ``store``'s log (events and acknowledgements
    in one store transaction), and mark it relayed once that commit returned. The failpoint
    ``participant.before_reply`` sits between the two: ``drop`` leaves the rows unmarked
    (relayed again later, appended once), ``duplicate`` relays them twice."""
    while True:
        pending = outbox.pending()
        if not pending.ids:
            return
        store.append_events(pending.events, pending.acks)
        verdict = failpoints.hit("participant.before_reply", None, reactor)
        if verdict == "drop":
            return
        if verdict == "duplicate":
            store.append_events(pending.events, pending.acks)
        outbox.mark_relayed(pending.ids)
