"""The participant base class: write a saga participant as an actor with registered handlers.

A participant applies each request at most once. Its ledger of idempotency keys
(:mod:`understudy.actors.ledger`) lives in the participant's own database, given by its
``database`` option: a SQLite file path, or a PostgreSQL URL (``postgresql://user@host/db``;
needs psycopg 3). Every ordinary handler runs inside the ledger's transaction, on that database's
connection (``db``: a ``sqlite3`` or a ``psycopg`` connection): the effect the handler writes
through ``db`` and the ledger row commit together, or neither does. So a request repeated after
a crash, a timeout or a duplicated message returns the recorded outcome without running the
handler again.

Group commit: requests that arrive together share one transaction (each under a savepoint of its
own, so a failing handler undoes only its own writes), and one commit makes them all durable;
only then do the replies go out. A participant under load pays one fsync per batch, not per
request. A ledger statement or a commit that fails abandons the whole batch: every request in it
is answered with an error and its saga retries under the same key. A connection lost (a
PostgreSQL server restarted, a backend terminated) is opened again on the next request.

Ledger rules (the participant half of invariants I4, I6 and I7):
- a forward key seen before returns its recorded outcome; the same key with another payload is
  refused;
- a compensation for a forward key never applied succeeds as a no-op, and leaves a tombstone;
- a forward request that arrives after its compensation (the tombstone) is refused.

External handlers (``@action(name, external=True)``, ``@compensation(name, external=True)``)
are for effects outside any database, a payment provider's HTTP API say, which no transaction
can hold. Such a request is served write-ahead: the ledger first commits a row saying it
``started``; the handler then runs in a worker thread (a pool of ``external_workers`` threads
per participant, 8 by default), outside any transaction, with ``db=None`` and ``step.key`` to
pass on to the API, which must deduplicate by it; other requests are served meanwhile. The
outcome it returns (a result, or a :class:`Reject`) is recorded, and only then replied. If the
handler raises, or the participant dies meanwhile, the row stays ``started``: a retry of the
key runs the handler again, and a compensation of that step runs too (where an ordinary one
would be a no-op), told ``step.forward_outcome == "unknown"``. Requests for a step whose call is
in flight here wait for it.

A refusal may carry data beside its reason (``Reject("card declined", data={...})``): it is
recorded with the refusal, replayed with it, and sent in the reply's ``data``.

Steps that finish later: a handler (ordinary or external) that returns :class:`Later` leaves its
step waiting for a completion from outside (a webhook, a person, a long job), which calls
``understudy.complete(database, step.handle, result)`` (or ``reject``, ``fail``: see
:mod:`understudy.actors.deferred`). The ledger row says ``deferred``, committed with what the
handler wrote; the saga's requests for the step wait here (nothing runs again); the participant
looks for completions every ``completion_poll`` seconds (0.25 by default) while steps wait, and
replies with the recorded outcome. A compensation of a step still waiting cancels its handle (a
completion is then refused) and runs, told ``step.forward_outcome == "cancelled"``; one of a
step that was deferred runs whatever its completion said (``"applied"``, ``"rejected"``,
``"failed"``). See docs/deferred.md.

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

    class Payments(Participant):
        @action("charge", external=True)
        def charge(self, step, db):  # db is None
            return provider.charge(step.payload["card"], idempotency_key=step.key)

        @compensation("refund", external=True)
        def refund(self, step, db):  # step.forward_outcome: "applied" or "unknown"
            provider.refund(step.saga_id, idempotency_key=step.key)
"""

from __future__ import annotations

import os
from concurrent.futures import Future
from datetime import timedelta
from typing import Any, ClassVar

import attrs

