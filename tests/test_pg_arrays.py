"""The PostgreSQL store's packed binary arrays, read back by a real server: every element type the
batch statements use, with NULLs, empty columns, extremes and non-ASCII text."""

from __future__ import annotations

import math
import struct
from typing import Any

import psycopg
import pytest

from understudy.persistence import pg_arrays
from understudy.persistence.pg_arrays import (
    ByteaArray,
    Float8Array,
    Int8Array,
    PackedArray,
    TextArray,
    columns,
    packed,
)

CASES: list[tuple[type[PackedArray], str, list[Any]]] = [
    (Int8Array, "bigint", [0, 1, -1, 2**63 - 1, -(2**63), 4_294_967_295]),
    (Int8Array, "bigint", [None, 7, None]),
    (Int8Array, "bigint", [None]),
    (Float8Array, "float8", [0.0, -1.5, 1e300, 1_764_547_200.123456, 3]),
    (Float8Array, "float8", [None, 2.5]),
    (TextArray, "text", ["order-1", "", "ünïcødé ✓ 注文", "a\x1fb"]),
    (TextArray, "text", [None, "x", None]),
    (ByteaArray, "bytea", [b"", b"\x00\xff\x00", bytes(range(256)) * 40]),
    (ByteaArray, "bytea", [None, b"\x93\x01\x02"]),
]


@pytest.fixture
def conn(postgres_url: str) -> Any:
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        pg_arrays.register(connection.adapters)
        yield connection


@pytest.mark.parametrize(("kind", "sql_type", "values"), CASES)
def test_a_packed_column_reads_back_as_it_was(
    conn: Any, kind: type[PackedArray], sql_type: str, values: list[Any]
) -> None:
    rows = conn.execute(
        f"SELECT x FROM unnest(%b::{sql_type}[]) WITH ORDINALITY AS t(x, n) ORDER BY n",
        (packed(kind, values),),
    ).fetchall()
    got = [row[0] for row in rows]
    if kind is ByteaArray:
        got = [None if g is None else bytes(g) for g in got]
    if kind is Float8Array:
        assert all(
            (g is None and v is None) or (g is not None and math.isclose(g, v, rel_tol=0))
            for g, v in zip(got, values, strict=True)
        )
    else:
        assert got == values


def test_an_empty_column_is_an_empty_array(conn: Any) -> None:
    for kind, sql_type in ((Int8Array, "bigint"), (TextArray, "text"), (ByteaArray, "bytea")):
        row = conn.execute(f"SELECT cardinality(%b::{sql_type}[])", (packed(kind, []),)).fetchone()
        assert row == (0,)


def test_rows_become_one_typed_array_per_column(conn: Any) -> None:
    rows = [("s-1", 1, None, 1.5), ("s-2", 2, b"\x01", 2.5)]
    arrays = columns((TextArray, Int8Array, ByteaArray, Float8Array), rows)
    got = conn.execute(
        "SELECT * FROM unnest(%b::text[], %b::bigint[], %b::bytea[], %b::float8[])", arrays
    ).fetchall()
    assert [(a, b, None if c is None else bytes(c), d) for a, b, c, d in got] == rows


def test_a_value_of_the_wrong_type_is_refused_before_anything_is_sent() -> None:
    with pytest.raises(struct.error):
        packed(Int8Array, ["not a number"])
    for values in ([b"bytes, not text"], [None, b"bytes, not text"]):
        with pytest.raises(TypeError):
            packed(TextArray, values)
