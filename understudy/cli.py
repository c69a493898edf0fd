"""The ``understudy`` command: read a saga store and print what happened.

``understudy list STORE`` prints counts by status, one line per saga, newest first, and what
each unfinished saga waits on (``--stuck``: only those past their expected time);
``understudy show STORE SAGA_ID`` prints a saga's row, what it waits on and its timeline
(``--json`` for machines, ``--html FILE`` for a swimlane picture of it); ``understudy serve
STORE`` shows the same pictures in a browser, read-only, on loopback; ``understudy
check-inflight STORE --definitions MODULE:ATTR`` says whether every in-flight saga would run
under the definitions of the code about to be deployed. The operators' verbs (``understudy
cancel STORE SAGA_ID --why ...`` and the others) and ``understudy debt`` are in
:mod:`understudy.cli_verbs`. STORE is the path of a SQLite saga store or a postgresql:// URL;
it is never created here. The answers come from :mod:`understudy.diagnosis`; this module only
prints them. Exit status: 0 on success, 1 for an unknown saga id, a store error or in-flight
sagas that would not run as they are, 2 for a usage error, a missing store or
``--definitions`` that name no definitions. ``understudy complete DATABASE HANDLE`` finishes a
step a participant left waiting (:mod:`understudy.cli_complete`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import attrs

from understudy import chains, cli_chains, cli_complete, cli_verbs, codec, diagnosis, timeline
from understudy.definitions import SagaDefinition
from understudy.diagnosis import iso as _iso
from understudy.errors import CorruptRecord, UnderstudyError
from understudy.operate import debts
from understudy.persistence import open_store, redact
from understudy.persistence.base import (
    ACTIVE_STATUSES,
    ALL_STATUSES,
    FAILED,
    EventRecord,
    SagaRecord,
    SagaStore,
)

DESCRIPTION = (
    "Read an understudy saga store (list sagas and what the unfinished ones wait on, show one "
    "saga's timeline, check in-flight sagas against new definitions before a deploy), or run a "
    "chaos campaign against a saga scenario."
)
REASON_WIDTH = 60
#: Detail keys of a forward intent already shown in its step label.
#: Intent details printed in their own cell ("participant.action") or already in the label.
_SHOWN_KEYS = frozenset({"participant", "action", "name"})
#: Events that answer an intent (forward or compensation) for one step.
_OUTCOMES = frozenset({"done", "compensated", "rejected", "failed", "timeout"})


def _shorten(text: str | None, width: int = REASON_WIDTH) -> str:
    """``text`` on one line, cut to ``width`` characters; ``-`` when empty."""
    if not text:
        return "-"
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 3] + "..."


def _json_default(value: Any) -> str:
    """Make values JSON cannot hold printable: bytes as hex, anything else as its repr."""
    return value.hex() if isinstance(value, bytes) else repr(value)


def _compact(value: Any) -> str:
    """A detail value on one line: bare words as they are, everything else as JSON."""
    if isinstance(value, str) and value and not any(c.isspace() or c in "\"'=" for c in value):
        return value
    return json.dumps(value, separators=(",", ":"), default=_json_default, ensure_ascii=False)


def _status(value: str) -> str:
    """argparse type of ``--status``: one of the statuses a saga can have."""
    if value not in ALL_STATUSES:
        raise argparse.ArgumentTypeError(
            f"unknown status {value!r}; valid statuses are {', '.join(ALL_STATUSES)}"
        )
    return value


def _decode(data: bytes | None, what: str) -> tuple[Any, str | None]:
    """``data`` decoded (None when absent), or None and a note saying why it cannot be."""
    if data is None:
        return None, None
    try:
        return codec.decode(data, what), None
    except CorruptRecord as exc:
        return None, str(exc)


def _snapshot(record: SagaRecord) -> tuple[dict[str, Any] | None, str | None]:
    """The decoded snapshot (or None) and a note when it cannot be decoded."""
    what = f"snapshot v{record.snapshot_version} of saga {record.saga_id!r}"
    data, note = _decode(record.snapshot, what)
    if data is not None and not isinstance(data, dict):
        return None, f"{what} is a {type(data).__name__}, not a mapping"
    return data, note


def _margin(value: str) -> float:
    """argparse type of ``--margin``: seconds, not negative."""
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {value!r}") from None
    if not seconds >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {value!r}")
    return seconds


def _table(records: Sequence[SagaRecord]) -> None:
    rows = [
        (
            r.saga_id,
            r.status,
            f"{r.definition} v{r.version}",
            _iso(r.created_at),
            _iso(r.updated_at),
            f"inc {r.incarnation}",
            _shorten(r.reason),
        )
        for r in records
    ]
    header = ("ID", "STATUS", "DEFINITION", "CREATED", "UPDATED", "INC", "REASON")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        print("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]))


def _waiting(found: Sequence[diagnosis.Diagnosis]) -> None:
    for d in found:
        print(f"  {d.saga_id}: {diagnosis.describe_stuck(d)}")
        for line in diagnosis.describe(d):
            print(f"    {line}")


def cmd_list(
    store: SagaStore,
    status: str | None,
    limit: int,
    stuck: bool = False,
    margin: float = diagnosis.DEFAULT_MARGIN,
    path: str = "STORE",
) -> int:
    """Print counts by status, then one line per saga, newest first, then what each unfinished
    saga listed waits on; with ``stuck``, only the unfinished sagas past their expected time."""
    counts = store.count_by_status()
    known = [s for s in ALL_STATUSES if s in counts] + sorted(set(counts) - set(ALL_STATUSES))
    summary = ", ".join(f"{counts[s]} {s}" for s in known) or "none"
    print(f"{sum(counts.values())} saga(s): {summary}")
    owed = debts(store) if counts.get(FAILED) else []
    if owed:
        sagas = len({d.saga_id for d in owed})
        print(
            f"compensation debt: {len(owed)} owed by {sagas} saga(s) "
            f"(understudy debt {redact(path)} lists them)"
        )
    if stuck:
        unfinished = sum(counts.get(s, 0) for s in ACTIVE_STATUSES)
        found = [
            d
            for d in diagnosis.find_stuck(store, margin=margin)
            if status is None or d.status == status
        ][:limit]
        if not found:
            print(
                f"no stuck sagas{f' with status {status}' if status else ''}: {unfinished} "
                f"unfinished, none past its expected time by more than {margin:g} s, none "
                "without an owner or a definition"
            )
            return 0
        print(f"{len(found)} stuck of {unfinished} unfinished (margin {margin:g} s)")
        records = store.get_many([d.saga_id for d in found])
        _table([records[d.saga_id] for d in found if d.saga_id in records])
    else:
        listed = store.list_sagas(status, limit)
        if not listed:
            print(f"no sagas{f' with status {status}' if status else ''}")
            return 0
        _table(listed)
        found = diagnosis.diagnose(store, listed, margin=margin)
        if not found:
            return 0
    print()
    if stuck:
        print("what they wait on:")
    else:
        n = sum(d.is_stuck for d in found)
        print(f"what the {len(found)} unfinished saga(s) listed wait on ({n} stuck):")
    _waiting(found)
    return 0


def _step_labels(events: Sequence[EventRecord], snapshot: dict[str, Any] | None) -> dict[int, str]:
    """Label each step index with its name: intents name their step; events written before
    they did fall back to the snapshot's results (one key per done step, in step order) and an
    abort's compensation stack."""
    names: dict[int, str] = {}
    if snapshot and isinstance(snapshot.get("results"), dict):
        names.update(enumerate(str(k) for k in snapshot["results"]))
    for e in events:
        if e.kind == "aborted" and isinstance(e.detail.get("to_compensate"), list):
            # the compensation stack, reversed: step names by index
            names.update(enumerate(str(n) for n in reversed(e.detail["to_compensate"])))
        if (
            e.kind in ("intent", "compensation-intent")
            and e.step is not None
            and "name" in e.detail
        ):
            names[e.step] = str(e.detail["name"])
    return {index: f"step {index} {name}" for index, name in names.items()}


