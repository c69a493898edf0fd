"""The checker's rules for choreographed chains, judged from the run's files alone: the store's
event log (events, acknowledgements, subscriptions) and each reactor's database (its ledger and
its outbox), read after the run healed and went quiet.

:func:`check_chains` is called by :func:`understudy.testing.checker.check` (whose docstring
lists the rules) when the run had reactors or started chains. Each violation is reported
against ``chain <correlation id>`` and names the event (topic and id) it is about.

How the files fit together, which is what the rules hold them to: a reaction's effects, its
ledger row (key ``<event id>@<reactor>``) and its outbox rows (the events it published and its
acknowledgement) commit in one transaction of the reactor's database; the relay appends those
events and the acknowledgement to the store in one store transaction, then marks the rows
relayed. So after a quiet end every (reactor, event) has one ledger row and one
acknowledgement that agree, every event a reactor published is named by the acknowledgement
that committed with it and is in its outbox, and nothing is left unrelayed.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections import defaultdict
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from understudy import codec
from understudy.chains import PENDING, Chain, build_chain
from understudy.errors import CorruptRecord
from understudy.persistence import POSTGRES_SCHEMES, open_store
from understudy.persistence.base import (
    APPLIED,
    COMPENSATED,
    COMPLETED,
    AckRecord,
    PublishedEvent,
    SagaStore,
)

if TYPE_CHECKING:
    from understudy.testing.checker import Report, RunView

#: Every chain in the log (list_chains takes a bound).
_ALL = 1 << 62
#: A reaction's ledger outcome by its acknowledgement's: a refusal and a final failure are both
#: recorded as refused (the reactor's ``_failed``).
_LEDGER_OUTCOME = {APPLIED: "applied"}
_REFUSED = "rejected"
_LEDGER = "SELECT key, outcome FROM understudy_ledger"
_OUTBOX = "SELECT source, kind, event_id, relayed, body FROM understudy_outbox ORDER BY id"


@attrs.frozen
class OutboxRow:
    """One row of a reactor's outbox: an event it published, or an acknowledgement."""

    reactor: str
    kind: str  # "event" or "ack"
    event_id: str
    relayed: bool
    correlation_id: str
    topic: str  # the event's topic; "" for an acknowledgement


@attrs.frozen
class Reactors:
    """What the reactors' databases hold: (reactor, event id) -> ledger outcome, and their
    outbox rows."""

    ledger: dict[tuple[str, str], str]
    outbox: list[OutboxRow]


@attrs.frozen
class Log:
    """What the store's event log holds, chain by chain."""

    chains: dict[str, Chain]
    events: dict[str, PublishedEvent]  # event id -> event
    acks: dict[tuple[str, str], AckRecord]  # (subscriber, event id) -> acknowledgement


def check_chains(report: Report, view: RunView) -> None:
    """Add every chain rule's violations to ``report``, and the chains' figures."""
    with closing(open_store(view.store, read_only=True)) as store:
        log = read_log(store)
    reactors = read_reactors(view)
    report.chains.update(chain.status for chain in log.chains.values())
    report.events += len(log.events)
    report.reactions += len(log.acks)
    _check_starts(report, view, log)
    for chain in log.chains.values():
        _check_chain(report, chain)
    _check_ledgers(report, view, log, reactors)
    _check_causes(report, log)
    _check_outboxes(report, view, log, reactors)


def read_log(store: SagaStore) -> Log:
    """Every chain of the store's log, with its events and acknowledgements."""
    subscriptions = store.subscriptions()
    chains: dict[str, Chain] = {}
    events: dict[str, PublishedEvent] = {}
    acks: dict[tuple[str, str], AckRecord] = {}
    for head in store.list_chains(_ALL):
        # Acknowledgements first, as understudy.chains reads them (the store is quiet here
        # anyway: the run is over).
        chain_acks = store.chain_acks(head.correlation_id)
        chain_events = store.chain_events(head.correlation_id)
        chains[head.correlation_id] = build_chain(
            head.correlation_id, chain_events, chain_acks, subscriptions
        )
        events.update((e.event_id, e) for e in chain_events)
        acks.update(((a.subscriber, a.event_id), a) for a in chain_acks)
    return Log(chains, events, acks)


