"""The one module that wraps Thespian.

It owns starting and stopping an actor system, the names of the bases, and the few Thespian
classes the rest of understudy builds on (re-exported here so no other module imports thespian).

Security: the multi-process bases move pickled messages over sockets, and unpickling runs code.
Anyone who can connect to a Thespian port can run code in every actor process. Systems started
here therefore bind to loopback (127.0.0.1) unless an address is given explicitly; open a port
beyond the machine only on a network you trust as much as the machine itself.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from typing import Any

from thespian.actors import (  # noqa: F401  (re-exported for the rest of understudy)
    Actor,
    ActorAddress,
    ActorExitRequest,
    ActorSystem,
    ActorTypeDispatcher,
    ChildActorExited,
    DeadEnvelope,
    PoisonMessage,
    WakeupMessage,
)

from understudy.errors import ActorSystemError, CoordinatorTimeout

try:
    from thespian.system import multiprocCommon as _multiproc
except ImportError:  # pragma: no cover - every thespian 4 has it
    _multiproc = None

#: Processes Thespian started and then detached from multiprocessing (its admin): nobody
#: would collect their exit status, so every runtime would leave a zombie behind.
_DETACHED: list[Any] = []

if _multiproc is not None:
    _detach_child = _multiproc.detach_child

    def _remember_detached(childref: Any) -> None:
        _detach_child(childref)
        _DETACHED.append(childref)

    _multiproc.detach_child = _remember_detached


def detached_since(count: int) -> list[Any]:
    """The processes detached after the first ``count`` (an actor system's admin, for the
    runtime that just started it); they are handed over, not kept here."""
    taken = _DETACHED[count:]
    for process in taken:
        _DETACHED.remove(process)
    return taken


def reap(processes: list[Any], timeout: float = 5.0) -> None:
    """Wait for ``processes`` (shut down already) and collect their exit status."""
    for process in processes:
        # Started by another process (after a fork) is not ours to collect.
        with contextlib.suppress(AssertionError, ValueError, OSError):
            process.join(timeout)


def detached_count() -> int:
    return len(_DETACHED)


IN_PROCESS = "simpleSystemBase"
MULTIPROC_TCP = "multiprocTCPBase"
MULTIPROC_UDP = "multiprocUDPBase"
MULTIPROC_QUEUE = "multiprocQueueBase"
BASES = (IN_PROCESS, MULTIPROC_TCP, MULTIPROC_UDP, MULTIPROC_QUEUE)
LOOPBACK = "127.0.0.1"


def is_multiprocess(base: str) -> bool:
    return base != IN_PROCESS


def free_port() -> int:
    """A TCP/UDP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def start_actor_system(
    base: str = IN_PROCESS,
    *,
    admin_port: int | None = None,
    bind_address: str = LOOPBACK,
    capabilities: dict[str, Any] | None = None,
    log_file: str | None = None,
) -> Any:
    """Start a new Thespian actor system and return its handle.

    Multi-process systems get their own admin port (a free one when ``admin_port`` is None: a
    second system on the same port would silently join the first) and bind to ``bind_address``,
    loopback by default. Thespian's internal log goes to ``log_file`` (a temporary file by
    default) so that systems do not share one.
    """
    if base not in BASES:
        raise ActorSystemError(f"unknown actor system base {base!r}; use one of {BASES}")
    caps = dict(capabilities or {})
    if is_multiprocess(base):
        # Children are forked from this process and read the bind address from the environment.
        os.environ["THESPIAN_BASE_IPADDR"] = bind_address
        if base != MULTIPROC_QUEUE:
            caps.setdefault("Admin Port", admin_port or free_port())
        os.environ["THESPLOG_FILE"] = log_file or os.path.join(
            tempfile.gettempdir(), f"understudy-thespian-{os.getpid()}.log"
        )
    try:
        if is_multiprocess(base):
            # logDefs=False breaks every multi-process base in thespian 4.0.1: keep the default.
            return ActorSystem(base, caps, transientUnique=True)
        return ActorSystem(base, caps, logDefs=False, transientUnique=True)
    except Exception as exc:
        raise ActorSystemError(f"could not start a Thespian {base} actor system: {exc}") from exc


def ask(asys: Any, address: Any, message: Any, timeout: float, what: str) -> Any:
    """``asys.ask`` that raises :class:`CoordinatorTimeout` where Thespian would return None."""
    reply = asys.ask(address, message, timeout)
    if reply is None:
        raise CoordinatorTimeout(f"no reply from {what} within {timeout} s")
    return reply


def load_class(path: str) -> type:
    """Import "package.module.ClassName" (how actor classes travel between processes)."""
    module_name, _, class_name = path.rpartition(".")
    if not module_name:
        raise ActorSystemError(f"{path!r} is not an import path of the form 'package.module.Class'")
    import importlib

    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, class_name)
    except (ImportError, AttributeError) as exc:
        raise ActorSystemError(f"cannot import actor class {path!r}: {exc}") from exc
    return cls


def class_path(cls: type, in_process: bool = False) -> str:
    """The import path of ``cls``, refusing classes the actor system could not import by it.

    ``in_process``: the actors run in this process (the in-process base), so a class of the
    script being run (``__main__``) is found where it is. A multi-process base starts actors in
    other processes, which import the class by name: from a module, not from a script."""
    name = cls.__qualname__
    if "<locals>" in name:
        raise ActorSystemError(
            f"{name} is defined inside a function: understudy loads actor classes by name, so "
            "define it at the top level of a module (or of the script you run)"
        )
    if cls.__module__ == "__main__" and not in_process:
        raise ActorSystemError(
            f"{name} is defined in the script being run (__main__): a multi-process actor "
            "system starts its actors in other processes, which import the class by name. Move "
            "it into a module and import it from there (the in-process base, the default, "
            "takes it from the script as it is)"
        )
    return f"{cls.__module__}.{name}"
