"""The workflow state machine on its own: pure inputs and outputs, no actors, no database.

A workflow's steps declare the steps they depend on (``after``). These tests drive
:class:`~understudy.actors.workflow.Workflow` with its inputs (begin, replies, timers, resume
after a restore, park, overflow, operators' verbs) and check its commands, events and state
against its promises: fan-out and fan-in, requests narrowed to a step's ancestors, per-step
retries, timeouts and keys, stale replies ignored, compensation in reverse graph order with
debt never dropped, forward-only recovery after an irreversible step, pause and resume, and
snapshots that restore to the same machine; the definition's graph checks; the seven verbs
and their refusals. Seeded randomized tests run random graphs through random outcomes, stale
replies, restarts and pauses (and, in a second one, operators' verbs) and check the same
promises after every input and at the end of every run.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from test_saga_machine import reply as answer

from understudy import (
    COMPENSATED,
    COMPLETED,
    FAILED,
    Irreversible,
    RetryPolicy,
    SagaDefinition,
    Step,
    codec,
)
from understudy.actors.saga import Finish, Send, Timer
from understudy.actors.verbs import operate
from understudy.actors.workflow import Workflow, check_state
from understudy.definitions import WorkflowDefinition
from understudy.errors import CorruptRecord, DefinitionError, VerbRefused
from understudy.messages import StepReply
from understudy.persistence.base import COMPENSATING, RUNNING, Event

ONCE = RetryPolicy(attempts=1)
TWICE = RetryPolicy(attempts=2, backoff=5.0)
PAYLOAD = {"order": 7}


def step(name: str, after: str | list[str] | tuple[str, ...] = (), **options: Any) -> Step:
    """A compensatable step (``undo_<name>``) tried once, its compensation tried once."""
    options.setdefault("retry", ONCE)
    options.setdefault("compensation_retry", ONCE)
    if "irreversible" not in options:
        options.setdefault("compensation", f"undo_{name}")
    return Step(name, f"p_{name}", name, after=after, **options)


def final(name: str, after: str | list[str] | tuple[str, ...] = (), **options: Any) -> Step:
    """An irreversible step."""
    return step(name, after, irreversible=Irreversible(f"fix {name} by hand"), **options)


#: a -> (b, c) -> d: a fans out to b and c, which fan in to d.
DIAMOND = WorkflowDefinition(
    "diamond",
    1,
    [step("a"), step("b", "a"), step("c", "a", timeout=2.0), step("d", ["b", "c"])],
)
#: Two roots: a -> b, and x on its own.
FORK = WorkflowDefinition("fork", 1, [step("a"), step("b", "a"), step("x")])
#: A compensatable chain a -> pay (irreversible), and an independent compensatable branch x.
PAID = WorkflowDefinition("paid", 1, [step("a"), final("pay", "a"), step("x", retry=TWICE)])

_commands = iter(range(1, 1_000_000))


# --- helpers --------------------------------------------------------------------------------


def fresh(definition: WorkflowDefinition = DIAMOND, incarnation: int = 1) -> Workflow:
    return Workflow.restore("w", definition, PAYLOAD, incarnation, None, 0, 0)


def restored(w: Workflow, recovery_attempts: int = 1) -> Workflow:
    """The workflow as a restart rebuilds it from its snapshot (the next incarnation)."""
    return Workflow.restore(
        w.saga_id, w.definition, w.payload, w.incarnation + 1, w.snapshot(), 1, recovery_attempts
    )


def sent(commands: list[Any] | None) -> dict[str, Send]:
    """The requests in ``commands`` by step name (at most one per step)."""
    assert commands is not None
    found = [c for c in commands if isinstance(c, Send)]
    by_name = {c.request.step_name: c for c in found}
    assert len(by_name) == len(found), "two requests for one step in one transition"
    return by_name


def timers(commands: list[Any] | None) -> list[Timer]:
    assert commands is not None
    return [c for c in commands if isinstance(c, Timer)]


def finish(commands: list[Any] | None) -> Finish | None:
    assert commands is not None
    found = [c for c in commands if isinstance(c, Finish)]
    return found[0] if found else None


def kinds(w: Workflow, step: int | None = -1) -> list[str]:
    """The kinds of the events taken from ``w`` (only those of ``step`` unless -1)."""
    return [e.kind for e in w.take_events() if step == -1 or e.step == step]


def ok(request: Send, result: Any = None, **changes: Any) -> StepReply:
    return answer(request, "ok", result=result, **changes)


def verb(w: Workflow, name: str, now: float = 50.0, **args: Any) -> list[Any]:
    commands = operate(w, name, args, "alice", f"why {name}", next(_commands), now)
    assert check_state(w.state, w.definition) is None
    return commands


def refused(w: Workflow, name: str, match: str, **args: Any) -> None:
    """``name`` is refused for ``match`` and changes nothing."""
    before, events = w.snapshot(), list(w.events)
    with pytest.raises(VerbRefused, match=match):
        verb(w, name, **args)
    assert w.snapshot() == before and w.events == events


def sound(w: Workflow) -> None:
    """``w`` is a state its definition allows, and its snapshot restores to the same state."""
    assert check_state(w.state, w.definition) is None
    back = Workflow.restore(
        "w", w.definition, w.payload, 9, w.snapshot(), 1, w.state.recovery_attempts
    )
    assert back.state == w.state


def diamond_at_d() -> tuple[Workflow, dict[str, Send]]:
    """a, b and c done, d's request out."""
    w = fresh()
    out = sent(w.begin(0.0))
    out |= sent(w.on_reply(ok(out["a"], {"id": 1}), 1.0))
    assert sent(w.on_reply(ok(out["b"], "B"), 2.0)) == {}
    out |= sent(w.on_reply(ok(out["c"], "C"), 3.0))
    return w, out


# --- fan-out, fan-in, what a request carries --------------------------------------------------


def test_independent_roots_start_together_and_a_step_fans_out_to_its_dependents() -> None:
    w = fresh(FORK)
    out = sent(w.begin(0.0))
    assert set(out) == {"a", "x"}, "both roots are sent at once"
    assert [(e.kind, e.step) for e in w.take_events()] == [
        ("started", None),
        ("intent", 0),
        ("intent", 2),
    ]
    w = fresh()
    out = sent(w.begin(0.0))
    assert set(out) == {"a"}
    both = sent(w.on_reply(ok(out["a"]), 1.0))
    assert set(both) == {"b", "c"}, "b and c depend only on a: they start in parallel"
    assert all(w.state.track[i][0] == "out" for i in (1, 2))


def test_a_step_starts_in_the_transition_that_records_the_last_of_its_dependencies() -> None:
    w = fresh()
    out = sent(w.begin(0.0))
    out |= sent(w.on_reply(ok(out["a"]), 1.0))
    w.take_events()
    assert sent(w.on_reply(ok(out["b"]), 2.0)) == {}, "d still waits for c"
    assert w.state.track[3] is None
    assert "intent" not in kinds(w)
    commands = w.on_reply(ok(out["c"]), 3.0)
    assert set(sent(commands)) == {"d"}
    assert [(e.kind, e.step) for e in w.take_events()] == [("done", 2), ("intent", 3)]
    # the request comes with its reply deadline right after it
    assert commands is not None and isinstance(commands[1], Timer)
    assert commands[1].delay == DIAMOND.steps[3].timeout


def test_completes_once_every_step_is_done_with_every_result() -> None:
    w, out = diamond_at_d()
    done = finish(w.on_reply(ok(out["d"], "D"), 4.0))
    assert done is not None and done.status == COMPLETED
    assert done.results == {"a": {"id": 1}, "b": "B", "c": "C", "d": "D"}
    assert w.terminal and w.state.outstanding == []
    assert w.take_events()[-1].kind == COMPLETED


def test_a_request_carries_only_its_ancestors_results() -> None:
    definition = WorkflowDefinition(
        "carry", 1, [step("a"), step("x"), step("b", "a"), step("c", "b"), step("y", "x")]
    )
    w = fresh(definition)
    out = sent(w.begin(0.0))
    assert out["a"].request.results == {} and out["a"].request.payload == PAYLOAD
    out |= sent(w.on_reply(ok(out["x"], "X"), 1.0))  # x done first: y starts
    assert out["y"].request.results == {"x": "X"}
    out |= sent(w.on_reply(ok(out["a"], "A"), 2.0))
    assert out["b"].request.results == {"a": "A"}, "not x: b does not depend on it"
    out |= sent(w.on_reply(ok(out["b"], "B"), 3.0))
    # transitive: c depends on b, b on a; x and y are another branch
    assert out["c"].request.results == {"a": "A", "b": "B"}
    assert out["c"].request.payload == PAYLOAD
    # a compensation carries the same
    undos = sent(w.on_reply(answer(out["c"], "rejected", reason="no"), 4.0))
    assert set(undos) == {"c", "y"}
    assert (undos["c"].request.kind, undos["c"].request.results) == ("undo", {"a": "A", "b": "B"})
    assert undos["y"].request.results == {"x": "X"}