def read_reactors(view: RunView) -> Reactors:
    """The ledgers and outboxes of the run's reactors (each database read once, read-only)."""
    ledger: dict[tuple[str, str], str] = {}
    outbox: list[OutboxRow] = []
    for name, location in view.reactors.items():
        suffix = f"@{name}"
        for key, outcome in _rows(view, name, location, _LEDGER):
            if str(key).endswith(suffix):
                ledger[(name, str(key)[: -len(suffix)])] = str(outcome)
        for source, kind, event_id, relayed, body in _rows(view, name, location, _OUTBOX):
            if source != name:
                continue  # another reactor's rows, in a database they share
            value = _decoded(body)
            outbox.append(
                OutboxRow(
                    name,
                    str(kind),
                    str(event_id),
                    bool(relayed),
                    str(value.get("correlation_id", "?")),
                    str(value.get("topic", "")),
                )
            )
    return Reactors(ledger, outbox)


def _rows(view: RunView, name: str, location: Path | str, query: str) -> list[Any]:
    """``query``'s rows in a reactor's database; none when the table (or a SQLite file) is not
    there (the reactor never started)."""
    if os.fspath(location).startswith(POSTGRES_SCHEMES):
        import psycopg  # the postgres extra: only PostgreSQL databases need it

        with closing(view.connect(name)) as db:
            try:
                return list(db.execute(query).fetchall())
            except psycopg.errors.UndefinedTable:
                return []
    if not Path(location).exists():
        return []
    with closing(sqlite3.connect(f"file:{location}?mode=ro", uri=True)) as db:
        try:
            return db.execute(query).fetchall()
        except sqlite3.OperationalError:
            return []


def _decoded(body: Any) -> dict[str, Any]:
    with contextlib.suppress(CorruptRecord, TypeError):
        value = codec.decode(bytes(body), "outbox row")
        if isinstance(value, dict):
            return value
    return {}


def _event(event: PublishedEvent | None, event_id: str) -> str:
    return f"{event.topic} ({event_id})" if event is not None else f"event {event_id}"


def _chain(correlation_id: str) -> str:
    return f"chain {correlation_id}"


# --- the rules ----------------------------------------------------------------------------------


def _check_starts(report: Report, view: RunView, log: Log) -> None:
    """[chain-lost] and [unknown-chain]."""
    starts = {s.correlation_id: s for s in view.chains}
    for correlation_id in sorted(view.published):
        start = starts.get(correlation_id)
        if start is not None and start.first_event not in log.events:
            report.add(
                "chain-lost",
                _chain(correlation_id),
                f"its first event {start.topic} ({start.first_event}) was published (the "
                "store's commit returned) but the log does not hold it",
            )
    for correlation_id, chain in sorted(log.chains.items()):
        if correlation_id not in starts:
            first = chain.events[0] if chain.events else None
            report.add(
                "unknown-chain",
                _chain(correlation_id),
                "the log holds a chain the workload never started"
                + (f", from {_event_text(first.topic, first.event_id)}" if first else ""),
            )


def _event_text(topic: str, event_id: str) -> str:
    return f"{topic} ({event_id})"


def _check_chain(report: Report, chain: Chain) -> None:
    """[chain-pending] and [chain-consistent]."""
    where = _chain(chain.correlation_id)
    for event, delivery in chain.pending:
        report.add(
            "chain-pending",
            where,
            f"{delivery.subscriber} never acknowledged {_event_text(event.topic, event.event_id)}"
            ", to which it subscribed: not delivered, or delivered and never applied",
        )
    if chain.status not in (COMPLETED, COMPENSATED) and not chain.pending:
        report.add(
            "chain-consistent",
            where,
            f"ended {chain.status}: " + ("; ".join(chain.outstanding) or "nothing listed"),
        )


