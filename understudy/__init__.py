"""understudy: an actor-model saga coordinator.

Define a saga as steps with compensations, write participants as actors, start sagas from app
actors, asyncio or plain code, and let supervised saga actors finish every saga through crashes:
forward, or compensated in reverse order.
"""

from understudy.actors.deferred import complete, fail, reject
from understudy.actors.participant import (
    Later,
    Participant,
    Reject,
    StepContext,
    action,
    compensation,
)
from understudy.actors.system import IN_PROCESS, MULTIPROC_TCP, MULTIPROC_UDP
from understudy.choreography import Chain, EventContext, Reactor, reacts
from understudy.definitions import (
    Irreversible,
    RetryPolicy,
    SagaDefinition,
    Step,
    WorkflowDefinition,
)
from understudy.errors import (
    ActorSystemError,
    ChainNotFound,
    CompletionRefused,
    CoordinatorGone,
    CoordinatorTimeout,
    CorruptRecord,
    DefinitionError,
    LeaseLost,
    LedgerError,
    LocalStepFailed,
    PayloadError,
    SagaNotFound,
    SagaRejected,
    ShardCountMismatch,
    StoreError,
    StoreInUse,
    StoreUnavailable,
    UnderstudyError,
    UnknownDefinition,
    UnknownParticipant,
    VerbRefused,
)
from understudy.lifecycle import SagaEvent, Subscribe, Subscribed, Unsubscribe
from understudy.local import Local
from understudy.messages import (
    ParticipantReady,
    QueryStatus,
    RegisterParticipant,
    SagaAccepted,
    SagaFinished,
    SagaStatus,
    StartRejected,
    StartSaga,
)
from understudy.operate import Debt, Operator
from understudy.persistence.base import COMPENSATED, COMPLETED, FAILED, CommandRecord, SagaRecord
from understudy.runtime import Understudy
from understudy.subscription import Subscription
from understudy.supervisors.coordinator import Coordinator
from understudy.supervisors.policy import RestartPolicy
from understudy.supervisors.protocol import CoordinatorReady, HostsInfo, StartCoordinator

__version__ = "0.1.0"

__all__ = [
    "COMPENSATED",
    "COMPLETED",
    "FAILED",
    "IN_PROCESS",
    "MULTIPROC_TCP",
    "MULTIPROC_UDP",
    "ActorSystemError",
    "Chain",
    "ChainNotFound",
    "CommandRecord",
    "CompletionRefused",
    "Coordinator",
    "CoordinatorGone",
    "CoordinatorReady",
    "CoordinatorTimeout",
    "CorruptRecord",
    "Debt",
    "DefinitionError",
    "EventContext",
    "HostsInfo",
    "Irreversible",
    "Later",
    "LeaseLost",
    "LedgerError",
    "Local",
    "LocalStepFailed",
    "Operator",
    "Participant",
    "ParticipantReady",
    "PayloadError",
    "QueryStatus",
    "Reactor",
    "RegisterParticipant",
    "Reject",
    "RestartPolicy",
    "RetryPolicy",
    "SagaAccepted",
    "SagaDefinition",
    "SagaEvent",
    "SagaFinished",
    "SagaNotFound",
    "SagaRecord",
    "SagaRejected",
    "SagaStatus",
    "ShardCountMismatch",
    "StartCoordinator",
    "StartRejected",
    "StartSaga",
    "Step",
    "StepContext",
    "StoreError",
    "StoreInUse",
    "StoreUnavailable",
    "Subscribe",
    "Subscribed",
    "Subscription",
    "Understudy",
    "UnderstudyError",
    "UnknownDefinition",
    "UnknownParticipant",
    "Unsubscribe",
    "VerbRefused",
    "WorkflowDefinition",
    "action",
    "compensation",
    "complete",
    "fail",
    "reacts",
    "reject",
]
