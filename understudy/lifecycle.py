"""Lifecycle events: what a saga's timeline says, as notifications for whoever subscribed.

A saga's timeline (the events the store keeps) is the durable record. Some of its entries are
also sent, once committed, to subscribers (an app actor that sent :class:`Subscribe` to the
coordinator, or :meth:`understudy.Understudy.subscribe` in plain or asyncio code) as
:class:`SagaEvent` messages. They are notifications, not the record: a subscriber that is not
running when an event commits never gets it (read the timeline for that), and one that falls
behind loses the oldest of what it did not read. Delivery follows commit: an event is sent only
once the transition it belongs to is durable.

:data:`KINDS` are the lifecycle kinds and the timeline events they come from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import attrs

from understudy.persistence.base import Event

#: Lifecycle kind -> what it says. Each comes from one timeline event kind (see ``lifecycle_of``).
KINDS: Final[dict[str, str]] = {
    "started": "the saga's start is durable",
    "step-started": "a step's request is about to be sent (its intent is durable)",
    "step-done": "a step answered ok",
    "step-failed": "a step's attempt failed, was rejected or timed out",
    "compensating": "the saga aborted and compensates what ran, in reverse order",
    "compensation-started": "a compensation's request is about to be sent",
    "step-compensated": "a step's compensation answered ok",
    "completed": "every step is done",
    "compensated": "every step that may have run is compensated",
    "failed": "the saga is parked: a person must look at it",
    "debt": "a compensation is owed (it exhausted its retries, or was abandoned)",
    "debt-settled": "an owed compensation was settled by hand",
    "operator": "an operator's verb was applied",
}

_FROM_TIMELINE: Final[dict[str, str]] = {
    "started": "started",
    "intent": "step-started",
    "done": "step-done",
    "rejected": "step-failed",
    "timeout": "step-failed",
    "aborted": "compensating",
    "compensation-intent": "compensation-started",
    "completed": "completed",
    "debt": "debt",
    "debt-settled": "debt-settled",
    "operator": "operator",
}


def lifecycle_of(event: Event) -> str | None:
    """The lifecycle kind of a timeline event, or None for one that is not notified."""
    kind = event.kind
    if kind == "compensated":
        return "compensated" if event.step is None else "step-compensated"
    if kind == "failed":
        return "failed" if event.step is None else "step-failed"
    return _FROM_TIMELINE.get(kind)


def check_kinds(kinds: Sequence[str] | None) -> tuple[str, ...] | None:
    """``kinds`` as a tuple; :class:`ValueError` naming any that is not a lifecycle kind."""
    if kinds is None:
        return None
    if isinstance(kinds, str):
        kinds = (kinds,)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(
            f"unknown lifecycle event kind(s) {', '.join(map(repr, unknown))}; the kinds are "
            f"{', '.join(KINDS)}"
        )
    return tuple(kinds)


@attrs.frozen
class Subscribe:
    """Ask the coordinator for sagas' lifecycle events, sent to the sender as
    :class:`SagaEvent` messages until :class:`Unsubscribe`: every saga's, one definition's
    (``definition``) or one saga's (``saga_id``), of every kind or of ``kinds``. The reply,
    :class:`Subscribed`, comes once every saga host sends them: events committed after it are
    delivered."""

    definition: str | None = None
    saga_id: str | None = None
    kinds: tuple[str, ...] | None = None
    subscription_id: str = ""  # echoed in Subscribed and in every SagaEvent; "" picks one

    def matches(self, saga_id: str, definition: str, kind: str) -> bool:
        return (
            (self.saga_id is None or self.saga_id == saga_id)
            and (self.definition is None or self.definition == definition)
            and (self.kinds is None or kind in self.kinds)
        )


@attrs.frozen
class Subscribed:
    """The subscription is in place (or ``error`` says why it is not)."""

    subscription_id: str
    error: str | None = None


@attrs.frozen
class Unsubscribe:
    """End a subscription: no more events are sent for it."""

    subscription_id: str


@attrs.frozen
class SagaEvent:
    """One lifecycle event of a saga (see :data:`KINDS`), as committed to its timeline.

    ``step`` and ``step_name`` name the step it is about (None for the saga as a whole),
    ``attempt`` its attempt, ``at`` when it happened (the saga host's wall clock), ``detail``
    the timeline event's detail (reasons, results are not included)."""

    saga_id: str
    definition: str
    version: int
    kind: str
    at: float
    step: int | None = None
    step_name: str | None = None
    attempt: int | None = None
    detail: dict[str, Any] = attrs.field(factory=dict)
    subscription_id: str = ""
