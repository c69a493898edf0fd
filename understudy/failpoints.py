"""Named failpoints at every persistence and messaging boundary of understudy.

Production code calls :func:`hit` at each boundary. With nothing armed, a hit is one truthiness
test of a module-level dict (``python bench/failpoints.py`` measures it), so failpoints stay
compiled in. Tests arm :class:`Fault` values; they travel to other processes inside the setup
messages of saga hosts and participants, and each process counts its own hits.

Three kinds of point, and the actions each accepts:

- every point: ``kill`` (SIGKILL this process), ``kill_system`` (SIGKILL this process's whole
  process group: on a multi-process base, the actor system with every actor in it),
  ``raise`` (:class:`InjectedFault`), ``hang`` and ``delay`` (sleep ``delay`` seconds; a hang
  is a delay longer than the step timeouts);
- message points (a message about to be sent) also: ``drop`` and ``duplicate``. :func:`hit`
  returns the action and the caller skips or repeats the send;
- store points (inside or just after a store transaction) also: ``busy``, ``io_error`` and
  ``disk_full``, raised as the :class:`sqlite3.OperationalError` SQLite itself reports, so the
  store's real error translation and rollback run;
- store points also: the database server's own faults (:data:`SERVER_ACTIONS`),
  ``connection_lost``, ``serialization_failure``, ``deadlock`` and ``statement_timeout``
  (``store.after_commit``: only ``connection_lost``, the others cannot happen once a transaction
  committed). :func:`hit` returns them, and the store makes them happen for real on its own
  connection: the PostgreSQL store terminates its own backend, has the server raise the
  error with its SQLSTATE, or sets a 1 ms statement timeout and sleeps, so that its real error
  translation, retry and reconnect paths run; the SQLite store raises the closest error SQLite
  itself reports (:data:`SQLITE_EQUIVALENTS`). The schedule drawer draws them for PostgreSQL
  runs only.

A fault with ``once_file`` fires at most once across every process and restart: the file is
created atomically when it fires, and a fault whose file exists stays quiet. Without it a fault
fires at the ``nth`` hit in each process (a restarted process counts from zero again), and at
every later hit too when ``persistent``. Participants run in processes of their own on
multi-process bases, so a fault at a participant point can name the ``participant`` it is for.
A fault with ``log_file`` appends one line per firing, which is how a harness learns what fired
in processes it cannot see.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from typing import Any, Final

import attrs

CODE: Final = "code"
MESSAGE: Final = "message"
STORE: Final = "store"

#: Every failpoint understudy's code hits, with its kind.
POINT_KINDS: Final[dict[str, str]] = {
    "coordinator.before_route": MESSAGE,  # a start accepted, not yet sent to its saga host
    "coordinator.before_reply": MESSAGE,  # a saga's end known, the caller not told yet
    "host.before_commit": CODE,  # a batch of intents and snapshots about to be committed
    "host.after_intent_commit": CODE,  # intent durable, request not sent yet
    "host.send": MESSAGE,  # a request to a participant (forward or compensation) being sent
    "host.after_send": CODE,  # request sent, reply not received yet
    "host.after_reply": CODE,  # reply received, next snapshot not committed yet
    "host.after_compensation_intent": CODE,  # compensation intent durable, not sent yet
    "host.after_compensation_send": CODE,  # compensation sent, its reply not received yet
    "host.after_compensation_reply": CODE,  # compensation confirmed, not committed yet
    "host.after_terminal": CODE,  # terminal state durable, caller not told
    "store.in_transaction": STORE,  # inside the snapshot transaction, before its commit
    "store.after_commit": STORE,  # the snapshot transaction committed, caller not told yet
    "store.claim": STORE,  # inside a recovery claim (incarnation bump) transaction
    "participant.before_apply": CODE,  # request received, effect not applied
    "participant.after_apply": CODE,  # effect and ledger row committed, reply not sent
    "participant.before_reply": MESSAGE,  # the reply being sent
    # Hit only while an operator's verb is applied: last, and left out of drawn schedules
    # without verbs (VERB_POINTS), so that every seed draws the faults it always drew.
    "host.before_verb": CODE,  # an operator's command about to be applied to its saga
    "host.after_verb": CODE,  # the command and the saga's transition durable, nothing sent
}
POINTS: Final = tuple(POINT_KINDS)
#: The points hit only while an operator's verb is applied.
VERB_POINTS: Final = ("host.before_verb", "host.after_verb")

CRASHES: Final = ("kill", "kill_system", "raise", "hang", "delay")
MESSAGE_ACTIONS: Final = ("drop", "duplicate")
STORE_ACTIONS: Final = ("busy", "io_error", "disk_full")
#: The database server's own faults, carried out by the store on its own connection.
SERVER_ACTIONS: Final = (
    "connection_lost",
    "serialization_failure",
    "deadlock",
    "statement_timeout",
)
#: The server faults that can happen once a transaction has committed.
AFTER_COMMIT_SERVER_ACTIONS: Final = ("connection_lost",)
ACTIONS: Final = CRASHES + MESSAGE_ACTIONS + STORE_ACTIONS + SERVER_ACTIONS

#: Points hit outside any one saga's handling (a batch, a store transaction): a fault there
#: cannot be scoped to a saga.
BATCH_POINTS: Final = frozenset(
    {"host.before_commit", "store.in_transaction", "store.after_commit", "store.claim"}
)

#: What SQLite says for each store failure, word for word.
_STORE_ERRORS: Final = {
    "busy": "database is locked",
    "io_error": "disk I/O error",
    "disk_full": "database or disk is full",
}

#: What the SQLite store raises for each server fault: the closest error SQLite itself
#: reports. A serialization failure or a deadlock is another writer in the way (SQLite: the
#: database is locked); a statement cut short is an interrupted statement (what
#: ``sqlite3.Connection.interrupt`` makes SQLite report); a lost connection is the file
#: becoming unreachable under the store (an I/O error).
SQLITE_EQUIVALENTS: Final = {
    "serialization_failure": "database is locked",
    "deadlock": "database is locked",
    "statement_timeout": "interrupted",
    "connection_lost": "disk I/O error",
}

HANG_SECONDS: Final = 3.0


def actions_for(point: str) -> tuple[str, ...]:
    """The actions ``point`` accepts."""
    kind = POINT_KINDS[point]
    if kind == MESSAGE:
        return CRASHES + MESSAGE_ACTIONS
    if kind == STORE:
        server = AFTER_COMMIT_SERVER_ACTIONS if point == "store.after_commit" else SERVER_ACTIONS
        return CRASHES + STORE_ACTIONS + server
    return CRASHES


def sqlite_error(action: str | None) -> None:
    """For the SQLite store at a store point: raise the error SQLite reports for the server
    fault ``action`` that :func:`hit` returned (nothing for None)."""
    if action in SQLITE_EQUIVALENTS:
        raise sqlite3.OperationalError(SQLITE_EQUIVALENTS[action])


class InjectedFault(Exception):
    """Raised by a failpoint armed with ``action="raise"``."""


def _check_action(instance: Fault, attribute: Any, value: str) -> None:
    if instance.point not in POINT_KINDS:
        raise ValueError(
            f"unknown failpoint {instance.point!r}; the failpoints are: {', '.join(POINTS)}"
        )
    allowed = actions_for(instance.point)
    if value not in allowed:
        raise ValueError(
            f"failpoint {instance.point!r} ({POINT_KINDS[instance.point]} point) cannot "
            f"{value!r}; it accepts: {', '.join(allowed)}"
        )


@attrs.frozen
class Fault:
    """Fire ``action`` at the ``nth`` hit of ``point`` (counting only hits for ``saga_id`` when
    it is set), and at every later hit too when ``persistent``. ``delay`` is the sleep of the
    ``delay`` and ``hang`` actions (``hang`` defaults to :data:`HANG_SECONDS`)."""

    point: str
    action: str = attrs.field(default="kill", validator=_check_action)
    nth: int = attrs.field(default=1)
    saga_id: str | None = None
    once_file: str | None = None
    delay: float = 0.0
    persistent: bool = False
    log_file: str | None = None
    participant: str | None = None  # participant points: only in the one of this name

    @nth.validator
    def _check_nth(self, attribute: Any, value: int) -> None:
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"nth counts hits from 1; got {value!r} for {self.point!r}")

    def __attrs_post_init__(self) -> None:
        # A scope the point never reports would make the fault silently never fire.
        if self.saga_id is not None and self.point in BATCH_POINTS:
            raise ValueError(
                f"failpoint {self.point!r} is hit for a whole batch, not one saga: drop "
                f"saga_id={self.saga_id!r} (or use a point of the saga's own handling)"
            )
        if self.participant is not None and not self.point.startswith("participant."):
            raise ValueError(
                f"participant={self.participant!r} scopes participant points only, not "
                f"{self.point!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The fault as plain JSON-ready values (a saved schedule is a list of these)."""
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fault:
        fields = {f.name for f in attrs.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"a fault has no field(s) {', '.join(unknown)}: {data!r}")
        return cls(**data)

    def describe(self) -> str:
        scope = f" of saga {self.saga_id}" if self.saga_id else ""
        if self.participant:
            scope += f" in participant {self.participant}"
        every = " and every later hit" if self.persistent else ""
        return f"{self.action} at hit {self.nth}{every} of {self.point}{scope}"


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


