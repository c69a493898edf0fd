"""What a participant's handlers are: the decorators that register them, the context each gets,
and the refusal a handler raises.

Kept apart from the actor (:mod:`understudy.actors.participant`) and the ledger
(:mod:`understudy.actors.ledger`): these are what users write against, the others are how
requests are served.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import attrs

#: A handler: a participant's method taking the request's context and the database connection
#: (``db``: a ``sqlite3`` or ``psycopg`` connection, None for an external handler). A type
#: checker refuses a decorated method of another shape.
F = TypeVar("F", bound=Callable[[Any, "StepContext", Any], Any])

#: ``StepContext.forward_outcome`` of a compensation whose forward request applied here.
FORWARD_APPLIED = "applied"
#: ``StepContext.forward_outcome`` of a compensation whose forward request was started but whose
#: outcome is not known (an external call that raised, or whose participant died meanwhile).
FORWARD_UNKNOWN = "unknown"


class Reject(Exception):
    """Raise from a handler to refuse a request for a business reason (out of stock, card
    declined). The refusal is recorded under the key and the saga compensates."""


@attrs.frozen
class StepContext:
    """What a handler knows about the request it serves."""

    saga_id: str
    step: str
    action: str
    kind: str
    key: str  # the idempotency key: pass it on to an external API that deduplicates by key
    attempt: int
    payload: dict[str, Any]
    results: dict[str, Any]  # forward results of earlier steps, by step name
    forward_result: Any = None  # for a compensation: what the forward action returned
    # For a compensation: "applied" (the forward returned ``forward_result``) or "unknown"
    # (an external forward that may or may not have taken effect; ``forward_result`` is None).
    forward_outcome: str | None = None
    # For a compensation: the key the forward request carried (what an external API knows the
    # forward's effect by, when its outcome is unknown here).
    forward_key: str | None = None


def action(name: str, *, external: bool = False) -> Callable[[F], F]:
    """Register the decorated method as the handler of forward action ``name``.

    ``external=True``: the effect lives outside the ledger's database (an HTTP API, say). The
    handler then runs in a worker thread, outside any transaction, with ``db=None``, after the
    ledger durably recorded the request as started; see :mod:`understudy.actors.participant`.
    """

    def mark(func: F) -> F:
        func.__understudy_action__ = name  # type: ignore[attr-defined]
        func.__understudy_external__ = external  # type: ignore[attr-defined]
        return func

    return mark


def compensation(name: str, *, external: bool = False) -> Callable[[F], F]:
    """Register the decorated method as the handler of compensation ``name`` (``external`` as
    for :func:`action`)."""

    def mark(func: F) -> F:
        func.__understudy_compensation__ = name  # type: ignore[attr-defined]
        func.__understudy_external__ = external  # type: ignore[attr-defined]
        return func

    return mark


@attrs.frozen
class Handler:
    """A registered handler: the method's name on the participant class, and its mode."""

    method: str
    external: bool = False


def collect(
    cls: type, actions: dict[str, Handler], compensations: dict[str, Handler]
) -> tuple[dict[str, Handler], dict[str, Handler]]:
    """The handlers of ``cls``: those inherited (``actions``, ``compensations``) overlaid with
    the ones ``cls`` itself defines."""
    actions, compensations = dict(actions), dict(compensations)
    for attr, value in vars(cls).items():
        external = bool(getattr(value, "__understudy_external__", False))
        if hasattr(value, "__understudy_action__"):
            actions[value.__understudy_action__] = Handler(attr, external)
        if hasattr(value, "__understudy_compensation__"):
            compensations[value.__understudy_compensation__] = Handler(attr, external)
    return actions, compensations
