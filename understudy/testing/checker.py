"""The checker: judge a run only from what is on disk.

It reads the saga store (through :func:`understudy.persistence.open_store`, read-only: a SQLite
file or a PostgreSQL database) and every participant's ledger (the ``understudy_ledger`` table each
:class:`~understudy.Participant` keeps in its own database, a SQLite file or a PostgreSQL
database, see :mod:`understudy.actors.ledger`) after the run has healed and gone quiet. It never
asks the coordinator or trusts a reply the run received: those are exactly what a crash loses.
Each violated invariant is reported with the saga it concerns.

The invariants (rule names in brackets):

- [lost] every saga whose start was acknowledged exists in the store;
- [quiesce] no saga is left running or compensating after the heal-and-quiesce phase;
- [terminal-once] each saga's terminal state was written exactly once, and is the status stored;
- [write-ahead] a participant applied a step, or its compensation, only after the saga recorded
  its intent: an effect without an intent, or older than the first one, was sent before the
  saga's decision was durable (participants and the store share one machine clock here);
- [unknown-saga] no participant holds effects of a saga the store never recorded;
- [completed] a completed saga applied every step and compensated none;
- [compensated] a compensated saga compensated every step whose intent it recorded, left no
  forward effect applied, and compensated in reverse order (a workflow: in reverse graph order,
  every step compensated after the steps that depend on it);
- [graph-order] (workflows) no step's intent was recorded before every step it depends on was
  done, and no step applied whose dependency never did;
- [forward-after-undo] no forward effect was applied after its compensation;
- [needs-attention] a failed saga whose effects are neither all forward nor fully compensated
  lists what is unresolved;
- [restart-limit] a saga recovered more often than the restart policy's persisted cap
  (without progress) takes no further step and ends parked as failed (I11; an operator's verb
  on the parked saga takes it up again, and its count starts afresh);
- [verb-once] (I8, I9) every operator's command stored is applied exactly once (one
  ``operator`` event with its number, and no refusal), refused exactly once (one
  ``operator-refused`` event), or pending with neither, and only when no runtime ran after it
  (:attr:`RunView.commands_settled`); every operator event names a command of its saga in
  that state;
- [debt] (I2, I4) compensation debt is never dropped: every step a ``debt`` event records is
  later paid (compensated or resolved after a ``debt-retried``, or owed again), settled by an
  operator (``debt-settled``), or still listed in the saga's ``debt``; the saga lists nothing
  as debt that no event recorded, and a compensated saga owes nothing;
- [cancel] (I4, I5) an applied cancel skips no compensation: every step with an intent (or
  skipped) before it is compensated, resolved by hand, owed, or still on the stack of a parked
  saga; and the saga takes no forward step after it;
- [skipped] (I2) a skipped step holds the result the operator gave it, and every ``skipped``,
  ``resolved``, ``debt-settled`` and ``debt-retried`` event comes from an applied verb that
  does that (skip, resolve, resolve, retry);
- [paused] (I4) a paused saga sends nothing between its pause and its resume (or cancel,
  abandon, end): no intent of a step or of a compensation;
- [child-parent] (child sagas, :mod:`understudy.testing.child_rules`) every saga started as a
  child names a parent that runs it at that step and recorded the step's intent before it
  started (its compensation's intent before an ``unwind``);
- [child-consistent] a completed parent's children completed and were never unwound; a
  compensated parent's children are compensated. A child step's effect is its child saga (it
  has no ledger): completed is the step applied, compensated after completing is the step
  compensated, so the rules above judge child steps as any other;
- [recovery] (added by the runner) every saga was terminal within the recovery bound after
  the heal;
- [progress] at least ``min_completed`` sagas completed: a run where nothing worked proves
  nothing;
- [domain] every user invariant returned no complaint.

Choreographed chains (:mod:`understudy.testing.chain_rules`; a run with reactors, or whose
workload starts chains, :class:`ChainStart`). Each violation names its chain (``chain <id>``)
and the event (topic and id):

- [chain-lost] every chain whose first event the driver's publish returned for is in the log;
- [unknown-chain] the log holds no chain the workload did not start;
- [chain-pending] nothing is left pending: every event in the log was acknowledged by every
  reactor subscribed to its topic before it was appended;
- [chain-once] every acknowledgement has its reactor's ledger row for that event, with the
  same outcome (applied, or refused for a rejection or a final failure), and every ledger row
  of a reaction has its acknowledgement: each subscriber applied each event exactly once (the
  ledger's key is the event and the reactor; the domain invariants judge the effects);
- [chain-caused] every event a reactor published is named by the acknowledgement its reaction
  committed with (an event from a reaction that rolled back, or that ran a second time, is
  not), and every event an acknowledgement names is in the log;
- [chain-outbox] no reactor's outbox row is left unrelayed, every row marked relayed is in the
  store, and every event a reactor published went through its outbox;
- [chain-consistent] every chain ends completed or compensated (every failure published its
  failure event and every subscriber of that applied it). How this was decided: a chain left
  failed is a violation, whatever the faults. The harness's faults strike a reactor's
  boundaries (before a batch, after its commit, in the relay), never inside a reaction, and a
  crash is retried, not counted as the reaction's failure; so no fault makes a chain failed by
  design. A scenario whose own reactions leave failures uncompensated fails this rule, as it
  should: ``understudy show`` would list the chain as needing attention.

[progress] counts completed chains with the completed sagas.

Operators' verbs change what a saga's effects must be, and only for the steps they name: a
step an operator skipped needs no forward effect ([completed]), a compensation resolved by hand
(``resolved``, ``debt-settled``) needs no compensation effect ([compensated],
[needs-attention]), and a parked saga an operator took up again may end a second time
([terminal-once]), as may a completed child saga its parent unwound. A saga no verb touched
is judged as strictly as before. Ledger rows the run's driver wrote itself, doing an
operator's work by hand (:attr:`RunView.by_hand`), need no intent before them ([write-ahead]);
every other rule holds them as any effect.

Idempotency keys are the ledger's primary key, so "at most one effect per key" holds in the
ledger by construction; whether the participant's own tables agree is a domain invariant (the
demo checks no double charge and that stock and money are conserved).
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from understudy import codec
from understudy.actors.verbs import UNWIND
from understudy.definitions import (
    SagaDefinition,
    WorkflowDefinition,
    has_children,
    with_children,
)
from understudy.errors import CorruptRecord, LedgerError
from understudy.persistence import POSTGRES_SCHEMES, open_store, redact, secrets_in
from understudy.persistence.base import (
    APPLIED,
    COMPENSATED,
    COMPLETED,
    FAILED,
    PENDING,
    REFUSED,
    TERMINAL_STATUSES,
    CommandRecord,
    EventRecord,
    SagaRecord,
)
from understudy.supervisors.policy import RestartPolicy
from understudy.testing.chain_rules import check_chains
from understudy.testing.child_rules import check_children, child_effects

if TYPE_CHECKING:
    import psycopg

SHOWN = 20  # violations printed per rule
_CHAIN_STARTS = uuid.UUID("6f1d3c52-8d0e-4d43-9a55-2f0b6c1a7e10")  # the first events' ids
#: The verb each event only an operator's verb writes comes from.
VERB_OF = {
    "skipped": "skip",
    "resolved": "resolve",
    "debt-settled": "resolve",
    "debt-retried": "retry",
}
#: Verbs that end a pause: nothing is held back after them.
UNPAUSING = ("resume", "cancel", "abandon")
CONNECT_TIMEOUT = 10  # seconds to reach a participant's PostgreSQL database
_LEDGER_ROWS = "SELECT saga_id, step, kind, outcome, at FROM understudy_ledger ORDER BY at"


@attrs.frozen
class Violation:
    rule: str
    saga_id: str | None
    detail: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.saga_id + ': ' if self.saga_id else ''}{self.detail}"


class InvariantViolation(AssertionError):
    """A run broke an invariant; the message lists every violation with its saga id."""


@attrs.frozen
class LedgerRow:
    participant: str
    saga_id: str
    step: int
    kind: str
    outcome: str
    at: float


@attrs.frozen
class SagaStart:
    """One saga a workload starts."""

    saga_id: str
    definition: str
    payload: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class ChainStart:
    """One choreographed chain a workload starts: an event on ``topic`` published from plain
    code (``Understudy.publish``) with the chain's ``correlation_id``. ``event_id`` makes a
    publish sent again after a crash idempotent (the store appends each id once); by default
    it is derived from the correlation id (a UUID of it, shown like any other event id), so
    each chain starts with one event."""

    correlation_id: str
    topic: str
    data: Any = None
    event_id: str = ""

    @property
    def first_event(self) -> str:
        """The id of the event that starts the chain."""
        return self.event_id or uuid.uuid5(_CHAIN_STARTS, self.correlation_id).hex

    @property
    def saga_id(self) -> str:
        """What names this start where a saga id is expected (a fault scoped to the N-th start
        of the workload, ``#N``): the chain's correlation id, which a reactor reports at its
        failpoints."""
        return self.correlation_id


#: What a workload starts: sagas, chains, or both.
Start = SagaStart | ChainStart


@attrs.frozen
class RunView:
    """Where a run's data is, and what its driver knows for sure (what it submitted and which
    starts were acknowledged). Domain invariants receive it too."""

    directory: Path
    store: Path | str  # the saga store: a SQLite file, or a PostgreSQL URL
    #: Participant name -> its ledger database: a SQLite file (a path), or a PostgreSQL URL (a
    #: str, as the participant's ``database`` option names it; see :func:`ledger_location`).
    ledgers: Mapping[str, Path | str]
    definitions: tuple[SagaDefinition, ...]
    submitted: tuple[SagaStart, ...]  # the workload's sagas, whether acknowledged or not
    acknowledged: frozenset[str]  # saga ids whose start was acknowledged
    policy: RestartPolicy = attrs.field(factory=RestartPolicy)
    #: (saga id, step, "do" or "undo") of each ledger key the driver served itself, doing an
    #: operator's work by hand before recording it (skip, resolve): no intent precedes those.
    by_hand: frozenset[tuple[str, int, str]] = frozenset()
    #: The driver kept a runtime running until no operator's command was pending (the chaos
    #: runner's heal does): a command still pending was lost.
    commands_settled: bool = False
    #: Reactor name -> its database (ledger and outbox), as :attr:`ledgers` holds them; kept
    #: apart because a reaction's ledger row is keyed by an event, not by a saga's step.
    reactors: Mapping[str, Path | str] = attrs.field(factory=dict)
    #: The workload's chains, whether their first event was published or not.
    chains: tuple[ChainStart, ...] = ()
    #: Correlation ids of the chains whose first event the driver's publish returned for.
    published: frozenset[str] = frozenset()

    def records(self) -> dict[str, SagaRecord]:
        with closing(open_store(self.store, read_only=True)) as store:
            return {r.saga_id: r for r in store.list_sagas(limit=1 << 62)}

    def connect(self, participant: str) -> Any:
        """A plain DB-API connection to ``participant``'s database, for domain invariants: a
        :class:`sqlite3.Connection` for a SQLite file (as ``sqlite3.connect(path)`` opens it),
        or a read-only :class:`psycopg.Connection` for a PostgreSQL database (every transaction
        ``BEGIN READ ONLY``; ``%s`` placeholders; ``with`` closes it). Connecting to PostgreSQL
        raises :class:`~understudy.errors.LedgerError`, without credentials, when it fails."""
        location = {**self.reactors, **self.ledgers}[participant]
        if _on_postgres(location):
            return _connect_postgres(participant, str(location))
        return sqlite3.connect(location)


Invariant = Callable[[RunView], Iterable[str]]


@attrs.define
class Report:
    violations: list[Violation] = attrs.field(factory=list)
    statuses: Counter[str] = attrs.field(factory=Counter)
    sagas: int = 0
    effects: int = 0
    #: ``"verb state"`` -> how many operators' commands the store holds.
    verbs: Counter[str] = attrs.field(factory=Counter)
    #: Participants whose ledger is in PostgreSQL -> that database, without credentials: a
    #: failing run's databases are kept, and the report names them.
    databases: dict[str, str] = attrs.field(factory=dict)
    #: Choreographed chains by status, and the events and reactions they hold.
    chains: Counter[str] = attrs.field(factory=Counter)
    events: int = 0
    reactions: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations

    def add(self, rule: str, saga_id: str | None, detail: str) -> None:
        self.violations.append(Violation(rule, saga_id, detail))

    def summary(self) -> str:
        statuses = ", ".join(f"{s} {n}" for s, n in sorted(self.statuses.items()))
        text = f"{self.sagas} sagas ({statuses or 'none'}), {self.effects} ledger rows"
        if self.chains:
            chains = ", ".join(f"{s} {n}" for s, n in sorted(self.chains.items()))
            text += (
                f", {sum(self.chains.values())} chains ({chains}), {self.events} events, "
                f"{self.reactions} reactions"
            )
        return text

    def __str__(self) -> str:
        if self.ok:
            return f"every invariant held: {self.summary()}"
        lines = [f"{len(self.violations)} invariant violation(s) in {self.summary()}:"]
        shown: Counter[str] = Counter()
        for violation in self.violations:
            shown[violation.rule] += 1
            if shown[violation.rule] <= SHOWN:
                lines.append(f"  {violation}")
        for rule, count in shown.items():
            if count > SHOWN:
                lines.append(f"  ... and {count - SHOWN} more [{rule}]")
        places: dict[str, list[str]] = defaultdict(list)
        for name, database in self.databases.items():
            places[database].append(name)
        lines += [f"ledger of {', '.join(names)}: {where}" for where, names in places.items()]
        return "\n".join(lines)

    def assert_ok(self, context: str = "") -> None:
        if not self.ok:
            raise InvariantViolation(f"{context}\n{self}" if context else str(self))


def ledger_location(database: str | os.PathLike[str]) -> Path | str:
    """Where a participant's ``database`` option keeps its ledger, as :attr:`RunView.ledgers`
    holds it: a PostgreSQL URL as it is (a str), anything else as a SQLite file's path."""
    text = os.fspath(database)
    return text if text.startswith(POSTGRES_SCHEMES) else Path(text)


