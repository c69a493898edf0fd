"""A saga host's intake of operators' commands: find the ones for its shard, apply each to its
saga exactly once, or refuse it with the reason.

An operator (``understudy cancel ...``, :class:`understudy.operate.Operator`) stores a command
as pending; the host that owns the saga's shard looks for pending commands every
``command_poll`` seconds (0.5 by default), applies the verb to the saga
(:mod:`understudy.actors.verbs`) and commits the saga's transition and the command's
:class:`~understudy.persistence.base.CommandDone` in one transaction, before anything the verb
caused is sent (I3). A host that dies before that commit leaves the command pending, and the
next holder of the shard applies it; a host that dies after it leaves it applied, and the next
holder resends what the saga waits on: a verb is applied once, whatever crashes. A refusal is
committed the same way, with an ``operator-refused`` event in the saga's timeline.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from understudy import codec, failpoints
from understudy.actors import machines, verbs
from understudy.actors.machines import Machine
from understudy.actors.plumbing import CommandFiled
from understudy.actors.workflow import Workflow
from understudy.errors import CorruptRecord, LeaseLost, StoreError, VerbRefused
from understudy.persistence.base import (
    APPLIED,
    COMPLETED,
    FAILED,
    CommandDone,
    CommandRecord,
    NewSaga,
    SagaRecord,
)
from understudy.supervisors.protocol import HostSetup, PollCommands

if TYPE_CHECKING:
    from understudy.definitions import SagaDefinition
    from understudy.persistence import SagaStore
    from understudy.persistence.base import Lease

log = logging.getLogger("understudy.host")

#: Commands looked at per poll: more wait for the next one, half a second later.
POLL_LIMIT = 100


class CommandIntake:
    """Mixed into the saga host, which provides the state and methods below."""

    setup: HostSetup | None
    store: SagaStore | None
    lease: Lease | None
    lost: bool
    stopped: bool
    sagas: dict[str, Machine]
    workflow_class: type[Workflow]
    batch: list[Any]
    applying: set[int]
    uncommitted: set[str]
    polling: bool
    definitions: dict[tuple[str, int], SagaDefinition]

    if TYPE_CHECKING:

        def _run(
            self,
            saga: Machine,
            step: Any,
            new: NewSaga | None = None,
            done: CommandDone | None = None,
            reopen: bool = False,
            unwind: bool = False,
        ) -> None: ...

        def _stage_done(self, done: CommandDone) -> None: ...

        def _lose_lease(self, exc: LeaseLost) -> None: ...

        def _working_on(self, saga_id: str) -> None: ...

        def _idle(self) -> None: ...

        def wakeupAfter(self, delay: timedelta, payload: Any = None) -> None: ...

    def _start_polling(self) -> None:
        """Once the shard's sagas are resumed: look for commands from now on."""
        if not self.polling:
            self.polling = True
            self._poll_commands()

    def receiveMsg_CommandFiled(self, msg: CommandFiled, sender: Any) -> None:
        # Looked at now; the poll's own schedule goes on as it was.
        if self.polling:
            self._look_for_commands()

    def _poll_commands(self) -> None:
        if self._look_for_commands():
            assert self.setup is not None
            self.wakeupAfter(timedelta(seconds=self.setup.command_poll), PollCommands())

    def _look_for_commands(self) -> bool:
        """Apply (or refuse) what is pending for this shard; False once the host has stopped
        or lost its shard."""
        if self.store is None or self.lease is None or self.setup is None or self.lost:
            return False  # stopped or lost: the shard's next holder applies what is pending
        try:
            pending = self.store.commands(shard=self.setup.shard, limit=POLL_LIMIT)
            for command in pending:
                if command.id not in self.applying:
                    self._apply_one(command)
        except LeaseLost as exc:
            self._lose_lease(exc)
            return False
        except StoreError as exc:
            log.warning("saga host %d could not read commands (%s)", self.setup.shard, exc)
        return True

    def _apply_one(self, command: CommandRecord) -> None:
        """:meth:`_apply_command`, where a bug outside the saga's own guard costs this command
        one poll (it stays pending, looked at again) and never the shard's intake: an escaping
        exception would end the poll's schedule, and every later command would wait for a
        restart."""
        try:
            self._apply_command(command)
        except (LeaseLost, StoreError):
            raise
        except Exception:
            assert self.setup is not None
            log.exception(
                "saga host %d could not apply command %d (%s of saga %s); it stays pending",
                self.setup.shard,
                command.id,
                command.verb,
                command.saga_id,
            )
            self.applying.discard(command.id)

    def _apply_command(self, command: CommandRecord) -> None:
        """Apply ``command`` to its saga, or refuse it; staged with the next batch."""
        assert self.store is not None
        now = time.time()
        if command.corrupt is not None:
            self._refuse(command, None, f"the stored command cannot be trusted: {command.corrupt}")
            return
        saga = self.sagas.get(command.saga_id)
        # A saga parked by a batch not committed yet is still in memory, and parked in the store
        # by the time this transition commits (after that batch): it reopens it too. So does a
        # completed child saga its parent unwinds.
        reopen = saga is not None and saga.status == FAILED
        unwind = command.verb == verbs.UNWIND and saga is not None and saga.status == COMPLETED
        new: NewSaga | None = None
        if saga is None:
            record = self.store.get(command.saga_id)
            if command.verb == verbs.UNWIND and (record is None or record.status == COMPLETED):
                child = self._child_saga(command, record, now)
                if child is None:
                    return
                saga, new = child
                unwind = new is None
            else:
                loaded = self._parked_saga(command, record)
                if loaded is None:
                    return
                saga, reopen = loaded, True
            self.sagas[saga.saga_id] = saga
        self.applying.add(command.id)
        refused: list[str] = []
        unstarted = new is not None

        def step() -> Any:
            # Inside the saga's guard: a bug here restarts the saga, as a crash would, and the
            # command stays pending for its next incarnation.
            failpoints.hit("host.before_verb", command.saga_id)
            if unstarted:
                saga._started(now, command.args.get("parent"))
            try:
                return verbs.operate(
                    saga, command.verb, command.args, command.who, command.why, command.id, now
                )
            except VerbRefused as exc:
                refused.append(str(exc))
                return None

        done = CommandDone(command.id, saga.saga_id, saga.incarnation, APPLIED, "applied", now)
        self._working_on(saga.saga_id)
        self._run(saga, step, new=new, done=done, reopen=reopen, unwind=unwind)
        self._idle()
        if self.sagas.get(saga.saga_id) is not saga:
            # The saga crashed applying it (and restarts from its snapshot): nothing of the
            # command is staged, so it stays pending and the next poll applies it again.
            self.applying.discard(command.id)
            return
        if refused:
            if reopen or unwind or unstarted:
                self.sagas.pop(saga.saga_id, None)  # as it was: it leaves memory again
                self.uncommitted.discard(saga.saga_id)
            self.applying.discard(command.id)
            self._refuse(command, saga.incarnation, refused[0])
        # Applied: logged (understudy.saga) once committed, with the saga's other events.

    def _child_saga(
        self, command: CommandRecord, record: SagaRecord | None, now: float
    ) -> tuple[Machine, NewSaga | None] | None:
        """The child saga a parent unwinds, when it is not in memory: the completed one the
        store holds, or a new one that was never started (``NewSaga`` given), to be recorded
        as compensated so that a late start finds it finished. None: refused."""
        args = command.args
        if record is not None:
            key = (record.definition, record.version)
        else:
            key = (str(args.get("definition")), int(args.get("version") or 0))
        definition = self.definitions.get(key)
        if definition is None:
            self._refuse(
                command,
                record.incarnation if record else None,
                f"child saga {command.saga_id!r} is of definition {key[0]!r} v{key[1]}, which "
                "the runtime owning it does not have",
            )
            return None
        if record is not None:
            try:
                return machines.from_record(record, definition, self.workflow_class), None
            except CorruptRecord as exc:
                self._refuse(
                    command, record.incarnation, f"the saga's stored state cannot be read: {exc}"
                )
                return None
        saga = machines.restore(
            command.saga_id, definition, {}, 1, None, 0, 0, workflow=self.workflow_class
        )
        self.uncommitted.add(saga.saga_id)
        new = NewSaga(
            saga.saga_id, definition.name, definition.version, codec.encode({}, "payload"), now
        )
        return saga, new

    def _parked_saga(self, command: CommandRecord, record: SagaRecord | None) -> Machine | None:
        """The saga of a command that is not in memory, when it is parked and can be acted on;
        otherwise the command is refused (unknown, finished, unreadable, no definition) or
        left for a later poll (a saga being reloaded) and None is returned."""
        if record is None:
            self._refuse(command, None, f"no saga with id {command.saga_id!r} in this store")
            return None
        if record.status != FAILED:
            if record.terminal:
                self._refuse(
                    command,
                    record.incarnation,
                    f"cannot {command.verb} saga {command.saga_id!r}: it is {record.status}, "
                    "and a finished saga is never changed",
                )
            elif (record.definition, record.version) not in self.definitions:
                self._refuse(
                    command,
                    record.incarnation,
                    f"saga {command.saga_id!r} is pinned to definition {record.definition!r} "
                    f"v{record.version}, which the runtime owning it does not have; start one "
                    "with that version registered",
                )
            # else: unfinished and not in memory yet (being reloaded): the next poll applies it
            return None
        definition = self.definitions.get((record.definition, record.version))
        if definition is None:
            self._refuse(
                command,
                record.incarnation,
                f"saga {command.saga_id!r} is pinned to definition {record.definition!r} "
                f"v{record.version}, which this runtime does not have",
            )
            return None
        try:
            return machines.from_record(record, definition, self.workflow_class)
        except CorruptRecord as exc:
            self._refuse(
                command, record.incarnation, f"the saga's stored state cannot be read: {exc}"
            )
            return None

    def _refuse(self, command: CommandRecord, incarnation: int | None, reason: str) -> None:
        log.info(  # an operator's mistake, answered to them: not the runtime's problem
            "saga %s: %s by %s refused: %s", command.saga_id, command.verb, command.who, reason
        )
        self.applying.add(command.id)
        self._stage_done(verbs.refusal(command, incarnation, reason, time.time()))
