"""The rules a run of the order with an approval (``demo.chaos_deferred``) is held to: domain
invariants of its scenario, judged from what is on disk once the run has healed and gone quiet.

Three witnesses, none of which the run's replies can fool:

- the approvals participant's database: its ledger (the approval step's rows, and
  ``understudy_deferred``, the steps ever deferred) and its own tables (``approvals``: a row per
  committed run of the handler; ``withdrawals``: a row per committed run of the compensation,
  with what it was told), see :mod:`demo.approvals`;
- the saga store: each saga's status, and its snapshot's results and failure (what its caller
  got in ``SagaFinished``);
- the approver's log (:mod:`demo.completer`): every call it made from outside and what it was
  answered.

The rules (each function returns complaints; none means it held):

- :func:`completions_reached_their_sagas`: a completion the approver was told was recorded is
  in the ledger as it was made, and is what the saga got: an approval's result in a completed
  saga's results (or, a saga that compensated anyway, in what the approval's compensation was
  told), a refusal's reason and data in the saga's failure and in what its compensation was
  told, a breakage in the saga's failure; and no step completed that the approver did not
  complete;
- :func:`deferred_handlers_ran_once`: the handler of each deferred step ran once (one committed
  run) however often its request was sent, and each compensation once;
- :func:`no_completion_after_cancel`: once a waiting step was cancelled (its compensation was
  told so) nothing completed it: the ledger still says cancelled, and no completion of it was
  recorded, late clicks included;
- :func:`cancelled_steps_compensated`: the saga of every cancelled step ended compensated (or
  parked for a person, listing what is left to compensate), its compensation told the step was
  cancelled;
- :func:`refusals_match_the_ledger`: every refusal the approver got says what the ledger holds
  (cancelled: the row is cancelled; completed before: the row holds that other outcome), and
  no handle it was given was unknown.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import attrs

from demo.completer import read_log
from understudy import COMPENSATED, COMPLETED, FAILED, codec
from understudy.actors.saga import idempotency_key
from understudy.persistence import open_store
from understudy.persistence.base import EventRecord
from understudy.testing import RunView

APPROVALS = "approvals"  # the participant's registered name
STEP = 2  # the approval's index in the saga (create, reserve, approve, charge)
STEP_NAME = "approve_payment"
RECORDED = ("recorded", "again")  # the approver's call took: now, or the same one before
#: The ledger outcome each call records.
OUTCOME_OF = {"complete": "applied", "reject": "rejected", "fail": "failed"}
SHOWN = 10  # complaints per rule: one bug breaks many sagas the same way
#: The events that say what a saga heard of a forward request: its answer, or none in time.
HEARD = ("done", "rejected", "failed", "timeout")


@attrs.frozen
class Row:
    """The approval step's ledger row: its outcome, result (decoded) and reason."""

    outcome: str
    result: Any
    reason: str | None


