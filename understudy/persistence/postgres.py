"""The PostgreSQL saga store: one database server shared by saga hosts on many machines.

Opened with ``open_store("postgresql://user@host:port/db", **options)`` (``postgres://`` too).
Same tables, same bytes and same checksums as the SQLite store (:mod:`.rows` and
:mod:`.integrity` are shared), same rules (:mod:`.base`).

Why psycopg 3 (the ``postgres`` extra, ``psycopg[binary]>=3.1``):

- it is synchronous, like Thespian actor handlers, which cannot await; asyncpg is asyncio-only,
  so every store call would need an event loop run inside the actor (or a thread to hold one),
  which is slower and another thing to get wrong;
- binary wheels bundle libpq: ``pip install`` needs no compiler and no system libpq;
- pipeline mode (statements queued and answered together) and batching (``executemany``, and
  Python lists sent as binary arrays): a whole group commit (the fence, every saga's insert or
  fenced update, the events, the COMMIT) is a handful of statements in two round trips, however
  many sagas it carries, which is what the hot path needs (psycopg2 has no pipeline mode and is
  in maintenance);
- it connects through libpq, so libpq's environment works as it does for ``psql``: PGPASSWORD,
  ``~/.pgpass``, PGSERVICE, PGSSLMODE and friends. A URL without a password is the one to use:
  the store's location travels to every saga host process inside setup messages.

Credentials never appear in an error message, a log line or a repr: everything names the
server by :func:`understudy.persistence.redact` (scheme, host, port, database; no user, password
or query), and driver text is scrubbed of the password before it is quoted.

Transactions are READ COMMITTED, one connection per store instance, every operation one
explicit transaction: the store sends BEGIN and COMMIT itself, inside the pipeline. (psycopg's
own implicit BEGIN, its "autocommit off" mode, waits for the BEGIN's answer before the first
statement: a round trip more for every transaction. So psycopg's autocommit flag is on, and no
statement of the store runs outside a BEGIN ... COMMIT it wrote.) A batch costs two round trips
(BEGIN, fence and the sagas' statements; then the events and COMMIT), a query or a blame one.

Fencing holds under READ COMMITTED because every write under a lease begins by locking its
shard's row (an UPDATE of the row, fenced by epoch), and :meth:`PostgresStore.acquire` locks the
same row (SELECT ... FOR UPDATE) before it bumps the epoch: the two serialise on that row lock,
so no acquire can commit between a batch's fence and its COMMIT, and a batch that waited for an
acquire sees the new epoch when the lock is granted (PostgreSQL re-evaluates an UPDATE's WHERE on
the newest row version) and applies nothing.
"""

from __future__ import annotations

import random
import select
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any, Final, TypeVar

import attrs
import psycopg
from psycopg.pq import ConnStatus, TransactionStatus
from psycopg.rows import TupleRow
from psycopg.types.numeric import Int8BinaryDumper

from understudy import failpoints
from understudy.errors import CorruptRecord, LeaseLost, StoreError, StoreUnavailable
from understudy.persistence import integrity, pg_arrays, redact, secrets_in
from understudy.persistence.base import (
    ACTIVE_STATUSES,
    PENDING,
    RUNNING,
    TERMINAL_STATUSES,
    CommandDone,
    CommandRecord,
    EventRecord,
    Lease,
    NewSaga,
    Note,
    OperatorCommand,
    SagaRecord,
    SagaStore,
    Transition,
    Write,
    batch_sagas,
)
from understudy.persistence.pg_arrays import (
    ByteaArray,
    Float8Array,
    Int8Array,
    PackedArray,
    TextArray,
    columns,
)
from understudy.persistence.postgres_eventlog import PostgresEventLog
from understudy.persistence.rows import (
    COMMAND_COLUMNS,
    COMMAND_INSERT_COLUMNS,
    EVENT_COLUMNS,
    EVENT_INSERT_COLUMNS,
    FENCES,
    SAGA_COLUMNS,
    check_done,
    chunks,
    claimed_event_rows,
    command_query,
    command_record,
    command_row,
    event_record,
    event_rows,
    fenced_statuses,
    pack_about,
    pack_blame,
    saga_record,
    saga_sums,
    shard_count_mismatch,
    sql_list,
    submitted,
    unpack_about,
    unpack_blame,
)

SCHEMA_VERSION: Final = 2
#: The PostgreSQL versions the statements need (identity columns: 10).
MIN_SERVER_VERSION: Final = 100000
#: Seconds a write session may sit idle inside a transaction before the server ends it.
IDLE_IN_TRANSACTION_TIMEOUT = 30

#: The options :func:`open_postgres` takes, with what each is.
OPTIONS: Final = {
    "read_only": "queries only: never creates the schema, every transaction read-only",
    "connect_timeout": "seconds to wait for the server when (re)connecting (default 10)",
    "statement_timeout": "seconds a statement may run, lock waits included (default: the server's)",
    "allow_async_commit": "accept a server or database whose synchronous_commit is off (commits "
    "may then be lost in a server crash after they returned)",
}

Connection = psycopg.Connection[TupleRow]
T = TypeVar("T")

