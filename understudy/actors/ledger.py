"""A participant's ledger of idempotency keys, in SQLite or in PostgreSQL.

One table, ``understudy_ledger``, one row per key: the request's digest (action and payload), its
outcome, the result or the reason. The rules (the participant half of invariants I4, I6, I7)
are :meth:`Ledger.decide`:

- a key seen before returns its recorded outcome; the same key with another payload is refused;
- a compensation for a forward key never seen succeeds as a no-op and leaves a tombstone under
  the forward key; a forward request that arrives after its compensation is refused;
- a key recorded ``started`` (an external handler, see :mod:`understudy.actors.participant`)
  has no known outcome: it runs again, under the same key. A compensation of such a forward runs
  too (told the forward's outcome is unknown), and turns the forward's row ``abandoned``: from
  then on the forward is refused, as after a tombstone.

Both databases run the same statements through one class; :class:`SQLiteLedger` and
:class:`PostgresLedger` differ only in small hooks: the placeholder, how a transaction begins,
two column types, how to connect, and which driver errors mean what. Transactions are explicit
statements (BEGIN, SAVEPOINT, COMMIT, ROLLBACK) on a connection in autocommit mode on both, so
the participant drives either the same way. This is the only module of the participant side
that touches a driver; psycopg is imported only when a PostgreSQL ledger is opened.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from understudy import codec
from understudy.actors.handlers import FORWARD_APPLIED, FORWARD_UNKNOWN
from understudy.errors import LedgerError
from understudy.messages import StepRequest
from understudy.persistence import POSTGRES_SCHEMES, secrets_in

APPLIED = "applied"
REJECTED = "rejected"
NOOP = "noop"
TOMBSTONE = "tombstone"
#: Written (and committed) before an external handler runs: its outcome is unknown until the
#: handler returns and the outcome replaces it.
STARTED = "started"
#: A forward row once ``started`` whose compensation has begun: refused from then on.
ABANDONED = "abandoned"

_SCHEMA = """CREATE TABLE IF NOT EXISTS understudy_ledger (
    key TEXT PRIMARY KEY,
    saga_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    kind TEXT NOT NULL,
    action TEXT NOT NULL,
    digest {blob} NOT NULL,
    outcome TEXT NOT NULL,
    result {blob},
    reason TEXT,
    at {real} NOT NULL
)"""
_LOOKUP = "SELECT digest, outcome, result, reason FROM understudy_ledger WHERE key = ?"
_INSERT = (
    "INSERT INTO understudy_ledger (key, saga_id, step, kind, action, digest, outcome, result, "
    "reason, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_FINISH = (
    "UPDATE understudy_ledger SET outcome = ?, result = ?, reason = ?, at = ? "
    f"WHERE key = ? AND outcome = '{STARTED}'"
)
_ABANDON = (
    f"UPDATE understudy_ledger SET outcome = '{ABANDONED}' WHERE key = ? AND outcome = '{STARTED}'"
)


def digest_of(msg: StepRequest) -> bytes:
    """What a key is bound to: a reused key must carry the same action and payload (I6)."""
    return hashlib.sha256(codec.encode([msg.action, msg.payload])).digest()


@attrs.frozen
class Answer:
    """The ledger's verdict when no handler must run: ``outcome`` ``ok`` or ``rejected``."""

    outcome: str
    result: Any = None
    reason: str | None = None
    replayed: bool = False


@attrs.frozen
class Run:
    """The ledger's verdict when the handler must run. ``started``: the key's row says
    ``started`` already (an external call run again), so its outcome updates that row."""

    started: bool = False
    forward_outcome: str | None = None  # compensations: FORWARD_APPLIED or FORWARD_UNKNOWN
    forward_result: Any = None


_RUN = Run()  # the common verdicts, made once (frozen): one per request cost a microsecond
_RUN_AGAIN = Run(started=True)


@attrs.frozen
class _Row:
    digest: bytes
    outcome: str
    result: bytes | None
    reason: str | None