def hit(point: str, saga_id: str | None = None, participant: str | None = None) -> str | None:
    """Mark that execution reached ``point`` (for ``saga_id``, in ``participant``); fire an
    armed fault whose turn it is. Returns ``"drop"`` or ``"duplicate"`` when a message point's
    fault asks the caller to do so, and a server fault (:data:`SERVER_ACTIONS`) at a store
    point, for the store to carry out."""
    if not _armed:
        return None
    verdict = None
    for fault in _armed.get(point, ()):
        if (fault.saga_id is not None and fault.saga_id != saga_id) or (
            fault.participant is not None and fault.participant != participant
        ):
            continue
        count = _hits.get(fault, 0) + 1
        _hits[fault] = count
        if count == fault.nth or (fault.persistent and count > fault.nth):
            verdict = _fire(fault, saga_id) or verdict
    return verdict


def _fire(fault: Fault, saga_id: str | None) -> str | None:
    line = f"{fault.point} {fault.action} pid={os.getpid()} saga={saga_id or '-'} at={time.time()}"
    if fault.once_file is not None:
        try:
            fd = os.open(fault.once_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return None
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
        os.close(fd)
    if fault.log_file is not None:
        # One short O_APPEND write: atomic among processes, and on disk before a SIGKILL.
        fd = os.open(fault.log_file, os.O_CREAT | os.O_APPEND | os.O_WRONLY)
        os.write(fd, (line + "\n").encode())
        os.close(fd)
    action = fault.action
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "kill_system":
        os.killpg(os.getpgid(0), signal.SIGKILL)
    elif action == "raise":
        raise InjectedFault(f"injected fault: {fault.describe()}")
    elif action in ("hang", "delay"):
        time.sleep(fault.delay or (HANG_SECONDS if action == "hang" else 0.0))
    elif action in _STORE_ERRORS:
        raise sqlite3.OperationalError(_STORE_ERRORS[action])
    else:
        return action  # drop, duplicate; a server fault: the caller carries it out
    return None
