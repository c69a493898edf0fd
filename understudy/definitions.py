"""Saga definitions: what a saga does, step by step, and how each step is undone.

A definition is plain data (names, not callables) so it can travel to every process of a
multi-process actor system and be compared across versions. It is validated when it is built:
a step without a compensation is rejected unless it is declared :class:`Irreversible`, with what to
do instead. The first irreversible step is the saga's pivot: a failure before it compensates, a
failure after it recovers forward (retries) and never compensates.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import attrs

from understudy.errors import DefinitionError

RecoveryPolicy = Literal["resume", "compensate"]


def _positive(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if value <= 0:
        raise DefinitionError(f"{attribute.name} must be greater than 0, got {value!r}")


def _not_negative(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if value < 0:
        raise DefinitionError(f"{attribute.name} must not be negative, got {value!r}")


@attrs.frozen
class RetryPolicy:
    """How often to try a step (or a compensation) and how long to wait between tries.

    ``attempts`` counts every try, the first included. The n-th retry waits
    ``backoff * multiplier ** (n - 1)`` seconds, capped at ``max_backoff``.
    """

    attempts: int = attrs.field(default=3, validator=_positive)
    backoff: float = attrs.field(default=0.05, validator=_not_negative)
    multiplier: float = attrs.field(default=2.0, validator=_positive)
    max_backoff: float = attrs.field(default=5.0, validator=_not_negative)

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
        return float(min(self.max_backoff, self.backoff * self.multiplier ** (retry - 1)))


@attrs.frozen
class Irreversible:
    """Marks a step that cannot be undone, and says what to do instead (recorded and reported)."""

    instead: str = attrs.field()

    @instead.validator
    def _check(self, attribute: attrs.Attribute, value: str) -> None:
        if not value or not value.strip():
            raise DefinitionError(
                "Irreversible(instead=...) must say what to do instead of compensating, "
                'for example Irreversible(instead="log and alert the payments team")'
            )


#: Compensations are retried longer than forward steps by default: giving up on one parks the saga.
DEFAULT_COMPENSATION_RETRY = RetryPolicy(attempts=5, backoff=0.05, max_backoff=2.0)


@attrs.frozen
class Step:
    """One step of a saga: ask ``participant`` to run ``action``; undo it with ``compensation``.

    ``timeout`` is how long to wait for the participant's reply before the attempt counts as
    failed (the request may still have been applied, so a timed-out step is compensated on abort).
    """

    name: str
    participant: str
    action: str
    compensation: str | None = None
    irreversible: Irreversible | None = None
    retry: RetryPolicy = RetryPolicy()
    compensation_retry: RetryPolicy = DEFAULT_COMPENSATION_RETRY
    timeout: float = attrs.field(default=5.0, validator=_positive)


def _to_steps(steps: Iterable[Step]) -> tuple[Step, ...]:
    return tuple(steps)


@attrs.frozen
class SagaDefinition:
    """A named, versioned, ordered list of steps.

    ``on_recovery`` says what a saga that was interrupted mid-forward does after a crash:
    ``"resume"`` (the default) goes on forward, ``"compensate"`` undoes what it started.
    A saga that was compensating always finishes compensating.
    """

    name: str
    version: int
    steps: tuple[Step, ...] = attrs.field(converter=_to_steps)
    on_recovery: RecoveryPolicy = "resume"

    def __attrs_post_init__(self) -> None:
        where = f"saga definition {self.name!r} v{self.version}"
        if not self.name:
            raise DefinitionError("a saga definition needs a non-empty name")
        if not self.steps:
            raise DefinitionError(f"{where} has no steps")
        if self.on_recovery not in ("resume", "compensate"):
            raise DefinitionError(
                f"{where}: on_recovery must be 'resume' or 'compensate', got {self.on_recovery!r}"
            )
        seen: set[str] = set()
        for step in self.steps:
            if not isinstance(step, Step):
                raise DefinitionError(f"{where}: {step!r} is not a Step")
            if step.name in seen:
                raise DefinitionError(f"{where}: step name {step.name!r} is used twice")
            seen.add(step.name)
            if not step.participant or not step.action:
                raise DefinitionError(
                    f"{where}, step {step.name!r}: participant and action must be non-empty"
                )
            if step.compensation is None and step.irreversible is None:
                raise DefinitionError(
                    f"{where}, step {step.name!r} has no compensation. Give it one "
                    "(compensation='name of the undo action') or declare it irreversible with "
                    "what to do instead (irreversible=Irreversible(instead='log and alert'))"
                )
            if step.compensation is not None and step.irreversible is not None:
                raise DefinitionError(
                    f"{where}, step {step.name!r} has both a compensation and Irreversible(); "
                    "choose one"
                )

    @property
    def key(self) -> tuple[str, int]:
        """The (name, version) pair a saga is pinned to."""
        return (self.name, self.version)

    @property
    def pivot(self) -> int | None:
        """Index of the first irreversible step, or None when every step can be compensated."""
        for index, step in enumerate(self.steps):
            if step.irreversible is not None:
                return index
        return None

    @property
    def participants(self) -> frozenset[str]:
        """Every participant name the definition sends to."""
        return frozenset(step.participant for step in self.steps)
