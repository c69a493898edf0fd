"""Generic actor plumbing: messages every understudy actor that batches or stops cleanly uses.

Saga hosts, participants and the coordinator all speak these, so they live beside the actors
(importable top-level classes: the multi-process bases pickle them), not with the supervisors'
own protocol.
"""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen
class Flush:
    """An actor's reminder to itself to commit the batch it has gathered (saga hosts and
    participants group-commit this way)."""


@attrs.frozen
class Batch:
    """Several messages from one sender, handled in order (lets a client's starts share commits)."""

    messages: tuple[Any, ...]


def handle_batched(actor: Any, message: Any, sender: Any, direct: frozenset[type]) -> Any:
    """Handle one message of a :class:`Batch` as if it had come alone. A message whose type is
    in ``direct`` goes straight to the actor's ``receiveMsg_<Type>``, the method Thespian's type
    dispatch would pick (understudy's handlers never hand a message on to a base class): that
    dispatch walks the actor's classes with ``hasattr`` for every message, a few microseconds
    each, and a batch carries most of a busy system's messages."""
    kind = type(message)
    if kind in direct:
        return getattr(actor, "receiveMsg_" + kind.__name__)(message, sender)
    return actor.receiveMessage(message, sender)


@attrs.frozen
class CommandFiled:
    """A command was filed in the store for saga host ``shard`` (the children participant's
    unwinds): sent to the coordinator, which hands it to that host, so that it looks for
    commands now rather than at its next poll."""

    shard: int


@attrs.frozen
class Stop:
    """Sent before the actor system shuts down: children that exit now must not be restarted,
    and hosts release their store and shard marker (the in-process base never tells actors
    that the system is going away)."""


@attrs.frozen
class Stopped:
    """A host has released its store and shard marker (or a participant its database)."""

    shard: int
    participant: str | None = None
