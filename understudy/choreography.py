"""Choreography's public names in one place, and starting a chain from plain code.

``from understudy.choreography import Reactor, reacts, Reject, EventContext, Chain`` is what a
choreographed service is written with (docs/choreography.md). :func:`publish` appends an event
straight to the store's event log (:meth:`understudy.Understudy.publish` calls it).

Reactors publish from inside their reactions, through their outbox
(:mod:`understudy.actors.reactor`); plain code has no transaction of its own to join, so its
event is durable once the store's commit returns, and every subscriber of its topic gets it
from the log. An ``event_id`` the caller chooses makes a retried publish idempotent: the store
appends each id once.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from understudy import codec
from understudy.actors.handlers import Reject
from understudy.actors.reactions import EventContext, failure_topic, reacts
from understudy.actors.reactor import Reactor
from understudy.chains import Chain, ChainEvent, Delivery, read_chain
from understudy.persistence.base import SagaStore, TopicEvent

__all__ = [
    "Chain",
    "ChainEvent",
    "Delivery",
    "EventContext",
    "Reactor",
    "Reject",
    "failure_topic",
    "publish",
    "reacts",
    "read_chain",
]


def publish(
    store: SagaStore,
    topic: str,
    data: Any = None,
    correlation_id: str | None = None,
    *,
    event_id: str | None = None,
) -> str:
    """Append an event on ``topic`` to ``store``'s log and return its chain's correlation id
    (``correlation_id``, or a new one). ``data`` must be msgpack-encodable (a
    :class:`~understudy.errors.PayloadError` names the field that is not)."""
    if not isinstance(topic, str) or not topic:
        raise ValueError(f"an event needs a topic name, got {topic!r}")
    if correlation_id is not None and (not isinstance(correlation_id, str) or not correlation_id):
        raise ValueError(f"a correlation id must be a non-empty string, got {correlation_id!r}")
    chain = correlation_id or uuid.uuid4().hex
    encoded = codec.encode(data, f"data of event {topic!r}")
    store.append_events(
        [TopicEvent(event_id or uuid.uuid4().hex, topic, chain, encoded, time.time())]
    )
    return chain