def read_ledger(participant: str, location: Path | str) -> list[LedgerRow]:
    """Every row of a participant's idempotency ledger (empty when it has none yet), in a
    SQLite file or in the PostgreSQL database a ``postgresql://`` URL names, opened read-only.
    A PostgreSQL database that cannot be read raises :class:`~understudy.errors.LedgerError`
    (without credentials): a check that could not see the effects must not pass."""
    if _on_postgres(location):
        return _read_postgres_ledger(participant, str(location))
    if not Path(location).exists():
        return []
    with closing(sqlite3.connect(f"file:{location}?mode=ro", uri=True)) as db:
        try:
            rows = db.execute(_LEDGER_ROWS).fetchall()
        except sqlite3.OperationalError:
            return []  # the participant never configured its ledger
    return [LedgerRow(participant, *row) for row in rows]


def _on_postgres(location: Path | str) -> bool:
    return os.fspath(location).startswith(POSTGRES_SCHEMES)


def _read_postgres_ledger(participant: str, url: str) -> list[LedgerRow]:
    import psycopg  # the postgres extra: only PostgreSQL ledgers need it

    with closing(_connect_postgres(participant, url)) as db:
        try:
            rows = db.execute(_LEDGER_ROWS).fetchall()
        except psycopg.errors.UndefinedTable:
            return []  # the participant never configured its ledger, as on SQLite
        except psycopg.Error as exc:
            raise _ledger_error(participant, url, "cannot be read", exc) from None
    return [LedgerRow(participant, *row) for row in rows]


