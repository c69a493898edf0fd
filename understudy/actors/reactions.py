"""What a choreographed service's handlers are: the decorator that registers a reaction to a
topic, and the event a reaction gets.

Kept apart from the actor (:mod:`understudy.actors.reactor`), as
:mod:`understudy.actors.handlers` is from the participant: these are what users write against.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import attrs

#: A reaction: a reactor's method taking the event and the database connection (``db``: a
#: ``sqlite3`` or ``psycopg`` connection, inside the ledger's transaction).
F = TypeVar("F", bound=Callable[[Any, "EventContext", Any], Any])


def failure_topic(topic: str) -> str:
    """The failure event's topic of a reaction to ``topic`` that declares none."""
    return f"{topic}.failed"


@attrs.frozen
class EventContext:
    """What a reaction knows about the event it handles.

    ``data`` is what the publisher gave (for a failure event: ``reason``, ``reactor`` (who
    failed), ``topic``, ``event_id`` and ``data`` of the event whose reaction failed, and
    ``details``, what its ``Reject`` carried). ``correlation_id`` names the chain; every event
    the reaction publishes inherits it. ``attempt`` counts tries of this reaction in this
    process (1 for the first)."""

    event_id: str
    topic: str
    data: Any
    correlation_id: str
    causation_id: str | None
    source: str
    kind: str
    attempt: int
    seq: int


@attrs.frozen
class Reaction:
    """A registered reaction: the method's name on the reactor class, and the topic of the
    failure event it publishes when it refuses or keeps failing."""

    method: str
    on_failure: str


def reacts(topic: str, *, on_failure: str | None = None) -> Callable[[F], F]:
    """Register the decorated method as this reactor's reaction to events of ``topic``.

    It runs inside the reactor's ledger transaction, once per event (the idempotency key is
    the event id and the reactor's name), and may ``self.publish(topic, data)``: those events
    commit with its effects and its ledger row, or not at all. A reaction that raises
    :class:`~understudy.Reject`, or keeps raising past the reactor's ``retry`` policy,
    publishes instead a failure event on ``on_failure`` (default ``"<topic>.failed"``), for
    other services' compensating reactions.
    """
    if not isinstance(topic, str) or not topic:
        raise ValueError(f"@reacts needs a topic name, got {topic!r}")

    def mark(func: F) -> F:
        func.__understudy_reacts__ = (topic, on_failure or failure_topic(topic))  # type: ignore[attr-defined]
        return func

    return mark


def collect(cls: type, inherited: dict[str, Reaction]) -> dict[str, Reaction]:
    """The reactions of ``cls`` by topic: ``inherited`` overlaid with its own."""
    found = dict(inherited)
    for attr, value in vars(cls).items():
        marked = getattr(value, "__understudy_reacts__", None)
        if marked is not None:
            topic, on_failure = marked
            found[topic] = Reaction(attr, on_failure)
    return found
