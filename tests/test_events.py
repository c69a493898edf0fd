"""Lifecycle events: subscriptions from plain code, asyncio and app actors, on both bases;
logging; OpenTelemetry spans; status_async under many concurrent calls.

What a subscriber relies on: every event committed after ``subscribe`` returns reaches it, in
each saga's order, filtered as asked, and only once the transition it belongs to is durable;
a host restarted after a crash goes on sending; closing and shutting down end iteration.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
from apps import Heard, Listen, Listener
from conftest import order_definition, stored

from understudy import SagaEvent, Subscribed, Understudy
from understudy.lifecycle import KINDS

FORWARD = [
    ("started", None),
    ("step-started", "create"),
    ("step-done", "create"),
    ("step-started", "reserve"),
    ("step-done", "reserve"),
    ("step-started", "charge"),
    ("step-done", "charge"),
    ("completed", None),
]
COMPENSATED_AT_CHARGE = [
    ("started", None),
    ("step-started", "create"),
    ("step-done", "create"),
    ("step-started", "reserve"),
    ("step-done", "reserve"),
    ("step-started", "charge"),
    ("step-failed", "charge"),
    ("compensating", None),
    ("compensation-started", "charge"),
    ("step-compensated", "charge"),
    ("compensation-started", "reserve"),
    ("step-compensated", "reserve"),
    ("compensation-started", "create"),
    ("step-compensated", "create"),
    ("compensated", None),
]


def of(events: list[SagaEvent], saga_id: str) -> list[tuple[str, str | None]]:
    return [(e.kind, e.step_name) for e in events if e.saga_id == saga_id]


def drain(subscription: Any, until: Callable[[list[SagaEvent]], bool]) -> list[SagaEvent]:
    """Read events until ``until`` holds of what was read (60 s at most)."""
    events: list[SagaEvent] = []
    deadline = time.monotonic() + 60
    while not until(events) and time.monotonic() < deadline:
        event = subscription.get(timeout=0.5)
        if event is not None:
            events.append(event)
    return events


def ended(*saga_ids: str) -> Callable[[list[SagaEvent]], bool]:
    ends = {"completed", "compensated", "failed"}
    return lambda events: {e.saga_id for e in events if e.kind in ends} >= set(saga_ids)


def test_a_subscription_gets_each_sagas_events_in_order_as_filtered(
    start: Callable[..., Understudy], tmp_path: Path
) -> None:
    other = attrs.evolve(order_definition(), name="other")
    us = start([order_definition(), other])
    with us.subscribe(definition="order") as sub, us.subscribe(saga_id="b") as only_b:
        us.run("a", "order", {})
        us.run("b", "order", {"reject": "charge"})
        us.run("x", "other", {})
        events = drain(sub, ended("a", "b"))
        assert of(events, "a") == FORWARD
        assert of(events, "b") == COMPENSATED_AT_CHARGE
        assert of(events, "x") == [], "another definition's saga is not sent"
        assert {e.saga_id for e in drain(only_b, ended("b"))} == {"b"}
    # what was sent is what the store holds: every event is committed first
    record, timeline = stored(str(tmp_path / "sagas.db"), "b")
    assert record.status == "compensated" and len(timeline) >= len(COMPENSATED_AT_CHARGE)
    failed = next(e for e in events if e.saga_id == "b" and e.kind == "step-failed")
    assert failed.detail["outcome"] == "rejected" and failed.definition == "order"


def test_kinds_filter_and_unknown_kinds_are_refused(start: Callable[..., Understudy]) -> None:
    us = start()
    with pytest.raises(ValueError, match="unknown lifecycle event kind"):
        us.subscribe(kinds=["done"])
    with us.subscribe(kinds=["completed", "compensated"]) as sub:
        us.run("k-1", "order", {})
        us.run("k-2", "order", {"reject": "charge"})
        events = drain(sub, ended("k-1", "k-2"))
    assert [(e.saga_id, e.kind) for e in events] == [("k-1", "completed"), ("k-2", "compensated")]


def test_closing_stops_events_and_shutdown_ends_iteration(
    start: Callable[..., Understudy],
) -> None:
    us = start()
    closed = us.subscribe()
    closed.close()
    kept = us.subscribe()
    us.run("c-1", "order", {})
    assert drain(kept, ended("c-1"))
    assert closed.get(timeout=0.5) is None and closed.closed
    finished = threading.Event()

    def read_all() -> None:
        for _event in kept:
            pass
        finished.set()

    reader = threading.Thread(target=read_all)
    reader.start()
    us.shutdown()
    reader.join(timeout=30)
    assert finished.is_set(), "iteration ends when the runtime shuts down"


def test_asyncio_code_subscribes_and_iterates(start: Callable[..., Understudy]) -> None:
    us = start()

    async def main() -> list[tuple[str, str | None]]:
        sub = await us.subscribe_async(saga_id="async-1")
        await us.run_async("async-1", "order", {})
        seen = []
        async for event in sub:
            seen.append((event.kind, event.step_name))
            if event.kind == "completed":
                break
        sub.close()
        return seen

    assert asyncio.run(main()) == FORWARD


def test_an_app_actor_subscribes_with_a_message(start: Callable[..., Understudy]) -> None:
    us = start()
    with us.private() as handle:
        listener = handle.createActor(Listener)
        assert isinstance(handle.ask(listener, Listen(us.address, "order"), 30), Subscribed)
        us.run("app-1", "order", {})
        deadline = time.monotonic() + 30
        events: tuple[SagaEvent, ...] = ()
        while time.monotonic() < deadline:
            events = handle.ask(listener, Heard(), 30)
            if any(e.kind == "completed" for e in events):
                break
            time.sleep(0.05)
    assert of(list(events), "app-1") == FORWARD


def test_operator_verbs_and_debt_are_events(start: Callable[..., Understudy]) -> None:
    us = start()
    with us.subscribe(kinds=["debt", "debt-settled", "operator", "failed", "compensated"]) as sub:
        us.run("d-1", "order", {"reject": "charge", "fail": {"release": -1}})
        with us.operator(who="ops") as op:
            op.resolve("d-1", step="reserve", why="released by hand")
        events = drain(sub, lambda got: any(e.kind == "compensated" for e in got))
    assert [e.kind for e in events] == ["debt", "failed", "operator", "debt-settled", "compensated"]
    assert events[0].step_name == "reserve" and events[0].detail["participant"] == "inventory"
    assert events[2].detail["who"] == "ops"


@pytest.mark.parametrize("base", ["multiprocTCPBase"])
def test_a_host_restarted_after_a_crash_goes_on_sending(
    start: Callable[..., Understudy], base: str
) -> None:
    us = start(hosts=1)
    with us.subscribe() as sub:
        us.run("r-1", "order", {})
        (pid,) = us.hosts().host_pids.values()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while us.hosts().host_pids.get(0) in (None, pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        us.run("r-2", "order", {}, timeout=60)
        events = drain(sub, ended("r-1", "r-2"))
    assert of(events, "r-2") == FORWARD


@pytest.mark.parametrize("base", ["simpleSystemBase"])  # hosts log in this very process
def test_the_saga_logger_tells_ends_debt_and_verbs(
    start: Callable[..., Understudy], caplog: pytest.LogCaptureFixture, base: str
) -> None:
    us = start()
    with caplog.at_level(logging.INFO, logger="understudy.saga"):
        us.run("l-1", "order", {})
        us.run("l-2", "order", {"reject": "charge", "fail": {"release": -1}})
    messages = [
        (r.levelname, r.getMessage()) for r in caplog.records if r.name == "understudy.saga"
    ]
    assert ("INFO", "saga l-1 completed") in messages
    assert any(
        level == "WARNING" and "saga l-2 owes compensation release" in m for level, m in messages
    )
    assert any(
        level == "WARNING" and m.startswith("saga l-2 failed: compensation")
        for level, m in messages
    )


def test_opentelemetry_spans_per_saga_and_step(start: Callable[..., Understudy]) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    from understudy.telemetry import SagaTracer

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    us = start()
    with SagaTracer(us, tracer_provider=provider):
        us.run("t-1", "order", {"reject": "charge"})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(
            s.name == "saga order" for s in exporter.get_finished_spans()
        ):
            time.sleep(0.05)
    spans = exporter.get_finished_spans()
    (saga,) = [s for s in spans if s.name == "saga order"]
    steps = sorted((s for s in spans if s.name != "saga order"), key=lambda s: s.start_time)
    assert [s.name for s in steps] == [
        "do create",
        "do reserve",
        "do charge",
        "undo charge",
        "undo reserve",
        "undo create",
    ]
    assert all(s.parent is not None and s.parent.span_id == saga.context.span_id for s in steps)
    assert steps[2].status.status_code == StatusCode.ERROR
    assert saga.attributes["understudy.status"] == "compensated"
    assert [e.name for e in saga.events] == ["compensating"]
    assert saga.start_time <= steps[0].start_time and saga.end_time >= steps[-1].end_time


def test_status_async_shares_two_reader_threads_across_thousands_of_calls(
    start: Callable[..., Understudy],
) -> None:
    us = start()
    us.run("s-1", "order", {})
    us.run("s-2", "order", {"reject": "charge"})

    async def main() -> tuple[list[str], int]:
        threads = threading.active_count()
        statuses = await asyncio.gather(
            *(us.status_async("s-1" if i % 2 else "s-2") for i in range(3000))
        )
        return list(statuses), threading.active_count() - threads

    statuses, more_threads = asyncio.run(main())
    assert statuses[:2] == ["compensated", "completed"] and len(statuses) == 3000
    assert statuses.count("completed") == 1500
    assert more_threads <= 2, "no connection or thread per call"


def test_every_lifecycle_kind_is_documented() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "events.md").read_text()
    assert [] == [kind for kind in KINDS if f"`{kind}`" not in doc]