class Ledger:
    """The ledger on one database connection. Subclasses set the hooks (class attributes and the
    methods marked "hook"); everything else is shared.

    The connection is opened on the first :meth:`begin` and again after it was lost: a driver
    error that means the connection is gone is raised as a :class:`LedgerError` with ``lost``
    set, and the next :meth:`begin` connects anew.
    """

    placeholder: ClassVar[str] = "?"
    begin_statement: ClassVar[str] = "BEGIN"
    blob: ClassVar[str] = "BLOB"
    real: ClassVar[str] = "REAL"

    def __init__(self, where: str) -> None:
        self.where = where  # the database as it may be shown: no credentials
        self._conn: Any = None

    # --- hooks --------------------------------------------------------------------------------

    def _connect(self) -> Any:  # hook
        """A new connection in autocommit mode (transactions are explicit statements)."""
        raise NotImplementedError

    def _translate(self, exc: Exception) -> LedgerError | None:  # hook
        """``exc`` as a :class:`LedgerError` when it is the driver's, else None."""
        raise NotImplementedError

    def _in_transaction(self, conn: Any) -> bool:  # hook
        raise NotImplementedError

    def _usable(self, conn: Any) -> bool:  # hook
        """Whether ``conn`` may still work (a connection known broken is replaced at once)."""
        return True

    def _lock_schema(self) -> None:  # hook
        """Serialise schema creation with other participants on the same database."""

    def scrub(self, text: str) -> str:  # hook
        """``text`` with every secret this ledger connects with taken out."""
        return text

    # --- connection and transactions ----------------------------------------------------------

    @property
    def connection(self) -> Any:
        """The open connection: what handlers and ``setup`` get as ``db``."""
        return self._conn

    @property
    def in_transaction(self) -> bool:
        return self._conn is not None and self._in_transaction(self._conn)

    def _sql(self, statement: str) -> str:  # hook
        """``statement`` (written with ``?`` placeholders) as this driver takes it."""
        return statement

    def _execute(self, statement: str, params: tuple[Any, ...] = ()) -> Any:
        conn = self._conn
        if conn is None:
            raise LedgerError(f"ledger {self.where} is not connected", lost=True)
        if self.placeholder != "?":  # SQLite's statements go as written: no call per statement
            statement = self._sql(statement)
        try:
            return conn.execute(statement, params)
        except Exception as exc:
            error = self._translate(exc)
            if error is None:
                raise
            if error.lost:
                self._drop()
            # Not chained to the driver's exception: its text may hold a password, and the
            # error's own text is scrubbed.
            raise error from None

    def begin(self) -> None:
        """Begin a transaction, connecting first when there is no usable connection. A
        connection found lost at BEGIN is replaced once: nothing was done on it yet."""
        for attempt in (1, 2):
            if self._conn is not None and not self._usable(self._conn):
                self._drop()
            if self._conn is None:
                try:
                    self._conn = self._connect()
                except Exception as exc:
                    error = self._translate(exc)
                    if error is None:
                        raise
                    error.lost = True
                    raise error from None
            try:
                self._execute(self.begin_statement)
                return
            except LedgerError as exc:
                if not exc.lost or attempt == 2:
                    raise

    def commit(self) -> None:
        self._execute("COMMIT")

    def rollback(self) -> None:
        """Roll back the open transaction, if any; a connection that cannot even do that is
        dropped (the next :meth:`begin` opens a new one)."""
        if not self.in_transaction:
            return
        try:
            self._execute("ROLLBACK")
        except LedgerError:
            self._drop()

    def savepoint(self) -> None:
        self._execute("SAVEPOINT handler")

    def rollback_to_savepoint(self) -> None:
        self._execute("ROLLBACK TO SAVEPOINT handler")
        self._execute("RELEASE SAVEPOINT handler")

    def release_savepoint(self) -> None:
        self._execute("RELEASE SAVEPOINT handler")

    def create_schema(self) -> None:
        """Create the ledger table if it is not there (inside the open transaction)."""
        self._lock_schema()
        self._execute(_SCHEMA.format(blob=self.blob, real=self.real))

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # it is gone either way
                conn.close()

    def close(self) -> None:
        self.rollback()
        self._drop()

    # --- the rules ----------------------------------------------------------------------------

    def _lookup(self, key: str) -> _Row | None:
        row = self._execute(_LOOKUP, (key,)).fetchone()
        return None if row is None else _Row(bytes(row[0]), row[1], row[2], row[3])

    def decide(self, msg: StepRequest, digest: bytes) -> Answer | Run:
        """What to do with ``msg`` (inside the open transaction). Writes the tombstone and no-op
        of a compensation with nothing to undo, and marks an in-doubt forward ``abandoned``
        once its compensation runs."""
        started = False
        row = self._lookup(msg.key)
        if row is not None:
            if row.outcome == TOMBSTONE:
                return Answer(
                    "rejected",
                    reason="refused: this step was already compensated before the request arrived",
                )
            if row.outcome == ABANDONED:
                return Answer(
                    "rejected",
                    reason="refused: the step's outcome was unknown and its compensation has begun",
                )
            if row.digest != digest:
                return Answer(
                    "rejected",
                    reason=f"idempotency key {msg.key!r} was used "
                    "before with a different action or payload",
                )
            if row.outcome != STARTED:
                return Answer(
                    "rejected" if row.outcome == REJECTED else "ok",
                    result=_decoded(row.result),
                    reason=row.reason,
                    replayed=True,
                )
            started = True  # an external call whose outcome is unknown: it runs again
        if msg.kind != "undo":
            return _RUN_AGAIN if started else _RUN
        forward = self._lookup(msg.forward_key)
        if forward is not None and forward.outcome == APPLIED:
            return Run(started, FORWARD_APPLIED, _decoded(forward.result))
        if forward is not None and forward.outcome in (STARTED, ABANDONED):
            # It may have taken effect outside this database: compensate it, and refuse the
            # forward from now on (a late retry must not apply it after its compensation).
            self._execute(_ABANDON, (msg.forward_key,))
            return Run(started, FORWARD_UNKNOWN)
        if forward is None:
            self.record(msg.forward_key, msg, b"", TOMBSTONE)
        self.record(msg.key, msg, digest, NOOP)
        return Answer("ok", reason="nothing to undo: the step never applied here")

    def record(
        self,
        key: str,
        msg: StepRequest,
        digest: bytes,
        outcome: str,
        result: bytes | None = None,
        reason: str | None = None,
    ) -> None:
        """Insert the row of ``key`` (a key recorded once only: the primary key sees to it)."""
        kind = "do" if key == msg.forward_key else msg.kind
        self._execute(
            _INSERT,
            (
                key,
                msg.saga_id,
                msg.step,
                kind,
                msg.action,
                digest,
                outcome,
                result,
                reason,
                time.time(),
            ),
        )

    def finish(
        self, key: str, outcome: str, result: bytes | None = None, reason: str | None = None
    ) -> None:
        """Replace the ``started`` row of ``key`` with the outcome its handler returned."""
        cursor = self._execute(_FINISH, (outcome, result, reason, _now(), key))
        if cursor.rowcount != 1:
            raise LedgerError(
                f"ledger {self.where}: the row of key {key!r} is no longer 'started' "
                "(another process recorded it meanwhile)"
            )


