"""A saga host's first recovery scan that meets store errors, as the start sees it.

The host retries its scan by itself after a store error. A transient error (the store busy or
locked, a lost connection, a statement timeout) is waited out within the start's own timeout,
and when that runs out the start's error names the store's last error; an error that waiting
cannot cure (the shard taken over by another holder) fails the start at once. A retried scan
counts a recovery against each blamed saga once, not once per attempt (I11), so a flapping
store does not park innocent sagas.

Faults are injected through the failpoints at the store's own claim transaction (the store's
real error translation, rollback and reconnect run); nothing here mocks the database.
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from conftest import STORES, recorders, start_runtime, store_location, timeline

from understudy import Participant
from understudy.errors import ActorSystemError, CoordinatorTimeout
from understudy.failpoints import Fault
from understudy.persistence import open_store
from understudy.persistence.base import Event, NewSaga

FORWARD = [("create", "do"), ("reserve", "do"), ("charge", "do")]

#: Transient faults at the scan's claim transaction, per store, at its first, second... hit:
#: each is reported as StoreUnavailable. SQLite reports the server faults as the errors it has
#: closest (a disk I/O error, the database locked). On PostgreSQL a connection lost before the
#: COMMIT is run again on a new connection once by the store itself, so it takes two in a row
#: to reach the host (and a serialization failure the store retries itself).
TRANSIENT = {
    "sqlite": ("connection_lost", "serialization_failure"),
    "postgres": ("connection_lost", "connection_lost", "statement_timeout"),
}


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def saga_store(store_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return store_location(store_kind, request, tmp_path)


#: The bases and stores of the tests that start on a base: both bases on SQLite, PostgreSQL on
#: the multi-process base only. What the store does under the faults (its error translation,
#: rollback and reconnect, the error it names) is its own code, the same on either base; what
#: the base changes (the host retrying its scan in a process of its own while the start waits)
#: is tested on both with SQLite.
ON_BOTH_BASES_AND_POSTGRES = pytest.mark.parametrize(
    "base,store_kind",
    [
        ("simpleSystemBase", "sqlite"),
        ("multiprocTCPBase", "sqlite"),
        ("multiprocTCPBase", "postgres"),
    ],
)


def _kind(location: str) -> str:
    return "postgres" if "://" in location else "sqlite"


def _seed(location: str, saga_ids: list[str], blamed: list[str] | None = None) -> None:
    """Unfinished order sagas (started, nothing sent yet) in the store at ``location``. With
    ``blamed``, the store's shard is fixed first, and the last holder of shard 0 died blaming
    exactly those sagas (its lease ran out); without, the store holds sagas from before its
    shard count was fixed, and its first holder blames everyone."""
    with closing(open_store(location)) as store:
        if blamed is not None:
            store.fix_shards(1)
        store.apply(
            [
                NewSaga(saga_id, "order", 1, b"\x80", 1.0, (Event("started", 1.0),))
                for saga_id in saga_ids
            ]
        )
        if blamed is not None:
            lease = store.acquire(0, "a-host-that-died", 60.0, {})
            assert lease is not None
            store.blame(lease, blamed)
            store.expire(0, lease.epoch)


def _fired(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def _claims(location: str, saga_id: str) -> list[tuple[bool, int]]:
    """(recovery counted, recovery_attempts after the claim) of each claim of the saga, as the
    store recorded them."""
    with closing(open_store(location, read_only=True)) as store:
        return [
            (bool(e.detail["recovery"]), int(e.detail["recovery_attempts"]))
            for e in store.events(saga_id)
            if e.kind == "claimed"
        ]


@ON_BOTH_BASES_AND_POSTGRES
def test_a_first_scan_that_meets_transient_store_errors_is_waited_for(
    tmp_path: Path, saga_store: str, base: str
) -> None:
    """The host's first scan fails twice on transient store errors: the start waits for the
    host's retries, succeeds, and the unfinished sagas resume and complete."""
    sagas = ["u-1", "u-2", "u-3"]
    _seed(saga_store, sagas)
    log = tmp_path / "fired.log"
    faults = [
        Fault("store.claim", action, nth=nth, log_file=str(log))
        for nth, action in enumerate(TRANSIENT[_kind(saga_store)], start=1)
    ]
    with start_runtime(tmp_path, store=saga_store, base=base, faults=faults, timeout=60) as us:
        assert len(_fired(log)) == len(faults)
        assert us.resumed == len(sagas)
        for saga_id in sagas:
            assert us.wait(saga_id, timeout=60).status == "completed"
    for saga_id in sagas:
        assert timeline(tmp_path, saga_id) == FORWARD


