"""Failpoints: the fault values and their validation, how :func:`hit` counts and fires, fault
schedules saved as JSON, and each kind of fault injected through a real runtime (store errors
through the real SQLite store, lost and repeated messages, a lost reply to the caller, and a
SIGKILL of the whole multi-process actor system).
"""

from __future__ import annotations

import collections
import json
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest
from conftest import all_effects, order_definition, start_runtime, timeline

import understudy
from understudy import failpoints
from understudy.actors.watch import is_running, process_identity
from understudy.failpoints import (
    ACTIONS,
    CRASHES,
    MESSAGE_ACTIONS,
    POINT_KINDS,
    POINTS,
    SERVER_ACTIONS,
    STORE_ACTIONS,
    Fault,
    InjectedFault,
    actions_for,
)
from understudy.persistence.base import NewSaga
from understudy.persistence.sqlite import SQLiteStore
from understudy.testing.schedule import (
    FORMAT,
    FaultSchedule,
    random_schedule,
    single_fault,
)

FORWARD = [("create", "do"), ("reserve", "do"), ("charge", "do")]
BACKWARD = [("create", "do"), ("reserve", "do"), ("reserve", "undo"), ("create", "undo")]

CODE_POINT = "host.after_send"
MESSAGE_POINT = "host.send"
STORE_POINT = "store.in_transaction"


@pytest.fixture(autouse=True)
def _disarmed() -> Iterator[None]:
    """Nothing armed before a test, and nothing left armed after it (in-process runtimes arm
    this very process)."""
    failpoints.disarm()
    yield
    failpoints.disarm()


def _no_duplicate_effects(tmp_path: Path) -> None:
    for name, rows in all_effects(tmp_path).items():
        duplicates = [row for row, n in collections.Counter(rows).items() if n > 1]
        assert duplicates == [], f"{name} applied an effect more than once: {duplicates}"


def _events(tmp_path: Path, saga_id: str) -> list[str]:
    with SQLiteStore(tmp_path / "sagas.db") as store:
        return [event.kind for event in store.events(saga_id)]


# --- the catalogue -------------------------------------------------------------------------------


def test_every_point_has_a_known_kind_and_the_actions_of_that_kind() -> None:
    assert set(POINT_KINDS.values()) == {failpoints.CODE, failpoints.MESSAGE, failpoints.STORE}
    assert POINTS == tuple(POINT_KINDS)
    assert set(ACTIONS) == (
        set(CRASHES) | set(MESSAGE_ACTIONS) | set(STORE_ACTIONS) | set(SERVER_ACTIONS)
    )
    for point, kind in POINT_KINDS.items():
        allowed = actions_for(point)
        assert set(CRASHES) <= set(allowed), point
        assert (set(MESSAGE_ACTIONS) <= set(allowed)) == (kind == failpoints.MESSAGE), point
        assert (set(STORE_ACTIONS) <= set(allowed)) == (kind == failpoints.STORE), point
    assert actions_for(CODE_POINT) == CRASHES
    assert actions_for(MESSAGE_POINT) == CRASHES + MESSAGE_ACTIONS
    assert actions_for(STORE_POINT) == CRASHES + STORE_ACTIONS + SERVER_ACTIONS
    # Once a transaction committed, of the server's faults only a lost connection can happen.
    assert actions_for("store.after_commit") == CRASHES + STORE_ACTIONS + ("connection_lost",)


def test_every_point_the_code_hits_is_in_the_catalogue() -> None:
    """Each ``failpoints.hit("...")`` literal in understudy names a catalogued point, and each
    catalogued point is hit somewhere (a point nobody hits would arm faults that never fire)."""
    root = Path(understudy.__file__).parent
    source = "\n".join(
        path.read_text() for path in root.rglob("*.py") if path.name != "failpoints.py"
    )
    calls = re.findall(r"failpoints\.hit\(([^)]*)\)", source)
    literals = {name for call in calls for name in re.findall(r'"([a-z_]+\.[a-z_]+)"', call)}
    assert literals <= set(POINTS), literals - set(POINTS)
    assert set(POINTS) <= literals, set(POINTS) - literals


# --- validation ----------------------------------------------------------------------------------


def test_an_unknown_point_is_refused_with_the_list_of_points() -> None:
    with pytest.raises(ValueError) as caught:
        Fault("host.nowhere", "raise")
    message = str(caught.value)
    assert "'host.nowhere'" in message
    assert "unknown failpoint" in message
    for point in POINTS:
        assert point in message


def test_drop_at_a_code_point_is_refused_naming_the_point_and_its_actions() -> None:
    with pytest.raises(ValueError) as caught:
        Fault(CODE_POINT, "drop")
    message = str(caught.value)
    assert repr(CODE_POINT) in message
    assert "code point" in message
    assert "'drop'" in message
    assert "accepts: " + ", ".join(CRASHES) in message


