"""Which state machine runs a saga: a :class:`~understudy.actors.saga.Saga` for a linear
definition, a :class:`~understudy.actors.workflow.Workflow` for a
:class:`~understudy.definitions.WorkflowDefinition`. The host, recovery and the operators' tools
build instances here and use what the two have in common."""

from __future__ import annotations

from typing import Any

from understudy.actors.saga import Saga
from understudy.actors.workflow import Workflow
from understudy.definitions import SagaDefinition, WorkflowDefinition
from understudy.persistence.base import SagaRecord

Machine = Saga | Workflow


def restore(
    saga_id: str,
    definition: SagaDefinition,
    payload: dict[str, Any],
    incarnation: int,
    snapshot: bytes | None,
    snapshot_version: int,
    recovery_attempts: int,
    workflow: type[Workflow] = Workflow,
) -> Machine:
    """The instance a snapshot holds (a new one when ``snapshot`` is None); raises
    :class:`~understudy.errors.CorruptRecord` when it cannot be trusted. ``workflow``: the
    class that runs workflows (the host's; tests put a broken one there)."""
    if isinstance(definition, WorkflowDefinition):
        return workflow.restore(
            saga_id, definition, payload, incarnation, snapshot, snapshot_version, recovery_attempts
        )
    return Saga.restore(
        saga_id, definition, payload, incarnation, snapshot, snapshot_version, recovery_attempts
    )


def from_record(
    record: SagaRecord, definition: SagaDefinition, workflow: type[Workflow] = Workflow
) -> Machine:
    """The instance a stored row holds; :class:`~understudy.errors.CorruptRecord` when the row
    failed its checksum or cannot be trusted."""
    if isinstance(definition, WorkflowDefinition):
        return workflow.from_record(record, definition)
    return Saga.from_record(record, definition)
