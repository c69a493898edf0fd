"""Persistence: the saga store interface and its backends.

Only the backend modules import their database drivers; everything else talks to
:class:`~understudy.persistence.base.SagaStore`.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, unquote, urlsplit

from understudy.persistence.base import SagaStore

#: URL schemes of the PostgreSQL store (libpq accepts both).
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def redact(location: str | os.PathLike[str]) -> str:
    """``location`` as it may be shown to anyone (errors, logs, reprs): a PostgreSQL URL keeps
    its scheme, host(s), port(s) and database, plus the ``host``/``port`` query parameters (a
    unix socket directory), and never the user, the password or any other query parameter
    (``password=``, ``sslpassword=``, ...); any other location (a file path) as it is.

    Needs no database driver, so messages about any store can use it."""
    text = os.fspath(location)
    if not text.startswith(POSTGRES_SCHEMES):
        return text
    try:
        parts = urlsplit(text)
        netloc = parts.netloc.rpartition("@")[2]  # whatever precedes '@' is user[:password]
        kept = [(k, v) for k, v in parse_qsl(parts.query) if k in ("host", "hostaddr", "port")]
    except ValueError:
        return f"{text.partition('://')[0]}://(an unreadable URL)"
    query = "&".join(f"{k}={v}" for k, v in kept)
    return f"{parts.scheme}://{netloc}{unquote(parts.path) or '/'}" + (f"?{query}" if query else "")


def secrets_in(url: str) -> tuple[str, ...]:
    """Every password a connection to ``url`` may use (the URL's user info and query, and
    ``PGPASSWORD``), longest first: what to scrub from a driver's text before quoting it."""
    found: list[str] = []
    try:
        parts = urlsplit(url)
        if parts.password:
            found += [parts.password, unquote(parts.password)]
        found += [v for k, v in parse_qsl(parts.query) if k in ("password", "sslpassword") and v]
    except ValueError:
        pass
    if os.environ.get("PGPASSWORD"):
        found.append(os.environ["PGPASSWORD"])
    # A secret of a character or two would blank out half a message; libpq never quotes one.
    return tuple(sorted({s for s in found if len(s) >= 3}, key=len, reverse=True))


def open_store(location: str | os.PathLike[str], **options: object) -> SagaStore:
    """Open the store at ``location``: a SQLite file path (or ``sqlite:///path``), a PostgreSQL
    URL (``postgresql://user@host:port/db`` or ``postgres://...``; needs the ``postgres``
    extra, psycopg 3), or ``memory://`` for the in-memory store (tests and experiments only: it
    dies with the process).

    ``options`` are the backend's own: SQLite takes ``synchronous``, ``busy_timeout`` and
    ``read_only``; PostgreSQL takes ``read_only``, ``connect_timeout``, ``statement_timeout``
    and ``allow_async_commit``, and refuses any other option by name."""
    text = os.fspath(location)
    if text.startswith("memory://"):
        from understudy.persistence.memory import MemoryStore

        return MemoryStore()
    if text.startswith(POSTGRES_SCHEMES):
        # Imported here: SQLite users never need psycopg installed.
        from understudy.persistence.postgres import open_postgres

        return open_postgres(text, options)
    if text.startswith("sqlite:///"):
        text = text[len("sqlite:///") :]  # sqlite:///rel/path and sqlite:////abs/path
    from understudy.persistence.sqlite import SQLiteStore

    return SQLiteStore(text, **options)  # type: ignore[arg-type]


__all__ = ["POSTGRES_SCHEMES", "SagaStore", "open_store", "redact", "secrets_in"]
