"""Core saga behaviour, on the in-process base and on a multi-process base, with the saga store
in a SQLite file and in PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
from apps import PlaceOrder, Shop
from conftest import FAST, STORES, all_effects, order_definition, store_location, stored, timeline
from participants import Recorder, Silent

from understudy import (
    Irreversible,
    PayloadError,
    SagaAccepted,
    SagaDefinition,
    SagaFinished,
    SagaRejected,
    Step,
    Understudy,
    UnknownDefinition,
    UnknownParticipant,
)

Start = Callable[..., Understudy]


@pytest.fixture(params=STORES)
def saga_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The core scenarios run on every store backend (and, through ``start``, every base)."""
    return store_location(request.param, request, tmp_path)


FORWARD = [("create", "do"), ("reserve", "do"), ("charge", "do")]


def test_a_saga_runs_every_step_once_and_completes(start: Start, tmp_path: Path) -> None:
    """A saga whose participants accept runs each forward step exactly once and completes."""
    us = start()
    finished = us.run("o-1", "order", {"sku": "A1"})
    assert finished.status == "completed"
    assert timeline(tmp_path, "o-1") == FORWARD
    assert finished.results["charge"] == {"by": "charge"}
    assert us.status("o-1") == "completed"


def test_a_rejected_step_compensates_earlier_steps_in_reverse(start: Start, tmp_path: Path) -> None:
    """A business rejection at the third step undoes the second, then the first."""
    us = start()
    finished = us.run("o-2", "order", {"reject": "charge"})
    assert finished.status == "compensated"
    assert "card" not in (finished.reason or "") and "charge" in (finished.reason or "")
    assert (timeline(tmp_path, "o-2")) == [
        ("create", "do"),
        ("reserve", "do"),
        ("reserve", "undo"),
        ("create", "undo"),
    ]


def test_transient_errors_are_retried_with_the_same_key(
    start: Start, tmp_path: Path, saga_store: str
) -> None:
    """A handler that fails twice is retried; its effect is applied once."""
    us = start()
    finished = us.run("o-3", "order", {"fail": {"charge": 2}})
    assert finished.status == "completed"
    assert timeline(tmp_path, "o-3") == FORWARD
    kinds = [e.kind for e in stored(saga_store, "o-3")[1]]
    assert kinds.count("retry-scheduled") == 2


def test_starting_an_existing_saga_id_returns_that_saga(start: Start, tmp_path: Path) -> None:
    """A second start with the same id returns the first saga's outcome and runs nothing."""
    us = start()
    first = us.run("o-4", "order", {"sku": "A1"})
    again = us.run("o-4", "order", {"sku": "something else"})
    # the same outcome; only the echo of each caller's own request id differs
    assert attrs.evolve(first, request_id="") == attrs.evolve(again, request_id="")
    assert timeline(tmp_path, "o-4") == FORWARD


def test_concurrent_sagas_all_finish(start: Start, tmp_path: Path) -> None:
    """Many sagas in flight at once each finish, each effect applied once."""
    us = start()
    futures = [
        us.submit_future(f"c-{i}", "order", {"reject": "charge"} if i % 10 == 0 else {})
        for i in range(60)
    ]
    statuses = [f.result(60).status for f in futures]
    assert statuses.count("completed") == 54
    assert statuses.count("compensated") == 6
    effects = all_effects(tmp_path)
    for rows in effects.values():
        assert len(rows) == len(set(rows))


def test_a_compensation_that_keeps_failing_parks_the_saga(start: Start) -> None:
    """When a compensation never succeeds, the saga is failed-needs-attention and lists exactly
    the compensations still outstanding."""
    us = start()
    finished = us.run("o-5", "order", {"reject": "charge", "fail": {"release": -1}})
    assert finished.status == "failed"
    # the compensation that failed is owed (debt, with its last error); the one behind it waits
    assert finished.outstanding == (
        "compensate step 'reserve' (release): owed, RuntimeError: release failing on purpose (3)",
        "compensate step 'create' (cancel)",
    )
    assert "release" in (finished.reason or "")
    with us.operator() as op:
        assert [(d.saga_id, d.name, d.attempts) for d in op.debt()] == [("o-5", "reserve", 3)]


def test_a_participant_that_never_replies_times_out_then_compensates(
    start: Start, tmp_path: Path, saga_store: str
) -> None:
    """No reply within the timeout counts as a failed attempt; after the retries the saga
    compensates, including the step that timed out (it may have run)."""
    definition = SagaDefinition(
        "order",
        1,
        [
            Step("create", "orders", "create", "cancel", retry=FAST),
            Step(
                "charge",
                "silent",
                "charge",
                "refund",
                retry=FAST,
                timeout=0.2,
                compensation_retry=FAST,
            ),
        ],
    )
    participants = [
        ("orders", Recorder, {"database": str(tmp_path / "orders.db")}),
        ("silent", Silent, {"database": str(tmp_path / "silent.db")}),
    ]
    us = start([definition], participants)
    finished = us.run("o-6", "order", {}, timeout=30)
    assert finished.status == "failed"  # the silent participant never confirms its refund
    assert (finished.outstanding) == (
        "compensate step 'charge' (refund): owed, no reply within 0.2 s",
        "compensate step 'create' (cancel)",
    )
    kinds = [e.kind for e in stored(saga_store, "o-6")[1]]
    assert kinds.count("timeout") - 3 == 3  # three forward timeouts, then three on the refund
    assert "aborted" in kinds


