"""Which saga a host process is working on, kept in a file that outlives a SIGKILL.

When a saga host process dies, its replacement must decide which sagas to blame for the crash:
the persisted recovery cap (I11) parks a saga that keeps killing its host, and it must not park
the innocent sagas that merely shared the host (I12). The host writes the id of the saga whose
input it is handling into this file before it starts and writes ``idle`` when it is done. The
page cache keeps what a process wrote even when the process is SIGKILLed, so the next host reads
the culprit back; no fsync is needed because a power loss restarts every saga anyway.

What the file says at startup, and who gets a recovery counted:
- ``saga <id>``: that saga only;
- ``idle`` (died between inputs): nobody;
- ``commit`` (died while committing a batch): nobody the first time; when hosts keep dying
  while committing, with no commit succeeding in between (a second record of the file counts
  them), every saga of the shard, since the batch's sagas are not known by name: a shard whose
  commits always kill their host would otherwise restart forever without parking anyone;
- ``recover`` (the previous recovery scan itself died), or no file at all (first run here):
  every saga of the shard, as nothing narrower is known; this keeps a scan that keeps crashing
  bounded by the recovery cap.
"""

from __future__ import annotations

import fcntl
import os

IDLE = b"idle"
COMMIT = b"commit"
RECOVER = b"recover"
_PREFIX = b"saga "
#: One fixed-width record, written by one pwrite: a SIGKILL cannot leave half of it.
WIDTH = 1024


class ShardBusy(Exception):
    """Another live saga host (of another runtime on the same store) holds this shard."""


class InFlight:
    """The marker file of one shard, locked by the host that owns the shard: a host of a
    second runtime on the same store waits instead of working the same sagas in parallel."""

    def __init__(self, path: str) -> None:
        self.path = path
        existed = os.path.exists(path)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise ShardBusy(path) from None
        self.previous: bytes | None = os.pread(self._fd, WIDTH, 0).rstrip() if existed else None
        deaths = 0
        if self.previous == COMMIT:
            counted = os.pread(self._fd, WIDTH, WIDTH).strip()
            deaths = (int(counted) if counted.isdigit() else 0) + 1
        #: Hosts that died committing since the last commit that succeeded (this death included).
        self.commit_deaths = deaths
        self._write_deaths()

    def blamed(self) -> set[str] | None:
        """Sagas to count a recovery against: a set (maybe empty), or None for everyone."""
        if self.previous is None or self.previous == RECOVER:
            return None  # nothing known, or the last recovery scan itself died: count all
        if self.previous == COMMIT and self.commit_deaths >= 2:
            return None  # commits keep killing hosts: count all, so the cap ends the loop
        if self.previous.startswith(_PREFIX):
            return {self.previous[len(_PREFIX) :].decode("utf-8", "replace")}
        return set()

    def working_on(self, saga_id: str) -> None:
        self._write(_PREFIX + saga_id.encode())

    def recovering(self) -> None:
        self._write(RECOVER)

    def committing(self) -> None:
        self._write(COMMIT)

    def committed(self) -> None:
        """A commit succeeded: the count of hosts that died committing starts again."""
        if self.commit_deaths:
            self.commit_deaths = 0
            self._write_deaths()

    def _write_deaths(self) -> None:
        os.pwrite(self._fd, str(self.commit_deaths).encode().ljust(WIDTH), WIDTH)

    def idle(self) -> None:
        self._write(IDLE)

    def _write(self, data: bytes) -> None:
        # Ids longer than the record are cut: such a saga is then blamed on nobody.
        os.pwrite(self._fd, data[:WIDTH].ljust(WIDTH), 0)

    def close(self) -> None:
        os.close(self._fd)  # releases the lock


def marker_path(store_location: str, shard: int) -> str | None:
    """Where shard ``shard`` of the store at ``store_location`` keeps its marker (next to a
    SQLite file; None for stores that are not files)."""
    if store_location.startswith("memory://"):
        return None
    if store_location.startswith("sqlite:///"):
        store_location = store_location[len("sqlite:///") :]
    return f"{store_location}.host{shard}.inflight"
