"""The SQLite saga store: the embedded default, one file, no server.

WAL mode with ``synchronous=FULL`` by default: a commit that returned survives power loss, and
readers (``understudy list``, status queries) never block the writer. Each process opens its own
connection and writes through it alone; many sagas share one transaction through
:meth:`SQLiteStore.apply`, which is where the throughput comes from (one FULL commit costs about
0.2 ms here whether it carries one row or a hundred).
"""

from __future__ import annotations

import os
import sqlite3
import struct
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import attrs

from understudy import failpoints
from understudy.errors import CorruptRecord, LeaseLost, StoreError, StoreUnavailable
from understudy.persistence import integrity
from understudy.persistence.base import (
    ACTIVE_STATUSES,
    EVERYONE,
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
)
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
from understudy.persistence.sqlite_eventlog import SQLiteEventLog, schema_statements

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS understudy_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS understudy_sagas (
    saga_id TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    version INTEGER NOT NULL,
    status TEXT NOT NULL,
    payload BLOB NOT NULL,
    snapshot BLOB,
    snapshot_version INTEGER NOT NULL DEFAULT 0,
    incarnation INTEGER NOT NULL DEFAULT 1,
    recovery_attempts INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    payload_sum INTEGER,
    snapshot_sum INTEGER
);
CREATE INDEX IF NOT EXISTS understudy_sagas_active
    ON understudy_sagas (created_at) WHERE status IN ('running', 'compensating');
