"""Where a chaos run keeps its saga store: a SQLite file in the run's directory, or a fresh
database on a PostgreSQL server, created for the run and dropped after it passed.

A runner given ``store=None`` puts each run's store in ``RUN/sagas.db``; given a
``postgresql://`` URL (a role that may create databases), it creates a database of its own for
each run on that server (``CREATE DATABASE``, autocommit), drops it after a passing run and keeps
it after a failing one, named in the failure so that ``understudy show URL SAGA`` can read it.
Credentials are never shown: every location printed goes through
:func:`understudy.persistence.redact`.

Restarting the server (a runner-level fault of PostgreSQL runs) needs a callable that restarts
it and returns once it accepts connections again: :func:`command_restarter` makes one of a shell
command (``.ci/postgres restart DIR`` in understudy's own checkout, ``pg_ctl restart -m fast -D
DATA`` elsewhere).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, urlsplit

from understudy.errors import StoreError
from understudy.persistence import POSTGRES_SCHEMES, redact
from understudy.testing.schedule import POSTGRES, SQLITE

#: Where a replayed PostgreSQL schedule finds a server when its runner was given none.
URL_VARIABLE = "UNDERSTUDY_TEST_POSTGRES_URL"
RESTART_TIMEOUT = 120.0  # seconds a restart command may take


def kind_of(location: str | None) -> str:
    """``postgres`` for a PostgreSQL URL, ``sqlite`` for None (a file per run)."""
    if location is None:
        return SQLITE
    if location.startswith(POSTGRES_SCHEMES):
        return POSTGRES
    raise ValueError(
        f"a chaos store is None (a SQLite file in each run's directory) or a postgresql:// "
        f"URL of a server to create each run's database on, not {redact(location)!r}"
    )


def database_url(server_url: str, dbname: str) -> str:
    """``server_url`` with its database replaced by ``dbname`` (user, host, port, query kept)."""
    parts = urlsplit(server_url)
    return parts._replace(path="/" + quote(dbname, safe="")).geturl()


def database_name(label: str) -> str:
    """A fresh database name for a run called ``label`` (PostgreSQL allows 63 bytes)."""
    tidy = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")[:36]
    return f"understudy_chaos_{tidy}_{uuid.uuid4().hex[:8]}"


def create_database(server_url: str, label: str) -> str:
    """Create a fresh database for a run on the server of ``server_url``; its URL."""
    import psycopg  # the postgres extra: only runs on PostgreSQL need it
    from psycopg import sql

    name = database_name(label)
    try:
        with psycopg.connect(server_url, autocommit=True, connect_timeout=10) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        raise StoreError(
            f"cannot create the run's database {name} on {redact(server_url)}: "
            f"{type(exc).__name__} (the role needs CREATEDB)"
        ) from None
    return database_url(server_url, name)


def drop_database(server_url: str, location: str) -> None:
    """Drop a run's database, whoever is still connected to it (an orphaned actor process of
    the faulty runtime may be)."""
    import psycopg
    from psycopg import sql

    name = urlsplit(location).path.lstrip("/")
    with psycopg.connect(server_url, autocommit=True, connect_timeout=10) as admin:
        try:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        except psycopg.errors.SyntaxError:  # before PostgreSQL 13: end the sessions first
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                "AND pid <> pg_backend_pid()",
                (name,),
            )
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def server_for_replay(configured: str | None) -> str:
    """The server a replayed PostgreSQL schedule runs on: the runner's, or the environment's."""
    url = configured or os.environ.get(URL_VARIABLE)
    if not url:
        raise ValueError(
            f"the schedule ran on a {POSTGRES} store: give the runner a server "
            f"(store='postgresql://...', understudy chaos --store URL, pytest "
            f"--understudy-store URL) or set {URL_VARIABLE}"
        )
    kind_of(url)
    return url


def command_restarter(command: str) -> Callable[[], None]:
    """A ``restart_server`` callable that runs ``command`` (a shell-like string, split with
    :func:`shlex.split`, run without a shell) and fails when it fails."""
    argv = shlex.split(command)
    if not argv:
        raise ValueError("the restart command is empty")

    def restart() -> None:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=RESTART_TIMEOUT, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"restarting the database server with {command!r} failed "
                f"({result.returncode}): {result.stderr.strip()[-500:]}"
            )

    restart.__qualname__ = f"command_restarter({command!r})"
    return restart


def sqlite_location(directory: Path) -> str:
    return str(directory / "sagas.db")
