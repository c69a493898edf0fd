"""The reactor base class: a choreographed service, written as an actor that reacts to topics.

A reactor subscribes to the topics it has reactions for (``@reacts("order.created")``) and
publishes from inside them (``self.publish("stock.reserved", data)``). No coordinator decides
what happens next; what understudy adds is that the chain is durable and can be followed
(``understudy show STORE CHAIN_ID``, :mod:`understudy.chains`). How an event travels:

1. A reaction runs inside the reactor's ledger transaction, in its own database (the
   ``database`` option, as a participant's): its effects, its ledger row (key: event id +
   reactor name) and the events it publishes (its outbox, :mod:`.outbox`) commit together.
2. Right after the commit, and at every look while anything is left, the reactor relays its
   outbox to the store's event log (the events and its acknowledgement, in one store
   transaction) and marks the rows relayed once that commit returned (:func:`.reacting.relay`).
3. Every ``poll_interval`` seconds, and at once after it reacted, it reads the events of its
   topics it has not acknowledged: delivery at least once, to every subscriber, down or killed
   meanwhile; the ledger applies each once (a redelivered event replays, runs nothing).

A reaction that raises :class:`~understudy.Reject`, or keeps raising past ``retry.attempts``
tries in one process, is rolled back with what it published, and publishes a failure event
instead (``<topic>.failed``, or its ``on_failure=``), which other services compensate.
Crash tests reach the boundaries through the participant failpoints, scoped with
``participant=<reactor name>``: ``participant.before_apply``, ``participant.after_apply``
(committed, not relayed) and ``participant.before_reply`` (relayed, not marked).
"""

from __future__ import annotations

import logging
import os
import time
from datetime import timedelta
from typing import Any, ClassVar

import attrs

from understudy import codec, failpoints
from understudy.actors.handlers import Reject
from understudy.actors.ledger import APPLIED as LEDGER_APPLIED
from understudy.actors.ledger import REJECTED as LEDGER_REJECTED
from understudy.actors.ledger import Answer, Ledger, digest_of, open_ledger
from understudy.actors.outbox import Outbox
from understudy.actors.plumbing import Stopped
from understudy.actors.reacting import failure_event, ledger_request, new_id, relay
from understudy.actors.reactions import EventContext, Reaction, collect
from understudy.actors.system import ActorTypeDispatcher, WakeupMessage
from understudy.actors.watch import OwnerWatch
from understudy.definitions import RetryPolicy
from understudy.errors import DefinitionError, LedgerError, UnderstudyError
from understudy.messages import ConfigureParticipant, ParticipantReady, StepRequest
from understudy.persistence import SagaStore, open_store
from understudy.persistence.base import (
    APPLIED,
    FAILED,
    REJECTED,
    Acknowledgement,
    PublishedEvent,
    TopicEvent,
)

log = logging.getLogger("understudy.reactor")

#: The option that tells a reactor where the saga store is (the runtime sets it).
STORE_OPTION = "understudy_store"

#: What a subclass may define of the names its bases use: the hooks meant for it.
_HOOKS = frozenset({"setup", "poll_interval", "retry", "batch_size"})


@attrs.frozen
class Poll:
    """A reactor's reminder to relay its outbox and look at the log."""


@attrs.define
class _Reacting:
    """The reaction running now: what ``publish`` inherits, and what it published."""

    event: PublishedEvent
    published: list[str]