from understudy import codec, failpoints
from understudy.actors.batching import GroupCommit, Outbox
from understudy.actors.deferred import COMPLETION_POLL, Handles, PollCompletions
from understudy.actors.external import (
    DEFAULT_WORKERS,
    POLL_INTERVAL,
    ExternalCalls,
    Launch,
    PollCalls,
)
from understudy.actors.handlers import (
    Handler,
    Later,
    Reject,
    StepContext,
    action,
    collect,
    compensation,
)
from understudy.actors.ledger import (
    APPLIED,
    DEFERRED,
    REJECTED,
    STARTED,
    Answer,
    Ledger,
    Wait,
    digest_of,
    open_ledger,
)
from understudy.actors.plumbing import Batch, Flush, Stopped, handle_batched
from understudy.actors.system import ActorTypeDispatcher, WakeupMessage
from understudy.actors.watch import OwnerWatch
from understudy.errors import DefinitionError, LedgerError, PayloadError
from understudy.messages import (
    ACCEPTED,
    ConfigureParticipant,
    ParticipantReady,
    StepReply,
    StepRequest,
)

__all__ = ["Later", "Participant", "Reject", "StepContext", "action", "compensation"]

_DIRECT = frozenset({StepRequest})  # what batches carry: see handle_batched

#: See :attr:`Participant.max_in_flight`.
DEFAULT_MAX_IN_FLIGHT = 64

#: What a subclass may define of the names its bases use: the hooks meant for it.
_HOOKS = frozenset({"setup", "max_in_flight"})
#: Attributes a participant sets on itself (Participant.__init__).
_OWN_STATE = frozenset({"name", "ledger", "staged", "calls", "parked"})


def _reserved() -> frozenset[str]:
    """The public names of a participant's bases (Thespian's actor included) and its own
    state: a subclass that defines one replaces what understudy relies on, silently."""
    names = {
        name
        for klass in Participant.__mro__
        for name in vars(klass)
        if not name.startswith("_") and not name.startswith("receiveMsg_")
    }
    return frozenset(names - _HOOKS | _OWN_STATE)


@attrs.define
class _Staged:
    """A request handled in the open batch: its reply (sent once the batch commits) or the
    external call to start then (``launch``). ``releases``: the step whose call this records.
    ``waits``: no reply, the request waits for its deferred step's completion (in
    ``Participant._waiting`` from now on)."""

    msg: StepRequest
    sender: Any
    reply: StepReply | None
    redelivered: bool = False
    launch: Launch | None = None
    releases: str | None = None
    waits: bool = False


