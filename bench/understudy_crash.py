"""understudy under load and after a crash: memory with sagas in flight, recovery after SIGKILL.

- :func:`memory`: total resident memory of the whole system (the client process and, on a
  multi-process base, Thespian's admin, logger, coordinator, saga hosts and participants) before
  and after ``sagas`` order sagas are held in flight at their second step.
- :func:`recovery`: ``unfinished`` sagas held at their second step, the whole system killed with
  SIGKILL, then a new runtime on the same files: seconds from just before ``Understudy.start``
  (which resumes every unfinished saga before it returns) until every saga is terminal.

Each figure comes from fresh child processes (``python -m bench.understudy_crash <mode> ...``),
which print their answer with :func:`bench.common.emit`.

Which processes are "the system": on the multi-process bases Thespian's admin double-forks
(``setsid`` and ``fork``) out of the caller's process tree, so the coordinator, hosts and
participants (its children) are not descendants of the caller: they live in the admin's session.
The child therefore counts its descendants plus every process of its coordinator's session.
Every child is also started with a unique environment token, which all processes forked from it
inherit, so the parent can find and SIGKILL every process of a system, detached or not, even
when the child died before it could report them.

Run from the repository root::

    python -m bench.understudy_crash selftest         # both figures, 2,000 sagas, both bases
    python -m bench.understudy_crash figures [N]      # the same at N sagas (default 10,000)
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.common import BASES, LABELS, Recovery, emit, fails, parse, rss_kib
from bench.participants import Delayed, order_definition, order_participants, payload
from understudy import SagaAccepted, Understudy

ROOT = Path(__file__).resolve().parent.parent
MODULE = "bench.understudy_crash"
TOKEN_VAR = "UNDERSTUDY_BENCH_CRASH_TOKEN"
_TOKENS: set[str] = set()  # of the children this process started (others may run the bench too)

WAVE = 1000  # starts submitted before waiting for their acceptances
# Reply deadline of every step: far beyond any run, so that no timeout, retry or compensation
# fires while sagas are held (it would change both figures). Recovered sagas keep the same
# definition (and deadline); the participants there answer at once.
HOLD_TIMEOUT = 3600.0
POLL_S = 0.02  # how often the recovering child counts unfinished sagas
WAIT_POLL_S = 0.1  # how often a holding child counts durable intents
SETTLE_S = 0.5  # RSS sampling interval once every intent is durable

ACTIVE_SQL = "SELECT count(*) FROM understudy_sagas WHERE status IN ('running', 'compensating')"
# A saga is held at its second step (index 1, reserve_inventory) once that step's intent is
# committed: the host commits it before it sends the request (write-ahead).
HELD_SQL = (
    "SELECT count(DISTINCT saga_id) FROM understudy_events WHERE kind = 'intent' AND step = 1"
)


# --- the parent's side --------------------------------------------------------------------------


def memory(base: str, workdir: Path, sagas: int = 10_000, delay: float = 600.0) -> dict[str, Any]:
    """Total RSS of the whole system before and with ``sagas`` sagas in flight on ``base``.

    Returns base, sagas, rss_total_mib, rss_before_mib, per_saga_kib (RSS growth / sagas) and
    processes, plus pss_total_mib and pss_before_mib (PSS: shared pages split among sharers),
    held_after_s (first start to all held) and load_1m (the machine's load when measured).
    """
    if not 0 < delay < HOLD_TIMEOUT:
        raise ValueError(f"delay must be within (0, {HOLD_TIMEOUT}) s: replies come after it")
    run = _fresh(workdir, f"memory-{base}")
    timeout = 300.0 + sagas * 0.1
    with _Child(["memory", base, str(run), str(sagas), str(delay)], run, "memory") as child:
        return child.result(timeout)


def recovery(base: str, workdir: Path, unfinished: int = 10_000) -> Recovery:
    """Kill -9 the whole system with ``unfinished`` sagas held at their second step, restart
    on the same files, and time until every saga is terminal."""
    run = _fresh(workdir, f"recovery-{base}")
    timeout = 300.0 + unfinished * 0.1
    with _Child(["hold", base, str(run), str(unfinished)], run, "hold") as holder:
        ready = holder.result(timeout)
        # Kill while the child sleeps: its whole session, the sessions it reported (the detached
        # admin's) and anything carrying its token, until nothing of that system is left.
        holder.kill(ready["sessions"])
    with closing(_reader(run / "sagas.db")) as db:
        left = db.execute(ACTIVE_SQL).fetchone()[0]
        held = db.execute(HELD_SQL).fetchone()[0]
    if left != unfinished or held != unfinished:
        raise RuntimeError(
            f"after the kill the store has {left} unfinished sagas, {held} held at step 2; "
            f"expected {unfinished} of each"
        )
    with _Child(["recover", base, str(run), str(unfinished)], run, "recover") as recoverer:
        return Recovery(**recoverer.result(timeout))


def _fresh(workdir: Path, prefix: str) -> Path:
    """A new directory for one run's store and ledgers (a reused store would hold old sagas)."""
    workdir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=workdir))