def _timeline(record: SagaRecord, events: Sequence[EventRecord], labels: dict[int, str]) -> None:
    """Print one line per event, then per-step summaries, retries and restarts."""
    print(f"timeline ({len(events)} events):")
    start = record.created_at
    steps: dict[int, dict[str, list[str]]] = {}
    phase: dict[int, str] = {}  # the kind of the latest intent per step: do or undo
    retries = 0
    for e in events:
        step = "" if e.step is None else labels.get(e.step, f"step {e.step}")
        intent = e.kind in ("intent", "compensation-intent")
        cells = [
            _iso(e.at, "milliseconds"),
            f"+{(e.at - start) * 1000:.1f} ms".rjust(12),
            e.kind.ljust(20),
            step,
            f"attempt {e.attempt}" if e.attempt is not None else "",
            f"inc {e.incarnation}",
            f"{e.detail.get('participant')}.{e.detail.get('action')}" if intent else "",
            " ".join(
                f"{k}={_compact(v)}"
                for k, v in e.detail.items()
                if not intent or k not in _SHOWN_KEYS
            ),
            f"DAMAGED: {e.corrupt}" if e.corrupt else "",
        ]
        print("  " + "  ".join(c for c in cells if c))
        retries += e.kind == "retry-scheduled"
        if e.step is None:
            continue
        summary = steps.setdefault(e.step, {"do": [], "undo": []})
        attempt = f" #{e.attempt}" if e.attempt is not None else ""
        if e.kind in ("intent", "compensation-intent"):
            phase[e.step] = "do" if e.kind == "intent" else "undo"
            resent = " resent" if e.detail.get("resent") else ""
            summary[phase[e.step]].append(f"intent{attempt}{resent}")
        elif e.kind in _OUTCOMES:
            summary[phase.get(e.step, "do")].append(f"{e.kind}{attempt}")
        elif e.kind == "compensation-skipped":
            summary["undo"].append("skipped (irreversible)")
    print("steps:")
    for index, summary in sorted(steps.items()):
        do = ", ".join(summary["do"]) or "-"
        undo = ", ".join(summary["undo"]) or "-"
        print(f"  {labels.get(index, f'step {index}')}: {do}; compensation: {undo}")
    print(f"retries: {retries}")
    print(diagnosis.describe_restarts(diagnosis.restarts(events)))


