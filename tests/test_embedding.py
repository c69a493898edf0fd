"""Embedding understudy in an application: what a new user met (issue "What a new user met").

1. The runtime's own Thespian handle is not exposed (its bridge thread drives it, and a handle
   shared by threads loses replies); ``us.private()`` gives each application thread a handle of
   its own, and app actors created with it get exactly their own sagas' replies while other
   threads run sagas through the runtime.
2. understudy joins the application's own actor system only when handed it
   (``actor_system=``), never through a taken ``admin_port``, and its shutdown then stops only
   understudy's actors: the application's system and actors go on.
3. ``RegisterParticipant`` configures the Participant it registers (its ledger), and says when
   it cannot.
4. An app actor's refused start is ``understudy.StartRejected``, exported, not an exception.
5. A definition naming an action or compensation its participant lacks is refused when the
   runtime starts (or the participant is added), naming what is missing; nothing is left held.
6. Importing understudy patches nothing in Thespian, and a start and shutdown leave this
   process's environment as they found it, and no zombie child.
7. On multiprocTCPBase every socket understudy listens on is bound to loopback.

Real Thespian systems, real SQLite files under ``tmp_path``. Bounds are generous (the suite
runs on busy two-core machines, where a start or a saga that takes a second idle can take ten);
they only keep a broken run from hanging, and nothing is timed or retried.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import attrs
import pytest
from apps import PlaceOrder, Shop
from conftest import effects, order_definition, recorders
from participants import Recorder
from thespian.actors import Actor, ActorExitRequest, ActorSystem, ActorSystemMessage

import understudy
from understudy import (
    ActorSystemError,
    RegisterParticipant,
    SagaDefinition,
    SagaFinished,
    StartSaga,
    Step,
    Understudy,
    UnknownParticipant,
)
from understudy.messages import ParticipantReady, QueryStatus

#: Seconds for anything that takes well under a second on an idle machine (an ask, a saga, a
#: process exiting): a busy two-core CI machine can be ten times slower, and a working run
#: never waits this long. It only bounds a broken one.
LONG = 120.0

#: The step reply timeout of the sagas here: far above any real reply time, so that a slow
#: machine never turns a step into a timeout (and a saga that should complete into a
#: compensated one).
STEP_TIMEOUT = 60.0

TESTS = Path(__file__).resolve().parent

#: On the in-process base a handle from ``private()`` ignores the timeout of ``ask`` and
#: ``listen`` when no reply comes (Thespian 4.0.1 passes it to ``Queue.get`` as ``block``): a
#: missing reply would hang the test instead of failing it. This bounds every test here.
pytestmark = pytest.mark.timeout(900)


def definitions() -> list[SagaDefinition]:
    return [order_definition(timeout=STEP_TIMEOUT)]


# --- application actors ---------------------------------------------------------------------------


class Echo(Actor):  # type: ignore[misc]
    """An application's own actor: answers a string with ("echo", it, its pid)."""

    def receiveMessage(self, msg: Any, sender: Any) -> None:
        if isinstance(msg, str):
            self.send(sender, ("echo", msg, os.getpid()))


@attrs.frozen
class Relay:
    """Ask a Relayer to send ``message`` to ``to`` and pass back what comes back."""

    to: Any
    message: Any


class Relayer(Actor):  # type: ignore[misc]
    """An application actor that sends a message on and hands the reply, as it received it,
    to whoever asked."""

    asker: Any = None

    def receiveMessage(self, msg: Any, sender: Any) -> None:
        if isinstance(msg, Relay):
            self.asker = sender
            self.send(msg.to, msg.message)
        elif not isinstance(msg, ActorSystemMessage) and self.asker is not None:
            self.send(self.asker, msg)


# --- processes and sockets, from /proc (Linux) ----------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after "(comm)": [state, ppid, ...]; None: no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].decode().split()
    except (OSError, IndexError):
        return None


