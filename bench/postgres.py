"""PostgreSQL for the suite: the server, a fresh database per run, and PostgreSQL's own ceiling.

The server is the one given by ``--postgres URL`` or ``UNDERSTUDY_BENCH_POSTGRES_URL`` (a role
that may create and drop databases), or else a throwaway one the suite starts itself with
``.ci/postgres start`` in a temporary directory (fsync on, loopback only) and stops at the end.
Without either (no URL and no PostgreSQL server binaries on the machine) the PostgreSQL rows say
so and the rest of the suite runs.

Every run of every system gets a database of its own, created on the server just before the
run and dropped after it: no system ever sees another's tables, indexes or dead rows.

Run the ceiling by hand: ``python -m bench.postgres URL``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / ".ci" / "postgres"
URL_VARIABLE = "UNDERSTUDY_BENCH_POSTGRES_URL"
SCRIPT_TIMEOUT = 180.0

#: The ceiling's table: the same row shape and key as SQLite's (bench/floor.py).
SCHEMA = """
CREATE TABLE progress (
    saga_id BIGINT NOT NULL,
    step    TEXT   NOT NULL,
    status  TEXT   NOT NULL,
    result  TEXT,
    PRIMARY KEY (saga_id, step)
)
"""
INSERT = "INSERT INTO progress (saga_id, step, status, result) VALUES (%s, %s, %s, %s)"


def redacted(url: str) -> str:
    """``url`` without its user and password, for tables and logs."""
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2], query="").geturl()


def database_url(server_url: str, dbname: str) -> str:
    """``server_url`` with its database replaced by ``dbname``."""
    return urlsplit(server_url)._replace(path="/" + quote(dbname, safe="")).geturl()


class Server:
    """A PostgreSQL server the suite may create databases on."""

    def __init__(self, url: str, cluster_dir: Path | None = None) -> None:
        self.url = url
        self.cluster_dir = cluster_dir  # set when this suite started it (and must stop it)

    @property
    def started_here(self) -> bool:
        return self.cluster_dir is not None

    def postmaster_pid(self) -> int | None:
        """The server's postmaster, when it runs on this machine (to count its CPU): from the
        cluster's pid file when the suite started it, else the parent of a backend of ours
        when that is a local ``postgres`` process; None otherwise."""
        if self.cluster_dir is not None:
            try:
                return int((self.cluster_dir / "data" / "postmaster.pid").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                return None
        if urlsplit(self.url).hostname not in ("127.0.0.1", "localhost", "::1", None, ""):
            return None
        import psycopg

        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
            try:
                with open(f"/proc/{backend}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{parent}/comm") as comm:
                    return parent if comm.read().strip() == "postgres" else None
            except (OSError, ValueError, IndexError):
                return None

    def describe(self) -> dict[str, Any]:
        """What the figures ran on: the server's version and durability settings."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            settings = {
                name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
                for name in ("server_version", "fsync", "synchronous_commit", "wal_sync_method")
            }
        return {
            "url": redacted(self.url),
            "started_by_suite": self.started_here,
            **settings,
        }

    @contextmanager
    def database(self, label: str) -> Iterator[str]:
        """A database created for one run alone (its URL), dropped after it with its
        connections (``DROP DATABASE ... WITH (FORCE)``, PostgreSQL 13 and later)."""
        import psycopg
        from psycopg import sql

        dbname = f"bench_{label}_{uuid.uuid4().hex[:10]}"[:63]
        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        try:
            yield database_url(self.url, dbname)
        finally:
            with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as admin:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(dbname)
                    )
                )


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        check=False,
    )


def binaries() -> str | None:
    """Why the suite cannot start a server of its own; None when it can. Asks ``.ci/postgres
    bindir``, which never installs anything (``start`` would, as root on Debian)."""
    if not SCRIPT.exists():
        return f"{SCRIPT} is missing"
    found = _script("bindir")
    if found.returncode != 0:
        return (
            "no PostgreSQL server binaries on this machine (Debian: apt-get install "
            f"postgresql) and no server given (--postgres URL or {URL_VARIABLE})"
        )
    return None