def test_a_narrowed_step_carries_only_its_args_and_inputs() -> None:
    definition = WorkflowDefinition(
        "narrow",
        1,
        [
            step("a"),
            step("x"),
            step(
                "b",
                ["a", "x"],
                args={"mode": "fast"},
                inputs={"id": "a.id", "order": "payload.order"},
            ),
            step("c", "b", args={"only": 1}),
        ],
    )
    w = fresh(definition)
    out = sent(w.begin(0.0))
    out |= sent(w.on_reply(ok(out["x"], {"secret": 1}), 1.0))
    out |= sent(w.on_reply(ok(out["a"], {"id": 42, "other": "no"}), 2.0))
    b = out["b"].request
    assert (b.payload, b.results) == ({"mode": "fast", "id": 42, "order": 7}, {})
    out |= sent(w.on_reply(ok(out["b"], "B"), 3.0))
    assert (out["c"].request.payload, out["c"].request.results) == ({"only": 1}, {})
    (undo,) = sent(w.on_reply(answer(out["c"], "rejected"), 4.0)).values()
    assert (undo.request.payload, undo.request.results) == ({"only": 1}, {})


def test_a_step_whose_inputs_are_missing_is_refused_without_an_intent() -> None:
    definition = WorkflowDefinition(
        "missing", 1, [step("a"), step("x"), step("b", "a", inputs={"id": "a.id"})]
    )
    w = fresh(definition)
    out = sent(w.begin(0.0))
    w.take_events()
    undos = sent(w.on_reply(ok(out["a"], "no dict"), 1.0))
    events = w.take_events()
    assert [e.kind for e in events if e.step == 2] == ["rejected"], "no intent for b"
    assert "cannot be built" in events[1].detail["reason"]
    assert 2 not in w.state.started and w.state.track[2] is None
    # a (done) and x (still out) are compensated at once; b is not
    assert {n: s.request.kind for n, s in undos.items()} == {"a": "undo", "x": "undo"}
    assert w.state.failure is not None and w.state.failure[0] == "b"


# --- per-step retries, timeouts, keys, stale replies ------------------------------------------


def test_each_step_has_its_own_retries_and_timeout() -> None:
    definition = WorkflowDefinition(
        "retries",
        1,
        [
            step("a"),
            step("b", "a", retry=RetryPolicy(attempts=3, backoff=1.0), timeout=7.0),
            step("c", "a", retry=RetryPolicy(attempts=2, backoff=4.0), timeout=3.0),
        ],
    )
    w = fresh(definition)
    out = sent(w.begin(0.0))
    commands = w.on_reply(ok(out["a"]), 1.0)
    out |= sent(commands)
    by_delay = {t.delay: t for t in timers(commands)}
    assert set(by_delay) == {7.0, 3.0}, "each request has its step's reply deadline"
    # c times out: its retry is scheduled with c's backoff; b's request is untouched
    (retry_timer,) = timers(w.on_timer(by_delay[3.0].token, 4.5))
    assert retry_timer.delay == 4.0
    assert [e.kind for e in w.take_events()][-2:] == ["timeout", "retry-scheduled"]
    assert w.state.track[1][0] == "out" and w.state.track[2][:3] == ["due", "do", 2]
    # b fails: its own backoff (1.0), its own attempt count
    (b_timer,) = timers(w.on_reply(answer(out["b"], "error", reason="x"), 5.0))
    assert b_timer.delay == 1.0
    again = sent(w.on_timer(b_timer.token, 6.0))
    assert (again["b"].request.attempt, again["b"].request.key) == (2, out["b"].request.key)
    c_again = sent(w.on_timer(retry_timer.token, 8.5))
    assert (c_again["c"].request.attempt, c_again["c"].request.key) == (2, "w:2:do")
    # c's second failure is its last (attempts=2): the workflow compensates, b included
    undos = sent(w.on_reply(answer(c_again["c"], "error", reason="y"), 9.0))
    assert set(undos) == {"b", "c"}
    assert "failed after 2 attempt(s): y" in (w.state.reason or "")


def test_keys_are_saga_step_kind_and_stable_across_attempts_and_restarts() -> None:
    definition = WorkflowDefinition(
        "keys", 1, [step("a", retry=TWICE, compensation_retry=TWICE), step("b", "a")]
    )
    w = fresh(definition)
    first = sent(w.begin(0.0))["a"]
    assert (first.request.key, first.request.forward_key) == ("w:0:do", "w:0:do")
    (timer,) = timers(w.on_reply(answer(first, "error"), 1.0))
    second = sent(w.on_timer(timer.token, 10.0))["a"]
    assert (second.request.key, second.request.attempt) == ("w:0:do", 2)
    back = restored(w)
    resent = sent(back.resume(20.0))["a"]
    assert (resent.request.key, resent.request.attempt, resent.request.incarnation) == (
        "w:0:do",
        2,
        2,
    )
    assert [e.detail.get("resent") for e in back.take_events() if e.kind == "intent"] == [True]
    b = sent(back.on_reply(ok(resent), 21.0))["b"]
    undo = sent(back.on_reply(answer(b, "rejected"), 22.0))["b"]
    assert (undo.request.key, undo.request.forward_key) == ("w:1:undo", "w:1:do")
    undo_a = sent(back.on_reply(ok(undo), 23.0))["a"]
    (timer,) = timers(back.on_reply(answer(undo_a, "error"), 24.0))
    undo_a2 = sent(back.on_timer(timer.token, 30.0))["a"]
    again = restored(back)
    resent_undo = sent(again.resume(31.0))["a"]
    assert {undo_a.request.key, undo_a2.request.key, resent_undo.request.key} == {"w:0:undo"}
    assert (resent_undo.request.attempt, resent_undo.request.incarnation) == (2, 3)


def test_a_reply_counts_only_when_it_matches_the_steps_outstanding_request() -> None:
    w = fresh(FORK, incarnation=2)
    out = sent(w.begin(0.0))
    a, x = out["a"], out["x"]
    before = w.snapshot()
    w.take_events()
    for stale in (
        ok(a, incarnation=1),  # an earlier incarnation's
        ok(a, attempt=2),  # another attempt
        ok(a, kind="undo"),  # another kind
        ok(a, step=1),  # a step that has no request out
        ok(a, step=9),  # no such step
    ):
        assert w.on_reply(stale, 1.0) is None
    assert w.snapshot() == before and w.events == []
    assert w.on_reply(ok(a), 1.0) is not None
    assert w.on_reply(ok(a), 1.0) is None, "a's reply was already recorded: a duplicate"
    snapshot = w.snapshot()
    assert w.on_reply(ok(x), 2.0) is not None
    assert w.on_reply(ok(x), 2.0) is None, "duplicate"
    assert w.snapshot() != snapshot


def test_a_stale_timer_changes_nothing() -> None:
    w = fresh(FORK)
    commands = w.begin(0.0)
    out = sent(commands)
    old = timers(commands)
    w.on_reply(ok(out["a"]), 1.0)
    before = w.snapshot()
    a_timer = old[0]  # a's reply deadline: a is done, its timer is stale
    assert w.on_timer(a_timer.token, 100.0) is None
    assert w.on_timer(999, 100.0) is None
    assert w.snapshot() == before


def test_a_timer_that_fires_early_waits_out_the_rest() -> None:
    w = fresh(FORK)
    commands = w.begin(100.0)
    again = w.on_timer(timers(commands)[0].token, 50.0)
    assert again is not None and [type(c) for c in again] == [Timer]
    assert "timeout" not in kinds(w)
    assert w.on_timer(timers(commands)[0].token, 200.0) is None, "re-armed: the old token is stale"


# --- compensation follows the graph in reverse ------------------------------------------------


def test_compensation_follows_the_graph_in_reverse_and_branches_compensate_together() -> None:
    w, out = diamond_at_d()
    w.take_events()
    undo_d = sent(w.on_reply(answer(out["d"], "rejected", reason="no"), 4.0))
    assert set(undo_d) == {"d"}, "d had an intent: it is compensated, first"
    events = w.take_events()
    assert [e.kind for e in events] == ["rejected", "aborted", "compensation-intent"]
    assert events[1].detail["to_compensate"] == ["d", "c", "b", "a"]
    both = sent(w.on_reply(ok(undo_d["d"]), 5.0))
    assert set(both) == {"b", "c"}, "b and c are independent: compensated at the same time"
    assert sent(w.on_reply(ok(both["c"]), 6.0)) == {}, "a waits for b too"
    undo_a = sent(w.on_reply(ok(both["b"]), 7.0))
    assert set(undo_a) == {"a"}
    done = finish(w.on_reply(ok(undo_a["a"]), 8.0))
    assert done is not None and done.status == COMPENSATED
    assert done.reason == "step 'd' was rejected: no"
    assert done.failure == {"step": "d", "reason": "no", "data": None}