@attrs.frozen
class Evidence:
    """What the three witnesses say about a run's approvals."""

    ledger: dict[str, Row]  # forward key -> its row
    deferred: frozenset[str]  # forward keys ever deferred
    runs: Counter[str]  # forward key -> committed runs of the handler
    #: Forward key -> each committed run of its compensation: (told outcome, told forward
    #: result, told failure, at).
    withdrawals: dict[str, list[tuple[str | None, Any, Any, float]]]
    calls: list[dict[str, Any]]  # the approver's calls, in order
    stopped: bool  # the approver's log is complete
    status: dict[str, str]  # saga id -> status
    states: dict[str, dict[str, Any]]  # saga id -> its snapshot
    #: Saga id -> what the saga heard of its approval, in order: (event kind, reason) of each
    #: answer or timeout of a forward request ("done", "rejected", "failed", "timeout").
    heard: dict[str, list[tuple[str, str | None]]]

    @classmethod
    def read(cls, directory: Path, store: Path | str, database: Path | str) -> Evidence:
        ledger: dict[str, Row] = {}
        withdrawals: dict[str, list[tuple[str | None, Any, Any, float]]] = defaultdict(list)
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            for key, outcome, result, reason in db.execute(
                "SELECT key, outcome, result, reason FROM understudy_ledger "
                "WHERE step = ? AND kind = 'do'",
                (STEP,),
            ):
                decoded = None if result is None else codec.decode(bytes(result))
                ledger[str(key)] = Row(str(outcome), decoded, reason)
            deferred = frozenset(k for (k,) in db.execute("SELECT key FROM understudy_deferred"))
            runs = Counter(k for (k,) in db.execute("SELECT key FROM approvals"))
            for forward_key, told, result, failure, at in db.execute(
                "SELECT forward_key, forward_outcome, forward_result, failure, at "
                "FROM withdrawals ORDER BY id"
            ):
                withdrawals[forward_key].append((told, json.loads(result), json.loads(failure), at))
        lines = list(read_log(directory))
        with closing(open_store(store, read_only=True)) as opened:
            records = opened.list_sagas(limit=1 << 62)
            heard = {
                r.saga_id: [
                    (e.kind, _said(e))
                    for e in opened.events(r.saga_id)
                    if e.step == STEP and e.kind in HEARD and e.detail.get("kind", "do") == "do"
                ]
                for r in records
                if idempotency_key(r.saga_id, STEP, "do") in ledger
            }
        return cls(
            ledger,
            deferred,
            runs,
            dict(withdrawals),
            [line for line in lines if "call" in line],
            any(line.get("stopped") for line in lines),
            {r.saga_id: r.status for r in records},
            {r.saga_id: _snapshot(r.snapshot) for r in records},
            heard,
        )

    @classmethod
    def of(cls, view: RunView) -> Evidence:
        return cls.read(view.directory, view.store, view.ledgers[APPROVALS])

    def recorded(self, key: str) -> list[dict[str, Any]]:
        """The approver's calls on ``key`` that took."""
        return [c for c in self.calls if c["key"] == key and c["answer"] in RECORDED]

    def told(self, key: str, outcome: str) -> bool:
        """Whether a compensation of ``key`` was told its forward's outcome was ``outcome``."""
        return any(told == outcome for told, *_rest in self.withdrawals.get(key, []))


def _said(event: EventRecord) -> str | None:
    """The reason a step's event gives, as the saga's failure records it."""
    if event.kind == "timeout":
        return f"no reply within {event.detail.get('after')} s"
    return event.detail.get("reason") or event.detail.get("outcome")


def _snapshot(snapshot: bytes | None) -> dict[str, Any]:
    state = codec.decode(snapshot) if snapshot else {}
    return state if isinstance(state, dict) else {}


def _capped(complaints: Iterable[str]) -> list[str]:
    shown = list(complaints)
    if len(shown) > SHOWN:
        return [*shown[:SHOWN], f"... and {len(shown) - SHOWN} more"]
    return shown


def completions_reached_their_sagas(view: RunView) -> list[str]:
    return _capped(_completions(Evidence.of(view)))


