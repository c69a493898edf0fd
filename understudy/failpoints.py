"""Named failpoints at the coordinator's persistence and messaging boundaries.

Production code calls :func:`hit` at each boundary. With nothing armed, a hit is one truthiness
test of a module-level dict, so failpoints stay compiled in. Tests arm :class:`Fault` values
(they travel to other processes inside the host's setup message), and a fault can kill the
process with SIGKILL, exactly like a crash the coordinator must survive.

A fault with ``once_file`` fires at most once across every process and restart: the file is
created atomically when it fires, and a fault whose file exists stays quiet. That is what lets a
test crash a saga host at a boundary and then watch the restarted host recover.
"""

from __future__ import annotations

import os
import signal
import time

import attrs

#: Every failpoint understudy's code hits, so tests can iterate over them.
POINTS = (
    "host.after_intent_commit",  # intent durable, request not sent yet
    "host.after_send",  # request sent, reply not received yet
    "host.after_reply",  # reply received, next snapshot not committed yet
    "host.after_compensation_intent",  # compensation intent durable, not sent yet
    "host.before_commit",  # a batch is about to be committed
    "host.after_terminal",  # terminal state durable, caller not told yet
    "participant.before_apply",
    "participant.after_apply",  # effect and ledger row committed, reply not sent yet
)

ACTIONS = ("kill", "raise", "delay")


class InjectedFault(Exception):
    """Raised by a failpoint armed with ``action="raise"``."""


@attrs.frozen
class Fault:
    """Fire ``action`` at the ``nth`` hit of ``point`` (counting only hits for ``saga_id`` when
    it is set), and at every later hit too when ``persistent``. ``delay`` seconds apply to the
    ``delay`` action."""

    point: str = attrs.field(validator=attrs.validators.in_(POINTS))
    action: str = attrs.field(default="kill", validator=attrs.validators.in_(ACTIONS))
    nth: int = 1
    saga_id: str | None = None
    once_file: str | None = None
    delay: float = 0.0
    persistent: bool = False


_armed: dict[str, list[Fault]] = {}
_hits: dict[Fault, int] = {}


def arm(faults: tuple[Fault, ...] | list[Fault]) -> None:
    """Arm ``faults`` in this process (replacing what was armed)."""
    _armed.clear()
    _hits.clear()
    for fault in faults:
        _armed.setdefault(fault.point, []).append(fault)


def disarm() -> None:
    _armed.clear()
    _hits.clear()


def hit(point: str, saga_id: str | None = None) -> None:
    """Mark that execution reached ``point``; fire an armed fault whose turn it is."""
    if not _armed:
        return
    for fault in _armed.get(point, ()):
        if fault.saga_id is not None and fault.saga_id != saga_id:
            continue
        count = _hits.get(fault, 0) + 1
        _hits[fault] = count
        if count == fault.nth or (fault.persistent and count > fault.nth):
            _fire(fault)


def _fire(fault: Fault) -> None:
    if fault.once_file is not None:
        try:
            fd = os.open(fault.once_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, f"{fault.point} pid={os.getpid()} at={time.time()}\n".encode())
        os.fsync(fd)
        os.close(fd)
    if fault.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault.action == "raise":
        raise InjectedFault(f"injected fault at {fault.point}")
    elif fault.action == "delay":
        time.sleep(fault.delay)