@contextmanager
def server(url: str | None) -> Iterator[Server | str]:
    """The suite's server: ``url`` (or ``UNDERSTUDY_BENCH_POSTGRES_URL``) when given, else a
    throwaway one started here and stopped when the block ends. Yields the reason instead
    when there is none, so the caller can report it."""
    url = url or os.environ.get(URL_VARIABLE) or None
    if url:
        yield Server(url)
        return
    why = binaries()
    if why is not None:
        yield why
        return
    # Not under the suite's own temp root: as root the server runs as an unprivileged user,
    # who cannot enter a private (0700) directory. A fresh directory in /tmp is reachable.
    cluster_dir = Path(tempfile.mkdtemp(prefix="understudy-bench-pg-"))
    try:
        started = _script("start", str(cluster_dir))
        lines = started.stdout.strip().splitlines()
        if started.returncode != 0 or not lines:
            yield f".ci/postgres start failed ({started.returncode}): {started.stderr[-2000:]}"
            return
        print(f"  PostgreSQL server started for this run: {redacted(lines[-1])}", file=sys.stderr)
        yield Server(lines[-1], cluster_dir)
    finally:
        _script("stop", str(cluster_dir))
        shutil.rmtree(cluster_dir, ignore_errors=True)


# --- the ceiling ------------------------------------------------------------------------------


def ceiling(server: Server, seconds: float = 2.0) -> dict[str, Any]:
    """PostgreSQL's own limits through psycopg on a fresh database, with SQLite's ceiling row
    shape and key: single-row commits/s (BEGIN, INSERT, COMMIT, each commit waiting for its
    WAL flush), then rows/s at 100 rows per commit; ``commit_ms`` is the median single-row
    transaction. Refuses to measure a server whose fsync or synchronous_commit is off."""
    with server.database("ceiling") as url:
        return dict(_child(["ceiling", url, str(seconds)]))


def _ceiling(url: str, seconds: float) -> dict[str, Any]:
    import psycopg

    times: list[float] = []
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        for name in ("fsync", "synchronous_commit"):
            value = conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            if value != "on":
                raise RuntimeError(f"the server runs with {name} = {value}, not on")
        conn.execute(SCHEMA)
        saga_id = 0
        began = now = time.perf_counter()
        deadline = began + seconds
        while now < deadline:
            # A transaction as psycopg runs one for a careful writer: BEGIN, the insert, COMMIT.
            with conn.transaction():
                conn.execute(INSERT, (saga_id, "create_order", "done", '{"order_id": "o"}'))
            saga_id += 1
            then, now = now, time.perf_counter()
            times.append(now - then)
        single = len(times) / (now - began)

        rows = 0
        began = now = time.perf_counter()
        deadline = began + seconds
        while now < deadline:
            with conn.transaction(), conn.cursor() as cursor:
                cursor.executemany(
                    INSERT,
                    [
                        (saga_id + n, "create_order", "done", '{"order_id": "o"}')
                        for n in range(100)
                    ],
                )
            saga_id += 100
            rows += 100
            now = time.perf_counter()
        batched = rows / (now - began)
    times.sort()
    return {
        "single_row_commits_per_s": single,
        "rows_per_s_at_100_per_commit": batched,
        "commit_ms": times[len(times) // 2] * 1000,
    }


def _child(args: list[str], timeout: float = 300.0) -> Any:
    from bench.common import parse

    done = subprocess.run(
        [sys.executable, "-m", "bench.postgres", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"bench.postgres {args[0]} failed ({done.returncode}):\n{done.stderr[-4000:]}"
        )
    return parse(done.stdout)


def main(argv: list[str]) -> None:
    from bench.common import emit

    if argv and argv[0] == "ceiling":
        emit(_ceiling(argv[1], float(argv[2])))
        return
    with server(argv[0] if argv else None) as found:
        if isinstance(found, str):
            raise SystemExit(found)
        print(found.describe())
        print(ceiling(found))


if __name__ == "__main__":
    main(sys.argv[1:])
