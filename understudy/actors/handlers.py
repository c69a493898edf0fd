"""What a participant's handlers are: the decorators that register them, the context each gets,
the refusal a handler raises and the value a handler returns to finish its step later.

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
#: ``StepContext.forward_outcome`` of a compensation whose forward request was deferred
#: (:class:`Later`) and was still waiting for its completion: the compensation cancelled its
#: handle, so a completion that comes now is refused. What the forward's handler wrote when it
#: deferred is there to undo.
FORWARD_CANCELLED = "cancelled"
#: ``StepContext.forward_outcome`` of a compensation whose deferred forward was completed with a
#: refusal (``understudy.reject``): its handler's writes from when it deferred are there to undo.
FORWARD_REJECTED = "rejected"
#: As :data:`FORWARD_REJECTED`, for a deferred forward completed as failed (``understudy.fail``).
FORWARD_FAILED = "failed"


class Reject(Exception):
    """Raise from a handler to refuse a request for a business reason (out of stock, card
    declined). The refusal is recorded under the key and the saga compensates.

    ``data``: what the refusal carries beside its reason, for the saga and its caller (a reason
    code, when to try again): ``Reject("card declined", data={"code": "card_declined"})``. It is
    recorded with the refusal (msgpack: None, bool, int, float, str, bytes, lists and dicts),
    replayed with it, and sent in the reply's ``data``."""

    def __init__(self, reason: str = "", data: Any = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        # Keeps ``data`` when pickled (a multi-process actor system pickles what it sends).
        return (type(self), (self.reason, self.data))


@attrs.frozen
class Later:
    """Return from a handler to finish its step later, from outside the actor system (a
    webhook, a person's approval, a long job): the participant records the request as
    deferred under ``step.handle``, together with what the handler wrote, and answers the saga
    only once someone calls ``understudy.complete``, ``reject`` or ``fail`` with that handle.
    See docs/deferred.md."""


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
    # For a compensation: the step failure that made the saga compensate, when one did
    # ({"step": name, "reason": text, "data": what its refusal carried}); None otherwise (a
    # saga cancelled by an operator, or recovering by compensation after a crash).
    failure: dict[str, Any] | None = None
    # Makes handles: how :attr:`handle` is computed, only when a handler asks (it costs a MAC).
    _handles: Callable[[str], str] | None = attrs.field(
        default=None, repr=False, eq=False, alias="handles"
    )

    @property
    def handle(self) -> str:
        """The durable handle of this request: what a handler that returns :class:`Later`
        hands out (in a row of its own, an email, a provider's callback URL) for
        ``understudy.complete`` and the others to finish the step with. The same request
        always gets the same handle (a retry, a run again after a crash); it names the
        participant and the key, and holds a MAC made with a secret kept in the participant's
        database, so it cannot be guessed from a saga id."""
        if self._handles is None:
            raise RuntimeError(
                "this StepContext was not made by a participant, so it has no handle"
            )
        return self._handles(self.key)


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