class Reactor(OwnerWatch, ActorTypeDispatcher):
    """Base class of choreographed services; see the module docstring."""

    #: Seconds between looks at the log while nothing comes.
    poll_interval: ClassVar[float] = 0.1
    #: Tries of a reaction that raises (other than Reject) before it counts as failed.
    retry: ClassVar[RetryPolicy] = RetryPolicy(attempts=3, backoff=0.05, max_backoff=2.0)
    #: Events taken per look (one transaction).
    batch_size: ClassVar[int] = 64

    _reactions: ClassVar[dict[str, Reaction]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Every base's reactions, the nearest in the MRO winning (``cls._reactions`` alone is
        # the first base's: a second base's reactions would be lost).
        inherited: dict[str, Reaction] = {}
        for base in reversed(cls.__mro__[1:]):
            inherited.update(vars(base).get("_reactions", {}))
        cls._reactions = collect(cls, inherited)
        clash = sorted(set(vars(cls)) & _reserved())
        if clash:
            raise DefinitionError(
                f"{cls.__qualname__} defines {', '.join(map(repr, clash))}: a reactor is an "
                "actor, and understudy relies on these names; rename them (reactions are found "
                "by their @reacts topics, not by their method names)"
            )
        if not (isinstance(cls.poll_interval, int | float) and cls.poll_interval > 0):
            raise DefinitionError(f"{cls.__qualname__}.poll_interval must be seconds above 0")
        if not (isinstance(cls.batch_size, int) and cls.batch_size >= 1):
            raise DefinitionError(f"{cls.__qualname__}.batch_size must be a positive int")
        if not isinstance(cls.retry, RetryPolicy):
            raise DefinitionError(f"{cls.__qualname__}.retry must be a RetryPolicy")

    def __init__(self) -> None:
        super().__init__()
        self.name: str | None = None
        self.ledger: Ledger | None = None
        self.outbox: Outbox | None = None
        self.store: SagaStore | None = None
        self.attempts: dict[str, int] = {}  # event id -> failed tries in this process
        self.retry_at: dict[str, float] = {}  # event id -> when to try it again (monotonic)
        self._reacting: _Reacting | None = None

    def setup(self, db: Any, options: dict[str, Any]) -> None:
        """Hook: create the service's own tables in ``db`` (inside a transaction, once per
        actor start); ``options`` are the ones it was registered with."""

    # --- publishing ---------------------------------------------------------------------------

    def publish(self, topic: str, data: Any = None) -> str:
        """Publish an event on ``topic`` from inside a reaction: it commits with the reaction
        (or not at all), inherits the chain's correlation id, and reaches the store's log once
        the reaction committed. Returns the event's id. From plain code, use
        ``Understudy.publish``."""
        reacting = self._reacting
        if reacting is None or self.outbox is None or self.name is None:
            raise RuntimeError(
                "Reactor.publish() works inside a reaction only (an @reacts method); to start "
                "a chain from plain code, call publish() on the Understudy runtime"
            )
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"an event needs a topic name, got {topic!r}")
        event = TopicEvent(
            new_id(),
            topic,
            reacting.event.correlation_id,
            codec.encode(data, f"data of event {topic!r}"),
            time.time(),
            self.name,
            reacting.event.event_id,
        )
        self.outbox.add_event(event)
        reacting.published.append(event.event_id)
        return event.event_id

    # --- configuration ------------------------------------------------------------------------

    def receiveMsg_ConfigureParticipant(self, msg: ConfigureParticipant, sender: Any) -> None:
        if self.ledger is not None:
            self.send(sender, self._ready(self.name or msg.name))
            return
        try:
            self._configure(msg)
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            if self.ledger is not None:
                text = self.ledger.scrub(text)
            self._close()
            self.send(sender, ParticipantReady(msg.name, text, os.getpid()))
            return
        self.watch_parent(msg.watch_interval)
        self.send(sender, self._ready(msg.name))
        self._schedule(0.0)  # what a previous incarnation left: relay it, and look at the log

    def _ready(self, name: str) -> ParticipantReady:
        # It serves no saga step: a definition naming it is refused when the runtime starts.
        return ParticipantReady(name, None, os.getpid(), (), (), None)

    def _configure(self, msg: ConfigureParticipant) -> None:
        failpoints.arm(msg.faults)
        options = dict(msg.options or {})
        location = options.pop(STORE_OPTION, None)
        database = options.get("database")
        if not database:
            raise ValueError(
                f"reactor {msg.name!r} needs a ledger database: pass "
                "options={'database': 'path/to/service.db'} (or a postgresql:// URL)"
            )
        if not location:
            raise ValueError(
                f"reactor {msg.name!r} was not told where the saga store is: register it with "
                "Understudy.start(..., participants) or add_participant, which tell it"
            )
        self.name = msg.name
        self.ledger = ledger = open_ledger(str(database), options)
        self.outbox = Outbox(ledger, msg.name)
        ledger.begin()
        ledger.create_schema()
        self.outbox.create()
        self.setup(ledger.connection, options)
        ledger.commit()
        self.store = open_store(str(location))
        self.store.subscribe(msg.name, sorted(self._reactions), time.time())

    # --- the loop -----------------------------------------------------------------------------

    def _schedule(self, delay: float) -> None:
        self.wakeupAfter(timedelta(seconds=delay), Poll())

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        if isinstance(msg.payload, Poll):
            again = self.poll_interval
            try:
                if self._look():
                    again = 0.0
            finally:  # whatever happened, the next look comes
                if self.store is not None:
                    self._schedule(again)

    def _look(self) -> bool:
        """Relay what is left, react to what is undelivered, relay that; whether it reacted
        (then it looks again at once)."""
        if self.store is None or self.ledger is None or self.name is None:
            return False
        try:
            self._relay()
            events = self.store.undelivered(self.name, self.batch_size)
            now = time.monotonic()
            due = [e for e in events if self.retry_at.get(e.event_id, 0.0) <= now]
            if not due:
                return False
            self._react(due)
            self._relay()
            return True
        except UnderstudyError as exc:
            # The store or the ledger failed (down, locked, a lost connection): nothing of the
            # batch is kept; the next look tries again, from the store's log.
            log.warning("reactor %s: %s; trying again", self.name, _scrubbed(self.ledger, exc))
            return False
        except Exception as exc:
            # Never raised to Thespian: it would hand the reminder back, and each hand-back
            # would start one more chain of looks. What committed is safe; the next look goes on.
            log.error(
                "reactor %s: %s; trying again",
                self.name,
                _scrubbed(self.ledger, exc),
                exc_info=not isinstance(exc, failpoints.InjectedFault),
            )
            return False

    def _relay(self) -> None:
        assert self.outbox is not None and self.store is not None and self.name is not None
        relay(self.outbox, self.store, self.name)

    # --- reacting -----------------------------------------------------------------------------

    def _react(self, events: list[PublishedEvent]) -> None:
        """React to ``events`` in one transaction of the reactor's database."""
        ledger = self.ledger
        assert ledger is not None
        ledger.begin()
        try:
            for event in events:
                failpoints.hit("participant.before_apply", event.correlation_id, self.name)
                self._react_one(event)
            ledger.commit()
        except BaseException:
            ledger.rollback()
            raise
        failpoints.hit("participant.after_apply", None, self.name)

    def _react_one(self, event: PublishedEvent) -> None:
        ledger, name = self.ledger, self.name
        assert ledger is not None and name is not None and self.outbox is not None
        reaction = self._reactions.get(event.topic)
        request = ledger_request(event, name)
        digest = digest_of(request)
        verdict = ledger.decide(request, digest)
        if isinstance(verdict, Answer):
            # Reacted to already: nothing runs again. The store lists it as undelivered, so
            # it lacks the acknowledgement: relay it again (the store keeps the first).
            found = self.outbox.find_ack(event.event_id)
            self.outbox.add_ack(
                found
                or Acknowledgement(
                    name,
                    event.event_id,
                    event.correlation_id,
                    APPLIED if verdict.outcome == "ok" else REJECTED,
                    time.time(),
                    verdict.reason,
                )
            )
            return
        if event.corrupt is not None or reaction is None:
            why = event.corrupt or f"reactor {name!r} has no reaction to topic {event.topic!r}"
            ledger.record(request.key, request, digest, LEDGER_REJECTED, None, why)
            self._acknowledge(event, FAILED, why, ())
            return
        attempt = self.attempts.get(event.event_id, 0) + 1
        context = EventContext(
            event.event_id,
            event.topic,
            event.data,
            event.correlation_id,
            event.causation_id,
            event.source,
            event.kind,
            attempt,
            event.seq,
        )
        self._reacting = reacting = _Reacting(event, [])
        ledger.savepoint()
        try:
            result = getattr(self, reaction.method)(context, ledger.connection)
            encoded = codec.encode(result, f"result of the reaction to {event.topic!r}")
        except Reject as refusal:
            ledger.rollback_to_savepoint()
            self._failed(event, reaction, request, digest, REJECTED, str(refusal), refusal)
            return
        except Exception as exc:
            ledger.rollback_to_savepoint()
            if isinstance(exc, LedgerError) and exc.lost:
                raise
            self._retry_or_fail(event, reaction, request, digest, attempt, exc)
            return
        finally:
            self._reacting = None
        try:
            ledger.release_savepoint()
        except LedgerError as exc:
            if exc.lost:
                raise
            # The reaction swallowed an error of its own statements (PostgreSQL then refuses
            # everything until the savepoint is rolled back): it failed, not the batch.
            ledger.rollback_to_savepoint()
            self._retry_or_fail(event, reaction, request, digest, attempt, exc)
            return
        ledger.record(request.key, request, digest, LEDGER_APPLIED, encoded, None)
        self._acknowledge(event, APPLIED, None, tuple(reacting.published))

    def _retry_or_fail(
        self,
        event: PublishedEvent,
        reaction: Reaction,
        request: StepRequest,
        digest: bytes,
        attempt: int,
        exc: Exception,
    ) -> None:
        assert self.ledger is not None
        reason = self.ledger.scrub(f"{type(exc).__name__}: {exc}")
        if attempt < self.retry.attempts:
            self.attempts[event.event_id] = attempt
            self.retry_at[event.event_id] = time.monotonic() + self.retry.delay(attempt)
            log.warning(
                "reactor %s: reaction to %s %s failed (try %d of %d): %s",
                self.name,
                event.topic,
                event.event_id,
                attempt,
                self.retry.attempts,
                reason,
            )
            return
        why = f"failed {attempt} time(s); last: {reason}"
        self._failed(event, reaction, request, digest, FAILED, why, None)

    def _failed(
        self,
        event: PublishedEvent,
        reaction: Reaction,
        request: StepRequest,
        digest: bytes,
        outcome: str,
        reason: str,
        refusal: Reject | None,
    ) -> None:
        """Record a refusal or a final failure under the key, and publish the failure event
        in place of whatever the reaction published (rolled back with its writes)."""
        assert self.ledger is not None and self.outbox is not None and self.name is not None
        reason = self.ledger.scrub(reason)
        details = getattr(refusal, "data", None)
        failure = failure_event(event, reaction.on_failure, self.name, reason, details)
        self.outbox.add_event(failure)
        self.ledger.record(request.key, request, digest, LEDGER_REJECTED, None, reason)
        self._acknowledge(event, outcome, reason, (failure.event_id,))

    def _acknowledge(
        self, event: PublishedEvent, outcome: str, reason: str | None, published: tuple[str, ...]
    ) -> None:
        assert self.outbox is not None and self.name is not None
        self.attempts.pop(event.event_id, None)
        self.retry_at.pop(event.event_id, None)
        self.outbox.add_ack(
            Acknowledgement(
                self.name,
                event.event_id,
                event.correlation_id,
                outcome,
                time.time(),
                reason,
                published,
            )
        )

    # --- stopping -----------------------------------------------------------------------------

    def receiveMsg_Stop(self, msg: Any, sender: Any) -> None:
        self._close()
        self.send(sender, Stopped(-1, self.name or "?"))

    def receiveMsg_ActorExitRequest(self, msg: Any, sender: Any) -> None:
        self._close()

    def _close(self) -> None:
        try:
            if self.store is not None and self.outbox is not None:
                # What committed reaches the log now rather than at the restart; whatever goes
                # wrong, the connections are closed below and the stop is answered.
                self._relay()
        except Exception as exc:
            log.warning(
                "reactor %s: relaying at shutdown: %s", self.name, _scrubbed(self.ledger, exc)
            )
        finally:
            if self.ledger is not None:
                self.ledger.close()
                self.ledger = None
            if self.store is not None:
                self.store.close()
                self.store = None


def _scrubbed(ledger: Ledger | None, exc: Exception) -> str:
    text = str(exc)
    return ledger.scrub(text) if ledger is not None else text


def _reserved() -> frozenset[str]:
    """The public names of a reactor's bases and its own state: a subclass that defines one
    replaces what understudy relies on, silently."""
    names = {
        name
        for klass in Reactor.__mro__
        for name in vars(klass)
        if not name.startswith("_") and not name.startswith("receiveMsg_")
    }
    own = {"name", "ledger", "outbox", "store", "attempts", "retry_at"}
    return frozenset((names | own) - _HOOKS)


def with_store(
    participants: list[tuple[str, Any, dict[str, Any]]], location: str
) -> list[tuple[str, Any, dict[str, Any]]]:
    """``participants`` with every reactor among them told where the saga store is."""
    return [
        (name, cls, {STORE_OPTION: location, **options})
        if isinstance(cls, type) and issubclass(cls, Reactor)
        else (name, cls, options)
        for name, cls, options in participants
    ]


__all__ = ["STORE_OPTION", "Poll", "Reactor", "with_store"]
