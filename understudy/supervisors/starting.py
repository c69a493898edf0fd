"""What a start of understudy takes before any of its actors runs, wherever it starts from: the
runtime in the application's thread (:meth:`understudy.Understudy.start`), or a coordinator an
application's actor created and sent :class:`~understudy.supervisors.protocol.StartCoordinator`.

Both refuse what cannot work before anything is taken, then fix the store's shard count and take
every shard's lease for the runtime (refused with ``StoreInUse`` when another live runtime holds
one), so that the saga hosts find their shards theirs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from understudy.actors.children import STORE_OPTION, STORE_OPTIONS, Children
from understudy.actors.system import class_path
from understudy.definitions import CHILDREN, SagaDefinition, has_children
from understudy.errors import DefinitionError, StoreError, UnderstudyError
from understudy.messages import AddParticipant
from understudy.persistence import open_store
from understudy.persistence.base import Lease
from understudy.supervisors.leases import about_me, claim_shards, give_back
from understudy.supervisors.protocol import StoreConfig

#: How long a busy saga host on a multi-process base lets a batch gather before it commits
#: (see :mod:`understudy.actors.batching`).
FLUSH_WINDOW = 0.01


def refuse_memory(store: StoreConfig) -> None:
    if store.location.startswith("memory://"):
        raise StoreError(
            "memory:// cannot back a runtime: the in-memory store lives in one process, and "
            "the coordinator, saga hosts and status queries each open the store; use a "
            "SQLite file (a temporary one for tests) or a PostgreSQL URL"
        )


def with_children_participant(
    participants: list[tuple[str, Any, dict[str, Any]]],
    definitions: Iterable[SagaDefinition],
    store: StoreConfig,
) -> list[tuple[str, Any, dict[str, Any]]]:
    """``participants`` and, when a definition has a child step (``Step.child``), the
    participant that runs child sagas, told where the store is. The name is understudy's: an
    application's participant under it is refused, unless it is a subclass of
    :class:`~understudy.actors.children.Children` (the crash harness's broken ones are)."""
    options = {STORE_OPTION: store.location, STORE_OPTIONS: dict(store.options)}
    given = [p for p in participants if p[0] == CHILDREN]
    for _name, cls, _options in given:
        if not (isinstance(cls, type) and issubclass(cls, Children)):
            raise DefinitionError(
                f"participant name {CHILDREN!r} is understudy's own (it runs child sagas, "
                "Step.child); give the participant another name"
            )
    if given:
        return [
            (n, c, {**o, **options}) if n == CHILDREN else (n, c, o) for n, c, o in participants
        ]
    if not has_children(definitions):
        return participants
    return [*participants, (CHILDREN, "understudy.actors.children.Children", options)]


def participant_specs(
    participants: Iterable[tuple[str, type | str, dict[str, Any]]], in_process: bool
) -> tuple[AddParticipant, ...]:
    """The participants to create, each by import path: a class the actors could not load by
    it is refused here (see :func:`~understudy.actors.system.class_path`)."""
    return tuple(
        AddParticipant(
            name, cls if isinstance(cls, str) else class_path(cls, in_process), dict(options)
        )
        for name, cls, options in participants
    )


def take_shards(
    store: StoreConfig,
    hosts: int | None,
    multiprocess: bool,
    runtime: str,
    ttl: float,
    app: tuple[int, str | None] | None,
) -> tuple[int, dict[int, Lease]]:
    """Fix the store's shard count (by default the store's, or for a new store 1 in-process and
    the CPU count on multi-process bases) and take every shard for ``runtime`` for ``ttl``
    seconds: the shard count and the leases."""
    with open_store(store.location, **store.options) as opened:
        fixed = len(opened.leases())
        if hosts is None:
            hosts = fixed or ((os.cpu_count() or 2) if multiprocess else 1)
        opened.fix_shards(hosts)
        return hosts, claim_shards(opened, store.location, runtime, ttl, about_me(app))


def give_back_shards(store: StoreConfig, leases: dict[int, Any]) -> None:
    """Free the shards a failed start took, so that the next start need not wait them out."""
    try:
        with open_store(store.location, **store.options) as opened:
            give_back(opened, leases)
    except UnderstudyError:
        pass  # the leases expire on their own
