"""Operators' verbs as inputs of the saga state machine: pure, no actors, no database.

Each verb's effect and each refusal, and the invariants they keep: cancel compensates in reverse
order and never skips, pause holds the next send without an intent, debt is never dropped and a
saga owing anything is never reported compensated, and every state a verb leaves restores from
its snapshot (so a crash right after a verb resumes it as it was).
"""

from __future__ import annotations

from typing import Any

import pytest
from test_saga_machine import reply as answer
from test_saga_machine import sends

from understudy import (
    COMPENSATED,
    COMPLETED,
    FAILED,
    Irreversible,
    RetryPolicy,
    SagaDefinition,
    Step,
)
from understudy.actors.saga import Finish, Saga, Send, Timer, check_state
from understudy.actors.verbs import operate
from understudy.errors import VerbRefused

ONCE = RetryPolicy(attempts=1)
TWICE = RetryPolicy(attempts=2, backoff=5.0)
ORDER = SagaDefinition(
    "order",
    1,
    [
        Step("create", "orders", "create", "cancel", retry=ONCE, compensation_retry=ONCE),
        Step("reserve", "stock", "reserve", "release", retry=TWICE, compensation_retry=ONCE),
        Step("charge", "payments", "charge", "refund", retry=ONCE, compensation_retry=ONCE),
    ],
)
PIVOTED = SagaDefinition(
    "pivoted",
    1,
    [
        Step("create", "orders", "create", "cancel", retry=ONCE),
        Step(
            "ship",
            "shipping",
            "ship",
            None,
            retry=ONCE,
            irreversible=Irreversible("recall the parcel"),
        ),
        Step("notify", "mail", "send", None, retry=ONCE, irreversible=Irreversible("-")),
    ],
)
_commands = iter(range(1, 1_000_000))


def fresh(definition: SagaDefinition = ORDER) -> Saga:
    return Saga.restore("s", definition, {}, 1, None, 0, 0)


def verb(saga: Saga, name: str, now: float = 10.0, **args: Any) -> list[Any]:
    commands = operate(saga, name, args, "alice", f"why {name}", next(_commands), now)
    assert check_state(saga.state, saga.definition) is None
    return commands


def finish(commands: list[Any] | None) -> Finish | None:
    assert commands is not None
    found = [c for c in commands if isinstance(c, Finish)]
    return found[0] if found else None


def kinds(saga: Saga) -> list[str]:
    return [e.kind for e in saga.take_events()]


def at_step(n: int, definition: SagaDefinition = ORDER) -> tuple[Saga, Send]:
    """A saga whose first ``n`` steps are done and whose step ``n`` request is out."""
    saga = fresh(definition)
    (request,) = sends(saga.begin(0.0))
    for i in range(n):
        (request,) = sends(saga.on_reply(answer(request), float(i + 1)))
    return saga, request


def restored(saga: Saga) -> Saga:
    """The saga as a restart rebuilds it from its snapshot."""
    return Saga.restore(saga.saga_id, saga.definition, {}, 2, saga.snapshot(), 1, 0)


def test_cancel_compensates_every_step_that_may_have_run_in_reverse_order() -> None:
    saga, out = at_step(2)  # create and reserve done, charge out (may apply)
    kinds(saga)
    (first,) = sends(verb(saga, "cancel"))
    assert [e.kind for e in saga.events] == ["operator", "aborted", "compensation-intent"]
    assert (first.request.kind, first.request.step) == ("undo", 2)
    assert saga.state.reason == "cancelled by alice: why cancel"
    (second,) = sends(saga.on_reply(answer(first), 11.0))
    (third,) = sends(saga.on_reply(answer(second), 12.0))
    assert [second.request.step, third.request.step] == [1, 0]
    done = finish(saga.on_reply(answer(third), 13.0))
    assert done is not None and done.status == COMPENSATED
    # the late reply of the cancelled forward request changes nothing
    assert saga.on_reply(answer(out), 14.0) is None


def test_cancel_is_refused_once_an_irreversible_step_has_run() -> None:
    saga, _out = at_step(2, PIVOTED)
    before = saga.snapshot()
    with pytest.raises(VerbRefused, match="irreversible step 'ship' has run"):
        verb(saga, "cancel")
    assert saga.snapshot() == before and saga.events[-1].kind != "operator"


