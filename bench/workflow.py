"""Sagas per second of the demo's order run in another style against the same order run as an
orchestrated saga (create, reserve, charge, one after the other), measured in one run,
alternating, each round in fresh child processes. The styles (``bench.participants.STYLES``):
``workflow`` (reserve and charge at once, once the order exists) and ``child`` (reserve and
charge as a child saga of the order's, ``Step.child``).

    python -m bench.workflow [BASE] [CONCURRENCY] [SAGAS] [ROUNDS] [STYLE]

(defaults: simpleSystemBase 50 2000 3 workflow). Prints each round's figures and the median
ratio STYLE / orchestrated: a figure above 1 means that style finishes more orders per second.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

from bench.common import percentile
from bench.participants import STYLES as STYLE_NAMES
from bench.understudy_saga import throughput


def main(argv: list[str]) -> None:
    base = argv[0] if argv else "simpleSystemBase"
    concurrency = int(argv[1]) if len(argv) > 1 else 50
    sagas = int(argv[2]) if len(argv) > 2 else 2000
    rounds = int(argv[3]) if len(argv) > 3 else 3
    other = argv[4] if len(argv) > 4 else "workflow"
    if other not in STYLE_NAMES or other == "orchestrated":
        raise SystemExit(f"STYLE must be one of {', '.join(set(STYLE_NAMES) - {'orchestrated'})}")
    styles = ("orchestrated", other)
    figures: dict[str, list[float]] = {style: [] for style in styles}
    latency: dict[str, list[float]] = {style: [] for style in styles}
    print(f"order throughput on {base}, {concurrency} in flight, {sagas} sagas a round")
    for index in range(rounds):
        # Alternating, so that a machine getting busier or idler mid-run weighs on both.
        order = styles if index % 2 == 0 else styles[::-1]
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
    ratios = [w / o for w, o in zip(figures[other], figures["orchestrated"], strict=True)]
    p50 = [w / o for w, o in zip(latency[other], latency["orchestrated"], strict=True)]
    for style in styles:
        print(
            f"{style:>12}: median {statistics.median(figures[style]):8.1f} sagas/s, "
            f"p50 latency {statistics.median(latency[style]):7.1f} ms"
        )
    print(
        f"{other} / orchestrated: sagas/s x{statistics.median(ratios):.2f}, "
        f"p50 latency x{statistics.median(p50):.2f} (median of {rounds} rounds)"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