def _completions(ev: Evidence) -> Iterator[str]:
    for call in ev.calls:
        if call["answer"] not in RECORDED:
            continue
        key, saga, verb, args = call["key"], call["saga"], call["call"], call["args"]
        row = ev.ledger.get(key)
        made = f"{verb} of {key} (answered {call['answer']})"
        if row is None or row.outcome != OUTCOME_OF[verb]:
            yield f"{made}: the ledger says {row.outcome if row else 'nothing'}"
            continue
        if (verb == "complete" and row.result != args[0]) or (
            verb == "reject" and (row.reason, row.result) != (args[0], args[1])
        ):
            yield f"{made}: the ledger holds {row}, not what was recorded"
        status, state = ev.status.get(saga), ev.states.get(saga, {})
        if verb == "complete":
            if status == COMPLETED and state.get("results", {}).get(STEP_NAME) != args[0]:
                yield f"{made}: {saga} completed with {state.get('results')}"
            if status == COMPENSATED and not any(
                told == "applied" and result == args[0]
                for told, result, _failure, _at in ev.withdrawals.get(key, [])
            ):
                yield (
                    f"{made}: {saga} compensated, and its compensation was not told the step "
                    f"applied with that result (told {ev.withdrawals.get(key)})"
                )
            continue
        # A refusal or a breakage: the saga cannot complete, and what it heard is what was
        # recorded. Its failure is what it heard last: the refusal, with its data, or (its last
        # attempt unanswered, the reply lost) the timeout. Its compensation is told the truth
        # either way.
        if status == COMPLETED:
            yield f"{made}: {saga} completed all the same"
        heard = ev.heard.get(saga, [])
        for kind, reason in heard:
            if kind == "done" or (kind == "rejected" and (verb, reason) != ("reject", args[0])):
                yield f"{made}: {saga} was answered {kind} ({reason})"
        if status != COMPENSATED or not heard:
            continue
        failure = state.get("failure")
        last, reason = heard[-1]
        data = args[1] if last == "rejected" else None
        if failure != [STEP_NAME, reason, data]:
            yield f"{made}: {saga} heard {last} ({reason}) last, and its failure is {failure}"
        if not any(told == OUTCOME_OF[verb] for told, *_rest in ev.withdrawals.get(key, [])):
            yield (
                f"{made}: its compensation was not told the step {OUTCOME_OF[verb]} "
                f"(told {ev.withdrawals.get(key)})"
            )
        elif last == "rejected" and not any(
            isinstance(told, dict) and told.get("data") == args[1]
            for _outcome, _result, told, _at in ev.withdrawals[key]
        ):
            yield f"{made}: its compensation was not told the refusal's data"
    # A saga that completed got what its approval's ledger row holds: a step applied.
    for key in sorted(ev.deferred):
        saga, row = key.rsplit(":", 2)[0], ev.ledger.get(key)
        got = ev.states.get(saga, {}).get("results", {}).get(STEP_NAME)
        if ev.status.get(saga) == COMPLETED and row != Row("applied", got, None):
            yield f"{saga} completed with the approval {got!r}, and its ledger row is {row}"
    # And the other way round: nobody but the approver completes a step.
    for key in sorted(ev.deferred):
        row = ev.ledger.get(key)
        if row is None or row.outcome not in OUTCOME_OF.values():
            continue
        if not any(OUTCOME_OF[c["call"]] == row.outcome for c in ev.recorded(key)):
            yield f"{key} is {row.outcome} in the ledger, and the approver never recorded that"


def deferred_handlers_ran_once(view: RunView) -> list[str]:
    ev = Evidence.of(view)
    complaints = [
        f"the handler of {key} ran {runs} times"
        + (" (its step was deferred)" if key in ev.deferred else "")
        for key, runs in sorted(ev.runs.items())
        if runs > 1
    ]
    complaints += [
        f"the handler of {key} committed a run the ledger does not know of"
        for key in sorted(ev.runs)
        if key not in ev.ledger
    ]
    complaints += [
        f"{key} was deferred, yet its handler's run is not there"
        for key in sorted(ev.deferred)
        if not ev.runs[key]
    ]
    complaints += [
        f"the compensation of {key} ran {len(rows)} times"
        for key, rows in sorted(ev.withdrawals.items())
        if len(rows) > 1
    ]
    return _capped(complaints)


