"""The saga state machine on its own: pure inputs and outputs, no actors, no database."""

from __future__ import annotations

import pytest

from understudy import Irreversible, RetryPolicy, SagaDefinition, Step
from understudy.actors.saga import Finish, Saga, Send, Timer
from understudy.messages import StepReply

ONCE = RetryPolicy(attempts=1)
ORDER = SagaDefinition(
    "order",
    1,
    [
        Step("create", "orders", "create", "cancel", retry=ONCE),
        Step("charge", "payments", "charge", "refund", retry=RetryPolicy(attempts=2)),
    ],
)


def fresh(definition: SagaDefinition = ORDER, incarnation: int = 1) -> Saga:
    return Saga.restore("s", definition, {}, incarnation, None, 0, 0)


def reply(request: Send, outcome: str = "ok", **changes: object) -> StepReply:
    r = request.request
    fields = dict(
        saga_id=r.saga_id,
        step=r.step,
        kind=r.kind,
        key=r.key,
        attempt=r.attempt,
        incarnation=r.incarnation,
        outcome=outcome,
    )
    fields.update(changes)
    return StepReply(**fields)  # type: ignore[arg-type]


def sends(commands: list[object] | None) -> list[Send]:
    assert commands is not None
    return [c for c in commands if isinstance(c, Send)]


def test_a_reply_from_another_incarnation_or_attempt_changes_nothing() -> None:
    """Stale replies (old incarnation, other attempt, other step) are ignored."""
    saga = fresh(incarnation=2)
    (first,) = sends(saga.begin(0.0))
    before = saga.snapshot()
    assert saga.on_reply(reply(first, incarnation=1), 1.0) is None
    assert saga.on_reply(reply(first, attempt=7), 1.0) is None
    assert saga.on_reply(reply(first, step=1), 1.0) is None
    assert before == saga.snapshot()


def test_a_duplicated_reply_counts_once() -> None:
    """The second copy of a reply finds nothing outstanding and changes nothing."""
    saga = fresh()
    (first,) = sends(saga.begin(0.0))
    assert sends(saga.on_reply(reply(first), 1.0))[0].request.step == 1
    snapshot = saga.snapshot()
    assert saga.on_reply(reply(first), 1.0) is None
    assert snapshot == saga.snapshot()


def test_keys_stay_the_same_across_attempts_and_restarts() -> None:
    """A retry and a resend after restart carry the key of the first attempt."""
    saga = fresh()
    (first,) = sends(saga.begin(0.0))
    (second,) = sends(saga.on_reply(reply(first), 1.0))
    commands = saga.on_reply(reply(second, outcome="error", reason="boom"), 2.0)
    assert commands is not None
    (timer,) = [c for c in commands if isinstance(c, Timer)]
    (retry,) = sends(saga.on_timer(timer.token, 100.0))
    assert (second.request.key, 2) == (retry.request.key, retry.request.attempt)
    restored = Saga.restore("s", ORDER, {}, 2, saga.snapshot(), 3, 1)
    (resent,) = sends(restored.resume(200.0))
    assert (retry.request.key, retry.request.attempt, 2) == (
        resent.request.key,
        resent.request.attempt,
        resent.request.incarnation,
    )


def test_a_timer_that_fires_early_waits_out_the_rest() -> None:
    """If the clock went back, a deadline timer re-arms instead of timing out."""
    saga = fresh()
    commands = saga.begin(100.0)
    (timer,) = [c for c in commands if isinstance(c, Timer)]
    again = saga.on_timer(timer.token, 50.0)
    assert again is not None and [type(c) for c in again] == [Timer]
    assert [e for e in saga.take_events() if e.kind == "timeout"] == []


def test_a_stale_timer_token_changes_nothing() -> None:
    """The first step's deadline timer is ignored once the saga has moved to the next step."""
    saga = fresh()
    commands = saga.begin(0.0)
    (old_timer,) = [c for c in commands if isinstance(c, Timer)]
    saga.on_reply(reply(sends(commands)[0]), 1.0)
    snapshot = saga.snapshot()
    assert saga.on_timer(old_timer.token, 1000.0) is None
    assert snapshot == saga.snapshot()


def test_recovery_policy_compensate_undoes_what_started() -> None:
    """A definition that recovers by compensating aborts a mid-forward saga on resume."""
    definition = SagaDefinition("order", 1, ORDER.steps, on_recovery="compensate")
    saga = fresh(definition)
    saga.begin(0.0)
    restored = Saga.restore("s", definition, {}, 2, saga.snapshot(), 1, 1)
    (undo,) = sends(restored.resume(1.0))
    assert (undo.request.kind, undo.request.step) == ("undo", 0)
    assert restored.status == "compensating"


def test_a_rejected_pivot_compensates_earlier_steps_and_skips_itself() -> None:
    """The pivot refusing means it never applied: earlier steps are undone, it is skipped."""
    definition = SagaDefinition(
        "order",
        1,
        [
            Step("create", "orders", "create", "cancel"),
            Step("charge", "payments", "charge", irreversible=Irreversible("alert")),
        ],
    )
    saga = fresh(definition)
    (first,) = sends(saga.begin(0.0))
    (pivot,) = sends(saga.on_reply(reply(first), 1.0))
    (undo,) = sends(saga.on_reply(reply(pivot, outcome="rejected", reason="no"), 2.0))
    assert (undo.request.kind, undo.request.step) == ("undo", 0)
    kinds = [e.kind for e in saga.take_events()]
    assert "compensation-skipped" in kinds
    finish = saga.on_reply(reply(undo), 3.0)
    assert finish is not None and isinstance(finish[0], Finish)
    assert finish[0].status == "compensated"


@pytest.mark.parametrize("outcome", ["error", "rejected"])
def test_a_pivot_that_may_have_applied_parks_rather_than_compensates(outcome: str) -> None:
    """A pivot that timed out or failed may have applied: the saga parks; a refusal means it
    did not, and the saga compensates."""
    definition = SagaDefinition(
        "order",
        1,
        [
            Step("create", "orders", "create", "cancel", retry=ONCE),
            Step("charge", "payments", "charge", irreversible=Irreversible("alert"), retry=ONCE),
        ],
    )
    saga = fresh(definition)
    (first,) = sends(saga.begin(0.0))
    (pivot,) = sends(saga.on_reply(reply(first), 1.0))
    commands = saga.on_reply(reply(pivot, outcome=outcome, reason="?"), 2.0)
    assert commands is not None
    expected = "failed" if outcome == "error" else "compensating"
    assert expected == saga.status


def test_a_crash_with_the_pivot_in_doubt_parks_even_when_recovery_compensates() -> None:
    """on_recovery="compensate" must not compensate around a pivot that may have applied: a
    crash while the pivot's request is out parks the saga, listing the step to finish."""
    definition = SagaDefinition(
        "order",
        1,
        [
            Step("create", "orders", "create", "cancel"),
            Step("ship", "shipping", "ship", irreversible=Irreversible("call the courier")),
        ],
        on_recovery="compensate",
    )
    saga = fresh(definition)
    (first,) = sends(saga.begin(0.0))
    sends(saga.on_reply(reply(first), 1.0))  # the pivot's request is out
    restored = Saga.restore("s", definition, {}, 2, saga.snapshot(), 1, 1)
    commands = restored.resume(2.0)
    assert [] == sends(commands)
    assert "failed" == restored.status
    assert ["finish step 'ship' (ship)"] == restored.state.outstanding
    assert "call the courier" in (restored.state.reason or "")