def test_a_compensation_carries_the_failure_that_caused_it() -> None:
    w = fresh(FORK)
    out = sent(w.begin(0.0))
    undos = sent(w.on_reply(answer(out["x"], "rejected", reason="nope", data={"code": 3}), 1.0))
    assert undos["a"].request.failure == {"step": "x", "reason": "nope", "data": {"code": 3}}


def test_requests_still_out_in_other_branches_at_the_abort_are_compensated() -> None:
    w = fresh()
    out = sent(w.begin(0.0))
    out |= sent(w.on_reply(ok(out["a"]), 1.0))  # b and c out
    undos = sent(w.on_reply(answer(out["b"], "rejected", reason="no"), 2.0))
    assert set(undos) == {"b", "c"}, "c's request was out: it may apply, so it is compensated"
    assert w.status == COMPENSATING
    assert w.on_reply(ok(out["c"]), 3.0) is None, "c's late forward reply is ignored"
    assert w.state.track[3] is None, "d never started: nothing to compensate"
    sent(w.on_reply(ok(undos["c"]), 4.0))
    (undo_a,) = sent(w.on_reply(ok(undos["b"]), 5.0)).values()
    done = finish(w.on_reply(ok(undo_a), 6.0))
    assert done is not None and done.status == COMPENSATED
    log = [(e.kind, e.step) for e in w.take_events()]
    assert ("intent", 3) not in log and ("compensation-intent", 3) not in log


def test_a_timed_out_step_is_compensated_but_a_never_started_one_is_not() -> None:
    w = fresh()
    out = sent(w.begin(0.0))
    commands = w.on_reply(ok(out["a"]), 1.0)
    c_timer = next(t for t in timers(commands) if t.delay == 2.0)
    undo = sent(w.on_timer(c_timer.token, 3.0))
    assert set(undo) == {"b", "c"}, "c timed out: it may have applied"
    assert w.state.track[3] is None and 3 not in w.state.started, "d never started"
    assert w.state.reason == "step 'c' failed after 1 attempt(s): no reply within 2.0 s"


def test_a_compensation_that_exhausts_its_retries_becomes_debt_while_other_branches_go_on() -> None:
    w, out = diamond_at_d()
    undo_d = sent(w.on_reply(answer(out["d"], "rejected", reason="no"), 4.0))
    both = sent(w.on_reply(ok(undo_d["d"]), 5.0))
    w.take_events()
    # b's compensation fails for good: debt; c's goes on; a waits behind b (I5)
    assert sent(w.on_reply(answer(both["b"], "error", reason="db gone"), 6.0)) == {}
    assert w.status == COMPENSATING, "c's compensation is still out: not parked yet"
    assert w.state.debt == [[1, "db gone", 1, 6.0]]
    debt = [e for e in w.take_events() if e.kind == "debt"]
    assert debt[0].detail["participant"] == "p_b" and debt[0].detail["compensation"] == "undo_b"
    parked = finish(w.on_reply(ok(both["c"]), 7.0))
    assert parked is not None and parked.status == FAILED, "nothing else can move: it parks"
    assert parked.outstanding == (
        "compensate step 'b' (undo_b): owed, db gone",
        "compensate step 'a' (undo_a)",
    )
    assert "compensation-intent" not in kinds(w, 0), "a is never compensated before b"
    assert w.state.track[0][0] == "todo" and w.state.track[2][0] == "undone"
    sound(w)


def test_a_workflow_that_owes_anything_is_never_reported_compensated() -> None:
    w = fresh(FORK)
    out = sent(w.begin(0.0))
    undos = sent(w.on_reply(answer(out["x"], "rejected"), 1.0))
    assert set(undos) == {"a", "x"}
    w.on_reply(answer(undos["x"], "error", reason="gone"), 2.0)
    parked = finish(w.on_reply(ok(undos["a"]), 3.0))
    assert parked is not None and parked.status == FAILED
    assert parked.outstanding == ("compensate step 'x' (undo_x): owed, gone",)
    assert w.state.debt and (COMPENSATED, None) not in [(e.kind, e.step) for e in w.events]


# --- irreversible steps: forward only once started ----------------------------------------------


def test_once_an_irreversible_step_started_a_failure_elsewhere_parks_instead_of_compensating() -> (
    None
):
    w = fresh(PAID)
    out = sent(w.begin(0.0))
    out |= sent(w.on_reply(ok(out["a"]), 1.0))  # pay is out (started, may apply)
    w.take_events()
    parked = finish(w.on_reply(answer(out["x"], "rejected", reason="no"), 2.0))
    assert parked is not None and parked.status == FAILED
    assert "step 'x' was rejected (no) after the irreversible step 'pay' started" in (
        parked.reason or ""
    )
    assert "compensation-intent" not in kinds(w)
    assert w.state.stopped_in == RUNNING
    assert set(parked.outstanding) == {"finish step 'pay' (pay)", "finish step 'x' (x)"}
    sound(w)


def test_an_irreversible_step_that_may_have_run_parks() -> None:
    w = fresh(PAID)
    out = sent(w.begin(0.0))
    commands = w.on_reply(ok(out["a"]), 1.0)
    pay_timer = timers(commands)[0]
    parked = finish(w.on_timer(pay_timer.token, 10.0))
    assert parked is not None and parked.status == FAILED
    assert "irreversible step 'pay' did not confirm after 1 attempt(s)" in (parked.reason or "")
    assert "fix pay by hand" in (parked.reason or "")
    assert "compensation-intent" not in kinds(w)


def test_a_refused_irreversible_step_is_compensation_skipped_and_the_rest_compensated() -> None:
    w = fresh(PAID)
    out = sent(w.begin(0.0))
    out |= sent(w.on_reply(ok(out["a"]), 1.0))
    w.take_events()
    undos = sent(w.on_reply(answer(out["pay"], "rejected", reason="card declined"), 2.0))
    # pay did not run: nothing to undo; a (its dependency) and x (out) are compensated
    assert set(undos) == {"a", "x"}
    events = w.take_events()
    skipped = [e for e in events if e.kind == "compensation-skipped"]
    assert [e.step for e in skipped] == [1] and skipped[0].detail["instead"] == "fix pay by hand"
    assert events.index(skipped[0]) < next(
        i for i, e in enumerate(events) if e.kind == "compensation-intent" and e.step == 0
    )
    sent(w.on_reply(ok(undos["x"]), 3.0))
    done = finish(w.on_reply(ok(undos["a"]), 4.0))
    assert done is not None and done.status == COMPENSATED


def test_a_refused_irreversible_step_parks_when_another_irreversible_step_started() -> None:
    definition = WorkflowDefinition("two", 1, [final("p"), final("q"), step("x")])
    w = fresh(definition)
    out = sent(w.begin(0.0))
    parked = finish(w.on_reply(answer(out["p"], "rejected"), 1.0))
    assert parked is not None and parked.status == FAILED
    assert "irreversible step 'q' started" in (parked.reason or "")


# --- restarts -------------------------------------------------------------------------------------


def test_a_snapshot_restores_to_the_same_machine_and_resume_resends_what_was_out() -> None:
    w, out = diamond_at_d()
    back = restored(w, recovery_attempts=0)
    assert back.state == w.state and back.snapshot() == w.snapshot()
    assert back.on_reply(ok(out["d"]), 5.0) is None, "an earlier incarnation's reply is stale"
    commands = back.resume(5.0)
    (resent,) = sent(commands).values()
    assert (resent.request.key, resent.request.attempt, resent.request.incarnation) == (
        out["d"].request.key,
        out["d"].request.attempt,
        2,
    )
    assert resent.request.results == out["d"].request.results
    assert [type(c) for c in commands] == [Send, Timer]
    done = finish(back.on_reply(ok(resent), 6.0))
    assert done is not None and done.status == COMPLETED


def test_a_restart_rearms_a_due_retry_and_resends_every_branch_out() -> None:
    definition = WorkflowDefinition(
        "due", 1, [step("a", retry=TWICE), step("b"), step("c", "b"), step("x")]
    )
    w = fresh(definition)
    out = sent(w.begin(0.0))
    out |= sent(w.on_reply(ok(out["b"]), 1.0))
    w.on_reply(answer(out["a"], "error"), 2.0)  # a's retry is due at 7.0
    back = restored(w)
    commands = back.resume(3.0)
    assert set(sent(commands)) == {"c", "x"}
    due = [t for t in timers(commands) if t.delay == 4.0]
    assert len(due) == 1, "the retry is re-armed for what is left of its backoff"
    again = sent(back.on_timer(due[0].token, 7.0))
    assert (again["a"].request.attempt, again["a"].request.incarnation) == (2, 2)


