"""The participant base class: write a saga participant as an actor with registered handlers.

A participant applies each request at most once. Its ledger of idempotency keys lives in SQLite,
in the participant's own database file, and every handler runs inside the ledger's transaction:
the effect the handler writes through ``db`` and the ledger row commit together, or neither does.
So a request repeated after a crash, a timeout or a duplicated message returns the recorded
outcome without running the handler again.

Group commit: requests that arrive together share one transaction (each under a savepoint of its
own, so a failing handler undoes only its own writes), and one FULL commit makes them all
durable; only then do the replies go out. A participant under load pays one fsync per batch,
not per request.

Ledger rules (the participant half of invariants I4, I6 and I7):
- a forward key seen before returns its recorded outcome; the same key with another payload is
  refused;
- a compensation for a forward key never applied succeeds as a no-op, and leaves a tombstone;
- a forward request that arrives after its compensation (the tombstone) is refused.

Example::

    class Inventory(Participant):
        def setup(self, db, options):
            db.execute("CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, qty INTEGER)")

        @action("reserve")
        def reserve(self, step, db):
            ...  # raise Reject("out of stock") for a business refusal
            return {"reserved": qty}

        @compensation("release")
        def release(self, step, db):
            ...
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import attrs

from understudy import codec, failpoints
from understudy.actors.batching import GroupCommit, Outbox
from understudy.actors.system import ActorTypeDispatcher
from understudy.actors.watch import OwnerWatch
from understudy.errors import PayloadError
from understudy.messages import ConfigureParticipant, ParticipantReady, StepReply, StepRequest
from understudy.supervisors.protocol import Batch, Flush, Stopped

F = TypeVar("F", bound=Callable[..., Any])


class Reject(Exception):
    """Raise from a handler to refuse a request for a business reason (out of stock, card
    declined). The refusal is recorded under the key and the saga compensates."""


@attrs.frozen
class StepContext:
    """What a handler knows about the request it serves."""

    saga_id: str
    step: str
    action: str
    kind: str
    key: str
    attempt: int
    payload: dict[str, Any]
    results: dict[str, Any]  # forward results of earlier steps, by step name
    forward_result: Any = None  # for a compensation: what the forward action returned


def action(name: str) -> Callable[[F], F]:
    """Register the decorated method as the handler of forward action ``name``."""

    def mark(func: F) -> F:
        func.__understudy_action__ = name  # type: ignore[attr-defined]
        return func

    return mark


def compensation(name: str) -> Callable[[F], F]:
    """Register the decorated method as the handler of compensation ``name``."""

    def mark(func: F) -> F:
        func.__understudy_compensation__ = name  # type: ignore[attr-defined]
        return func

    return mark


_LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS understudy_ledger (
    key TEXT PRIMARY KEY,
    saga_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    kind TEXT NOT NULL,
    action TEXT NOT NULL,
    digest BLOB NOT NULL,
    outcome TEXT NOT NULL,
    result BLOB,
    reason TEXT,
    at REAL NOT NULL
)
"""

APPLIED = "applied"
REJECTED = "rejected"
NOOP = "noop"
TOMBSTONE = "tombstone"