def _connect_postgres(participant: str, url: str) -> psycopg.Connection[Any]:
    """A connection whose every transaction is read-only (psycopg begins each one ``BEGIN READ
    ONLY``): the checker and domain invariants look, they never write."""
    import psycopg

    try:
        db = psycopg.connect(
            url,
            connect_timeout=CONNECT_TIMEOUT,
            fallback_application_name="understudy checker",
        )
    except psycopg.Error as exc:
        raise _ledger_error(participant, url, "cannot be reached", exc) from None
    db.read_only = True
    return db


def _ledger_error(participant: str, url: str, what: str, exc: Exception) -> LedgerError:
    # Not chained to the driver's exception: its text may hold a password, this one's not.
    text = str(exc).strip()
    for secret in secrets_in(url):
        text = text.replace(secret, "***")
    return LedgerError(f"ledger of {participant} at {redact(url)} {what}: {text}")


def _ledger_rows(
    view: RunView,
    records: Mapping[str, SagaRecord],
    definitions: Mapping[tuple[str, int], SagaDefinition],
) -> Iterator[LedgerRow]:
    """Every participant's ledger rows, each ledger read once. Participants may share a
    database (PostgreSQL participants often do): their rows are in one table, which names no
    participant, so it is read once and each row put down to the participant its saga's step
    names (to all of them, joined with ``/``, when the saga or its definition is unknown)."""
    sharing: dict[str, list[str]] = defaultdict(list)
    for name, location in view.ledgers.items():
        # redact() keeps what names a database (host, port, name), not who connects to it.
        place = redact(location) if _on_postgres(location) else os.path.realpath(location)
        sharing[place].append(name)
    for names in sharing.values():
        if len(names) == 1:
            yield from read_ledger(names[0], view.ledgers[names[0]])
            continue
        for row in read_ledger("/".join(names), view.ledgers[names[0]]):
            record = records.get(row.saga_id)
            definition = None
            if record is not None:
                definition = definitions.get((record.definition, record.version))
            if definition is not None and 0 <= row.step < len(definition.steps):
                owner = definition.steps[row.step].participant
                if owner in names:
                    row = attrs.evolve(row, participant=owner)
            yield row