class _Child:
    """One child process and every process of the actor system it starts.

    Its output goes to files rather than pipes: nobody reads a pipe while the holding child
    sleeps, and a full pipe would block the child's logging. On exit (normal or not) every
    process of the system is gone: a child that ended is given a moment for its actor processes
    to stop, then whatever is left is killed and reported as a leak.
    """

    def __init__(self, args: list[str], run: Path, name: str) -> None:
        self.args = args
        self.token = uuid.uuid4().hex
        _TOKENS.add(self.token)
        self.out = run / f"{name}.stdout"
        self.err = run / f"{name}.stderr"
        self.sessions: set[int] = set()
        self.leaked: list[int] = []
        self.killed = False

    def __enter__(self) -> _Child:
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            # Its own session: the child and its descendants can be killed as one group.
            self.process = subprocess.Popen(
                [sys.executable, "-m", MODULE, *self.args],
                cwd=ROOT,
                env={**os.environ, TOKEN_VAR: self.token},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        self.sessions.add(self.process.pid)
        return self

    def result(self, timeout: float) -> Any:
        """The child's BENCH-RESULT line; raises if it exits or times out without one."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.out.read_text(errors="replace").splitlines(keepends=True):
                if line.startswith("BENCH-RESULT ") and line.endswith("\n"):  # whole lines
                    answer = parse(line)
                    if isinstance(answer, dict) and "sessions" in answer:
                        self.sessions.update(answer["sessions"])
                    return answer
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"child {' '.join(self.args)} exited with {self.process.returncode} "
                    f"without a result; stderr tail:\n{self._tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"child {' '.join(self.args)} gave no result within {timeout:.0f} s; "
                    f"stderr tail:\n{self._tail()}"
                )
            time.sleep(0.05)

    def kill(self, sessions: Iterable[int] = ()) -> int:
        """SIGKILL the child and every process of its system; returns how many were killed."""
        self.sessions.update(sessions)
        self.killed = True
        count = _kill_all(self.token, self.sessions)
        self.process.wait(10)  # ours to reap; the actor processes are reparented and reaped
        return count

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        if exc_type is not None or self.killed:
            self.kill()  # failed, or killed on purpose: nothing may outlive it
            return
        try:
            self.process.wait(120)  # it emitted its result; shutting down
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(
                f"child {' '.join(self.args)} did not exit after its result; killed it"
            ) from None
        # A clean exit must leave no actor process behind; give a shutdown a moment to finish.
        deadline = time.monotonic() + 10.0
        while _members(self.token, self.sessions) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.leaked = _members(self.token, self.sessions)
        if self.leaked:
            _kill_all(self.token, self.sessions)
            print(
                f"warning: child {' '.join(self.args)} left processes {self.leaked} running "
                "after it exited; killed them",
                file=sys.stderr,
            )
        if self.process.returncode != 0:
            raise RuntimeError(
                f"child {' '.join(self.args)} exited with {self.process.returncode}; "
                f"stderr tail:\n{self._tail()}"
            )

    def _tail(self, chars: int = 4000) -> str:
        try:
            return self.err.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


# --- processes --------------------------------------------------------------------------------


def _table() -> dict[int, tuple[int, int, str]]:
    """Every process: pid -> (parent pid, session id, state letter)."""
    table: dict[int, tuple[int, int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            table[int(entry)] = (int(fields[1]), int(fields[3]), fields[0])
        except (OSError, IndexError, ValueError):
            continue  # exited while we looked
    return table


def _token_of(pid: int) -> str | None:
    """The benchmark token in the process's environment (inherited across fork), if any."""
    prefix = f"{TOKEN_VAR}=".encode()
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            for item in environ.read().split(b"\0"):
                if item.startswith(prefix):
                    return item[len(prefix) :].decode(errors="replace")
    except OSError:
        pass
    return None


def _members(token: str, sessions: Iterable[int]) -> list[int]:
    """Live (not zombie) processes of one system: in one of ``sessions`` or carrying ``token``."""
    wanted = set(sessions)
    me = os.getpid()
    return sorted(
        pid
        for pid, (_ppid, sid, state) in _table().items()
        if pid != me and state != "Z" and (sid in wanted or _token_of(pid) == token)
    )


def _kill_all(token: str, sessions: Iterable[int], timeout: float = 30.0) -> int:
    """SIGKILL every process of one system until none is left alive."""
    sessions = set(sessions) - {os.getsid(0)}  # never our own session, whatever was reported
    for sid in sessions:
        # A session leader's group holds its whole session here (Thespian forks without
        # setpgid): one signal kills the group at once, before a supervisor can replace anyone.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(sid, signal.SIGKILL)
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while alive := _members(token, sessions):
        # Anything forked while the groups died, or outside them, goes one by one.
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {alive} survived SIGKILL for {timeout:.0f} s")
        time.sleep(0.02)
    return len(killed)


def system_pids(sessions: Iterable[int]) -> list[int]:
    """This process, its descendants, and every process of ``sessions`` and below (the
    detached Thespian admin's session on multi-process bases); zombies excluded."""
    table = _table()
    wanted = set(sessions)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _sid, _state) in table.items():
        children.setdefault(ppid, []).append(pid)
    todo = [os.getpid(), *(pid for pid, (_p, sid, _s) in table.items() if sid in wanted)]
    found: set[int] = set()
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo.extend(children.get(pid, ()))
    return sorted(pid for pid in found if table.get(pid, (0, 0, "Z"))[2] != "Z")


