"""Sagas per second of the demo's order run as a workflow (reserve and charge at once, once the
order exists) against the same order run as an orchestrated saga (create, reserve, charge, one
after the other), measured in one run, alternating, each round in fresh child processes.

    python -m bench.workflow [BASE] [CONCURRENCY] [SAGAS] [ROUNDS]

(defaults: simpleSystemBase 50 2000 3). Prints each round's figures and the median ratio
workflow / orchestrated: a figure above 1 means workflows finish more orders per second.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

from bench.common import percentile
from bench.understudy_saga import throughput

STYLES = ("orchestrated", "workflow")


def main(argv: list[str]) -> None:
    base = argv[0] if argv else "simpleSystemBase"
    concurrency = int(argv[1]) if len(argv) > 1 else 50
    sagas = int(argv[2]) if len(argv) > 2 else 2000
    rounds = int(argv[3]) if len(argv) > 3 else 3
    figures: dict[str, list[float]] = {style: [] for style in STYLES}
    latency: dict[str, list[float]] = {style: [] for style in STYLES}
    print(f"order throughput on {base}, {concurrency} in flight, {sagas} sagas a round")
    for index in range(rounds):
        # Alternating, so that a machine getting busier or idler mid-run weighs on both.
        order = STYLES if index % 2 == 0 else STYLES[::-1]
        for style in order:
            with tempfile.TemporaryDirectory() as tmp:
                result = throughput(base, Path(tmp), concurrency, sagas, style=style)
            p50_ms = percentile(result.latencies, 0.5) * 1000
            figures[style].append(result.sagas_per_s)
            latency[style].append(p50_ms)
            print(
                f"  round {index + 1} {style:>12}: {result.sagas_per_s:8.1f} sagas/s, "
                f"p50 {p50_ms:7.1f} ms, misrouted {result.misrouted}",
                flush=True,
            )
    ratios = [w / o for w, o in zip(figures["workflow"], figures["orchestrated"], strict=True)]
    p50 = [w / o for w, o in zip(latency["workflow"], latency["orchestrated"], strict=True)]
    for style in STYLES:
        print(
            f"{style:>12}: median {statistics.median(figures[style]):8.1f} sagas/s, "
            f"p50 latency {statistics.median(latency[style]):7.1f} ms"
        )
    print(
        f"workflow / orchestrated: sagas/s x{statistics.median(ratios):.2f}, "
        f"p50 latency x{statistics.median(p50):.2f} (median of {rounds} rounds)"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
