"""Operators' verbs and compensation debt on a running understudy: both actor system bases,
SQLite and PostgreSQL stores, the participants' own ledgers as the witness.

Each verb is applied by the saga host that owns the saga (exactly once, in the transaction of
the saga's transition), recorded in the timeline with who and why, or refused with the reason;
with no runtime running, an operator given the definitions applies it itself and the next
runtime carries it out. A crash at the moment a verb is applied loses nothing and applies
nothing twice.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
from conftest import STORES, order_definition, start_runtime, store_location, stored, timeline
from mutants import FailsCommandsOfOneSaga

from understudy import (
    COMPENSATED,
    COMPLETED,
    FAILED,
    RetryPolicy,
    SagaDefinition,
    Understudy,
    diagnosis,
)
from understudy.errors import SagaNotFound, VerbRefused
from understudy.failpoints import Fault
from understudy.operate import Operator
from understudy.persistence import open_store
from understudy.persistence.base import APPLIED, PENDING, RUNNING

ROOT = Path(__file__).resolve().parent.parent
#: A charge that fails waits this long before its retry: long enough that only an operator's
#: retry (or nothing) sends it again within a test.
SLOW = RetryPolicy(attempts=5, backoff=60.0, max_backoff=60.0)


def slow_charge() -> SagaDefinition:
    """The order saga whose charge, once failed, backs off for a minute."""
    definition = order_definition()
    steps = list(definition.steps)
    steps[2] = attrs.evolve(steps[2], retry=SLOW)
    return SagaDefinition("order", 1, steps)


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def saga_store(store_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return store_location(store_kind, request, tmp_path)


#: The bases and stores of the tests that run through ``start``: both bases on SQLite, and
#: PostgreSQL on the multi-process base only. What a verb does to the store (its command and
#: the saga's transition in one transaction, the refusals, the debt) is the store's code, the
#: same on either base; what the base changes (a saga host in a process of its own) is tested
#: on both with SQLite. The tests of crashes, which are about the base, keep both bases on both
#: stores.
ON_BOTH_BASES_AND_POSTGRES = pytest.mark.parametrize(
    "base,store_kind",
    [
        ("simpleSystemBase", "sqlite"),
        ("multiprocTCPBase", "sqlite"),
        ("multiprocTCPBase", "postgres"),
    ],
)


def waiting_in_backoff(us: Understudy, saga_id: str, payload: dict[str, Any]) -> None:
    """Start ``saga_id`` and return once its charge failed and waits for its retry."""
    us.submit(saga_id, "order", payload)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        _record, events = stored(us._store_config.location, saga_id)
        if any(e.kind == "retry-scheduled" and e.step == 2 for e in events):
            return
        time.sleep(0.05)
    raise AssertionError(f"saga {saga_id} never backed off at its charge")


def operator_events(location: str, saga_id: str) -> list[dict[str, Any]]:
    _record, events = stored(location, saga_id)
    return [e.detail for e in events if e.kind in ("operator", "operator-refused")]


@ON_BOTH_BASES_AND_POSTGRES
def test_cancel_compensates_what_ran_in_reverse_order_and_is_recorded(
    start: Callable[..., Understudy], saga_store: str, tmp_path: Path
) -> None:
    us = start([slow_charge()])
    waiting_in_backoff(us, "c-1", {"fail": {"charge": 1}})
    with us.operator(who="alice") as op:
        done = op.cancel("c-1", why="the customer called it off")
    assert done.state == APPLIED and done.who == "alice"
    record = us.wait("c-1", timeout=30)
    assert record.status == COMPENSATED
    assert record.reason == "cancelled by alice: the customer called it off"
    # the participants' ledgers: forward steps, then every compensation in reverse order
    # (the charge never applied, so its refund was a no-op and left no effect)
    assert timeline(tmp_path, "c-1") == [
        ("create", "do"),
        ("reserve", "do"),
        ("reserve", "undo"),
        ("create", "undo"),
    ]
    (event,) = operator_events(saga_store, "c-1")
    assert event["verb"] == "cancel" and event["who"] == "alice"
    assert event["why"] == "the customer called it off" and event["command"] == done.id


@ON_BOTH_BASES_AND_POSTGRES
def test_pause_holds_a_saga_and_resume_and_retry_take_it_on(
    start: Callable[..., Understudy], saga_store: str, tmp_path: Path
) -> None:
    us = start([slow_charge()])
    waiting_in_backoff(us, "p-1", {"fail": {"charge": 1}})
    with us.operator(who="ops") as op:
        op.pause("p-1", why="checking the payment provider")
        with pytest.raises(VerbRefused, match="it is paused by ops: resume it"):
            op.retry("p-1", why="too soon")
        with pytest.raises(VerbRefused, match="paused already by ops"):
            op.pause("p-1", why="twice")
        op.resume("p-1", why="provider is fine")
        op.retry("p-1", why="skip the minute of backoff")
    assert us.wait("p-1", timeout=30).status == COMPLETED
    verbs = [(e["verb"], "refused" in e) for e in operator_events(saga_store, "p-1")]
    assert verbs == [
        ("pause", False),
        ("retry", True),
        ("pause", True),
        ("resume", False),
        ("retry", False),
    ]


@ON_BOTH_BASES_AND_POSTGRES
def test_a_compensation_that_exhausts_its_retries_is_debt_until_resolved(
    start: Callable[..., Understudy], saga_store: str, tmp_path: Path
) -> None:
    us = start()
    us.submit("d-1", "order", {"reject": "charge", "fail": {"release": -1}})
    parked = us.wait("d-1", timeout=30)
    assert parked.status == FAILED, "a saga that owes a compensation is never compensated"
    with us.operator(who="carol") as op:
        (debt,) = op.debt()
        assert (debt.saga_id, debt.name, debt.participant, debt.compensation) == (
            "d-1",
            "reserve",
            "inventory",
            "release",
        )
        assert debt.attempts == 3 and "release failing on purpose" in debt.error
        with pytest.raises(VerbRefused, match="'create' owes no compensation that is due"):
            op.resolve("d-1", step="create", why="out of order")
        op.resolve("d-1", step="reserve", why="released by hand in the warehouse tool")
        assert us.wait("d-1", timeout=30).status == COMPENSATED
        assert op.debt() == []
    # the release never applied; the create was compensated after the debt was settled
    assert timeline(tmp_path, "d-1") == [("create", "do"), ("reserve", "do"), ("create", "undo")]
    _record, events = stored(saga_store, "d-1")
    assert [e.kind for e in events if e.kind.startswith("debt")] == ["debt", "debt-settled"]


@ON_BOTH_BASES_AND_POSTGRES
def test_retry_pays_debt_and_abandon_records_every_compensation_as_debt(
    start: Callable[..., Understudy], saga_store: str, tmp_path: Path
) -> None:
    us = start([slow_charge()])
    us.submit("r-1", "order", {"reject": "charge", "fail": {"release": 3}})
    assert us.wait("r-1", timeout=30).status == FAILED
    waiting_in_backoff(us, "a-1", {"fail": {"charge": 1}})
    with us.operator(who="dave") as op:
        op.retry("r-1", why="the warehouse is back")  # the fourth release succeeds
        assert us.wait("r-1", timeout=30).status == COMPENSATED
        op.abandon("a-1", why="written off")
        assert us.status("a-1") == FAILED
        owed = sorted((d.saga_id, d.name) for d in op.debt())
        assert owed == [("a-1", "charge"), ("a-1", "create"), ("a-1", "reserve")]
    assert ("reserve", "undo") in timeline(tmp_path, "r-1")
    assert all(kind == "do" for _step, kind in timeline(tmp_path, "a-1")), "nothing undone"


@ON_BOTH_BASES_AND_POSTGRES
def test_skip_gives_a_step_its_result_by_hand(
    start: Callable[..., Understudy], saga_store: str
) -> None:
    us = start([slow_charge()])
    waiting_in_backoff(us, "s-1", {"fail": {"charge": 1}})
    with us.operator(who="erin") as op:
        with pytest.raises(VerbRefused, match="the step it is at is 'charge', not 'create'"):
            op.skip("s-1", step="create", result=None, why="wrong step")
        op.skip("s-1", step="charge", result={"paid": "by bank transfer"}, why="paid by hand")
    record = us.wait("s-1", timeout=30)
    assert record.status == COMPLETED
    finished = us.run("s-1", "order", {})  # a repeated start answers the stored outcome
    assert finished.results["charge"] == {"paid": "by bank transfer"}


@ON_BOTH_BASES_AND_POSTGRES
def test_verbs_on_unknown_and_finished_sagas_are_refused_with_the_reason(
    start: Callable[..., Understudy], saga_store: str
) -> None:
    us = start()
    us.run("f-1", "order", {})
    with us.operator() as op:
        with pytest.raises(SagaNotFound, match="no saga with id 'nope'"):
            op.cancel("nope", why="typo")
        with pytest.raises(VerbRefused, match="it is completed, and a finished saga is never"):
            op.cancel("f-1", why="too late")
        with pytest.raises(VerbRefused, match="needs a reason"):
            op.pause("f-1", why=" ")
    (refusal,) = operator_events(saga_store, "f-1")
    assert refusal["refused"].startswith("cannot cancel saga 'f-1'")


@pytest.mark.parametrize("base", ["simpleSystemBase"])
def test_with_no_runtime_a_verb_waits_or_is_applied_by_an_operator_given_definitions(
    tmp_path: Path, saga_store: str, base: str
) -> None:
    definition = slow_charge()
    with start_runtime(tmp_path, [definition], store=saga_store, base=base) as us:
        waiting_in_backoff(us, "o-1", {"fail": {"charge": 1}})
        waiting_in_backoff(us, "o-2", {"fail": {"charge": 1}})
    # Nothing runs: without definitions the command is stored and waits for a runtime.
    with Operator(saga_store, who="night shift", wait=0.5) as op:
        queued = op.cancel("o-1", why="stop it tonight")
        assert queued.state == PENDING
    # Given the definitions, an operator applies it here: the compensations become intents
    # that the next runtime sends.
    with Operator(saga_store, who="night shift", definitions=[definition]) as op:
        assert op.cancel("o-2", why="stop this one too").state == APPLIED
    with open_store(saga_store, read_only=True) as store:
        assert store.get("o-2").status == "compensating"  # type: ignore[union-attr]
        assert store.command(queued.id).state == PENDING  # type: ignore[union-attr]
    with start_runtime(tmp_path, [definition], store=saga_store, base=base) as us:
        assert us.wait("o-1", timeout=30).status == COMPENSATED
        assert us.wait("o-2", timeout=30).status == COMPENSATED
    for saga_id in ("o-1", "o-2"):
        assert timeline(tmp_path, saga_id)[-2:] == [("reserve", "undo"), ("create", "undo")]


@pytest.mark.parametrize(
    ("point", "action", "base"),
    [
        ("host.before_verb", "raise", "simpleSystemBase"),
        ("host.before_verb", "kill", "multiprocTCPBase"),
        ("host.after_verb", "kill", "multiprocTCPBase"),
        ("host.before_commit", "kill", "multiprocTCPBase"),
    ],
)
def test_a_crash_at_the_moment_a_verb_is_applied_applies_it_once(
    tmp_path: Path, saga_store: str, point: str, action: str, base: str
) -> None:
    fired = tmp_path / "fired"
    if point == "host.before_commit":
        # Hit by every batch: the second runtime's first batch is the saga's resume, its
        # second the cancel's (nothing else happens meanwhile: the charge backs off a minute).
        fault = Fault(point, action, nth=2, once_file=str(fired))
    else:
        fault = Fault(point, action, nth=1, once_file=str(fired), saga_id="v-1")
    with start_runtime(
        tmp_path, [slow_charge()], store=saga_store, base=base, hosts=1, faults=[]
    ) as us:
        waiting_in_backoff(us, "v-1", {"fail": {"charge": 1}})
    with start_runtime(
        tmp_path, [slow_charge()], store=saga_store, base=base, hosts=1, faults=[fault]
    ) as us:
        with us.operator(who="frank", wait=30) as op:
            done = op.cancel("v-1", why="crash test")
        assert done.state == APPLIED
        assert us.wait("v-1", timeout=30).status == COMPENSATED
    assert fired.exists(), f"the fault at {point} never fired"
    applied = [e for e in operator_events(saga_store, "v-1") if "refused" not in e]
    assert len(applied) == 1, applied
    assert timeline(tmp_path, "v-1") == [
        ("create", "do"),
        ("reserve", "do"),
        ("reserve", "undo"),
        ("create", "undo"),
    ]


@ON_BOTH_BASES_AND_POSTGRES
def test_the_command_line_verbs_and_debt(
    tmp_path: Path, saga_store: str, start: Callable[..., Understudy]
) -> None:
    us = start([slow_charge()])
    waiting_in_backoff(us, "cli-1", {"fail": {"charge": 1}})
    us.submit("cli-2", "order", {"reject": "charge", "fail": {"release": -1}})
    assert us.wait("cli-2", timeout=30).status == FAILED

    def understudy(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "understudy.cli", *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
            timeout=120,
        )

    paused = understudy("pause", saga_store, "cli-1", "--why", "look first", "--who", "gina")
    assert paused.returncode == 0, paused.stderr
    assert "pause of saga cli-1 by gina" in paused.stdout and "applied" in paused.stdout
    refused = understudy("pause", saga_store, "cli-1", "--why", "again")
    assert refused.returncode == 1
    assert "refused: cannot pause saga 'cli-1'" in refused.stderr
    assert understudy("cancel", saga_store, "cli-1", "--why", "no").returncode == 0
    listed = understudy("list", saga_store).stdout.splitlines()
    assert listed[1].startswith("compensation debt: 1 owed by 1 saga(s) (understudy debt ")
    debt = understudy("debt", saga_store)
    assert debt.returncode == 0
    assert "1 compensation(s) owed" in debt.stdout and "inventory.release" in debt.stdout
    settle = understudy("debt", saga_store, "--settle", "cli-2", "reserve", "--why", "by hand")
    assert settle.returncode == 0, settle.stderr
    assert us.wait("cli-2", timeout=30).status == COMPENSATED
    assert us.wait("cli-1", timeout=30).status == COMPENSATED
    assert understudy("debt", saga_store).stdout.strip() == "no compensation debt"
    usage = understudy("skip", saga_store, "cli-1", "--why", "x", "--step", "charge")
    assert usage.returncode == 2 and "--result" in usage.stderr


@ON_BOTH_BASES_AND_POSTGRES
def test_a_paused_saga_says_who_paused_it_and_a_pending_verb_is_shown(
    tmp_path: Path, saga_store: str, start: Callable[..., Understudy]
) -> None:
    from understudy.cli import main

    us = start([slow_charge()])
    waiting_in_backoff(us, "w-1", {"fail": {"charge": 1}})
    with us.operator(who="hana") as op:
        op.pause("w-1", why="the provider is in maintenance")
    with open_store(saga_store, read_only=True) as store:
        record = store.get("w-1")
        assert record is not None
        found = diagnosis.waiting_on(store, record)
    assert isinstance(found.wait, diagnosis.Paused)
    assert (found.wait.who, found.wait.why) == ("hana", "the provider is in maintenance")
    assert isinstance(found.wait.then, diagnosis.Backoff), "it still waits for its retry"
    assert not found.is_stuck, "a pause is an operator's choice, not a stuck saga"
    us.shutdown()
    with Operator(saga_store, who="ivan", wait=0.2) as op:
        assert op.resume("w-1", why="maintenance over").state == PENDING
    import contextlib
    import io

    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        assert main(["show", saga_store, "w-1"]) == 0
    text = shown.getvalue()
    assert "paused by hana" in text and "the provider is in maintenance" in text
    assert "operators' commands not applied yet" in text
    assert "resume by ivan" in text and "maintenance over" in text


def test_a_start_while_an_operator_holds_a_shard_waits_for_it(
    tmp_path: Path, saga_store: str
) -> None:
    import threading

    from understudy.supervisors.leases import OPERATOR_HOLDER, about_me

    with start_runtime(tmp_path, [slow_charge()], store=saga_store) as us:
        waiting_in_backoff(us, "h-1", {"fail": {"charge": 1}})
    with open_store(saga_store) as store:
        lease = store.acquire(0, f"{OPERATOR_HOLDER}test", 30.0, about_me(None))
        assert lease is not None

    def let_go() -> None:
        with open_store(saga_store) as other:
            other.expire(0, lease.epoch)

    timer = threading.Timer(1.0, let_go)
    timer.start()
    try:
        with start_runtime(tmp_path, [slow_charge()], store=saga_store) as us:
            with us.operator(who="judy") as op:
                op.cancel("h-1", why="after the operator let go")
            assert us.wait("h-1", timeout=30).status == COMPENSATED
    finally:
        timer.join()


def test_a_command_that_cannot_be_applied_holds_up_no_other(tmp_path: Path) -> None:
    """A command whose application keeps raising outside its saga's guard stays pending (and is
    logged at every poll); the host's intake goes on and applies the commands after it (an
    exception escaping the intake would end its polling: nothing more would be applied until
    a restart)."""
    with start_runtime(tmp_path, [slow_charge()], host_class=FailsCommandsOfOneSaga) as us:
        waiting_in_backoff(us, "b-1", {"fail": {"charge": 1}})
        waiting_in_backoff(us, "b-2", {"fail": {"charge": 1}})
        with us.operator(who="ops", wait=1.0) as op:
            stuck = op.cancel("b-1", why="first")
        with us.operator(who="ops") as op:
            applied = op.cancel("b-2", why="second")
        assert (PENDING, APPLIED) == (stuck.state, applied.state)
        assert COMPENSATED == us.wait("b-2", timeout=30).status
        assert RUNNING == us.status("b-1")