def test_a_store_error_at_a_message_point_is_refused_naming_the_allowed_actions() -> None:
    with pytest.raises(ValueError) as caught:
        Fault(MESSAGE_POINT, "io_error")
    message = str(caught.value)
    assert repr(MESSAGE_POINT) in message
    assert "message point" in message
    assert "'io_error'" in message
    assert "accepts: " + ", ".join(CRASHES + MESSAGE_ACTIONS) in message


def test_a_message_action_at_a_store_point_is_refused() -> None:
    with pytest.raises(ValueError, match=r"store point.*accepts: .*io_error"):
        Fault(STORE_POINT, "duplicate")


def test_an_unknown_action_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot 'explode'"):
        Fault(CODE_POINT, "explode")


def test_every_allowed_action_is_accepted_and_the_default_is_kill() -> None:
    for point in POINTS:
        for action in actions_for(point):
            assert Fault(point, action).action == action
    assert Fault(CODE_POINT).action == "kill"


def test_a_fault_round_trips_through_a_dict_and_refuses_unknown_fields() -> None:
    # (a saga scope needs a point hit for one saga: a store point is hit for a whole batch)
    fault = Fault("host.send", "drop", nth=3, saga_id="s", delay=0.5, persistent=True)
    assert Fault.from_dict(fault.to_dict()) == fault
    assert json.loads(json.dumps(fault.to_dict())) == fault.to_dict()
    with pytest.raises(ValueError, match=r"no field.*colour"):
        Fault.from_dict({**fault.to_dict(), "colour": "red"})
    with pytest.raises(ValueError, match="unknown failpoint"):
        Fault.from_dict({**fault.to_dict(), "point": "nowhere"})


def test_describe_names_action_hit_point_and_saga() -> None:
    assert Fault(CODE_POINT, "raise", nth=2).describe() == f"raise at hit 2 of {CODE_POINT}"
    assert (
        Fault(CODE_POINT, "kill", nth=1, saga_id="s-1", persistent=True).describe()
        == f"kill at hit 1 and every later hit of {CODE_POINT} of saga s-1"
    )


# --- hit -----------------------------------------------------------------------------------------


def test_nothing_armed_hit_returns_none() -> None:
    for point in POINTS:
        assert failpoints.hit(point) is None
        assert failpoints.hit(point, "saga") is None


def test_a_fault_fires_at_its_nth_hit_only() -> None:
    failpoints.arm([Fault(MESSAGE_POINT, "drop", nth=3)])
    assert [failpoints.hit(MESSAGE_POINT) for _ in range(6)] == [
        None,
        None,
        "drop",
        None,
        None,
        None,
    ]


def test_hits_of_other_points_do_not_count() -> None:
    failpoints.arm([Fault(MESSAGE_POINT, "drop", nth=2)])
    assert failpoints.hit("coordinator.before_reply") is None
    assert failpoints.hit("participant.before_reply") is None
    assert failpoints.hit(MESSAGE_POINT) is None
    assert failpoints.hit(MESSAGE_POINT) == "drop"


def test_each_fault_counts_its_own_hits() -> None:
    failpoints.arm(
        [
            Fault(MESSAGE_POINT, "drop", nth=1),
            Fault(MESSAGE_POINT, "duplicate", nth=3),
            Fault("participant.before_reply", "duplicate", nth=2),
        ]
    )
    assert [failpoints.hit(MESSAGE_POINT) for _ in range(4)] == ["drop", None, "duplicate", None]
    assert [failpoints.hit("participant.before_reply") for _ in range(3)] == [
        None,
        "duplicate",
        None,
    ]


def test_saga_id_counts_only_that_sagas_hits() -> None:
    failpoints.arm([Fault(MESSAGE_POINT, "drop", nth=2, saga_id="b")])
    assert failpoints.hit(MESSAGE_POINT, "a") is None
    assert failpoints.hit(MESSAGE_POINT, "b") is None  # b's first
    assert failpoints.hit(MESSAGE_POINT, "a") is None
    assert failpoints.hit(MESSAGE_POINT) is None  # a hit with no saga is not b's
    assert failpoints.hit(MESSAGE_POINT, "b") == "drop"  # b's second
    assert failpoints.hit(MESSAGE_POINT, "b") is None


def test_persistent_fires_at_the_nth_hit_and_every_later_one() -> None:
    failpoints.arm([Fault(MESSAGE_POINT, "duplicate", nth=2, persistent=True)])
    assert [failpoints.hit(MESSAGE_POINT) for _ in range(5)] == [
        None,
        "duplicate",
        "duplicate",
        "duplicate",
        "duplicate",
    ]


