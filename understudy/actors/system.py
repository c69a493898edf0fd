"""The one module that wraps Thespian.

It owns starting and stopping an actor system, the names of the bases, and the few Thespian
classes the rest of understudy builds on (re-exported here so no other module imports thespian).

Security: the multi-process bases move pickled messages over sockets, and unpickling runs code.
Anyone who can connect to a Thespian port can run code in every actor process. Systems started
here therefore advertise loopback (127.0.0.1) unless an address is given explicitly, and on
multiprocTCPBase listen on loopback only (Thespian itself listens on every interface); open a
port beyond the machine only on a network you trust as much as the machine itself. A system
the application starts and hands to understudy keeps the application's own settings.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from thespian.actors import (  # noqa: F401  (re-exported for the rest of understudy)
    Actor,
    ActorAddress,
    ActorExitRequest,
    ActorSystem,
    ActorTypeDispatcher,
    ChildActorExited,
    DeadEnvelope,
    ExternalContext,
    PoisonMessage,
    WakeupMessage,
)
from thespian.system import isInternalActorSystemMessage
from thespian.system import multiprocTCPBase as _multiproc_tcp
from thespian.system.transport.TCPTransport import LISTEN_DEPTH as _TCP_LISTEN_DEPTH
from thespian.system.transport.TCPTransport import (
    ExternalTransportCopy,
    RoutedTCPv4ActorAddress,
    TCPTransport,
)

from understudy.errors import ActorSystemError, CoordinatorTimeout


def child_pids() -> set[int]:
    """The pids of this process's children (Linux; elsewhere an empty set): how the runtime
    finds the admin process its actor system forked, which Thespian detaches from
    multiprocessing so that nobody would ever collect its exit status."""
    me = str(os.getpid())
    found: set[int] = set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 1 and fields[1].decode() == me:
            found.add(int(entry))
    return found


#: Children reaped before they had exited (a busy machine can take longer than the wait to end
#: an actor system's admin): each later reap collects those that have exited since, so that a
#: process starting many runtimes (a chaos campaign, a test suite) never piles up zombies.
_LATE: set[int] = set()


def reap(pids: Iterable[int], timeout: float = 5.0) -> None:
    """Collect the exit status of child processes ``pids`` (shut down already), waiting up to
    ``timeout`` seconds for them to exit: an uncollected child stays a zombie. One still
    running then is collected by a later call (and, without waiting, the stragglers of earlier
    calls are collected now)."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while True:
            try:
                done, _status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break  # collected already, or not our child
            if done:
                break
            if time.monotonic() > deadline:
                _LATE.add(pid)
                break
            time.sleep(0.01)
    for pid in list(_LATE):
        try:
            done, _status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid  # collected elsewhere, or not ours any more
        if done:
            _LATE.discard(pid)


IN_PROCESS = "simpleSystemBase"
MULTIPROC_TCP = "multiprocTCPBase"
MULTIPROC_UDP = "multiprocUDPBase"
MULTIPROC_QUEUE = "multiprocQueueBase"
BASES = (IN_PROCESS, MULTIPROC_TCP, MULTIPROC_UDP, MULTIPROC_QUEUE)
LOOPBACK = "127.0.0.1"


def is_multiprocess(base: str) -> bool:
    return base != IN_PROCESS


def in_process(actor: Any) -> bool:
    """Whether ``actor`` runs on the in-process base (whose addresses are plain names; the
    multi-process bases' carry a transport's address)."""
    return isinstance(actor.myAddress.addressDetails, str)


def free_port() -> int:
    """A TCP/UDP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


#: Thespian reads the address its TCP and UDP transports advertise, and the file its own log
#: goes to, from the environment of the process that creates a transport. understudy sets them
#: only while it creates one of its own (the admin and every actor process inherit them when
#: forked), under this lock, and puts the environment back as it was.
_ENVIRONMENT = threading.Lock()


@contextlib.contextmanager
def _scoped_environment(values: dict[str, str]) -> Iterator[None]:
    with _ENVIRONMENT:
        # TZ too: Thespian sets it when a system starts (to spare time lookups in its actors).
        saved = {name: os.environ.get(name) for name in [*values, "TZ"]}
        os.environ.update(values)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


class _LoopbackTCPTransport(TCPTransport):
    """Thespian's TCP transport, listening on the address it advertises when that is loopback.

    Thespian binds every TCP transport to all interfaces (0.0.0.0) whatever address it
    advertises. The systems understudy starts advertise 127.0.0.1 (``THESPIAN_BASE_IPADDR``),
    so this transport listens there only: nothing beyond the machine can connect."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        host, port = self.myAddress.addressDetails.connectArgs[0][:2]
        bound: Any = vars(self)["socket"]  # Thespian's listening socket
        if host != LOOPBACK or bound.getsockname()[0] == LOOPBACK:
            return
        listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        bound.close()  # the port must be free to bind it again on loopback
        listening.bind((LOOPBACK, port))
        listening.listen(_TCP_LISTEN_DEPTH)
        self.socket = listening

    def external_transport_clone(self) -> Any:
        # Thespian's own makes a plain TCPTransport (listening everywhere): keep this class.
        routed = isinstance(self.myAddress.addressDetails, RoutedTCPv4ActorAddress)
        return _LoopbackTCPTransport(ExternalTransportCopy(), self._adminAddr, self.txOnly, routed)


