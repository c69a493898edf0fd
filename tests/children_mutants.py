"""Deliberately broken children participants (:mod:`understudy.actors.children`): the checker's
rules for child sagas must catch each of them. Each breaks one promise of compensating a child
saga as one step of its parent, and works otherwise."""

from __future__ import annotations

from typing import Any

from understudy.actors.children import Children
from understudy.messages import StepReply, StepRequest


class UnwindsNothing(Children):
    """Answers a compensation of a child step at once, as done, and files no unwind: the
    parent ends compensated while its completed child stays completed."""

    def receiveMsg_StepRequest(self, msg: StepRequest, sender: Any) -> None:
        if msg.kind == "undo":
            self.send(sender, _ok(msg))
            return
        super().receiveMsg_StepRequest(msg, sender)


class AnswersUnwindBeforeItEnds(Children):
    """Files the unwind of a child step and answers it at once, as done, without waiting for
    the child to be compensated: the parent compensates its earlier steps while the child's
    are still being compensated (out of reverse order)."""

    def receiveMsg_StepRequest(self, msg: StepRequest, sender: Any) -> None:
        super().receiveMsg_StepRequest(msg, sender)
        if msg.kind == "undo":
            self.send(sender, _ok(msg))


class NamesTheChildWrongly(Children):
    """Starts (and waits on, and unwinds) each child under an id of its own making, not the
    one its parent's step names: the store holds children no parent runs, and the parent's
    step has no child under the id the step names."""

    def child_of(self, msg: StepRequest) -> str:
        return f"{msg.saga_id}-{msg.step_name}"


def _ok(msg: StepRequest) -> StepReply:
    return StepReply(msg.saga_id, msg.step, msg.kind, msg.key, msg.attempt, msg.incarnation, "ok")