def check(view: RunView, invariants: Iterable[Invariant] = (), min_completed: int = 1) -> Report:
    """Check every invariant of the module docstring against the run's files."""
    report = Report()
    definitions = {d.key: d for d in with_children(view.definitions)}
    records = view.records()
    report.sagas = len(records)
    report.statuses.update(r.status for r in records.values())
    ledger: dict[str, list[LedgerRow]] = defaultdict(list)
    for row in _ledger_rows(view, records, definitions):
        ledger[row.saga_id].append(row)
        report.effects += 1
    report.databases = {
        name: redact(location) for name, location in view.ledgers.items() if _on_postgres(location)
    }

    for saga_id in sorted(view.acknowledged - set(records)):
        report.add("lost", saga_id, "its start was acknowledged but the store has no such saga")
    for saga_id in sorted(set(ledger) - set(records)):
        rows = ", ".join(
            f"{r.participant} step {r.step} {r.kind} ({r.outcome})" for r in ledger[saga_id]
        )
        report.add(
            "unknown-saga", saga_id, f"participants hold effects the store never recorded: {rows}"
        )

    with closing(open_store(view.store, read_only=True)) as store:
        timelines: dict[str, list[EventRecord]] = {}

        def events_of(saga_id: str) -> list[EventRecord]:
            if saga_id not in timelines:
                timelines[saga_id] = store.events(saga_id)
            return timelines[saga_id]

        if has_children(definitions.values()):
            # A child step's effect is its child saga: judged as ledger rows of its own.
            for row in child_effects(records, definitions, events_of, LedgerRow):
                ledger[row.saga_id].append(row)
            check_children(report, records, definitions, events_of)
        commands: dict[str, list[CommandRecord]] = defaultdict(list)
        for command in store.commands(pending=False, limit=1 << 62):
            commands[command.saga_id].append(command)
            report.verbs[f"{command.verb} {command.state}"] += 1
        for saga_id, record in sorted(records.items()):
            definition = definitions.get((record.definition, record.version))
            events = timelines.pop(saga_id, None) or store.events(saga_id)
            _check_saga(report, view, record, events, ledger[saga_id], definition)
            _check_commands(report, view, saga_id, events, commands.pop(saga_id, []))
        for saga_id, orphans in sorted(commands.items()):
            _check_commands(report, view, saga_id, [], orphans)  # of sagas the store lacks

    if view.reactors or view.chains:
        check_chains(report, view)
    completed = report.statuses[COMPLETED] + report.chains[COMPLETED]
    if completed < min_completed:
        report.add(
            "progress",
            None,
            f"{completed} {'saga(s) or chain(s)' if report.chains else 'saga(s)'} completed, "
            f"fewer than {min_completed}: the run "
            "proves nothing (check the workload and the participants' setup)",
        )
    for invariant in invariants:
        name = getattr(invariant, "__name__", repr(invariant))
        complaints: list[str] = []
        try:
            result = invariant(view)
            if isinstance(result, str):  # one complaint, not a list of characters
                result = [result]
            complaints.extend(str(c) for c in result or ())
        except Exception as exc:
            complaints.append(f"the invariant itself raised {type(exc).__name__}: {exc}")
        for complaint in complaints:
            report.add("domain", None, f"{name}: {complaint}")
    return report


