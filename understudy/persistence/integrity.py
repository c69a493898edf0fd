"""Checksums that let every stored row prove it is the row that was written.

msgpack decodes most damaged bytes into some other valid value (a flipped byte in a compensation
stack turns step ``0`` into step ``-1``), so "it decodes" says nothing about whether a snapshot is
the one a saga wrote. Every backend stores, in the same transaction as the row, a checksum over
the row's identity and content, and checks it when the row is read back; a row that fails is
reported as corrupt (:attr:`~understudy.persistence.base.SagaRecord.corrupt`) and never acted on.

What each checksum covers (everything written together, nothing a later statement changes on
its own, such as the incarnation a claim bumps):

- the payload: saga id, definition name and version, payload bytes;
- the snapshot: saga id, status, snapshot version, snapshot bytes and reason;
- an event: saga id, kind, step, attempt, incarnation and detail bytes.

BLAKE2b cut to 64 bits (stored as a signed integer, which every SQL database holds natively):
it catches every single-byte flip and, unlike a CRC, a row copied from another saga.
"""

from __future__ import annotations

import hashlib
import struct

_FIELD = struct.Struct(">q")


def checksum(*parts: str | bytes | int | None) -> int:
    """A signed 64-bit checksum over ``parts``, each length-prefixed so fields cannot shift."""
    digest = hashlib.blake2b(digest_size=8)
    for part in parts:
        if part is None:
            digest.update(b"\x00")
            continue
        if isinstance(part, int):
            digest.update(b"\x01" + _FIELD.pack(part))
            continue
        data = part.encode() if isinstance(part, str) else part
        digest.update(b"\x02" + _FIELD.pack(len(data)) + data)
    return int.from_bytes(digest.digest(), "big", signed=True)


def payload_sum(saga_id: str, definition: str, version: int, payload: bytes) -> int:
    return checksum(saga_id, definition, version, payload)


def snapshot_sum(
    saga_id: str, status: str, snapshot_version: int, snapshot: bytes | None, reason: str | None
) -> int:
    return checksum(saga_id, status, snapshot_version, snapshot, reason)


def event_sum(
    saga_id: str,
    kind: str,
    step: int | None,
    attempt: int | None,
    incarnation: int,
    detail: bytes | None,
) -> int:
    return checksum(saga_id, kind, step, attempt, incarnation, detail)


def saga_row_damage(
    saga_id: str,
    definition: str,
    version: int,
    status: str,
    payload: bytes,
    payload_check: int | None,
    snapshot: bytes | None,
    snapshot_version: int,
    reason: str | None,
    snapshot_check: int | None,
) -> str | None:
    """What is wrong with a stored saga row, in a few words; None when it is intact."""
    if payload_check != payload_sum(saga_id, definition, version, bytes(payload)):
        return f"the payload of saga {saga_id!r} fails its checksum (the stored row is damaged)"
    if snapshot_check != snapshot_sum(
        saga_id, status, snapshot_version, None if snapshot is None else bytes(snapshot), reason
    ):
        return (
            f"snapshot v{snapshot_version} of saga {saga_id!r} fails its checksum (the stored "
            "row is damaged)"
        )
    return None
