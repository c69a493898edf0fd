"""A saga's timeline as lanes, bars and marks: what ``understudy show --html`` and ``understudy
serve`` draw, readable from Python too.

:func:`read` (or :func:`build`, given a row and its events) turns a saga's row and its event
log into a :class:`Timeline`: one :class:`Lane` for the saga itself and one per participant it
sent requests to. A request is a :class:`Bar` from its intent to its outcome (``done``,
``compensated``, ``rejected``, ``failed``, ``timeout``), on the lane of the participant it went
to; a request with no outcome yet reaches the timeline's end and is open. Everything else that
happened is a :class:`Mark`: retries, timeouts and failures on the participant's lane; the
start, restarts, aborts, operators' actions and the end on the saga's lane. An event kind this
module does not know becomes a plain mark on the saga's lane, and a damaged event a ``damaged``
mark: reading a timeline never fails on what the log holds.

Everything here only reads; the values are frozen.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs

from understudy import codec, diagnosis
from understudy.errors import CorruptRecord
from understudy.persistence.base import TERMINAL_STATUSES, EventRecord, SagaRecord, SagaStore

#: The lane of saga-level events (start, restarts, aborts, operators, the end).
SAGA_LANE: Final = "saga"
DO: Final = "do"
UNDO: Final = "undo"

#: Outcomes a request can have besides the event that answered it: sent again (same key) after
#: a restart, which ended the incarnation that sent it; or never answered before the saga ended.
INTERRUPTED: Final = "interrupted"
UNANSWERED: Final = "unanswered"

_INTENTS: Final = {"intent": DO, "compensation-intent": UNDO}
_ANSWERS: Final = frozenset({"done", "compensated", "rejected", "failed", "timeout"})
#: Answers also drawn as a mark of their own, so that trouble stands out at a glance.
_TROUBLE: Final = {"failed": "failure", "rejected": "rejection", "timeout": "timeout"}

#: How each known kind of event is drawn when it is a mark: its category (the CSS class) and
#: whether it belongs to a step's lane (True) or to the saga's lane.
_MARKS: Final[dict[str, tuple[str, bool]]] = {
    "started": ("start", False),
    "resumed": ("resume", False),
    "aborted": ("abort", False),
    "suspended": ("suspended", False),
    "operator": ("operator", False),
    "operator-refused": ("refused", False),
    "paused": ("pause", False),
    "retry-scheduled": ("retry", True),
    "compensation-skipped": ("skip", True),
    "held": ("held", True),
    "debt": ("debt", True),
    "debt-settled": ("settled", True),
    "debt-retried": ("retry", True),
    "resolved": ("settled", True),
    "skipped": ("skip", True),
}


@attrs.frozen
class Bar:
    """One request of a step (``phase`` :data:`DO`) or of its compensation (:data:`UNDO`), from
    its intent (``start``) to its answer (``end``). ``outcome`` is the answer's kind, or
    :data:`INTERRUPTED`, :data:`UNANSWERED`, or None while the request is still out (then
    ``end`` is the timeline's end). ``answer`` is the answer's detail (reason, outcome)."""

    lane: str
    phase: str
    step: int
    step_name: str | None
    attempt: int | None
    participant: str | None
    action: str | None
    key: str | None
    resent: bool
    incarnation: int
    start: float
    end: float
    outcome: str | None
    answer: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def kind(self) -> str:
        """The kind of the event that opened it."""
        return "intent" if self.phase == DO else "compensation-intent"

    @property
    def open(self) -> bool:
        return self.outcome is None


@attrs.frozen
class Mark:
    """One event drawn at its time on ``lane``: ``category`` says how (``retry``, ``timeout``,
    ``restart``, ``crash``, ``operator``, ``debt``, ``damaged``, ``other``, ...), ``label`` is a
    few words for people, ``damaged`` why the event cannot be trusted (None when intact)."""

    lane: str
    kind: str
    category: str
    at: float
    step: int | None
    step_name: str | None
    attempt: int | None
    incarnation: int
    seq: int
    label: str
    detail: Mapping[str, Any] = attrs.field(factory=dict)
    damaged: str | None = None


@attrs.frozen
class Lane:
    """The saga's lane (``name`` :data:`SAGA_LANE`) or a participant's, with the actions sent to
    it, in the order first sent."""

    name: str
    actions: tuple[str, ...]
    bars: tuple[Bar, ...]
    marks: tuple[Mark, ...]

    @property
    def is_saga(self) -> bool:
        return self.name == SAGA_LANE


@attrs.frozen
class Timeline:
    """A saga's row and its events as lanes (the saga's own first, then the participants' in
    the order the saga first sent to them). ``start`` is when it was created, ``end`` its last
    event (for an unfinished saga: ``now``, when it was read). ``outstanding`` is the work its
    snapshot leaves for a person, ``results`` the step results it holds and ``payload`` its
    payload (None when they cannot be read: ``notes`` then say why, as they do for any
    damaged event). ``events`` counts the log's events, ``retries`` its retries scheduled,
    ``restarts`` its ``claimed`` events; ``compensating_from`` is when it aborted (None if it
    never did)."""

    saga_id: str
    definition: str
    version: int
    status: str
    reason: str | None
    incarnation: int
    recovery_attempts: int
    created_at: float
    updated_at: float
    start: float
    end: float
    now: float
    lanes: tuple[Lane, ...]
    outstanding: tuple[str, ...]
    results: Mapping[str, Any] | None
    payload: Any
    notes: tuple[str, ...]
    events: int
    retries: int
    restarts: diagnosis.Restarts
    compensating_from: float | None
    #: A workflow's graph, as its start recorded it: each step's name and the steps it depends
    #: on, in the definition's order (None for a saga).
    graph: tuple[tuple[str, tuple[str, ...]], ...] | None = None
    #: The saga this one is a child of (``Step.child``), and the child sagas it runs (each
    #: with the step that runs it), as its timeline records them.
    parent: str | None = None
    children: tuple[tuple[str, str | None], ...] = ()

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def bars(self) -> tuple[Bar, ...]:
        return tuple(bar for lane in self.lanes for bar in lane.bars)

    @property
    def marks(self) -> tuple[Mark, ...]:
        return tuple(mark for lane in self.lanes for mark in lane.marks)

    def lane(self, name: str) -> Lane:
        """The lane called ``name``; KeyError when there is none."""
        for lane in self.lanes:
            if lane.name == name:
                return lane
        raise KeyError(name)


def read(store: SagaStore, saga_id: str, *, now: float | None = None) -> Timeline | None:
    """The timeline of ``saga_id`` in ``store``; None when the store has no such saga."""
    record = store.get(saga_id)
    if record is None:
        return None
    try:
        events = store.events(saga_id)
    except CorruptRecord as exc:  # the whole log unreadable: draw the row alone, and say why
        return build(record, [], now=now, notes=(f"the timeline cannot be read: {exc}",))
    return build(record, events, now=now)


def build(
    record: SagaRecord,
    events: Sequence[EventRecord],
    *,
    now: float | None = None,
    notes: tuple[str, ...] = (),
) -> Timeline:
    """The timeline of the saga whose row is ``record`` and whose log is ``events``.
    ``now`` (default: this machine's clock) is where an unfinished saga's open requests end."""
    now = time.time() if now is None else now
    last = max([record.created_at, *(e.at for e in events)])
    terminal = record.status in TERMINAL_STATUSES
    end = max(last, record.updated_at) if terminal else max(last, now)
    builder = _Builder()
    for event in events:
        builder.add(event)
    builder.close_all(end, None if not terminal else UNANSWERED)
    state, problem = diagnosis.snapshot_state(
        record
    )  # the row's snapshot, or why it cannot be read
    payload, payload_problem = _payload(record)
    found = [*notes, *(p for p in (problem, payload_problem) if p)]
    found += [f"event {e.seq} ({e.kind}): {e.corrupt}" for e in events if e.corrupt]
    outstanding = state.get("outstanding") if state else None
    results = state.get("results") if state else None
    family = links(events)
    return Timeline(
        saga_id=record.saga_id,
        definition=record.definition,
        version=record.version,
        status=record.status,
        reason=record.reason,
        incarnation=record.incarnation,
        recovery_attempts=record.recovery_attempts,
        created_at=record.created_at,
        updated_at=record.updated_at,
        start=min([record.created_at, *(e.at for e in events)]),
        end=end,
        now=now,
        lanes=builder.lanes(),
        outstanding=tuple(str(o) for o in outstanding) if isinstance(outstanding, list) else (),
        results=results if isinstance(results, dict) else None,
        payload=payload,
        notes=tuple(dict.fromkeys(found)),
        events=len(events),
        retries=sum(e.kind == "retry-scheduled" for e in events),
        restarts=diagnosis.restarts(events),
        compensating_from=next(
            (e.at for e in events if e.kind == "aborted" and e.corrupt is None), None
        ),
        graph=_graph(events),
        parent=family[0],
        children=family[1],
    )


def links(events: Sequence[EventRecord]) -> tuple[str | None, tuple[tuple[str, str | None], ...]]:
    """The parent a saga's ``started`` event names, and the child sagas its intents name (each
    with its step's name, once), from its timeline."""
    parent: str | None = None
    children: dict[str, str | None] = {}
    for e in events:
        if e.kind == "started" and e.detail.get("parent"):
            parent = str(e.detail["parent"])
        elif e.kind == "intent" and e.detail.get("child"):
            name = e.detail.get("name")
            children.setdefault(str(e.detail["child"]), None if name is None else str(name))
    return parent, tuple(children.items())


def _graph(events: Sequence[EventRecord]) -> tuple[tuple[str, tuple[str, ...]], ...] | None:
    """The graph a workflow's ``started`` event records (None without one, or a malformed one:
    a damaged log still draws)."""
    for e in events:
        if e.kind != "started" or e.corrupt is not None:
            continue
        after = e.detail.get("after")
        if not isinstance(after, dict):
            return None
        graph = []
        for name, deps in after.items():
            if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
                return None
            graph.append((str(name), tuple(deps)))
        return tuple(graph)
    return None


def _payload(record: SagaRecord) -> tuple[Any, str | None]:
    try:
        return codec.decode(record.payload, f"payload of saga {record.saga_id!r}"), None
    except CorruptRecord as exc:
        return None, str(exc)


def _closed(bar: Bar, at: float, outcome: str | None, answer: Mapping[str, Any]) -> Bar:
    return attrs.evolve(bar, end=max(at, bar.start), outcome=outcome, answer=answer)


class _Builder:
    """Reads a log in order, keeping what is out per (step, phase)."""

    def __init__(self) -> None:
        self.bars: list[Bar] = []
        self.marks: list[Mark] = []
        self.out: dict[tuple[int, str], Bar] = {}  # requests not answered yet
        self.phase: dict[int, str] = {}  # the phase of each step's latest intent
        self.where: dict[int, str] = {}  # each step's participant, from its latest intent
        self.names: dict[int, str] = {}
        self.order: dict[str, list[str]] = {SAGA_LANE: []}  # lanes and their actions, in order

    def add(self, e: EventRecord) -> None:
        if e.corrupt is None and not isinstance(e.detail, dict):  # intact, yet not understood
            e = attrs.evolve(e, detail={}, corrupt=f"its detail is a {type(e.detail).__name__}")
        if e.corrupt is not None:
            self._mark(e, "damaged", self._lane_of(e.step), f"damaged {e.kind}", e.corrupt)
        elif e.kind in _INTENTS and e.step is not None:
            self._intent(e, _INTENTS[e.kind])
        elif e.kind in _ANSWERS and e.step is not None:
            self._answer(e)
        elif e.kind == "claimed":
            # A new incarnation: whatever the old one had out is sent again, or abandoned; a
            # late answer to it would be stale, so its bar ends here.
            self.close_all(e.at, INTERRUPTED)
            crash = e.detail.get("recovery") is True
            label = f"{'recovered after a crash' if crash else 'restarted'}: inc {e.incarnation}"
            self._mark(e, "crash" if crash else "restart", SAGA_LANE, label)
        elif e.kind in TERMINAL_STATUSES:  # a saga-level end: the step is None
            self.close_all(e.at, UNANSWERED)
            self._mark(e, "end", SAGA_LANE, e.kind)
        else:
            category, on_step = _MARKS.get(e.kind, ("other", False))
            lane = SAGA_LANE
            if on_step:
                lane = _text(e.detail.get("participant")) or self._lane_of(e.step)
            self._mark(e, category, lane, _label(e, self._name(e.step)))

    def _intent(self, e: EventRecord, phase: str) -> None:
        assert e.step is not None
        participant = _text(e.detail.get("participant"))
        action = _text(e.detail.get("action"))
        name = _text(e.detail.get("name"))
        lane = participant or self._lane_of(e.step)
        previous = self.out.pop((e.step, phase), None)
        if previous is not None:  # sent again before any answer: the first one is superseded
            self.bars.append(_closed(previous, e.at, INTERRUPTED, {}))
        self.phase[e.step] = phase
        self.where[e.step] = lane
        if name:
            self.names[e.step] = name
        actions = self.order.setdefault(lane, [])
        if action and action not in actions:
            actions.append(action)
        bar = Bar(
            lane=lane,
            phase=phase,
            step=e.step,
            step_name=name or self.names.get(e.step),
            attempt=e.attempt,
            participant=participant,
            action=action,
            key=_text(e.detail.get("key")),
            resent=e.detail.get("resent") is True,
            incarnation=e.incarnation,
            start=e.at,
            end=e.at,
            outcome=None,
        )
        self.out[(e.step, phase)] = bar

    def _answer(self, e: EventRecord) -> None:
        assert e.step is not None
        if e.kind == "done":
            phase = DO
        elif e.kind == "compensated":
            phase = UNDO
        elif e.kind == "timeout" and e.detail.get("kind") in (DO, UNDO):
            phase = str(e.detail["kind"])
        else:  # failed and rejected do not say which request they answer: the latest one
            phase = self.phase.get(e.step, DO)
        opened = self.out.pop((e.step, phase), None)
        if opened is not None:
            self.bars.append(_closed(opened, e.at, e.kind, dict(e.detail)))
        lane = self._lane_of(e.step)
        if e.kind in _TROUBLE:
            self._mark(e, _TROUBLE[e.kind], lane, _label(e, self._name(e.step)))
        elif opened is None:  # an answer to nothing the log shows sent: keep it visible
            self._mark(e, "other", lane, f"{e.kind} (no request recorded)")

    def close_all(self, at: float, outcome: str | None) -> None:
        for opened in self.out.values():
            self.bars.append(_closed(opened, at, outcome, {}))
        self.out.clear()

    def _name(self, step: int | None) -> str | None:
        return self.names.get(step) if step is not None else None

    def _lane_of(self, step: int | None) -> str:
        return self.where.get(step, SAGA_LANE) if step is not None else SAGA_LANE

    def _mark(
        self, e: EventRecord, category: str, lane: str, label: str, damaged: str | None = None
    ) -> None:
        self.order.setdefault(lane, [])
        name = self._name(e.step)
        self.marks.append(
            Mark(
                lane=lane,
                kind=e.kind,
                category=category,
                at=e.at,
                step=e.step,
                step_name=name,
                attempt=e.attempt,
                incarnation=e.incarnation,
                seq=e.seq,
                label=label,
                detail=dict(e.detail),
                damaged=damaged,
            )
        )

    def lanes(self) -> tuple[Lane, ...]:
        return tuple(
            Lane(
                name,
                tuple(actions),
                tuple(sorted((b for b in self.bars if b.lane == name), key=lambda b: b.start)),
                tuple(m for m in self.marks if m.lane == name),
            )
            for name, actions in self.order.items()
        )


def _label(e: EventRecord, name: str | None) -> str:
    """A few words saying what ``e`` was."""
    d = e.detail
    step = f" {name}" if name else (f" step {e.step}" if e.step is not None else "")
    attempt = f" #{e.attempt}" if e.attempt is not None else ""
    if e.kind == "retry-scheduled":
        when = f" in {offset(d['in'])}" if isinstance(d.get("in"), int | float) else ""
        return f"retry{step}{attempt}{when}"
    if e.kind == "timeout":
        return f"no reply{step}{attempt} within {d.get('after', '?')} s"
    if e.kind in ("failed", "rejected"):
        return f"{e.kind}{step}{attempt}: {d.get('reason') or d.get('outcome') or '-'}"
    if e.kind in ("operator", "operator-refused"):
        verb = d.get("verb", "?")
        return f"{verb} by {d.get('who', '?')}{' (refused)' if e.kind != 'operator' else ''}"
    if e.kind == "debt":
        return f"debt: {d.get('compensation', 'compensation')}{step} owed"
    if e.kind == "aborted":
        return "aborted: compensating"
    return f"{e.kind}{step}" + (f" by {d['who']}" if "who" in d else "")


def offset(seconds: float) -> str:
    """A duration for a time axis: ``850 us``, ``12 ms``, ``1.5 s``, then whole seconds as
    :func:`understudy.diagnosis.span` says them (``4 m 59 s``)."""
    size = abs(seconds)
    if size == 0:
        return "0 ms"
    if size < 0.001:
        return f"{seconds * 1e6:.0f} us"
    if size < 1:
        return f"{seconds * 1000:.3g} ms"
    if size < 60:
        return f"{seconds:.3g} s"
    return ("-" if seconds < 0 else "") + diagnosis.span(seconds)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