def test_a_restart_while_compensating_goes_on_compensating() -> None:
    w = fresh()
    out = sent(w.begin(0.0))
    out |= sent(w.on_reply(ok(out["a"]), 1.0))
    undos = sent(w.on_reply(answer(out["b"], "rejected"), 2.0))
    back = restored(w)
    resent = sent(back.resume(3.0))
    assert {n: (s.request.kind, s.request.attempt) for n, s in resent.items()} == {
        "b": ("undo", 1),
        "c": ("undo", 1),
    }
    assert back.on_reply(ok(undos["b"]), 4.0) is None, "the old incarnation's reply"
    sent(back.on_reply(ok(resent["b"]), 4.0))
    (undo_a,) = sent(back.on_reply(ok(resent["c"]), 5.0)).values()
    assert undo_a.request.kind == "undo"


def test_on_recovery_compensate_aborts_after_a_restart() -> None:
    definition = WorkflowDefinition("rc", 1, DIAMOND.steps, on_recovery="compensate")
    w = fresh(definition)
    out = sent(w.begin(0.0))
    sent(w.on_reply(ok(out["a"]), 1.0))
    back = restored(w)
    undos = sent(back.resume(2.0))
    assert set(undos) == {"b", "c"} and back.status == COMPENSATING
    assert back.state.reason == "interrupted by a crash; definition recovers by compensating"
    assert "intent" not in kinds(back)


def test_on_recovery_compensate_parks_with_an_irreversible_step_in_doubt() -> None:
    definition = WorkflowDefinition("rc", 1, PAID.steps, on_recovery="compensate")
    w = fresh(definition)
    out = sent(w.begin(0.0))
    sent(w.on_reply(ok(out["a"]), 1.0))  # pay is out
    back = restored(w)
    commands = back.resume(2.0)
    parked = finish(commands)
    assert parked is not None and parked.status == FAILED and sent(commands) == {}
    assert "irreversible step 'pay' was in doubt" in (parked.reason or "")
    assert "fix pay by hand" in (parked.reason or "")


def test_on_recovery_compensate_goes_forward_once_an_irreversible_step_is_done() -> None:
    definition = WorkflowDefinition("rc", 1, PAID.steps, on_recovery="compensate")
    w = fresh(definition)
    out = sent(w.begin(0.0))
    out |= sent(w.on_reply(ok(out["a"]), 1.0))
    w.on_reply(ok(out["pay"]), 2.0)  # pay done, x out
    back = restored(w)
    resent = sent(back.resume(3.0))
    assert {n: s.request.kind for n, s in resent.items()} == {"x": "do"}
    assert back.status == RUNNING


def test_a_corrupt_snapshot_is_refused() -> None:
    w, _out = diamond_at_d()
    state = codec.decode(w.snapshot(), "snapshot")
    for change in (
        {"phase": "dancing"},
        {"track": state["track"][:2]},
        {"started": [0, 0, 1]},
        {"debt": [[9, "x", 1, 0.0]]},
    ):
        damaged = codec.encode({**state, **change}, "snapshot")
        with pytest.raises(CorruptRecord, match="makes no sense"):
            Workflow.restore("w", DIAMOND, {}, 2, damaged, 1, 0)
    # d sent before c was done
    track = [list(e) for e in state["track"]]
    track[2] = ["out", "do", 1, 5.0, 3]
    damaged = codec.encode({**state, "track": track}, "snapshot")
    with pytest.raises(CorruptRecord, match="step 3 ran before step 2"):
        Workflow.restore("w", DIAMOND, {}, 2, damaged, 1, 0)
    # a request out for a step with no intent: an abort would not compensate it (I4)
    damaged = codec.encode({**state, "started": [0, 1, 2]}, "snapshot")
    with pytest.raises(CorruptRecord, match="step 3 is under way or done but never started"):
        Workflow.restore("w", DIAMOND, {}, 2, damaged, 1, 0)
    # compensating with a forward request out
    damaged = codec.encode({**state, "phase": "compensating"}, "snapshot")
    with pytest.raises(CorruptRecord, match="compensating with forward steps under way"):
        Workflow.restore("w", DIAMOND, {}, 2, damaged, 1, 0)
    with pytest.raises(CorruptRecord, match="fields do not match"):
        Workflow.restore("w", DIAMOND, {}, 2, codec.encode({"phase": "running"}, "s"), 1, 0)


# --- pause ---------------------------------------------------------------------------------------


def test_pause_holds_every_new_send_and_resume_sends_what_was_held() -> None:
    definition = WorkflowDefinition(
        "paused", 1, [step("a"), step("b", "a"), step("c", "a"), step("x", retry=TWICE)]
    )
    w = fresh(definition)
    out = sent(w.begin(0.0))
    assert verb(w, "pause") == []
    w.take_events()
    # the requests out are still answered; what becomes ready is held, without an intent
    assert sent(w.on_reply(ok(out["a"]), 1.0)) == {}
    assert [(e.kind, e.step) for e in w.take_events()] == [("done", 0), ("held", 1), ("held", 2)]
    assert w.state.started == [0, 3], "a held step has no intent: nothing to compensate for it"
    # a retry that falls due is held too
    (timer,) = timers(w.on_reply(answer(out["x"], "error"), 2.0))
    assert w.on_timer(timer.token, 10.0) == []
    assert w.state.track[3][:3] == ["held", "do", 2]
    # a restart while paused keeps it paused
    back = restored(w)
    assert back.resume(11.0) == []
    resumed = sent(verb(back, "resume"))
    assert {n: s.request.attempt for n, s in resumed.items()} == {"b": 1, "c": 1, "x": 2}
    assert back.state.paused is None and back.state.started == [0, 3, 1, 2]


def test_pause_holds_compensations_too() -> None:
    w = fresh(FORK)
    out = sent(w.begin(0.0))
    verb(w, "pause")
    assert sent(w.on_reply(answer(out["x"], "rejected"), 1.0)) == {}
    assert w.status == COMPENSATING
    assert [e and e[:2] for e in w.state.track] == [["held", "undo"], None, ["held", "undo"]]
    resumed = sent(verb(w, "resume"))
    assert {n: s.request.kind for n, s in resumed.items()} == {"a": "undo", "x": "undo"}


# --- park and overflow ------------------------------------------------------------------------


def test_park_lists_what_is_left_and_a_parked_workflow_ignores_late_replies() -> None:
    w = fresh(FORK)
    out = sent(w.begin(0.0))
    sent(w.on_reply(ok(out["a"]), 1.0))  # b out, x out
    parked = finish(w.park("too many restarts", 2.0))
    assert parked is not None and parked.status == FAILED
    assert parked.outstanding == ("finish step 'b' (b)", "finish step 'x' (x)")
    before = w.snapshot()
    # Parked: nothing it was waiting on counts any more, no timer fires, nothing is resent.
    assert w.on_reply(ok(out["x"]), 3.0) is None
    assert w.snapshot() == before
    assert w.sends() == []


def test_overflow_parks_and_drops_the_results() -> None:
    w = fresh(FORK)
    out = sent(w.begin(0.0))
    w.on_reply(ok(out["a"], "big"), 1.0)
    parked = finish(w.overflow(100, 10, 2.0))
    assert parked is not None and parked.status == FAILED
    assert "exceeds the cap of 10 bytes" in (parked.reason or "")
    assert w.state.results == {} and w.state.stopped_in == "overflow"
    sound(w)
    refused(w, "retry", "outgrew the snapshot cap")


# --- definition checks ----------------------------------------------------------------------------


def _error(steps: list[Step], kind: type[SagaDefinition] = WorkflowDefinition) -> str:
    with pytest.raises(DefinitionError) as caught:
        kind("wf", 1, steps)
    return str(caught.value)


def test_a_cycle_is_refused_naming_its_steps() -> None:
    message = _error([step("a", "c"), step("b", "a"), step("c", "b"), step("d")])
    assert "'wf' v1" in message
    assert "cycle: a -> c -> b -> a" in message


def test_unknown_self_and_repeated_dependencies_are_refused_naming_them() -> None:
    message = _error([step("a"), step("b", "nope")])
    assert "step 'b' depends on 'nope', which is not a step of this workflow" in message
    assert "(its steps: a, b)" in message, "the names it could have meant"
    assert "step 'a' depends on itself" in _error([step("a", "a")])
    message = _error([step("a"), step("b", ["a", "a"])])
    assert "step 'b' names a dependency twice: ['a', 'a']" in message


@pytest.mark.parametrize(
    ("steps", "fix"),
    [
        (
            [step("a", "b"), step("b", "a")],
            "break it by removing one of these dependencies from its step's after=",
        ),
        ([step("a", "a")], "remove 'a' from its after="),
        ([step("a"), step("b", ["a", "a"])], "; list it once"),
    ],
    ids=["cycle", "self", "twice"],
)
def test_graph_errors_say_how_to_fix_them(steps: list[Step], fix: str) -> None:
    assert fix in _error(steps)


