"""Owner watch: an actor process whose owner is gone stops itself.

Thespian restarts nobody and its multi-process admin runs detached, so when the process that
owns some actors dies (SIGKILL, OOM), they would run on unattended, still able to act on sagas a
new runtime now owns. Each understudy actor process therefore watches its owner's process:
saga hosts and participants watch the coordinator (Thespian forks them from its process, so it is
their parent), and the coordinator watches the application process that started understudy.

The check is by process identity (pid and start time, so a reused pid is not mistaken for the
owner), never by heartbeat: a heartbeat starved by a busy actor looks like a dead owner, and
stopping healthy actors under load is worse than the orphan problem it solves.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any

import attrs

from understudy.actors.system import ActorExitRequest, WakeupMessage

log = logging.getLogger("understudy.watch")

ProcessIdentity = tuple[int, str | None]


def process_identity(pid: int) -> ProcessIdentity:
    """``(pid, start time)``; the start time is None where ``/proc`` cannot tell it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        return pid, fields[19].decode()  # field 22 of stat(5): starttime
    except (OSError, IndexError):
        return pid, None


def is_running(identity: ProcessIdentity) -> bool:
    """Whether the process still runs: it exists, is the same process (start time), and is not
    a zombie (a killed process its parent has not reaped yet has exited all the same)."""
    pid, started = identity
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        if fields[0] in (b"Z", b"X"):
            return False
        if started is not None and fields[19].decode() != started:
            return False
    except (OSError, IndexError):
        return True  # no /proc to tell: os.kill found it
    return not _killed(pid)


_SIGKILL_BIT = 1 << (9 - 1)  # SIGKILL's bit in /proc/PID/status's pending signal masks


def _killed(pid: int) -> bool:
    """Whether a SIGKILL is pending for ``pid``: it never runs its own code again, though it
    may not have exited yet (a process in the middle of an fsync finishes that first), so it
    counts as gone: a runtime restarted right after killing the old one finds its store free."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith((b"SigPnd:", b"ShdPnd:")) and (
                    int(line.split()[1], 16) & _SIGKILL_BIT
                ):
                    return True
    except (OSError, ValueError, IndexError):
        pass
    return False


@attrs.frozen
class OwnerCheck:
    """An actor's reminder to check that its owner process still runs."""


class OwnerWatch:
    """Mixin for Thespian actors (listed before the Thespian base class). Call :meth:`watch`
    once configured; :meth:`owner_gone` runs when the owner has exited."""

    _owner: ProcessIdentity | None = None
    _owner_interval: float = 2.0

    def watch(self, owner: ProcessIdentity | None, interval: float | None) -> None:
        first = self._owner is None
        if owner is None or interval is None:
            return
        self._owner = owner
        self._owner_interval = interval
        if first:
            self.wakeupAfter(timedelta(seconds=interval), OwnerCheck())  # type: ignore[attr-defined]

    def watch_parent(self, interval: float | None) -> None:
        """Watch the process this one was forked from (the supervising actor's)."""
        self.watch(process_identity(os.getppid()), interval)

    def receiveMessage(self, msg: Any, sender: Any) -> Any:
        # Intercepted here, before type dispatch, so a subclass that handles WakeupMessage
        # itself cannot switch the watch off by forgetting to call super().
        if isinstance(msg, WakeupMessage) and isinstance(msg.payload, OwnerCheck):
            if self._owner is not None and not is_running(self._owner):
                self.owner_gone()
            else:
                self.wakeupAfter(timedelta(seconds=self._owner_interval), OwnerCheck())  # type: ignore[attr-defined]
            return None
        return super().receiveMessage(msg, sender)  # type: ignore[misc]

    def owner_gone(self) -> None:
        log.error(
            "%s (pid %d): its owner process has exited; stopping", type(self).__name__, os.getpid()
        )
        self.send(self.myAddress, ActorExitRequest())  # type: ignore[attr-defined]