class Participant(GroupCommit, OwnerWatch, ActorTypeDispatcher):
    """Base class of participant actors; see the module docstring."""

    _actions: ClassVar[dict[str, str]] = {}
    _compensations: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        actions = dict(cls._actions)
        compensations = dict(cls._compensations)
        for attr, value in vars(cls).items():
            if hasattr(value, "__understudy_action__"):
                actions[value.__understudy_action__] = attr
            if hasattr(value, "__understudy_compensation__"):
                compensations[value.__understudy_compensation__] = attr
        cls._actions = actions
        cls._compensations = compensations

    def __init__(self) -> None:
        super().__init__()
        self.name: str | None = None
        self.db: sqlite3.Connection | None = None
        # Requests applied in the open transaction, replied to once it commits.
        self.staged: list[tuple[StepRequest, Any, StepReply, bool]] = []

    def setup(self, db: sqlite3.Connection, options: dict[str, Any]) -> None:
        """Hook: create the participant's own tables in ``db``; ``options`` come from
        ``add_participant``. Runs once per actor start, inside a transaction."""

    # --- configuration ----------------------------------------------------------------------

    def receiveMsg_ConfigureParticipant(self, msg: ConfigureParticipant, sender: Any) -> None:
        try:
            self._configure(msg)
        except Exception as exc:
            self.send(
                sender, ParticipantReady(msg.name, f"{type(exc).__name__}: {exc}", os.getpid())
            )
            return
        self.watch_parent(msg.watch_interval)
        self.send(sender, ParticipantReady(msg.name, None, os.getpid()))

    def _configure(self, msg: ConfigureParticipant) -> None:
        failpoints.arm(msg.faults)
        database = msg.options.get("database")
        if not database:
            raise ValueError(
                f"participant {msg.name!r} needs a ledger database: pass "
                "options={'database': 'path/to/participant.db'}"
            )
        self.name = msg.name
        db = sqlite3.connect(
            database,
            timeout=float(msg.options.get("busy_timeout", 5.0)),
            isolation_level=None,
            check_same_thread=False,
        )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={msg.options.get('synchronous', 'FULL')}")
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(_LEDGER_SCHEMA)
            self.setup(db, dict(msg.options))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            db.close()
            raise
        self.db = db

    # --- requests ---------------------------------------------------------------------------

    def receiveMsg_StepRequest(self, msg: StepRequest, sender: Any) -> None:
        if self.db is None:
            self.send(
                sender,
                _reply(
                    msg,
                    "error",
                    reason=f"participant {self.name or '?'} "
                    "received a request before it was configured",
                ),
            )
            return
        failpoints.hit("participant.before_apply", msg.saga_id, self.name)
        self._accept(msg, sender, redelivered=False)

    def _accept(self, msg: StepRequest, sender: Any, redelivered: bool) -> None:
        assert self.db is not None
        reply = self._stage(self.db, msg)
        self.staged.append((msg, sender, reply, redelivered))
        # Group commit: every request that arrives before the flush joins the same
        # transaction, so one FULL commit covers them all (as in the saga host).
        self.schedule_flush()

    def receiveMsg_Batch(self, msg: Batch, sender: Any) -> None:
        """Requests a saga host sent together: each handled as if it had come alone,
        including what Thespian does when a handler raises (once more, then an error)."""
        for message in msg.messages:
            for attempt in (1, 2):
                try:
                    self.receiveMessage(message, sender)
                    break
                except Exception as exc:
                    if attempt == 2 and isinstance(message, StepRequest):
                        self.send(
                            sender,
                            _reply(
                                message,
                                "error",
                                reason=f"participant could not handle it ({exc!r})",
                            ),
                        )

    def receiveMsg_Flush(self, msg: Flush, sender: Any) -> None:
        self.flush_started(len(self.staged))
        self._flush()

    def _stage(self, db: sqlite3.Connection, msg: StepRequest) -> StepReply:
        """Apply ``msg`` inside the open batch transaction. A failing handler undoes only its
        own writes (its savepoint, in :meth:`_decide`); a failing ledger statement abandons the
        whole batch."""
        digest = hashlib.sha256(codec.encode([msg.action, msg.payload])).digest()
        if not db.in_transaction:
            db.execute("BEGIN IMMEDIATE")
        try:
            return self._decide(db, msg, digest)
        except _HandlerFailed as failed:
            return _reply(msg, "error", reason=failed.reason)
        except BaseException as exc:
            # Thespian hands this message back once more (then bounces it to the saga as an
            # error); the requests staged before it get an error reply, so they retry.
            self._abandon(f"participant {self.name!r} could not write its ledger: {exc}")
            raise

    def _abandon(self, reason: str) -> None:
        """Roll back the open batch and answer every request staged in it with an error."""
        staged, self.staged = self.staged, []
        if self.db is not None and self.db.in_transaction:
            self.db.execute("ROLLBACK")
        for msg, sender, _unsent, _redelivered in staged:
            self.send(sender, _reply(msg, "error", reason=reason))

    def _flush(self) -> None:
        """Commit the staged requests, then reply to each: a reply never runs ahead of the
        ledger row it reports (write-ahead, as in the saga host)."""
        staged, self.staged = self.staged, []
        db = self.db
        if not staged or db is None:
            return
        try:
            if db.in_transaction:
                db.execute("COMMIT")
        except sqlite3.Error as exc:
            # Nothing of the batch is applied: each saga sees a failed attempt and retries
            # under its own policy, with the same key.
            self.staged = staged
            self._abandon(f"participant {self.name!r} could not commit its ledger: {exc}")
            return
        outbox = Outbox()  # one message per saga host, however many replies it carries
        for msg, sender, reply, redelivered in staged:
            try:
                failpoints.hit("participant.after_apply", msg.saga_id, self.name)
                verdict = failpoints.hit("participant.before_reply", msg.saga_id, self.name)
            except Exception as exc:
                # A crash between the commit and the reply. Do what Thespian does with a
                # message whose handler raised: handle it once more (the ledger replays the
                # recorded outcome), and after a second failure bounce it as an error.
                if redelivered:
                    self.send(
                        sender,
                        _reply(msg, "error", reason=f"participant could not handle it ({exc})"),
                    )
                else:
                    self._accept(msg, sender, redelivered=True)
                continue
            if verdict == "drop":
                continue  # lost on the way: the saga's reply deadline notices
            outbox.add(sender, reply)
            if verdict == "duplicate":
                outbox.add(sender, reply)
        outbox.send_all(self.send)

    def _decide(self, db: sqlite3.Connection, msg: StepRequest, digest: bytes) -> StepReply:
        row = db.execute(
            "SELECT digest, outcome, result, reason FROM understudy_ledger WHERE key = ?",
            (msg.key,),
        ).fetchone()
        if row is not None:
            recorded_digest, outcome, result, reason = row
            if outcome == TOMBSTONE:
                return _reply(
                    msg,
                    "rejected",
                    reason="refused: this step was already compensated before the request arrived",
                )
            if recorded_digest != digest:
                return _reply(
                    msg,
                    "rejected",
                    reason=f"idempotency key {msg.key!r} was used "
                    "before with a different action or payload",
                )
            return _reply(
                msg,
                "rejected" if outcome == REJECTED else "ok",
                result=codec.decode(result) if result is not None else None,
                reason=reason,
                replayed=True,
            )
        forward_result = None
        if msg.kind == "undo":
            forward = db.execute(
                "SELECT outcome, result FROM understudy_ledger WHERE key = ?", (msg.forward_key,)
            ).fetchone()
            if forward is None or forward[0] != APPLIED:
                if forward is None:
                    self._record(db, msg.forward_key, msg, b"", TOMBSTONE, None, None)
                self._record(db, msg.key, msg, digest, NOOP, None, None)
                return _reply(msg, "ok", reason="nothing to undo: the step never applied here")
            forward_result = codec.decode(forward[1]) if forward[1] is not None else None
            method_name = self._compensations.get(msg.action)
        else:
            method_name = self._actions.get(msg.action)
        if method_name is None:
            known = sorted(self._actions if msg.kind == "do" else self._compensations)
            return _reply(
                msg,
                "rejected",
                reason=f"participant {self.name!r} has no "
                f"{'action' if msg.kind == 'do' else 'compensation'} {msg.action!r} "
                f"(it has: {', '.join(known) or 'none'})",
            )
        context = StepContext(
            msg.saga_id,
            msg.step_name,
            msg.action,
            msg.kind,
            msg.key,
            msg.attempt,
            msg.payload,
            msg.results,
            forward_result,
        )
        db.execute("SAVEPOINT handler")
        try:
            result = getattr(self, method_name)(context, db)
            encoded = codec.encode(result, f"result of {msg.action!r}")
        except Reject as refusal:
            db.execute("ROLLBACK TO handler")
            db.execute("RELEASE handler")
            self._record(db, msg.key, msg, digest, REJECTED, None, str(refusal))
            return _reply(msg, "rejected", reason=str(refusal))
        except Exception as exc:
            db.execute("ROLLBACK TO handler")
            db.execute("RELEASE handler")
            reason = str(exc) if isinstance(exc, PayloadError) else f"{type(exc).__name__}: {exc}"
            raise _HandlerFailed(reason) from exc
        db.execute("RELEASE handler")
        self._record(db, msg.key, msg, digest, APPLIED, encoded, None)
        return _reply(msg, "ok", result=result)

    @staticmethod
    def _record(
        db: sqlite3.Connection,
        key: str,
        msg: StepRequest,
        digest: bytes,
        outcome: str,
        result: bytes | None,
        reason: str | None,
    ) -> None:
        db.execute(
            "INSERT INTO understudy_ledger (key, saga_id, step, kind, action, digest, outcome, "
            "result, reason, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                msg.saga_id,
                msg.step,
                "do" if key == msg.forward_key else msg.kind,
                msg.action,
                digest,
                outcome,
                result,
                reason,
                time.time(),
            ),
        )

    def receiveMsg_Stop(self, msg: Any, sender: Any) -> None:
        """The runtime is shutting down: close the database now, not at garbage collection."""
        self._close()
        self.send(sender, Stopped(-1, self.name or "?"))

    def receiveMsg_ActorExitRequest(self, msg: Any, sender: Any) -> None:
        self._close()

    def _close(self) -> None:
        self._flush()  # what is staged commits and is answered; nothing half-done is left
        if self.db is not None:
            self.db.close()
            self.db = None


class _HandlerFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _reply(
    msg: StepRequest,
    outcome: str,
    result: Any = None,
    reason: str | None = None,
    replayed: bool = False,
) -> StepReply:
    return StepReply(
        msg.saga_id,
        msg.step,
        msg.kind,
        msg.key,
        msg.attempt,
        msg.incarnation,
        outcome,
        result,
        reason,
        replayed,
    )
