"""Read-only access to the SQLite saga store from asyncio code, through aiosqlite.

asyncio code never writes the store: writes belong to the saga hosts (one writer per process per
file, group-committed). Queries from an event loop read through aiosqlite so the loop never blocks
on the file, and WAL mode means they never block the writer either.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiosqlite

from understudy.errors import StoreError
from understudy.persistence.base import EventRecord, SagaRecord
from understudy.persistence.rows import SAGA_COLUMNS, event_record, saga_record
from understudy.persistence.sqlite import _EVENTS_SQL


class AsyncSQLiteReader:
    def __init__(self, connection: aiosqlite.Connection, path: str) -> None:
        self._conn = connection
        self.path = path

    async def get(self, saga_id: str) -> SagaRecord | None:
        try:
            async with self._conn.execute(
                f"SELECT {SAGA_COLUMNS} FROM understudy_sagas WHERE saga_id = ?", (saga_id,)
            ) as cursor:
                row = await cursor.fetchone()
        except aiosqlite.Error as exc:
            raise StoreError(f"saga store {self.path!r} failed while reading: {exc}") from exc
        return saga_record(row) if row else None

    async def events(self, saga_id: str) -> list[EventRecord]:
        try:
            async with self._conn.execute(
                _EVENTS_SQL,
                (saga_id,),
            ) as cursor:
                rows = await cursor.fetchall()
        except aiosqlite.Error as exc:
            raise StoreError(f"saga store {self.path!r} failed while reading: {exc}") from exc
        return [event_record(row) for row in rows]


@asynccontextmanager
async def open_async_reader(location: str | os.PathLike[str]) -> AsyncIterator[AsyncSQLiteReader]:
    """An :class:`AsyncSQLiteReader` over the SQLite store at ``location`` (read-only)."""
    path = os.fspath(location)
    if not os.path.exists(path):
        raise StoreError(f"saga store {path!r} does not exist")
    try:
        connection = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True)
    except aiosqlite.Error as exc:
        raise StoreError(f"saga store {path!r} could not be opened: {exc}") from exc
    try:
        yield AsyncSQLiteReader(connection, path)
    finally:
        await connection.close()