def _pss_kib(pid: int) -> int:
    """Proportional set size: shared pages (forked interpreters share most of theirs) are
    divided among the processes that share them, so the PSS of a system adds up correctly."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def admin_sessions(us: Understudy) -> list[int]:
    """The session of the coordinator's process when it is not this one: the detached admin's
    (Thespian's admin calls setsid() and forks, so it and every actor process it forks are in
    that session; it is the pid understudy records for the detached admin)."""
    coordinator = us.hosts().coordinator_pid
    if coordinator in (0, os.getpid()):
        return []
    return [os.getsid(coordinator)]


# --- the children's side ----------------------------------------------------------------------


def _reader(store: Path) -> sqlite3.Connection:
    # Read-only, autocommit: every query sees the latest commit and never takes the write lock.
    return sqlite3.connect(f"file:{store}?mode=ro", uri=True, isolation_level=None, timeout=30)


def _start_held(base: str, run: Path, delay: float | None) -> Understudy:
    return Understudy.start(
        run / "sagas.db",
        [order_definition(timeout=HOLD_TIMEOUT)],
        order_participants(run, inventory=Delayed, delay=delay),
        base=base,
    )


def _submit(us: Understudy, sagas: int) -> None:
    """Start ``sagas`` order sagas, a wave at a time, each wave's starts durable before the next."""
    for first in range(0, sagas, WAVE):
        futures = [
            us.submit_future(f"order-{i}", "order", payload(i), wait=False)
            for i in range(first, min(first + WAVE, sagas))
        ]
        for future in futures:
            reply = future.result(300)
            if not isinstance(reply, SagaAccepted) or reply.existing:
                raise RuntimeError(f"a start was not accepted as new: {reply!r}")


