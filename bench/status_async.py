"""How much ``await us.status_async(...)`` costs an event loop while sagas run.

``python -m bench.status_async [SAGAS] [CALLS] [ROUNDS]`` (default 1000 sagas, 3000 calls, 5
rounds): an in-process runtime over a SQLite file starts SAGAS order sagas without waiting for
them, and while they run an event loop awaits CALLS ``status_async`` calls at once. A ticker on
the loop sleeps 5 ms at a time and records how late it wakes: the longest lateness is how long
the loop was stalled. Two ways take turns, each round in a fresh runtime and store:

- ``shared``: the runtime's ``status_async`` (two reader threads, each with its reader open for
  the runtime's life);
- ``per-call``: a connection and a thread per call (aiosqlite, one ``open_async_reader`` per
  call), as ``status_async`` read before, the baseline measured in the same run.

It prints each way's median of the longest stall and of calls per second, and the ratios of
``shared`` to ``per-call`` (the machine is shared and noisy: compare ratios, not seconds).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.participants import order_definition, order_participants, payload
from understudy import Understudy
from understudy.persistence.aio import open_async_reader

TICK = 0.005


async def _per_call(location: str, saga_id: str) -> str:
    async with open_async_reader(location) as reader:
        record = await reader.get(saga_id)
    assert record is not None
    return record.status


async def _measure(us: Understudy, location: str, way: str, sagas: int, calls: int) -> Any:
    stalls: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            before = time.perf_counter()
            await asyncio.sleep(TICK)
            stalls.append(time.perf_counter() - before - TICK)

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    ids = [f"s-{i}" for i in range(sagas)]
    accepted = [
        asyncio.wrap_future(us.submit_future(saga_id, "order", payload(index), wait=False))
        for index, saga_id in enumerate(ids)
    ]
    await asyncio.gather(*accepted)  # every start durable; most sagas are still running
    started = time.perf_counter()
    if way == "shared":
        statuses = await asyncio.gather(*(us.status_async(ids[i % sagas]) for i in range(calls)))
    else:
        statuses = await asyncio.gather(
            *(_per_call(location, ids[i % sagas]) for i in range(calls)), return_exceptions=True
        )
    elapsed = time.perf_counter() - started
    done.set()
    await ticking
    failed = sum(isinstance(s, BaseException) for s in statuses)
    return {"stall": max(stalls), "calls_per_s": calls / elapsed, "failed": failed}


def one_round(way: str, sagas: int, calls: int) -> Any:
    with tempfile.TemporaryDirectory() as directory:
        location = str(Path(directory) / "sagas.db")
        participants = order_participants(Path(directory))
        with Understudy.start(location, [order_definition()], participants) as us:
            return asyncio.run(_measure(us, location, way, sagas, calls))


def main(argv: list[str]) -> int:
    sagas, calls, rounds = (int(a) for a in (argv + ["1000", "3000", "5"][len(argv) :])[:3])
    results: dict[str, list[Any]] = {"shared": [], "per-call": []}
    for _ in range(rounds):
        for way in results:
            results[way].append(one_round(way, sagas, calls))
    print(f"status_async: {calls} concurrent calls beside {sagas} sagas, {rounds} rounds each")
    medians = {}
    for way, runs in results.items():
        stall = statistics.median(r["stall"] for r in runs)
        rate = statistics.median(r["calls_per_s"] for r in runs)
        failed = sum(r["failed"] for r in runs)
        medians[way] = (stall, rate)
        print(
            f"  {way:9} longest loop stall {stall * 1000:7.1f} ms   {rate:8.0f} calls/s"
            f"   failed calls: {failed}"
        )
    (shared_stall, shared_rate), (call_stall, call_rate) = medians["shared"], medians["per-call"]
    print(
        f"  shared / per-call: stall x{shared_stall / call_stall:.2f}, "
        f"calls/s x{shared_rate / call_rate:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
