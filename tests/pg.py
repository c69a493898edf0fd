"""PostgreSQL for the tests: a real server, a fresh database per test, and the server's faults.

A pytest plugin (listed in conftest's ``pytest_plugins``). The server is the one named by
``UNDERSTUDY_TEST_POSTGRES_URL`` when that is set (``.ci/run`` starts one with ``.ci/postgres``
and sets it, and ``UNDERSTUDY_TEST_POSTGRES_DIR`` to its cluster directory); otherwise the session
starts a throwaway one itself with ``.ci/postgres`` when the PostgreSQL server binaries are
installed, and stops it at the end. Without either, every test that asks for PostgreSQL fails and
says how to fix it: the PostgreSQL store is never passed by being skipped.

Fixtures:

- ``postgres_server`` (session): a :class:`PostgresServer`, the server's URL and, when known, its
  cluster directory;
- ``postgres_server_url`` (session): the server's URL (a superuser that may create databases and
  terminate backends);
- ``postgres_url`` (function): the URL of a database created for this test alone, dropped after
  it, so no test sees another's tables.

Faults: :func:`terminate_backends` (every other connection to a database is killed) and
:func:`restart_server` (a fast shutdown and a start of the whole server).

PYTEST_DONT_REWRITE: test modules import this module as well as load it as a plugin, and pytest
warns (an error here) when a module it would rewrite was imported first; it has no asserts.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

import attrs
import pytest

if TYPE_CHECKING:
    import psycopg

URL_VARIABLE = "UNDERSTUDY_TEST_POSTGRES_URL"
DIR_VARIABLE = "UNDERSTUDY_TEST_POSTGRES_DIR"
SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "postgres"
# initdb and a first start take a few seconds; a minute more covers a slow, busy CI machine.
SCRIPT_TIMEOUT = 120.0

HOW_TO_FIX = (
    f"The PostgreSQL tests need a PostgreSQL server. Either install the server (Debian: "
    f"apt-get install postgresql) and the tests start a throwaway one themselves with "
    f".ci/postgres, or set {URL_VARIABLE} to a server's URL, e.g. "
    f"postgresql://understudy@127.0.0.1:5432/understudy, for a superuser that may create "
    f"databases (and set {DIR_VARIABLE} to the directory `.ci/postgres start DIR` was given, so "
    f"that tests may restart it)."
)


@attrs.frozen
class PostgresServer:
    """A PostgreSQL server the tests may use.

    ``url`` connects as a superuser to a database that is not any test's own. ``cluster_dir`` is
    the directory ``.ci/postgres start`` was given (the data directory is ``data`` inside it), or
    None when the server is not one of ours, and then it cannot be restarted.
    """

    url: str
    cluster_dir: Path | None = None

    @property
    def data_dir(self) -> Path | None:
        return None if self.cluster_dir is None else self.cluster_dir / "data"

    @property
    def can_restart(self) -> bool:
        return self.cluster_dir is not None


def _script(*args: str | Path) -> str:
    """Runs ``.ci/postgres`` and returns the last line it printed; fails the test when it fails."""
    command = [str(SCRIPT), *map(str, args)]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"{' '.join(command)} took more than {SCRIPT_TIMEOUT:.0f} s:\n{error.stderr}")
    if result.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr}")
    lines = result.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def server_binaries_found() -> bool:
    """Whether this machine has the PostgreSQL server binaries ``.ci/postgres`` would use (asked
    of the script itself, so both agree; it installs nothing when asked this)."""
    result = subprocess.run(
        [str(SCRIPT), "bindir"], capture_output=True, text=True, timeout=30, check=False
    )
    return result.returncode == 0


def database_url(server_url: str, dbname: str) -> str:
    """``server_url`` with its database replaced by ``dbname`` (user, host, port and query kept)."""
    parts = urlsplit(server_url)
    if parts.scheme not in ("postgresql", "postgres"):
        pytest.fail(f"not a postgresql:// URL: {server_url!r}. {HOW_TO_FIX}")
    return parts._replace(path="/" + quote(dbname, safe="")).geturl()


def _connect(url: str) -> psycopg.Connection:
    """An autocommit connection (CREATE and DROP DATABASE refuse to run inside a transaction)."""
    import psycopg  # here, not at the top: a missing psycopg fails only the PostgreSQL tests

    return psycopg.connect(url, autocommit=True, connect_timeout=10)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server: CI's, or a throwaway one started here and stopped after
    the session; fails (never skips) when there is neither."""
    url = os.environ.get(URL_VARIABLE)
    if url:
        cluster_dir = os.environ.get(DIR_VARIABLE)
        yield PostgresServer(url, Path(cluster_dir) if cluster_dir else None)
        return
    if not server_binaries_found():
        pytest.fail(HOW_TO_FIX, pytrace=False)
    # Not pytest's tmp_path: as root the server runs as an unprivileged user, who cannot enter
    # pytest's private /tmp/pytest-of-root. A fresh directory under the temp root is reachable.
    cluster_dir = Path(tempfile.mkdtemp(prefix="understudy-pg-"))
    try:
        url = _script("start", cluster_dir)
        yield PostgresServer(url, cluster_dir)
    finally:
        _script("stop", cluster_dir)
        shutil.rmtree(cluster_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server_url(postgres_server: PostgresServer) -> str:
    """The session's PostgreSQL server's URL (see ``postgres_server``)."""
    return postgres_server.url


@pytest.fixture
def postgres_url(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of an empty database created for this test alone, dropped (its connections
    terminated) after the test."""
    # The test's name in the database's, to tell whose connections are whose in pg_stat_activity;
    # the random part keeps reruns and parametrized tests apart (63 bytes at most).
    label = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:40]
    dbname = f"ut_{label}_{uuid.uuid4().hex[:12]}"
    from psycopg import sql

    with _connect(postgres_server.url) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    try:
        yield database_url(postgres_server.url, dbname)
    finally:
        with _connect(postgres_server.url) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
            )


def terminate_backends(server_url: str, dbname: str, timeout: float = 10.0) -> int:
    """Terminates every client connection to ``dbname`` open when called (other than the one
    this makes, through ``server_url``), waits until they are gone, and returns how many there
    were. A terminated connection's next use raises ``psycopg.OperationalError``."""
    with _connect(server_url) as admin:
        pids = [
            pid
            for (pid,) in admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s"
                " AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
                (dbname,),
            )
        ]
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        # pg_terminate_backend only signals; a test's next step must not race the backend's exit.
        deadline = time.monotonic() + timeout
        while True:
            row = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
            ).fetchone()
            if row is None or row[0] == 0:
                return len(pids)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{row[0]} backends of {dbname} still alive after {timeout} s")
            time.sleep(0.01)


def restart_server(server: PostgresServer) -> None:
    """Restarts the whole server with a fast shutdown (every connection dropped, open
    transactions rolled back, committed data kept) and returns once it accepts connections again
    on the same URL. Raises RuntimeError when the server is not one of ours (no cluster_dir)."""
    if server.cluster_dir is None:
        raise RuntimeError(
            f"cannot restart {server.url}: not started by .ci/postgres here; set {DIR_VARIABLE}"
            " to its cluster directory"
        )
    _script("restart", server.cluster_dir)
