"""An application actor that starts sagas from inside the actor system, as users' actors do."""

from __future__ import annotations

from typing import Any

import attrs

from understudy import SagaEvent, SagaFinished, StartRejected, StartSaga, Subscribe, Subscribed
from understudy.actors.system import ActorTypeDispatcher
from understudy.messages import QueryStatus, SagaStatus


@attrs.frozen
class PlaceOrder:
    coordinator: Any
    order_id: str
    payload: dict[str, Any]


@attrs.frozen
class AskStatus:
    coordinator: Any
    order_id: str


class Shop(ActorTypeDispatcher):  # type: ignore[misc]
    """Starts an order saga and reports the terminal reply to whoever asked."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: dict[str, Any] = {}

    def receiveMsg_PlaceOrder(self, msg: PlaceOrder, sender: Any) -> None:
        self.asked[msg.order_id] = sender
        self.send(msg.coordinator, StartSaga(msg.order_id, "order", msg.payload))

    def receiveMsg_SagaFinished(self, msg: SagaFinished, sender: Any) -> None:
        self.send(self.asked.pop(msg.saga_id), msg)

    def receiveMsg_StartRejected(self, msg: StartRejected, sender: Any) -> None:
        self.send(self.asked.pop(msg.saga_id), msg)

    def receiveMsg_AskStatus(self, msg: AskStatus, sender: Any) -> None:
        self.asked[msg.order_id] = sender
        self.send(msg.coordinator, QueryStatus(msg.order_id))

    def receiveMsg_SagaStatus(self, msg: SagaStatus, sender: Any) -> None:
        self.send(self.asked.pop(msg.saga_id), msg)


@attrs.frozen
class Listen:
    """Ask a Listener to subscribe to ``definition``'s lifecycle events at ``coordinator``."""

    coordinator: Any
    definition: str | None = None


@attrs.frozen
class Heard:
    """Ask a Listener for the lifecycle events it received so far."""


class Listener(ActorTypeDispatcher):  # type: ignore[misc]
    """An application actor that subscribes to lifecycle events and keeps what it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[SagaEvent] = []
        self.asker: Any = None

    def receiveMsg_Listen(self, msg: Listen, sender: Any) -> None:
        self.asker = sender
        self.send(msg.coordinator, Subscribe(definition=msg.definition))

    def receiveMsg_Subscribed(self, msg: Subscribed, sender: Any) -> None:
        self.send(self.asker, msg)

    def receiveMsg_SagaEvent(self, msg: SagaEvent, sender: Any) -> None:
        self.events.append(msg)

    def receiveMsg_Heard(self, msg: Heard, sender: Any) -> None:
        self.send(sender, tuple(self.events))