CREATE INDEX IF NOT EXISTS understudy_sagas_status ON understudy_sagas (status, created_at);
CREATE TABLE IF NOT EXISTS understudy_events (
    seq INTEGER PRIMARY KEY,
    saga_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    at REAL NOT NULL,
    step INTEGER,
    attempt INTEGER,
    incarnation INTEGER NOT NULL,
    detail BLOB,
    detail_sum INTEGER
);
CREATE INDEX IF NOT EXISTS understudy_events_saga ON understudy_events (saga_id, seq);
CREATE TABLE IF NOT EXISTS understudy_shards (
    shard INTEGER PRIMARY KEY,
    holder TEXT NOT NULL DEFAULT '',
    epoch INTEGER NOT NULL DEFAULT 0,
    expires_at REAL NOT NULL DEFAULT 0,
    about BLOB,
    blame BLOB
);
CREATE TABLE IF NOT EXISTS understudy_commands (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    saga_id TEXT NOT NULL,
    shard INTEGER NOT NULL,
    verb TEXT NOT NULL,
    args BLOB NOT NULL,
    who TEXT NOT NULL,
    why TEXT NOT NULL,
    at REAL NOT NULL,
    command_sum INTEGER,
    state TEXT NOT NULL,
    outcome TEXT,
    done_at REAL
);
CREATE INDEX IF NOT EXISTS understudy_commands_pending
    ON understudy_commands (shard, id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS understudy_commands_saga ON understudy_commands (saga_id, id);
"""

_TERMINAL_SQL = sql_list(TERMINAL_STATUSES)
_ACTIVE_SQL = sql_list(ACTIVE_STATUSES)
_EVENTS_SQL = f"SELECT {EVENT_COLUMNS} FROM understudy_events WHERE saga_id = ? ORDER BY seq"
_INSERT_EVENT = (
    f"INSERT INTO understudy_events ({EVENT_INSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
# A Transition's fence: the writer's incarnation, not terminal (not closed, with reopen: a saga
# parked as failed is taken up again; not compensated or parked, with unwind: a completed child
# saga is compensated), an older snapshot.
_TRANSITION = (
    "UPDATE understudy_sagas SET status = ?, snapshot = ?, snapshot_version = ?, "
    "recovery_attempts = ?, reason = ?, updated_at = ?, snapshot_sum = ? "
    "WHERE saga_id = ? AND incarnation = ? AND status NOT IN {} AND snapshot_version < ?"
)
_TRANSITIONS = {fence: _TRANSITION.format(sql_list(fence)) for fence in FENCES}
# A command is done once: only while pending, and only while its saga's row is at the writer's
# incarnation (NULL: whatever the row, or none).
_COMMAND_DONE = (
    "UPDATE understudy_commands SET state = ?, outcome = ?, done_at = ? "
    f"WHERE id = ? AND saga_id = ? AND state = '{PENDING}' AND (? IS NULL OR EXISTS "
    "(SELECT 1 FROM understudy_sagas WHERE saga_id = ? AND incarnation = ?))"
)
_INSERT_COMMAND = (
    f"INSERT INTO understudy_commands ({COMMAND_INSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35)
_NOBODY = pack_blame(())
#: A blame record in the side file: epoch, length, checksum, then the packed blame.
_BLAME_HEADER = struct.Struct(">qIq")


def _translate(exc: sqlite3.Error, path: str, doing: str) -> StoreError:
    """Turn a driver error into the backend-neutral error tree, naming the file and the fix."""
    text = str(exc)
    lowered = text.lower()
    if "locked" in lowered or "busy" in lowered:
        return StoreUnavailable(
            f"saga store {path!r} is locked by another connection while {doing} ({text}); "
            "stop the other writer or raise busy_timeout"
        )
    if "readonly" in lowered or "read-only" in lowered or "unable to open" in lowered:
        return StoreUnavailable(
            f"saga store {path!r} cannot be written while {doing} ({text}); check that the file "
            "and its directory are writable by this process"
        )
    if "malformed" in lowered or "not a database" in lowered:
        return CorruptRecord(f"saga store {path!r} is not a valid database ({text})")
    if "disk" in lowered or "full" in lowered or "i/o" in lowered:
        return StoreUnavailable(f"saga store {path!r} failed while {doing}: {text}")
    if "interrupted" in lowered:  # a statement cut short (a timeout): it may pass next time
        return StoreUnavailable(f"saga store {path!r} was interrupted while {doing}: {text}")
    return StoreError(f"saga store {path!r} failed while {doing}: {text}")


class SQLiteStore(SQLiteEventLog, SagaStore):
    """A :class:`SagaStore` in one SQLite file.

    ``synchronous`` is ``"FULL"`` by default (durable across power loss); ``"NORMAL"`` survives a
    process crash but may lose the last commits on power loss. ``busy_timeout`` is how long a
    write waits for another process's lock before :class:`StoreUnavailable` is raised.

    Leases use this machine's clock: a SQLite file is only ever shared by processes of one
    machine. A shard's blame between commits lives in a small side file next to the database
    (``sagas.db.shard0.blame``), written without a commit: recording a batch's sagas before each
    commit would otherwise cost a second transaction per batch. The file counts only while its
    epoch is the shard's, so a stale one is harmless.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "FULL",
        busy_timeout: float = 5.0,
        read_only: bool = False,
    ) -> None:
        self.path = os.fspath(path)
        self._blame_files: dict[int, int] = {}
        self._blamed: set[int] = set()  # shards whose side file holds a blame to clear
        # Opening for writing creates the commands table; a file from before it has none, which
        # a read-only store looks for again when asked (see _has_commands).
        self._commands_table = not read_only
        self._event_log_table = not read_only  # likewise the event log's (choreography)
        if read_only:
            self._open_read_only(busy_timeout)
            return
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"synchronous must be FULL, NORMAL or EXTRA, got {synchronous!r}")
        try:
            self._conn = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise _translate(exc, self.path, "opening") from exc
        try:
            self._set_up(synchronous.upper(), busy_timeout)
        except sqlite3.Error as exc:
            self._conn.close()
            raise _translate(exc, self.path, "opening") from exc
        except StoreError:
            self._conn.close()
            raise

    def _set_up(self, synchronous: str, busy_timeout: float) -> None:
        """Switch to WAL, create or upgrade the schema. Two processes creating one fresh file at
        once contend for locks that SQLite's busy handler does not wait for (it returns BUSY at
        once where waiting could deadlock), so these steps retry until ``busy_timeout``."""
        deadline = time.monotonic() + busy_timeout
        while True:
            try:
                mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        if mode.lower() != "wal":
            raise StoreUnavailable(
                f"saga store {self.path!r} could not switch to WAL mode (got {mode!r}); "
                "the file system may not support it (network file systems do not)"
            )
        self._conn.execute(f"PRAGMA synchronous={synchronous}")
        while True:
            try:
                found = self._create_or_upgrade()
                break
            except StoreUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        if found != SCHEMA_VERSION:
            raise StoreError(
                f"saga store {self.path!r} has schema version {found}, this understudy expects "
                f"{SCHEMA_VERSION}; upgrade understudy or use a new file"
            )

    def _create_or_upgrade(self) -> int:
        with self._transaction("creating the schema") as conn:
            row = None
            if conn.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'understudy_meta'"
            ).fetchone():
                row = conn.execute(
                    "SELECT value FROM understudy_meta WHERE key = 'schema_version'"
                ).fetchone()
            if row is not None and int(row[0]) == 1:
                _upgrade_from_1(conn)
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            for statement in schema_statements():  # the choreography event log
                conn.execute(statement)
            conn.execute(
                "INSERT OR IGNORE INTO understudy_meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            found = conn.execute(
                "SELECT value FROM understudy_meta WHERE key = 'schema_version'"
            ).fetchone()[0]
        return int(found)

    def _open_read_only(self, busy_timeout: float) -> None:
        """Open for queries only (the CLI, status reads): never creates, writes or waits for
        the writer's lock, so it works on a busy or read-only file."""
        if not os.path.isfile(self.path):
            raise StoreError(f"saga store {self.path!r} does not exist")
        try:
            self._conn = sqlite3.connect(
                f"file:{self.path}?mode=ro",
                uri=True,
                timeout=busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            row = self._conn.execute(
                "SELECT value FROM understudy_meta WHERE key = 'schema_version'"
            ).fetchone()
        except sqlite3.Error as exc:
            raise _translate(exc, self.path, "opening for reading") from exc
        if row is None or int(row[0]) != SCHEMA_VERSION:
            self._conn.close()
            hint = (
                "; open it once for writing (start understudy on it) to upgrade it"
                if row is not None and int(row[0]) < SCHEMA_VERSION
                else ""
            )
            raise StoreError(
                f"saga store {self.path!r} has schema version {row and row[0]}, this understudy "
                f"expects {SCHEMA_VERSION}{hint}"
            )

    @contextmanager
    def _transaction(self, doing: str) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        try:
            # IMMEDIATE takes the write lock up front, so a busy database fails here, before
            # any statement of the batch ran, and busy_timeout applies to the whole wait.
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _translate(exc, self.path, doing) from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise _translate(exc, self.path, doing) from exc
            raise

    def _check_lease(self, conn: sqlite3.Connection, lease: Lease | None) -> None:
        """Inside a write transaction (which SQLite serialises): the lease must still be the
        shard's, or nothing of the transaction may apply."""
        if lease is None:
            return
        row = conn.execute(
            "SELECT epoch, holder FROM understudy_shards WHERE shard = ?", (lease.shard,)
        ).fetchone()
        if row is None or row[0] != lease.epoch:
            raise _lost(lease, row)

    def apply(self, writes: Sequence[Write], lease: Lease | None = None) -> list[bool]:
        results: list[bool] = []
        events: list[tuple[Any, ...]] = []
        with self._transaction(f"writing {len(writes)} saga record(s)") as conn:
            self._check_lease(conn, lease)
            for write in writes:
                incarnation: int | None
                if isinstance(write, NewSaga):
                    payload_check, snapshot_check = saga_sums(
                        write.saga_id,
                        write.definition,
                        write.version,
                        RUNNING,
                        write.payload,
                        None,
                        0,
                        None,
                    )
                    cursor = conn.execute(
                        "INSERT OR IGNORE INTO understudy_sagas (saga_id, definition, version, "
                        "status, payload, snapshot_version, incarnation, created_at, updated_at, "
                        "payload_sum, snapshot_sum) "
                        "VALUES (?, ?, ?, 'running', ?, 0, 1, ?, ?, ?, ?)",
                        (
                            write.saga_id,
                            write.definition,
                            write.version,
                            write.payload,
                            write.at,
                            write.at,
                            payload_check,
                            snapshot_check,
                        ),
                    )
                    applied = cursor.rowcount == 1
                    incarnation = 1
                elif isinstance(write, Transition):
                    cursor = conn.execute(
                        _TRANSITIONS[fenced_statuses(write)],
                        (
                            write.status,
                            write.snapshot,
                            write.snapshot_version,
                            write.recovery_attempts,
                            write.reason,
                            write.at,
                            integrity.snapshot_sum(
                                write.saga_id,
                                write.status,
                                write.snapshot_version,
                                write.snapshot,
                                write.reason,
                            ),
                            write.saga_id,
                            write.incarnation,
                            write.snapshot_version,
                        ),
                    )
                    applied = cursor.rowcount == 1
                    incarnation = write.incarnation
                elif isinstance(write, CommandDone):
                    applied, incarnation = _command_done(conn, write)
                else:  # pragma: no cover - guarded by the type checker
                    raise TypeError(f"not a store write: {write!r}")
                if applied and write.events and incarnation is not None:
                    events.extend(event_rows(write.saga_id, incarnation, write.events))
                results.append(applied)
            # One statement for the whole batch's timeline rows, not one per saga.
            conn.executemany(_INSERT_EVENT, events)
            failpoints.sqlite_error(failpoints.hit("store.in_transaction"))
        if lease is not None and lease.shard in self._blamed:
            self._write_blame(lease, _NOBODY)  # the batch is durable: its sagas are innocent
            self._blamed.discard(lease.shard)
        try:
            failpoints.sqlite_error(failpoints.hit("store.after_commit"))
        except sqlite3.Error as exc:
            raise _translate(exc, self.path, "committing saga records") from exc
        return results

    def note(self, notes: Sequence[Note], lease: Lease | None = None) -> list[bool]:
        results: list[bool] = []
        events: list[tuple[Any, ...]] = []
        with self._transaction(f"noting events of {len(notes)} saga(s)") as conn:
            self._check_lease(conn, lease)  # and the blame stays as it is
            for note in notes:
                found = conn.execute(
                    "SELECT 1 FROM understudy_sagas WHERE saga_id = ? AND incarnation = ? "
                    f"AND status NOT IN {_TERMINAL_SQL}",
                    (note.saga_id, note.incarnation),
                ).fetchone()
                if found is not None:
                    events.extend(event_rows(note.saga_id, note.incarnation, note.events))
                results.append(found is not None)
            conn.executemany(_INSERT_EVENT, events)
        return results

    # --- operators' commands ----------------------------------------------------------------

    def submit(self, command: OperatorCommand) -> CommandRecord:
        row = command_row(command)
        doing = f"submitting a command for saga {command.saga_id!r}"
        if not self._has_commands():
            # Only a read-only store of a file from before the table lacks it: say what any
            # write to a read-only store says, not that a table is missing.
            raise _translate(
                sqlite3.OperationalError("attempt to write a readonly database"), self.path, doing
            )
        # No lease: anyone may submit. The write lock waits busy_timeout for a saga host's
        # batch, as every write does, and the commit is durable as theirs are.
        with self._transaction(doing) as conn:
            command_id = conn.execute(_INSERT_COMMAND, row).lastrowid
        assert command_id is not None  # an INSERT into a rowid table always sets it
        return submitted(command_id, row)

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
        sql, params = command_query("?", shard, saga_id, pending, limit)
        return [command_record(row) for row in self._read(sql, params)]

    def command(self, command_id: int) -> CommandRecord | None:
        if not self._has_commands():
            return None
        rows = self._read(
            f"SELECT {COMMAND_COLUMNS} FROM understudy_commands WHERE id = ?", (command_id,)
        )
        return command_record(rows[0]) if rows else None

    def _has_commands(self) -> bool:
        """Whether the commands table is there: always on a store opened for writing; on a
        read-only one of an older file, once a writer has opened it since (asked each time
        until then, so a reader started before the upgrade sees commands after it)."""
        if not self._commands_table:
            found = self._read(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'understudy_commands'"
            )
            self._commands_table = bool(found)
        return self._commands_table

    # --- sagas ------------------------------------------------------------------------------

    def get(self, saga_id: str) -> SagaRecord | None:
        row = self._read(
            f"SELECT {SAGA_COLUMNS} FROM understudy_sagas WHERE saga_id = ?", (saga_id,)
        )
        return saga_record(row[0]) if row else None

    def get_many(self, saga_ids: Sequence[str]) -> dict[str, SagaRecord]:
        found: dict[str, SagaRecord] = {}
        for marks, chunk in chunks(saga_ids, "?"):
            rows = self._read(
                f"SELECT {SAGA_COLUMNS} FROM understudy_sagas WHERE saga_id IN ({marks})", chunk
            )
            found.update((row[0], saga_record(row)) for row in rows)
        return found

    def claim_all(
        self,
        saga_ids: Sequence[str],
        *,
        recovery: bool,
        at: float,
        lease: Lease | None = None,
    ) -> dict[str, SagaRecord]:
        claimed: dict[str, SagaRecord] = {}
        with self._transaction(f"claiming {len(saga_ids)} saga(s)") as conn:
            self._check_lease(conn, lease)
            for marks, chunk in chunks(saga_ids, "?"):
                update = (
                    "UPDATE understudy_sagas SET incarnation = incarnation + 1, "
                    "recovery_attempts = recovery_attempts + ?, updated_at = ? "
                    f"WHERE saga_id IN ({marks}) AND status NOT IN {_TERMINAL_SQL}"
                )
                params = (1 if recovery else 0, at, *chunk)
                if _HAS_RETURNING:
                    # One statement per chunk: the startup scan claims thousands of sagas.
                    rows = conn.execute(f"{update} RETURNING {SAGA_COLUMNS}", params).fetchall()
                else:  # SQLite before 3.35: the same update, then read the rows back
                    conn.execute(update, params)
                    rows = conn.execute(
                        f"SELECT {SAGA_COLUMNS} FROM understudy_sagas WHERE saga_id IN "
                        f"({marks}) AND status NOT IN {_TERMINAL_SQL}",
                        chunk,
                    ).fetchall()
                claimed.update((row[0], saga_record(row)) for row in rows)
            conn.executemany(
                _INSERT_EVENT, claimed_event_rows(list(claimed.values()), recovery, at)
            )
            failpoints.sqlite_error(failpoints.hit("store.claim"))
        return claimed

    # --- ownership --------------------------------------------------------------------------

    def fix_shards(self, shards: int) -> int:
        if shards < 1:
            raise ValueError(f"shards must be at least 1, got {shards}")
        with self._transaction("fixing the shard count") as conn:
            row = conn.execute("SELECT value FROM understudy_meta WHERE key = 'shards'").fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO understudy_meta (key, value) VALUES ('shards', ?)", (str(shards),)
                )
                # A store that already holds sagas (one from before shards were fixed) knows
                # nothing of who died doing what: its first holders blame everyone.
                has_sagas = conn.execute("SELECT 1 FROM understudy_sagas LIMIT 1").fetchone()
                conn.executemany(
                    "INSERT OR IGNORE INTO understudy_shards (shard, blame) VALUES (?, ?)",
                    [(n, None if has_sagas else _NOBODY) for n in range(shards)],
                )
                return shards
        fixed = int(row[0])
        if fixed != shards:
            raise shard_count_mismatch(self.path, fixed, shards)
        return fixed

    def now(self) -> float:
        return time.time()

    def leases(self) -> list[Lease]:
        rows = self._read(
            "SELECT shard, holder, epoch, expires_at, about, blame FROM understudy_shards "
            "ORDER BY shard"
        )
        return [
            Lease(
                shard,
                holder,
                epoch,
                expires_at,
                self._current_blame(shard, epoch, blame),
                unpack_about(about),
            )
            for shard, holder, epoch, expires_at, about, blame in rows
        ]

    def acquire(
        self, shard: int, holder: str, ttl: float, about: dict[str, Any] | None = None
    ) -> Lease | None:
        now = self.now()
        with self._transaction(f"acquiring shard {shard}") as conn:
            row = conn.execute(
                "SELECT holder, epoch, expires_at, blame FROM understudy_shards WHERE shard = ?",
                (shard,),
            ).fetchone()
            if row is None:
                raise StoreError(
                    f"saga store {self.path!r} has no shard {shard}; fix the shard count first"
                )
            current, epoch, expires_at, blame = row
            if current and current != holder and expires_at > now:
                return None
            blamed = self._current_blame(shard, epoch, blame)
            lease = Lease(shard, holder, epoch + 1, now + ttl, blamed, dict(about or {}))
            conn.execute(
                "UPDATE understudy_shards SET holder = ?, epoch = ?, expires_at = ?, about = ?, "
                "blame = NULL WHERE shard = ?",
                (holder, lease.epoch, lease.expires_at, pack_about(lease.about), shard),
            )
            # Until the new holder says otherwise, its death blames everyone (a death while
            # recovering): the side file must not keep the previous holder's word, and the
            # next successful apply clears it.
            self._write_blame(lease, None)
            self._blamed.add(shard)
        return lease

    def renew(self, lease: Lease, ttl: float, about: dict[str, Any] | None = None) -> Lease:
        expires_at = self.now() + ttl
        about = lease.about if about is None else dict(about)
        with self._transaction(f"renewing the lease of shard {lease.shard}") as conn:
            self._check_lease(conn, lease)
            conn.execute(
                "UPDATE understudy_shards SET expires_at = ?, about = ? WHERE shard = ?",
                (expires_at, pack_about(about), lease.shard),
            )
        return attrs.evolve(lease, expires_at=expires_at, about=about)

    def release(self, lease: Lease) -> None:
        with self._transaction(f"releasing shard {lease.shard}") as conn:
            cursor = conn.execute(
                "UPDATE understudy_shards SET holder = '', expires_at = 0, blame = ? "
                "WHERE shard = ? AND epoch = ?",
                (_NOBODY, lease.shard, lease.epoch),
            )
            if cursor.rowcount == 1:
                self._write_blame(lease, _NOBODY)

    def expire(self, shard: int, epoch: int) -> None:
        with self._transaction(f"expiring the lease of shard {shard}") as conn:
            conn.execute(
                "UPDATE understudy_shards SET expires_at = 0 WHERE shard = ? AND epoch = ?",
                (shard, epoch),
            )

    def blame(self, lease: Lease, saga_ids: Sequence[str] | None) -> None:
        row = self._read(
            "SELECT epoch, holder FROM understudy_shards WHERE shard = ?", (lease.shard,)
        )
        if not row or row[0][0] != lease.epoch:
            raise _lost(lease, row[0] if row else None)
        self._write_blame(lease, pack_blame(saga_ids))
        self._blamed.add(lease.shard)

    def _blame_fd(self, shard: int) -> int:
        fd = self._blame_files.get(shard)
        if fd is None:
            fd = os.open(f"{self.path}.shard{shard}.blame", os.O_RDWR | os.O_CREAT, 0o644)
            self._blame_files[shard] = fd
        return fd

    def _write_blame(self, lease: Lease, packed: bytes | None) -> None:
        """One pwrite of (epoch, blame): the page cache keeps it through a SIGKILL of this
        process, which is all blame needs (no fsync: a power loss restarts every saga)."""
        data = b"" if packed is None else packed
        header = _BLAME_HEADER.pack(
            lease.epoch, len(data) if packed is not None else 0xFFFFFFFF, integrity.checksum(data)
        )
        try:
            os.pwrite(self._blame_fd(lease.shard), header + data, 0)
        except OSError as exc:
            raise StoreUnavailable(
                f"saga store {self.path!r}: cannot write the blame file of shard {lease.shard} "
                f"({exc}); check that the store's directory is writable"
            ) from exc

    def _current_blame(
        self, shard: int, epoch: int, stored: bytes | None
    ) -> tuple[str, ...] | None:
        """The side file's blame when it was written under ``epoch``, else the row's."""
        path = f"{self.path}.shard{shard}.blame"
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError:
            data = b""
        if len(data) >= _BLAME_HEADER.size:
            file_epoch, length, check = _BLAME_HEADER.unpack_from(data)
            if file_epoch == epoch:
                if length == 0xFFFFFFFF:
                    return EVERYONE
                body = data[_BLAME_HEADER.size : _BLAME_HEADER.size + length]
                if len(body) == length and integrity.checksum(body) == check:
                    return unpack_blame(body)
                return EVERYONE  # damaged: nothing narrower is known
        return unpack_blame(stored)

    # --- queries ----------------------------------------------------------------------------

    def unfinished(self) -> list[str]:
        rows = self._read(
            f"SELECT saga_id FROM understudy_sagas WHERE status IN {_ACTIVE_SQL} "
            "ORDER BY created_at, saga_id"
        )
        return [row[0] for row in rows]

    def list_sagas(self, status: str | None = None, limit: int = 100) -> list[SagaRecord]:
        if status is None:
            rows = self._read(
                f"SELECT {SAGA_COLUMNS} FROM understudy_sagas ORDER BY created_at DESC LIMIT ?",
                (limit,),
            )
        else:
            rows = self._read(
                f"SELECT {SAGA_COLUMNS} FROM understudy_sagas WHERE status = ? "
                "ORDER BY created_at DESC LIMIT ?",
                (status, limit),
            )
        return [saga_record(row) for row in rows]

    def count_by_status(self) -> dict[str, int]:
        rows = self._read("SELECT status, COUNT(*) FROM understudy_sagas GROUP BY status")
        return {status: count for status, count in rows}

    def events(self, saga_id: str) -> list[EventRecord]:
        return [event_record(row) for row in self._read(_EVENTS_SQL, (saga_id,))]

    def last_seq(self) -> int:
        # max() of the rowid primary key: one step down the table's b-tree.
        return int(self._read("SELECT coalesce(max(seq), 0) FROM understudy_events")[0][0])

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise _translate(exc, self.path, "reading") from exc

    def close(self) -> None:
        for fd in self._blame_files.values():
            os.close(fd)
        self._blame_files.clear()
        self._conn.close()