def test_a_compensatable_step_after_an_irreversible_one_is_refused_with_the_fix() -> None:
    message = _error([final("pay"), step("a"), step("b", "a"), step("ship", ["b", "pay"])])
    assert "step 'ship' can be compensated but depends on the irreversible step 'pay'" in message
    assert "Make it irreversible too, or order it before the irreversible step" in message
    # transitively too
    message = _error([final("pay"), final("mail", "pay"), step("undoable", "mail")])
    assert "step 'undoable' can be compensated but depends on the irreversible step" in message
    # an irreversible step may follow an irreversible one, and be followed by nothing
    WorkflowDefinition("ok", 1, [step("a"), final("pay", "a"), final("mail", "pay")])


def test_inputs_may_read_only_ancestors_and_the_payload() -> None:
    message = _error([step("a"), step("x"), step("b", "a", inputs={"v": "x.v"})])
    assert "step 'b': input 'v' reads 'x.v', but step 'x' does not complete before this" in (
        message
    )
    message = _error([step("a"), step("b", "a", inputs={"v": "ghost.v"})])
    assert "there is no step 'ghost'; inputs start with 'payload' or the name of" in message
    # ancestors, direct or not, and the payload are fine
    WorkflowDefinition(
        "ok",
        1,
        [step("a"), step("b", "a"), step("c", "b", inputs={"v": "a.v", "o": "payload.order"})],
    )


def test_reading_a_non_ancestor_says_to_depend_on_it() -> None:
    message = _error([step("a"), step("x"), step("b", "a", inputs={"v": "x.v"})])
    assert "(in a workflow, add 'x' to its after=)" in message


def test_after_on_a_plain_saga_definition_is_refused_pointing_to_workflow_definition() -> None:
    message = _error([step("a"), step("b", "a")], SagaDefinition)
    assert "step 'b' declares after=['a']" in message
    assert "use WorkflowDefinition" in message


def test_the_graph_is_recorded_both_ways() -> None:
    assert DIAMOND.dependencies == ((), (0,), (0,), (1, 2))
    assert DIAMOND.dependents == ((1, 2), (3,), (3,), ())
    assert DIAMOND.ancestors(3) == {0, 1, 2}
    assert DIAMOND.earlier(3) == frozenset({"a", "b", "c"})


# --- operators' verbs -------------------------------------------------------------------------


def test_cancel_compensates_everything_with_an_intent_following_the_graph() -> None:
    w = fresh()
    out = sent(w.begin(0.0))
    out |= sent(w.on_reply(ok(out["a"]), 1.0))  # b and c out
    w.take_events()
    undos = sent(verb(w, "cancel"))
    assert set(undos) == {"b", "c"} and w.status == COMPENSATING
    assert [e.kind for e in w.events][:2] == ["operator", "aborted"]
    assert w.state.reason == "cancelled by alice: why cancel"
    assert w.on_reply(ok(out["b"]), 51.0) is None, "the cancelled forward request's reply"
    assert sent(w.on_reply(ok(undos["b"]), 52.0)) == {}
    (undo_a,) = sent(w.on_reply(ok(undos["c"]), 53.0)).values()
    done = finish(w.on_reply(ok(undo_a), 54.0))
    assert done is not None and done.status == COMPENSATED
    assert done.reason == "cancelled by alice: why cancel"


def test_cancel_of_a_paused_workflow_compensates_only_what_had_an_intent() -> None:
    w = fresh()
    out = sent(w.begin(0.0))
    verb(w, "pause")
    w.on_reply(ok(out["a"]), 1.0)  # b and c held, without an intent
    undos = sent(verb(w, "cancel"))
    assert {n: s.request.kind for n, s in undos.items()} == {"a": "undo"}
    assert w.state.paused is None and w.state.track[1:] == [None, None, None]


def test_cancel_takes_up_a_workflow_parked_while_running() -> None:
    w = fresh(FORK)
    out = sent(w.begin(0.0))
    w.park("too many restarts", 1.0)
    undos = sent(verb(w, "cancel"))
    assert set(undos) == {"a", "x"} and w.status == COMPENSATING
    assert w.state.outstanding == [] and w.state.stopped_in is None
    assert out["a"].request.key == "w:0:do"


def test_cancel_refusals() -> None:
    w = fresh(PAID)
    out = sent(w.begin(0.0))
    sent(w.on_reply(ok(out["a"]), 1.0))
    refused(w, "cancel", "irreversible step 'pay' has started, so it can only go forward")
    w = fresh(FORK)
    out = sent(w.begin(0.0))
    w.on_reply(answer(out["a"], "rejected"), 1.0)
    refused(w, "cancel", "it is compensating; it is already compensating$")
    w.park("stop", 2.0)
    refused(w, "cancel", "already compensating: retry it, resolve what it owes, or abandon it")
    w, out = diamond_at_d()
    w.on_reply(ok(out["d"]), 5.0)
    for name in ("cancel", "pause", "resume", "retry", "abandon"):
        refused(w, name, "it is completed, and a finished saga is never changed")
    refused(w, "skip", "finished saga is never changed", step="a")
    refused(w, "resolve", "finished saga is never changed", step="a")


def test_pause_and_resume_refusals() -> None:
    w = fresh(FORK)
    sent(w.begin(0.0))
    refused(w, "resume", "it is not paused")
    verb(w, "pause")
    assert w.state.paused == ["alice", "why pause", 50.0]
    refused(w, "pause", r"paused already by alice \(why pause\)")
    refused(w, "retry", "it is paused by alice: resume it")
    w.park("stop", 2.0)
    assert w.state.paused is None, "a parked workflow is not paused"
    refused(w, "pause", "a parked workflow sends nothing anyway")
    refused(w, "resume", "it is not paused; retry takes a parked workflow up again")


def test_retry_sends_the_due_retries_now() -> None:
    definition = WorkflowDefinition("r", 1, [step("a", retry=TWICE), step("x", retry=TWICE)])
    w = fresh(definition)
    out = sent(w.begin(0.0))
    refused(w, "retry", r"nothing waits for a retry \(requests out are answered or time out")
    w.on_reply(answer(out["a"], "error"), 1.0)
    w.on_reply(answer(out["x"], "error"), 1.0)
    again = sent(verb(w, "retry"))
    assert {n: (s.request.attempt, s.request.key) for n, s in again.items()} == {
        "a": (2, "w:0:do"),
        "x": (2, "w:1:do"),
    }


def test_retry_takes_a_parked_workflow_up_again_forward() -> None:
    w = fresh(PAID)
    out = sent(w.begin(0.0))
    out |= sent(w.on_reply(ok(out["a"]), 1.0))  # pay out, x out
    parked = finish(w.on_reply(answer(out["x"], "error", reason="down"), 2.0))
    assert parked is None, "x has a retry left (TWICE)"
    parked = finish(w.park("too many restarts", 3.0))
    assert parked is not None
    back = restored(w)
    back.state.recovery_attempts = 3
    again = sent(verb(back, "retry"))
    # pay was out: sent again, a new attempt under the same key; x's due retry is sent now
    assert {n: (s.request.attempt, s.request.key) for n, s in again.items()} == {
        "pay": (2, "w:1:do"),
        "x": (2, "w:2:do"),
    }
    assert back.status == RUNNING and back.state.recovery_attempts == 0
    sent(back.on_reply(ok(again["pay"], incarnation=2), 4.0))
    done = finish(back.on_reply(ok(again["x"], incarnation=2), 5.0))
    assert done is not None and done.status == COMPLETED


def test_retry_of_a_stopped_step_sends_a_new_attempt_under_the_same_key() -> None:
    w = fresh(PAID)
    out = sent(w.begin(0.0))
    out |= sent(w.on_reply(ok(out["a"]), 1.0))
    w.on_reply(ok(out["x"]), 1.5)
    parked = finish(w.on_reply(answer(out["pay"], "error", reason="gateway"), 2.0))
    assert parked is not None and parked.outstanding == ("finish step 'pay' (pay)",)
    again = sent(verb(w, "retry"))
    assert (again["pay"].request.attempt, again["pay"].request.key) == (2, "w:1:do")
    assert w.state.track[1][:3] == ["out", "do", 2]
    assert w.on_reply(ok(out["pay"]), 3.0) is None, "the first attempt's reply is stale"
    done = finish(w.on_reply(ok(again["pay"]), 3.0))
    assert done is not None and done.status == COMPLETED


def test_retry_of_debt_compensates_again_in_graph_order() -> None:
    w, out = diamond_at_d()
    undo_d = sent(w.on_reply(answer(out["d"], "rejected"), 4.0))
    both = sent(w.on_reply(ok(undo_d["d"]), 5.0))
    w.on_reply(answer(both["b"], "error", reason="gone"), 6.0)
    w.on_reply(ok(both["c"]), 7.0)
    assert w.status == FAILED and w.state.debt
    back = restored(w, recovery_attempts=0)
    paid = sent(verb(back, "retry"))
    assert {n: (s.request.kind, s.request.key) for n, s in paid.items()} == {
        "b": ("undo", "w:1:undo")
    }, "a still waits for b"
    assert back.state.debt == [] and "debt-retried" in kinds(back)
    (undo_a,) = sent(back.on_reply(ok(paid["b"]), 8.0)).values()
    done = finish(back.on_reply(ok(undo_a), 9.0))
    assert done is not None and done.status == COMPENSATED