def no_completion_after_cancel(view: RunView) -> list[str]:
    ev = Evidence.of(view)
    complaints = []
    for key in sorted(ev.withdrawals):
        if not ev.told(key, "cancelled"):
            continue
        row = ev.ledger.get(key)
        if row is None or row.outcome != "cancelled":
            complaints.append(
                f"{key} was cancelled (its compensation was told so), and its ledger row says "
                f"{row.outcome if row else 'nothing'} now: it was completed after the cancel"
            )
    for key, row in sorted(ev.ledger.items()):
        taken = ev.recorded(key)
        if row.outcome == "cancelled" and taken:
            complaints.append(f"{key} is cancelled, and the approver recorded {taken[0]['call']}")
    complaints += [
        f"a late {c['call']} of {c['key']}, withdrawn already, was recorded"
        for c in ev.calls
        if c["withdrawn"] and c["plan"] == "never" and c["answer"] in RECORDED
    ]
    return _capped(complaints)


def cancelled_steps_compensated(view: RunView) -> list[str]:
    ev = Evidence.of(view)
    complaints = []
    for key, row in sorted(ev.ledger.items()):
        if row.outcome != "cancelled":
            continue
        saga = key.rsplit(":", 2)[0]
        status, outstanding = ev.status.get(saga), ev.states.get(saga, {}).get("outstanding")
        # Compensated; or parked for a person while compensating (another compensation ran out
        # of retries), listing what is left: the checker holds that list to the ledgers.
        if status != COMPENSATED and not (status == FAILED and outstanding):
            complaints.append(f"{key} was cancelled, and {saga} is {status}")
        if not ev.told(key, "cancelled"):
            complaints.append(
                f"{key} was cancelled, and its compensation was not told so "
                f"(told {ev.withdrawals.get(key)})"
            )
    return _capped(complaints)


def refusals_match_the_ledger(view: RunView) -> list[str]:
    ev = Evidence.of(view)
    complaints = [] if ev.stopped else ["the approver's log is not complete (no 'stopped' line)"]
    for call in ev.calls:
        if call["answer"] != "refused":
            continue
        key, state = call["key"], call["state"]
        row = ev.ledger.get(key)
        outcome = row.outcome if row else None
        made = f"{call['call']} of {key} refused as {state!r}"
        if state in ("cancelled", *OUTCOME_OF.values()) and outcome != state:
            complaints.append(f"{made}, and the ledger says {outcome}")
        elif state in OUTCOME_OF.values() and OUTCOME_OF[call["call"]] == state:
            if row is not None and (
                (call["call"] == "complete" and row.result == call["args"][0])
                or (call["call"] == "reject" and row.reason == call["args"][0])
            ):
                complaints.append(f"{made}, and the ledger holds that very completion")
        elif state not in ("cancelled", *OUTCOME_OF.values()):
            complaints.append(f"{made}: {call['reason']}")
    return _capped(complaints)


@attrs.frozen
class Tally:
    """What a run's approvals went through: the paths a test wants exercised."""

    answers: Counter[str]  # "call answer[ state]" -> how many
    outcomes: Counter[str]  # ledger outcome of the approval steps -> how many
    resends: int  # approval requests sent again under the same key (retries and resends)

    @classmethod
    def of(cls, directory: Path, store: Path | str) -> Tally:
        ev = Evidence.read(directory, store, directory / "approvals.db")
        answers = Counter(
            " ".join(filter(None, (c["call"], c["answer"], c.get("state")))) for c in ev.calls
        )
        resends = 0
        with closing(open_store(store, read_only=True)) as opened:
            for saga_id in ev.status:
                key = idempotency_key(saga_id, STEP, "do")
                if key in ev.ledger:
                    intents = [
                        e for e in opened.events(saga_id) if e.kind == "intent" and e.step == STEP
                    ]
                    resends += max(0, len(intents) - 1)
        return cls(answers, Counter(r.outcome for r in ev.ledger.values()), resends)


#: The scenario's approval rules, in the order they run.
RULES = (
    completions_reached_their_sagas,
    deferred_handlers_ran_once,
    no_completion_after_cancel,
    cancelled_steps_compensated,
    refusals_match_the_ledger,
)
