"""DBOS Transact peer: the order saga as a DBOS workflow, on a SQLite or PostgreSQL system database.

The saga is written the way DBOS documents durable workflows: a ``@DBOS.workflow`` calls
``@DBOS.step`` functions, catches the business error of the failing step and runs the
compensations of the completed steps, each itself a step, in reverse order.

DBOS is a process-wide singleton (one ``DBOS`` instance, one executor, one system database per
process), so every measurement runs in a fresh child process
(``python -m bench.peers.dbos_saga <mode> ...``) that prints its figures with ``common.emit``;
the parent rebuilds them with ``common.parse``. The parent never imports ``dbos``, so importing
this module works whether or not DBOS is installed (``available()`` says which).

The system database is a SQLite file (DBOS's default, switched to WAL + synchronous=FULL like
every system of the suite) or, for :data:`PG_NAME`, a PostgreSQL database: DBOS's production
configuration (its documentation recommends a Postgres system database for production; every
other setting stays at DBOS's defaults). The PostgreSQL URL reaches the child in
``DBOS_SYSTEM_DATABASE_URL``, never on its command line.

Run the self-check by hand from the repository root:
``python -m bench.peers.dbos_saga selftest``
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.common import (
    COMPENSATIONS,
    SERVER_PID_VARIABLE,
    STEPS,
    Recovery,
    Throughput,
    closed_loop,
    emit,
    fails,
    full_sync,
    parse,
    server_cpu,
)

NAME = "DBOS"
PG_NAME = "DBOS, PostgreSQL"
URL_VARIABLE = "DBOS_SYSTEM_DATABASE_URL"  # how the child learns a PostgreSQL system database

ROOT = Path(__file__).resolve().parent.parent.parent  # the parent of bench/
MODULE = "bench.peers.dbos_saga"

# Both recovery children must present the same application version and executor id: at launch
# DBOS recovers only the PENDING workflows of its own executor id *and* application version. The
# version is otherwise an MD5 of the workflows' source, which would match too, but pinning it
# removes any doubt; "local" is DBOS's default executor id outside DBOS Cloud, set explicitly
# for the same reason.
APP_NAME = "understudy-bench"
APP_VERSION = "understudy-bench-order-saga-1"
EXECUTOR_ID = "local"

WARM_UP = 10  # sagas run one by one before the measured window (one of them compensates)
STALL_SECONDS = 3600.0  # how long reserve_inventory blocks in the child that is killed
POLL_SECONDS = 0.01  # how often the recovering child counts terminal workflows

# Set by the child that is killed: its reserve_inventory blocks, so that every saga is durably
# inside its second step (create_order recorded, the workflow PENDING) when the kill comes.
_stall_reserve = False
_entered_reserve = 0
_entered_lock = threading.Lock()


def available() -> str | None:
    try:
        import dbos  # noqa: F401
    except ImportError as exc:
        return f"dbos is not importable ({exc}): pip install -e '.[bench]'"
    return None


# --- the parent's side ----------------------------------------------------------------------


def throughput(
    workdir: Path,
    concurrency: int,
    total: int,
    database_url: str | None = None,
    server_pid: int | None = None,
) -> Throughput:
    """``total`` sagas at ``concurrency``, the system database a fresh SQLite file in
    ``workdir`` or, with ``database_url``, that (fresh, empty) PostgreSQL database;
    ``server_pid``, its server's postmaster, whose CPU then counts in the run's."""
    database = "postgresql" if database_url else str(_fresh_database(workdir))
    env: dict[str, str] = {}
    if database_url:
        env[URL_VARIABLE] = database_url
        if server_pid:
            env[SERVER_PID_VARIABLE] = str(server_pid)
    output = _run_child(
        ["throughput", database, str(concurrency), str(total)],
        timeout=300.0 + total * 1.0,
        env=env,
    )
    return Throughput(**parse(output))


def recovery(workdir: Path, unfinished: int) -> Recovery:
    database = _fresh_database(workdir)
    _crash_with_sagas_in_flight(database, unfinished, timeout=300.0 + unfinished * 1.0)
    output = _run_child(
        ["recover", str(database), str(unfinished)], timeout=300.0 + unfinished * 1.0
    )
    return Recovery(**parse(output))


def _fresh_database(workdir: Path) -> Path:
    """A system database path in a directory of its own (the -wal and -shm files go there too)."""
    workdir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="dbos-", dir=workdir)) / "dbos_system.sqlite"


def _child_command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", MODULE, *args]


def _run_child(args: list[str], timeout: float, env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(
            _child_command(args),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, **env} if env else None,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(
            f"DBOS child {args[0]} timed out after {timeout:.0f}s; stderr tail:\n"
            f"{_tail(exc.stderr)}"
        ) from None
    if done.returncode != 0:
        raise RuntimeError(
            f"DBOS child {args[0]} exited with {done.returncode}; stderr tail:\n"
            f"{_tail(done.stderr)}"
        )
    return done.stdout


def _tail(text: str | bytes | None, chars: int = 4000) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return text[-chars:]


def _crash_with_sagas_in_flight(database: Path, unfinished: int, timeout: float) -> None:
    """Run the child that starts ``unfinished`` sagas, and SIGKILL it once all are durably
    stalled inside reserve_inventory. The parent kills it, so it is a real crash: no DBOS
    shutdown, no flush, no atexit."""
    stderr_path = database.parent / "crash-child.stderr"
    with open(stderr_path, "w") as stderr:
        child = subprocess.Popen(
            _child_command(["crash", str(database), str(unfinished)]),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        ready = threading.Event()
        lines: list[str] = []

        def read() -> None:
            assert child.stdout is not None
            for line in child.stdout:
                lines.append(line)
                if line.startswith("BENCH-RESULT "):
                    ready.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.1):
            if child.poll() is not None or time.monotonic() > deadline:
                break
        try:
            if not ready.is_set():
                raise RuntimeError(
                    f"DBOS crash child never reported its sagas stalled "
                    f"(exit code {child.poll()}); stderr tail:\n"
                    f"{_tail(stderr_path.read_text())}"
                )
            stalled = parse("".join(lines))
            if stalled["pending"] != unfinished:
                raise RuntimeError(f"DBOS crash child reported {stalled}, not {unfinished}")
        finally:
            if child.poll() is None:
                os.kill(child.pid, signal.SIGKILL)
            child.wait()
            reader.join(5)


# --- the child's side: DBOS, the saga, and the three measurements ------------------------


class PaymentRefused(Exception):
    """The business error of charge_payment: the saga compensates instead of failing."""


def _define_saga() -> Callable[[str, bool], dict[str, str]]:
    """Register the saga's workflow and steps with DBOS (in the child only) and return it.

    Defined in a function rather than at module level so that the parent, which imports this
    module to call throughput()/recovery(), neither needs dbos nor touches its registry.
    """
    from dbos import DBOS

    # DBOS steps default to retries_allowed=False, which is what the workload wants: a refused
    # charge is a business outcome, not a transient fault.

    @DBOS.step()
    def create_order(saga_id: str) -> dict[str, str]:
        return {"order": saga_id}

    @DBOS.step()
    def reserve_inventory(saga_id: str) -> dict[str, str]:
        global _entered_reserve
        if _stall_reserve:
            with _entered_lock:
                _entered_reserve += 1
            time.sleep(STALL_SECONDS)
        return {"reservation": saga_id}

    @DBOS.step()
    def charge_payment(saga_id: str, refuse: bool) -> dict[str, str]:
        if refuse:
            raise PaymentRefused(saga_id)
        return {"payment": saga_id}

    @DBOS.step()
    def cancel_order(saga_id: str) -> dict[str, str]:
        return {"cancelled": saga_id}

    @DBOS.step()
    def release_inventory(saga_id: str) -> dict[str, str]:
        return {"released": saga_id}

    # refund_payment is left out: charge_payment is the last step and the only one that fails,
    # so its compensation can never be needed.

    @DBOS.workflow()
    def order_saga(saga_id: str, refuse: bool) -> dict[str, str]:
        undo: list[Callable[[str], dict[str, str]]] = []
        try:
            create_order(saga_id)
            undo.append(cancel_order)
            reserve_inventory(saga_id)
            undo.append(release_inventory)
            charge_payment(saga_id, refuse)
        except PaymentRefused:
            for compensation in reversed(undo):
                compensation(saga_id)
            return {"saga": saga_id, "outcome": "compensated"}
        return {"saga": saga_id, "outcome": "completed"}

    # Keep the names honest against the shared workload definition.
    assert (create_order.__name__, reserve_inventory.__name__, charge_payment.__name__) == STEPS
    assert {cancel_order.__name__, release_inventory.__name__} < set(COMPENSATIONS)
    return order_saga


def _full_sync_on_connect(dbapi_connection: Any, _record: Any) -> None:
    """WAL + synchronous=FULL on every SQLite connection, as every system in the suite runs.

    DBOS 3.4's SQLite engine (dbos/_sys_db_sqlite.py) sets only isolation_level IMMEDIATE,
    busy_timeout and foreign_keys on connect, so it runs with SQLite's defaults: the rollback
    journal (journal_mode=DELETE) and this build's synchronous=FULL. There is no DBOS setting for
    pragmas, and passing our own engine (system_database_engine) would drop DBOS's own connect
    hook, so a pool-wide SQLAlchemy listener adds ours next to it.
    """
    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    full_sync(dbapi_connection)
    mode = dbapi_connection.execute("PRAGMA journal_mode").fetchone()[0]
    synchronous = dbapi_connection.execute("PRAGMA synchronous").fetchone()[0]
    if (mode, synchronous) != ("wal", 2):
        raise RuntimeError(f"SQLite runs with journal_mode={mode}, synchronous={synchronous}")


def _system_database_url(database: Path | str) -> str:
    """The child's system database: the PostgreSQL URL in ``DBOS_SYSTEM_DATABASE_URL`` when
    ``database`` is ``postgresql``, else the SQLite file ``database``."""
    if str(database) == "postgresql":
        return os.environ[URL_VARIABLE]
    return f"sqlite:///{database}"


def _launch(database: Path) -> None:
    import sqlalchemy
    from dbos import DBOS, DBOSConfig

    # Pool-wide, so it also covers the engine DBOS creates inside launch(). It touches SQLite
    # connections only: on PostgreSQL, DBOS runs exactly as configured below.
    sqlalchemy.event.listen(sqlalchemy.pool.Pool, "connect", _full_sync_on_connect)
    config: DBOSConfig = {
        "name": APP_NAME,
        "system_database_url": _system_database_url(database),
        "application_version": APP_VERSION,
        "executor_id": EXECUTOR_ID,
        "log_level": "WARNING",
        # No max_executor_threads: DBOS 3.4 then sizes its workflow executor at sys.maxsize
        # threads, so 1000 concurrent workflows are not capped. The system database pool stays at
        # DBOS's default (20 connections, 30 s checkout timeout), on SQLite (which serialises
        # writers anyway) and on PostgreSQL alike.
    }
    DBOS(config=config)
    DBOS.launch()


def _run_one(saga: Callable[[str, bool], dict[str, str]], saga_id: str, refuse: bool) -> Any:
    from dbos import DBOS, SetWorkflowID

    with SetWorkflowID(saga_id):  # the workflow id is the saga id
        return DBOS.start_workflow(saga, saga_id, refuse)


def _child_throughput(database: Path, concurrency: int, total: int) -> None:
    from dbos import DBOS

    saga = _define_saga()
    _launch(database)
    for i in range(WARM_UP):
        _run_one(saga, f"warm-{i}", fails(i)).get_result()

    # One waiter thread per in-flight saga blocks in handle.get_result() and reports the end.
    # get_result() is the handle's public way to wait (its future is an implementation detail),
    # and done() starts the next saga, which must not run on a DBOS executor thread.
    waiters = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="bench-waiter")

    def wait(handle: Any, done: Callable[[bool], None]) -> None:
        try:
            result = handle.get_result()
            done(result["outcome"] == "compensated")
        except BaseException:
            # closed_loop would wait forever for this saga; fail the child loudly instead.
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)

    def start(index: int, done: Callable[[bool], None]) -> None:
        # start_workflow returns before the workflow ends, but not at once: it first commits the
        # workflow's status row, waiting for a pool connection and SQLite's write lock behind the
        # running workflows (p50 0.2 s at c=50, 0.4 s at c=1000 on 2 cores). closed_loop's first
        # ``concurrency`` starts run one after another on this thread, so at c=1000 the sagas
        # are admitted at DBOS's own pace rather than all at once. Starting them from 1000
        # threads instead overruns DBOS's 20-connection pool (30 s checkout timeouts, retried).
        handle = _run_one(saga, f"s-{index}", fails(index))
        waiters.submit(wait, handle, done)

    name = PG_NAME if str(database) == "postgresql" else NAME
    cpu_before, server_before = time.process_time(), server_cpu()
    result = closed_loop(name, concurrency, total, start)
    result.cpu_seconds = time.process_time() - cpu_before  # DBOS runs in this process only
    server_after = server_cpu()
    if server_before is not None and server_after is not None:
        # The system database's server works for DBOS: its CPU counts as DBOS's.
        result.server_cpu_seconds = server_after - server_before
        result.cpu_seconds += result.server_cpu_seconds
    emit(asdict(result))
    waiters.shutdown()
    DBOS.destroy()


def _child_crash(database: Path, unfinished: int) -> None:
    """Start ``unfinished`` sagas that stall in reserve_inventory, report when all are durably
    PENDING there, then wait to be killed by the parent."""
    global _stall_reserve
    from dbos import DBOS

    _stall_reserve = True
    saga = _define_saga()
    _launch(database)
    for i in range(unfinished):
        _run_one(saga, f"s-{i}", fails(i))
    while True:
        with _entered_lock:
            entered = _entered_reserve
        # Entering reserve_inventory means create_order's output is committed; the workflow rows
        # say the same from the database's side.
        pending = DBOS.list_workflows(
            status="PENDING", workflow_id_prefix="s-", load_input=False, load_output=False
        )
        if entered == unfinished and len(pending) == unfinished:
            break
        time.sleep(0.05)
    emit({"entered": entered, "pending": len(pending)})
    threading.Event().wait()  # until SIGKILL


def _count_sagas(db: sqlite3.Connection, statuses: tuple[str, ...]) -> int:
    """Count the saga workflows in the given states straight from DBOS's workflow_status table:
    cheaper per poll than DBOS.list_workflows, and a WAL reader never blocks DBOS's writers."""
    marks = ",".join("?" * len(statuses))
    (count,) = db.execute(
        f"SELECT count(*) FROM workflow_status WHERE workflow_uuid LIKE 's-%' "
        f"AND status IN ({marks})",
        statuses,
    ).fetchone()
    return int(count)


