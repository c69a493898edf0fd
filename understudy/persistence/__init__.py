"""Persistence: the saga store interface and its backends.

Only the backend modules import their database drivers; everything else talks to
:class:`~understudy.persistence.base.SagaStore`.
"""

from __future__ import annotations

import os

from understudy.persistence.base import SagaStore


def open_store(location: str | os.PathLike[str], **options: object) -> SagaStore:
    """Open the store at ``location``: a SQLite file path (or ``sqlite:///path``), or
    ``memory://`` for the in-memory store (tests and experiments only: it dies with the process)."""
    text = os.fspath(location)
    if text.startswith("memory://"):
        from understudy.persistence.memory import MemoryStore

        return MemoryStore()
    if text.startswith("sqlite:///"):
        text = text[len("sqlite:///") :]  # sqlite:///rel/path and sqlite:////abs/path
    from understudy.persistence.sqlite import SQLiteStore

    return SQLiteStore(text, **options)  # type: ignore[arg-type]


__all__ = ["SagaStore", "open_store"]
