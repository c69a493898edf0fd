"""``python -m demo``: the command line of the demo (see :mod:`demo.run` for what it does)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from demo.run import Config, run_demo
from demo.saga import STYLES
from understudy import IN_PROCESS, MULTIPROC_TCP


def parse(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(
        prog="python -m demo",
        description="Run orders through an understudy saga while killing saga hosts, then "
        "check the participants' ledgers: every order completed or fully compensated, stock "
        "conserved, nobody charged twice.",
    )
    parser.add_argument("--orders", type=int, default=300, help="orders to place (default 300)")
    parser.add_argument(
        "--kills", type=int, default=3, help="saga host processes to SIGKILL (default 3)"
    )
    parser.add_argument(
        "--base",
        choices=[MULTIPROC_TCP, IN_PROCESS],
        default=MULTIPROC_TCP,
        help=f"Thespian system base (default {MULTIPROC_TCP}; {IN_PROCESS} cannot kill hosts)",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="directory for the saga store and the ledgers (default: a new temporary one); "
        "must be empty or not exist",
    )
    parser.add_argument(
        "--store",
        default=None,
        help="the saga store: a postgresql://user@host:port/db URL of an empty database "
        "(default: sagas.db in --dir); with --style local, the shop's one database",
    )
    parser.add_argument("--seed", type=int, default=7, help="seed of the workload (default 7)")
    parser.add_argument(
        "--style",
        choices=sorted([*STYLES, "local", "choreography"]),
        default="orchestrated",
        help="how the order runs: an orchestrated saga (create, reserve, charge, one after "
        "the other; the default), a workflow (reserve and charge at once once the order "
        "exists), local: no saga, one transaction per order in one database (shop.db, or "
        "the PostgreSQL database --store names), placed by worker processes that --kills "
        "SIGKILLs, or choreography: no coordinator, orders, inventory and payments react to "
        "one another's events, their processes SIGKILLed",
    )
    parser.add_argument("--hosts", type=int, default=2, help="saga host actors (default 2)")
    parser.add_argument(
        "--wave", type=int, default=40, help="orders submitted per wave (default 40)"
    )
    args = parser.parse_args(argv)
    if args.orders < 1 or args.kills < 0 or args.hosts < 1 or args.wave < 1:
        parser.error("--orders, --hosts and --wave must be at least 1, --kills at least 0")
    if args.dir is None:
        directory = Path(tempfile.mkdtemp(prefix="understudy-demo-"))
    else:
        directory = args.dir.resolve()
        if directory.exists() and any(directory.iterdir()):
            parser.error(f"--dir {directory} is not empty; the ledgers must start fresh")
        directory.mkdir(parents=True, exist_ok=True)
    return Config(
        directory=directory,
        orders=args.orders,
        kills=args.kills,
        seed=args.seed,
        base=args.base,
        hosts=args.hosts,
        wave=args.wave,
        store=args.store,
        style=args.style,
    )


def main(argv: list[str] | None = None) -> int:
    return run_demo(parse(argv))


if __name__ == "__main__":
    sys.exit(main())