def _check_saga(
    report: Report,
    view: RunView,
    record: SagaRecord,
    events: list[EventRecord],
    rows: list[LedgerRow],
    definition: SagaDefinition | None,
) -> None:
    saga_id = record.saga_id
    add = report.add
    if not record.terminal:
        add("quiesce", saga_id, f"still {record.status} after the heal-and-quiesce phase")
    terminal = [e.kind for e in events if _is_terminal(e)]
    # Written once, and again only after an operator's verb took a parked saga up again.
    again, last = False, None
    for event in events:
        if event.kind == "operator" and (
            last == FAILED or (last == COMPLETED and event.detail.get("verb") == UNWIND)
        ):
            last = None
        elif _is_terminal(event):
            again, last = again or last is not None, event.kind
    if record.terminal and (again or last != record.status):
        add(
            "terminal-once",
            saga_id,
            f"stored as {record.status} but its terminal events are {terminal or 'none'}",
        )
    cap = view.policy.max_recovery_attempts
    if record.recovery_attempts > cap and record.status != FAILED:
        add(
            "restart-limit",
            saga_id,
            f"recovered {record.recovery_attempts} times without progress (cap {cap}) and is "
            f"{record.status}, not parked",
        )
    over = parked = False
    for event in events:
        if event.kind == "claimed" and event.detail.get("recovery_attempts", 0) > cap:
            over = True  # past the cap: the saga may only be parked from here on
        elif _is_terminal(event):
            parked = event.kind == FAILED
        elif event.kind == "operator" and parked:
            over = parked = False  # a person took it up again: its count starts afresh (I11)
        elif over and event.kind in ("intent", "compensation-intent"):
            add(
                "restart-limit",
                saga_id,
                f"took step {event.step} ({event.kind}) after {cap} recoveries without "
                "progress instead of parking",
            )
            break
    if definition is None:
        return  # a version this check was not given: its steps are unknown here

    intents: dict[tuple[int, str], float] = {}
    for event in events:
        kind = {"intent": "do", "compensation-intent": "undo"}.get(event.kind)
        if kind is not None and event.step is not None:
            intents.setdefault((event.step, kind), event.at)
    applied: dict[int, float] = {}
    undone: dict[int, float] = {}
    for row in rows:
        if row.outcome == "tombstone":
            continue  # a compensation that found nothing to undo left it; not an effect
        first = intents.get((row.step, row.kind))
        did = "applied" if row.kind == "do" else "compensated"
        what = f"{row.participant} {did} step {_name(definition, row.step)} ({row.outcome})"
        if (saga_id, row.step, row.kind) in view.by_hand:
            pass  # the driver did it by hand, before the verb that records it
        elif first is None:
            add(
                "write-ahead",
                saga_id,
                f"{what} but the saga recorded no intent for it",
            )
        elif row.at < first:
            add(
                "write-ahead",
                saga_id,
                f"{what} {first - row.at:.3f} s before the saga recorded its intent",
            )
        if row.kind == "do" and row.outcome == "applied":
            applied[row.step] = row.at
        elif row.kind == "undo" and row.outcome in ("applied", "noop"):
            undone[row.step] = row.at
    for step, at in applied.items():
        if step in undone and at > undone[step]:
            add(
                "forward-after-undo",
                saga_id,
                f"step {_name(definition, step)} applied after its compensation",
            )

    steps = range(len(definition.steps))
    reversible = {i for i in steps if definition.steps[i].compensation is not None}
    operated = (
        _operated(events)
        if any(e.kind in VERB_OF or e.kind == "operator" for e in events)
        else _NOTHING
    )
    skipped, resolved = set(operated.skipped), operated.resolved
    all_forward = set(applied) | skipped == set(steps) and not undone
    order = sorted(undone, key=lambda i: undone[i])
    graph = definition if isinstance(definition, WorkflowDefinition) else None
    early: list[tuple[int, int]] = []  # (step, its dependent) compensated the other way round
    if graph is not None:
        early = [
            (i, j)
            for i in undone
            for j in graph.dependents[i]
            if j in undone and undone[j] > undone[i]
        ]
        in_reverse = not early
        _check_graph(report, saga_id, events, applied, skipped, graph)
    else:
        in_reverse = order == sorted(undone, reverse=True)
    fully_undone = set(applied) - resolved <= set(undone) and in_reverse
    if record.status == COMPLETED and not all_forward:
        add(
            "completed",
            saga_id,
            f"completed, but applied {_names(definition, applied)} of {len(definition.steps)} "
            f"steps and compensated {_names(definition, undone)}",
        )
    elif record.status == COMPENSATED:
        # A skipped step is on the stack as if its intent had been recorded: compensated too.
        intended = ({step for step, kind in intents if kind == "do"} | skipped) & reversible
        missing = sorted(intended - set(undone) - resolved)
        if missing:
            add(
                "compensated",
                saga_id,
                f"compensated, but steps {_names(definition, missing)} had an intent and were "
                "never compensated",
            )
        left = sorted(set(applied) - set(undone) - resolved)
        if left and not missing:
            add("compensated", saga_id, f"compensated, but {_names(definition, left)} stay applied")
        if early:
            i, j = early[0]
            add(
                "compensated",
                saga_id,
                f"step {_name(definition, i)} was compensated before step "
                f"{_name(definition, j)}, which depends on it (order {_names(definition, order)})",
            )
        elif not in_reverse:
            add(
                "compensated",
                saga_id,
                f"compensations ran in the order {_names(definition, order)}, not in reverse",
            )
    elif record.status == FAILED and not (all_forward or fully_undone):
        entries = _outstanding(record)
        outstanding = " ".join(entries)
        unresolved = [i for i in steps if i in applied and i not in undone and i not in resolved]
        unfinished = [i for i in steps if i not in applied and i not in skipped]

        def named(indexes: list[int]) -> bool:
            return bool(indexes) and all(
                repr(definition.steps[i].name) in outstanding for i in indexes
            )

        # Parked going forward (nothing undone, only steps to finish listed): it must list
        # the steps left to finish. Otherwise it must list every step still applied.
        forward = (
            not undone
            and all(entry.startswith("finish") for entry in entries)
            and named(unfinished)
        )
        if not outstanding or not (forward or named(unresolved)):
            add(
                "needs-attention",
                saga_id,
                f"failed with {_names(definition, unresolved)} applied and not compensated, but "
                f"lists as outstanding only: {outstanding or 'nothing'}",
            )
    if operated is not _NOTHING or any(e.kind == "debt" for e in events):
        _check_operated(report, record, events, definition, operated, reversible)


