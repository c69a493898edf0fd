"""The PostgreSQL test server itself: what the PostgreSQL store's tests take for granted."""

from __future__ import annotations

import psycopg
import pytest
from pg import PostgresServer, restart_server, terminate_backends

# Until conftest loads the plugin for the whole suite, this module loads it; a plugin is
# registered once, however many modules name it.
pytest_plugins = ["pg"]


def user_tables(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT tablename FROM pg_tables"
        " WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY tablename"
    )
    return [name for (name,) in rows]


def one(conn: psycopg.Connection, query: str) -> object:
    """The single value ``query`` returns."""
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


# Twice: were the database shared, the second run would find the first one's table.
@pytest.mark.parametrize("run", [1, 2])
def test_each_test_gets_a_fresh_empty_writable_database(
    postgres_server_url: str, postgres_url: str, run: int
) -> None:
    assert postgres_url != postgres_server_url
    with psycopg.connect(postgres_url) as conn:
        assert [] == user_tables(conn)
        conn.execute("CREATE TABLE leftover (run int)")
        conn.execute("INSERT INTO leftover VALUES (%s)", (run,))
    with psycopg.connect(postgres_url) as conn:
        assert [(run,)] == conn.execute("SELECT run FROM leftover").fetchall()


def test_the_server_is_durable_and_local(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        settings = {
            name: one(conn, f"SHOW {name}")
            for name in ("fsync", "listen_addresses", "max_connections")
        }
        superuser = one(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    assert superuser is True
    assert "on" == settings["fsync"]
    assert "127.0.0.1" == settings["listen_addresses"]
    assert int(str(settings["max_connections"])) >= 200


def test_terminate_backends_kills_every_other_connection(
    postgres_server_url: str, postgres_url: str
) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as victim:
        dbname = one(victim, "SELECT current_database()")
        # Through the database's own URL: the helper's connection is spared, the victim is not.
        assert 1 == terminate_backends(postgres_url, str(dbname))
        with pytest.raises(psycopg.OperationalError):
            victim.execute("SELECT 1")
    # Another database's connections are left alone, and the database itself still works.
    with psycopg.connect(postgres_server_url, autocommit=True) as bystander:
        assert 0 == terminate_backends(postgres_server_url, str(dbname))
        assert (1,) == bystander.execute("SELECT 1").fetchone()
    with psycopg.connect(postgres_url) as conn:
        assert (1,) == conn.execute("SELECT 1").fetchone()


def test_restart_server_brings_the_server_back(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    if not postgres_server.can_restart:
        pytest.skip("the server is not ours to restart: set UNDERSTUDY_TEST_POSTGRES_DIR")
    with psycopg.connect(postgres_url, autocommit=True) as before:
        before.execute("CREATE TABLE kept (x int)")
        before.execute("INSERT INTO kept VALUES (1)")
        started = before.execute("SELECT pg_postmaster_start_time()").fetchone()
        restart_server(postgres_server)
        with pytest.raises(psycopg.OperationalError):
            before.execute("SELECT 1")
    with psycopg.connect(postgres_url) as after:
        assert started != after.execute("SELECT pg_postmaster_start_time()").fetchone()
        assert [(1,)] == after.execute("SELECT x FROM kept").fetchall()