def _command_done(conn: sqlite3.Connection, write: CommandDone) -> tuple[bool, int | None]:
    """Apply ``write`` inside a batch's transaction (so it sees the batch's earlier writes):
    whether it applied, and the incarnation its events go to (None: no saga row, no events)."""
    check_done(write)
    cursor = conn.execute(
        _COMMAND_DONE,
        (
            write.state,
            write.outcome,
            write.at,
            write.command_id,
            write.saga_id,
            write.incarnation,
            write.saga_id,
            write.incarnation,
        ),
    )
    if cursor.rowcount != 1:
        return False, None
    if write.incarnation is not None:
        return True, write.incarnation  # the fence just found the row at it
    row = conn.execute(
        "SELECT incarnation FROM understudy_sagas WHERE saga_id = ?", (write.saga_id,)
    ).fetchone()
    return True, None if row is None else int(row[0])


def _is_busy(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _lost(lease: Lease, row: Sequence[Any] | None) -> LeaseLost:
    now_held = f"epoch {row[0]}, holder {row[1] or 'nobody'!r}" if row else "no such shard"
    return LeaseLost(
        f"shard {lease.shard}'s lease at epoch {lease.epoch} is no longer held ({now_held}): "
        "another saga host took the shard over; this one stops and writes nothing more"
    )


def _upgrade_from_1(conn: sqlite3.Connection) -> None:
    """Schema 1 to 2: add checksums (computed now: a row from before checksums is trusted as
    it stands, the last moment it can be) and the shard leases."""
    conn.execute("ALTER TABLE understudy_sagas ADD COLUMN payload_sum INTEGER")
    conn.execute("ALTER TABLE understudy_sagas ADD COLUMN snapshot_sum INTEGER")
    conn.execute("ALTER TABLE understudy_events ADD COLUMN detail_sum INTEGER")
    rows = conn.execute(
        "SELECT saga_id, definition, version, status, payload, snapshot, snapshot_version, "
        "reason FROM understudy_sagas"
    ).fetchall()
    conn.executemany(
        "UPDATE understudy_sagas SET payload_sum = ?, snapshot_sum = ? WHERE saga_id = ?",
        [(*saga_sums(*row), row[0]) for row in rows],
    )
    events = conn.execute(
        "SELECT seq, saga_id, kind, step, attempt, incarnation, detail FROM understudy_events"
    ).fetchall()
    conn.executemany(
        "UPDATE understudy_events SET detail_sum = ? WHERE seq = ?",
        [(integrity.event_sum(*row[1:]), row[0]) for row in events],
    )
    conn.execute("UPDATE understudy_meta SET value = '2' WHERE key = 'schema_version'")


def now() -> float:
    """Wall-clock seconds, the time base of every stored timestamp."""
    return time.time()