def _child_recover(database: Path, unfinished: int) -> None:
    from dbos import DBOS

    saga = _define_saga()
    del saga  # registered so that recovery finds it; nothing here starts it
    terminal = ("SUCCESS", "ERROR")
    with closing(sqlite3.connect(database, isolation_level=None)) as db:  # reads only
        # Left behind by the crash: counted before launch, when nothing is recovering them yet.
        pending_before = _count_sagas(db, ("PENDING",))
        if pending_before != unfinished:
            raise RuntimeError(f"{pending_before} sagas PENDING after the crash, not {unfinished}")
        first_terminal: float | None = None
        began = time.perf_counter()
        _launch(database)  # recovers this executor's PENDING workflows via the internal queue
        launched = time.perf_counter() - began
        while (count := _count_sagas(db, terminal)) < unfinished:
            if count and first_terminal is None:
                first_terminal = time.perf_counter() - began
            time.sleep(POLL_SECONDS)
        seconds = time.perf_counter() - began

    ended = DBOS.list_workflows(workflow_id_prefix="s-", load_input=False, load_output=True)
    statuses: Counter[str] = Counter(str(status.status) for status in ended)
    compensated = sum(
        1
        for status in ended
        if isinstance(status.output, dict) and status.output.get("outcome") == "compensated"
    )
    detail: dict[str, Any] = {
        "pending_before": pending_before,
        "terminal": sum(statuses[s] for s in terminal),
        "statuses": dict(statuses),
        "compensated": compensated,
        "launch_seconds": round(launched, 4),
        "first_terminal_seconds": round(first_terminal or seconds, 4),
        "poll_seconds": POLL_SECONDS,
    }
    emit(asdict(Recovery(NAME, unfinished, seconds, detail)))
    DBOS.destroy()


def _selftest() -> None:
    with tempfile.TemporaryDirectory(prefix="dbos-selftest-") as tmp:
        workdir = Path(tmp)
        for concurrency in (1, 10):
            result = throughput(workdir, concurrency, 50)
            print(result.summary())
            assert result.compensated == 5, result.summary()
        recovered = recovery(workdir, 50)
        print(recovered.summary())
        assert recovered.detail["terminal"] == 50, recovered.summary()


def main(argv: list[str]) -> None:
    mode, *args = argv or ["selftest"]
    if mode == "selftest":
        _selftest()
    elif mode == "throughput":
        _child_throughput(Path(args[0]), int(args[1]), int(args[2]))
    elif mode == "crash":
        _child_crash(Path(args[0]), int(args[1]))
    elif mode == "recover":
        _child_recover(Path(args[0]), int(args[1]))
    else:
        raise SystemExit(f"usage: python -m {MODULE} selftest|throughput|crash|recover ...")


if __name__ == "__main__":
    main(sys.argv[1:])
