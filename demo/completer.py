"""The approver: completes the approval steps from outside the actor system, in a process of
its own, while the saga runs and across every crash the harness inflicts on it.

It reads the approvals participant's inbox (``demo.approvals``: the ``approvals`` rows its
handler commits, each with the step's handle and the plan the workload drew) every few
milliseconds from a connection of its own, and carries each plan out with
``understudy.complete`` / ``reject`` / ``fail`` when it falls due, as a person at a screen or a
provider's webhook would: the participant may be running, killed, or restarting meanwhile. A
``never`` request is not answered; once its compensation withdraws it (the row says so), a late
click approves it anyway, and that must be refused.

Every call and what came of it is appended to ``completer.jsonl`` in the run's directory, one
JSON object a line: what the approver was told is what the harness holds the run to
(``demo.deferred_checks``). The approver is never killed (it stands for the world outside), so
the log is complete once its last line says ``stopped``.

It stops when ``completer.stop`` appears in the run's directory (the scenario's first invariant
creates it, once the run has healed and gone quiet), doing first what is left that writes
nothing (late clicks, completions of steps no longer waiting); also when the directory goes,
when the process that started it dies, or after an hour, so that it never outlives its run.

Run as ``python -m demo.completer DATABASE DIRECTORY``; :func:`start` and :func:`stop` do it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import IO, Any

import attrs

import understudy
from demo.approvals import APPROVE, APPROVE_SLOW, FAIL, NEVER, RACE, REJECT, TWICE
from understudy import CompletionRefused, LedgerError

LOG = "completer.jsonl"
STOP = "completer.stop"
ERRORS = "completer.err"
POLL = 0.01  # seconds between two looks at the inbox: a webhook is quick
RETRY = 0.05  # seconds before a call the database refused (locked, say) is made again
FINAL_TRIES = 100  # looks at what is left once told to stop (RETRY apart)
LIFETIME = 3600.0  # seconds: a completer whose run forgot it goes anyway
REJECTION = "over budget"
BREAKAGE = "the approval service broke"
CHANGE_OF_MIND = "changed my mind"


#: What the approver calls, by the name its log gives.
CALLS: dict[str, Callable[..., bool]] = {
    "complete": understudy.complete,
    "reject": understudy.reject,
    "fail": understudy.fail,
}


@attrs.define
class Task:
    """One request in the inbox and the calls its plan makes, in order."""

    key: str
    saga_id: str
    handle: str
    plan: str
    #: time.time() when its calls are made: its plan's delay after the handler's row was
    #: written (not after the approver saw it: it may have been starting still). A ``never``
    #: plan's calls are made when the request is withdrawn.
    due: float
    calls: list[tuple[str, tuple[Any, ...]]]
    withdrawn: bool = False


def plan_calls(plan: str, saga_id: str, ticket: int) -> list[tuple[str, tuple[Any, ...]]]:
    """The calls that carry ``plan`` out (``ticket`` makes each approval's result unique, so
    that the harness can tell which completion a saga got)."""
    approval = {"approved_by": "approver", "saga": saga_id, "ticket": ticket}
    refusal = {"code": "over_budget", "saga": saga_id, "ticket": ticket}
    if plan in (APPROVE, APPROVE_SLOW, RACE, NEVER):
        return [("complete", (approval,))]
    if plan == REJECT:
        return [("reject", (REJECTION, refusal))]
    if plan == FAIL:
        return [("fail", (BREAKAGE,))]
    if plan == TWICE:
        # A webhook delivered twice (harmless), then someone who changed their mind (refused).
        return [
            ("complete", (approval,)),
            ("complete", (approval,)),
            ("reject", (CHANGE_OF_MIND, refusal)),
        ]
    return []  # NOW: the handler approved it at once; nothing is deferred


class Approver:
    """The approver's loop; see the module docstring."""

    def __init__(self, database: str, directory: Path, log: IO[str]) -> None:
        self.database = database
        self.directory = directory
        self.log = log
        self.tasks: dict[str, Task] = {}
        self.seen_approval = 0  # the inbox rows read so far (by id)
        self.seen_withdrawal = 0
        self.tickets = 0

    def run(self, parent: int) -> None:
        started = time.monotonic()
        while not self._stopping(parent, started):
            self.scan()
            self.act(time.time())
            time.sleep(POLL)
        if (self.directory / STOP).exists():
            self.scan()
            for _ in range(FINAL_TRIES):  # a database busy for a moment is tried again
                if self.act(float("inf"), final=True):
                    break
                time.sleep(RETRY)
        self._write({"stopped": True, "left": sorted(k for k, t in self.tasks.items() if t.calls)})

    def _stopping(self, parent: int, started: float) -> bool:
        return (
            (self.directory / STOP).exists()
            or not self.directory.exists()
            or os.getppid() != parent
            or time.monotonic() - started > LIFETIME
        )

    def scan(self) -> None:
        """Take the new requests of the inbox, and note those withdrawn since."""
        try:
            with closing(sqlite3.connect(self.database, timeout=5)) as db:
                rows = db.execute(
                    "SELECT id, key, saga_id, handle, plan, at + delay FROM approvals WHERE id > ? "
                    "ORDER BY id",
                    (self.seen_approval,),
                ).fetchall()
                withdrawn = db.execute(
                    "SELECT id, forward_key FROM withdrawals WHERE id > ? ORDER BY id",
                    (self.seen_withdrawal,),
                ).fetchall()
        except sqlite3.Error:
            return  # the participant has not made its tables yet, or holds a lock: next look
        for row_id, key, saga_id, handle, plan, due in rows:
            self.seen_approval = row_id
            if key in self.tasks:
                continue  # the handler ran again for the same request: the harness says so
            self.tickets += 1
            calls = plan_calls(plan, saga_id, self.tickets)
            self.tasks[key] = Task(key, saga_id, handle, plan, due, calls)
        for row_id, forward_key in withdrawn:
            self.seen_withdrawal = row_id
            if forward_key in self.tasks:
                self.tasks[forward_key].withdrawn = True

    def act(self, now: float, final: bool = False) -> bool:
        """Make the calls that are due; False when one must be made again. ``final``: the
        run is over; make those that write nothing in a run that works (the step is no longer
        waiting, or was withdrawn), and leave a step that still waits (a saga parked by its
        faults) as it is."""
        done = True
        for task in self.tasks.values():
            due = task.withdrawn if task.plan == NEVER else task.due <= now
            if final and task.calls and not task.withdrawn:
                due = self._outcome(task.key) not in (None, "deferred")
            while due and task.calls:
                if not self._call(task):
                    done = False
                    break  # the database refused it: again at the next look
        return done

    def _call(self, task: Task) -> bool:
        """Make the task's next call; False when it must be made again."""
        verb, args = task.calls[0]
        line: dict[str, Any] = {
            "saga": task.saga_id,
            "key": task.key,
            "plan": task.plan,
            "call": verb,
            "args": list(args),
            "withdrawn": task.withdrawn,
        }
        function: Callable[..., bool] = CALLS[verb]
        try:
            recorded = function(self.database, task.handle, *args)
        except CompletionRefused as refused:
            line.update(answer="refused", state=refused.state, reason=str(refused))
        except LedgerError as exc:
            line.update(answer="error", reason=str(exc))
            self._write(line)
            task.due = time.time() + RETRY
            return False
        else:
            line["answer"] = "recorded" if recorded else "again"
        task.calls.pop(0)
        self._write(line)
        return True

    def _outcome(self, key: str) -> str | None:
        with contextlib.suppress(sqlite3.Error), closing(sqlite3.connect(self.database)) as db:
            row = db.execute(
                "SELECT outcome FROM understudy_ledger WHERE key = ?", (key,)
            ).fetchone()
            return None if row is None else str(row[0])
        return None

    def _write(self, line: dict[str, Any]) -> None:
        line["at"] = time.time()
        self.log.write(json.dumps(line) + "\n")
        self.log.flush()


