"""What every saga state machine shares: its identity, its stored state and how it is restored,
snapshotted and timelined. :class:`~understudy.actors.saga.Saga` (linear) and
:class:`~understudy.actors.workflow.Workflow` (a graph) differ only in what they do between.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

import attrs

from understudy import codec
from understudy.actors.inputs import request_data
from understudy.definitions import SagaDefinition, Step, child_id
from understudy.errors import CorruptRecord
from understudy.messages import SagaFinished, StepRequest
from understudy.persistence.base import TERMINAL_STATUSES, Event, SagaRecord

#: ``stopped_in`` of a saga parked because its snapshot outgrew its cap: its step results were
#: dropped, so it cannot be taken up again.
OVERFLOW = "overflow"

DO = "do"
UNDO = "undo"


@attrs.frozen
class Send:
    """Send ``request`` to the participant registered as ``participant``."""

    participant: str
    request: StepRequest


@attrs.frozen
class Timer:
    """Call :meth:`Saga.on_timer` with ``token`` after ``delay`` seconds."""

    delay: float
    token: int


@attrs.frozen
class Finish:
    """The saga reached a terminal status."""

    status: str
    reason: str | None
    outstanding: tuple[str, ...]
    results: dict[str, Any]
    failure: dict[str, Any] | None = None


Command = Send | Timer | Finish


def failure_of(failure: list[Any] | None) -> dict[str, Any] | None:
    """A stored failure ``[step name, reason, data]`` as the callers and compensations see it."""
    if failure is None:
        return None
    step, reason, data = failure
    return {"step": step, "reason": reason, "data": data}


def finished_from_record(record: SagaRecord) -> SagaFinished:
    """The terminal reply for a saga that already ended, rebuilt from its stored snapshot."""
    outstanding: tuple[str, ...] = ()
    results: dict[str, Any] = {}
    failure: dict[str, Any] | None = None
    try:
        state = codec.decode(record.snapshot or b"\xc0", f"snapshot of saga {record.saga_id!r}")
        if isinstance(state, dict):
            outstanding = tuple(state.get("outstanding") or ())
            results = dict(state.get("results") or {})
            stored = state.get("failure")
            if isinstance(stored, list) and len(stored) == 3:
                failure = failure_of(stored)
    except CorruptRecord:
        pass  # a parked corrupt saga: its reason says so
    return SagaFinished(
        record.saga_id, record.status, record.reason, outstanding, results, failure=failure
    )


def idempotency_key(saga_id: str, step: int, kind: str) -> str:
    return f"{saga_id}:{step}:{kind}"


S = TypeVar("S")  # the state class (a frozen-free attrs class, stored as a msgpack map)
D = TypeVar("D", bound=SagaDefinition)
I = TypeVar("I", bound="Instance[Any, Any]")  # noqa: E741 - the instance class itself


class Instance(Generic[S, D]):
    """One saga instance: its definition, payload, incarnation and state."""

    #: "saga" or "workflow": what the host and the tools tell apart.
    kind: ClassVar[str]
    #: The state class, what its snapshot calls it, and the fields a snapshot written before
    #: they existed may lack (restored with their defaults).
    state_class: ClassVar[type]
    label: ClassVar[str]
    later_fields: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        saga_id: str,
        definition: D,
        payload: dict[str, Any],
        incarnation: int,
        state: S,
        snapshot_version: int,
    ) -> None:
        self.saga_id = saga_id
        self.definition = definition
        self.payload = payload
        self.incarnation = incarnation
        self.state = state
        self.snapshot_version = snapshot_version
        self.events: list[Event] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "state_class" in vars(cls):
            fields = tuple(field.name for field in attrs.fields(cls.state_class))
            cls._fields = fields
            cls._values = operator.attrgetter(*fields)  # every field's value, in one C call

    _fields: ClassVar[tuple[str, ...]] = ()
    _values: ClassVar[Callable[[Any], tuple[Any, ...]]]

    @classmethod
    def fresh_state(cls, definition: D) -> S:
        """The state of an instance that has not started."""
        return cls.state_class()

    @staticmethod
    def problem(state: Any, definition: Any) -> str | None:
        """What makes a restored ``state`` impossible for ``definition``; None when sound."""
        return None

    @classmethod
    def restore(
        cls: type[I],
        saga_id: str,
        definition: Any,
        payload: dict[str, Any],
        incarnation: int,
        snapshot: bytes | None,
        snapshot_version: int,
        recovery_attempts: int,
    ) -> I:
        """Rebuild from a stored snapshot (a new instance when it is None). Raises
        :class:`CorruptRecord` when it does not decode, or decodes to a state that makes no
        sense for ``definition`` (a damaged row that still decodes must never be acted on)."""
        state = cls.fresh_state(definition)
        if snapshot is not None:
            what = f"snapshot v{snapshot_version} of {cls.label} {saga_id!r}"
            data = codec.decode(snapshot, what)
            fields = set(cls._fields)
            if not isinstance(data, dict) or not (fields - cls.later_fields <= set(data) <= fields):
                raise CorruptRecord(
                    f"{what} does not hold a {cls.label} state (fields do not match)"
                )
            state = cls.state_class(**data)
            problem = cls.problem(state, definition)
            if problem is not None:
                raise CorruptRecord(
                    f"{what} makes no sense for {definition.name!r} "
                    f"v{definition.version}: {problem}"
                )
        state.recovery_attempts = recovery_attempts
        return cls(saga_id, definition, payload, incarnation, state, snapshot_version)

    @classmethod
    def from_record(cls: type[I], record: SagaRecord, definition: Any) -> I:
        """:meth:`restore` the instance a stored row holds. Raises :class:`CorruptRecord` when
        the row failed its checksum, or its payload or snapshot cannot be trusted."""
        if record.corrupt is not None:
            raise CorruptRecord(record.corrupt)
        payload = codec.decode(record.payload, f"payload of {cls.label} {record.saga_id!r}")
        return cls.restore(
            record.saga_id,
            definition,
            payload,
            record.incarnation,
            record.snapshot,
            record.snapshot_version,
            record.recovery_attempts,
        )

    # --- what the host reads ----------------------------------------------------------------

    @property
    def status(self) -> str:
        return self.state.phase  # type: ignore[attr-defined]

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def snapshot(self) -> bytes:
        # A shallow dict: the fields are plain values, lists and dicts already (attrs.asdict
        # would copy them all recursively, and this runs at every step of every saga).
        return codec.encode(
            dict(zip(self._fields, type(self)._values(self.state), strict=True)),
            f"snapshot of {self.label} {self.saga_id!r}",
        )

    def take_events(self) -> tuple[Event, ...]:
        events, self.events = tuple(self.events), []
        return events

    def _event(
        self,
        kind: str,
        now: float,
        step: int | None = None,
        attempt: int | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        self.events.append(Event(kind, now, step, attempt, detail or {}))

    def _name(self, index: int) -> str:
        return self.definition.steps[index].name

    def _started(self, now: float, parent: str | None) -> None:
        detail = self._started_detail()
        if parent is not None:
            detail["parent"] = parent  # the timeline links a child saga to its parent
        self._event("started", now, detail=detail)

    def _started_detail(self) -> dict[str, Any]:
        return {"definition": self.definition.name, "version": self.definition.version}

    def _child_of(self, spec: Step) -> dict[str, Any]:
        """What an intent of ``spec`` says beside the rest: the child saga it runs, if any."""
        return {} if spec.saga is None else {"child": child_id(self.saga_id, spec.name)}

    # --- shared inputs and commands ---------------------------------------------------------

    def park(self, reason: str, now: float) -> list[Command]:
        """Give up: failed-needs-attention, listing the compensations or steps outstanding."""
        return self._park(reason, now)

    def overflow(self, size: int, cap: int, now: float) -> list[Command]:
        """The snapshot outgrew its cap: park (nothing more is sent) and drop the step results
        from the state so the parked snapshot fits."""
        commands = self._park(
            f"snapshot of {size} bytes exceeds the cap of {cap} bytes (max_snapshot_bytes); "
            "step results are too large to keep: return references, not documents",
            now,
        )
        self.state.results = {}  # type: ignore[attr-defined]
        self.state.stopped_in = OVERFLOW  # type: ignore[attr-defined]
        return commands

    def _park(self, reason: str, now: float) -> list[Command]:
        raise NotImplementedError

    def _readable(self, step: int) -> frozenset[str] | None:
        """The results a request of ``step`` may carry (None: every earlier one)."""
        return None

    def _request(self, kind: str, step: int, attempt: int) -> Send:
        """The request of ``step`` (its forward action or its compensation), built the same
        way each time: same key, attempt and incarnation, so that sending it again is safe."""
        spec = self.definition.steps[step]
        action = spec.action if kind == DO else spec.compensation
        assert action is not None
        state: Any = self.state
        payload, results = request_data(spec, self.payload, state.results, self._readable(step))
        request = StepRequest(
            saga_id=self.saga_id,
            step=step,
            step_name=spec.name,
            kind=kind,
            action=action,
            key=idempotency_key(self.saga_id, step, kind),
            forward_key=idempotency_key(self.saga_id, step, DO),
            payload=payload,
            results=results,
            attempt=attempt,
            incarnation=self.incarnation,
            failure=failure_of(state.failure) if kind == UNDO else None,
        )
        return Send(spec.participant, request)
