"""Write-ahead under a participant restart: a request is never sent before its intent is
durable, even when the participant's address changes while the intent waits for its commit."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import attrs
import pytest
from conftest import PARTICIPANTS, order_definition
from participants import Recorder

from understudy.actors.system import class_path, start_actor_system
from understudy.failpoints import Fault
from understudy.messages import (
    AddParticipant,
    ConfigureParticipant,
    RegisterParticipant,
    StartSaga,
)
from understudy.persistence.sqlite import SQLiteStore
from understudy.supervisors.coordinator import Coordinator
from understudy.supervisors.policy import RestartPolicy
from understudy.supervisors.protocol import CoordinatorSetup, StoreConfig


@attrs.frozen
class Hop:
    coordinator: Any
    left: int


class Reregistering(Recorder):
    """Starts a saga, then after ``left`` more hops through its own mailbox registers itself as
    the new ``inventory`` (what a participant restart looks like to the saga host)."""

    def receiveMsg_StartSaga(self, msg: StartSaga, sender: Any) -> None:
        coordinator, hops = msg.payload.pop("_coordinator"), msg.payload.pop("_hops")
        self.send(coordinator, msg)
        self.send(self.myAddress, Hop(coordinator, hops))

    def receiveMsg_Hop(self, msg: Hop, sender: Any) -> None:
        if msg.left == 0:
            self.send(msg.coordinator, RegisterParticipant("inventory"))
        else:
            self.send(self.myAddress, Hop(msg.coordinator, msg.left - 1))


@pytest.mark.parametrize("hops", range(8))
def test_a_participant_replaced_mid_step_gets_no_request_before_its_intent(
    tmp_path: Path, hops: int
) -> None:
    """Whenever the new inventory registers, and with the commit of the reserve intent failing,
    the saga ends compensated and inventory holds no reservation that was never released."""
    store = str(tmp_path / "sagas.db")
    fails_once = (Fault("host.before_commit", "raise", nth=2),)  # the batch with step 1's intent
    asys = start_actor_system()
    try:
        coordinator = asys.createActor(Coordinator)
        specs = tuple(
            AddParticipant(n, class_path(Recorder), {"database": str(tmp_path / f"{n}.db")})
            for n in PARTICIPANTS
        )
        definition = order_definition(on_recovery="compensate")
        setup = CoordinatorSetup(
            StoreConfig(store), (definition,), 1, RestartPolicy(), specs, fails_once
        )
        assert asys.ask(coordinator, setup, 10).error is None
        relay = asys.createActor(Reregistering)
        configure = ConfigureParticipant(
            "inventory", {"database": str(tmp_path / "inventory.db")}, fails_once
        )
        asys.ask(relay, configure, 5)
        payload = {"_coordinator": coordinator, "_hops": hops}
        asys.tell(relay, StartSaga("s", "order", payload, wait=False))
        deadline = time.monotonic() + 20
        record = None
        while time.monotonic() < deadline:
            asys.listen(0.05)
            with SQLiteStore(store, read_only=True) as reader:
                record = reader.get("s")
            if record is not None and record.terminal:
                break
    finally:
        asys.shutdown()
    assert record is not None and "compensated" == record.status
    with closing(sqlite3.connect(tmp_path / "inventory.db")) as db:
        effects = db.execute("SELECT step, kind FROM effects ORDER BY seq").fetchall()
    assert effects in ([], [("reserve", "do"), ("reserve", "undo")])
