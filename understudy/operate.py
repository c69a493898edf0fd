"""Operators' verbs and compensation debt, from any process: with a runtime running or not.

:class:`Operator` is what ``understudy cancel | pause | resume | retry | skip | resolve |
abandon | debt`` and :meth:`understudy.Understudy.cancel` (and the other verbs) use::

    with Operator("orders.db", who="alice") as op:
        op.cancel("order-17", why="the customer called it off")

A verb is stored as a pending command (who, why, verb, arguments) and applied by whoever owns
the saga's shard, in the same transaction as the saga's transition, so it is applied exactly
once and recorded in the saga's timeline:

- a running understudy runtime owns it: its saga host applies the command within half a second
  (``command_poll``), and the operator waits up to ``wait`` seconds for the outcome;
- no runtime owns it (none is running, or its holder died): given the saga ``definitions``, the
  operator takes the shard's lease for the moment it applies the command itself, and what the
  verb sends (a compensation after a cancel, a retried step) is recorded as intent and sent by
  the next runtime that starts (its recovery resends what each saga waits on). Without
  ``definitions`` the command stays pending, and the next runtime to start applies it.

A verb that would break an invariant raises :class:`~understudy.errors.VerbRefused` with the
reason (also recorded in the timeline); nothing of the saga changed. A verb still pending when
``wait`` runs out returns its :class:`~understudy.persistence.base.CommandRecord` with
``state == "pending"``: it is applied when the saga's owner gets to it.
"""

from __future__ import annotations

import getpass
import os
import socket
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from understudy import codec
from understudy.actors import machines, verbs
from understudy.definitions import SagaDefinition
from understudy.diagnosis import snapshot_state
from understudy.errors import CorruptRecord, SagaNotFound, VerbRefused
from understudy.persistence import SagaStore, open_store, redact
from understudy.persistence.base import (
    APPLIED,
    FAILED,
    PENDING,
    REFUSED,
    CommandDone,
    CommandRecord,
    Lease,
    OperatorCommand,
    Transition,
)
from understudy.supervisors.leases import OPERATOR_HOLDER, about_me, take_over_dead
from understudy.supervisors.recovery import shard_of

__all__ = ["Debt", "Operator", "default_who"]

#: Seconds an operator holds a shard's lease while it applies a command itself. Far more than
#: applying one command takes; it is ended as soon as the command is applied.
OPERATOR_LEASE_TTL = 10.0
POLL = 0.05  # seconds between looks at a pending command's outcome


def default_who() -> str:
    """Who an operator is when not said: ``user@host``."""
    try:
        user = getpass.getuser()
    except Exception:  # no login name (a container without a passwd entry)
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


@attrs.frozen
class Debt:
    """One compensation a saga owes: it exhausted its retries, or an operator abandoned the
    saga. Listed until a retry pays it or an operator resolves it (``understudy debt``)."""

    saga_id: str
    definition: str
    step: int
    name: str
    participant: str | None
    compensation: str | None
    error: str
    attempts: int
    since: float