def test_arm_replaces_what_was_armed_and_restarts_the_counts() -> None:
    failpoints.arm([Fault(MESSAGE_POINT, "drop", nth=2)])
    assert failpoints.hit(MESSAGE_POINT) is None
    failpoints.arm([Fault(MESSAGE_POINT, "duplicate", nth=2)])
    assert failpoints.hit(MESSAGE_POINT) is None  # counted from zero again
    assert failpoints.hit(MESSAGE_POINT) == "duplicate"


def test_disarm_silences_everything() -> None:
    failpoints.arm([Fault(MESSAGE_POINT, "drop", nth=1, persistent=True)])
    failpoints.disarm()
    assert failpoints.hit(MESSAGE_POINT) is None


def test_drop_and_duplicate_are_returned_to_the_caller() -> None:
    failpoints.arm(
        [
            Fault("coordinator.before_route", "drop"),
            Fault("coordinator.before_reply", "duplicate"),
        ]
    )
    assert failpoints.hit("coordinator.before_route", "s") == "drop"
    assert failpoints.hit("coordinator.before_reply", "s") == "duplicate"


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ("busy", "database is locked"),
        ("io_error", "disk I/O error"),
        ("disk_full", "database or disk is full"),
    ],
)
def test_store_actions_raise_sqlites_own_operational_error(action: str, message: str) -> None:
    failpoints.arm([Fault(STORE_POINT, action)])
    with pytest.raises(sqlite3.OperationalError) as caught:
        failpoints.hit(STORE_POINT)
    assert str(caught.value) == message
    assert type(caught.value) is sqlite3.OperationalError


@pytest.mark.parametrize("action", SERVER_ACTIONS)
def test_server_faults_are_returned_for_the_store_to_carry_out(action: str) -> None:
    failpoints.arm([Fault(STORE_POINT, action)])
    assert failpoints.hit(STORE_POINT) == action
    assert failpoints.hit(STORE_POINT) is None
    # The SQLite store raises the closest error SQLite itself reports.
    with pytest.raises(sqlite3.OperationalError) as caught:
        failpoints.sqlite_error(action)
    assert str(caught.value) == failpoints.SQLITE_EQUIVALENTS[action]
    failpoints.sqlite_error(None)


@pytest.mark.parametrize(
    ("action", "error"),
    [
        ("serialization_failure", "locked"),
        ("deadlock", "locked"),
        ("statement_timeout", "interrupted"),
        ("connection_lost", "disk I/O error"),
    ],
)
def test_server_faults_in_the_sqlite_store_roll_back_and_are_translated(
    tmp_path: Path, action: str, error: str
) -> None:
    with SQLiteStore(tmp_path / "sagas.db") as store:
        failpoints.arm([Fault(STORE_POINT, action)])
        # Each is a fault that may pass (the host retries): StoreUnavailable, not a hard error.
        with pytest.raises(understudy.StoreUnavailable, match=error):
            store.apply([NewSaga("a", "order", 1, b"\x80", 1.0)])
        assert store.get("a") is None
        assert store.apply([NewSaga("a", "order", 1, b"\x80", 1.0)]) == [True]


def test_raise_raises_injected_fault_naming_the_fault() -> None:
    failpoints.arm([Fault(CODE_POINT, "raise", nth=2, saga_id="s")])
    assert failpoints.hit(CODE_POINT, "s") is None
    with pytest.raises(InjectedFault, match=re.escape(f"raise at hit 2 of {CODE_POINT} of saga s")):
        failpoints.hit(CODE_POINT, "s")
    assert failpoints.hit(CODE_POINT, "s") is None


def test_delay_sleeps_for_its_delay_and_returns_none() -> None:
    failpoints.arm([Fault(CODE_POINT, "delay", delay=0.2)])
    began = time.monotonic()
    assert failpoints.hit(CODE_POINT) is None
    assert time.monotonic() - began >= 0.19


def test_hang_sleeps_for_its_delay_when_given() -> None:
    failpoints.arm([Fault(CODE_POINT, "hang", delay=0.1)])
    began = time.monotonic()
    assert failpoints.hit(CODE_POINT) is None
    assert 0.09 <= time.monotonic() - began < failpoints.HANG_SECONDS


def test_once_file_fires_once_even_when_armed_again(tmp_path: Path) -> None:
    """The file outlives the process's counts: a restarted process (armed again, counting from
    zero) stays quiet once the fault has fired."""
    once = tmp_path / "fired"
    fault = Fault(MESSAGE_POINT, "drop", nth=1, once_file=str(once))
    failpoints.arm([fault])
    assert failpoints.hit(MESSAGE_POINT, "s") == "drop"
    assert once.exists()
    recorded = once.read_text()
    assert recorded.startswith(f"{MESSAGE_POINT} drop pid={os.getpid()} saga=s ")
    failpoints.arm([fault])  # the "restarted process"
    assert failpoints.hit(MESSAGE_POINT, "s") is None
    assert once.read_text() == recorded