class Participant(GroupCommit, OwnerWatch, ActorTypeDispatcher):
    """Base class of participant actors; see the module docstring."""

    #: The most requests this participant takes in flight at once, across the runtime's saga
    #: hosts (each sends at most its share, rounded up); the hosts hold the rest back and start
    #: a request's reply timeout only when they send it. Requests queue in the participant's
    #: mailbox and are served in batches: set it so that this many requests are served well
    #: within the steps' timeout (64 requests at 10 ms each take 0.64 s; the default timeout is
    #: 5 s). None: no limit, every request is sent at once.
    max_in_flight: ClassVar[int | None] = DEFAULT_MAX_IN_FLIGHT

    _actions: ClassVar[dict[str, Handler]] = {}
    _compensations: ClassVar[dict[str, Handler]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._actions, cls._compensations = collect(cls, cls._actions, cls._compensations)
        clash = sorted(set(vars(cls)) & _reserved())
        if clash:
            owners = {n: k.__name__ for k in reversed(Participant.__mro__) for n in vars(k)}
            raise DefinitionError(
                f"{cls.__qualname__} defines "
                + ", ".join(
                    f"{name!r} (used by {owners.get(name, 'Participant')})" for name in clash
                )
                + ": a participant is an actor, and understudy relies on these names; rename "
                "them (handlers are found by their @action/@compensation names, not by their "
                "method names)"
            )
        limit = cls.max_in_flight
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
        ):
            raise DefinitionError(
                f"{cls.__qualname__}.max_in_flight is {limit!r}: give a positive int (the most "
                "requests it takes in flight at once), or None for no limit"
            )

    def __init__(self) -> None:
        super().__init__()
        self.name: str | None = None
        self.ledger: Ledger | None = None
        self.staged: list[_Staged] = []
        self.calls: ExternalCalls | None = None
        self.parked: list[tuple[StepRequest, Any]] = []  # waiting for a call on their step
        #: By key: the latest request for each deferred step waiting for its completion (the
        #: one its saga waits on: an older attempt's reply would be ignored there anyway).
        self._waiting: dict[str, tuple[StepRequest, Any]] = {}
        self._poll_scheduled = False
        self._handles: Handles | None = None
        self._completion_poll = COMPLETION_POLL
        self._completions_scheduled = False

    def setup(self, db: Any, options: dict[str, Any]) -> None:
        """Hook: create the participant's own tables in ``db`` (a ``sqlite3`` or a ``psycopg``
        connection, as the ``database`` option says); ``options`` come from
        ``add_participant``. Runs once per actor start, inside a transaction; a connection
        opened again later (after it was lost) does not run it again."""

    # --- configuration ----------------------------------------------------------------------

    def receiveMsg_ConfigureParticipant(self, msg: ConfigureParticipant, sender: Any) -> None:
        if self.ledger is not None:
            # Configured already (registered by the application after it configured it, or a
            # repeated registration): it keeps its ledger, whatever options come.
            self.send(sender, self._ready(self.name or msg.name))
            return
        try:
            self._configure(msg)
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            if self.ledger is not None:
                text = self.ledger.scrub(text)
                self.ledger.close()
                self.ledger = None
            self.send(sender, ParticipantReady(msg.name, text, os.getpid()))
            return
        self.watch_parent(msg.watch_interval)
        self.send(sender, self._ready(msg.name))

    def _ready(self, name: str) -> ParticipantReady:
        # A subclass that takes requests itself may serve actions it declares no handler for:
        # what it serves is then not checked.
        declared = type(self).receiveMsg_StepRequest is Participant.receiveMsg_StepRequest
        return ParticipantReady(
            name,
            None,
            os.getpid(),
            tuple(sorted(self._actions)) if declared else None,
            tuple(sorted(self._compensations)) if declared else None,
            self.max_in_flight,
        )

    def _configure(self, msg: ConfigureParticipant) -> None:
        failpoints.arm(msg.faults)
        options = msg.options or {}
        database = options.get("database")
        if not database:
            raise ValueError(
                f"participant {msg.name!r} needs a ledger database: pass "
                "options={'database': 'path/to/participant.db'} (or a postgresql:// URL)"
            )
        self.name = msg.name
        workers = int(options.get("external_workers", DEFAULT_WORKERS))
        self._completion_poll = float(options.get("completion_poll", COMPLETION_POLL))
        if not self._completion_poll > 0:
            raise ValueError(
                f"completion_poll must be a positive number of seconds, not "
                f"{options['completion_poll']!r}"
            )
        self.calls = ExternalCalls(workers, f"understudy-{msg.name}")
        self.ledger = ledger = open_ledger(str(database), options)
        ledger.begin()
        ledger.create_schema()
        self.setup(ledger.connection, dict(options))
        ledger.commit()
        self._handles = Handles(ledger.handle_secret(), msg.name)

    # --- requests ---------------------------------------------------------------------------

    def receiveMessage(self, msg: Any, sender: Any) -> Any:
        # Intercepted before type dispatch, like the owner watch: a subclass that handles
        # WakeupMessage itself must not stop external calls from being collected.
        if isinstance(msg, WakeupMessage) and isinstance(msg.payload, PollCalls):
            self._poll_scheduled = False
            self._collect_calls()
            return None
        if isinstance(msg, WakeupMessage) and isinstance(msg.payload, PollCompletions):
            self._completions_scheduled = False
            self._collect_completions()
            return None
        return super().receiveMessage(msg, sender)

    def receiveMsg_StepRequest(self, msg: StepRequest, sender: Any) -> None:
        if self.ledger is None:
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
        assert self.ledger is not None and self.calls is not None
        if msg.forward_key in self.calls.busy:
            # An external call on this step is in flight: a retry must not call out twice at
            # once, and a compensation must see how the call ended. Served once it has.
            self.parked.append((msg, sender))
            return
        if msg.kind == "undo":
            # The saga compensates the step: it waits no more for the forward's completion.
            self._waiting.pop(msg.forward_key, None)
        staged = self._stage(msg, sender)
        if staged.launch is not None:
            self.calls.busy.add(msg.forward_key)
        if staged.waits:
            self._wait(msg, sender)
        staged.redelivered = redelivered
        self.staged.append(staged)
        # Group commit: every request that arrives before the flush joins the same
        # transaction, so one FULL commit covers them all (as in the saga host).
        self.schedule_flush()

    def stage_reply(self, msg: StepRequest, sender: Any, reply: StepReply) -> None:
        """Send ``reply`` to ``msg`` with the others of this batch, once it commits (for
        participants that answer some requests themselves)."""
        self.staged.append(_Staged(msg, sender, reply))
        self.schedule_flush()

    def receiveMsg_Batch(self, msg: Batch, sender: Any) -> None:
        """Requests a saga host sent together: each handled as if it had come alone,
        including what Thespian does when a handler raises (once more, then an error)."""
        for message in msg.messages:
            for attempt in (1, 2):
                try:
                    handle_batched(self, message, sender, _DIRECT)
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
        self._unpark()

    def _stage(self, msg: StepRequest, sender: Any) -> _Staged:
        """Apply ``msg`` inside the open batch transaction. A failing handler undoes only its
        own writes (its savepoint, in :meth:`_run`); a failing ledger statement abandons the
        whole batch."""
        assert self.ledger is not None
        try:
            if not self.ledger.in_transaction:
                self.ledger.begin()
            return self._decide(msg, sender)
        except _HandlerFailed as failed:
            return _Staged(msg, sender, _reply(msg, "error", reason=failed.reason))
        except LedgerError as exc:
            # Nothing of the batch is applied: each saga sees a failed attempt and retries
            # under its own policy, with the same key (a lost connection is opened again then).
            reason = f"participant {self.name!r} could not write its ledger: {exc}"
            self._abandon(reason)
            return _Staged(msg, sender, _reply(msg, "error", reason=reason))
        except BaseException as exc:
            # Thespian hands this message back once more (then bounces it to the saga as an
            # error); the requests staged before it get an error reply, so they retry.
            self._abandon(f"participant {self.name!r} could not write its ledger: {exc}")
            raise

    def _decide(self, msg: StepRequest, sender: Any) -> _Staged:
        assert self.ledger is not None
        digest = digest_of(msg)
        verdict = self.ledger.decide(msg, digest)
        if isinstance(verdict, Answer):
            return _Staged(msg, sender, _answer(msg, verdict))
        if isinstance(verdict, Wait):
            return _Staged(msg, sender, None, waits=True)
        handlers = self._compensations if msg.kind == "undo" else self._actions
        handler = handlers.get(msg.action)
        if handler is None:
            what = "compensation" if msg.kind == "undo" else "action"
            reason = (
                f"participant {self.name!r} has no {what} {msg.action!r} "
                f"(it has: {', '.join(sorted(handlers)) or 'none'})"
            )
            return _Staged(msg, sender, _reply(msg, "rejected", reason=reason))
        context = StepContext(
            msg.saga_id,
            msg.step_name,
            msg.action,
            msg.kind,
            msg.key,
            msg.attempt,
            msg.payload,
            msg.results,
            verdict.forward_result,
            verdict.forward_outcome,
            msg.forward_key if msg.kind == "undo" else None,
            msg.failure,
            handles=self._handles,
        )
        if handler.external:
            if not verdict.started:
                self.ledger.record(msg.key, msg, digest, STARTED)  # write-ahead
            return _Staged(msg, sender, None, launch=Launch(msg, sender, handler.method, context))
        reply = self._run(msg, handler, context, digest, verdict.started)
        return _Staged(msg, sender, reply, waits=reply is None)

    def _run(
        self, msg: StepRequest, handler: Handler, context: StepContext, digest: bytes, started: bool
    ) -> StepReply | None:
        """Run an ordinary handler under its own savepoint and record its outcome; None when
        it deferred its step (:class:`Later`)."""
        ledger = self.ledger
        assert ledger is not None
        ledger.savepoint()
        try:
            result = getattr(self, handler.method)(context, ledger.connection)
            deferred = isinstance(result, Later)
            encoded = None if deferred else codec.encode(result, f"result of {msg.action!r}")
        except Reject as refusal:
            ledger.rollback_to_savepoint()
            data = _encoded_data(msg, refusal)
            self._record(msg, digest, started, REJECTED, data, str(refusal))
            return _reply(msg, "rejected", reason=str(refusal), data=_data_of(refusal))
        except Exception as exc:
            ledger.rollback_to_savepoint()
            raise _HandlerFailed(_failure(exc)) from exc
        try:
            ledger.release_savepoint()
        except LedgerError as exc:
            if exc.lost:
                raise
            # The handler swallowed an error of its own statements (PostgreSQL then refuses
            # everything until the savepoint is rolled back): its request failed, not the batch.
            ledger.rollback_to_savepoint()
            raise _HandlerFailed(f"the handler's transaction failed: {exc}") from None
        if deferred:
            # Its writes commit with the row that makes its handle valid, or neither does.
            self._record(msg, digest, started, DEFERRED, None, None)
            ledger.defer(msg.key, self._own_name, context.handle)
            return None
        self._record(msg, digest, started, APPLIED, encoded, None)
        return _reply(msg, "ok", result=result)

    @property
    def _own_name(self) -> str:
        assert self.name is not None
        return self.name

    def _record(
        self,
        msg: StepRequest,
        digest: bytes,
        started: bool,
        outcome: str,
        result: bytes | None,
        reason: str | None,
    ) -> None:
        assert self.ledger is not None
        if started:
            self.ledger.finish(msg.key, outcome, result, reason)
        else:
            self.ledger.record(msg.key, msg, digest, outcome, result, reason)

    # --- external calls ---------------------------------------------------------------------

    def _call_external(self, method: str, context: StepContext) -> Any:
        """Runs in a worker thread: the handler alone, with no connection (``db=None``). It must
        not touch the actor's state nor send messages: the actor is not thread-safe."""
        return getattr(self, method)(context, None)

    def _launch(self, launch: Launch) -> None:
        assert self.calls is not None
        self.calls.submit(launch, self._call_external)
        self._poll_soon()

    def _poll_soon(self) -> None:
        if not self._poll_scheduled:
            self._poll_scheduled = True
            self.wakeupAfter(timedelta(seconds=POLL_INTERVAL), PollCalls())

    def _collect_calls(self) -> None:
        """Record the outcome of every external call that returned, in the open batch; the
        replies go out once it commits."""
        if self.calls is None:
            return
        for launch, future in self.calls.finished():
            reply = self._outcome(launch, future)
            self.staged.append(
                _Staged(
                    launch.msg,
                    launch.sender,
                    reply,
                    releases=launch.msg.forward_key,
                    waits=reply is None,
                )
            )
            if reply is None:
                self._wait(launch.msg, launch.sender)
            self.schedule_flush()
        if self.calls.in_flight:
            self._poll_soon()

    def _outcome(self, launch: Launch, future: Future[Any]) -> StepReply | None:
        """Record what an external call returned, in the open batch; its reply, or None when it
        deferred its step (:class:`Later`)."""
        msg = launch.msg
        encoded: bytes | None
        reason: str | None
        data: Any = None
        try:
            result = future.result()
            if isinstance(result, Later):
                outcome, encoded, reason = DEFERRED, None, None
            else:
                outcome, reason = APPLIED, None
                encoded = codec.encode(result, f"result of {msg.action!r}")
        except Reject as refusal:
            try:
                encoded = _encoded_data(msg, refusal)
            except _HandlerFailed as unencodable:
                return _reply(msg, "error", reason=unencodable.reason)  # the row stays "started"
            outcome, result, reason, data = REJECTED, None, str(refusal), _data_of(refusal)
        except Exception as exc:
            # The call may or may not have taken effect: the row stays "started", and a retry
            # of the key (or the step's compensation) runs its handler again.
            return _reply(msg, "error", reason=_failure(exc))
        assert self.ledger is not None
        try:
            if not self.ledger.in_transaction:
                self.ledger.begin()
            if not self.ledger.settle(msg.key, outcome, encoded, reason):
                # The call handed its handle out, and the completion came back before the call
                # did: what it recorded is the step's outcome.
                recorded = self.ledger.recorded(msg.key)
                if recorded is None:
                    raise LedgerError(
                        f"ledger {self.ledger.where}: the row of key {msg.key!r} is no longer "
                        "'started' (another process recorded it meanwhile)"
                    )
                self.ledger.noticed(msg.key)
                return _answer(msg, attrs.evolve(recorded, replayed=False))
            if outcome == DEFERRED:
                self.ledger.defer(msg.key, self._own_name, launch.context.handle)
        except LedgerError as exc:
            failed = f"participant {self.name!r} could not write its ledger: {exc}"
            self._abandon(failed)
            return _reply(msg, "error", reason=failed)
        if outcome == DEFERRED:
            return None
        if outcome == REJECTED:
            return _reply(msg, "rejected", reason=reason, data=data)
        return _reply(msg, "ok", result=result)

    # --- deferred steps ---------------------------------------------------------------------

    def _wait(self, msg: StepRequest, sender: Any) -> None:
        """``msg`` waits for its deferred step's completion (a newer request replaces it)."""
        self._waiting[msg.key] = (msg, sender)
        self._poll_completions_soon()

    def _poll_completions_soon(self) -> None:
        if not self._completions_scheduled:
            self._completions_scheduled = True
            self.wakeupAfter(timedelta(seconds=self._completion_poll), PollCompletions())

    def _collect_completions(self) -> None:
        """Answer the waiting requests whose steps were completed since the last look, in the
        open batch (the replies go once it commits). Looks only while requests wait: a request
        for a step completed when none waited is answered from its ledger row."""
        ledger = self.ledger
        if ledger is None or not self._waiting:
            return
        try:
            news = ledger.news(self._own_name)
            if news:
                if not ledger.in_transaction:
                    ledger.begin()
                for done in news:
                    ledger.noticed(done.key)
                    waiter = self._waiting.pop(done.key, None)
                    if waiter is not None:
                        msg, sender = waiter
                        self.staged.append(_Staged(msg, sender, _answer(msg, done.answer(False))))
                self.schedule_flush()
        except LedgerError as exc:
            # Nothing noticed is kept: the flags stay set, and the next look finds them again
            # (a waiter answered here with an error retries, and is answered from the ledger).
            self._abandon(f"participant {self.name!r} could not read its completions: {exc}")
        if self._waiting:
            self._poll_completions_soon()

    def _unpark(self) -> None:
        """Serve the requests that waited for a call on their step, where it has ended."""
        parked, self.parked = self.parked, []
        for msg, sender in parked:
            self._accept(msg, sender, redelivered=False)

    # --- commit and replies -----------------------------------------------------------------

    def _abandon(self, reason: str) -> None:
        """Roll back the open batch and answer every request staged in it with an error."""
        staged, self.staged = self.staged, []
        if self.ledger is not None:
            self.ledger.rollback()
        for item in staged:
            self._release(item)
            if item.waits and self._waiting.get(item.msg.key, (None,))[0] is item.msg:
                del self._waiting[item.msg.key]  # its row may not say "deferred": it retries
            self.send(item.sender, _reply(item.msg, "error", reason=reason))
        if self.parked:
            self.schedule_flush()  # a step released here: its parked requests go next

    def _release(self, item: _Staged) -> None:
        key = item.releases or (item.msg.forward_key if item.launch is not None else None)
        if key is not None and self.calls is not None:
            self.calls.busy.discard(key)

    def _flush(self) -> None:
        """Commit the staged requests, then reply to each (or start its external call): a reply
        never runs ahead of the ledger row it reports (write-ahead, as in the saga host)."""
        staged, self.staged = self.staged, []
        ledger = self.ledger
        if ledger is None or not (staged or ledger.in_transaction):
            return  # (a transaction with nothing staged: completions noticed, nobody to answer)
        try:
            if ledger.in_transaction:
                ledger.commit()
        except LedgerError as exc:
            # Nothing of the batch is applied (or, a connection lost during COMMIT, perhaps all
            # of it): either way each saga retries with the same key, and the ledger answers.
            self.staged = staged
            self._abandon(f"participant {self.name!r} could not commit its ledger: {exc}")
            return
        outbox = Outbox()  # one message per saga host, however many replies it carries
        for item in staged:
            if item.launch is not None:
                self._launch(item.launch)
                continue
            self._release(item)
            if item.waits:
                # In self._waiting: answered when its step is completed. Told now that it was
                # taken (committed as deferred), so the saga host frees its slot in this
                # participant's window: a step that waits an hour holds back nobody.
                outbox.add(item.sender, _reply(item.msg, ACCEPTED))
                continue
            msg, sender, reply = item.msg, item.sender, item.reply
            assert reply is not None
            try:
                failpoints.hit("participant.after_apply", msg.saga_id, self.name)
                verdict = failpoints.hit("participant.before_reply", msg.saga_id, self.name)
            except Exception as exc:
                # A crash between the commit and the reply. Do what Thespian does with a
                # message whose handler raised: handle it once more (the ledger replays the
                # recorded outcome), and after a second failure bounce it as an error.
                if item.redelivered:
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

    # --- stopping ---------------------------------------------------------------------------

    def receiveMsg_Stop(self, msg: Any, sender: Any) -> None:
        """The runtime is shutting down: close the database now, not at garbage collection."""
        self._close()
        self.send(sender, Stopped(-1, self.name or "?"))

    def receiveMsg_ActorExitRequest(self, msg: Any, sender: Any) -> None:
        self._close()

    def _close(self) -> None:
        self._flush()  # what is staged commits and is answered; nothing half-done is left
        if self.calls is not None:
            self.calls.close()  # calls in flight keep their "started" rows: retries resolve them
        if self.ledger is not None:
            self.ledger.close()
            self.ledger = None


class _HandlerFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _failure(exc: Exception) -> str:
    return str(exc) if isinstance(exc, PayloadError) else f"{type(exc).__name__}: {exc}"


def _data_of(refusal: Reject) -> Any:
    """What a refusal carries (a subclass of :class:`Reject` may not have set it)."""
    return getattr(refusal, "data", None)


def _encoded_data(msg: StepRequest, refusal: Reject) -> bytes | None:
    """The refusal's data, encoded for the ledger; data msgpack cannot encode fails the
    request (an error, as a result that cannot be encoded does), naming the step."""
    data = _data_of(refusal)
    if data is None:
        return None
    try:
        return codec.encode(
            data, f"data of the refusal of step {msg.step_name!r} (action {msg.action!r})"
        )
    except PayloadError as exc:
        raise _HandlerFailed(str(exc)) from None


def _answer(msg: StepRequest, answer: Answer) -> StepReply:
    return _reply(msg, answer.outcome, answer.result, answer.reason, answer.replayed, answer.data)


def _reply(
    msg: StepRequest,
    outcome: str,
    result: Any = None,
    reason: str | None = None,
    replayed: bool = False,
    data: Any = None,
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
        data,
    )