def test_retry_refusals_of_a_parked_workflow() -> None:
    w = fresh(FORK)
    sent(w.begin(0.0))
    w.park("x", 1.0)
    w.state.stopped_in = None  # parked before it recorded where it stopped
    refused(w, "retry", "its state cannot be taken up again; finish it by hand")
    # parked compensating, owing nothing (every compensation settled by hand)
    w = fresh(FORK)
    out = sent(w.begin(0.0))
    undos = sent(w.on_reply(answer(out["x"], "rejected"), 1.0))
    w.on_reply(ok(undos["x"]), 2.0)
    w.park("by hand", 3.0)
    w.state.track[0] = ["undone", "undo", 1, None, 0]
    refused(w, "retry", "it owes no compensation: nothing is left to retry")


def test_skip_gives_a_due_step_a_result_and_its_dependents_start() -> None:
    w = fresh(FORK)
    out = sent(w.begin(0.0))
    refused(w, "skip", "step 'b' is not due: it waits for a", step="b")
    refused(w, "skip", "a request for step 'a' is out and could still apply", step="a")
    refused(w, "skip", "has no step 'nope'; its steps are a, b, x", step="nope")
    w.on_reply(answer(out["a"], "error"), 1.0)  # ONCE: a fails for good, the workflow aborts
    w = fresh(WorkflowDefinition("s", 1, [step("a", retry=TWICE), step("b", "a"), step("x")]))
    out = sent(w.begin(0.0))
    w.on_reply(answer(out["a"], "error"), 1.0)  # a's retry is due
    b = sent(verb(w, "skip", step=0, result={"by": "hand"}))  # by index
    assert b["b"].request.results == {"a": {"by": "hand"}}
    assert 0 in w.state.started, "skipped counts as started: compensated on abort"
    events = [e for e in w.events if e.kind == "skipped"]
    assert events[0].step == 0 and events[0].detail == {"name": "a", "who": "alice"}
    refused(w, "skip", "step 'a' is done already", step="a")
    sent(w.on_reply(ok(out["x"]), 2.0))
    done = finish(w.on_reply(ok(b["b"], "B"), 3.0))
    assert done is not None and done.status == COMPLETED
    assert done.results == {"a": {"by": "hand"}, "b": "B", "x": None}


def test_skip_is_refused_while_compensating() -> None:
    w = fresh(FORK)
    out = sent(w.begin(0.0))
    w.on_reply(answer(out["x"], "rejected"), 1.0)
    refused(w, "skip", "this workflow is compensating: resolve its compensations instead", step="b")


def test_skip_of_a_parked_workflow_goes_on_forward() -> None:
    w = fresh(PAID)
    out = sent(w.begin(0.0))
    out |= sent(w.on_reply(ok(out["a"]), 1.0))
    w.on_reply(ok(out["x"]), 1.5)
    w.on_reply(answer(out["pay"], "error"), 2.0)  # pay did not confirm: parked
    assert w.status == FAILED
    done = finish(verb(w, "skip", step="pay", result="paid by phone"))
    assert done is not None and done.status == COMPLETED
    assert done.results["pay"] == "paid by phone"


def test_skip_in_a_parked_workflow_sends_nothing_for_the_skipped_step_and_never_hangs() -> None:
    """A parked workflow with a retry due on one branch (x) and an irreversible step stopped on
    another (pay): skipping x must not send x's request (it was done by hand), and must not
    leave the workflow running with pay stopped and nothing that could ever move it."""
    w = fresh(PAID)
    out = sent(w.begin(0.0))
    commands = w.on_reply(ok(out["a"]), 1.0)
    out |= sent(commands)
    w.on_reply(answer(out["x"], "error"), 2.0)  # x's retry is due
    parked = finish(w.on_timer(timers(commands)[0].token, 20.0))  # pay timed out: parked
    assert parked is not None and w.state.track[2][0] == "due"
    w.take_events()
    commands = verb(w, "skip", step="x", result="by hand")
    assert "x" not in sent(commands), "a request for the step skipped by hand"
    assert "intent" not in [e.kind for e in w.events if e.step == 2]
    # pay is still stopped and nothing else can move: parked again, saying what is left
    assert w.status == FAILED
    assert w.state.outstanding == ["finish step 'pay' (pay)"]
    assert "step 'pay' stopped (no reply within 5.0 s)" in (w.state.reason or "")
    again = sent(verb(w, "retry"))
    assert (again["pay"].request.attempt, again["pay"].request.key) == (2, "w:1:do")


def test_resolve_settles_debt_in_any_order_and_due_compensations_in_graph_order() -> None:
    w, out = diamond_at_d()
    undo_d = sent(w.on_reply(answer(out["d"], "rejected", reason="no"), 4.0))
    refused(
        w,
        "resolve",
        r"step 'a' owes no compensation that is due \(owed now: d; a step is compensated only "
        "after every step that depends on it",
        step="a",
    )
    both = sent(w.on_reply(ok(undo_d["d"]), 5.0))
    w.on_reply(answer(both["b"], "error", reason="gone"), 6.0)
    w.on_reply(answer(both["c"], "error", reason="down"), 7.0)
    assert w.status == FAILED and [e[0] for e in w.state.debt] == [1, 2]
    refused(w, "resolve", r"owed now: b, c;", step="a")
    parked = finish(verb(w, "resolve", step="c"))
    assert parked is not None and parked.status == FAILED, "b is still owed"
    settled = [e for e in w.take_events() if e.kind == "debt-settled"]
    assert settled[0].detail == {"name": "c", "who": "alice", "note": "why resolve"}
    (undo_a,) = sent(verb(w, "resolve", step="b")).values()
    assert (undo_a.request.kind, w.status) == ("undo", COMPENSATING)
    done = finish(w.on_reply(ok(undo_a), 8.0))
    assert done is not None and done.status == COMPENSATED
    assert done.reason == "step 'd' was rejected: no", "why it compensated, not the debt"


def test_resolve_marks_a_due_compensation_of_a_parked_workflow_done_by_hand() -> None:
    w = fresh()
    out = sent(w.begin(0.0))
    out |= sent(w.on_reply(ok(out["a"]), 1.0))
    verb(w, "pause")
    w.on_reply(answer(out["b"], "rejected"), 2.0)  # b and c's compensations held
    w.park("stop", 3.0)
    w.take_events()
    undos = sent(verb(w, "resolve", step="b"))
    # taken up again compensating: c's held compensation is sent, a still waits for c
    assert [(e.kind, e.step) for e in w.take_events()] == [
        ("operator", None),
        ("resolved", 1),
        ("compensation-intent", 2),
    ]
    assert set(undos) == {"c"} and w.status == COMPENSATING
    assert w.state.track[1] == ["undone", "undo", 0, None, 0]


def test_resolve_is_refused_for_a_running_step_and_while_its_compensation_is_out() -> None:
    w = fresh()
    out = sent(w.begin(0.0))
    refused(w, "resolve", r"step 'a' owes no compensation that is due \(owed now: none;", step="a")
    out |= sent(w.on_reply(ok(out["a"]), 1.0))
    undos = sent(w.on_reply(answer(out["b"], "rejected"), 2.0))
    assert set(undos) == {"b", "c"}
    refused(
        w, "resolve", "compensation request for step 'b' is out and could still apply", step="b"
    )
    refused(w, "resolve", "has no step 'zz'", step="zz")


def test_abandon_records_every_outstanding_compensation_as_debt_and_never_compensated() -> None:
    w = fresh()
    out = sent(w.begin(0.0))
    out |= sent(w.on_reply(ok(out["a"]), 1.0))
    undos = sent(w.on_reply(answer(out["b"], "rejected"), 2.0))
    w.on_reply(ok(undos["c"]), 3.0)
    parked = finish(verb(w, "abandon"))
    assert parked is not None and parked.status == FAILED
    assert sorted(e[0] for e in w.state.debt) == [0, 1]
    assert parked.reason == "abandoned by alice: why abandon"
    assert len([e for e in w.events if e.kind == "debt"]) == 2
    assert w.on_reply(ok(undos["b"]), 4.0) is None, "abandoned: its reply no longer counts"
    refused(w, "abandon", "parked with nothing left to compensate: its debt is listed already")
    assert finish(verb(w, "resolve", step="a")).status == FAILED  # type: ignore[union-attr]
    done = finish(verb(w, "resolve", step="b"))
    assert done is not None and done.status == COMPENSATED