# Serialises schema creation across processes: CREATE TABLE IF NOT EXISTS run by two
# transactions at once can still fail on the unique index of pg_type (both insert the table's row
# type). The key is "undrstdy" in ASCII; advisory locks are per database, so stores in other
# databases of the same server never wait for each other.
_SCHEMA_LOCK: Final = int.from_bytes(b"undrstdy", "big")

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS understudy_meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    # fillfactor: every step of a saga rewrites its row; room left on each page lets PostgreSQL
    # update in place (a HOT update, no index touched) instead of moving the row.
    """CREATE TABLE IF NOT EXISTS understudy_sagas (
        saga_id TEXT PRIMARY KEY,
        definition TEXT NOT NULL,
        version BIGINT NOT NULL,
        status TEXT NOT NULL,
        payload BYTEA NOT NULL,
        snapshot BYTEA,
        snapshot_version BIGINT NOT NULL DEFAULT 0,
        incarnation BIGINT NOT NULL DEFAULT 1,
        recovery_attempts BIGINT NOT NULL DEFAULT 0,
        reason TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        payload_sum BIGINT,
        snapshot_sum BIGINT
    ) WITH (fillfactor = 80)""",
    """CREATE INDEX IF NOT EXISTS understudy_sagas_active
        ON understudy_sagas (created_at) WHERE status IN ('running', 'compensating')""",
    "CREATE INDEX IF NOT EXISTS understudy_sagas_status ON understudy_sagas (status, created_at)",
    """CREATE TABLE IF NOT EXISTS understudy_events (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        saga_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        step BIGINT,
        attempt BIGINT,
        incarnation BIGINT NOT NULL,
        detail BYTEA,
        detail_sum BIGINT
    )""",
    "CREATE INDEX IF NOT EXISTS understudy_events_saga ON understudy_events (saga_id, seq)",
    """CREATE TABLE IF NOT EXISTS understudy_shards (
        shard INTEGER PRIMARY KEY,
        holder TEXT NOT NULL DEFAULT '',
        epoch BIGINT NOT NULL DEFAULT 0,
        expires_at DOUBLE PRECISION NOT NULL DEFAULT 0,
        about BYTEA,
        blame BYTEA
    )""",
)
# Added after schema 2 was out: opening an older store for writing runs these alone (see
# _set_up), which lock no table a running saga host writes. The pending index is all a saga
# host's poll of its shard reads.
_COMMANDS_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS understudy_commands (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        saga_id TEXT NOT NULL,
        shard INTEGER NOT NULL,
        verb TEXT NOT NULL,
        args BYTEA NOT NULL,
        who TEXT NOT NULL,
        why TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        command_sum BIGINT,
        state TEXT NOT NULL,
        outcome TEXT,
        done_at DOUBLE PRECISION
    )""",
    """CREATE INDEX IF NOT EXISTS understudy_commands_pending
        ON understudy_commands (shard, id) WHERE state = 'pending'""",
    "CREATE INDEX IF NOT EXISTS understudy_commands_saga ON understudy_commands (saga_id, id)",
)

# Explicit, so that a database whose default isolation is another keeps these rules.
_BEGIN = "BEGIN ISOLATION LEVEL READ COMMITTED"
_BEGIN_READ = "BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY"
_TERMINAL_SQL = sql_list(TERMINAL_STATUSES)
_ACTIVE_SQL = sql_list(ACTIVE_STATUSES)
# The database's clock, never a node's: every lease is compared against this one clock.
_DB_NOW = "extract(epoch FROM clock_timestamp())::float8"
# A batch's statements take their rows as arrays, one per column (unnest turns them back into
# rows): a batch is then a handful of statements whatever its size, not one per saga and one per
# event, and each statement's text never changes, so it is prepared once per connection. The
# arrays travel in binary (%b), packed by pg_arrays: dumping them as text (escaping every bytea)
# cost four times more, and psycopg's own binary dumping a few hundred microseconds a batch.
_INSERT_SAGAS = (
    "INSERT INTO understudy_sagas (saga_id, definition, version, status, payload, "
    "snapshot_version, incarnation, created_at, updated_at, payload_sum, snapshot_sum) "
    "SELECT w.saga_id, w.definition, w.version, 'running', w.payload, 0, 1, w.at, w.at, "
    "w.payload_sum, w.snapshot_sum FROM unnest(%b::text[], %b::text[], %b::bigint[], "
    "%b::bytea[], %b::float8[], %b::bigint[], %b::bigint[]) "
    "AS w(saga_id, definition, version, payload, at, payload_sum, snapshot_sum) "
    "ON CONFLICT (saga_id) DO NOTHING RETURNING saga_id"
)
# Fenced exactly as SQLite's: the writer's incarnation, not terminal, an older snapshot.
_TRANSITION = (
    "UPDATE understudy_sagas AS s SET status = w.status, snapshot = w.snapshot, "
    "snapshot_version = w.snapshot_version, recovery_attempts = w.recovery_attempts, "
    "reason = w.reason, updated_at = w.at, snapshot_sum = w.snapshot_sum "
    "FROM unnest(%b::text[], %b::bigint[], %b::text[], %b::bytea[], %b::bigint[], "
    "%b::bigint[], %b::text[], %b::float8[], %b::bigint[]) AS w(saga_id, incarnation, status, "
    "snapshot, snapshot_version, recovery_attempts, reason, at, snapshot_sum) "
    "WHERE s.saga_id = w.saga_id AND s.incarnation = w.incarnation "
    "AND s.status NOT IN {} AND s.snapshot_version < w.snapshot_version "
    "RETURNING s.saga_id"
)
# One statement per fence (fenced_statuses): those with reopen (a saga parked as failed taken up
# again) and unwind (a completed child saga compensated) are sent only in a batch that has one,
# so the common one keeps its columns and its plan.
_TRANSITIONS = {fence: _TRANSITION.format(sql_list(fence)) for fence in FENCES}
# Commands done, fenced as SQLite's: still pending, and the saga's row at the writer's
# incarnation (NULL: whatever the row, or none). The row's incarnation comes back for the
# events (NULL without a row: no events). A later layer of the batch than the saga's other
# writes (see _plan), so it sees them. Both fences hold under READ COMMITTED: a second
# transaction marking the same command waits for the first's row lock, then finds it no longer
# pending (an UPDATE re-checks its WHERE on the newest row version); and the saga's row is read
# FOR SHARE, so a claim in flight is waited for and its new incarnation seen (a plain join would
# read the incarnation as of the statement's start).
_COMMANDS_DONE = (
    "UPDATE understudy_commands AS c SET state = w.state, outcome = w.outcome, done_at = w.at "
    "FROM unnest(%b::bigint[], %b::text[], %b::bigint[], %b::text[], %b::text[], "
    "%b::float8[]) AS w(id, saga_id, incarnation, state, outcome, at) "
    "LEFT JOIN LATERAL (SELECT incarnation FROM understudy_sagas "
    "WHERE saga_id = w.saga_id FOR SHARE) AS s ON true "
    f"WHERE c.id = w.id AND c.saga_id = w.saga_id AND c.state = '{PENDING}' "
    "AND (w.incarnation IS NULL OR s.incarnation = w.incarnation) "
    "RETURNING c.saga_id, s.incarnation"
)
_INSERT_COMMAND = (
    f"INSERT INTO understudy_commands ({COMMAND_INSERT_COLUMNS}) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id"
)
# Rows come out of unnest in array order, so seq numbers them in the order they were written.
_INSERT_EVENTS = (
    f"INSERT INTO understudy_events ({EVENT_INSERT_COLUMNS}) SELECT * FROM unnest(%b::text[], "
    "%b::text[], %b::float8[], %b::bigint[], %b::bigint[], %b::bigint[], %b::bytea[], "
    "%b::bigint[])"
)
# The fence of a batch: locks the shard's row until COMMIT (see the module docstring) and clears
# the shard's blame in the same commit as the batch it was about.
_FENCE = "UPDATE understudy_shards SET blame = %s WHERE shard = %s AND epoch = %s"
_NOBODY = pack_blame(())
_BLAME = "UPDATE understudy_shards SET blame = %s WHERE shard = %s AND epoch = %s"

# Errors after which the transaction is known to be rolled back and may simply run again.
_RETRY_STATES: Final = frozenset({"40001", "40P01"})  # serialization failure, deadlock
# The server went away or is not there yet: admin shutdown (pg_terminate_backend, a fast
# shutdown), crash shutdown, cannot connect now (starting or stopping); class 08 is the rest.
_GONE_STATES: Final = frozenset({"57P01", "57P02", "57P03"})
_CORRUPT_STATES: Final = frozenset({"XX001", "XX002"})  # data corrupted, index corrupted
_ATTEMPTS: Final = 4  # tries of one transaction that keeps meeting serialization failures


def open_postgres(url: str, options: Mapping[str, object]) -> PostgresStore:
    """A :class:`PostgresStore` for ``open_store``: unknown options are refused by name, with
    the ones this backend takes (SQLite's ``synchronous`` and ``busy_timeout`` are not
    silently ignored: a reader of the configuration would believe they apply)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        sqlite_only = [name for name in unknown if name in ("synchronous", "busy_timeout")]
        hint = (
            f" ({', '.join(sqlite_only)}: SQLite only; PostgreSQL commits with the server's "
            "synchronous_commit, which must be on, and waits for locks up to statement_timeout)"
            if sqlite_only
            else ""
        )
        takes = "; ".join(f"{name}: {what}" for name, what in OPTIONS.items())
        raise StoreError(
            f"saga store {redact(url)} does not take the option(s) {', '.join(unknown)}{hint}. "
            f"A PostgreSQL store takes: {takes}"
        )
    read_only = options.get("read_only", False)
    connect_timeout = options.get("connect_timeout", 10.0)
    statement_timeout = options.get("statement_timeout")
    allow_async_commit = options.get("allow_async_commit", False)
    if not isinstance(read_only, bool) or not isinstance(allow_async_commit, bool):
        raise StoreError("read_only and allow_async_commit must be True or False")
    if not isinstance(connect_timeout, int | float) or (
        statement_timeout is not None and not isinstance(statement_timeout, int | float)
    ):
        raise StoreError("connect_timeout and statement_timeout are seconds (a number)")
    return PostgresStore(
        url,
        read_only=read_only,
        connect_timeout=float(connect_timeout),
        statement_timeout=None if statement_timeout is None else float(statement_timeout),
        allow_async_commit=allow_async_commit,
    )


