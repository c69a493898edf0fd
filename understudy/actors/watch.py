"""Parent watch: an actor process that outlives its parent stops itself.

Thespian restarts nobody and its multi-process admin runs detached, so when a supervisor's
process dies (SIGKILL, OOM), its children keep running unattended, still able to act on sagas
another runtime now owns. Parents send :class:`Heartbeat` about four times per timeout; a child
that hears nothing for ``timeout`` seconds asks itself to exit.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

import attrs

from understudy.actors.system import ActorExitRequest

log = logging.getLogger("understudy.watch")


@attrs.frozen
class Heartbeat:
    """The sender (the owning process, or a supervising parent) is alive."""


@attrs.frozen
class ParentCheck:
    """A child's reminder to check that its parent's heartbeats still arrive."""


class ParentWatch:
    """Mixin for Thespian actors: call :meth:`watch_parent` once configured, and route
    ``ParentCheck`` wakeups to :meth:`check_parent`."""

    _parent_timeout: float | None = None
    _parent_heard: float = 0.0
    _parent_suspect: bool = False

    def watch_parent(self, timeout: float | None) -> None:
        already = self._parent_timeout is not None
        self._parent_timeout = timeout
        self._parent_heard = time.monotonic()
        if timeout is not None and not already:
            self.wakeupAfter(timedelta(seconds=timeout / 4), ParentCheck())  # type: ignore[attr-defined]

    def receiveMsg_Heartbeat(self, msg: Heartbeat, sender: Any) -> None:
        self._parent_heard = time.monotonic()

    def check_parent(self) -> None:
        timeout = self._parent_timeout
        if timeout is None:
            return
        silent = time.monotonic() - self._parent_heard
        if silent <= timeout or not self._parent_suspect:
            # Past the timeout, look once more before exiting: if this actor was busy, its
            # parent's heartbeats are queued behind this check and arrive before the next one.
            self._parent_suspect = silent > timeout
            self.wakeupAfter(timedelta(seconds=timeout / 4), ParentCheck())  # type: ignore[attr-defined]
            return
        log.error(
            "%s: no heartbeat from its parent for %.0f s; exiting", type(self).__name__, silent
        )
        self.send(self.myAddress, ActorExitRequest())  # type: ignore[attr-defined]