def _gone(pid: int) -> bool:
    """The process has exited. A zombie has exited too: understudy's actor processes are
    orphans once stopped, and it is their adoptive parent's (pid 1's) business to collect them,
    which in a container can be late."""
    fields = _stat(pid)
    return fields is None or fields[0] in ("Z", "X")


def _children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None and int(fields[1]) == pid:
                found.add(int(entry))
    return found


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in _children(todo.pop()) - found:
            found.add(child)
            todo.append(child)
    return found


def _zombie_children(pid: int) -> set[int]:
    return {child for child in _children(pid) if (_stat(child) or ["?"])[0] == "Z"}


def _collect(pids: set[int]) -> None:
    """Collect children of this process that have exited (an actor system's detached
    intermediate process): other tests check that this process leaves no zombie."""
    deadline = time.monotonic() + LONG
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                done, _status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done:
                break
            time.sleep(0.02)


def _wait_gone(pids: set[int]) -> set[int]:
    """Wait (within LONG) until every process of ``pids`` has exited; those that have not."""
    deadline = time.monotonic() + LONG
    while time.monotonic() < deadline:
        left = {pid for pid in pids if not _gone(pid)}
        if not left:
            return left
        time.sleep(0.05)
    return {pid for pid in pids if not _gone(pid)}


def _address(hexed: str) -> str:
    """ "0100007F:1F90" (/proc/net/tcp) or its 32-hex-digit IPv6 twin -> "127.0.0.1:8080"."""
    host, port = hexed.split(":")
    # The kernel prints each 32-bit word of the address in this machine's byte order.
    raw = b"".join(struct.pack("=I", int(host[i : i + 8], 16)) for i in range(0, len(host), 8))
    if len(raw) == 4:
        return f"{'.'.join(str(b) for b in raw)}:{int(port, 16)}"
    return f"[{ipaddress.IPv6Address(raw)}]:{int(port, 16)}"