def _check_graph(
    report: Report,
    saga_id: str,
    events: list[EventRecord],
    applied: dict[int, float],
    skipped: set[int],
    graph: WorkflowDefinition,
) -> None:
    """[graph-order]: a workflow's step was sent only once every step it depends on was done
    (its timeline), and applied only where they were (the ledgers)."""
    done: set[int] = set(skipped)
    for event in events:
        if event.step is None:
            continue
        if event.kind in ("done", "skipped"):
            done.add(event.step)
        elif event.kind == "intent" and not event.detail.get("resent"):
            waiting = [d for d in graph.dependencies[event.step] if d not in done]
            if waiting:
                report.add(
                    "graph-order",
                    saga_id,
                    f"step {_name(graph, event.step)} was sent before "
                    f"{_names(graph, waiting)}, which it depends on, was done",
                )
                return
    for step in applied:
        missing = [d for d in graph.dependencies[step] if d not in applied and d not in skipped]
        if missing:
            report.add(
                "graph-order",
                saga_id,
                f"step {_name(graph, step)} applied, but {_names(graph, missing)}, which it "
                "depends on, never did",
            )
            return


def _outstanding(record: SagaRecord) -> list[str]:
    state = _state(record)
    if state is None:
        return ["everything (the snapshot cannot be read)"]
    return list(state.get("outstanding") or ())


