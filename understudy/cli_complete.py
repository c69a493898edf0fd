"""``understudy complete DATABASE HANDLE``: finish a step that a participant's handler left
waiting (it returned :class:`~understudy.Later`), from a shell or a script: with a result, a
refusal (``--reject REASON [--data JSON]``) or a failure (``--fail REASON``).

DATABASE is the participant's own database (its ``database`` option: a SQLite file or a
postgresql:// URL), not the saga store: a completion is recorded in the participant's ledger,
which its participant then replies from (:mod:`understudy.actors.deferred`). Exit status: 0
when recorded (or the same completion was recorded before), 1 when refused (another outcome
recorded already, the step cancelled, a handle this database does not know) or the database
failed, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from understudy.actors import deferred
from understudy.errors import UnderstudyError


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}): {text[:60]!r}") from None


def add_parser(commands: Any) -> None:
    done = commands.add_parser(
        "complete", help="finish a step a participant left waiting, by its handle"
    )
    done.add_argument(
        "database", metavar="DATABASE", help="the participant's database (its database option)"
    )
    done.add_argument("handle", metavar="HANDLE", help="the handle the handler handed out")
    how = done.add_mutually_exclusive_group()
    how.add_argument("--result", type=_json, help="the step's result, as JSON (default null)")
    how.add_argument("--reject", metavar="REASON", help="refuse the step (the saga compensates)")
    how.add_argument("--fail", metavar="REASON", help="fail the step for good under its key")
    done.add_argument("--data", type=_json, help="with --reject: the refusal's data, as JSON")


def run(args: argparse.Namespace) -> int:
    if args.data is not None and args.reject is None:
        print("understudy: error: --data goes with --reject", file=sys.stderr)
        return 2
    try:
        if args.reject is not None:
            new = deferred.reject(args.database, args.handle, args.reject, args.data)
        elif args.fail is not None:
            new = deferred.fail(args.database, args.handle, args.fail)
        else:
            new = deferred.complete(args.database, args.handle, args.result)
    except UnderstudyError as exc:
        print(f"understudy: error: {exc}", file=sys.stderr)
        return 1
    print("recorded" if new else "recorded before: the same completion, nothing changed")
    return 0