def test_an_unknown_participant_is_refused_at_start(
    start: Start, tmp_path: Path, saga_store: str
) -> None:
    """A definition naming an unregistered participant is refused, naming it; nothing is
    written."""
    definition = SagaDefinition("ship", 1, [Step("ship", "carrier", "ship", "unship")])
    us = start([order_definition(), definition])
    with pytest.raises(UnknownParticipant, match="'carrier'"):
        us.run("s-1", "ship", {})
    assert stored(saga_store, "s-1")[0] is None


def test_an_unencodable_payload_is_refused_naming_the_field(
    start: Start, tmp_path: Path, saga_store: str
) -> None:
    """A payload msgpack cannot encode is refused before anything is written."""
    us = start()
    with pytest.raises(PayloadError, match=r"customer\.since"):
        us.run("o-7", "order", {"customer": {"since": object()}})
    assert stored(saga_store, "o-7")[0] is None


def test_a_saga_id_with_a_nul_character_is_refused_on_every_store(start: Start) -> None:
    """A NUL in a saga id is refused before anything is written, whatever the store (SQLite
    would take it, PostgreSQL cannot), so an id valid on one store is valid on the other."""
    us = start()
    with pytest.raises(SagaRejected, match="NUL"):
        us.run("o-\x00-8", "order", {})


def test_an_unknown_definition_is_refused(start: Start) -> None:
    """Starting a definition nobody registered names the ones that are."""
    us = start()
    with pytest.raises(UnknownDefinition, match=r"refund-everything.*known: order"):
        us.run("x-1", "refund-everything", {})


def test_a_step_after_the_pivot_recovers_forward(start: Start, tmp_path: Path) -> None:
    """After an irreversible step, a failing step is retried and then parked, never
    compensated."""
    definition = SagaDefinition(
        "order",
        1,
        [
            Step("create", "orders", "create", "cancel", retry=FAST),
            Step(
                "charge",
                "payments",
                "charge",
                irreversible=Irreversible("log and alert"),
                retry=FAST,
            ),
            Step("ship", "inventory", "ship", "release", retry=FAST),
        ],
    )
    us = start([definition])
    finished = us.run("p-1", "order", {"fail": {"ship": -1}})
    assert finished.status == "failed"
    assert finished.outstanding == ("finish step 'ship' (ship)",)
    assert timeline(tmp_path, "p-1") == [("create", "do"), ("charge", "do")]


def test_an_app_actor_starts_a_saga_and_gets_the_terminal_reply(start: Start) -> None:
    """An application actor inside the same actor system sends StartSaga and receives
    SagaFinished."""
    us = start()
    with us.private() as handle:
        shop = handle.createActor(Shop)
        reply = handle.ask(shop, PlaceOrder(us.address, "app-1", {}), 30)
    assert isinstance(reply, SagaFinished)
    assert reply.status == "completed"


async def _run_async(us: Understudy) -> tuple[SagaFinished, str]:
    finished = await us.run_async("a-1", "order", {})
    return finished, await us.status_async("a-1")


@pytest.mark.asyncio
async def test_asyncio_code_starts_and_queries_sagas(start: Start) -> None:
    """From asyncio: await a start-and-wait and a status query."""
    us = start()
    finished, status = await _run_async(us)
    assert finished.status == "completed"
    assert status == "completed"


def test_a_new_runtime_resumes_unfinished_sagas(
    start: Start, tmp_path: Path, saga_store: str
) -> None:
    """Sagas left unfinished by one runtime are finished by the next one on the same store."""
    us = start()
    accepted = us.submit("r-1", "order", {"fail": {"charge": -1}})
    assert not accepted.existing
    us.shutdown()
    record = stored(saga_store, "r-1")[0]
    assert record is not None
    status = record.status
    assert status in ("running", "compensating", "compensated")
    again = start()
    record = again.wait("r-1", timeout=30)
    assert record.status == "compensated"
    steps = timeline(tmp_path, "r-1")
    assert steps == [("create", "do"), ("reserve", "do"), ("reserve", "undo"), ("create", "undo")]


def test_each_start_of_one_saga_gets_its_own_kind_of_answer(start: Start) -> None:
    """A waiting start and a non-waiting start of the same id in flight together: the first is
    answered with the end, the second with the acceptance."""
    us = start()
    waiting = us.submit_future("twice", "order", {})
    accepted = us.submit_future("twice", "order", {}, wait=False)
    assert isinstance(waiting.result(30), SagaFinished)
    assert isinstance(accepted.result(30), SagaAccepted)


def test_only_the_first_of_concurrent_starts_creates_the_saga(start: Start) -> None:
    """Starts of one new id in flight together: the first is told it created the saga, the
    others that it already existed."""
    us = start()
    futures = [us.submit_future("same", "order", {}, wait=False) for _ in range(3)]
    assert [False, True, True] == [f.result(30).existing for f in futures]