def cmd_show(store: SagaStore, path: str, saga_id: str, as_json: bool) -> int:
    """Print a saga's row and its timeline; 1 when the id is unknown."""
    record = store.get(saga_id)
    if record is None:
        chain = chains.read_chain(store, saga_id)
        if chain is not None:
            return cli_chains.cmd_show_chain(chain, as_json)
        where = redact(path)  # a URL's password is never shown
        print(
            f"understudy: error: no saga with id {saga_id!r} in {where!r} (nor a chain of "
            f"events with that correlation id); `understudy list {where}` lists the sagas and "
            "chains it holds",
            file=sys.stderr,
        )
        return 1
    snapshot, note = _snapshot(record)
    if as_json:
        events = store.events(saga_id)
        row = attrs.asdict(record)
        row["payload"], row["payload_error"] = _decode(record.payload, f"payload of {saga_id!r}")
        row["snapshot"], row["snapshot_error"] = snapshot, note
        out = {
            "saga": row,
            "waiting": None
            if record.terminal
            else attrs.asdict(diagnosis.waiting_on(store, record, events=events)),
            "restarts": attrs.asdict(diagnosis.restarts(events)),
            "events": [attrs.asdict(e) for e in events],
        }
        print(json.dumps(out, indent=2, default=_json_default, ensure_ascii=False))
        return 0
    print(f"saga {record.saga_id}")
    print(f"  status: {record.status}")
    print(f"  definition: {record.definition} v{record.version}")
    print(f"  created: {_iso(record.created_at)}  updated: {_iso(record.updated_at)}")
    print(f"  incarnation: {record.incarnation}")
    print(f"  recovery attempts: {record.recovery_attempts}")
    print(f"  reason: {record.reason or '-'}")
    if record.corrupt:
        print(f"  damaged: {record.corrupt}; understudy will not act on this row")
    if note:
        print(f"  note: {note}; the timeline below is still intact")
    if snapshot and snapshot.get("outstanding"):
        print("  outstanding (left for a person to do):")
        for item in snapshot["outstanding"]:
            print(f"    - {item}")
    try:
        events = store.events(saga_id)
    except CorruptRecord as exc:
        print(f"understudy: error: the timeline cannot be read: {exc}", file=sys.stderr)
        return 1
    parent, children = timeline.links(events)  # a child saga (Step.child) and its parent
    if parent is not None:
        print(f"  child saga of: {parent}")
    for child, step in children:
        print(f"  runs child saga: {child} (step {step})")
    labels = _step_labels(events, snapshot)
    stack = snapshot.get("stack") if snapshot else None
    if record.status == "compensating" and isinstance(stack, list) and stack:
        pending = ", ".join(labels.get(i, f"step {i}") for i in reversed(stack))
        print(f"  still to compensate: {pending}")
    if not record.terminal:
        found = diagnosis.waiting_on(store, record, events=events)
        print(f"  waiting: {diagnosis.describe_stuck(found)}")
        for line in diagnosis.describe(found):
            print(f"    {line}")
    queued = store.commands(saga_id=saga_id)
    if queued:
        print("  operators' commands not applied yet (the saga's owner applies them):")
        for command in queued:
            print(
                f"    {command.verb} by {command.who} {_iso(command.at)}: "
                f"{_shorten(command.why)} (command {command.id})"
            )
    _timeline(record, events, labels)
    return 0


