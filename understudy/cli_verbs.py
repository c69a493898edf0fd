"""The operators' part of the ``understudy`` command: the verbs and compensation debt.

``understudy cancel|pause|resume|retry|abandon STORE SAGA_ID --why TEXT``,
``understudy skip STORE SAGA_ID --step NAME --result JSON --why TEXT``,
``understudy resolve STORE SAGA_ID --step NAME --why NOTE``, and ``understudy debt STORE``
(``--settle SAGA_ID STEP --why NOTE`` resolves one debt). The work is
:class:`understudy.operate.Operator`'s; this module parses and prints.

Exit status: 0 applied, 1 refused (the reason is printed) or a store error, 2 a usage error,
3 submitted but not applied yet (no runtime owns the saga and no ``--definitions`` were given,
or its owner did not apply it within ``--wait`` seconds): the command stays pending and the
saga's owner applies it when it gets to it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from understudy import diagnosis
from understudy.actors.verbs import VERBS
from understudy.definitions import SagaDefinition
from understudy.diagnosis import iso
from understudy.errors import UnderstudyError, VerbRefused
from understudy.operate import Operator
from understudy.persistence.base import APPLIED, CommandRecord

PENDING_EXIT = 3
_HELP = {
    "cancel": "stop going forward and compensate every step that may have run, in reverse order",
    "pause": "send nothing new until resumed (a request already out is still answered)",
    "resume": "undo a pause: what was held back is sent now",
    "retry": "retry now (skip the backoff), or take a parked saga up again where it stopped",
    "skip": "give the step the saga is at a result by hand, and go on",
    "resolve": "mark one owed compensation as done by hand (--why is its note)",
    "abandon": "stop, and record every outstanding compensation as debt",
}


def _json(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"is not JSON ({exc}): {value!r}") from None


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "store", metavar="STORE", help="the saga store: a SQLite file path or a postgresql:// URL"
    )
    parser.add_argument(
        "--who", help="who is doing this, recorded with it (default: user@host)", default=None
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for a running runtime to apply it (10)",
    )
    parser.add_argument(
        "--definitions",
        metavar="MODULE:ATTR",
        help="the saga definitions, to apply it here when no runtime is running (without them "
        "it waits for the next runtime to start)",
    )


def add_parsers(commands: Any) -> None:
    """Add the verbs and ``debt`` to the ``understudy`` command's subparsers."""
    for verb in VERBS:
        parser = commands.add_parser(verb, help=_HELP[verb])
        _common(parser)
        parser.add_argument("saga_id", metavar="SAGA_ID")
        parser.add_argument(
            "--why", required=True, help="why (recorded with the verb in the saga's timeline)"
        )
        if verb in ("skip", "resolve"):
            parser.add_argument("--step", required=True, help="the step, by name or index")
        if verb == "skip":
            parser.add_argument(
                "--result", required=True, type=_json, help="the step's result, as JSON"
            )
    debt = commands.add_parser("debt", help="list compensation debt, or settle one debt")
    _common(debt)
    debt.add_argument(
        "--settle",
        nargs=2,
        metavar=("SAGA_ID", "STEP"),
        help="mark the compensation of STEP of SAGA_ID as done by hand (needs --why)",
    )
    debt.add_argument("--why", help="the note settling a debt is recorded with")


def is_verb(command: str) -> bool:
    return command in VERBS or command == "debt"


def run(args: argparse.Namespace) -> int:
    definitions: tuple[SagaDefinition, ...] = ()
    if args.definitions:
        try:
            definitions = diagnosis.load_definitions(args.definitions)
        except diagnosis.DefinitionsNotLoaded as exc:
            print(f"understudy: error: {exc}", file=sys.stderr)
            return 2
    try:
        with Operator(args.store, who=args.who, definitions=definitions, wait=args.wait) as op:
            if args.command == "debt":
                return _debt(op, args)
            extra: dict[str, Any] = {}
            if args.command in ("skip", "resolve"):
                extra["step"] = int(args.step) if args.step.isdigit() else args.step
            if args.command == "skip":
                extra["result"] = args.result
            return _report(op.apply(args.saga_id, args.command, args.why, **extra))
    except VerbRefused as exc:
        print(f"understudy: refused: {exc}", file=sys.stderr)
        return 1
    except UnderstudyError as exc:
        print(f"understudy: error: {exc}", file=sys.stderr)
        return 1


def _report(command: CommandRecord) -> int:
    what = f"{command.verb} of saga {command.saga_id} by {command.who} (command {command.id})"
    if command.state == APPLIED:
        print(f"{what}: applied")
        return 0
    print(
        f"{what}: submitted, not applied yet: no runtime running owns the saga (or its owner "
        "did not get to it in time); it is applied when one does. Give --definitions to apply "
        "it now when no runtime is running."
    )
    return PENDING_EXIT


def _debt(op: Operator, args: argparse.Namespace) -> int:
    if args.settle:
        if not args.why:
            print(
                "understudy: error: --settle needs --why (the note it is recorded with)",
                file=sys.stderr,
            )
            return 2
        saga_id, step = args.settle
        return _report(
            op.resolve(saga_id, step=int(step) if step.isdigit() else step, why=args.why)
        )
    owed = op.debt()
    if not owed:
        print("no compensation debt")
        return 0
    print(f"{len(owed)} compensation(s) owed:")
    for d in owed:
        print(
            f"  {d.saga_id}  step {d.step} {d.name}  {d.participant}.{d.compensation}  "
            f"since {iso(d.since)}  attempts {d.attempts}  {d.definition}"
        )
        print(f"    last error: {d.error}")
    print("settle one with: understudy debt STORE --settle SAGA_ID STEP --why NOTE")
    return 0