def test_abandon_of_a_running_workflow_owes_everything_that_started() -> None:
    w = fresh(FORK)
    out = sent(w.begin(0.0))
    sent(w.on_reply(ok(out["a"]), 1.0))  # b out, x out
    parked = finish(verb(w, "abandon"))
    assert parked is not None and parked.status == FAILED
    assert sorted(e[0] for e in w.state.debt) == [0, 1, 2]
    assert w.state.stopped_in == COMPENSATING


def test_abandon_is_refused_once_an_irreversible_step_started() -> None:
    w = fresh(PAID)
    out = sent(w.begin(0.0))
    sent(w.on_reply(ok(out["a"]), 1.0))
    with pytest.raises(VerbRefused) as caught:
        verb(w, "abandon")
    message = str(caught.value)
    assert "irreversible step 'pay' has started, so it can only go forward" in message
    assert "abandon it" not in message, "the refusal of abandon does not suggest abandon"


def test_every_state_a_verb_leaves_restores_from_its_snapshot() -> None:
    w = fresh()
    out = sent(w.begin(0.0))
    verb(w, "pause")
    sound(w)
    w.on_reply(ok(out["a"]), 1.0)
    sound(w)
    verb(w, "cancel")
    sound(w)
    assert restored(w, recovery_attempts=0).snapshot() == w.snapshot()


def test_unknown_verbs_are_refused() -> None:
    w = fresh()
    w.begin(0.0)
    refused(w, "delete", "unknown verb 'delete'")


# --- randomized: random graphs, outcomes, restarts and pauses ---------------------------------


def random_definition(rng: random.Random) -> WorkflowDefinition:
    """3-8 steps with random dependencies; some leaves irreversible (nothing depends on them,
    so no compensatable step follows one); some steps narrowed to args or an ancestor's field."""
    n = rng.randint(3, 8)
    deps = [sorted(rng.sample(range(i), rng.randint(0, min(i, 3)))) for i in range(n)]
    leaves = {i for i in range(n) if not any(i in d for d in deps)}
    ancestors: list[set[int]] = []
    for i in range(n):
        ancestors.append(set(deps[i]).union(*(ancestors[d] for d in deps[i])))
    steps = []
    for i in range(n):
        options: dict[str, Any] = {
            "retry": RetryPolicy(attempts=rng.randint(1, 3), backoff=rng.choice([0.0, 0.5, 2.0])),
            "compensation_retry": RetryPolicy(attempts=rng.randint(1, 3), backoff=0.5),
            "timeout": rng.choice([1.0, 3.0]),
            "after": [f"s{d}" for d in deps[i]],
        }
        if ancestors[i] and rng.random() < 0.25:
            options["inputs"] = {"v": f"s{rng.choice(sorted(ancestors[i]))}.v"}
        elif rng.random() < 0.1:
            options["args"] = {"k": i}
        if i in leaves and rng.random() < 0.3:
            options["irreversible"] = Irreversible("by hand")
        else:
            options["compensation"] = f"undo{i}"
        steps.append(Step(f"s{i}", f"p{i}", f"do{i}", **options))
    rng.shuffle(steps)  # the listing order is not the graph's
    return WorkflowDefinition("random", 1, steps, on_recovery=rng.choice(["resume", "compensate"]))