def test_once_file_silences_a_persistent_fault_after_its_first_firing(tmp_path: Path) -> None:
    once = tmp_path / "fired"
    failpoints.arm([Fault(MESSAGE_POINT, "drop", persistent=True, once_file=str(once))])
    assert [failpoints.hit(MESSAGE_POINT) for _ in range(3)] == ["drop", None, None]


def test_once_file_stops_a_raise_too(tmp_path: Path) -> None:
    once = tmp_path / "fired"
    fault = Fault(CODE_POINT, "raise", once_file=str(once))
    failpoints.arm([fault])
    with pytest.raises(InjectedFault):
        failpoints.hit(CODE_POINT)
    failpoints.arm([fault])
    assert failpoints.hit(CODE_POINT) is None


def test_log_file_gets_one_line_per_firing(tmp_path: Path) -> None:
    log = tmp_path / "faults.log"
    failpoints.arm(
        [
            Fault(MESSAGE_POINT, "duplicate", nth=2, persistent=True, log_file=str(log)),
            Fault(CODE_POINT, "delay", nth=1, log_file=str(log)),
        ]
    )
    assert failpoints.hit(MESSAGE_POINT, "a") is None  # not fired: not logged
    assert not log.exists()
    assert failpoints.hit(MESSAGE_POINT, "a") == "duplicate"
    assert failpoints.hit(MESSAGE_POINT, "b") == "duplicate"
    assert failpoints.hit(CODE_POINT) is None
    assert failpoints.hit(CODE_POINT) is None  # past its nth: not fired
    lines = log.read_text().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"{MESSAGE_POINT} duplicate pid={os.getpid()} saga=a at=")
    assert lines[1].startswith(f"{MESSAGE_POINT} duplicate pid={os.getpid()} saga=b at=")
    assert lines[2].startswith(f"{CODE_POINT} delay pid={os.getpid()} saga=- at=")


def test_a_fault_quieted_by_its_once_file_is_not_logged(tmp_path: Path) -> None:
    log = tmp_path / "faults.log"
    once = tmp_path / "fired"
    fault = Fault(MESSAGE_POINT, "drop", once_file=str(once), log_file=str(log))
    failpoints.arm([fault])
    assert failpoints.hit(MESSAGE_POINT) == "drop"
    failpoints.arm([fault])
    assert failpoints.hit(MESSAGE_POINT) is None
    assert len(log.read_text().splitlines()) == 1


# --- store points through the real SQLite store --------------------------------------------------


def _new(saga_id: str) -> NewSaga:
    return NewSaga(saga_id, "order", 1, b"\x80", time.time())


@pytest.mark.parametrize("action", ["busy", "io_error", "disk_full"])
def test_a_store_error_in_the_transaction_rolls_back_and_is_translated(
    tmp_path: Path, action: str
) -> None:
    with SQLiteStore(tmp_path / "sagas.db") as store:
        failpoints.arm([Fault("store.in_transaction", action)])
        with pytest.raises(understudy.StoreUnavailable) as caught:
            store.apply([_new("a")])
        assert "sagas.db" in str(caught.value)
        assert store.get("a") is None  # rolled back
        assert store.apply([_new("a")]) == [True]  # the store works on
        assert store.get("a") is not None


def test_a_store_error_after_commit_leaves_the_write_durable(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "sagas.db") as store:
        failpoints.arm([Fault("store.after_commit", "io_error")])
        with pytest.raises((sqlite3.Error, understudy.StoreError), match="disk I/O error"):
            store.apply([_new("a")])
        assert store.get("a") is not None
        assert not store._conn.in_transaction
        assert store.apply([_new("b")]) == [True]


def test_a_store_error_after_commit_is_translated_like_any_driver_error(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "sagas.db") as store:
        failpoints.arm([Fault("store.after_commit", "io_error")])
        with pytest.raises(understudy.StoreUnavailable, match="disk I/O error"):
            store.apply([_new("a")])


def test_a_store_error_in_a_claim_rolls_the_claim_back(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "sagas.db") as store:
        store.apply([_new("a")])
        failpoints.arm([Fault("store.claim", "busy")])
        with pytest.raises(understudy.StoreUnavailable, match="locked"):
            store.claim("a", recovery=True, at=time.time())
        record = store.get("a")
        assert record is not None
        assert (record.incarnation, record.recovery_attempts) == (1, 0)
        claimed = store.claim("a", recovery=True, at=time.time())
        assert claimed is not None and claimed.incarnation == 2


# --- fault schedules -----------------------------------------------------------------------------