def _state(record: SagaRecord) -> dict[str, Any] | None:
    """The saga's stored state (its snapshot), or None when it cannot be read."""
    try:
        state: Any = codec.decode(record.snapshot or b"\xc0")
    except CorruptRecord:
        return None
    return state if isinstance(state, dict) else {}


def _is_terminal(event: EventRecord) -> bool:
    # A step's compensation event is also called "compensated": terminal events have no step.
    return event.kind in TERMINAL_STATUSES and event.step is None


@attrs.frozen
class _Operated:
    """What operators' verbs did to a saga, read from its timeline: the steps skipped (with the
    result given, as the skip's ``operator`` event holds it) and the compensations a person did
    by hand (``resolved``, ``debt-settled``)."""

    skipped: dict[int, Any]
    resolved: frozenset[int]
    #: Events only a verb writes whose latest ``operator`` event is not of that verb.
    unexplained: tuple[EventRecord, ...]


_NOTHING = _Operated({}, frozenset(), ())


def _operated(events: list[EventRecord]) -> _Operated:
    skipped: dict[int, Any] = {}
    resolved: set[int] = set()
    unexplained: list[EventRecord] = []
    verb: dict[str, Any] = {}  # the latest operator event's detail
    for event in events:
        if event.kind == "operator":
            verb = event.detail
        elif event.kind in VERB_OF and event.step is not None:
            if verb.get("verb") != VERB_OF[event.kind]:
                unexplained.append(event)
            elif event.kind == "skipped":
                skipped[event.step] = verb.get("result")
            elif event.kind in ("resolved", "debt-settled"):
                resolved.add(event.step)
    return _Operated(skipped, frozenset(resolved), tuple(unexplained))


def _check_operated(
    report: Report,
    record: SagaRecord,
    events: list[EventRecord],
    definition: SagaDefinition,
    operated: _Operated,
    reversible: set[int],
) -> None:
    """The rules of operators' verbs and compensation debt ([debt], [cancel], [skipped],
    [paused]), for a saga whose timeline has any."""
    saga_id, add = record.saga_id, report.add
    state = _state(record) or {}
    on_stack = _on_stack(state)
    for event in operated.unexplained:
        add(
            "skipped",
            saga_id,
            f"{event.kind} step {_name(definition, event.step or 0)} without an applied "
            f"{VERB_OF[event.kind]} before it",
        )
    results = state.get("results") or {}
    if state.get("stopped_in") != "overflow":  # an overflowed saga dropped its results
        for step, given in operated.skipped.items():
            name = definition.steps[step].name if 0 <= step < len(definition.steps) else "?"
            if results.get(name) != given:
                add(
                    "skipped",
                    saga_id,
                    f"step {name!r} was skipped with the result {given!r}, but the saga holds "
                    f"{results.get(name)!r}",
                )
    owed = _debt(report, saga_id, events, definition)
    listed = {entry[0] for entry in state.get("debt") or () if isinstance(entry, list) and entry}
    for step in sorted(owed.keys() - listed - on_stack):
        add(
            "debt",
            saga_id,
            f"step {_name(definition, step)} became debt and was neither paid nor settled, yet "
            "the saga no longer owes it: dropped",
        )
    for step in sorted(listed - {s for s, how in owed.items() if how == "owed"}):
        add("debt", saga_id, f"the saga owes step {_name(definition, step)} with no debt event")
    if record.status == COMPENSATED and (owed or listed):
        add(
            "debt",
            saga_id,
            f"compensated, yet it owes {_names(definition, sorted(owed.keys() | listed))}",
        )
    _check_cancels(report, saga_id, events, definition, operated, reversible, owed, on_stack)
    _check_pauses(report, saga_id, events, definition)


def _on_stack(state: dict[str, Any]) -> set[int]:
    """The steps a saga still has to compensate, owed apart: a saga's stack, a workflow's
    started steps neither compensated nor owed."""
    track = state.get("track")
    if not isinstance(track, list):
        return set(state.get("stack") or ())
    return {
        i
        for i in state.get("started") or ()
        if isinstance(i, int)
        and 0 <= i < len(track)
        and isinstance(track[i], list)
        and track[i][0] not in ("undone", "skipped", "owed")
    }


