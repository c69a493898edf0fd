"""Messages between applications, the coordinator, saga hosts and participants.

Each message is a small frozen attrs value defined at module top level: the multi-process
Thespian bases pickle messages between processes, and only importable top-level classes survive
that. Replies carry the saga id, step, kind, attempt and incarnation so that a late, duplicated or
misrouted reply can be recognised and ignored.
"""

from __future__ import annotations

from typing import Any

import attrs

# --- applications <-> coordinator ---------------------------------------------------------------


@attrs.frozen
class StartSaga:
    """Ask the coordinator to run a saga. Starting an id that exists returns that saga.

    With ``wait`` (the default) the sender gets one reply, :class:`SagaFinished`, when the saga is
    terminal; without it the reply is :class:`SagaAccepted` once the start is durable. A start
    that cannot run is answered with :class:`StartRejected`.
    """

    saga_id: str
    definition: str
    payload: dict[str, Any] = attrs.field(factory=dict)
    version: int | None = None  # None: the newest registered version
    wait: bool = True
    request_id: str = ""  # echoed in the reply, to tell apart several starts of one saga
    #: Set by understudy when a step of saga ``parent`` starts this one as its child
    #: (:meth:`~understudy.Step.child`): recorded in its timeline.
    parent: str | None = None


@attrs.frozen
class SagaAccepted:
    """The start is durable (or the saga already existed: ``existing``)."""

    saga_id: str
    existing: bool = False
    request_id: str = ""


@attrs.frozen
class SagaFinished:
    """The saga is terminal: ``completed``, ``compensated`` or ``failed`` (needs attention).

    ``outstanding`` lists what a person must resolve when the status is ``failed``.
    """

    saga_id: str
    status: str
    reason: str | None = None
    outstanding: tuple[str, ...] = ()
    results: dict[str, Any] = attrs.field(factory=dict)
    request_id: str = ""
    #: The step failure that made it compensate or park, when a step failed: ``{"step": name,
    #: "reason": text, "data": what the refusal carried (Reject(..., data=...))}``.
    failure: dict[str, Any] | None = None


@attrs.frozen
class StartRejected:
    """The coordinator refused the start: ``error`` names the understudy exception a plain
    caller gets for it (``UnknownDefinition``, ``UnknownParticipant``, ``PayloadError``,
    ``StoreUnavailable``, ``LeaseLost``, or ``SagaRejected`` for any other refusal) and
    ``reason`` says why and what to do. Nothing was written for the saga."""

    saga_id: str
    error: str
    reason: str
    request_id: str = ""


@attrs.frozen
class QueryStatus:
    """Ask for a saga's current status; the reply is :class:`SagaStatus`."""

    saga_id: str


@attrs.frozen
class SagaStatus:
    """A saga's status as stored (``None`` when the store holds no such saga)."""

    saga_id: str
    status: str | None
    reason: str | None = None


# --- participants ---------------------------------------------------------------------------------


@attrs.frozen
class StepRequest:
    """Run an action (``kind="do"``) or its compensation (``kind="undo"``) at a participant.

    ``key`` is the idempotency key of this request; ``forward_key`` is the key of the forward
    request a compensation undoes (equal to ``key`` for a forward request).
    """

    saga_id: str
    step: int
    step_name: str
    kind: str
    action: str
    key: str
    forward_key: str
    payload: dict[str, Any]
    results: dict[str, Any]
    attempt: int
    incarnation: int
    #: In a compensation: the failure that made the saga compensate, when a step failed
    #: (``{"step": name, "reason": text, "data": what the refusal carried}``); None otherwise.
    failure: dict[str, Any] | None = None


#: ``StepReply.outcome`` of a request a participant took and finishes later (its handler
#: returned ``Later()``): not an answer. The saga keeps waiting, its reply deadline running;
#: the saga host frees the request's slot in the participant's window.
ACCEPTED = "accepted"


@attrs.frozen
class StepReply:
    """A participant's answer: ``outcome`` is ``ok``, ``rejected`` (a business refusal, final)
    or ``error`` (the handler failed; the coordinator may retry with the same key); or
    :data:`ACCEPTED`, which answers nothing yet."""

    saga_id: str
    step: int
    kind: str
    key: str
    attempt: int
    incarnation: int
    outcome: str
    result: Any = None
    reason: str | None = None
    replayed: bool = False  # the participant returned a recorded result; nothing ran again
    #: What a refusal or failure carries beside its reason (``Reject(reason, data=...)``): a
    #: reason code, a partial result. The saga keeps the failing step's and hands it to the
    #: compensations and the caller.
    data: Any = None


@attrs.frozen
class RegisterParticipant:
    """Register an actor of the application as participant ``name``.

    ``participant`` is the actor (a :class:`~understudy.Participant` subclass the application
    created); None: the sender itself. The coordinator configures it with ``options`` (as
    ``add_participant`` would: ``{"database": ...}``; None keeps the configuration it has),
    then registers it once it answers. When ``participant`` is given, the sender is answered
    :class:`ParticipantReady` (with ``error`` set if it could not be configured or lacks an
    action a definition names). The application supervises the actors it registers;
    ``add_participant`` creates supervised ones.
    """

    name: str
    options: dict[str, Any] | None = None
    participant: Any = None


@attrs.frozen
class AddParticipant:
    """Ask the coordinator to create, configure and supervise participant ``name``.

    ``actor_class`` is the participant's import path ("package.module.ClassName") so that any
    process can load it; ``options`` are passed to its ``setup``.
    """

    name: str
    actor_class: str
    options: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class ConfigureParticipant:
    """Sent once to a newly created participant actor, before any step request."""

    name: str
    options: dict[str, Any] | None  # None: keep the configuration it has (RegisterParticipant)
    faults: tuple[Any, ...] = ()  # understudy.failpoints.Fault values armed by crash tests
    watch_interval: float | None = None  # seconds between checks that the supervisor lives


@attrs.frozen
class ParticipantReady:
    """Reply to :class:`AddParticipant` and :class:`ConfigureParticipant`: the participant is
    configured (or ``error`` says why it is not)."""

    name: str
    error: str | None = None
    pid: int = 0
    #: What the participant serves, so that a definition naming an action it lacks is refused
    #: when the runtime starts (None: not declared, nothing is checked).
    actions: tuple[str, ...] | None = None
    compensations: tuple[str, ...] | None = None
    #: How many requests it takes in flight at once (see ``Participant.max_in_flight``); the
    #: saga hosts hold the rest back. None: no limit.
    max_in_flight: int | None = None


@attrs.frozen
class Ping:
    """Liveness probe; answered with :class:`Pong` carrying the answering process's pid."""

    token: str = ""


@attrs.frozen
class Pong:
    token: str
    pid: int
    detail: dict[str, Any] = attrs.field(factory=dict)