def _schedule(**overrides: object) -> FaultSchedule:
    fields: dict[str, object] = {
        "faults": (
            Fault("host.after_send", "kill", nth=2),
            Fault("host.before_commit", "kill_system", nth=1, persistent=True),
            Fault("host.send", "drop", nth=3, saga_id="s-1"),
            Fault("participant.before_apply", "delay", nth=1, delay=0.2),
            Fault("store.after_commit", "busy", nth=4),
        ),
        "workload_seed": 42,
        "sagas": 7,
        "base": "simpleSystemBase",
        "hosts": 2,
        "label": "a test schedule",
    }
    fields.update(overrides)
    return FaultSchedule(**fields)  # type: ignore[arg-type]


def test_a_schedule_round_trips_through_a_dict_and_a_file(tmp_path: Path) -> None:
    schedule = _schedule()
    data = schedule.to_dict()
    assert data["format"] == FORMAT
    assert FaultSchedule.from_dict(json.loads(json.dumps(data))) == schedule
    path = schedule.save(tmp_path / "nested" / "schedule.json")
    assert path == tmp_path / "nested" / "schedule.json"
    assert json.loads(path.read_text()) == data
    assert FaultSchedule.load(path) == schedule
    assert FaultSchedule.load(str(path)) == schedule


def test_a_saved_schedule_leaves_out_the_runs_files(tmp_path: Path) -> None:
    """once_file and log_file belong to one run's directory, not to the schedule."""
    armed = _schedule().armed(tmp_path)
    saved = FaultSchedule(armed, 1, 2, "simpleSystemBase")
    for fault in saved.to_dict()["faults"]:
        assert "once_file" not in fault and "log_file" not in fault
    loaded = FaultSchedule.load(saved.save(tmp_path / "s.json"))
    assert all(f.once_file is None and f.log_file is None for f in loaded.faults)


def test_an_empty_schedule_round_trips(tmp_path: Path) -> None:
    schedule = FaultSchedule((), base="multiprocTCPBase")
    assert FaultSchedule.load(schedule.save(tmp_path / "s.json")) == schedule
    assert "no faults" in schedule.describe()


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ("not json at all", "cannot read fault schedule"),
        ("", "cannot read fault schedule"),
        ('{"format": "understudy-fault-schedule/1"', "cannot read fault schedule"),
        ('{"format": "something-else/1", "faults": []}', "is malformed"),
        (
            json.dumps({"format": FORMAT, "faults": [], "sagas": 1, "base": "simpleSystemBase"}),
            "is malformed",
        ),
        (
            json.dumps(
                {
                    "format": FORMAT,
                    "faults": [{"point": "host.nowhere", "action": "kill"}],
                    "workload_seed": 0,
                    "sagas": 1,
                    "base": "simpleSystemBase",
                }
            ),
            "is malformed",
        ),
        (
            json.dumps(
                {
                    "format": FORMAT,
                    "faults": [{"point": "host.send", "action": "drop", "colour": "red"}],
                    "workload_seed": 0,
                    "sagas": 1,
                    "base": "simpleSystemBase",
                }
            ),
            "is malformed",
        ),
    ],
)
def test_loading_a_malformed_schedule_names_the_file(
    tmp_path: Path, content: str, complaint: str
) -> None:
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(ValueError) as caught:
        FaultSchedule.load(path)
    assert repr(str(path)) in str(caught.value)
    assert complaint in str(caught.value)


@pytest.mark.parametrize("content", ["[1, 2, 3]", "null", '"a string"', "42"])
def test_loading_a_schedule_that_is_not_a_json_object_names_the_file(
    tmp_path: Path, content: str
) -> None:
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="is malformed") as caught:
        FaultSchedule.load(path)
    assert repr(str(path)) in str(caught.value)


def test_loading_a_missing_schedule_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(ValueError, match="cannot read fault schedule") as caught:
        FaultSchedule.load(path)
    assert repr(str(path)) in str(caught.value)


def test_for_base_turns_kills_into_raises_in_process() -> None:
    schedule = _schedule(base="simpleSystemBase")
    faults = schedule.for_base()
    assert [f.action for f in faults] == ["raise", "raise", "drop", "delay", "busy"]
    for before, after in zip(schedule.faults, faults, strict=True):
        assert attrs.evolve(after, action=before.action) == before  # nothing else changes


def test_for_base_keeps_kills_on_a_multiprocess_base() -> None:
    schedule = _schedule(base="multiprocTCPBase")
    assert schedule.for_base() == schedule.faults


def test_armed_gives_each_single_fault_its_once_file_and_all_one_log(tmp_path: Path) -> None:
    schedule = _schedule()
    armed = schedule.armed(tmp_path)
    assert len(armed) == len(schedule.faults)
    log = str(tmp_path / "faults.log")
    assert {f.log_file for f in armed} == {log}
    for index, (fault, original) in enumerate(zip(armed, schedule.for_base(), strict=True)):
        if original.persistent:
            assert fault.once_file is None
        else:
            assert fault.once_file == str(tmp_path / f"fault-{index}.fired")
        assert attrs.evolve(fault, once_file=None, log_file=None) == original
    assert len({f.once_file for f in armed if f.once_file}) == 4
    assert armed[0].action == "raise"  # the in-process base's form of the kill


