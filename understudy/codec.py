"""The one module that owns msgpack.

Everything understudy persists (payloads, step results, snapshots, event details) is msgpack,
never pickle: a stored row can be read by any version of the code and cannot run code when loaded.
Payloads are checked here before a saga starts, so an unencodable value is reported with the path
of the field that holds it instead of failing halfway through a saga.
"""

from __future__ import annotations

from typing import Any

import msgpack

from understudy.errors import CorruptRecord, PayloadError

_ENCODABLE_SCALARS = (type(None), bool, int, float, str, bytes)


def _find_unencodable(value: Any, path: str) -> tuple[str, Any] | None:
    """Return (path, value) of the first value msgpack cannot encode, or None."""
    if isinstance(value, _ENCODABLE_SCALARS):
        out_of_range = isinstance(value, int) and not -(2**63) <= value < 2**64
        if out_of_range and not isinstance(value, bool):
            return path, value
        return None
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _find_unencodable(item, f"{path}[{index}]")
            if found:
                return found
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int, bytes)):
                return f"{path} key {key!r}", key
            label = key.decode(errors="replace") if isinstance(key, bytes) else str(key)
            found = _find_unencodable(item, f"{path}.{label}" if path else label)
            if found:
                return found
        return None
    return path, value


def check_encodable(value: Any, what: str) -> None:
    """Raise :class:`PayloadError` naming the field if msgpack cannot encode ``value``."""
    found = _find_unencodable(value, "")
    if found is None:
        return
    path, bad = found
    where = f"field {path!r} of the {what}" if path else f"the {what}"
    raise PayloadError(
        f"{where} holds {type(bad).__name__} {repr(bad)[:60]}, which msgpack cannot encode; "
        "use None, bool, int, float, str, bytes, lists and dicts (for example a datetime as an "
        "ISO string, a Decimal as a str)"
    )


def encode(value: Any, what: str = "value") -> bytes:
    """Encode ``value`` with msgpack; an unencodable value raises :class:`PayloadError`."""
    try:
        # Strict mode packs only exact dict, list, str, bytes, int, float, bool and None, and
        # raises for everything else: the common case needs no walk of its own.
        return msgpack.packb(value, use_bin_type=True, strict_types=True)
    except (TypeError, ValueError, OverflowError):
        pass
    # msgpack would pack a tuple dict key as an array, which no decoder can use as a key again:
    # walking the value turns that (and every other unencodable value) into PayloadError, and
    # lets tuples as values and subclasses of the plain types through to the lenient packer.
    check_encodable(value, what)
    return msgpack.packb(value, use_bin_type=True)


def decode(data: bytes, what: str = "record") -> Any:
    """Decode msgpack ``data``; bytes that do not decode raise :class:`CorruptRecord`."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise CorruptRecord(f"{what} failed to decode as msgpack: {exc!r}") from exc
