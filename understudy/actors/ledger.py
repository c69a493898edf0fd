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
  then on the forward is refused, as after a tombstone;
- a key recorded ``deferred`` (its handler returned ``Later``) waits for its completion from
  outside (:mod:`understudy.actors.deferred`): a request for it runs nothing and waits. A
  completion replaces the outcome (``applied``, ``rejected`` or ``failed``) and flags the key in
  ``understudy_deferred`` for the participant to notice. A compensation of a forward still
  waiting turns its row ``cancelled`` (in the compensation's transaction): the completion and
  the forward are refused from then on. A compensation of a forward that was deferred runs
  whatever its completion said, since what its handler wrote when it deferred stays to undo.

A refusal's data (``Reject(reason, data=...)``) is kept, msgpack, in the ``result`` column of
its ``rejected`` row.

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
import secrets
import sqlite3
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from understudy import codec
from understudy.actors.handlers import (
    FORWARD_APPLIED,
    FORWARD_CANCELLED,
    FORWARD_FAILED,
    FORWARD_REJECTED,
    FORWARD_UNKNOWN,
)
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
#: Its handler returned ``Later``: the step waits for a completion from outside.
DEFERRED = "deferred"
#: A forward row once ``deferred`` whose compensation has begun: refused from then on, and so is
#: its completion.
CANCELLED = "cancelled"
#: A deferred step completed as failed (``understudy.fail``): replayed as an error.
FAILED = "failed"
#: The outcomes a completion records.
COMPLETIONS = frozenset({APPLIED, REJECTED, FAILED})

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
# The steps that were ever deferred, their handles (for people: what to complete a step with),
# and a flag ("news") set by a completion and cleared once the participant has seen it: the
# participant polls for the flag through a partial index, so a look costs one probe of an index
# that is empty when nothing was completed.
_DEFERRED_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS understudy_deferred (
    key TEXT PRIMARY KEY,
    participant TEXT NOT NULL,
    handle TEXT NOT NULL,
    news INTEGER NOT NULL,
    at {real} NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS understudy_deferred_news ON understudy_deferred (participant) "
    "WHERE news = 1",
)
# The secret handles are signed with, one per database (made once, never changed).
_SECRETS_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS understudy_secrets (name TEXT PRIMARY KEY, value {blob} NOT NULL)"
)
_HANDLE_SECRET = "handles"
_NEW_SECRET = "INSERT INTO understudy_secrets (name, value) VALUES (?, ?) ON CONFLICT DO NOTHING"
_SECRET = "SELECT value FROM understudy_secrets WHERE name = ?"
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
_CANCEL = (
    f"UPDATE understudy_ledger SET outcome = '{CANCELLED}', at = ? "
    f"WHERE key = ? AND outcome = '{DEFERRED}'"
)
# A completion takes a deferred row, or a started one: an external handler's call may have
# handed the handle out, and its callback may come before the handler returned ``Later``.
_COMPLETE = (
    "UPDATE understudy_ledger SET outcome = ?, result = ?, reason = ?, at = ? "
    f"WHERE key = ? AND outcome IN ('{DEFERRED}', '{STARTED}')"
)
_DEFER = (
    "INSERT INTO understudy_deferred (key, participant, handle, news, at) "
    "VALUES (?, ?, ?, 0, ?) ON CONFLICT (key) DO NOTHING"
)
_FLAG = (
    "INSERT INTO understudy_deferred (key, participant, handle, news, at) "
    "VALUES (?, ?, ?, 1, ?) ON CONFLICT (key) DO UPDATE SET news = 1, at = excluded.at"
)
_WAS_DEFERRED = "SELECT 1 FROM understudy_deferred WHERE key = ?"
_NEWS = (
    "SELECT d.key, l.outcome, l.result, l.reason FROM understudy_deferred d "
    "JOIN understudy_ledger l ON l.key = d.key WHERE d.participant = ? AND d.news = 1"
)
_NOTICED = "UPDATE understudy_deferred SET news = 0 WHERE key = ?"


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
    data: Any = None  # a refusal's data


@attrs.frozen
class Wait:
    """The ledger's verdict for a request whose step was deferred and is not completed yet: no
    handler runs, and the request waits for the completion."""


_WAIT = Wait()


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


@attrs.frozen
class Completed:
    """A completed deferred step the participant has not yet noticed: its key and outcome."""

    key: str
    outcome: str
    result: bytes | None
    reason: str | None

    def answer(self, replayed: bool) -> Answer:
        return answer_of(self.outcome, self.result, self.reason, replayed)


