"""The choreography event log in the in-memory store (mixed into
:class:`~understudy.persistence.memory.MemoryStore`): rows held as the SQL backends store them
(bytes and checksums, :mod:`.eventlog`) and read back through the same decoding, so that the
contract suite means the same on every backend. Not durable: tests and experiments only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from understudy.persistence import eventlog
from understudy.persistence.base import (
    Acknowledgement,
    AckRecord,
    ChainHead,
    PublishedEvent,
    TopicEvent,
    TopicSubscription,
)


class MemoryEventLog:
    """The event log's half of :class:`~understudy.persistence.memory.MemoryStore`."""

    def _log(self) -> dict[str, Any]:
        state: dict[str, Any] | None = getattr(self, "_event_log", None)
        if state is None:
            # rows by seq; seq by event id; ack rows by (subscriber, event id), in order; and
            # subscriptions by (subscriber, topic)
            state = {"events": {}, "ids": {}, "acks": {}, "subs": {}}
            self._event_log = state
        return state

    def _check_open(self) -> None:  # overridden by MemoryStore
        pass

    def append_events(
        self, events: Sequence[TopicEvent], acks: Sequence[Acknowledgement] = ()
    ) -> list[bool]:
        self._check_open()
        rows = [eventlog.event_row(e) for e in events]  # raises before anything is kept
        ack_rows = [eventlog.ack_row(a) for a in acks]
        log = self._log()
        applied: list[bool] = []
        for row in rows:
            if row[0] in log["ids"]:
                applied.append(False)
                continue
            seq = len(log["events"]) + 1
            log["events"][seq] = (seq, *row)
            log["ids"][row[0]] = seq
            applied.append(True)
        for ack in ack_rows:
            log["acks"].setdefault((ack[0], ack[1]), ack)
        return applied

    def subscribe(
        self, subscriber: str, topics: Sequence[str], at: float
    ) -> list[TopicSubscription]:
        self._check_open()
        wanted = eventlog.check_subscription(subscriber, topics)
        subs = self._log()["subs"]
        end = len(self._log()["events"])
        for key in [k for k in subs if k[0] == subscriber and k[1] not in wanted]:
            del subs[key]
        for topic in wanted:
            subs.setdefault((subscriber, topic), (subscriber, topic, end, float(at)))
        return [
            eventlog.subscription_record(subs[k])
            for k in sorted(k for k in subs if k[0] == subscriber)
        ]

    def undelivered(self, subscriber: str, limit: int = 100) -> list[PublishedEvent]:
        self._check_open()
        log = self._log()
        starts = {
            topic: since
            for (who, topic), (_s, _t, since, _a) in log["subs"].items()
            if who == subscriber
        }
        found = [
            eventlog.event_record(row)
            for seq, row in sorted(log["events"].items())
            if row[2] in starts and seq > starts[row[2]] and (subscriber, row[1]) not in log["acks"]
        ]
        return found[: max(limit, 0)]

    def chain_events(self, correlation_id: str) -> list[PublishedEvent]:
        self._check_open()
        rows = sorted(self._log()["events"].items())
        return [eventlog.event_record(row) for _seq, row in rows if row[3] == correlation_id]

    def chain_acks(self, correlation_id: str) -> list[AckRecord]:
        self._check_open()
        rows = [row for row in self._log()["acks"].values() if row[2] == correlation_id]
        rows.sort(key=lambda row: (row[6], row[0]))
        return [eventlog.ack_record(row) for row in rows]

    def subscriptions(self) -> list[TopicSubscription]:
        self._check_open()
        subs = self._log()["subs"]
        return [eventlog.subscription_record(subs[k]) for k in sorted(subs)]

    def list_chains(self, limit: int = 100) -> list[ChainHead]:
        self._check_open()
        chains: dict[str, list[Any]] = {}
        for _seq, row in sorted(self._log()["events"].items()):
            head = chains.get(row[3])
            if head is None:
                # correlation, topic, source, first at, last at, count, first seq
                chains[row[3]] = [row[3], row[2], row[4], row[8], row[8], 1, row[0]]
            else:
                head[4] = max(head[4], row[8])
                head[5] += 1
        newest = sorted(chains.values(), key=lambda head: head[6], reverse=True)
        return [eventlog.chain_head(head[:6]) for head in newest[: max(limit, 0)]]