class _Pipe:
    """The connection's pipeline when libpq supports one (14 and later; the binary wheel's
    does), else nothing: statements then run one round trip each, with the same results."""

    def __init__(self, pipeline: psycopg.Pipeline | None) -> None:
        self._pipeline = pipeline

    def sync(self) -> None:
        """Send what is queued and wait for its results (one round trip)."""
        if self._pipeline is not None:
            self._pipeline.sync()


class PostgresStore(PostgresEventLog, SagaStore):
    """A :class:`SagaStore` in a PostgreSQL database (see the module docstring).

    ``read_only`` opens for queries only (the CLI, status queries): the session's transactions
    are read-only, the schema is never created, and a database without it is refused.
    ``connect_timeout`` bounds each (re)connection; ``statement_timeout`` each statement
    (a statement past it raises :class:`StoreUnavailable`). A server whose synchronous_commit is
    ``off`` is refused unless ``allow_async_commit``: its commits return before they are on disk.

    The connection is re-opened on the next call after it was lost (a server restart, a
    terminated backend, a network cut): a saga host keeps its store across those.
    """

    def __init__(
        self,
        url: str,
        *,
        read_only: bool = False,
        connect_timeout: float = 10.0,
        statement_timeout: float | None = None,
        allow_async_commit: bool = False,
    ) -> None:
        self._url = url  # holds the password, when the URL has one: never shown
        self.where = redact(url)
        self._secrets = secrets_in(url)
        self.read_only = read_only
        self._connect_timeout = connect_timeout
        self._statement_timeout = statement_timeout
        self._allow_async_commit = allow_async_commit
        self._conn: Connection | None = None
        self._closed = False
        self._commit_sent = False
        # Whether the commands table is there; _set_up finds out at every (re)connection.
        self._commands_table = False
        self._conn = self._open()

    def __repr__(self) -> str:
        return f"PostgresStore({self.where!r}{', read_only=True' if self.read_only else ''})"

    # --- connection -------------------------------------------------------------------------

    def _open(self) -> Connection:
        """A new connection, set up, with the schema checked (and created unless read-only)."""
        try:
            conn = psycopg.connect(
                self._url,
                autocommit=True,  # the store writes its own BEGIN and COMMIT (see above)
                connect_timeout=max(1, round(self._connect_timeout)),
                # Tells whose connections these are in pg_stat_activity, unless the URL says.
                fallback_application_name="understudy",
            )
        except psycopg.Error as exc:
            raise self._connect_error(exc) from None
        try:
            self._set_up(conn)
        except psycopg.Error as exc:
            error = self._translate(exc, "opening", lost=_is_lost(conn, exc))
            conn.close()
            raise error from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _set_up(self, conn: Connection) -> None:
        # Every int goes out as a bigint. psycopg otherwise picks int2, int4 or int8 by value,
        # so a batch statement's array parameters (checksums, versions) would change type from
        # batch to batch, and each combination is a statement prepared and planned anew.
        conn.adapters.register_dumper(int, Int8BinaryDumper)
        pg_arrays.register(conn.adapters)
        if conn.info.server_version < MIN_SERVER_VERSION:
            raise StoreError(
                f"saga store {self.where} is on PostgreSQL {conn.info.server_version}; "
                "understudy needs PostgreSQL 10 or later"
            )
        if self.read_only:
            conn.execute("SET default_transaction_read_only = on")
        else:
            # A store's transactions are a few statements in one pipeline: a session idle
            # inside one is a holder that was paused or cut off mid-commit. The server ends it
            # after this long, so its row locks (the shard's, above all) cannot keep the next
            # holder from taking the shard over for longer.
            conn.execute(
                "SELECT set_config('idle_in_transaction_session_timeout', %s, false)",
                (f"{IDLE_IN_TRANSACTION_TIMEOUT * 1000:.0f}ms",),
            )
        if self._statement_timeout is not None:
            conn.execute(
                "SELECT set_config('statement_timeout', %s, false)",
                (f"{max(1, round(self._statement_timeout * 1000))}ms",),
            )
        setting = conn.execute("SHOW synchronous_commit").fetchone()
        unsafe = setting is not None and setting[0] == "off"
        if unsafe and not self.read_only and not self._allow_async_commit:
            raise StoreError(
                f"saga store {self.where} has synchronous_commit = off: a commit would return "
                "before it is on disk, and a server crash could lose a saga's intent after its "
                "request was sent. Turn it on for this database (ALTER DATABASE ... SET "
                "synchronous_commit = on) or role, or pass allow_async_commit=True to accept "
                "that risk"
            )
        found, has_commands = self._schema_version(conn)
        if found is None and self.read_only:
            raise StoreError(
                f"saga store {self.where} holds no understudy tables; start understudy on "
                "it once (it creates them) before opening it read-only"
            )
        if found is None:
            found = self._create_schema(conn, _SCHEMA + _COMMANDS_SCHEMA)
            has_commands = True
        elif found == SCHEMA_VERSION and not has_commands and not self.read_only:
            # A store from before the commands table gains it; a read-only one goes without,
            # reading no commands.
            found = self._create_schema(conn, _COMMANDS_SCHEMA)
            has_commands = True
        self._commands_table = has_commands
        if found != SCHEMA_VERSION:
            raise StoreError(
                f"saga store {self.where} has schema version {found}, this understudy expects "
                f"{SCHEMA_VERSION}; upgrade understudy or use a new database"
            )
        self._event_log_table = self._prepare_event_log(conn)  # choreography's tables

    @staticmethod
    def _schema_version(conn: Connection) -> tuple[int | None, bool]:
        """The schema version, or None when the tables are not there, and whether the commands
        table is (no lock taken: opening a store that exists, the common case, never waits for
        another opener)."""
        row = conn.execute(
            "SELECT to_regclass('understudy_meta') IS NOT NULL, "
            "to_regclass('understudy_commands') IS NOT NULL"
        ).fetchone()
        version = None
        if row is not None and row[0]:
            found = conn.execute(
                "SELECT value FROM understudy_meta WHERE key = 'schema_version'"
            ).fetchone()
            version = None if found is None else int(found[0])
        return version, row is not None and bool(row[1])

    @staticmethod
    def _create_schema(conn: Connection, statements: Sequence[str]) -> int:
        with _pipeline(conn):
            conn.execute(_BEGIN)
            # Held until COMMIT: a second process opening the fresh database waits here, then
            # finds every table there and creates nothing.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            for statement in statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO understudy_meta (key, value) VALUES ('schema_version', %s) "
                "ON CONFLICT (key) DO NOTHING",
                (str(SCHEMA_VERSION),),
            )
            cursor = conn.execute("SELECT value FROM understudy_meta WHERE key = 'schema_version'")
            conn.execute("COMMIT")
        row = cursor.fetchone()
        return SCHEMA_VERSION if row is None else int(row[0])

    def _connection(self) -> Connection:
        """The store's connection, re-opened when it was lost since the last call."""
        if self._closed:
            raise StoreError(f"saga store {self.where} is closed; open a new one")
        conn = self._conn
        if conn is not None and (conn.closed or _went_away(conn)):
            self._drop()
            conn = None
        if conn is None:
            conn = self._conn = self._open()
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(psycopg.Error):  # it is gone either way
                conn.close()

    def _run(
        self,
        doing: str,
        body: Callable[[Connection, _Pipe], Callable[[], T]],
        *,
        read: bool = False,
        before: Callable[[Connection], None] | None = None,
    ) -> T:
        """Run ``body`` in one transaction and commit it; return what the callable ``body``
        returns gives once committed.

        BEGIN, the body's statements and COMMIT travel in one pipeline: a body that needs no
        answer before the COMMIT (a query, a blame) costs one round trip, and one that must
        look at results first (a batch's fence and row counts) syncs once more itself.

        A serialization failure or deadlock (the transaction was rolled back) runs it again, a
        few times. A connection lost before the COMMIT was sent runs it again on a new
        connection once (nothing of it can have committed), and so does one lost during a
        ``read``; lost after the COMMIT was sent (its fate is unknown) raises
        :class:`StoreUnavailable`: the caller reloads from the store, as after any failed write.

        ``before`` queues statements ahead of the BEGIN, in the same pipeline: a transaction of
        their own that must commit first (a batch's blame), at no extra round trip.
        """
        attempt = 0
        reconnected = False
        while True:
            attempt += 1
            conn = self._connection()
            self._commit_sent = False
            try:
                with _pipeline(conn) as pipe:
                    if before is not None:
                        before(conn)
                    conn.execute(_BEGIN_READ if read else _BEGIN)
                    finish = body(conn, pipe)
                    self._commit_sent = True
                    conn.execute("COMMIT")
                # Leaving the pipeline sent the COMMIT and received every result.
                return finish()
            except psycopg.Error as exc:
                lost = _is_lost(conn, exc)
                unknown = lost and self._commit_sent and not read
                self._abandon(conn, lost)
                if exc.sqlstate in _RETRY_STATES and attempt < _ATTEMPTS:
                    time.sleep(random.uniform(0.005, 0.02) * attempt)  # let the other one finish
                    continue
                if lost and not unknown and not reconnected:
                    reconnected = True
                    continue
                raise self._translate(exc, doing, lost=lost, commit_unknown=unknown) from None
            except sqlite3.Error as exc:
                # The store failpoints (busy, io_error, disk_full) raise what SQLite reports; here
                # they stand for the server failing the same way, before the COMMIT.
                self._abandon(conn, False)
                raise StoreUnavailable(
                    f"saga store {self.where} failed while {doing}: {exc} (an injected fault)"
                ) from None
            except BaseException:
                self._abandon(conn, conn.broken)
                raise

    def _abandon(self, conn: Connection, lost: bool) -> None:
        """After a failed transaction: roll it back, or drop a connection that is gone (the next
        call opens a new one)."""
        if lost or conn.closed:
            self._drop()
            return
        try:
            if conn.info.transaction_status != TransactionStatus.IDLE:
                conn.rollback()
        except psycopg.Error:
            self._drop()

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[TupleRow]:
        def body(conn: Connection, pipe: _Pipe) -> Callable[[], list[TupleRow]]:
            cursor = conn.execute(sql, params)
            return cursor.fetchall

        return self._run("reading", body, read=True)

    # --- errors -----------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        """Driver text, on one line, with every password this store knows blanked out."""
        text = " ".join(text.split())
        for secret in self._secrets:
            text = text.replace(secret, "********")
        return text

    def _connect_error(self, exc: psycopg.Error) -> StoreError:
        text = self._scrub(str(exc))
        lowered = text.lower()
        if "invalid" in lowered:
            return StoreError(
                f"saga store {self.where} is not a valid PostgreSQL URL ({text}); it reads "
                "postgresql://user@host:port/database"
            )
        if any(
            words in lowered
            for words in (
                "password",
                "authentication",
                "pg_hba.conf",
                "does not exist",
                "permission denied",
            )
        ):
            return StoreError(
                f"saga store {self.where} refused the connection ({text}); check the user, the "
                "database name and the credentials (the URL, PGPASSWORD or ~/.pgpass)"
            )
        return StoreUnavailable(
            f"saga store {self.where} cannot be reached ({text}); check that the PostgreSQL "
            "server is running and accepts connections there (the store tries again on its "
            "next call)"
        )

    def _translate(
        self,
        exc: psycopg.Error,
        doing: str,
        *,
        lost: bool,
        commit_unknown: bool = False,
    ) -> StoreError:
        """A driver error as the backend-neutral error tree, naming the server and the fix."""
        state = exc.sqlstate or ""
        text = self._scrub(str(exc)) + (f" [SQLSTATE {state}]" if state else "")
        where = self.where
        if commit_unknown:
            return StoreUnavailable(
                f"saga store {where}: the connection was lost while committing ({doing}), so "
                f"whether the commit happened is unknown ({text}); reload what it wrote from "
                "the store (the store reconnects on its next call)"
            )
        if lost:
            return StoreUnavailable(
                f"saga store {where}: the connection to the server was lost while {doing} "
                f"({text}); check that the PostgreSQL server is up (the store reconnects on its "
                "next call)"
            )
        if state in _RETRY_STATES:
            return StoreUnavailable(
                f"saga store {where} kept meeting conflicting transactions while {doing} "
                f"({text}); tried {_ATTEMPTS} times. Another writer works on the same sagas"
            )
        if state in ("57014", "55P03"):
            return StoreUnavailable(
                f"saga store {where} timed out while {doing} ({text}); a long transaction "
                "may hold the rows, or raise statement_timeout"
            )
        if state == "25006":
            return StoreUnavailable(
                f"saga store {where} cannot be written while {doing} ({text}); the store is "
                "open read-only, or the server is a standby: point it at the primary"
            )
        if state.startswith("53"):
            return StoreUnavailable(
                f"saga store {where} is out of resources while {doing} ({text}); free disk "
                "or memory on the server, or raise max_connections"
            )
        if state in _CORRUPT_STATES:
            return CorruptRecord(f"saga store {where} holds damaged data ({text})")
        if state in ("42P01", "42703"):
            return StoreError(
                f"saga store {where} lacks a table or column understudy needs while {doing} "
                f"({text}); it was changed by hand or belongs to another program"
            )
        return StoreError(f"saga store {where} failed while {doing}: {text}")

    def _lost(self, conn: Connection, lease: Lease) -> LeaseLost:
        row = conn.execute(
            "SELECT epoch, holder FROM understudy_shards WHERE shard = %s", (lease.shard,)
        ).fetchone()
        return _lease_lost(lease, row)

    # --- writes -----------------------------------------------------------------------------

    def apply(self, writes: Sequence[Write], lease: Lease | None = None) -> list[bool]:
        return self._apply(list(writes), lease)

    def commit_batch(self, writes: Sequence[Write], lease: Lease) -> list[bool]:
        # The blame is a transaction of its own, committed without waiting for the disk (see
        # blame()), sent in the batch's pipeline just ahead of it: one round trip fewer per
        # batch. It is committed once the first round trip returns, which is where the
        # failpoint of a host about to commit is hit, as the other stores hit it.
        packed = pack_blame(batch_sagas(writes))

        def blame(conn: Connection) -> None:
            conn.execute("BEGIN")
            conn.execute("SET LOCAL synchronous_commit = off")
            conn.execute(_BLAME, (packed, lease.shard, lease.epoch))
            conn.execute("COMMIT")

        return self._apply(list(writes), lease, blame)

    def _apply(
        self,
        writes: list[Write],
        lease: Lease | None,
        blame: Callable[[Connection], None] | None = None,
    ) -> list[bool]:
        def body(conn: Connection, pipe: _Pipe) -> Callable[[], list[bool]]:
            # First round trip: the fence, then the batch's statements. The fence goes first,
            # so every saga row this transaction touches is touched under the shard's lock.
            fence = conn.execute(_FENCE, (_NOBODY, lease.shard, lease.epoch)) if lease else None
            runs = [
                (sql, conn.execute(sql, columns(_KINDS[sql], rows)), indexes)
                for sql, indexes, rows in _plan(writes)
            ]
            pipe.sync()
            if lease is not None and fence is not None and fence.rowcount != 1:
                raise self._lost(conn, lease)  # rolled back: nothing of the batch applies
            if blame is not None:
                failpoints.hit("host.before_commit")
            results = [False] * len(writes)
            # Where a command's events go: its saga row's incarnation (None: no row, no events).
            found: dict[int, int | None] = {}
            for sql, cursor, indexes in runs:
                returned = cursor.fetchall()
                # Within a run every saga id is distinct: the ids returned are the writes applied.
                applied = {row[0] for row in returned}
                for index in indexes:
                    results[index] = writes[index].saga_id in applied
                if sql == _COMMANDS_DONE:
                    incarnation_of = {row[0]: row[1] for row in returned}  # None: no row
                    found.update((i, incarnation_of.get(writes[i].saga_id)) for i in indexes)
            events: list[tuple[Any, ...]] = []
            for index, write in enumerate(writes):
                if not (results[index] and write.events):
                    continue
                if isinstance(write, NewSaga):
                    incarnation: int | None = 1
                elif isinstance(write, Transition):
                    incarnation = write.incarnation
                else:
                    incarnation = found[index]
                if incarnation is not None:
                    events += event_rows(write.saga_id, incarnation, write.events)
            # Second round trip: the whole batch's timeline rows and the COMMIT, together.
            if events:
                conn.execute(_INSERT_EVENTS, _event_columns(events))
            _server_fault(conn, pipe, failpoints.hit("store.in_transaction"))
            return lambda: results

        if not writes and lease is None:
            self._connection()  # a closed store still says so
            return []
        doing = f"writing {len(writes)} saga record(s)"
        results = self._run(doing, body, before=blame)
        self._after_commit(doing)
        return results

    def _after_commit(self, doing: str) -> None:
        """The failpoint after a batch's commit. A lost connection is real (the store's own
        backend terminated): the caller hears what it hears when a connection drops as the
        COMMIT returns, and the next call reconnects. SQLite's errors stand for the server
        failing the same way."""
        try:
            action = failpoints.hit("store.after_commit")
        except sqlite3.Error as exc:
            raise StoreUnavailable(
                f"saga store {self.where} failed while {doing}: {exc} (an injected fault)"
            ) from None
        if action == "connection_lost" and self._conn is not None:
            conn = self._conn
            try:
                conn.execute(_SERVER_FAULTS[action][0])
                _wait_gone(conn)
            except psycopg.Error as exc:
                self._drop()
                raise self._translate(exc, doing, lost=True, commit_unknown=True) from None

    def claim_all(
        self,
        saga_ids: Sequence[str],
        *,
        recovery: bool,
        at: float,
        lease: Lease | None = None,
    ) -> dict[str, SagaRecord]:
        saga_ids = list(saga_ids)

        def body(conn: Connection, pipe: _Pipe) -> Callable[[], dict[str, SagaRecord]]:
            # claim_all leaves the blame alone: only a batch clears it.
            fence = _share_fence(conn, lease)
            updates = [
                conn.execute(
                    "UPDATE understudy_sagas SET incarnation = incarnation + 1, "
                    "recovery_attempts = recovery_attempts + %s, updated_at = %s "
                    f"WHERE saga_id IN ({marks}) AND status NOT IN {_TERMINAL_SQL} "
                    f"RETURNING {SAGA_COLUMNS}",
                    (1 if recovery else 0, at, *chunk),
                )
                for marks, chunk in chunks(saga_ids, "%s")
            ]
            pipe.sync()
            _check_fence(lease, fence)
            claimed: dict[str, SagaRecord] = {}
            for cursor in updates:
                claimed.update((row[0], saga_record(row)) for row in cursor.fetchall())
            events = claimed_event_rows(list(claimed.values()), recovery, at)
            if events:
                conn.execute(_INSERT_EVENTS, _event_columns(events))
            _server_fault(conn, pipe, failpoints.hit("store.claim"))
            return lambda: claimed

        if not saga_ids and lease is None:
            self._connection()
            return {}
        return self._run(f"claiming {len(saga_ids)} saga(s)", body)

    def note(self, notes: Sequence[Note], lease: Lease | None = None) -> list[bool]:
        notes = list(notes)

        def body(conn: Connection, pipe: _Pipe) -> Callable[[], list[bool]]:
            # Fenced as claim_all is and, like it, leaving the blame alone. FOR SHARE on the
            # saga rows keeps a concurrent claim from moving an incarnation read here before
            # this commits.
            fence = _share_fence(conn, lease)
            lookups = [
                conn.execute(
                    "SELECT saga_id, incarnation FROM understudy_sagas "
                    f"WHERE saga_id IN ({marks}) AND status NOT IN {_TERMINAL_SQL} FOR SHARE",
                    chunk,
                )
                for marks, chunk in chunks(list(dict.fromkeys(n.saga_id for n in notes)), "%s")
            ]
            pipe.sync()
            _check_fence(lease, fence)
            current: dict[str, int] = {}
            for cursor in lookups:
                current.update((row[0], int(row[1])) for row in cursor.fetchall())
            results = [current.get(note.saga_id) == note.incarnation for note in notes]
            events: list[tuple[Any, ...]] = []
            for note, applied in zip(notes, results, strict=True):
                if applied:
                    events += event_rows(note.saga_id, note.incarnation, note.events)
            if events:
                conn.execute(_INSERT_EVENTS, _event_columns(events))
            return lambda: results

        if not notes and lease is None:
            self._connection()  # a closed store still says so
            return []
        return self._run(f"noting events of {len(notes)} saga(s)", body)

    # --- operators' commands ----------------------------------------------------------------

    def submit(self, command: OperatorCommand) -> CommandRecord:
        row = command_row(command)
        doing = f"submitting a command for saga {command.saga_id!r}"
        if not self._has_commands():
            # Only a read-only store of a database from before the table lacks it: say what any
            # write to a read-only store says, not that a table is missing.
            refusal = psycopg.errors.ReadOnlySqlTransaction(
                "cannot execute INSERT in a read-only transaction"
            )
            raise self._translate(refusal, doing, lost=False)

        def body(conn: Connection, pipe: _Pipe) -> Callable[[], TupleRow | None]:
            # No lease and no fence: anyone may submit. One round trip, durable at COMMIT.
            return conn.execute(_INSERT_COMMAND, row).fetchone

        inserted = self._run(doing, body)
        assert inserted is not None  # INSERT ... RETURNING returns its row
        return submitted(int(inserted[0]), row)

    def commands(
        self,
        *,
        shard: int | None = None,
        saga_id: str | None = None,
        pending: bool = True,
        limit: int = 100,
    ) -> list[CommandRecord]:
        if not self._has_commands():
            return []
        sql, params = command_query("%s", shard, saga_id, pending, limit)
        return [command_record(row) for row in self._read(sql, params)]

    def command(self, command_id: int) -> CommandRecord | None:
        if not self._has_commands():
            return None
        rows = self._read(
            f"SELECT {COMMAND_COLUMNS} FROM understudy_commands WHERE id = %s", (command_id,)
        )
        return command_record(rows[0]) if rows else None

    def _has_commands(self) -> bool:
        """Whether the commands table is there: always on a store opened for writing; on a
        read-only one of an older database, once a writer has opened it since (asked each time
        until then, so a reader started before the upgrade sees commands after it)."""
        if not self._commands_table:
            rows = self._read("SELECT to_regclass('understudy_commands') IS NOT NULL")
            self._commands_table = bool(rows[0][0])
        return self._commands_table

    # --- ownership --------------------------------------------------------------------------

    def fix_shards(self, shards: int) -> int:
        if shards < 1:
            raise ValueError(f"shards must be at least 1, got {shards}")

        def body(conn: Connection, pipe: _Pipe) -> Callable[[], int]:
            # Two processes fixing a fresh store at once: the second waits for the first's
            # insert and then finds its count.
            inserted = conn.execute(
                "INSERT INTO understudy_meta (key, value) VALUES ('shards', %s) "
                "ON CONFLICT (key) DO NOTHING RETURNING value",
                (str(shards),),
            ).fetchone()
            if inserted is not None:
                # A store that already holds sagas (one from before shards were fixed) knows
                # nothing of who died doing what: its first holders blame everyone.
                conn.execute(
                    "INSERT INTO understudy_shards (shard, blame) SELECT n, CASE WHEN EXISTS "
                    "(SELECT 1 FROM understudy_sagas) THEN NULL ELSE %s::bytea END "
                    "FROM generate_series(0, %s - 1) AS n ON CONFLICT (shard) DO NOTHING",
                    (_NOBODY, shards),
                )
                return lambda: shards
            row = conn.execute("SELECT value FROM understudy_meta WHERE key = 'shards'").fetchone()
            fixed = shards if row is None else int(row[0])
            return lambda: fixed

        fixed = self._run("fixing the shard count", body)
        if fixed != shards:
            raise shard_count_mismatch(self.where, fixed, shards)
        return fixed

    def now(self) -> float:
        row = self._read(f"SELECT {_DB_NOW}")
        return float(row[0][0])

    def leases(self) -> list[Lease]:
        rows = self._read(
            "SELECT shard, holder, epoch, expires_at, about, blame FROM understudy_shards "
            "ORDER BY shard"
        )
        return [
            Lease(shard, holder, epoch, expires_at, unpack_blame(blame), unpack_about(about))
            for shard, holder, epoch, expires_at, about, blame in rows
        ]

    def acquire(
        self, shard: int, holder: str, ttl: float, about: dict[str, Any] | None = None
    ) -> Lease | None:
        about = dict(about or {})

        def body(conn: Connection, pipe: _Pipe) -> Callable[[], Lease | None]:
            row_cursor = conn.execute(
                "SELECT holder, epoch, expires_at, blame FROM understudy_shards "
                "WHERE shard = %s FOR UPDATE",
                (shard,),
            )
            # A statement of its own, run once the row lock is granted: an acquire that waited
            # for a batch compares expiry with the time it got the row, not the time it asked.
            now_cursor = conn.execute(f"SELECT {_DB_NOW}")
            pipe.sync()
            row, clock = row_cursor.fetchone(), now_cursor.fetchone()
            if row is None or clock is None:
                raise StoreError(
                    f"saga store {self.where} has no shard {shard}; fix the shard count first"
                )
            current, epoch, expires_at, blame = row
            now = float(clock[0])
            if current and current != holder and expires_at > now:
                return lambda: None
            lease = Lease(shard, holder, epoch + 1, now + ttl, unpack_blame(blame), about)
            # Until the new holder says otherwise, its death blames everyone (NULL).
            conn.execute(
                "UPDATE understudy_shards SET holder = %s, epoch = %s, expires_at = %s, "
                "about = %s, blame = NULL WHERE shard = %s",
                (holder, lease.epoch, lease.expires_at, pack_about(about), shard),
            )
            return lambda: lease

        return self._run(f"acquiring shard {shard}", body)

    def renew(self, lease: Lease, ttl: float, about: dict[str, Any] | None = None) -> Lease:
        about = lease.about if about is None else dict(about)

        def body(conn: Connection, pipe: _Pipe) -> Callable[[], TupleRow | None]:
            cursor = conn.execute(
                f"UPDATE understudy_shards SET expires_at = {_DB_NOW} + %s, about = %s "
                "WHERE shard = %s AND epoch = %s RETURNING expires_at",
                (ttl, pack_about(about), lease.shard, lease.epoch),
            )
            return cursor.fetchone

        row = self._run(f"renewing the lease of shard {lease.shard}", body)
        if row is None:
            raise _lease_lost(lease, self._shard_row(lease.shard))
        return attrs.evolve(lease, expires_at=float(row[0]), about=about)

    def release(self, lease: Lease) -> None:
        def body(conn: Connection, pipe: _Pipe) -> Callable[[], None]:
            conn.execute(
                "UPDATE understudy_shards SET holder = '', expires_at = 0, blame = %s "
                "WHERE shard = %s AND epoch = %s",
                (_NOBODY, lease.shard, lease.epoch),
            )
            return lambda: None

        self._run(f"releasing shard {lease.shard}", body)

    def expire(self, shard: int, epoch: int) -> None:
        def body(conn: Connection, pipe: _Pipe) -> Callable[[], None]:
            # The blame stays: the holder exited without releasing, so what it left stands.
            conn.execute(
                "UPDATE understudy_shards SET expires_at = 0 WHERE shard = %s AND epoch = %s",
                (shard, epoch),
            )
            return lambda: None

        self._run(f"expiring the lease of shard {shard}", body)

    def blame(self, lease: Lease, saga_ids: Sequence[str] | None) -> None:
        packed = pack_blame(saga_ids)

        def body(conn: Connection, pipe: _Pipe) -> Callable[[], bool]:
            # Blame must outlive the holder's death, not the server's: the server has it once
            # this COMMIT returns, whether or not its WAL is flushed, so this commit does not
            # wait for the disk (a blame per batch would otherwise double the batch's fsyncs).
            # Only a server crash in the next few hundred milliseconds can lose it, and a server
            # crash restarts every saga anyway. The batch's own COMMIT, synchronous, flushes it.
            conn.execute("SET LOCAL synchronous_commit = off")
            cursor = conn.execute(_BLAME, (packed, lease.shard, lease.epoch))
            return lambda: cursor.rowcount == 1

        # One round trip: the fence is the UPDATE's WHERE; a lost lease updates nothing.
        if not self._run(f"recording blame on shard {lease.shard}", body):
            raise _lease_lost(lease, self._shard_row(lease.shard))

    def _shard_row(self, shard: int) -> TupleRow | None:
        rows = self._read("SELECT epoch, holder FROM understudy_shards WHERE shard = %s", (shard,))
        return rows[0] if rows else None

    # --- queries ----------------------------------------------------------------------------

    def get(self, saga_id: str) -> SagaRecord | None:
        rows = self._read(
            f"SELECT {SAGA_COLUMNS} FROM understudy_sagas WHERE saga_id = %s", (saga_id,)
        )
        return saga_record(rows[0]) if rows else None

    def get_many(self, saga_ids: Sequence[str]) -> dict[str, SagaRecord]:
        found: dict[str, SagaRecord] = {}
        for marks, chunk in chunks(saga_ids, "%s"):
            rows = self._read(
                f"SELECT {SAGA_COLUMNS} FROM understudy_sagas WHERE saga_id IN ({marks})", chunk
            )
            found.update((row[0], saga_record(row)) for row in rows)
        return found

    def unfinished(self) -> list[str]:
        # COLLATE "C": ids of sagas created at the same instant in byte order, as SQLite orders
        # them, whatever the database's collation.
        rows = self._read(
            f"SELECT saga_id FROM understudy_sagas WHERE status IN {_ACTIVE_SQL} "
            'ORDER BY created_at, saga_id COLLATE "C"'
        )
        return [row[0] for row in rows]

    def list_sagas(self, status: str | None = None, limit: int = 100) -> list[SagaRecord]:
        # A negative limit is no limit, as in SQLite (PostgreSQL refuses one; NULL is none).
        bound = None if limit < 0 else limit
        if status is None:
            rows = self._read(
                f"SELECT {SAGA_COLUMNS} FROM understudy_sagas ORDER BY created_at DESC LIMIT %s",
                (bound,),
            )
        else:
            rows = self._read(
                f"SELECT {SAGA_COLUMNS} FROM understudy_sagas WHERE status = %s "
                "ORDER BY created_at DESC LIMIT %s",
                (status, bound),
            )
        return [saga_record(row) for row in rows]

    def count_by_status(self) -> dict[str, int]:
        rows = self._read("SELECT status, count(*) FROM understudy_sagas GROUP BY status")
        return {status: int(count) for status, count in rows}

    def events(self, saga_id: str) -> list[EventRecord]:
        rows = self._read(
            f"SELECT {EVENT_COLUMNS} FROM understudy_events WHERE saga_id = %s ORDER BY seq",
            (saga_id,),
        )
        return [event_record(row) for row in rows]

    def last_seq(self) -> int:
        # max() of the primary key: one step down its index (an identity column hands out
        # numbers in the order transactions ask, so a write can commit a number below the
        # latest; the next one moves it on again).
        rows = self._read("SELECT coalesce(max(seq), 0) FROM understudy_events")
        return int(rows[0][0])

    def close(self) -> None:
        self._closed = True
        self._drop()