@ON_BOTH_BASES_AND_POSTGRES
def test_a_scan_that_keeps_failing_fails_the_start_within_its_timeout_naming_the_error(
    tmp_path: Path, saga_store: str, base: str
) -> None:
    """A store that stays unavailable: the host keeps retrying until the start's timeout runs
    out, and the start's error then names the store's last error (what to fix)."""
    _seed(saga_store, ["k-1"])
    log = tmp_path / "fired.log"
    action, words = (
        ("busy", "locked") if _kind(saga_store) == "sqlite" else ("statement_timeout", "timed out")
    )
    fault = Fault("store.claim", action, persistent=True, log_file=str(log))
    with pytest.raises(ActorSystemError) as raised:
        start_runtime(
            tmp_path, store=saga_store, base=base, faults=[fault], timeout=10, lease_ttl=2.0
        )
    assert not isinstance(raised.value, CoordinatorTimeout)
    message = str(raised.value)
    assert "saga host 0" in message and "timeout" in message, message
    assert words in message, message
    assert len(_fired(log)) >= 2  # it was retried, not given up at the first error
    # The store is free again: a start without the fault resumes the saga.
    with start_runtime(tmp_path, store=saga_store, base=base) as us:
        assert us.wait("k-1", timeout=60).status == "completed"


class Usurper(Participant):
    """A participant whose setup takes shard 0 of the saga store from the starting runtime,
    as another runtime would once the start's lease ran out: it runs before the saga hosts
    do, so the first host finds its shard taken."""

    def setup(self, db: Any, options: dict[str, Any]) -> None:
        with closing(open_store(options["saga_store"])) as store:
            current = store.leases()[0]
            store.expire(0, current.epoch)
            assert store.acquire(0, "another-runtime", 600.0, {}) is not None


def test_a_shard_taken_over_during_the_start_fails_it_at_once(
    tmp_path: Path, saga_store: str
) -> None:
    """Losing the shard is no store error to wait out: the start fails at once, saying so."""
    _seed(saga_store, ["t-1"])
    usurper = ("usurper", Usurper, {"database": str(tmp_path / "usurper.db")})
    usurper[2]["saga_store"] = saga_store
    with pytest.raises(ActorSystemError, match="taken over") as raised:
        start_runtime(
            tmp_path, store=saga_store, participants=[*recorders(tmp_path), usurper], timeout=30
        )
    assert not isinstance(raised.value, CoordinatorTimeout)


def test_a_retried_scan_counts_one_recovery_per_blamed_saga(
    tmp_path: Path, saga_store: str
) -> None:
    """The scan's claim of the blamed sagas commits, the claim of the others fails, and the
    host retries the scan: each blamed saga has exactly one recovery counted, the others
    none."""
    blamed, innocent = ["b-1", "b-2"], ["i-1", "i-2"]
    _seed(saga_store, blamed + innocent, blamed=blamed)
    log = tmp_path / "fired.log"
    action = "busy" if _kind(saga_store) == "sqlite" else "statement_timeout"
    # The first claim (the blamed sagas, counted) commits; the second (the others) fails.
    fault = Fault("store.claim", action, nth=2, log_file=str(log))
    with start_runtime(tmp_path, store=saga_store, faults=[fault]) as us:
        assert len(_fired(log)) == 1
        for saga_id in blamed + innocent:
            assert us.wait(saga_id, timeout=60).status == "completed"
    for saga_id in blamed:
        claims = _claims(saga_store, saga_id)
        assert [attempts for counted, attempts in claims if counted] == [1], claims
        assert max(attempts for _counted, attempts in claims) == 1, claims
    for saga_id in innocent:
        assert _claims(saga_store, saga_id) == [(False, 0)]