def _wait_for(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(WAIT_POLL_S)


def _wait_held(store: Path, sagas: int) -> None:
    """Until every saga's step-2 intent is committed. The reader is opened only now, after
    start() (a multi-process start refuses to fork with the store open in this process)."""
    with closing(_reader(store)) as db:
        _wait_for(
            f"{sagas} sagas held at step 2",
            lambda: db.execute(HELD_SQL).fetchone()[0] >= sagas,
            120.0 + sagas * 0.05,
        )


def _totals(pids: list[int]) -> tuple[int, int]:
    return sum(rss_kib(pid) for pid in pids), sum(_pss_kib(pid) for pid in pids)


def _settled(sessions: list[int]) -> tuple[list[int], int, int]:
    """RSS once it stops moving. The intent is committed before its request is sent; on the
    multi-process base the requests are still crossing sockets into the inventory participant
    for a moment after the last commit, and that memory belongs to the figure."""
    pids = system_pids(sessions)
    rss, pss = _totals(pids)
    for _ in range(40):
        time.sleep(SETTLE_S)
        pids = system_pids(sessions)
        now_rss, pss = _totals(pids)
        if abs(now_rss - rss) < 1024:  # under 1 MiB between samples: settled
            return pids, now_rss, pss
        rss = now_rss
    return pids, rss, pss


def _child_memory(base: str, run: Path, sagas: int, delay: float) -> None:
    us = _start_held(base, run, delay)
    try:
        sessions = admin_sessions(us)
        before_pids = system_pids(sessions)
        before_rss, before_pss = _totals(before_pids)
        submitted = time.perf_counter()
        _submit(us, sagas)
        _wait_held(run / "sagas.db", sagas)
        held_s = time.perf_counter() - submitted
        pids, rss, pss = _settled(sessions)
        result = {
            "base": base,
            "sagas": sagas,
            "rss_total_mib": round(rss / 1024, 2),
            "rss_before_mib": round(before_rss / 1024, 2),
            "per_saga_kib": round((rss - before_rss) / sagas, 3),
            "processes": len(pids),
            # Forked interpreters share pages that RSS counts once per process; PSS does not.
            "pss_total_mib": round(pss / 1024, 2),
            "pss_before_mib": round(before_pss / 1024, 2),
            "held_after_s": round(held_s, 2),  # from the first start to all held
            "load_1m": os.getloadavg()[0],  # the machine is shared: how busy it was
        }
    finally:
        us.shutdown()
    emit(result)


def _child_hold(base: str, run: Path, unfinished: int) -> None:
    """Phase A: hold ``unfinished`` sagas at step 2 (the inventory never answers), report the
    sessions of the system, and sleep until the parent kills everything."""
    us = _start_held(base, run, None)
    sessions = [os.getsid(0), *admin_sessions(us)]
    _submit(us, unfinished)
    _wait_held(run / "sagas.db", unfinished)
    emit({"ready": unfinished, "sessions": sessions, "pids": system_pids(sessions)})
    threading.Event().wait()  # until SIGKILL; no shutdown, no flush, no atexit


def _child_recover(base: str, run: Path, unfinished: int) -> None:
    """Phase B: a new runtime on the killed system's files, with participants that answer."""
    store = run / "sagas.db"
    deadline = time.monotonic() + 300.0 + unfinished * 0.1
    began = time.perf_counter()
    us = Understudy.start(
        store, [order_definition(timeout=HOLD_TIMEOUT)], order_participants(run), base=base
    )
    start_returned = time.perf_counter() - began
    try:
        with closing(_reader(store)) as db:
            while db.execute(ACTIVE_SQL).fetchone()[0]:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{db.execute(ACTIVE_SQL).fetchone()[0]} sagas still unfinished after "
                        f"{time.perf_counter() - began:.0f} s"
                    )
                time.sleep(POLL_S)
            seconds = time.perf_counter() - began
            statuses = dict(
                db.execute("SELECT status, count(*) FROM understudy_sagas GROUP BY status")
            )
            timeouts = db.execute(
                "SELECT count(*) FROM understudy_events WHERE kind = 'timeout'"
            ).fetchone()[0]
    finally:
        us.shutdown()
    expected = sum(fails(i) for i in range(unfinished))
    detail = {
        "start_returned_s": round(start_returned, 4),
        "completed": statuses.pop("completed", 0),
        "compensated": statuses.pop("compensated", 0),
        "failed": statuses.pop("failed", 0),
        "base": base,
        "resumed": us.resumed,
        "timeouts": timeouts,
        "load_1m": os.getloadavg()[0],  # the machine is shared: how busy it was
    }
    # The figure counts only if the run was right: every saga ended, none failed, and exactly
    # the one in ten declined at the charge compensated.
    if (
        detail["failed"]
        or statuses
        or detail["compensated"] != expected
        or detail["completed"] != unfinished - expected
        or us.resumed != unfinished
    ):
        raise RuntimeError(
            f"recovery ended wrong: {detail}, other statuses {statuses}; expected "
            f"{unfinished - expected} completed and {expected} compensated, all resumed"
        )
    emit(asdict(Recovery(LABELS.get(base, f"understudy {base}"), unfinished, seconds, detail)))


