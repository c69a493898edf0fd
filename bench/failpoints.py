"""What the compiled-in failpoints cost when nothing is armed (``python bench/failpoints.py``).

Prints, measured side by side in one run:
- the cost of one disarmed ``failpoints.hit`` against a call of an empty function (baseline);
- how many failpoints one order saga passes (3 steps, in-process), counted by wrapping ``hit``;
- the share of a saga's time the disarmed hits take: hits per saga x cost per hit, divided by
  the time per saga of the same in-process runtime measured in this run.
Absolute times drift on shared machines; compare the ratios.
"""

from __future__ import annotations

import sys
import tempfile
import time
import timeit
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from conftest import order_definition, recorders  # noqa: E402

from understudy import Understudy, failpoints  # noqa: E402

CALLS = 2_000_000
SAGAS = 300


def _empty(point: str, saga_id: str | None = None, participant: str | None = None) -> None:
    return None


def per_call(func: object) -> float:
    """Seconds per call, best of 5 repeats."""
    timer = timeit.Timer("f('host.after_send', 'order-1')", globals={"f": func})
    return min(timer.repeat(repeat=5, number=CALLS)) / CALLS


def sagas_run(count: int) -> tuple[float, Counter[str]]:
    """Seconds per saga (in-process, one at a time) and the failpoints they passed."""
    hits: Counter[str] = Counter()
    real = failpoints.hit

    def counting(point: str, saga_id: str | None = None, participant: str | None = None) -> None:
        hits[point] += 1
        return real(point, saga_id, participant)

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        us = Understudy.start(directory / "sagas.db", [order_definition()], recorders(directory))
        try:
            us.run("warm-up", "order", {})
            failpoints.hit = counting  # type: ignore[assignment]
            started = time.perf_counter()
            for i in range(count):
                us.run(f"saga-{i}", "order", {"reject": "charge"} if i % 10 == 0 else {})
            elapsed = time.perf_counter() - started
        finally:
            failpoints.hit = real  # type: ignore[assignment]
            us.shutdown()
    return elapsed / count, hits


def main() -> None:
    assert not failpoints._armed, "measure with nothing armed"
    empty = per_call(_empty)
    disarmed = per_call(failpoints.hit)
    per_saga, hits = sagas_run(SAGAS)
    per_saga_hits = sum(hits.values()) / SAGAS
    share = per_saga_hits * disarmed / per_saga
    print("failpoints, nothing armed (in-process base, order saga, 10% compensated)")
    print(f"  empty function call (baseline)       {empty * 1e9:8.1f} ns")
    print(
        f"  disarmed failpoints.hit              {disarmed * 1e9:8.1f} ns  "
        f"({disarmed / empty:.2f}x the baseline)"
    )
    print(f"  failpoints passed per saga           {per_saga_hits:8.1f}")
    print(f"  time per saga (same runtime)         {per_saga * 1e6:8.1f} us")
    print(f"  disarmed hits' share of a saga       {share * 100:8.4f} %")
    print(
        "  hits per point per saga: "
        + ", ".join(f"{point} {n / SAGAS:.1f}" for point, n in sorted(hits.items()))
    )


if __name__ == "__main__":
    main()
