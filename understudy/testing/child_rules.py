"""The checker's rules for child sagas (:meth:`understudy.Step.child`), judged from the store
alone: each parent's timeline and definition, each child's row and timeline.

A child step has no participant ledger: its effect is the child saga. :func:`child_effects`
turns each child's row and timeline into the rows a ledger would hold for the step, so that
the checker's own rules judge child steps as any other ([write-ahead], [completed],
[compensated] and its order, [forward-after-undo], [needs-attention]):

- the forward effect is applied when the child completed (at its ``completed`` event);
- the compensation is applied when a child that had completed ends compensated (unwound),
  and is a no-op when the child ended compensated without having completed (it failed, was
  cancelled while running, or was recorded compensated before it started); at its final
  ``compensated`` event, so a child is compensated as one step, in its place in the order.

:func:`check_children` adds the rules of the link itself:

- [child-parent] every saga started as a child names a parent that exists, whose definition
  runs that child (definition and version) at the step its id names, and which recorded the
  step's intent (or its compensation's, for a child recorded compensated before it started)
  before the child was started; every ``unwind`` of a child follows its parent's
  compensation intent for that step;
- [child-consistent] a completed parent's children completed (and were never unwound); a
  compensated parent's children, where they exist, are compensated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from understudy.actors.verbs import UNWIND
from understudy.definitions import CHILDREN, SagaDefinition, child_id
from understudy.persistence.base import COMPENSATED, COMPLETED, EventRecord, SagaRecord

if TYPE_CHECKING:
    from understudy.testing.checker import LedgerRow, Report

Events = Callable[[str], list[EventRecord]]


def _terminal(events: list[EventRecord], status: str) -> list[EventRecord]:
    return [e for e in events if e.kind == status and e.step is None]


def child_effects(
    records: Mapping[str, SagaRecord],
    definitions: Mapping[tuple[str, int], SagaDefinition],
    events: Events,
    row: Callable[..., LedgerRow],
) -> Iterator[LedgerRow]:
    """The ledger rows each parent's child steps stand for (see the module docstring)."""
    for parent, record in records.items():
        definition = definitions.get((record.definition, record.version))
        if definition is None:
            continue
        for index, step in enumerate(definition.steps):
            if step.saga is None:
                continue
            child = records.get(child_id(parent, step.name))
            if child is None:
                continue
            timeline = events(child.saga_id)
            completed = _terminal(timeline, COMPLETED)
            if completed:
                yield row(CHILDREN, parent, index, "do", "applied", completed[0].at)
            compensated = _terminal(timeline, COMPENSATED)
            if child.status != COMPENSATED or not compensated:
                continue
            if completed:
                # Unwound: its compensation's effect is the child compensated, as one step.
                yield row(CHILDREN, parent, index, "undo", "applied", compensated[-1].at)
                continue
            # Compensated before it completed (refused, cancelled, or recorded compensated
            # before it started): the parent's compensation of the step finds nothing to undo
            # once it is sent and the child has ended.
            undo = [
                e.at for e in events(parent) if e.kind == "compensation-intent" and e.step == index
            ]
            if undo:
                yield row(CHILDREN, parent, index, "undo", "noop", max(undo[0], compensated[-1].at))


def check_children(
    report: Report,
    records: Mapping[str, SagaRecord],
    definitions: Mapping[tuple[str, int], SagaDefinition],
    events: Events,
) -> None:
    """[child-parent] and [child-consistent] (see the module docstring)."""
    for saga_id, record in sorted(records.items()):
        timeline = events(saga_id)
        started = [e for e in timeline if e.kind == "started"]
        if started and "parent" in started[0].detail:
            _check_link(report, record, timeline, started[0], records, definitions, events)
        definition = definitions.get((record.definition, record.version))
        if definition is None or record.status not in (COMPLETED, COMPENSATED):
            continue
        for step in definition.steps:
            if step.saga is None:
                continue
            child = records.get(child_id(saga_id, step.name))
            if record.status == COMPLETED and (
                child is None
                or child.status != COMPLETED
                or any(_is_unwind(e) for e in events(child.saga_id))
            ):
                report.add(
                    "child-consistent",
                    saga_id,
                    f"completed, but its child saga {child_id(saga_id, step.name)!r} (step "
                    f"{step.name!r}) is "
                    + ("missing" if child is None else f"{child.status}, or was unwound"),
                )
            elif record.status == COMPENSATED and child is not None and child.status != COMPENSATED:
                report.add(
                    "child-consistent",
                    saga_id,
                    f"compensated, but its child saga {child.saga_id!r} (step {step.name!r}) is "
                    f"{child.status}",
                )


def _is_unwind(event: EventRecord) -> bool:
    return event.kind == "operator" and event.detail.get("verb") == UNWIND


def _check_link(
    report: Report,
    record: SagaRecord,
    timeline: list[EventRecord],
    started: EventRecord,
    records: Mapping[str, SagaRecord],
    definitions: Mapping[tuple[str, int], SagaDefinition],
    events: Events,
) -> None:
    saga_id, parent = record.saga_id, str(started.detail["parent"])
    add = report.add
    if parent not in records:
        add("child-parent", saga_id, f"started as a child of {parent!r}, which the store lacks")
        return
    outer = records[parent]
    definition = definitions.get((outer.definition, outer.version))
    if definition is None:
        return  # a version this check was not given
    steps = [
        (i, s)
        for i, s in enumerate(definition.steps)
        if s.saga is not None and child_id(parent, s.name) == saga_id
    ]
    if not steps:
        add(
            "child-parent",
            saga_id,
            f"started as a child of {parent!r}, whose definition {outer.definition!r} "
            f"v{outer.version} has no child step this id names",
        )
        return
    index, step = steps[0]
    assert step.saga is not None
    if step.saga.key != (record.definition, record.version):
        add(
            "child-parent",
            saga_id,
            f"is {record.definition!r} v{record.version}, but step {step.name!r} of "
            f"{parent!r} runs {step.saga.name!r} v{step.saga.version}",
        )
    first: dict[str, float] = {}
    for event in events(parent):
        if event.step == index and event.kind in ("intent", "compensation-intent"):
            first.setdefault(event.kind, event.at)
    unwinds = [e for e in timeline if _is_unwind(e)]
    # A child recorded compensated before it started is written by its unwind.
    before = "compensation-intent" if unwinds and unwinds[0].at <= started.at else "intent"
    if before not in first or started.at < first[before]:
        add(
            "child-parent",
            saga_id,
            f"started before its parent {parent!r} recorded the {before} of step {step.name!r}",
        )
    for unwind in unwinds:
        if "compensation-intent" not in first or unwind.at < first["compensation-intent"]:
            add(
                "child-parent",
                saga_id,
                f"unwound (command {unwind.detail.get('command')}) before its parent "
                f"{parent!r} recorded the compensation intent of step {step.name!r}",
            )
            break