def _plan(writes: Sequence[Write]) -> list[tuple[str, list[int], list[tuple[Any, ...]]]]:
    """A batch as a few set-based statements: each with the positions of its writes in the
    batch and their rows.

    Writes of different sagas touch different rows, so they may run in any order; writes of
    the same saga keep theirs (a batch may insert a saga and then update it): a write goes in
    layer n when n earlier writes of the batch are for its saga, and layers run in order. Within
    a layer every saga id is distinct, so no statement touches a row twice."""
    counts: dict[str, int] = {}
    layers: list[dict[str, tuple[list[int], list[tuple[Any, ...]]]]] = []
    for index, write in enumerate(writes):
        layer = counts.get(write.saga_id, 0)
        counts[write.saga_id] = layer + 1
        if layer == len(layers):
            layers.append({})
        sql, row = _row(write)
        indexes, rows = layers[layer].setdefault(sql, ([], []))
        indexes.append(index)
        rows.append(row)
    return [(sql, indexes, rows) for layer in layers for sql, (indexes, rows) in layer.items()]


def _row(write: Write) -> tuple[str, tuple[Any, ...]]:
    """The statement that applies ``write`` and its row (one saga returned: applied)."""
    if isinstance(write, NewSaga):
        payload_check, snapshot_check = saga_sums(
            write.saga_id, write.definition, write.version, RUNNING, write.payload, None, 0, None
        )
        return _INSERT_SAGAS, (
            write.saga_id,
            write.definition,
            write.version,
            write.payload,
            float(write.at),
            payload_check,
            snapshot_check,
        )
    if isinstance(write, Transition):
        return _TRANSITIONS[fenced_statuses(write)], (
            write.saga_id,
            write.incarnation,
            write.status,
            write.snapshot,
            write.snapshot_version,
            write.recovery_attempts,
            write.reason,
            float(write.at),
            integrity.snapshot_sum(
                write.saga_id, write.status, write.snapshot_version, write.snapshot, write.reason
            ),
        )
    if isinstance(write, CommandDone):
        check_done(write)
        return _COMMANDS_DONE, (
            write.command_id,
            write.saga_id,
            write.incarnation,
            write.state,
            write.outcome,
            float(write.at),
        )
    raise TypeError(f"not a store write: {write!r}")  # pragma: no cover - the type checker