def test_cancel_is_refused_while_compensating_and_for_a_finished_saga() -> None:
    saga, out = at_step(1)
    sends(saga.on_reply(answer(out, "rejected", reason="no stock"), 2.0))
    with pytest.raises(VerbRefused, match="already compensating"):
        verb(saga, "cancel")
    done, last = at_step(2)
    assert finish(done.on_reply(answer(last), 3.0)) is not None
    for name in ("cancel", "pause", "retry", "abandon"):
        with pytest.raises(VerbRefused, match="is completed, and a finished saga is never"):
            verb(done, name)


def test_pause_holds_the_next_send_without_an_intent_and_resume_sends_it() -> None:
    saga, out = at_step(0)
    assert verb(saga, "pause") == []
    # the reply to the request already out is recorded; the next step is held, not sent
    assert saga.on_reply(answer(out), 11.0) == []
    assert saga.state.held == ["do", 1, 1]
    assert saga.state.stack == [0], "a held step has no intent and is not on the stack"
    assert "intent" not in [e.kind for e in saga.events if e.step == 1]
    # a restart while paused keeps it held
    again = restored(saga)
    assert again.resume(12.0) == []
    (sent,) = sends(verb(again, "resume"))
    assert (sent.request.step, sent.request.attempt) == (1, 1)
    assert again.state.paused is None and again.state.held is None


def test_a_cancel_of_a_paused_saga_with_a_held_step_compensates_only_what_had_an_intent() -> None:
    saga, out = at_step(0)
    verb(saga, "pause")
    saga.on_reply(answer(out), 11.0)
    (undo,) = sends(verb(saga, "cancel"))
    assert (undo.request.kind, undo.request.step) == ("undo", 0)
    assert saga.state.held is None and saga.state.paused is None


def test_pause_twice_and_resume_without_pause_are_refused() -> None:
    saga, _out = at_step(0)
    with pytest.raises(VerbRefused, match="not paused"):
        verb(saga, "resume")
    verb(saga, "pause")
    with pytest.raises(VerbRefused, match="paused already by alice"):
        verb(saga, "pause")


def test_retry_skips_the_backoff_and_is_refused_while_a_request_is_out() -> None:
    saga, out = at_step(1)
    with pytest.raises(VerbRefused, match="request for step 'reserve' is out"):
        verb(saga, "retry")
    commands = saga.on_reply(answer(out, "error", reason="db down"), 2.0)
    assert [c for c in commands or [] if isinstance(c, Timer)]
    assert saga.state.waiting is not None
    (again,) = sends(verb(saga, "retry", now=3.0))
    assert (again.request.step, again.request.attempt, again.request.key) == (
        1,
        2,
        out.request.key,
    )


def test_a_compensation_that_exhausts_its_retries_becomes_debt_and_the_saga_parks() -> None:
    saga, out = at_step(1)
    (undo,) = sends(saga.on_reply(answer(out, "rejected", reason="no stock"), 2.0))
    assert undo.request.step == 1
    parked = finish(saga.on_reply(answer(undo, "error", reason="stock db gone"), 3.0))
    assert parked is not None and parked.status == FAILED
    assert saga.state.debt == [[1, "stock db gone", 1, 3.0]]
    assert saga.state.stack == [0], "the earlier compensation waits behind the debt (I5)"
    debt = [e for e in saga.events if e.kind == "debt"]
    assert debt and debt[0].detail["participant"] == "stock"
    assert debt[0].detail["compensation"] == "release"
    assert parked.outstanding[0].startswith("compensate step 'reserve' (release): owed")
    assert parked.outstanding[1] == "compensate step 'create' (cancel)"


def test_retry_of_debt_pays_it_then_compensates_the_rest() -> None:
    saga, out = at_step(1)
    (undo,) = sends(saga.on_reply(answer(out, "rejected", reason="no"), 2.0))
    saga.on_reply(answer(undo, "error", reason="gone"), 3.0)
    again = restored(saga)
    (paid,) = sends(verb(again, "retry"))
    assert (paid.request.kind, paid.request.step, paid.request.key) == (
        "undo",
        1,
        undo.request.key,
    )
    assert again.state.debt == [] and again.state.stack == [0, 1]
    (last,) = sends(again.on_reply(answer(paid, incarnation=2), 4.0))
    done = finish(again.on_reply(answer(last, incarnation=2), 5.0))
    assert done is not None and done.status == COMPENSATED