def answer_of(outcome: str, result: bytes | None, reason: str | None, replayed: bool) -> Answer:
    """The reply a recorded final outcome gives: ``ok`` with the result, ``rejected`` with the
    reason and the refusal's data, or ``error`` (a deferred step completed as failed)."""
    if outcome == REJECTED:
        return Answer("rejected", reason=reason, replayed=replayed, data=_decoded(result))
    if outcome == FAILED:
        return Answer("error", reason=reason, replayed=replayed)
    return Answer("ok", result=_decoded(result), reason=reason, replayed=replayed)


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
            self._connected()
            try:
                self._execute(self.begin_statement)
                return
            except LedgerError as exc:
                if not exc.lost or attempt == 2:
                    raise

    def _connected(self) -> None:
        """Connect when there is no usable connection."""
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
        for statement in _DEFERRED_SCHEMA:
            self._execute(statement.format(real=self.real))
        self._execute(_SECRETS_SCHEMA.format(blob=self.blob))
        self._execute(_NEW_SECRET, (_HANDLE_SECRET, secrets.token_bytes(32)))

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

    def decide(self, msg: StepRequest, digest: bytes) -> Answer | Run | Wait:
        """What to do with ``msg`` (inside the open transaction). Writes the tombstone and no-op
        of a compensation with nothing to undo, marks an in-doubt forward ``abandoned`` and a
        waiting one ``cancelled`` once its compensation runs."""
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
            if row.outcome == CANCELLED:
                return Answer(
                    "rejected",
                    reason="refused: the step was waiting for its completion and its "
                    "compensation has begun",
                )
            if row.digest != digest:
                return Answer(
                    "rejected",
                    reason=f"idempotency key {msg.key!r} was used "
                    "before with a different action or payload",
                )
            if row.outcome == DEFERRED:
                return _WAIT
            if row.outcome != STARTED:
                return answer_of(row.outcome, row.result, row.reason, replayed=True)
            started = True  # an external call whose outcome is unknown: it runs again
        if msg.kind != "undo":
            return _RUN_AGAIN if started else _RUN
        forward = self._lookup(msg.forward_key)
        if forward is not None and forward.outcome == DEFERRED:
            # Still waiting: cancel its handle (a completion from now on is refused), and undo
            # what its handler wrote when it deferred. On PostgreSQL a completion may have
            # committed since the lookup: then the row is no longer deferred, and is read again.
            if self._execute(_CANCEL, (_now(), msg.forward_key)).rowcount == 1:
                return Run(started, FORWARD_CANCELLED)
            forward = self._lookup(msg.forward_key)
        if forward is not None and forward.outcome == APPLIED:
            return Run(started, FORWARD_APPLIED, _decoded(forward.result))
        if forward is not None and forward.outcome == CANCELLED:
            return Run(started, FORWARD_CANCELLED)  # a compensation that failed, run again
        if forward is not None and forward.outcome in (STARTED, ABANDONED):
            # It may have taken effect outside this database: compensate it, and refuse the
            # forward from now on (a late retry must not apply it after its compensation).
            self._execute(_ABANDON, (msg.forward_key,))
            return Run(started, FORWARD_UNKNOWN)
        if (
            forward is not None
            and forward.outcome in (REJECTED, FAILED)
            and self._execute(_WAS_DEFERRED, (msg.forward_key,)).fetchone() is not None
        ):
            # Refused (or failed) when it was completed, after its handler had deferred and
            # committed what it wrote: that is there to undo, unlike an immediate refusal's.
            return Run(started, FORWARD_REJECTED if forward.outcome == REJECTED else FORWARD_FAILED)
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
        if not self.settle(key, outcome, result, reason):
            raise LedgerError(
                f"ledger {self.where}: the row of key {key!r} is no longer 'started' "
                "(another process recorded it meanwhile)"
            )

    def settle(
        self, key: str, outcome: str, result: bytes | None = None, reason: str | None = None
    ) -> bool:
        """Replace the ``started`` row of ``key`` with ``outcome``; False when the row is no
        longer ``started`` (a completion by handle came first: see :meth:`recorded`)."""
        return bool(self._execute(_FINISH, (outcome, result, reason, _now(), key)).rowcount == 1)

    def recorded(self, key: str) -> Answer | None:
        """What the row of ``key`` answers, when it holds a final outcome."""
        row = self._lookup(key)
        if row is None or row.outcome not in COMPLETIONS:
            return None
        return answer_of(row.outcome, row.result, row.reason, replayed=True)

    # --- deferred steps -----------------------------------------------------------------------

    def defer(self, key: str, participant: str, handle: str) -> None:
        """Note that ``key`` (its row just recorded ``deferred``) belongs to a deferred step of
        ``participant`` with ``handle``, so that its completion is found by :meth:`news`."""
        self._execute(_DEFER, (key, participant, handle, _now()))

    def handle_secret(self) -> bytes:
        """The secret this database's handles are signed with (made by :meth:`create_schema`)."""
        self._connected()
        row = self._execute(_SECRET, (_HANDLE_SECRET,)).fetchone()
        if row is None:
            raise LedgerError(f"ledger {self.where} has no handle secret")
        return bytes(row[0])

    def complete(
        self,
        key: str,
        participant: str,
        handle: str,
        outcome: str,
        result: bytes | None,
        reason: str | None,
    ) -> bool:
        """Record the completion of deferred step ``key`` (inside the open transaction), and
        flag it for ``participant``; False when its row is not waiting (see :meth:`row_of`)."""
        if self._execute(_COMPLETE, (outcome, result, reason, _now(), key)).rowcount != 1:
            return False
        self._execute(_FLAG, (key, participant, handle, _now()))
        return True

    def row_of(self, key: str) -> tuple[str, bytes | None, str | None] | None:
        """(outcome, result, reason) of the row of ``key``, if any."""
        row = self._lookup(key)
        return None if row is None else (row.outcome, row.result, row.reason)

    def news(self, participant: str) -> list[Completed]:
        """The deferred steps of ``participant`` completed since it last looked (a read of its
        own outside a transaction, when none is open)."""
        self._connected()
        rows = self._execute(_NEWS, (participant,)).fetchall()
        return [Completed(str(k), str(o), r, reason) for k, o, r, reason in rows]

    def noticed(self, key: str) -> None:
        """Clear the flag :meth:`complete` set (inside the open transaction)."""
        self._execute(_NOTICED, (key,))


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
