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
  forward effect applied, and compensated in reverse order;
- [forward-after-undo] no forward effect was applied after its compensation;
- [needs-attention] a failed saga whose effects are neither all forward nor fully compensated
  lists what is unresolved;
- [restart-limit] a saga recovered more often than the restart policy's persisted cap
  (without progress) takes no further step and ends parked as failed;
- [recovery] (added by the runner) every saga was terminal within the recovery bound after
  the heal;
- [progress] at least ``min_completed`` sagas completed: a run where nothing worked proves
  nothing;
- [domain] every user invariant returned no complaint.

Idempotency keys are the ledger's primary key, so "at most one effect per key" holds in the
ledger by construction; whether the participant's own tables agree is a domain invariant (the
demo checks no double charge and that stock and money are conserved).
"""

from __future__ import annotations

import os
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from understudy import codec
from understudy.definitions import SagaDefinition
from understudy.errors import CorruptRecord, LedgerError
from understudy.persistence import POSTGRES_SCHEMES, open_store, redact, secrets_in
from understudy.persistence.base import (
    COMPENSATED,
    COMPLETED,
    FAILED,
    TERMINAL_STATUSES,
    EventRecord,
    SagaRecord,
)
from understudy.supervisors.policy import RestartPolicy

if TYPE_CHECKING:
    import psycopg

SHOWN = 20  # violations printed per rule
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
class RunView:
    """Where a run's data is, and what its driver knows for sure (what it submitted and which
    starts were acknowledged). Domain invariants receive it too."""

    directory: Path
    store: Path | str  # the saga store: a SQLite file, or a PostgreSQL URL
    #: Participant name -> its ledger database: a SQLite file (a path), or a PostgreSQL URL (a
    #: str, as the participant's ``database`` option names it; see :func:`ledger_location`).
    ledgers: Mapping[str, Path | str]
    definitions: tuple[SagaDefinition, ...]
    submitted: tuple[SagaStart, ...]  # the workload, whether acknowledged or not
    acknowledged: frozenset[str]
    policy: RestartPolicy = attrs.field(factory=RestartPolicy)

    def records(self) -> dict[str, SagaRecord]:
        with closing(open_store(self.store, read_only=True)) as store:
            return {r.saga_id: r for r in store.list_sagas(limit=1 << 62)}

    def connect(self, participant: str) -> Any:
        """A plain DB-API connection to ``participant``'s database, for domain invariants: a
        :class:`sqlite3.Connection` for a SQLite file (as ``sqlite3.connect(path)`` opens it),
        or a read-only :class:`psycopg.Connection` for a PostgreSQL database (every transaction
        ``BEGIN READ ONLY``; ``%s`` placeholders; ``with`` closes it). Connecting to PostgreSQL
        raises :class:`~understudy.errors.LedgerError`, without credentials, when it fails."""
        location = self.ledgers[participant]
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
    #: Participants whose ledger is in PostgreSQL -> that database, without credentials: a
    #: failing run's databases are kept, and the report names them.
    databases: dict[str, str] = attrs.field(factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    def add(self, rule: str, saga_id: str | None, detail: str) -> None:
        self.violations.append(Violation(rule, saga_id, detail))

    def summary(self) -> str:
        statuses = ", ".join(f"{s} {n}" for s, n in sorted(self.statuses.items()))
        return f"{self.sagas} sagas ({statuses or 'none'}), {self.effects} ledger rows"

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
    definitions = {d.key: d for d in view.definitions}
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
        for saga_id, record in sorted(records.items()):
            definition = definitions.get((record.definition, record.version))
            _check_saga(report, view, record, store.events(saga_id), ledger[saga_id], definition)

    completed = report.statuses[COMPLETED]
    if completed < min_completed:
        report.add(
            "progress",
            None,
            f"{completed} saga(s) completed, fewer than {min_completed}: the run proves nothing "
            "(check the workload and the participants' setup)",
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
    # A step's compensation event is also called "compensated": terminal events have no step.
    terminal = [e.kind for e in events if e.kind in TERMINAL_STATUSES and e.step is None]
    if record.terminal and terminal != [record.status]:
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
    over = False
    for event in events:
        if event.kind == "claimed" and event.detail.get("recovery_attempts", 0) > cap:
            over = True  # past the cap: the saga may only be parked from here on
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
        if first is None:
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
    all_forward = set(applied) == set(steps) and not undone
    order = sorted(undone, key=lambda i: undone[i])
    in_reverse = order == sorted(undone, reverse=True)
    fully_undone = set(applied) <= set(undone) and in_reverse
    if record.status == COMPLETED and not all_forward:
        add(
            "completed",
            saga_id,
            f"completed, but applied {_names(definition, applied)} of {len(definition.steps)} "
            f"steps and compensated {_names(definition, undone)}",
        )
    elif record.status == COMPENSATED:
        intended = {step for step, kind in intents if kind == "do"} & reversible
        missing = sorted(intended - set(undone))
        if missing:
            add(
                "compensated",
                saga_id,
                f"compensated, but steps {_names(definition, missing)} had an intent and were "
                "never compensated",
            )
        left = sorted(set(applied) - set(undone))
        if left and not missing:
            add("compensated", saga_id, f"compensated, but {_names(definition, left)} stay applied")
        if not in_reverse:
            add(
                "compensated",
                saga_id,
                f"compensations ran in the order {_names(definition, order)}, not in reverse",
            )
    elif record.status == FAILED and not (all_forward or fully_undone):
        entries = _outstanding(record)
        outstanding = " ".join(entries)
        unresolved = [i for i in steps if i in applied and i not in undone]
        unfinished = [i for i in steps if i not in applied]

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


def _outstanding(record: SagaRecord) -> list[str]:
    try:
        state: Any = codec.decode(record.snapshot or b"\xc0")
    except CorruptRecord:
        return ["everything (the snapshot cannot be read)"]
    return list(state.get("outstanding") or ()) if isinstance(state, dict) else []


def _name(definition: SagaDefinition, step: int) -> str:
    return repr(definition.steps[step].name) if 0 <= step < len(definition.steps) else f"#{step}"


def _names(definition: SagaDefinition, steps: Iterable[int]) -> str:
    names = [_name(definition, i) for i in steps]
    return "[" + ", ".join(names) + "]"