#: The element types of each batch statement's arrays, in parameter order (see pg_arrays).
_TRANSITION_KINDS: Final = (
    TextArray,
    Int8Array,
    TextArray,
    ByteaArray,
    Int8Array,
    Int8Array,
    TextArray,
    Float8Array,
    Int8Array,
)
_KINDS: Final[dict[str, tuple[type[PackedArray], ...]]] = {
    _INSERT_SAGAS: (TextArray, TextArray, Int8Array, ByteaArray, Float8Array, Int8Array, Int8Array),
    **{sql: _TRANSITION_KINDS for sql in _TRANSITIONS.values()},
    _COMMANDS_DONE: (Int8Array, TextArray, Int8Array, TextArray, TextArray, Float8Array),
}
#: Event rows as :func:`~understudy.persistence.rows.event_rows` gives them.
_EVENT_KINDS: Final = (
    TextArray,
    TextArray,
    Float8Array,
    Int8Array,
    Int8Array,
    Int8Array,
    ByteaArray,
    Int8Array,
)


def _event_columns(rows: Sequence[tuple[Any, ...]]) -> list[Any]:
    return columns(_EVENT_KINDS, rows)


@contextmanager
def _pipeline(conn: Connection) -> Iterator[_Pipe]:
    if psycopg.Pipeline.is_supported():
        with conn.pipeline() as pipeline:
            yield _Pipe(pipeline)
    else:
        yield _Pipe(None)