def _listening() -> dict[int, str]:
    """Socket inode -> the address it listens on, for every listening TCP socket (state 0A)."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                next(lines)
                for line in lines:
                    fields = line.split()
                    if fields[3] == "0A":
                        found[int(fields[9])] = _address(fields[1])
        except FileNotFoundError:
            continue
    return found


def _sockets(pid: int) -> set[int]:
    """The inodes of the sockets process ``pid`` has open."""
    found = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(int(target[len("socket:[") : -1]))
    return found


def _listens_on(pid: int, only: set[int] | None = None) -> list[str]:
    """The addresses process ``pid`` listens on (among socket inodes ``only``, if given)."""
    listening = _listening()
    inodes = _sockets(pid) if only is None else _sockets(pid) & only
    return sorted(listening[inode] for inode in inodes if inode in listening)


def _understudy_pids(us: Understudy) -> set[int]:
    info = us.hosts(LONG)
    return {info.coordinator_pid, *info.host_pids.values(), *info.participant_pids.values()}


# --- 1. no shared handle; a private one per thread ------------------------------------------------


def _in_threads(*calls: Any) -> list[Any]:
    """Run each call in a thread of its own, all at once; their results, in order. Daemon
    threads: one stuck in an ask (see ``pytestmark``) fails the test, not the process's exit."""
    results: dict[int, Any] = {}
    errors: dict[int, BaseException] = {}

    def run(index: int, call: Any) -> None:
        try:
            results[index] = call()
        except BaseException as exc:
            errors[index] = exc

    threads = [
        threading.Thread(target=run, args=(index, call), daemon=True)
        for index, call in enumerate(calls)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 4 * LONG
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "a thread is still waiting"
    for index in sorted(errors):
        raise errors[index]
    return [results[index] for index in range(len(calls))]


def _order_payload(index: int) -> tuple[dict[str, Any], str]:
    """Every other saga is refused at its last step: it ends compensated, not completed, so a
    reply that belongs to another saga shows in its status as well as in its id."""
    if index % 2:
        return {"reject": "charge"}, "compensated"
    return {}, "completed"


def test_app_threads_ask_through_private_handles_while_others_run_sagas(
    start: Any, tmp_path: Path
) -> None:
    """The runtime does not expose the handle its bridge thread drives. Two application
    threads, each with its own ``us.private()`` handle and its own Shop actor, place orders
    while two other threads call ``us.run``: every ask is answered with its own saga's end,
    every run returns its own, nothing raises or comes back empty."""
    us = start(definitions())
    assert not hasattr(us, "asys")
    per_thread = 5
    ready = threading.Barrier(4)

    def place_orders(prefix: str) -> list[tuple[str, str, Any]]:
        answers = []
        with us.private() as handle:
            shop = handle.createActor(Shop)
            ready.wait(LONG)
            for index in range(per_thread):
                saga_id = f"{prefix}-{index}"
                payload, expected = _order_payload(index)
                reply = handle.ask(shop, PlaceOrder(us.address, saga_id, payload), LONG)
                answers.append((saga_id, expected, reply))
        return answers

    def run_sagas(prefix: str) -> list[tuple[str, str, Any]]:
        ready.wait(LONG)
        answers = []
        for index in range(per_thread):
            saga_id = f"{prefix}-{index}"
            payload, expected = _order_payload(index)
            answers.append((saga_id, expected, us.run(saga_id, "order", payload, timeout=LONG)))
        return answers

    results = _in_threads(
        lambda: place_orders("shop-a"),
        lambda: place_orders("shop-b"),
        lambda: run_sagas("run-a"),
        lambda: run_sagas("run-b"),
    )
    answers = [answer for result in results for answer in result]

    assert 4 * per_thread == len(answers)
    for saga_id, expected, reply in answers:
        assert type(reply) is SagaFinished, (saga_id, reply)
        assert (saga_id, expected) == (reply.saga_id, reply.status)


# --- 2. the application's own actor system --------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_understudy_in_the_apps_multiprocess_system_leaves_it_running(tmp_path: Path) -> None:
    """The application runs its own multiprocTCPBase system with an echo actor. Its admin
    port given as ``admin_port`` is refused, pointing at ``actor_system=``; given as
    ``actor_system``, understudy runs sagas in it, and its shutdown stops understudy's
    processes only: the echo actor still answers, and understudy starts there again."""
    store = tmp_path / "sagas.db"
    port = _free_port()
    before = _children(os.getpid())
    app = ActorSystem("multiprocTCPBase", {"Admin Port": port}, transientUnique=True)
    try:
        echo = app.createActor(Echo)
        first = app.ask(echo, "before understudy", LONG)
        assert ("echo", "before understudy") == first[:2]

        with pytest.raises(ActorSystemError, match=r"actor_system="):
            Understudy.start(
                store,
                definitions(),
                recorders(tmp_path),
                base="multiprocTCPBase",
                admin_port=port,
                hosts=1,
            )

        # Right after the refusal: it gave back everything it held (no StoreInUse).
        us = Understudy.start(store, definitions(), recorders(tmp_path), actor_system=app, hosts=1)
        try:
            assert "completed" == us.run("in-app-1", "order", {}, timeout=LONG).status
            # understudy drives a handle of its own: the application's is free meanwhile.
            assert ("echo", "meanwhile") == app.ask(echo, "meanwhile", LONG)[:2]
            pids = _understudy_pids(us)
        finally:
            us.shutdown()
        assert 0 not in pids and first[2] not in pids
        assert set() == _wait_gone(pids)

        assert ("echo", "after understudy", first[2]) == app.ask(echo, "after understudy", LONG)

        again = Understudy.start(store, definitions(), recorders(tmp_path), actor_system=app)
        try:
            assert (
                "compensated"
                == again.run("in-app-2", "order", {"reject": "charge"}, timeout=LONG).status
            )
        finally:
            again.shutdown()
        assert ("echo", "at the end", first[2]) == app.ask(echo, "at the end", LONG)
    finally:
        app.shutdown()
        _collect(_children(os.getpid()) - before)


def test_understudy_in_the_apps_in_process_system_hands_it_back(tmp_path: Path) -> None:
    """The application's own simpleSystemBase handle, passed as ``actor_system``: sagas run
    (understudy's bridge drives the handle meanwhile), and after shutdown the application's
    thread uses its handle directly again, and understudy can start in it again."""
    store = tmp_path / "sagas.db"
    app = ActorSystem("simpleSystemBase", transientUnique=True)
    try:
        echo = app.createActor(Echo)
        assert ("echo", "before understudy") == app.ask(echo, "before understudy", LONG)[:2]
        us = Understudy.start(store, definitions(), recorders(tmp_path), actor_system=app)
        try:
            assert "completed" == us.run("in-app-1", "order", {}, timeout=LONG).status
        finally:
            us.shutdown()
        assert ("echo", "after understudy") == app.ask(echo, "after understudy", LONG)[:2]

        again = Understudy.start(store, definitions(), recorders(tmp_path), actor_system=app)
        try:
            assert (
                "compensated"
                == again.run("in-app-2", "order", {"reject": "charge"}, timeout=LONG).status
            )
        finally:
            again.shutdown()
        assert ("echo", "at the end") == app.ask(echo, "at the end", LONG)[:2]
    finally:
        app.shutdown()


def test_a_base_other_than_the_given_systems_is_refused(tmp_path: Path) -> None:
    app = ActorSystem("simpleSystemBase", transientUnique=True)
    try:
        with pytest.raises(ActorSystemError, match=r"multiprocTCPBase.*simpleSystemBase"):
            Understudy.start(
                tmp_path / "sagas.db",
                definitions(),
                recorders(tmp_path),
                base="multiprocTCPBase",
                actor_system=app,
            )
    finally:
        app.shutdown()


# --- 3. RegisterParticipant configures what it registers ------------------------------------------


def test_a_registered_participant_is_configured_and_serves_sagas(
    start: Any, tmp_path: Path
) -> None:
    """The application creates a Recorder itself and registers it as "payments" with its
    options: it is configured (its ledger opened) and the order saga runs through it. Without
    options, an unconfigured Recorder is refused, naming the missing "database" option."""
    ledger = tmp_path / "registered-payments.db"
    others = [spec for spec in recorders(tmp_path) if spec[0] != "payments"]
    us = start(definitions(), others)
    with us.private() as handle:
        unconfigured = handle.createActor(Recorder)
        refused = handle.ask(
            us.address, RegisterParticipant("payments", None, participant=unconfigured), LONG
        )
        assert type(refused) is ParticipantReady, refused
        assert refused.error is not None and "'database'" in refused.error, refused

        payments = handle.createActor(Recorder)
        ready = handle.ask(
            us.address,
            RegisterParticipant("payments", {"database": str(ledger)}, participant=payments),
            LONG,
        )
        assert type(ready) is ParticipantReady, ready
        assert ("payments", None) == (ready.name, ready.error)

        assert "completed" == us.run("reg-1", "order", {}, timeout=LONG).status
        assert "compensated" == us.run("reg-2", "order", {"reject": "charge"}, timeout=LONG).status

        # The application supervises what it registers: it stops them (a Participant closes
        # its ledger), so that no connection of theirs stays open in this process, in-process,
        # to be inherited by the actor systems later tests fork from it. The ask after is
        # answered once the stops ran (in-process, messages run in the order sent).
        for actor in (unconfigured, payments):
            handle.tell(actor, ActorExitRequest())
        handle.ask(us.address, QueryStatus("reg-1"), LONG)
    assert [("reg-1", "charge", "do")] == effects(ledger)


# --- 4. an app actor's refused start --------------------------------------------------------------


def test_an_app_actor_receives_start_rejected(start: Any) -> None:
    """A start for an unknown definition, sent by an app actor, comes back to it as the
    exported ``understudy.StartRejected`` (a message, not the SagaRejected exception)."""
    us = start(definitions())
    assert "StartRejected" in understudy.__all__
    with us.private() as handle:
        relayer = handle.createActor(Relayer)
        reply = handle.ask(relayer, Relay(us.address, StartSaga("r-1", "no-such-saga", {})), LONG)
    assert type(reply) is understudy.StartRejected, reply
    assert not isinstance(reply, BaseException)
    assert ("r-1", "UnknownDefinition") == (reply.saga_id, reply.error)
    assert "no-such-saga" in reply.reason


# --- 5. what a participant lacks is refused up front ----------------------------------------------


def _charge_step(action: str, compensation: str) -> SagaDefinition:
    """The order saga with its charge step asking payments for ``action``/``compensation``."""
    order = order_definition(timeout=STEP_TIMEOUT)
    steps = [
        attrs.evolve(step, action=action, compensation=compensation)
        if step.name == "charge"
        else step
        for step in order.steps
    ]
    return SagaDefinition(order.name, order.version, steps)


LACKING = {
    # what is missing: (the definition's charge step, what the refusal names)
    "action": (
        ("teleport", "refund"),
        ["'payments'", "'charge'", "action 'teleport'", "charge, create, reserve, ship"],
    ),
    "compensation": (
        ("charge", "unrefund"),
        ["'payments'", "'charge'", "compensation 'unrefund'", "cancel, refund, release"],
    ),
}


@pytest.mark.parametrize("lacking", sorted(LACKING))
def test_a_definition_naming_what_a_participant_lacks_is_refused_at_start(
    tmp_path: Path, base: str, lacking: str
) -> None:
    """The start fails naming the participant, the step, what is missing and what it has;
    it holds nothing after: a start with a correct definition works at once on that store."""
    (action, compensation), named = LACKING[lacking]
    store = tmp_path / "sagas.db"
    before = _children(os.getpid())
    with pytest.raises(ActorSystemError) as refused:
        Understudy.start(
            store, [_charge_step(action, compensation)], recorders(tmp_path), base=base, hosts=1
        )
    for part in named:
        assert part in str(refused.value)
    assert set() == _children(os.getpid()) - before  # no actor system, no zombie left

    with Understudy.start(store, definitions(), recorders(tmp_path), base=base, hosts=1) as us:
        assert "completed" == us.run("after-refusal", "order", {}, timeout=LONG).status


def test_adding_a_participant_lacking_an_action_is_refused(start: Any, tmp_path: Path) -> None:
    """A participant added after start that lacks an action (and a compensation) a registered
    definition names is refused naming them, and not registered; the runtime goes on."""
    shipping = SagaDefinition(
        "shipping", 1, [Step("dispatch", "shipper", "dispatch", "recall", timeout=STEP_TIMEOUT)]
    )
    us = start([*definitions(), shipping])
    with pytest.raises(ActorSystemError) as refused:
        us.add_participant("shipper", Recorder, {"database": str(tmp_path / "shipper.db")}, LONG)
    for part in ["'shipper'", "'dispatch'", "action 'dispatch'", "compensation 'recall'"]:
        assert part in str(refused.value)
    with pytest.raises(UnknownParticipant):
        us.run("ship-1", "shipping", {}, timeout=LONG)
    assert "completed" == us.run("order-1", "order", {}, timeout=LONG).status


# --- 6. no process-wide side effects --------------------------------------------------------------

_IMPORT_CHECK = """
import json
from thespian.system import multiprocCommon
before = multiprocCommon.detach_child
import understudy
import understudy.runtime
print(json.dumps({"same": multiprocCommon.detach_child is before}))
"""

_ENVIRONMENT_CHECK = """
import json, os, sys
sys.path.insert(0, sys.argv[2])
from conftest import order_definition, recorders
from pathlib import Path
from understudy import Understudy

def zombies():
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    fields = stat.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == os.getpid() and fields[0] == b"Z":
                found.append(int(entry))
    return found

tmp = Path(sys.argv[1])
before = dict(os.environ)
us = Understudy.start(
    tmp / "sagas.db", [order_definition(timeout=60.0)], recorders(tmp),
    base="multiprocTCPBase", hosts=1,
)
during = dict(os.environ)
status = us.run("env-1", "order", {}, timeout=120.0).status
us.shutdown()
after = dict(os.environ)

def changes(now):
    names = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    return {k: [before.get(k), now.get(k)] for k in names}

print(json.dumps({
    "status": status,
    "changed while running": changes(during),
    "changed after": changes(after),
    "zombies": zombies(),
}))
"""


def _python(script: str, *args: str) -> dict[str, Any]:
    """Run ``script`` in a fresh Python process; the JSON it prints last. Its environment is
    this one's without Thespian's variables, as a new application process would start, and not
    as whatever ran in this process (a Thespian system of its own, say) left it."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("THESPIAN_", "THESPLOG_"))
    }
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=4 * LONG,
        check=False,
        env=environment,
    )
    assert 0 == done.returncode, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_importing_understudy_leaves_thespian_unpatched() -> None:
    assert {"same": True} == _python(_IMPORT_CHECK)


def test_a_multiprocess_runtime_leaves_the_environment_and_no_zombie(tmp_path: Path) -> None:
    """In a fresh process: ``os.environ`` while a multiprocTCPBase runtime runs and after its
    shutdown is what it was before the start, and the process has no zombie child after."""
    outcome = _python(_ENVIRONMENT_CHECK, str(tmp_path), str(TESTS))
    assert {
        "status": "completed",
        "changed while running": {},
        "changed after": {},
        "zombies": [],
    } == outcome


# --- 7. loopback only -----------------------------------------------------------------------------


def test_every_socket_understudy_listens_on_is_loopback(tmp_path: Path) -> None:
    """On multiprocTCPBase: this process's new sockets, Thespian's admin and every process
    under it (its logger, the coordinator, hosts and participants) listen on 127.0.0.1 only;
    so does a handle from ``us.private()``.

    The admin is the coordinator's parent. It is not a child of this process: Thespian forks
    a child that forks the admin and exits (understudy collects it at shutdown), so the admin
    is an orphan; this process's new children are checked too, for what it is worth."""
    me = os.getpid()
    before = _sockets(me)
    children = _children(me)
    us = Understudy.start(
        tmp_path / "sagas.db", definitions(), recorders(tmp_path), base="multiprocTCPBase"
    )
    try:
        assert "completed" == us.run("net-1", "order", {}, timeout=LONG).status
        actors = _understudy_pids(us)
        coordinator = us.hosts(LONG).coordinator_pid
        admin = int((_stat(coordinator) or ["", "0"])[1])
        assert admin not in (0, 1, me), admin  # else the sweep below would take in strangers
        processes = {admin, *_descendants(admin), *(_children(me) - children)}
        assert actors <= processes, (actors, processes)

        listening = {pid: _listens_on(pid) for pid in processes}
        listening[me] = _listens_on(me, _sockets(me) - before)
        for pid in {me, admin, *actors}:
            assert listening[pid], f"process {pid} listens on nothing: is this test blind?"
        wide = {
            pid: addresses
            for pid, addresses in listening.items()
            if any(not address.startswith("127.0.0.1:") for address in addresses)
        }
        assert {} == wide

        held = _sockets(me)
        with us.private():
            private = _listens_on(me, _sockets(me) - held)
        assert private and all(address.startswith("127.0.0.1:") for address in private)
    finally:
        us.shutdown()