def _check_ledgers(report: Report, view: RunView, log: Log, reactors: Reactors) -> None:
    """[chain-once]: each acknowledgement and its reactor's ledger row agree, one to one."""
    for (subscriber, event_id), ack in sorted(log.acks.items()):
        event = log.events.get(event_id)
        where = _chain(ack.correlation_id)
        if event is None:
            report.add(
                "chain-once",
                where,
                f"{subscriber} acknowledged {_event(None, event_id)}, which the log does not hold",
            )
        if subscriber not in view.reactors:
            continue  # a subscriber this run has no database of (not one of its reactors)
        recorded = reactors.ledger.get((subscriber, event_id))
        wanted = _LEDGER_OUTCOME.get(ack.outcome, _REFUSED)
        if recorded is None:
            report.add(
                "chain-once",
                where,
                f"{subscriber} acknowledged {_event(event, event_id)} as {ack.outcome}, but its "
                "ledger holds no reaction to it: acknowledged without being applied",
            )
        elif recorded != wanted:
            report.add(
                "chain-once",
                where,
                f"{subscriber} acknowledged {_event(event, event_id)} as {ack.outcome}, but its "
                f"ledger recorded the reaction as {recorded}",
            )
    for (reactor, event_id), outcome in sorted(reactors.ledger.items()):
        event = log.events.get(event_id)
        if event is None:
            report.add(
                "chain-once",
                None,
                f"{reactor}'s ledger holds a reaction ({outcome}) to event {event_id}, which "
                "the log does not hold",
            )
        elif (reactor, event_id) not in log.acks:
            report.add(
                "chain-once",
                _chain(event.correlation_id),
                f"{reactor} applied {_event(event, event_id)} ({outcome}) but the store has no "
                "acknowledgement of it: the relay never happened",
            )


def _check_causes(report: Report, log: Log) -> None:
    """[chain-caused]: every event a reactor published is named by the acknowledgement its
    reaction committed with, and every event an acknowledgement names is in the log."""
    for event_id, event in log.events.items():
        if not event.source:
            continue  # published from plain code (a chain's start)
        where = _chain(event.correlation_id)
        cause = log.events.get(event.causation_id or "")
        ack = log.acks.get((event.source, event.causation_id or ""))
        if ack is None:
            report.add(
                "chain-caused",
                where,
                f"{_event(event, event_id)} was published by {event.source} reacting to "
                f"{_event(cause, event.causation_id or '?')}, which {event.source} never "
                "acknowledged: published by a reaction that did not commit",
            )
        elif event_id not in ack.published:
            report.add(
                "chain-caused",
                where,
                f"{_event(event, event_id)} was published by {event.source} reacting to "
                f"{_event(cause, ack.event_id)}, but the reaction that committed published "
                f"{list(ack.published) or 'nothing'}: a reaction that ran again, or rolled back",
            )
    for (subscriber, event_id), ack in sorted(log.acks.items()):
        for published in ack.published:
            if published not in log.events:
                report.add(
                    "chain-caused",
                    _chain(ack.correlation_id),
                    f"{subscriber}'s reaction to {_event(log.events.get(event_id), event_id)} "
                    f"published event {published}, which the log does not hold: lost on its "
                    "way from the outbox",
                )


def _check_outboxes(report: Report, view: RunView, log: Log, reactors: Reactors) -> None:
    """[chain-outbox]: nothing left unrelayed; what is marked relayed is in the store; every
    event a reactor published went through its outbox."""
    stored: dict[str, set[str]] = defaultdict(set)
    for row in reactors.outbox:
        where = _chain(row.correlation_id)
        what = (
            _event_text(row.topic, row.event_id)
            if row.kind == "event"
            else f"its acknowledgement of {_event(log.events.get(row.event_id), row.event_id)}"
        )
        if row.kind == "event":
            stored[row.reactor].add(row.event_id)
        if not row.relayed:
            report.add(
                "chain-outbox",
                where,
                f"{row.reactor}'s outbox still holds {what} unrelayed after the run went quiet",
            )
            continue
        there = (
            row.event_id in log.events
            if row.kind == "event"
            else (row.reactor, row.event_id) in log.acks
        )
        if not there:
            report.add(
                "chain-outbox",
                where,
                f"{row.reactor}'s outbox marks {what} relayed, but the store does not hold it",
            )
    for event_id, event in log.events.items():
        if event.source in view.reactors and event_id not in stored[event.source]:
            report.add(
                "chain-outbox",
                _chain(event.correlation_id),
                f"{_event(event, event_id)} was published by {event.source}, but its outbox "
                "never held it: published outside its reaction's transaction",
            )


def pending_deliveries(chain: Chain) -> Iterator[str]:
    """What a chain still waits on, one line each (for a runner's diagnosis)."""
    for event, delivery in chain.pending:
        if delivery.outcome == PENDING:
            yield f"{delivery.subscriber} has not applied {event.topic} ({event.event_id})"