def _decoded(value: bytes | None) -> Any:
    return None if value is None else codec.decode(bytes(value), "ledger result")


def _now() -> float:
    return time.time()


class SQLiteLedger(Ledger):
    """The ledger in a SQLite file (WAL, FULL synchronous by default)."""

    # Take the write lock at BEGIN: a transaction that reads first and writes later would fail
    # with SQLITE_BUSY at its first write, ignoring the busy timeout, if another wrote meanwhile.
    begin_statement = "BEGIN IMMEDIATE"
    _SYNCHRONOUS: ClassVar[frozenset[str]] = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})

    def __init__(self, path: str, busy_timeout: float = 5.0, synchronous: str = "FULL") -> None:
        super().__init__(path)
        if str(synchronous).upper() not in self._SYNCHRONOUS:
            raise ValueError(
                f"synchronous must be one of {sorted(self._SYNCHRONOUS)}, not {synchronous!r}"
            )
        self._path = path
        self._busy_timeout = busy_timeout
        self._synchronous = str(synchronous).upper()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self._path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self._synchronous}")
        return db

    def _translate(self, exc: Exception) -> LedgerError | None:
        if not isinstance(exc, sqlite3.Error):
            return None
        return LedgerError(f"ledger {self.where}: {exc}")

    def _in_transaction(self, conn: Any) -> bool:
        return bool(conn.in_transaction)