def _debt(
    report: Report, saga_id: str, events: list[EventRecord], definition: SagaDefinition
) -> dict[int, str]:
    """The steps a saga still owes by its timeline: ``owed`` (a ``debt`` event, not settled)
    or ``retrying`` (taken up again by a retry, not paid yet: back on the stack)."""
    owed: dict[int, str] = {}
    for event in events:
        step = event.step
        if step is None:
            continue
        if event.kind == "debt":
            owed[step] = "owed"
        elif event.kind in ("debt-retried", "debt-settled"):
            if owed.get(step) != "owed":
                report.add(
                    "debt",
                    saga_id,
                    f"{event.kind} step {_name(definition, step)}, which it did not owe",
                )
            if event.kind == "debt-retried":
                owed[step] = "retrying"
            else:
                owed.pop(step, None)
        elif event.kind in ("compensated", "resolved") and owed.get(step) == "retrying":
            del owed[step]  # paid at last
    return owed


def _check_cancels(
    report: Report,
    saga_id: str,
    events: list[EventRecord],
    definition: SagaDefinition,
    operated: _Operated,
    reversible: set[int],
    owed: dict[int, str],
    on_stack: set[int],
) -> None:
    for index, event in enumerate(events):
        if event.kind != "operator" or event.detail.get("verb") not in ("cancel", UNWIND):
            continue
        before, after = events[:index], events[index + 1 :]
        ran = {e.step for e in before if e.kind in ("intent", "skipped")}
        forward = [e for e in after if e.kind == "intent"]
        if forward:
            report.add(
                "cancel",
                saga_id,
                f"went forward (intent of step {_name(definition, forward[0].step or 0)}) after "
                f"it was cancelled by {event.detail.get('who')}",
            )
        done = {
            e.step
            for e in after
            if e.kind in ("compensated", "resolved", "debt", "compensation-skipped")
        }
        skipped = sorted(
            step
            for step in ran
            if step is not None and step in reversible and step not in done | owed.keys() | on_stack
        )
        if skipped:
            report.add(
                "cancel",
                saga_id,
                f"cancelled by {event.detail.get('who')}, but steps {_names(definition, skipped)} "
                "had run and were never compensated, resolved or owed",
            )


def _check_pauses(
    report: Report, saga_id: str, events: list[EventRecord], definition: SagaDefinition
) -> None:
    paused: EventRecord | None = None
    for event in events:
        if event.kind == "operator" and event.detail.get("verb") == "pause":
            paused = event
        elif _is_terminal(event) or (
            event.kind == "operator" and event.detail.get("verb") in UNPAUSING
        ):
            paused = None
        elif paused is not None and event.kind in ("intent", "compensation-intent"):
            report.add(
                "paused",
                saga_id,
                f"sent {event.kind} of step {_name(definition, event.step or 0)} while paused "
                f"by {paused.detail.get('who')} (command {paused.detail.get('command')})",
            )
            return


def _check_commands(
    report: Report,
    view: RunView,
    saga_id: str,
    events: list[EventRecord],
    commands: list[CommandRecord],
) -> None:
    """[verb-once]: each command in exactly one state, recorded in the timeline that often."""
    applied: Counter[Any] = Counter()
    refused: Counter[Any] = Counter()
    for event in events:
        if event.kind == "operator":
            applied[event.detail.get("command")] += 1
        elif event.kind == "operator-refused":
            refused[event.detail.get("command")] += 1
    # A refusal of a command for a saga the store lacks has no timeline to be recorded in.
    wanted = {APPLIED: (1, 0), REFUSED: (0, 1 if events else 0), PENDING: (0, 0)}
    for command in commands:
        seen = (applied[command.id], refused[command.id])
        what = f"command {command.id} ({command.verb} by {command.who})"
        if seen != wanted.get(command.state):
            report.add(
                "verb-once",
                saga_id,
                f"{what} is {command.state}, but the timeline has {seen[0]} operator event(s) "
                f"and {seen[1]} refusal(s) of it",
            )
        elif command.state == PENDING and view.commands_settled:
            report.add(
                "verb-once",
                saga_id,
                f"{what} is still pending, though a runtime ran after it was stored: lost",
            )
    known = {c.id for c in commands}
    for number in sorted((set(applied) | set(refused)) - known, key=str):
        report.add(
            "verb-once",
            saga_id,
            f"the timeline records command {number}, which the store does not hold for this saga",
        )


def _name(definition: SagaDefinition, step: int) -> str:
    return repr(definition.steps[step].name) if 0 <= step < len(definition.steps) else f"#{step}"


def _names(definition: SagaDefinition, steps: Iterable[int]) -> str:
    names = [_name(definition, i) for i in steps]
    return "[" + ", ".join(names) + "]"