def test_armed_keeps_kills_on_a_multiprocess_base(tmp_path: Path) -> None:
    armed = _schedule(base="multiprocTCPBase").armed(tmp_path)
    assert [f.action for f in armed[:2]] == ["kill", "kill_system"]


def test_random_schedule_is_deterministic_for_a_seed() -> None:
    first = random_schedule(7, base="multiprocTCPBase", sagas=6, hosts=2)
    again = random_schedule(7, base="multiprocTCPBase", sagas=6, hosts=2)
    assert first == again
    assert first.label == "seed 7"
    assert (first.base, first.sagas, first.hosts) == ("multiprocTCPBase", 6, 2)
    others = {random_schedule(seed, base="multiprocTCPBase", sagas=6) for seed in range(1, 30)}
    assert len(others) > 1  # the seed matters
    for fault in first.faults:
        assert fault.action in actions_for(fault.point)


def test_random_schedule_never_draws_kills_in_process() -> None:
    drawn = [
        fault
        for seed in range(200)
        for fault in random_schedule(seed, base="simpleSystemBase", sagas=4, enable=0.8).faults
    ]
    assert drawn, "nothing was drawn in 200 seeds"
    assert {f.action for f in drawn}.isdisjoint({"kill", "kill_system"})
    assert any(f.action == "raise" for f in drawn)
    multiproc = [
        fault
        for seed in range(200)
        for fault in random_schedule(seed, base="multiprocTCPBase", sagas=4, enable=0.8).faults
    ]
    assert {"kill", "kill_system"} & {f.action for f in multiproc}


def test_random_schedule_keeps_to_the_actions_and_points_asked_for() -> None:
    for seed in range(50):
        schedule = random_schedule(
            seed,
            base="multiprocTCPBase",
            sagas=4,
            points=["host.send", "store.after_commit"],
            actions=["drop", "busy"],
            enable=1.0,
            fire=0.5,
        )
        assert {(f.point, f.action) for f in schedule.faults} <= {
            ("host.send", "drop"),
            ("store.after_commit", "busy"),
        }
    # a kill asked for on the in-process base leaves nothing to draw
    assert (
        random_schedule(
            1, base="simpleSystemBase", sagas=4, actions=["kill"], enable=1.0, fire=1.0
        ).faults
        == ()
    )


def test_random_schedule_draws_hits_within_the_horizon_and_delays_for_sleeps() -> None:
    for seed in range(100):
        for fault in random_schedule(seed, base="simpleSystemBase", sagas=3, enable=1.0).faults:
            assert 1 <= fault.nth <= max(8, 6 * 3)
            assert (fault.delay > 0) == (fault.action in ("hang", "delay"))


def test_random_schedule_round_trips_through_a_file(tmp_path: Path) -> None:
    schedule = random_schedule(11, base="simpleSystemBase", sagas=5, enable=0.9, fire=0.3)
    assert FaultSchedule.load(schedule.save(tmp_path / "s.json")) == schedule


def test_single_fault_is_a_crash_of_the_base() -> None:
    in_process = single_fault("host.after_send", 2, base="simpleSystemBase", sagas=3)
    assert in_process.faults == (Fault("host.after_send", "raise", nth=2),)
    assert in_process.label == "single raise at hit 2 of host.after_send"
    multiproc = single_fault(
        "host.after_send", 1, base="multiprocTCPBase", sagas=3, persistent=True
    )
    assert multiproc.faults == (Fault("host.after_send", "kill", nth=1, persistent=True),)
    assert multiproc.label.startswith("persistent kill")
    # Another action replaces the crash where the point accepts it (the mutation test's
    # store errors), and is refused where it does not.
    dropped = single_fault("host.send", 1, base="simpleSystemBase", sagas=1, action="drop")
    assert dropped.faults == (Fault("host.send", "drop", nth=1),)
    with pytest.raises(ValueError, match="cannot 'drop'"):
        single_fault("host.after_send", 1, base="simpleSystemBase", sagas=1, action="drop")


# --- through a real runtime, in process ----------------------------------------------------------


