"""The coordinator's subscriptions to lifecycle events: who asked for which, and handing each
event the saga hosts report to every subscriber it matches.

A :class:`~understudy.lifecycle.Subscribe` is answered once every saga host runs with the new
table (each answers :class:`SubscriptionsApplied`), so that every event committed after the
answer is delivered. A host created later (restarted after a crash) gets the table with its
setup. Events reach subscribers in the order their host committed them; events of sagas on
different hosts may interleave.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import attrs

from understudy.actors.batching import Outbox
from understudy.lifecycle import Subscribe, Subscribed, Unsubscribe, check_kinds
from understudy.supervisors.protocol import SagaEvents, SubscriptionsApplied, SubscriptionTable


class EventFanout:
    """Mixed into the coordinator, which provides ``hosts``, ``batch_clients`` and ``send``."""

    hosts: dict[int, Any]
    batch_clients: list[Any]

    if TYPE_CHECKING:

        def send(self, address: Any, message: Any) -> None: ...

    def _fanout_init(self) -> None:
        self.subscriptions: dict[str, tuple[Any, Subscribe]] = {}
        self.table_version = 0
        self.table_acks: dict[int, int] = {}
        # Subscribers waiting for their answer until the hosts run with ``version``.
        self.unanswered: list[tuple[Any, str, int]] = []

    def receiveMsg_Subscribe(self, msg: Subscribe, sender: Any) -> None:
        subscription_id = msg.subscription_id or f"sub-{uuid.uuid4().hex[:12]}"
        try:
            kinds = check_kinds(msg.kinds)
        except ValueError as exc:
            self.send(sender, Subscribed(subscription_id, str(exc)))
            return
        self.subscriptions[subscription_id] = (
            sender,
            attrs.evolve(msg, kinds=kinds, subscription_id=subscription_id),
        )
        self._publish_table()
        self.unanswered.append((sender, subscription_id, self.table_version))
        self._answer_subscribers()

    def receiveMsg_Unsubscribe(self, msg: Unsubscribe, sender: Any) -> None:
        if self.subscriptions.pop(msg.subscription_id, None) is not None:
            self._publish_table()

    def receiveMsg_SubscriptionsApplied(self, msg: SubscriptionsApplied, sender: Any) -> None:
        self.table_acks[msg.shard] = max(msg.version, self.table_acks.get(msg.shard, 0))
        self._answer_subscribers()

    def receiveMsg_SagaEvents(self, msg: SagaEvents, sender: Any) -> None:
        # One message per subscriber that takes batches (the runtime's bridge); an app actor
        # gets its events one by one.
        batched = Outbox()
        for event in msg.events:
            for subscription_id, (address, sub) in self.subscriptions.items():
                if not sub.matches(event.saga_id, event.definition, event.kind):
                    continue
                addressed = attrs.evolve(event, subscription_id=subscription_id)
                if any(client == address for client in self.batch_clients):
                    batched.add(address, addressed)
                else:
                    self.send(address, addressed)
        batched.send_all(self.send)

    def _table(self) -> SubscriptionTable:
        return SubscriptionTable(
            self.table_version, tuple(sub for _address, sub in self.subscriptions.values())
        )

    def _publish_table(self) -> None:
        self.table_version += 1
        table = self._table()
        for host in self.hosts.values():
            self.send(host.address, table)

    def _send_table_to(self, address: Any) -> None:
        """A host just created gets the table with its setup (none while nobody subscribed)."""
        if self.subscriptions:
            self.send(address, self._table())

    def _answer_subscribers(self) -> None:
        if not self.unanswered:
            return
        running = min((self.table_acks.get(shard, 0) for shard in self.hosts), default=0)
        if not self.hosts:
            running = self.table_version
        waiting = []
        for address, subscription_id, version in self.unanswered:
            if running >= version:
                self.send(address, Subscribed(subscription_id))
            else:
                waiting.append((address, subscription_id, version))
        self.unanswered = waiting
