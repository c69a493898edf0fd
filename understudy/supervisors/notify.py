"""A saga host's lifecycle notifications: once a batch is durable, the lifecycle events it
committed (:mod:`understudy.lifecycle`) go to the coordinator for its subscribers, and the ends
of sagas, their debt and operators' verbs to the ``understudy.saga`` logger.

Nothing is sent or logged before the commit (an event whose transition was not applied never
happened), and nothing at all while nobody subscribed and the logger is off: one test per
batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from understudy.lifecycle import SagaEvent, Subscribe, lifecycle_of
from understudy.persistence.base import Transition
from understudy.supervisors.protocol import (
    HostSetup,
    SagaEvents,
    SubscriptionsApplied,
    SubscriptionTable,
)

saga_log = logging.getLogger("understudy.saga")

#: Lifecycle kinds logged (at INFO; a saga parked, or owing a compensation, at WARNING).
LOGGED = {"completed": logging.INFO, "compensated": logging.INFO, "operator": logging.INFO}
LOGGED_WARNING = {"failed", "debt"}


class Notifier:
    """Mixed into the saga host, which provides ``coordinator``, ``setup`` and ``_post``."""

    watchers: tuple[Subscribe, ...] = ()
    coordinator: Any
    setup: HostSetup | None

    if TYPE_CHECKING:  # provided by the saga host and Thespian's Actor

        def _post(self, address: Any, message: Any) -> None: ...

        def send(self, address: Any, message: Any) -> None: ...

    @property
    def logging_events(self) -> bool:
        return saga_log.isEnabledFor(logging.INFO)

    def receiveMsg_SubscriptionTable(self, msg: SubscriptionTable, sender: Any) -> None:
        self.watchers = msg.filters
        # The table comes after the host's setup (the coordinator sends both, in that order).
        assert self.setup is not None
        self.send(sender, SubscriptionsApplied(self.setup.shard, msg.version))

    def _notify(self, batch: Sequence[Any], results: Sequence[bool]) -> None:
        """The lifecycle events of what ``batch`` committed (``results``: what applied)."""
        events: list[SagaEvent] = []
        watchers = self.watchers
        position = 0
        for staged in batch:
            applied = results[position : position + len(staged.writes)]
            position += len(staged.writes)
            saga = staged.saga
            definition = saga.definition if saga is not None else None
            for write, ok in zip(staged.writes, applied, strict=True):
                if not ok or not isinstance(write, Transition):
                    continue
                for event in write.events:
                    kind = lifecycle_of(event)
                    if kind is None:
                        continue
                    name = definition.name if definition is not None else ""
                    if kind in LOGGED or kind in LOGGED_WARNING:
                        _log(write.saga_id, kind, event.step, event.detail)
                    if not any(w.matches(write.saga_id, name, kind) for w in watchers):
                        continue
                    step = event.step
                    events.append(
                        SagaEvent(
                            write.saga_id,
                            name,
                            definition.version if definition is not None else 0,
                            kind,
                            event.at,
                            step,
                            definition.steps[step].name
                            if definition is not None and step is not None
                            else None,
                            event.attempt,
                            dict(event.detail),
                        )
                    )
        if events:
            self._post(self.coordinator, SagaEvents(tuple(events)))


def _log(saga_id: str, kind: str, step: int | None, detail: dict[str, Any]) -> None:
    level = logging.WARNING if kind in LOGGED_WARNING else LOGGED[kind]
    if not saga_log.isEnabledFor(level):
        return
    if kind == "operator":
        saga_log.log(
            level,
            "saga %s: %s by %s applied (%s)",
            saga_id,
            detail.get("verb"),
            detail.get("who"),
            detail.get("why"),
        )
    elif kind == "debt":
        saga_log.log(
            level,
            "saga %s owes compensation %s of step %s: %s",
            saga_id,
            detail.get("compensation"),
            detail.get("name", step),
            detail.get("error"),
        )
    else:
        reason = detail.get("reason")
        saga_log.log(level, "saga %s %s%s", saga_id, kind, f": {reason}" if reason else "")
