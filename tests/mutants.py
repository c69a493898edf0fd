"""Deliberately broken saga hosts: the harness must catch each of them."""

from __future__ import annotations

from typing import Any

from understudy.actors.saga import Send
from understudy.supervisors.host import SagaHost


class SendsBeforeCommit(SagaHost):
    """Broken on purpose: sends each batch's requests before committing its intents and
    snapshots (write-ahead turned around). Nothing goes wrong until a crash or a store error
    lands between the send and the commit."""

    def receiveMsg_Flush(self, msg: Any, sender: Any) -> None:
        for staged in self.batch:
            sends = [c for c in staged.commands if isinstance(c, Send)]
            if sends and staged.saga is not None:
                self._carry_out(staged.saga, sends, [])
                staged.commands = [c for c in staged.commands if not isinstance(c, Send)]
        self._send_outbox()  # out the door now, before the commit below
        super().receiveMsg_Flush(msg, sender)