#: What the store runs to make a server fault (:data:`understudy.failpoints.SERVER_ACTIONS`)
#: happen for real on its own connection, inside the transaction: the server itself ends the
#: connection, raises the error with its SQLSTATE, or cancels a statement past its timeout.
_SERVER_FAULTS: Final[dict[str, tuple[str, ...]]] = {
    "connection_lost": ("SELECT pg_terminate_backend(pg_backend_pid())",),
    "serialization_failure": (
        "DO $$ BEGIN RAISE EXCEPTION 'injected serialization failure' "
        "USING ERRCODE = 'serialization_failure'; END $$",
    ),
    "deadlock": (
        "DO $$ BEGIN RAISE EXCEPTION 'injected deadlock' USING ERRCODE = 'deadlock_detected'; "
        "END $$",
    ),
    "statement_timeout": ("SET LOCAL statement_timeout = '1ms'", "SELECT pg_sleep(1)"),
}


def _server_fault(conn: Connection, pipe: _Pipe, action: str | None) -> None:
    """At a store failpoint inside a transaction: carry out the server fault ``action`` that
    :func:`understudy.failpoints.hit` returned (nothing for None), and make the server answer
    now, before the COMMIT is queued, so that the store's real error paths run: a terminated
    backend is reconnected and the transaction run again, a serialization failure or deadlock
    retried, a statement timeout reported as :class:`StoreUnavailable`."""
    if action not in _SERVER_FAULTS:
        return
    for statement in _SERVER_FAULTS[action]:
        conn.execute(statement)
    pipe.sync()
    if action == "connection_lost":
        _wait_gone(conn)