def test_resolve_settles_debt_and_the_saga_goes_on_compensating() -> None:
    saga, out = at_step(1)
    (undo,) = sends(saga.on_reply(answer(out, "rejected", reason="no"), 2.0))
    saga.on_reply(answer(undo, "error", reason="gone"), 3.0)
    with pytest.raises(VerbRefused, match="step 'create' owes no compensation that is due"):
        verb(saga, "resolve", step="create")
    (next_undo,) = sends(verb(saga, "resolve", step="reserve"))
    assert next_undo.request.step == 0
    settled = [e for e in saga.events if e.kind == "debt-settled"]
    assert settled and settled[0].detail == {
        "name": "reserve",
        "who": "alice",
        "note": "why resolve",
    }
    done = finish(saga.on_reply(answer(next_undo), 5.0))
    assert done is not None and done.status == COMPENSATED
    assert done.reason == "step 'reserve' was rejected: no", "why it compensated, not the debt"


def test_abandon_records_every_outstanding_compensation_as_debt_and_never_reports_compensated() -> (
    None
):
    saga, _out = at_step(2)
    parked = finish(verb(saga, "abandon"))
    assert parked is not None and parked.status == FAILED
    assert [entry[0] for entry in saga.state.debt] == [2, 1, 0]
    assert saga.state.stack == []
    assert len([e for e in saga.events if e.kind == "debt"]) == 3
    # settling two of three leaves it parked; the third makes it compensated
    for step in ("charge", "reserve"):
        parked = finish(verb(saga, "resolve", step=step))
        assert parked is not None and parked.status == FAILED
    done = finish(verb(saga, "resolve", step="create"))
    assert done is not None and done.status == COMPENSATED


def test_skip_gives_the_current_step_a_result_and_goes_on() -> None:
    saga, out = at_step(1)
    with pytest.raises(VerbRefused, match="could still apply"):
        verb(saga, "skip", step="reserve", result={"by": "hand"})
    saga.on_reply(answer(out, "error", reason="down"), 2.0)
    with pytest.raises(VerbRefused, match="the step it is at is 'reserve', not 'charge'"):
        verb(saga, "skip", step="charge", result=None)
    with pytest.raises(VerbRefused, match="has no step 'nope'; its steps are create"):
        verb(saga, "skip", step="nope", result=None)
    (charge,) = sends(verb(saga, "skip", step="reserve", result={"by": "hand"}))
    assert charge.request.step == 2
    assert saga.state.results["reserve"] == {"by": "hand"}
    done = finish(saga.on_reply(answer(charge), 4.0))
    assert done is not None and done.status == COMPLETED


def test_retry_takes_a_parked_saga_up_again_where_it_stopped_forward() -> None:
    saga, out = at_step(2, PIVOTED)  # create, ship done (pivot passed), notify out
    parked = finish(saga.on_reply(answer(out, "error", reason="smtp down"), 3.0))
    assert parked is not None and parked.status == FAILED
    again = restored(saga)
    again.state.recovery_attempts = 3
    (resent,) = sends(verb(again, "retry"))
    assert (resent.request.step, resent.request.attempt) == (2, 2)
    assert again.state.recovery_attempts == 0 and again.status == "running"
    done = finish(again.on_reply(answer(resent, incarnation=2), 5.0))
    assert done is not None and done.status == COMPLETED


def test_a_parked_overflowed_saga_cannot_be_retried() -> None:
    saga, _out = at_step(1)
    saga.overflow(10, 5, 2.0)
    with pytest.raises(VerbRefused, match="outgrew the snapshot cap"):
        verb(saga, "retry")


def test_snapshots_written_before_the_verbs_existed_still_restore() -> None:
    from understudy import codec

    saga, _out = at_step(1)
    old = codec.decode(saga.snapshot(), "snapshot")
    for later in ("paused", "held", "debt", "stopped_in", "cause"):
        del old[later]
    back = Saga.restore("s", ORDER, {}, 2, codec.encode(old, "snapshot"), 1, 0)
    assert back.state.debt == [] and back.state.paused is None


def test_unknown_verbs_are_refused() -> None:
    saga, _out = at_step(0)
    with pytest.raises(VerbRefused, match="unknown verb 'delete'"):
        verb(saga, "delete")
