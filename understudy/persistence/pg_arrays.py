"""Columns of a batch as PostgreSQL binary arrays, packed here rather than by psycopg.

The PostgreSQL store writes a batch as a few set-based statements, each taking one array per
column (see :mod:`understudy.persistence.postgres`). psycopg dumps an array element by element in
Python, and works out each element's type as it goes: for a batch of a few dozen sagas that was
a few hundred microseconds per commit, on the one thread the in-process base runs every actor
on. Here each column is packed in PostgreSQL's binary array format (``array_send``) with
``struct``, its element type known from the statement, and handed to psycopg as finished bytes.

The format: dimensions (1; 0 for an empty array), a has-nulls flag, the element type's oid, then
per dimension its length and lower bound (1); then each element as its byte length (-1 for
NULL) and its bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from itertools import chain, repeat
from typing import Any, ClassVar

from psycopg import adapt, pq

_HEADER = struct.Struct(">iiiii")
_EMPTY = struct.Struct(">iii")
_LENGTH = struct.Struct(">i")
_NULL = _LENGTH.pack(-1)


class PackedArray(bytes):
    """A column packed as a binary array; subclasses name its array type."""

    array_oid: ClassVar[int]


class Int8Array(PackedArray):
    array_oid = 1016  # bigint[]


class Float8Array(PackedArray):
    array_oid = 1022  # double precision[]


class TextArray(PackedArray):
    array_oid = 1009  # text[]


class ByteaArray(PackedArray):
    array_oid = 1001  # bytea[]


def _header(element_oid: int, count: int, nulls: bool) -> bytes:
    if count == 0:
        return _EMPTY.pack(0, 0, element_oid)
    return _HEADER.pack(1, int(nulls), element_oid, count, 1)


def _fixed(element_oid: int, code: str, size: int) -> Callable[[Sequence[Any]], bytes]:
    """Packs a column of a fixed-width type (``code``, ``size`` bytes), NULLs allowed."""
    each = struct.Struct(f">i{code}")

    def pack(values: Sequence[Any]) -> bytes:
        count = len(values)
        if None not in values:
            # One struct call for the whole column: length and value of every element.
            body = struct.pack(
                ">" + ("i" + code) * count, *chain.from_iterable(zip(repeat(size), values))
            )
            return _header(element_oid, count, False) + body
        parts = [_header(element_oid, count, True)]
        parts += [_NULL if v is None else each.pack(size, v) for v in values]
        return b"".join(parts)

    return pack


def _varying(element_oid: int, encode: bool) -> Callable[[Sequence[Any]], bytes]:
    """Packs a column of text (``encode``: str to UTF-8) or bytea, NULLs allowed."""
    length = _LENGTH.pack

    def pack(values: Sequence[Any]) -> bytes:
        header = _header(element_oid, len(values), None in values)
        if None in values:
            parts = [header]
            for value in values:
                if value is None:
                    parts.append(_NULL)
                    continue
                one = str.encode(value) if encode else bytes(value)
                parts.append(length(len(one)))
                parts.append(one)
            return b"".join(parts)
        # No NULLs (the common case): every step runs in C, interleaving lengths and bytes.
        data: list[bytes] = list(map(str.encode, values) if encode else map(bytes, values))
        lengths = map(length, map(len, data))
        return header + b"".join(chain.from_iterable(zip(lengths, data, strict=True)))

    return pack


_PACK: dict[type[PackedArray], Callable[[Sequence[Any]], bytes]] = {
    Int8Array: _fixed(20, "q", 8),
    Float8Array: _fixed(701, "d", 8),
    TextArray: _varying(25, encode=True),
    ByteaArray: _varying(17, encode=False),
}


def packed(kind: type[PackedArray], values: Sequence[Any]) -> PackedArray:
    """``values`` as a binary array of ``kind``'s element type."""
    return kind(_PACK[kind](values))


def columns(kinds: Sequence[type[PackedArray]], rows: Sequence[tuple[Any, ...]]) -> list[Any]:
    """``rows`` as one packed array per column, the columns typed by ``kinds``."""
    if not rows:
        return [packed(kind, []) for kind in kinds]
    transposed = list(zip(*rows, strict=True))
    return [packed(kind, column) for kind, column in zip(kinds, transposed, strict=True)]


class _PackedDumper(adapt.Dumper):
    format = pq.Format.BINARY

    def dump(self, obj: Any) -> bytes:
        return obj  # packed already


def register(adapters: Any) -> None:
    """Teach a connection's adapters to send packed arrays as they are."""
    for kind in _PACK:
        dumper = type(f"{kind.__name__}Dumper", (_PackedDumper,), {"oid": kind.array_oid})
        adapters.register_dumper(kind, dumper)
