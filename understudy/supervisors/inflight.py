"""Which saga a host process is handling, kept in a file that outlives a SIGKILL.

When a saga host process dies, its successor decides which sagas to blame for the death: the
persisted recovery cap (I11) parks a saga that keeps killing its host, and it must not park the
innocent sagas that merely shared the host (I12). Blame has two sources:

- the store, per batch (:meth:`~understudy.persistence.base.SagaStore.blame`): before a host
  commits a batch it records the batch's sagas; the commit clears them. It is what another node
  sees when it takes the shard over;
- this file, per input, on the host's own machine: the id of the saga whose input is being
  handled, written before the input is handled and replaced by ``idle`` after. One pwrite costs
  about a microsecond, where a store write per input would cost a round trip. The page cache
  keeps it through a SIGKILL; no fsync is needed, because a power loss restarts every saga anyway.

Each record carries the lease epoch it was written under, so a successor believes it only when it
took the shard over from exactly that holder (same machine, previous epoch). What it says:

- ``saga <id>``: that saga only;
- ``idle`` (died between inputs): nobody, beyond what the store blames;
- ``recover`` (died while loading sagas): everyone, as nothing narrower is known; this keeps a
  recovery scan that keeps crashing bounded by the recovery cap.
"""

from __future__ import annotations

import os
import struct

IDLE = b"idle"
RECOVER = b"recover"
_PREFIX = b"saga "
#: One fixed-width record (epoch, then the state), written by one pwrite: a SIGKILL cannot leave
#: half of it.
WIDTH = 1024
_EPOCH = struct.Struct(">q")


class InFlight:
    """The marker file of one shard, written only by the host holding the shard's lease."""

    def __init__(self, path: str, epoch: int) -> None:
        self.path = path
        self.epoch = epoch
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self._last: bytes | None = None  # what the file says now, as this holder wrote it
        self._epoch = _EPOCH.pack(epoch)
        record = os.pread(self._fd, WIDTH, 0)
        self.previous: bytes | None = None
        if len(record) == WIDTH and _EPOCH.unpack_from(record)[0] == epoch - 1:
            self.previous = record[_EPOCH.size :].rstrip()

    def blamed(self) -> set[str] | None:
        """Sagas the previous holder's death is blamed on by this file: a set (maybe empty), or
        None for everyone. An empty set when the file says nothing about the previous holder
        (another machine held the shard, or no record): the store's blame then decides."""
        if self.previous == RECOVER:
            return None
        if self.previous is not None and self.previous.startswith(_PREFIX):
            return {self.previous[len(_PREFIX) :].decode("utf-8", "replace")}
        return set()

    def working_on(self, saga_id: str) -> None:
        self._write(_PREFIX + saga_id.encode())

    def recovering(self) -> None:
        self._write(RECOVER)

    def idle(self) -> None:
        self._write(IDLE)

    def _write(self, data: bytes) -> None:
        if data == self._last:
            return  # the file says so already (idle after idle is most of a busy host's writes)
        self._last = data
        # Ids longer than the record are cut: such a saga is then blamed on nobody.
        record = self._epoch + data
        os.pwrite(self._fd, record[:WIDTH].ljust(WIDTH), 0)

    def close(self) -> None:
        os.close(self._fd)


def marker_path(store_location: str, shard: int) -> str | None:
    """Where shard ``shard`` of the store at ``store_location`` keeps its marker: next to a
    SQLite file; for a database server, in the system's temporary directory, named after the
    server and database (the file only ever counts on the machine that wrote it)."""
    if store_location.startswith("memory://"):
        return None
    if "://" in store_location and not store_location.startswith("sqlite:///"):
        import hashlib
        import tempfile

        name = hashlib.blake2b(store_location.encode(), digest_size=8).hexdigest()
        return os.path.join(tempfile.gettempdir(), f"understudy-{name}.host{shard}.inflight")
    if store_location.startswith("sqlite:///"):
        store_location = store_location[len("sqlite:///") :]
    return f"{store_location}.host{shard}.inflight"
