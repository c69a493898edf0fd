"""Which saga a host process is working on, kept in a file that outlives a SIGKILL.

When a saga host process dies, its replacement must decide which sagas to blame for the crash:
the persisted recovery cap (I11) parks a saga that keeps killing its host, and it must not park
the innocent sagas that merely shared the host (I12). The host writes the id of the saga whose
input it is handling into this file before it starts and writes ``idle`` when it is done. The
page cache keeps what a process wrote even when the process is SIGKILLed, so the next host reads
the culprit back; no fsync is needed because a power loss restarts every saga anyway.

What the file says at startup, and who gets a recovery counted:
- ``saga <id>``: that saga only;
- ``idle`` or ``commit`` (died between inputs, or while committing a batch): nobody;
- no file at all (first run here, or it was removed): every saga, as nothing is known.
"""

from __future__ import annotations

import os

IDLE = b"idle"
COMMIT = b"commit"
_PREFIX = b"saga "


class InFlight:
    def __init__(self, path: str) -> None:
        self.path = path
        existed = os.path.exists(path)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self.previous: bytes | None = os.pread(self._fd, 65536, 0) if existed else None

    def blamed(self) -> set[str] | None:
        """Sagas to count a recovery against: a set (maybe empty), or None for everyone."""
        if self.previous is None:
            return None
        if self.previous.startswith(_PREFIX):
            return {self.previous[len(_PREFIX) :].decode("utf-8", "replace")}
        return set()

    def working_on(self, saga_id: str) -> None:
        self._write(_PREFIX + saga_id.encode())

    def committing(self) -> None:
        self._write(COMMIT)

    def idle(self) -> None:
        self._write(IDLE)

    def _write(self, data: bytes) -> None:
        os.pwrite(self._fd, data, 0)
        os.ftruncate(self._fd, len(data))

    def close(self) -> None:
        os.close(self._fd)


def marker_path(store_location: str, shard: int) -> str | None:
    """Where shard ``shard`` of the store at ``store_location`` keeps its marker (next to a
    SQLite file; None for stores that are not files)."""
    if store_location.startswith("memory://"):
        return None
    if store_location.startswith("sqlite:///"):
        store_location = store_location[len("sqlite:///") :]
    return f"{store_location}.host{shard}.inflight"