class _LoopbackTCPBase(_multiproc_tcp.ActorSystemBase):
    transportType = _LoopbackTCPTransport


class _ActorSystem(ActorSystem):
    """An ActorSystem handle whose multiprocTCPBase listens on loopback only (above)."""

    def _startupActorSys(
        self, current: Any, systemBase: Any, capabilities: Any, logDefs: Any
    ) -> Any:
        if systemBase == MULTIPROC_TCP:
            self.systemAddress = ActorAddress("/ActorSys")
            self.capabilities = capabilities or {}
            self._systemBase = _LoopbackTCPBase(self, logDefs=logDefs)
            return self._systemBase
        return super()._startupActorSys(current, systemBase, capabilities, logDefs)


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
    second system on the same port would silently join the first) and advertise
    ``bind_address``, loopback by default; on multiprocTCPBase they then listen on loopback
    only. Thespian's internal log goes to ``log_file`` (a temporary file by default) so that
    systems do not share one. This process's environment is left as it was.
    """
    if base not in BASES:
        raise ActorSystemError(f"unknown actor system base {base!r}; use one of {BASES}")
    caps = dict(capabilities or {})
    environment: dict[str, str] = {}
    if is_multiprocess(base):
        # The admin and every actor process are forked with this environment.
        environment["THESPIAN_BASE_IPADDR"] = bind_address
        if base != MULTIPROC_QUEUE:
            caps.setdefault("Admin Port", admin_port or free_port())
        environment["THESPLOG_FILE"] = log_file or os.path.join(
            tempfile.gettempdir(), f"understudy-thespian-{os.getpid()}.log"
        )
    try:
        with _scoped_environment(environment):
            if is_multiprocess(base):
                # logDefs=False breaks every multi-process base in thespian 4.0.1: keep it.
                return _ActorSystem(base, caps, transientUnique=True)
            return _ActorSystem(base, caps, logDefs=False, transientUnique=True)
    except Exception as exc:
        raise ActorSystemError(f"could not start a Thespian {base} actor system: {exc}") from exc


class _InProcessPrivate(ExternalContext):
    """A thread's own handle on an in-process system whose ``listen`` and ``ask`` keep their
    timeout: Thespian 4.0.1's passes the timeout where a blocking flag goes and waits forever
    for a reply that never comes."""

    def listen(self, timeout: float | None = None) -> Any:
        received = self._systemBase.my_instance.rcvq  # where the system puts its replies
        deadline = None if timeout is None else time.monotonic() + float(timeout)
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            try:
                message = received.get(timeout=left)
            except queue.Empty:
                return None
            if not isInternalActorSystemMessage(message):
                return message

    def ask(self, actorAddr: Any, msg: Any, timeout: float | None = None) -> Any:
        self.tell(actorAddr, msg)
        return self.listen(timeout)


def private_handle(asys: Any) -> tuple[Any, Callable[[], None]]:
    """A handle of its own on ``asys`` for one thread, and how to close it (Thespian's
    ``ActorSystem.private``): replies to what it sends come to it alone. Created with the
    address the system advertises in the environment, like the system's own transports."""
    if base_of(asys) == IN_PROCESS:
        private = _InProcessPrivate(asys._systemBase.external_clone())
        return private, private.exit_clone
    context = asys.private()
    advertised = _advertised(asys)
    with _scoped_environment({"THESPIAN_BASE_IPADDR": advertised} if advertised else {}):
        handle = context.__enter__()

    def close() -> None:
        with contextlib.suppress(Exception):
            context.__exit__(None, None, None)

    return handle, close


def _advertised(asys: Any) -> str | None:
    """The host a multi-process system's admin advertises (None in-process)."""
    admin = getattr(getattr(asys, "_systemBase", None), "adminAddr", None)
    details = getattr(admin, "addressDetails", None)
    connect = getattr(details, "connectArgs", None)
    if not connect:
        return None
    return str(connect[0][0])


def base_of(asys: Any) -> str:
    """The base name ("simpleSystemBase", "multiprocTCPBase", ...) of a running system."""
    module = type(getattr(asys, "_systemBase", None)).__module__
    if module == __name__:
        return MULTIPROC_TCP  # _LoopbackTCPBase
    name = module.rpartition(".")[2]
    if name not in BASES:
        raise ActorSystemError(
            f"cannot tell the base of actor system {asys!r} ({module}); understudy runs on "
            f"{', '.join(BASES)}"
        )
    return name


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