def test_a_store_error_inside_the_start_transaction_refuses_the_start_and_loses_nothing(
    tmp_path: Path,
) -> None:
    """The start's commit fails and rolls back: the saga does not exist, so the caller is told
    the store is unavailable; the store works on for the retry and for later sagas."""
    fault = Fault("store.in_transaction", "io_error", nth=1)
    with start_runtime(tmp_path, faults=[fault]) as us:
        with pytest.raises(understudy.StoreUnavailable, match="disk I/O error"):
            us.submit("a", "order", {}, timeout=10)
        with pytest.raises(understudy.SagaNotFound):
            us.record("a")
        assert us.run("a", "order", {}, timeout=10).status == "completed"
        assert us.run("b", "order", {}, timeout=10).status == "completed"
        assert us.run("c", "order", {"reject": "charge"}, timeout=10).status == "compensated"
    assert timeline(tmp_path, "a") == FORWARD
    assert timeline(tmp_path, "b") == FORWARD
    assert timeline(tmp_path, "c") == BACKWARD
    _no_duplicate_effects(tmp_path)


def test_a_store_error_after_the_start_commit_acknowledges_the_start(tmp_path: Path) -> None:
    """The error comes after the commit: the saga exists, so its start must be acknowledged
    (not refused) and the saga runs to its end."""
    fault = Fault("store.after_commit", "io_error", nth=1)
    with start_runtime(tmp_path, faults=[fault]) as us:
        accepted = us.submit("a", "order", {}, timeout=10)
        assert accepted.saga_id == "a"
        assert not accepted.existing
        assert us.wait("a", timeout=10).status == "completed"
        assert us.run("b", "order", {}, timeout=10).status == "completed"
    assert timeline(tmp_path, "a") == FORWARD
    assert timeline(tmp_path, "b") == FORWARD
    _no_duplicate_effects(tmp_path)


def test_a_store_error_after_a_later_commit_is_survived(tmp_path: Path) -> None:
    """An error after a snapshot commit mid-saga (not the start's): the saga reloads from the
    stored snapshot and ends as it should, each effect once."""
    fault = Fault("store.after_commit", "disk_full", nth=3)
    with start_runtime(tmp_path, faults=[fault]) as us:
        assert us.run("a", "order", {}, timeout=10).status == "completed"
        assert us.run("r", "order", {"reject": "charge"}, timeout=10).status == "compensated"
    assert timeline(tmp_path, "a") == FORWARD
    assert timeline(tmp_path, "r") == BACKWARD
    _no_duplicate_effects(tmp_path)


def test_a_dropped_request_is_retried_after_the_step_timeout(tmp_path: Path) -> None:
    fault = Fault("host.send", "drop", nth=1)
    with start_runtime(tmp_path, [order_definition(timeout=0.5)], faults=[fault]) as us:
        began = time.monotonic()
        assert us.run("a", "order", {}, timeout=15).status == "completed"
        assert time.monotonic() - began >= 0.4  # it waited for the lost request's deadline
    assert timeline(tmp_path, "a") == FORWARD
    assert "timeout" in _events(tmp_path, "a")
    _no_duplicate_effects(tmp_path)


@pytest.mark.parametrize(
    "fault",
    [
        Fault("host.send", "duplicate", nth=1),
        Fault("participant.before_reply", "duplicate", nth=1),
        Fault("host.send", "duplicate", nth=1, persistent=True),
        Fault("participant.before_reply", "duplicate", nth=1, persistent=True),
    ],
    ids=lambda f: f.describe(),
)
def test_a_repeated_message_applies_no_effect_twice(tmp_path: Path, fault: Fault) -> None:
    with start_runtime(tmp_path, [order_definition(timeout=2.0)], faults=[fault]) as us:
        assert us.run("a", "order", {}, timeout=10).status == "completed"
        assert us.run("r", "order", {"reject": "charge"}, timeout=10).status == "compensated"
    assert timeline(tmp_path, "a") == FORWARD
    assert timeline(tmp_path, "r") == BACKWARD
    _no_duplicate_effects(tmp_path)


@pytest.mark.parametrize("point", ["coordinator.before_route", "coordinator.before_reply"])
def test_a_repeated_start_or_answer_at_the_coordinator_is_harmless(
    tmp_path: Path, point: str
) -> None:
    """A start routed twice creates the saga once; an end reported twice to the caller
    answers it once; the next callers are answered as usual."""
    with start_runtime(tmp_path, faults=[Fault(point, "duplicate", nth=1)]) as us:
        assert us.run("a", "order", {}, timeout=10).status == "completed"
        assert us.run("a", "order", {}, timeout=10).status == "completed"
        assert us.submit("b", "order", {}, timeout=10).existing is False
        assert us.wait("b", timeout=10).status == "completed"
    assert timeline(tmp_path, "a") == FORWARD
    assert _events(tmp_path, "a").count("started") == 1
    _no_duplicate_effects(tmp_path)