def cmd_check_inflight(store: SagaStore, definitions: Sequence[SagaDefinition], spec: str) -> int:
    """Print what recovery would do with each in-flight saga under ``definitions``; 1 when any
    would not run, would park or would be reinterpreted."""
    check = diagnosis.check_inflight(store, definitions)
    print(f"definitions: {', '.join(check.definitions)} (from {spec})")
    for verdict in check.problems:
        for line in diagnosis.describe_verdict(verdict):
            print(line)
    print(diagnosis.describe_summary(check))
    return 0 if check.ok else 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``understudy`` command."""
    parser = argparse.ArgumentParser(prog="understudy", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", help="counts by status and one line per saga")
    listing.add_argument(
        "store", metavar="STORE", help="the saga store: a SQLite file path or a postgresql:// URL"
    )
    listing.add_argument("--status", type=_status, help=f"only one of: {', '.join(ALL_STATUSES)}")
    listing.add_argument("--limit", type=int, default=100, help="at most N sagas (100)")
    listing.add_argument(
        "--stuck",
        action="store_true",
        help="only unfinished sagas past their expected time: a reply deadline or a retry time "
        "passed by more than the margin, an owner gone, a definition version missing",
    )
    listing.add_argument(
        "--margin",
        type=_margin,
        default=diagnosis.DEFAULT_MARGIN,
        metavar="SECONDS",
        help=f"how late a reply or a retry may be before it is stuck "
        f"({diagnosis.DEFAULT_MARGIN:g})",
    )
    show = commands.add_parser("show", help="a saga's row and timeline")
    show.add_argument(
        "store", metavar="STORE", help="the saga store: a SQLite file path or a postgresql:// URL"
    )
    show.add_argument("saga_id", metavar="SAGA_ID")
    show.add_argument("--json", action="store_true", help="print the row and events as JSON")
    show.add_argument(
        "--html",
        metavar="FILE",
        help="write the saga's timeline as a swimlane picture to FILE, a page any browser opens",
    )
    serve = commands.add_parser(
        "serve", help="show the sagas and their timelines in a browser, read-only, on loopback"
    )
    serve.add_argument(
        "store", metavar="STORE", help="the saga store: a SQLite file path or a postgresql:// URL"
    )
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on (127.0.0.1: only this machine can connect)",
    )
    serve.add_argument("--port", type=int, default=8765, help="the port to listen on (8765)")
    check = commands.add_parser(
        "check-inflight",
        help="before a deploy: would every in-flight saga run under the new definitions",
    )
    check.add_argument(
        "store", metavar="STORE", help="the saga store: a SQLite file path or a postgresql:// URL"
    )
    check.add_argument(
        "--definitions",
        required=True,
        metavar="MODULE:ATTR",
        help="the definitions the new code registers: a list or tuple of SagaDefinition, or a "
        "callable returning one (imported from the current directory or PYTHONPATH)",
    )
    cli_verbs.add_parsers(commands)
    cli_complete.add_parser(commands)
    chaos = commands.add_parser(
        "chaos", help="a seeded fault campaign against a saga scenario (the demo by default)"
    )
    from understudy.testing import command

    command.add_arguments(chaos)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "list" and args.limit <= 0:
            parser.error(f"argument --limit: must be greater than 0, got {args.limit}")
    except SystemExit as exc:  # usage errors and --help: return the status instead of exiting
        return exc.code if isinstance(exc.code, int) else 2
    if args.command == "chaos":
        from understudy.testing import command

        return command.run(args)
    if args.command == "complete":  # a participant's database, not a saga store
        return cli_complete.run(args)
    # Checked here too, so a missing file is a usage error (status 2) naming the path.
    if "://" not in args.store and not os.path.isfile(args.store):
        why = "is not a file" if os.path.exists(args.store) else "does not exist"
        print(f"understudy: error: saga store {args.store!r} {why}", file=sys.stderr)
        return 2
    if cli_verbs.is_verb(args.command):
        return cli_verbs.run(args)
    definitions: tuple[SagaDefinition, ...] = ()
    if args.command == "check-inflight":
        try:
            definitions = diagnosis.load_definitions(args.definitions)
        except diagnosis.DefinitionsNotLoaded as exc:
            print(f"understudy: error: {exc}", file=sys.stderr)
            return 2
    if args.command == "serve":
        from understudy.serve import run as serve

        return serve(args.store, host=args.host, port=args.port)
    try:
        with open_store(args.store, read_only=True) as store:
            if args.command == "show" and args.html:
                from understudy import picture

                return picture.write_html(store, args.store, args.saga_id, args.html)
            if args.command == "list":
                listed = cmd_list(
                    store, args.status, args.limit, args.stuck, args.margin, args.store
                )
                return listed or (
                    0 if args.stuck else cli_chains.cmd_list_chains(store, args.status, args.limit)
                )
            if args.command == "check-inflight":
                return cmd_check_inflight(store, definitions, args.definitions)
            return cmd_show(store, args.store, args.saga_id, args.json)
    except UnderstudyError as exc:
        print(f"understudy: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
