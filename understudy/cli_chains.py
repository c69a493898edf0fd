"""``understudy list`` and ``understudy show`` for choreographed chains: printed after the
sagas by ``list``, and by ``show`` for an id that names a chain rather than a saga. What a chain
is and its status are :mod:`understudy.chains`'; this module only prints them, in the style of
:mod:`understudy.cli`.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from understudy import chains
from understudy.diagnosis import iso as _iso
from understudy.persistence.base import SagaStore

REASON_WIDTH = 60


def _shorten(text: str | None, width: int = REASON_WIDTH) -> str:
    """``text`` on one line, cut to ``width`` characters; ``-`` when empty."""
    if not text:
        return "-"
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 3] + "..."


def _json_default(value: Any) -> str:
    return value.hex() if isinstance(value, bytes) else repr(value)


def _short(event_id: str | None) -> str:
    return "-" if not event_id else event_id[:12]


def cmd_list_chains(store: SagaStore, status: str | None, limit: int) -> int:
    """Print the choreographed chains (newest first) after the sagas: counts by status, one
    line each, and what the unfinished ones wait on. Prints nothing when there are none."""
    listed = chains.list_chains(store, None, limit)
    if not listed:
        return 0
    counts: dict[str, int] = {}
    for chain in listed:
        counts[chain.status] = counts.get(chain.status, 0) + 1
    summary = ", ".join(f"{counts[s]} {s}" for s in chains.CHAIN_STATUSES if s in counts)
    print()
    print(f"{len(listed)} chain(s) of events (choreography, newest {limit} read): {summary}")
    shown = [c for c in listed if status is None or c.status == status]
    if not shown:
        print(f"no chains with status {status}")
        return 0
    rows = [
        (
            c.correlation_id,
            c.status,
            f"{c.events[0].topic} by {c.events[0].source or '(code)'}",
            _iso(c.started_at),
            _iso(c.last_at),
            f"{len(c.events)} events",
            f"{len(c.pending)} pending" if c.pending else _shorten("; ".join(c.outstanding)),
        )
        for c in shown
    ]
    header = ("ID", "STATUS", "FIRST EVENT", "STARTED", "LAST", "EVENTS", "WAITING / OUTSTANDING")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        print("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]))
    waiting = [c for c in shown if c.pending]
    if waiting:
        print()
        print(f"what the {len(waiting)} running chain(s) listed wait on:")
        for chain in waiting:
            for event, delivery in chain.pending:
                print(
                    f"  {chain.correlation_id}: {delivery.subscriber} has not applied "
                    f"{event.topic} ({_short(event.event_id)}, published {_iso(event.at)})"
                )
    return 0


def cmd_show_chain(chain: chains.Chain, as_json: bool) -> int:
    """Print a choreographed chain: its status, what is pending or outstanding, then every
    event with who reacted to it and how, and the failures with what compensated them."""
    if as_json:
        out = attrs.asdict(chain)
        out["pending"] = [[e.event_id, d.subscriber] for e, d in chain.pending]
        print(json.dumps(out, indent=2, default=_json_default, ensure_ascii=False))
        return 0
    print(f"chain {chain.correlation_id}")
    print(f"  status: {chain.status}")
    print(f"  started: {_iso(chain.started_at)}  last: {_iso(chain.last_at)}")
    reactions = [d for e in chain.events for d in e.deliveries]
    tally = ", ".join(
        f"{sum(d.outcome == o for d in reactions)} {o}"
        for o in ("applied", "rejected", "failed", chains.PENDING)
    )
    print(f"  events: {len(chain.events)}; reactions: {len(reactions)} ({tally})")
    if chain.pending:
        print("  pending (published, not applied by the subscriber yet):")
        for event, delivery in chain.pending:
            print(f"    - {event.topic} ({_short(event.event_id)}) -> {delivery.subscriber}")
    if chain.outstanding:
        print("  outstanding (left for a person to do):")
        for item in chain.outstanding:
            print(f"    - {item}")
    print(f"timeline ({len(chain.events)} events):")
    start = chain.started_at
    for event in chain.events:
        kind = "FAILURE " if event.kind == "failure" else ""
        cells = [
            _iso(event.at, "milliseconds"),
            f"+{(event.at - start) * 1000:.1f} ms".rjust(12),
            f"{kind}{event.topic}".ljust(24),
            f"by {event.source or '(code)'}",
            f"id {_short(event.event_id)}",
            f"cause {_short(event.causation_id)}" if event.causation_id else "",
            "(compensation)" if event.compensating else "",
            f"DAMAGED: {event.damaged}" if event.damaged else "",
        ]
        print("  " + "  ".join(c for c in cells if c))
        if not event.deliveries:
            print("      (no subscriber)")
        for d in event.deliveries:
            made = [chain.event(i) for i in d.published]
            then = ", ".join(f"{m.topic} ({_short(m.event_id)})" for m in made if m is not None)
            cells = [
                f"-> {d.subscriber}".ljust(18),
                d.outcome.ljust(8),
                f"+{(d.at - start) * 1000:.1f} ms" if d.at is not None else "",
                f"reason: {_shorten(d.reason)}" if d.reason else "",
                f"published {then}" if then else "",
                f"DAMAGED: {d.damaged}" if d.damaged else "",
            ]
            print("      " + "  ".join(c for c in cells if c))
    failures = chain.failures
    print(f"failures: {len(failures)}")
    for event, d in failures:
        handled = [
            f"{r.subscriber} {r.outcome}"
            for i in d.published
            if (f := chain.event(i)) is not None
            for r in f.deliveries
        ]
        print(
            f"  {d.subscriber} {d.outcome} {event.topic}: {_shorten(d.reason)}; compensated "
            f"by: {', '.join(handled) or 'nobody'}"
        )
    return 0