def test_a_dropped_reply_to_the_caller_times_out_but_the_saga_is_done(tmp_path: Path) -> None:
    fault = Fault("coordinator.before_reply", "drop", nth=1)
    with start_runtime(tmp_path, faults=[fault]) as us:
        with pytest.raises(understudy.CoordinatorTimeout):
            us.run("a", "order", {}, timeout=1.5)
        assert us.wait("a", timeout=10).status == "completed"
        assert us.record("a").status == "completed"
        # asked again, the caller hears the end (answered from the store)
        assert us.run("a", "order", {}, timeout=10).status == "completed"
        assert us.run("b", "order", {}, timeout=10).status == "completed"
    assert timeline(tmp_path, "a") == FORWARD
    _no_duplicate_effects(tmp_path)


def test_a_dropped_route_leaves_the_caller_waiting_and_a_retry_starts_it(
    tmp_path: Path,
) -> None:
    """A start lost between the coordinator and the host: nothing was committed, so nothing
    runs; the caller times out, and the next start of the same id runs the saga."""
    fault = Fault("coordinator.before_route", "drop", nth=1)
    with start_runtime(tmp_path, faults=[fault]) as us:
        with pytest.raises(understudy.CoordinatorTimeout):
            us.submit("a", "order", {}, timeout=0.5)
        with pytest.raises(understudy.SagaNotFound):
            us.record("a")
        assert us.run("a", "order", {}, timeout=10).status == "completed"
    assert timeline(tmp_path, "a") == FORWARD


def test_a_fault_scoped_to_one_saga_leaves_the_others_alone(tmp_path: Path) -> None:
    log = tmp_path / "faults.log"
    fault = Fault("host.send", "drop", nth=1, saga_id="b", persistent=True, log_file=str(log))
    with start_runtime(tmp_path, [order_definition(timeout=0.3)], faults=[fault]) as us:
        assert us.run("a", "order", {}, timeout=10).status == "completed"
        b = us.run("b", "order", {}, timeout=15)
    assert timeline(tmp_path, "a") == FORWARD
    # Every request of b is lost, its compensation's too: its first step and then that step's
    # compensation run out of attempts (3 each), and b parks naming what is outstanding.
    assert b.status == "failed"
    assert b.outstanding == ("compensate step 'create' (cancel): owed, no reply within 0.3 s",)
    assert timeline(tmp_path, "b") == []
    fired = log.read_text().splitlines()
    assert len(fired) == 6
    assert all(line.startswith("host.send drop ") and " saga=b " in line for line in fired)


# --- through a real runtime, multi-process -------------------------------------------------------


def _await(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.mark.multiproc
def test_kill_system_kills_every_actor_process_and_a_restart_resumes(tmp_path: Path) -> None:
    """``kill_system`` SIGKILLs the actor system's whole process group (coordinator, saga host,
    participants), never the test's process; a new runtime on the same store finishes the saga
    whose request was in flight."""
    fired = tmp_path / "fired"
    fault = Fault("host.after_send", "kill_system", nth=1, once_file=str(fired))
    us = start_runtime(
        tmp_path,
        [order_definition(timeout=1.0)],
        base="multiprocTCPBase",
        hosts=1,
        faults=[fault],
    )
    try:
        info = us.hosts()
        pids = [info.coordinator_pid, *info.host_pids.values(), *info.participant_pids.values()]
        assert len(pids) == 5 and all(pids)
        identities = [process_identity(pid) for pid in pids]
        assert os.getpid() not in pids
        assert os.getpgid(info.coordinator_pid) != os.getpgid(0)  # the actors' own group
        assert all(is_running(identity) for identity in identities)
        us.submit_future("m", "order", {}, wait=False)
        assert _await(fired.exists, 15), "the fault never fired"
        assert fired.read_text().startswith("host.after_send kill_system ")
        assert _await(lambda: not any(is_running(i) for i in identities), 5), [
            pid for pid, started in identities if is_running((pid, started))
        ]
    finally:
        us.shutdown(timeout=0.5)
    assert is_running(process_identity(os.getpid()))  # the test's own process lives on
    with SQLiteStore(tmp_path / "sagas.db") as store:
        stored = store.get("m")
    assert stored is not None and not stored.terminal  # the intent was durable, the end not
    with start_runtime(
        tmp_path, [order_definition(timeout=1.0)], base="multiprocTCPBase", hosts=1
    ) as again:
        assert again.resumed >= 1
        assert again.wait("m", timeout=20).status == "completed"
    assert timeline(tmp_path, "m") == FORWARD
    _no_duplicate_effects(tmp_path)


def test_a_scope_the_point_never_reports_is_refused() -> None:
    """A saga scope at a batch point, or a participant scope at a host point, would never
    fire: it is refused when the fault is built, naming the point."""
    with pytest.raises(ValueError, match=r"'store\.in_transaction' is hit for a whole batch"):
        Fault("store.in_transaction", "io_error", saga_id="s1")
    with pytest.raises(ValueError, match="scopes participant points only"):
        Fault("host.after_send", participant="orders")
    assert "orders" == Fault("participant.after_apply", participant="orders").participant