# --- entry points -----------------------------------------------------------------------------


def _figures(sagas: int) -> None:
    """Both figures on both bases, printed, each checked for the obvious ways to be wrong."""
    with tempfile.TemporaryDirectory(prefix="understudy-crash-") as tmp:
        for base in BASES:
            mem = memory(base, Path(tmp), sagas=sagas)
            print(mem, flush=True)
            rec = recovery(base, Path(tmp), unfinished=sagas)
            print(rec.summary(), flush=True)
            assert mem["per_saga_kib"] > 0 and mem["processes"] >= 1, mem
            assert base == BASES[0] or mem["processes"] > 1, f"actor processes missed: {mem}"
            assert rec.detail["failed"] == 0, rec.summary()


@contextlib.contextmanager
def _no_stray_processes() -> Iterator[None]:
    """Fails the run if any process of a system this process started outlived it."""
    yield
    stray = [
        pid
        for pid, (_ppid, _sid, state) in _table().items()
        if state != "Z" and _token_of(pid) in _TOKENS
    ]
    if stray:
        raise RuntimeError(f"processes {stray} of a benchmark system are still running")


def main(argv: list[str]) -> None:
    mode, *args = argv or ["selftest"]
    if mode == "selftest":
        with _no_stray_processes():
            _figures(int(args[0]) if args else 2000)
    elif mode == "figures":
        with _no_stray_processes():
            _figures(int(args[0]) if args else 10_000)
    elif mode == "memory":
        _child_memory(args[0], Path(args[1]), int(args[2]), float(args[3]))
    elif mode == "hold":
        _child_hold(args[0], Path(args[1]), int(args[2]))
    elif mode == "recover":
        _child_recover(args[0], Path(args[1]), int(args[2]))
    else:
        raise SystemExit(
            f"usage: python -m {MODULE} selftest [N] | figures [N] | "
            "memory BASE DIR N DELAY | hold BASE DIR N | recover BASE DIR N"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
