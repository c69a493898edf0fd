"""Deliberately broken approvals participants (``demo.approvals``): the harness's approval rules
(``demo.deferred_checks``) must catch each of them. Each breaks one promise of steps that finish
later, and works otherwise."""

from __future__ import annotations

from typing import Any

from demo.approvals import Approvals
from understudy import StepContext
from understudy.actors.participant import _reply, _Staged
from understudy.messages import StepRequest


class RunsAgainOnResend(Approvals):
    """Runs the handler of a waiting step again on every resend of its request (the saga's
    retry after a timeout, a resend after a restart), where the ledger says to wait."""

    def _decide(self, msg: StepRequest, sender: Any) -> Any:
        ledger = self.ledger
        assert ledger is not None
        row = ledger.row_of(msg.key) if msg.kind == "do" else None
        staged = super()._decide(msg, sender)
        if row is not None and row[0] == "deferred":
            # The bug: the step waits, and its handler runs (and commits) once more.
            context = StepContext(
                msg.saga_id,
                msg.step_name,
                msg.action,
                msg.kind,
                msg.key,
                msg.attempt,
                msg.payload,
                msg.results,
                handles=self._handles,
            )
            self.approve(context, ledger.connection)
        return staged


class AcceptsCompletionsAfterCancel(Approvals):
    """Compensates a waiting step without cancelling its handle: a completion after the
    compensation is accepted, and the step applies after it was undone."""

    def _decide(self, msg: StepRequest, sender: Any) -> Any:
        staged = super()._decide(msg, sender)
        if msg.kind == "undo" and self.ledger is not None:
            # The bug: the cancel is undone in the compensation's own transaction.
            self.ledger.connection.execute(
                "UPDATE understudy_ledger SET outcome = 'deferred' "
                "WHERE key = ? AND outcome = 'cancelled'",
                (msg.forward_key,),
            )
        return staged


class AnswersResendsWithoutWaiting(Approvals):
    """Answers a resend of a waiting step at once, as if it were done (with no result), where
    the ledger says to wait: the saga goes on without the approval its approver gives later."""

    def _decide(self, msg: StepRequest, sender: Any) -> Any:
        ledger = self.ledger
        assert ledger is not None
        row = ledger.row_of(msg.key) if msg.kind == "do" else None
        if row is not None and row[0] == "deferred":
            # The bug: "it was sent before, so it must be done".
            return _Staged(msg, sender, _reply(msg, "ok", result=None, replayed=True))
        return super()._decide(msg, sender)