class Run:
    """One randomized run: drives a workflow and checks it after every input."""

    def __init__(self, seed: int, operated: bool = False) -> None:
        #: Whether operators take parked workflows up again (and act on running ones).
        self.operated = operated
        self.verbs = 0
        self.rng = rng = random.Random(seed)
        #: How often a request fails in this run (some runs mostly complete, some mostly fail).
        self.flaky = rng.choice([0.2, 0.6, 1.0, 1.5])
        self.definition = random_definition(rng)
        self.index = {s.name: i for i, s in enumerate(self.definition.steps)}
        self.w = Workflow.restore("w", self.definition, {"p": seed}, 1, None, 0, 0)
        self.now = 0.0
        self.log: list[Event] = []
        self.history: list[Send] = []  # every request ever sent
        self.flight: list[Send] = []  # sent, its reply not delivered yet
        self.timers: list[tuple[float, int]] = []  # this incarnation's: (fires at, token)
        self.finishes: list[Finish] = []
        self.restarts = 0

    def apply(self, commands: list[Any] | None) -> None:
        w = self.w
        assert commands is not None
        for k, command in enumerate(commands):
            if isinstance(command, Send):
                r = command.request
                assert not w.terminal, "a request sent by a finished workflow"
                assert (r.key, r.forward_key) == (f"w:{r.step}:{r.kind}", f"w:{r.step}:do")
                assert r.incarnation == w.incarnation and w.waits_on(r)
                spec = self.definition.steps[r.step]
                assert command.participant == spec.participant
                follows = commands[k + 1]
                assert isinstance(follows, Timer) and follows.delay == spec.timeout
                if spec.narrowed:
                    assert r.results == {} and set(r.payload) == {*spec.args, *spec.inputs}
                else:  # every ancestor is done before a step starts, and only they are read
                    ancestors = self.definition.ancestors(r.step)
                    assert set(r.results) == {self.definition.steps[a].name for a in ancestors}
                self.flight.append(command)
                self.history.append(command)
            elif isinstance(command, Timer):
                self.timers.append((self.now + command.delay, command.token))
            else:
                assert isinstance(command, Finish) and w.terminal and command.status == w.status
                self.finishes.append(command)
        self.log.extend(w.take_events())
        assert check_state(w.state, self.definition) is None
        back = Workflow.restore("w", self.definition, w.payload, w.incarnation, w.snapshot(), 1, 0)
        back.state.recovery_attempts = w.state.recovery_attempts
        assert back.state == w.state, "a snapshot restores to the same state"

    def unchanged(self, result: list[Any] | None, before: bytes) -> None:
        assert result is None and self.w.snapshot() == before and self.w.events == []

    def expects(self, reply: StepReply) -> bool:
        """Whether ``reply`` matches the step's outstanding request (kind, attempt,
        incarnation) of a workflow still going."""
        w = self.w
        entry = w.state.track[reply.step]
        return (
            not w.terminal
            and reply.incarnation == w.incarnation
            and entry is not None
            and entry[:3] == ["out", reply.kind, reply.attempt]
        )

    def reply(self, send: Send, stale: bool = False) -> None:
        rng, r = self.rng, send.request
        f = self.flaky
        if r.kind == "do":
            # an irreversible step is refused more often: its refusal is compensation-skipped
            no = 8 * f * (4 if self.definition.steps[r.step].irreversible else 1)
            weights = [70, 12 * f, no, 8 * f]
        else:
            weights = [75, 15 * f, 2 * f, 8 * f]
        outcome = rng.choices(["ok", "error", "rejected", "lost"], weights)[0]
        if outcome == "lost" and not stale:
            return  # its deadline timer fires later
        result = {"v": r.step} if rng.random() < 0.9 else None
        reply = answer(send, "error" if outcome == "lost" else outcome, result=result, reason="r")
        self.now += rng.random()
        before = self.w.snapshot()
        expected = self.expects(reply)
        commands = self.w.on_reply(reply, self.now)
        if not expected:
            self.unchanged(commands, before)
            return
        assert commands is not None, "a reply that matches its outstanding request counts"
        self.apply(commands)

    def fire(self) -> None:
        at, token = self.timers.pop(self.rng.randrange(len(self.timers)))
        self.now = max(self.now, at)
        before = self.w.snapshot()
        commands = self.w.on_timer(token, self.now)
        if commands is None:
            self.unchanged(commands, before)
        else:
            self.apply(commands)

    def restart(self) -> None:
        """Crash and restore from the snapshot, a new incarnation; what was in flight is lost
        (its replies would be stale), and timers die with the incarnation."""
        w = self.w
        snapshot = w.snapshot()
        self.restarts += 1
        self.flight, self.timers = [], []
        self.w = w = Workflow.restore(
            "w",
            self.definition,
            w.payload,
            w.incarnation + 1,
            snapshot,
            1,
            w.state.recovery_attempts,
        )
        assert w.snapshot() == snapshot
        track = w.state.track
        out = {(i, e[1], e[2]) for i, e in enumerate(track) if e is not None and e[0] == "out"}
        phase, paused = w.status, w.state.paused
        irreversible = [i for i in w.state.started if self.definition.steps[i].irreversible]
        self.now += 1.0
        commands = w.resume(self.now)
        start = len(self.log)
        self.apply(commands)
        if phase == RUNNING and self.definition.on_recovery == "compensate":
            if not irreversible:
                aborted = [e for e in self.log[start:] if e.kind == "aborted"]
                assert aborted, "recovers by compensating"
                assert "interrupted by a crash" in aborted[0].detail["reason"]
            elif any(track[i][0] != "done" for i in irreversible):
                assert w.status == FAILED and "in doubt" in (w.state.reason or "")
            else:
                assert w.status == RUNNING, "past an irreversible step: forward only"
        elif w.status == phase and paused is None:
            resent = {
                (c.request.step, c.request.kind, c.request.attempt)
                for c in commands
                if isinstance(c, Send)
            }
            assert out <= resent, "resume resends every request out, same step, kind, attempt"

    def operate(self, name: str, **args: Any) -> None:
        before = self.w.snapshot()
        try:
            commands = operate(self.w, name, args, "op", "test", next(_commands), self.now)
        except VerbRefused:
            assert self.w.snapshot() == before
            return
        self.apply(commands)

    def go(self) -> None:
        rng = self.rng
        self.apply(self.w.begin(self.now))
        for _tick in range(3000):
            w = self.w
            if w.terminal and not (self.operated and w.status == FAILED and self.verbs < 8):
                break
            roll = rng.random()
            if self.operated and (w.terminal or roll < 0.03):
                self.verbs += 1
                track = w.state.track
                # mostly a step the verb may apply to, sometimes any step
                likely = {
                    "resolve": [i for i, e in enumerate(track) if e and e[0] in ("owed", "todo")],
                    "skip": [i for i, e in enumerate(track) if e and e[0] in ("stopped", "due")],
                }
                name = rng.choice(["retry", "retry", "resolve", "skip", "abandon", "cancel"])
                if name in likely:
                    candidates = likely[name] if likely[name] and rng.random() < 0.7 else track
                    i = rng.randrange(len(track)) if candidates is track else rng.choice(candidates)
                    self.operate(name, step=i, **({"result": {"v": i}} if name == "skip" else {}))
                else:
                    self.operate(name)
                continue
            if roll < 0.05 and self.history:
                self.reply(rng.choice(self.history), stale=True)  # stale, duplicated or not
            elif roll < 0.09 and self.restarts < 4:
                self.restart()
            elif roll < 0.13:
                self.operate("resume" if w.state.paused else "pause")
            elif roll < 0.14:
                self.operate("cancel")
            elif self.flight and (roll < 0.75 or not self.timers):
                send = self.flight.pop(rng.randrange(len(self.flight)))
                if rng.random() < 0.1:
                    self.flight.append(send)  # delivered twice
                self.reply(send)
            elif self.timers:
                self.fire()
            elif w.state.paused:
                self.operate("resume")
            elif (
                self.operated
                and w.status == RUNNING
                and not any(e is not None and e[0] in ("out", "due", "held") for e in w.state.track)
            ):
                pytest.fail(f"running and waiting on nothing: {w.state}")
            else:
                pytest.fail(f"stuck: nothing in flight, no timer, not paused: {w.state}")
        # Finished (or parked): what was still in flight, any earlier reply and every timer
        # change nothing, and it waits on nothing.
        assert self.w.sends() == []
        for send in self.flight + self.rng.sample(self.history, min(5, len(self.history))):
            self.reply(send, stale=True)
        while self.timers:
            self.fire()
        self.check()

    def check(self) -> None:
        w, log, definition = self.w, self.log, self.definition
        assert w.terminal, "every run ends"
        assert self.finishes[-1].status == w.status and self.log[-1].kind == w.status
        assert self.operated or len(self.finishes) == 1
        first: dict[tuple[str, int | None], int] = {}
        for k, e in enumerate(log):
            # An operator's skip stands for the step's intent and done, their resolve for its
            # compensation (settled by hand).
            for kind in {"skipped": ("intent", "done"), "resolved": ("compensated",)}.get(
                e.kind, ()
            ):
                first.setdefault((kind, e.step), k)
            if e.kind == "debt-settled":
                first.setdefault(("compensated", e.step), k)
            first.setdefault((e.kind, e.step), k)
        intents = {s for (kind, s) in first if kind == "intent" and s is not None}
        aborted = first.get(("aborted", None), len(log))
        for k, e in enumerate(log):
            if e.kind in ("intent", "compensation-intent"):
                kind = "do" if e.kind == "intent" else "undo"
                assert e.detail["key"] == f"w:{e.step}:{kind}", "keys are stable"
            if e.kind == "intent":
                assert e.step is not None
                assert k < aborted, "no forward intent after the abort"
                for d in definition.dependencies[e.step]:
                    assert first.get(("done", d), len(log)) < k, f"step {e.step} before {d}"
            if e.kind == "done":
                assert k < aborted, "no forward step recorded done after the abort"
            if e.kind == "compensation-intent":
                assert e.step is not None and e.step in intents, "compensated without an intent"
                for j in definition.dependents[e.step]:
                    if ("intent", j) in first:
                        settled = min(
                            first.get(("compensated", j), len(log)),
                            first.get(("compensation-skipped", j), len(log)),
                        )
                        assert settled < k, f"step {e.step} compensated before its dependent {j}"
        for k, e in enumerate(log):
            # A refused irreversible step did not run: with no other irreversible step
            # started, the workflow compensates (it is compensation-skipped).
            if e.kind == "rejected" and definition.steps[e.step or 0].irreversible is not None:
                others = [
                    i
                    for i in intents
                    if i != e.step
                    and definition.steps[i].irreversible is not None
                    and first[("intent", i)] < k
                ]
                assert log[k + 1].kind == ("failed" if others else "aborted")
        if aborted < len(log):
            for i in intents:
                if definition.steps[i].irreversible is not None and first[("intent", i)] < aborted:
                    assert first.get(("rejected", i), len(log)) < aborted, (
                        "compensated after an irreversible step started"
                    )
        if w.status == COMPLETED:
            assert all(("done", i) in first for i in range(len(definition.steps)))
            assert ("aborted", None) not in first
            assert all(e is not None and e[0] == "done" for e in w.state.track)
        elif w.status == COMPENSATED:
            assert w.state.debt == []
            for i in intents:
                if ("compensation-skipped", i) in first:
                    assert definition.steps[i].irreversible is not None
                    assert ("rejected", i) in first, "only a refused irreversible step is skipped"
                else:
                    assert ("compensated", i) in first, f"step {i} had an intent, not compensated"
        else:
            assert w.status == FAILED
            assert w.state.outstanding and self.finishes[-1].outstanding, "parked: what is left"


@pytest.mark.parametrize("seed", range(300))
def test_random_workflows_keep_their_promises(seed: int) -> None:
    Run(seed).go()


@pytest.mark.parametrize("seed", range(150))
def test_random_workflows_taken_up_by_operators_keep_their_promises(seed: int) -> None:
    """The same, with operators' verbs (retry, resolve, skip, abandon, cancel, on random
    steps) on running and parked workflows: whatever they do, the machine stays sound, sends
    nothing once finished, never runs waiting on nothing, and keeps the graph's order."""
    Run(10_000 + seed, operated=True).go()


def test_a_retry_that_stops_again_sends_nothing() -> None:
    """Retried, a workflow parked because a step's request cannot be built (after an
    irreversible step started) parks again: the requests it would have sent again are not
    sent, as a parked workflow waits on nothing."""
    definition = WorkflowDefinition(
        "again",
        1,
        [step("a"), final("pay", "a"), step("x"), step("y", "x", inputs={"v": "x.v"})],
    )
    w = fresh(definition)
    out = sent(w.begin(0.0))
    sent(w.on_reply(ok(out["a"]), 1.0))  # pay is out
    parked = finish(w.on_reply(ok(out["x"], "no fields"), 2.0))
    assert parked is not None and "cannot be built" in (parked.reason or "")
    commands = verb(w, "retry")
    assert w.status == FAILED
    assert sent(commands) == {}, "a parked workflow sends nothing"


def test_a_workflow_running_with_a_stopped_step_parks_once_nothing_else_can_move() -> None:
    """Skipping one step of a workflow parked at another (pay, stopped) takes it up again
    while a third branch (x) is still out; once x is done nothing can move: it parks again
    rather than run for ever waiting on nothing."""
    definition = WorkflowDefinition(
        "later", 1, [step("a"), final("pay", "a"), step("x", retry=TWICE), step("y", retry=TWICE)]
    )
    w = fresh(definition)
    out = sent(w.begin(0.0))
    commands = w.on_reply(ok(out["a"]), 1.0)
    w.on_reply(answer(out["y"], "error"), 2.0)  # y's retry is due
    parked = finish(w.on_timer(timers(commands)[0].token, 20.0))  # pay timed out: parked
    assert parked is not None and [e and e[0] for e in w.state.track] == [
        "done",
        "stopped",
        "out",
        "due",
    ]
    again = sent(verb(w, "skip", step="y", result="by hand"))
    assert set(again) == {"x"} and w.status == RUNNING, "x is sent again; y is not"
    parked = finish(w.on_reply(ok(again["x"]), 21.0))
    assert parked is not None and parked.status == FAILED
    assert parked.outstanding == ("finish step 'pay' (pay)",)
    assert "step 'pay'" in (parked.reason or "") and "retry or skip" in (parked.reason or "")
    sound(w)