def read_log(directory: Path) -> Iterator[dict[str, Any]]:
    """The completer's log lines (none when it never started)."""
    path = directory / LOG
    if not path.exists():
        return
    with open(path) as log:
        for text in log:
            if text.strip():
                yield json.loads(text)


def start(directory: Path, database: Path) -> subprocess.Popen[bytes]:
    """Start the approver of the run in ``directory`` on the participant's ``database``."""
    root = str(Path(__file__).resolve().parent.parent)  # where ``demo`` is importable from
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    with open(directory / ERRORS, "wb") as errors:
        return subprocess.Popen(
            [sys.executable, "-m", "demo.completer", str(database), str(directory)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            env=env,
            # A session of its own: a fault that kills the actor system's process group (or
            # this one's) leaves the world outside alone.
            start_new_session=True,
        )


def stop(process: subprocess.Popen[bytes], directory: Path, timeout: float = 60.0) -> list[str]:
    """Tell the approver the run is over and wait for it; complaints when it did not end well
    (its log may then be incomplete)."""
    with contextlib.suppress(FileNotFoundError):  # a directory gone stops it too
        (directory / STOP).touch()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return [f"the approver did not stop within {timeout} s: its log may be incomplete"]
    if process.returncode != 0:
        errors = _tail(directory / ERRORS)
        return [
            f"the approver exited with status {process.returncode}: "
            + (" | ".join(errors[-5:]) or "no output")
        ]
    return []


def _tail(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return []


def main(argv: list[str]) -> int:
    database, directory = argv
    with open(Path(directory) / LOG, "a") as log:
        Approver(database, Path(directory), log).run(os.getppid())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