class Operator:
    """Operators' verbs on the sagas of the store at ``store`` (a path or URL, or an open
    :class:`~understudy.persistence.SagaStore`, left open at :meth:`close`).

    ``who`` is recorded with every verb (default ``user@host``); ``definitions`` let the
    operator apply a verb itself when no runtime owns the saga; ``wait`` is how many seconds a
    verb waits for a running runtime to apply it."""

    def __init__(
        self,
        store: str | os.PathLike[str] | SagaStore,
        *,
        who: str | None = None,
        definitions: Iterable[SagaDefinition] = (),
        wait: float = 10.0,
    ) -> None:
        if isinstance(store, SagaStore):
            self._store, self._owned, self._where = store, False, "the saga store"
        else:
            self._where = redact(os.fspath(store))
            self._store, self._owned = open_store(store), True
        self.who = who or default_who()
        self.definitions = {d.key: d for d in definitions}
        self.wait = wait

    # --- the verbs ----------------------------------------------------------------------------

    def cancel(self, saga_id: str, *, why: str) -> CommandRecord:
        """Stop going forward and compensate every step that may have run, in reverse order.
        Refused once an irreversible step has run, or when the saga is compensating already."""
        return self.apply(saga_id, "cancel", why)

    def pause(self, saga_id: str, *, why: str) -> CommandRecord:
        """Send nothing new (a request already out is still answered) until :meth:`resume`."""
        return self.apply(saga_id, "pause", why)

    def resume(self, saga_id: str, *, why: str) -> CommandRecord:
        """Undo :meth:`pause`: what was held back is sent now."""
        return self.apply(saga_id, "resume", why)

    def retry(self, saga_id: str, *, why: str) -> CommandRecord:
        """Send a backed-off request now, or take a parked (failed) saga up again where it
        stopped: its step again, or its owed compensations again."""
        return self.apply(saga_id, "retry", why)

    def skip(self, saga_id: str, *, step: str | int, result: Any, why: str) -> CommandRecord:
        """Give the forward step the saga is at (by name or index) ``result`` by hand, and go
        on. Refused while a request for it is out (it could still apply)."""
        return self.apply(saga_id, "skip", why, step=step, result=result)

    def resolve(self, saga_id: str, *, step: str | int, why: str) -> CommandRecord:
        """Mark the compensation of ``step`` done by hand (``why`` is its note): a debt, or the
        next compensation due. The saga then compensates the rest."""
        return self.apply(saga_id, "resolve", why, step=step)

    def abandon(self, saga_id: str, *, why: str) -> CommandRecord:
        """Stop, and record every outstanding compensation as debt instead of dropping it."""
        return self.apply(saga_id, "abandon", why)

    def apply(self, saga_id: str, verb: str, why: str, **args: Any) -> CommandRecord:
        """Submit ``verb`` for ``saga_id`` and return its outcome (see the module's doc)."""
        command = self.submit(saga_id, verb, why, **args)
        if self.definitions:
            self._apply_here(command)
        return self._outcome(command)

    def submit(self, saga_id: str, verb: str, why: str, **args: Any) -> CommandRecord:
        """Store ``verb`` for ``saga_id`` as pending and return it, without waiting."""
        if verb not in verbs.VERBS:
            raise VerbRefused(f"unknown verb {verb!r}; the verbs are {', '.join(verbs.VERBS)}")
        if not isinstance(why, str) or not why.strip():
            raise VerbRefused(f"{verb} needs a reason (why): it is recorded with the verb")
        unknown = set(args) - set(verbs.VERB_ARGS[verb])
        missing = set(verbs.VERB_ARGS[verb]) - set(args)
        if unknown or missing:
            raise VerbRefused(
                f"{verb} takes {', '.join(verbs.VERB_ARGS[verb]) or 'no arguments'} besides why"
                f"; got {', '.join(sorted(args)) or 'none'}"
            )
        codec.encode(args, f"arguments of {verb}")  # a result msgpack cannot hold: PayloadError
        record = self._store.get(saga_id)
        if record is None:
            raise SagaNotFound(f"no saga with id {saga_id!r} in {self._where!r}")
        shards = len(self._store.leases()) or 1
        return self._store.submit(
            OperatorCommand(
                saga_id, shard_of(saga_id, shards), verb, dict(args), self.who, why, time.time()
            )
        )

    # --- compensation debt ------------------------------------------------------------------

    def debt(self) -> list[Debt]:
        """Every compensation owed, oldest first."""
        return debts(self._store)

    # --- applying a command with no runtime --------------------------------------------------

    def _apply_here(self, command: CommandRecord) -> None:
        """Apply ``command`` in this process when nobody owns its saga's shard."""
        store = self._store
        holder = f"{OPERATOR_HOLDER}{uuid.uuid4().hex[:12]}"
        lease = store.acquire(command.shard, holder, OPERATOR_LEASE_TTL, about_me(None))
        if lease is None and take_over_dead(store, store.leases()[command.shard]):
            lease = store.acquire(command.shard, holder, OPERATOR_LEASE_TTL, about_me(None))
        if lease is None:
            return  # a runtime owns it: its saga host applies the command
        try:
            done = self._plan(command, lease)
            if done is not None:
                store.apply(done, lease)
        finally:
            # Whom the previous holder's death is blamed on stays for the next holder (I12).
            store.blame(lease, lease.blamed)
            store.expire(lease.shard, lease.epoch)

    def _plan(self, command: CommandRecord, lease: Lease) -> list[Any] | None:
        """The writes that apply or refuse ``command``; None to leave it pending."""
        now = time.time()
        record = self._store.get(command.saga_id)
        if record is None:
            return [verbs.refusal(command, None, f"no saga with id {command.saga_id!r}", now)]
        definition = self.definitions.get((record.definition, record.version))
        if definition is None:
            return None  # the next runtime with that definition applies it
        if record.terminal and record.status != FAILED:
            reason = (
                f"cannot {command.verb} saga {command.saga_id!r}: it is {record.status}, and a "
                "finished saga is never changed"
            )
            return [verbs.refusal(command, record.incarnation, reason, now)]
        try:
            saga = machines.from_record(record, definition)
        except CorruptRecord as exc:
            reason = f"the saga's stored state cannot be read: {exc}"
            return [verbs.refusal(command, record.incarnation, reason, now)]
        try:
            verbs.operate(
                saga, command.verb, command.args, command.who, command.why, command.id, now
            )
        except VerbRefused as exc:
            return [verbs.refusal(command, record.incarnation, str(exc), now)]
        # What the verb sends is now durable intent: the next runtime's recovery sends it.
        transition = Transition(
            saga.saga_id,
            saga.incarnation,
            saga.status,
            saga.snapshot(),
            saga.snapshot_version + 1,
            saga.state.recovery_attempts,
            now,
            saga.state.reason,
            saga.take_events(),
            reopen=record.status == FAILED,
        )
        done = CommandDone(command.id, saga.saga_id, saga.incarnation, APPLIED, "applied", now)
        return [transition, done]

    def _outcome(self, command: CommandRecord) -> CommandRecord:
        deadline = time.monotonic() + self.wait
        while True:
            current = self._store.command(command.id)
            if current is None:  # pragma: no cover - commands are never deleted
                raise SagaNotFound(f"command {command.id} vanished from {self._where!r}")
            if current.state != PENDING or time.monotonic() >= deadline:
                break
            time.sleep(POLL)
        if current.state == REFUSED:
            raise VerbRefused(current.outcome or "refused")
        return current

    def close(self) -> None:
        if self._owned:
            self._store.close()

    def __enter__(self) -> Operator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def debts(store: SagaStore, saga_ids: Sequence[str] | None = None) -> list[Debt]:
    """The compensations owed by the parked sagas of ``store`` (or of ``saga_ids``), oldest
    first; each named from the saga's ``debt`` events."""
    if saga_ids is None:
        records = store.list_sagas(FAILED, limit=1 << 30)
    else:
        records = list(store.get_many(saga_ids).values())
    found: list[Debt] = []
    for record in records:
        state, _unreadable = snapshot_state(record)  # an unreadable one is parked as such
        owed = state.get("debt") if state is not None else None
        if not owed:
            continue
        named = {e.step: e.detail for e in store.events(record.saga_id) if e.kind == "debt"}
        for step, error, attempts, since in owed:
            detail = named.get(step, {})
            found.append(
                Debt(
                    record.saga_id,
                    f"{record.definition} v{record.version}",
                    step,
                    str(detail.get("name", f"step {step}")),
                    detail.get("participant"),
                    detail.get("compensation"),
                    str(error),
                    int(attempts),
                    float(since),
                )
            )
    return sorted(found, key=lambda d: (d.since, d.saga_id, d.step))
