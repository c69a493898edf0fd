"""What the SQL backends share: the columns they select, and rows turned into records and back.

Each SQL backend (SQLite, PostgreSQL) keeps its own statements and transactions; the shape of a
row, its checksums and its decoding live here once, so both backends store and read the same
bytes and report damage in the same words.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

from understudy import codec
from understudy.errors import CorruptRecord, ShardCountMismatch
from understudy.persistence import integrity
from understudy.persistence.base import (
    APPLIED,
    COMMAND_STATES,
    COMPENSATED,
    COMPLETED,
    EVERYONE,
    FAILED,
    PENDING,
    REFUSED,
    TERMINAL_STATUSES,
    CommandDone,
    CommandRecord,
    Event,
    EventRecord,
    OperatorCommand,
    SagaRecord,
    Transition,
)

SAGA_COLUMNS = (
    "saga_id, definition, version, status, payload, snapshot, snapshot_version, incarnation, "
    "recovery_attempts, reason, created_at, updated_at, payload_sum, snapshot_sum"
)
EVENT_COLUMNS = "seq, saga_id, kind, at, step, attempt, incarnation, detail, detail_sum"
#: The columns an event row is inserted with, in the order :func:`event_rows` gives them.
EVENT_INSERT_COLUMNS = "saga_id, kind, at, step, attempt, incarnation, detail, detail_sum"
#: The columns a command row is inserted with, in the order :func:`command_row` gives them:
#: what was submitted, its checksum, and its state (pending).
COMMAND_INSERT_COLUMNS = "saga_id, shard, verb, args, who, why, at, command_sum, state"
#: A command row as read: its id, the inserted columns, then what its saga's owner writes.
COMMAND_COLUMNS = f"id, {COMMAND_INSERT_COLUMNS}, outcome, done_at"
#: The statuses even a Transition with ``reopen`` may not leave: a saga parked as failed can be
#: taken up again, one that completed or compensated has done everything it ever will.
CLOSED_STATUSES = (COMPLETED, COMPENSATED)
#: The statuses a Transition with ``unwind`` may not leave: it takes up a child saga that
#: completed, to compensate it; nothing takes up a compensated one, and a parked one waits for
#: an operator.
UNWOUND_STATUSES = (COMPENSATED, FAILED)


#: Every fence a Transition can have (one statement each, chosen by :func:`fenced_statuses`).
FENCES: tuple[tuple[str, ...], ...] = (TERMINAL_STATUSES, CLOSED_STATUSES, UNWOUND_STATUSES)


def fenced_statuses(write: Transition) -> tuple[str, ...]:
    """The statuses of a saga row that ``write`` must not change."""
    if write.unwind:
        return UNWOUND_STATUSES
    return CLOSED_STATUSES if write.reopen else TERMINAL_STATUSES


def sql_list(statuses: Sequence[str]) -> str:
    """``statuses`` as an SQL list of literals, ``('a', 'b')`` (understudy's own constants,
    never input)."""
    return "(" + ", ".join(f"'{s}'" for s in statuses) + ")"


CHUNK = 500  # ids per IN (...) list: well under every backend's limit on bound parameters


def saga_record(row: Sequence[Any]) -> SagaRecord:
    """A :class:`SagaRecord` from a row selected as :data:`SAGA_COLUMNS`, checked against its
    checksums (a damaged row comes back with ``corrupt`` set, never raised)."""
    (
        saga_id,
        definition,
        version,
        status,
        payload,
        snapshot,
        snapshot_version,
        incarnation,
        recovery_attempts,
        reason,
        created_at,
        updated_at,
        payload_check,
        snapshot_check,
    ) = row
    payload = bytes(payload)
    snapshot = None if snapshot is None else bytes(snapshot)
    damage = integrity.saga_row_damage(
        saga_id,
        definition,
        version,
        status,
        payload,
        payload_check,
        snapshot,
        snapshot_version,
        reason,
        snapshot_check,
    )
    return SagaRecord(
        saga_id,
        definition,
        version,
        status,
        payload,
        snapshot,
        snapshot_version,
        incarnation,
        recovery_attempts,
        reason,
        created_at,
        updated_at,
        damage,
    )


def saga_sums(
    saga_id: str,
    definition: str,
    version: int,
    status: str,
    payload: bytes,
    snapshot: bytes | None,
    snapshot_version: int,
    reason: str | None,
) -> tuple[int, int]:
    """The payload and snapshot checksums of a saga row."""
    return (
        integrity.payload_sum(saga_id, definition, version, payload),
        integrity.snapshot_sum(saga_id, status, snapshot_version, snapshot, reason),
    )


def event_record(row: Sequence[Any]) -> EventRecord:
    """An :class:`EventRecord` from a row selected as :data:`EVENT_COLUMNS`; a row that fails
    its checksum or does not decode comes back with ``corrupt`` set and an empty detail."""
    seq, saga_id, kind, at, step, attempt, incarnation, detail, detail_check = row
    detail = None if detail is None else bytes(detail)
    if detail_check != integrity.event_sum(saga_id, kind, step, attempt, incarnation, detail):
        return EventRecord(
            seq,
            saga_id,
            kind,
            at,
            step,
            attempt,
            incarnation,
            {},
            f"event {seq} of saga {saga_id!r} fails its checksum (the stored row is damaged)",
        )
    try:
        decoded = codec.decode(detail, f"event {seq} of saga {saga_id!r}") if detail else {}
    except CorruptRecord as exc:
        return EventRecord(seq, saga_id, kind, at, step, attempt, incarnation, {}, str(exc))
    return EventRecord(seq, saga_id, kind, at, step, attempt, incarnation, decoded)


def event_rows(saga_id: str, incarnation: int, events: Sequence[Event]) -> list[tuple[Any, ...]]:
    """Insert rows (as :data:`EVENT_INSERT_COLUMNS`) for ``events``, each with its checksum."""
    rows: list[tuple[Any, ...]] = []
    for e in events:
        detail = codec.encode(e.detail, "event detail") if e.detail else None
        check = integrity.event_sum(saga_id, e.kind, e.step, e.attempt, incarnation, detail)
        rows.append((saga_id, e.kind, e.at, e.step, e.attempt, incarnation, detail, check))
    return rows


def claimed_event_rows(
    records: Sequence[SagaRecord], recovery: bool, at: float
) -> list[tuple[Any, ...]]:
    """The ``claimed`` event of each saga just claimed, as insert rows."""
    pid = os.getpid()
    rows: list[tuple[Any, ...]] = []
    for record in records:
        detail = {"recovery": recovery, "recovery_attempts": record.recovery_attempts, "pid": pid}
        rows += event_rows(
            record.saga_id, record.incarnation, [Event("claimed", at, detail=detail)]
        )
    return rows


def command_row(command: OperatorCommand) -> tuple[Any, ...]:
    """An insert row (as :data:`COMMAND_INSERT_COLUMNS`) for a command just submitted: pending,
    its arguments encoded (unencodable ones raise :class:`~understudy.errors.PayloadError`)."""
    args = codec.encode(command.args, "command arguments")
    check = integrity.command_sum(
        command.saga_id, command.shard, command.verb, args, command.who, command.why
    )
    return (
        command.saga_id,
        command.shard,
        command.verb,
        args,
        command.who,
        command.why,
        float(command.at),
        check,
        PENDING,
    )


def submitted(command_id: int, row: tuple[Any, ...]) -> CommandRecord:
    """The record of a command just inserted as ``row`` (:func:`command_row`) under
    ``command_id``: decoded from the stored bytes, as a later read returns it."""
    return command_record((command_id, *row, None, None))


def command_record(row: Sequence[Any]) -> CommandRecord:
    """A :class:`CommandRecord` from a row selected as :data:`COMMAND_COLUMNS`; a row that fails
    its checksum, holds arguments that do not decode to a dict, or has no known state comes back
    with ``corrupt`` set (and empty arguments), never raised."""
    command_id, saga_id, shard, verb, args, who, why, at, check, state, outcome, done_at = row
    args = bytes(args)
    decoded: Any = {}
    damage = None
    what = f"command {command_id} of saga {saga_id!r}"
    if check != integrity.command_sum(saga_id, shard, verb, args, who, why):
        damage = f"{what} fails its checksum (the stored row is damaged)"
    elif state not in COMMAND_STATES:
        damage = f"{what} has the unknown state {str(state)[:20]!r} (the stored row is damaged)"
    else:
        try:
            decoded = codec.decode(args, what)
        except CorruptRecord as exc:
            damage = str(exc)
        if not isinstance(decoded, dict):
            decoded, damage = {}, damage or f"the arguments of {what} are not a map"
    return CommandRecord(
        command_id, saga_id, shard, verb, decoded, who, why, at, state, outcome, done_at, damage
    )


def check_done(write: CommandDone) -> None:
    """A CommandDone must end its command: one that wrote ``pending`` again would let the
    command be applied a second time."""
    if write.state not in (APPLIED, REFUSED):
        raise ValueError(
            f"command {write.command_id} of saga {write.saga_id!r} can only be marked "
            f"{APPLIED!r} or {REFUSED!r}, not {write.state!r}"
        )


def command_query(
    mark: str, shard: int | None, saga_id: str | None, pending: bool, limit: int
) -> tuple[str, tuple[Any, ...]]:
    """The query of :meth:`~understudy.persistence.base.SagaStore.commands` and its parameters
    (``mark`` is the backend's placeholder). The pending test is written out, not bound: only
    then do both databases use the partial index of pending commands a saga host polls."""
    where: list[str] = []
    params: list[Any] = []
    if pending:
        where.append(f"state = '{PENDING}'")
    if shard is not None:
        where.append(f"shard = {mark}")
        params.append(shard)
    if saga_id is not None:
        where.append(f"saga_id = {mark}")
        params.append(saga_id)
    sql = f"SELECT {COMMAND_COLUMNS} FROM understudy_commands"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id"
    if limit >= 0:  # a negative limit is no limit, as list_sagas has it
        sql += f" LIMIT {mark}"
        params.append(limit)
    return sql, tuple(params)


def chunks(items: Sequence[str], mark: str) -> Iterator[tuple[str, tuple[str, ...]]]:
    """``items`` in chunks of at most :data:`CHUNK`: each as its placeholder list ("?, ?" or
    "%s, %s", by ``mark``) and its values."""
    for start in range(0, len(items), CHUNK):
        chunk = tuple(items[start : start + CHUNK])
        yield ", ".join([mark] * len(chunk)), chunk


def pack_blame(blamed: Sequence[str] | None) -> bytes:
    """A shard's blame as stored: msgpack of the list of saga ids, or of nil for everyone."""
    return codec.encode(None if blamed is EVERYONE else list(blamed), "blame")


def unpack_blame(data: bytes | None) -> tuple[str, ...] | None:
    """The blame as stored back to ``Lease.blamed``; missing or unreadable blame is everyone."""
    if data is None:
        return EVERYONE
    try:
        value = codec.decode(bytes(data), "shard blame")
    except CorruptRecord:
        return EVERYONE
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        return EVERYONE
    return tuple(value)


def pack_about(about: dict[str, Any]) -> bytes:
    return codec.encode(about, "lease holder")


def unpack_about(data: bytes | None) -> dict[str, Any]:
    if data is None:
        return {}
    try:
        value = codec.decode(bytes(data), "lease holder")
    except CorruptRecord:
        return {}
    return value if isinstance(value, dict) else {}


def shard_count_mismatch(where: str, fixed: int, asked: int) -> ShardCountMismatch:
    return ShardCountMismatch(
        f"saga store {where!r} was created with {fixed} shard(s), and this start asks for "
        f"{asked}: sagas are assigned to shards by that count, so it cannot change; start "
        f"understudy with shards={fixed}, or use a new store for another count"
    )