# The SQLSTATEs of a server that went away: admin shutdown (pg_terminate_backend, a fast
# shutdown), crash shutdown, cannot connect now; class 08 (connection exceptions) is the rest.
_GONE_STATES = frozenset({"57P01", "57P02", "57P03"})
# Serialises schema creation (and the participants' setups) on one database: CREATE TABLE IF NOT
# EXISTS run by two transactions at once can still fail on pg_type's unique index. "udstldgr".
_SCHEMA_LOCK = int.from_bytes(b"udstldgr", "big")


class PostgresLedger(Ledger):
    """The ledger in a PostgreSQL database (psycopg 3; READ COMMITTED, the server's default).

    Several participants may share one database: keys are unique per saga step, and every
    participant's rows carry its saga and step."""

    placeholder = "%s"
    _statements: ClassVar[dict[str, str]] = {}  # as written -> as psycopg takes them
    blob = "BYTEA"
    real = "DOUBLE PRECISION"  # REAL is 4 bytes in PostgreSQL: too coarse for a timestamp

    def __init__(self, url: str, connect_timeout: float = 10.0) -> None:
        from understudy.persistence.postgres import redact

        super().__init__(redact(url))
        self._url = url  # may hold a password: never shown
        self._connect_timeout = connect_timeout
        self._secrets = secrets_in(url)

    def _connect(self) -> Any:
        import psycopg

        return psycopg.connect(
            self._url,
            autocommit=True,  # transactions are the ledger's own BEGIN ... COMMIT
            connect_timeout=max(1, round(self._connect_timeout)),
            fallback_application_name="understudy participant",
        )

    def _translate(self, exc: Exception) -> LedgerError | None:
        import psycopg

        if not isinstance(exc, psycopg.Error):
            return None
        conn = self._conn
        state = exc.sqlstate or ""
        lost = (
            conn is None
            or conn.closed
            or conn.broken
            or state.startswith("08")
            or state in _GONE_STATES
            or (isinstance(exc, psycopg.OperationalError) and not state)
        )
        return LedgerError(f"ledger {self.where}: {self.scrub(str(exc).strip())}", lost=lost)

    def _sql(self, statement: str) -> str:
        translated = self._statements.get(statement)
        if translated is None:
            translated = self._statements[statement] = statement.replace("?", self.placeholder)
        return translated

    def _in_transaction(self, conn: Any) -> bool:
        from psycopg.pq import TransactionStatus

        return bool(conn.info.transaction_status != TransactionStatus.IDLE)

    def _usable(self, conn: Any) -> bool:
        return not (conn.closed or conn.broken)

    def _lock_schema(self) -> None:
        self._execute("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def open_ledger(database: str, options: Mapping[str, Any]) -> Ledger:
    """The ledger for a participant's ``database`` option: a SQLite path, or a PostgreSQL URL
    (``postgresql://user@host:port/db``; needs psycopg 3, the ``postgres`` extra). Not connected
    yet: the first :meth:`Ledger.begin` connects."""
    if database.startswith(POSTGRES_SCHEMES):
        return PostgresLedger(database, float(options.get("connect_timeout", 10.0)))
    return SQLiteLedger(
        database,
        busy_timeout=float(options.get("busy_timeout", 5.0)),
        synchronous=str(options.get("synchronous", "FULL")),
    )


#: The SQLite form of the ledger table (tests build ledgers with it).
SQLITE_SCHEMA = _SCHEMA.format(blob=SQLiteLedger.blob, real=SQLiteLedger.real)