def _wait_gone(conn: Connection) -> None:
    """After the backend terminated itself: wait (a little) for the server to close the
    connection, and read what it says, so that the error surfaces here as the driver's."""
    deadline = time.monotonic() + 5.0
    while not (conn.closed or conn.broken) and time.monotonic() < deadline:
        if _went_away(conn):
            raise psycopg.OperationalError("the server closed the connection (terminated)")
        time.sleep(0.001)


def _went_away(conn: Connection) -> bool:
    """Whether an idle connection was closed by the server since its last use (a terminated
    backend, a restart): the server says so on the socket, which is readable although nothing
    was asked. One poll, no round trip, so the common case costs nothing."""
    try:
        if not _readable(conn.fileno()):
            return False
        conn.pgconn.consume_input()  # a notice is harmless; a FATAL or EOF marks it bad
    except (OSError, ValueError, psycopg.Error):
        return True
    return conn.pgconn.status != ConnStatus.OK


def _readable(fd: int) -> bool:
    """Whether ``fd`` has something to read, without waiting. poll where there is one: select
    refuses descriptors past 1023, which a busy process may well hand out."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    readable, _, _ = select.select([fd], [], [], 0)
    return bool(readable)


def _is_lost(conn: Connection, exc: psycopg.Error) -> bool:
    """Whether ``exc`` means the connection is gone (the server or the network went away)."""
    state = exc.sqlstate or ""
    return conn.closed or conn.broken or state.startswith("08") or state in _GONE_STATES


def _share_fence(conn: Connection, lease: Lease | None) -> Any:
    """Read the shard's epoch FOR SHARE (pipelined; see :func:`_check_fence`): it conflicts
    with acquire's FOR UPDATE, so the epoch read stays the shard's until COMMIT."""
    if lease is None:
        return None
    return conn.execute(
        "SELECT epoch, holder FROM understudy_shards WHERE shard = %s FOR SHARE", (lease.shard,)
    )


def _check_fence(lease: Lease | None, fence: Any) -> None:
    """After the pipeline's sync: LeaseLost unless ``lease``'s epoch is still the shard's."""
    if lease is not None and fence is not None:
        row = fence.fetchone()
        if row is None or row[0] != lease.epoch:
            raise _lease_lost(lease, row)


def _lease_lost(lease: Lease, row: Sequence[Any] | None) -> LeaseLost:
    # The same words as the SQLite store's.
    now_held = f"epoch {row[0]}, holder {row[1] or 'nobody'!r}" if row else "no such shard"
    return LeaseLost(
        f"shard {lease.shard}'s lease at epoch {lease.epoch} is no longer held ({now_held}): "
        "another saga host took the shard over; this one stops and writes nothing more"
    )
