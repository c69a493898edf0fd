"""The crash-injection harness, used on the demo's order saga as a user would use it on theirs.

The exhaustive mode crashes every failpoint at every hit (a point whose crash is another's,
SAME_CRASH, once; the points of operators' verbs with an operator story): in the default suite
in-process with the saga store in a SQLite file, and on the multi-process base (real kills) and
in a PostgreSQL database every point at its first hit and a seeded few at every hit (the full
sweeps there are soak runs, ``-m soak``; see SWEPT_IN_FULL); persistent crashes from the first
hit of every point on both bases and both stores but PostgreSQL on the multi-process base
(PERSISTENT_SWEEPS; every hit, and that one, are soak runs);
a seeded random campaign with fixed seeds mixes every fault kind, on PostgreSQL the server's own
(lost connections, serialization failures, deadlocks, statement timeouts, server restarts) too;
a server restart while sagas are in flight and while the healing runtime recovers loses nothing;
and a deliberately broken saga host (one that sends before it commits) must be caught by the
checker, with a saved schedule that replays the catch.

The PostgreSQL tests use the session's test server (``tests/pg.py``): they fail, never skip,
without one, and the restart tests fail when it cannot be restarted (CI's can:
``UNDERSTUDY_TEST_POSTGRES_DIR``; locally the session starts a cluster of its own).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from attrs import evolve as attrs_evolve
from mutants import SendsBeforeCommit
from pg import PostgresServer, restart_server

import understudy
from demo.chaos import DemoScenario
from understudy import RestartPolicy
from understudy.cli import main
from understudy.failpoints import POINTS, SERVER_ACTIONS, Fault, actions_for
from understudy.persistence import open_store, redact
from understudy.persistence.base import Event, NewSaga
from understudy.testing import ChaosRunner, FaultSchedule, RunResult, check
from understudy.testing.schedule import (
    FAULTY,
    RECOVERY,
    ServerRestart,
    random_schedule,
    single_fault,
)
from understudy.testing.stores import database_url, drop_database

STORES = ["sqlite", "postgres"]
STORE_POINTS = ("store.in_transaction", "store.claim", "store.after_commit")
#: Points whose crash is another point's crash. ``participant.before_reply`` is hit in the
#: statement right after ``participant.after_apply``'s, in one ``try``, and nowhere else: a kill,
#: raise, hang or delay at its n-th hit strikes the very state one at the n-th hit of
#: ``participant.after_apply`` does (the ledger committed, the reply not sent; a raise lands in
#: the same handler). The exhaustive crash sweeps run those scenarios once, as
#: ``participant.after_apply``; the point's own actions (drop, duplicate) are not crashes and are
#: tested with the other message faults (test_failpoints), and campaigns draw it as before.
#: test_a_point_left_out_of_the_crash_sweeps_is_hit_right_after_the_one_swept keeps this true.
SAME_CRASH = {"participant.before_reply": "participant.after_apply"}
#: Every point is swept, ``host.before_verb`` and ``host.after_verb`` (hit only while a saga host
#: applies an operator's verb) with the operator story the exhaustive mode gives them
#: (``understudy.testing.schedule.verb_story``).
CRASH_POINTS = tuple(point for point in POINTS if point not in SAME_CRASH)


@pytest.fixture(params=STORES)
def chaos_store(request: pytest.FixtureRequest) -> str | None:
    """Where chaos runs keep their saga store: None (a SQLite file per run), or the test
    PostgreSQL server's URL (a fresh database per run)."""
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_server_url"))
    return None


@pytest.fixture
def restarter(postgres_server: PostgresServer) -> Callable[[], None]:
    """Restarts the test server (a fast shutdown and a start); fails the test when the server
    cannot be restarted: these tests must run everywhere, CI included."""
    if not postgres_server.can_restart:
        pytest.fail(
            "the PostgreSQL test server cannot be restarted: set UNDERSTUDY_TEST_POSTGRES_DIR "
            "to the directory `.ci/postgres start DIR` was given, or leave "
            "UNDERSTUDY_TEST_POSTGRES_URL unset so that the tests start a server of their own",
            pytrace=False,
        )
    return lambda: restart_server(postgres_server)


def _fired_everywhere(results: list[RunResult]) -> None:
    """The sweep reached every failpoint it crashes at: a point that never fires tests
    nothing."""
    swept = [r.schedule.faults[-1].point for r in results]
    fired = {point for point, r in zip(swept, results, strict=True) if r.fired_at(point)}
    assert set(CRASH_POINTS) == fired


def test_a_point_left_out_of_the_crash_sweeps_is_hit_right_after_the_one_swept() -> None:
    """What SAME_CRASH rests on: each left-out point is hit in understudy's code exactly once,
    in the line right after the one hit of the point swept in its place, at the same depth.
    Code between them, or a hit elsewhere, would make its crash a scenario of its own, to be
    swept again."""
    package = Path(understudy.__file__).parent
    # A Reactor hits the participant points too, at places of its own where they are separate
    # crashes: the choreography sweep (tests/test_harness_choreography.py) crashes each there;
    # so does the children participant (tests/test_harness_children.py).
    reactors = {Path("actors/reactor.py"), Path("actors/reacting.py"), Path("actors/children.py")}
    lines = [
        (source.relative_to(package), number, line)
        for source in sorted(package.rglob("*.py"))
        if source.relative_to(package) not in reactors
        for number, line in enumerate(source.read_text().splitlines(), 1)
    ]

    def hits(point: str) -> list[tuple[Path, int, str]]:
        return [(source, n, line) for source, n, line in lines if f'hit("{point}"' in line]

    for left_out, swept in SAME_CRASH.items():
        assert 1 == len(hits(swept)), hits(swept)
        assert 1 == len(hits(left_out)), hits(left_out)
        [(source, number, line)] = hits(swept)
        [(left_source, left_number, left_line)] = hits(left_out)
        assert (source, number + 1) == (left_source, left_number), (line, left_line)
        depth = len(line) - len(line.lstrip())
        assert depth == len(left_line) - len(left_line.lstrip()), (line, left_line)


#: How many of the sweep's targets (points, participant points counted per participant: 22)
#: the bounded sweeps below crash at every hit, drawn afresh for each base and store (and
#: ``--understudy-seed``); every other target is crashed at its first hit. Why a bound: a run
#: costs one to two seconds on the multi-process base (starting and stopping two actor systems
#: of seven processes, whatever the fault) and most of one on PostgreSQL in-process (a database
#: created per run), and the full sweep is 109 runs (22 first hits, 65 later hits, and for each
#: target the run past its last hit that ends its sweep): about two minutes on the
#: multi-process base with PostgreSQL, one and a half with SQLite, most of one in-process with
#: PostgreSQL, a third of the whole suite together. Why this one: the 22 first-hit runs crash
#: every point on every base and store, and five targets in full add 16 to 26 runs of later
#: hits (the second saga's, the compensations'), other ones on each base and store: 38 to 48
#: runs, under half. Every hit of every point is still crashed in the default suite by the full
#: in-process sweep on SQLite, and on every base and store by the soak run's full sweeps.
SWEPT_IN_FULL = 5
BOUNDED_SWEEPS = [
    ("simpleSystemBase", "postgres"),
    ("multiprocTCPBase", "sqlite"),
    ("multiprocTCPBase", "postgres"),
]


def _first_hits_and_a_seeded_few_in_full(
    harness: Any, *, sagas: int, points: tuple[str, ...], seed: int
) -> list[RunResult]:
    """The exhaustive mode's single-crash sweep (a run per hit of each point, of each
    participant for participant points, until a run the crash never reached), bounded: only
    :data:`SWEPT_IN_FULL` targets, drawn from ``seed``, the base and the store kind, are swept
    to their end; every other one is crashed at its first hit. With ``--understudy-replay``:
    the replayed run only."""
    if harness.replay is not None:
        return list(harness.exhaustive(sagas=sagas, persistent=False, points=points))
    runner: ChaosRunner = harness.runner
    names = sorted({p for d in runner.scenario.definitions for p in d.participants})
    targets = [
        (point, participant)
        for point in points
        for participant in (names if point.startswith("participant.") else [None])
    ]
    drawn = random.Random(f"{seed}:{runner.base}:{runner.store_kind}")
    in_full = set(drawn.sample(targets, SWEPT_IN_FULL))
    results = []
    for point, participant in targets:
        for nth in range(1, 61 if (point, participant) in in_full else 2):  # 60: exhaustive's
            schedule = single_fault(
                point,
                nth,
                base=runner.base,
                sagas=sagas,
                hosts=runner.hosts,
                participant=participant,
                store=runner.store_kind,
            )
            result = harness.run(schedule)  # fails the test on a violated invariant
            results.append(result)
            if not result.fired_at(point):
                break
    return results


@pytest.mark.parametrize("chaos_store", ["sqlite"], indirect=True)
@pytest.mark.parametrize("understudy_base", ["simpleSystemBase"])
def test_exhaustive_single_crash_at_every_hit_of_every_failpoint(
    chaos: Any, understudy_base: str, chaos_store: str | None
) -> None:
    results = chaos(DemoScenario(), store=chaos_store).exhaustive(
        sagas=2, persistent=False, points=CRASH_POINTS
    )
    _single_crash_sweep_checks(results, chaos_store)


@pytest.mark.parametrize("understudy_base,chaos_store", BOUNDED_SWEEPS, indirect=["chaos_store"])
def test_single_crash_at_the_first_hit_of_every_failpoint_and_every_hit_of_a_seeded_few(
    chaos: Any, understudy_base: str, chaos_store: str | None, understudy_seed: int
) -> None:
    """The default suite's sweep with real kills, and on PostgreSQL (see
    :data:`SWEPT_IN_FULL`); the soak run sweeps every hit, below."""
    harness = chaos(DemoScenario(), store=chaos_store)
    results = _first_hits_and_a_seeded_few_in_full(
        harness, sagas=2, points=CRASH_POINTS, seed=understudy_seed
    )
    if harness.replay is None:
        assert sum(r.schedule.faults[-1].nth > 1 for r in results) >= SWEPT_IN_FULL
    _single_crash_sweep_checks(results, chaos_store)


@pytest.mark.soak
@pytest.mark.parametrize("understudy_base,chaos_store", BOUNDED_SWEEPS, indirect=["chaos_store"])
def test_exhaustive_single_crash_at_every_hit_of_every_failpoint_on_every_base_and_store(
    chaos: Any, understudy_base: str, chaos_store: str | None
) -> None:
    results = chaos(DemoScenario(), store=chaos_store).exhaustive(
        sagas=2, persistent=False, points=CRASH_POINTS
    )
    _single_crash_sweep_checks(results, chaos_store)


def _single_crash_sweep_checks(results: list[RunResult], chaos_store: str | None) -> None:
    _fired_everywhere(results)
    assert all(r.report.statuses["completed"] >= 1 for r in results)
    assert all(r.schedule.store == ("postgres" if chaos_store else "sqlite") for r in results)


#: The persistent sweep's bases and stores in the default suite: every one but PostgreSQL on
#: the multi-process base, the slowest of the four (its runs last until their sagas park after
#: repeated kills, over a minute in all), whose parts are each swept here: persistent real
#: kills on SQLite, the PostgreSQL store under persistent crashes in-process, and real kills on
#: PostgreSQL at every point by the single-crash sweep above. The soak run sweeps it too, at
#: every hit (test_exhaustive_persistent_crashes_at_every_hit).
PERSISTENT_SWEEPS = [
    ("simpleSystemBase", "sqlite"),
    ("multiprocTCPBase", "sqlite"),
    ("simpleSystemBase", "postgres"),
]


@pytest.mark.parametrize("understudy_base,chaos_store", PERSISTENT_SWEEPS, indirect=["chaos_store"])
def test_exhaustive_persistent_crashes_from_the_first_hit(
    chaos: Any, understudy_base: str, chaos_store: str | None
) -> None:
    # A persistent crash keeps firing until the heal, so these runs last until the sagas park
    # or stall: the default suite starts each one at the first hit; soak runs sweep every hit.
    # A lower persisted recovery cap parks a saga that keeps killing its host sooner.
    harness = chaos(
        DemoScenario(), policy=RestartPolicy(max_recovery_attempts=3), store=chaos_store
    )
    results = harness.exhaustive(sagas=2, persistent=True, max_nth=1, points=CRASH_POINTS)
    _fired_everywhere(results)


@pytest.mark.soak
def test_exhaustive_persistent_crashes_at_every_hit(chaos: Any, chaos_store: str | None) -> None:
    chaos(DemoScenario(), store=chaos_store).exhaustive(sagas=2, persistent=True)


def test_seeded_random_campaign(chaos: Any, understudy_replay: Any) -> None:
    results = chaos(DemoScenario()).campaign(sagas=10)
    if understudy_replay is None:
        kinds = {kind for r in results for kind in r.fired_kinds()}
        assert len(kinds) >= 3, f"a campaign of fixed seeds fired only {kinds}"
        assert sum(r.report.statuses["completed"] for r in results) >= len(results)


# On PostgreSQL one base is enough (as for the campaign with operators): the multi-process one,
# with real kills. The store's code under the server's faults is the same on both bases
# (test_each_server_fault_at_each_store_point_is_survived runs each in-process), and the SQLite
# campaign runs on both.
@pytest.mark.parametrize("understudy_base", ["multiprocTCPBase"])
def test_seeded_random_campaign_on_postgres_with_the_servers_own_faults(
    chaos: Any,
    understudy_base: str,
    understudy_replay: Any,
    postgres_server_url: str,
    restarter: Callable[[], None],
) -> None:
    """Every fault kind of the SQLite campaign, and the server's own: lost connections,
    serialization failures, deadlocks and statement timeouts made by the server itself at the
    store points, and server restarts while sagas run or recover."""
    harness = chaos(DemoScenario(), store=postgres_server_url, restart_server=restarter)
    results = harness.campaign(sagas=10)
    if understudy_replay is None:
        kinds = {kind for r in results for kind in r.fired_kinds()}
        assert kinds & set(SERVER_ACTIONS), f"no server fault fired, only {kinds}"
        assert sum(r.server_restarts for r in results) >= 1
        assert all(r.schedule.store == "postgres" for r in results)
        assert sum(r.report.statuses["completed"] for r in results) >= len(results)


# --- PostgreSQL: the server's faults and restarts ---------------------------------------------


@pytest.mark.parametrize("action", SERVER_ACTIONS)
def test_each_server_fault_at_each_store_point_is_survived(
    tmp_path: Path, postgres_server_url: str, action: str
) -> None:
    """Each server fault, made by the server itself on the store's own connection: once at
    each of the first hits of every store point that accepts it, then persistently from the
    first hit inside the batch transaction (every commit fails until the heal). In-process
    only: the store's code under the fault is the same on both bases, and the campaigns draw
    these faults on the multi-process base too."""
    runner = ChaosRunner(
        DemoScenario(), tmp_path, base="simpleSystemBase", store=postgres_server_url
    )
    points = [p for p in STORE_POINTS if action in actions_for(p)]
    results = runner.exhaustive(sagas=2, points=points, action=action, max_nth=2)
    results += runner.exhaustive(
        sagas=2, points=["store.in_transaction"], action=action, persistent=True, max_nth=1
    )
    for result in results:
        assert result.ok, f"{result.schedule.describe()}\n{result.report}"
    for point in points:
        assert any(r.fired_at(point) for r in results), f"{action} at {point} never fired"


@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgres"])
def test_last_seq_is_the_latest_event_and_moves_with_every_write(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    """What the runner watches for progress, through the store interface on every backend."""
    location = {
        "memory": lambda: "memory://",
        "sqlite": lambda: str(tmp_path / "sagas.db"),
        "postgres": lambda: str(request.getfixturevalue("postgres_url")),
    }[kind]()
    with contextlib.closing(open_store(location)) as store:
        assert 0 == store.last_seq()
        started = Event("started", 1.0)
        assert [True] == store.apply([NewSaga("a", "order", 1, b"\x80", 1.0, (started,))])
        first = store.last_seq()
        assert first == store.events("a")[-1].seq > 0
        assert store.claim("a", recovery=True, at=2.0) is not None
        assert store.last_seq() == store.events("a")[-1].seq > first


def _sagas_in_flight_at(location: str, moment: float) -> list[str]:
    """Sagas with an event before ``moment`` and their end after it: in flight then."""
    found = []
    with contextlib.closing(open_store(location, read_only=True)) as store:
        for record in store.list_sagas(limit=-1):
            events = store.events(record.saga_id)
            ends = [e.at for e in events if e.step is None and e.kind == record.status]
            if events and events[0].at < moment and (not ends or ends[0] > moment):
                found.append(record.saga_id)
    return found


def _restarted_at(result: RunResult, phase: str) -> float:
    lines = [line for line in result.fired if line.startswith(f"server.{phase} restart")]
    assert len(lines) == 1, result.fired
    return float(lines[0].rpartition("at=")[2])


#: When a restart starts, counted from the heal's start: the healing runtime starts in tens of
#: milliseconds in-process and a few hundred on the multi-process base, and its resumed sagas
#: finish a few hundred milliseconds later. From 0 the restart meets the start itself (which
#: waits while its saga hosts cannot reach the store, or fails and is started again, as an
#: application's supervisor would), later ones the recovery scan and the resumed sagas' first
#: steps.
RECOVERY_OFFSETS = {
    "simpleSystemBase": (0.0, 0.02, 0.04, 0.08),
    "multiprocTCPBase": (0.0, 0.1, 0.2, 0.3),
}


def test_a_server_restart_while_sagas_run_and_while_they_recover_loses_nothing(
    tmp_path: Path,
    understudy_base: str,
    postgres_server: PostgresServer,
    restarter: Callable[[], None],
) -> None:
    """A fast restart of the whole server (every connection dropped, open transactions rolled
    back) while the faulty runtime's sagas are in flight, and while the healing runtime starts,
    scans and resumes the sagas a persistent fault left unfinished: every saga ends, nothing
    acknowledged is lost, nothing applied without its intent."""
    runner = ChaosRunner(
        DemoScenario(),
        tmp_path,
        base=understudy_base,
        store=postgres_server.url,
        restart_server=restarter,
        keep_stores=True,  # read back below, then dropped
    )
    kept: list[str] = []
    try:
        # Slow participants keep the sagas in flight for a few seconds.
        slow = Fault("participant.before_apply", "delay", delay=0.1, persistent=True)
        mid_run = runner.run(
            FaultSchedule(
                (slow,),
                sagas=10,
                base=understudy_base,
                store="postgres",
                restarts=(ServerRestart(FAULTY, after_events=12),),
            ),
            name="mid-run",
        )
        kept.append(_location(postgres_server.url, mid_run))
        assert mid_run.ok, mid_run.report
        assert 1 == mid_run.server_restarts
        in_flight = _sagas_in_flight_at(kept[-1], _restarted_at(mid_run, FAULTY))
        assert in_flight, "the restart came when no saga was in flight"

        met_the_start = 0
        for offset in RECOVERY_OFFSETS[understudy_base]:
            # Every commit after the starts fails until the heal: every saga is left unfinished
            # for the healing runtime to recover.
            stuck = Fault("host.before_commit", "raise", nth=2, persistent=True)
            result = runner.run(
                FaultSchedule(
                    (stuck,),
                    sagas=8,
                    base=understudy_base,
                    store="postgres",
                    restarts=(ServerRestart(RECOVERY, after_seconds=offset),),
                ),
                name=f"recovery-{offset}",
            )
            kept.append(_location(postgres_server.url, result))
            assert result.ok, f"{result.schedule.describe()}\n{result.report}"
            assert 1 == result.server_restarts
            assert result.resumed >= 1 or result.heal_starts > 1
            # The restart began before the healing runtime's start returned: the start either
            # failed and was started again, or waited while its hosts' scans could not reach
            # the store.
            heal_start_ended = result.heal_began_at + result.heal_start_seconds
            met_the_start += _restarted_at(result, RECOVERY) < heal_start_ended
        assert met_the_start >= 1, "no restart met the healing runtime's start"
    finally:
        for location in kept:
            drop_database(postgres_server.url, location)


def _location(server_url: str, result: RunResult) -> str:
    """The run's database URL with the server's credentials (``result.store`` has none)."""
    return database_url(server_url, result.store.rpartition("/")[2])


#: The mutation test's bases and stores: SQLite on both bases; PostgreSQL in-process only, as
#: what it adds there (a statement timeout between the send and the commit, a failing run's
#: database kept and readable, a replay on the environment's server) is the store's, not the
#: base's, and the catch itself is shown on both bases with SQLite.
MUTANT_RUNS = [
    ("simpleSystemBase", "sqlite"),
    ("multiprocTCPBase", "sqlite"),
    ("simpleSystemBase", "postgres"),
]


@pytest.mark.parametrize("understudy_base,chaos_store", MUTANT_RUNS, indirect=["chaos_store"])
def test_a_host_that_sends_before_it_commits_is_caught(
    tmp_path: Path,
    understudy_base: str,
    chaos_store: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The mutation test: write-ahead turned around is invisible without faults, and caught
    by the checker as soon as a store error lands between the send and the commit (on
    PostgreSQL: the server cancelling the batch's statement past its timeout)."""
    mutant = ChaosRunner(
        DemoScenario(),
        tmp_path / "mutant",
        base=understudy_base,
        host_class=SendsBeforeCommit,
        store=chaos_store,
    )
    kind = "postgres" if chaos_store else "sqlite"
    untouched = mutant.run(
        FaultSchedule((), base=understudy_base, sagas=2, store=kind), name="no-faults"
    )
    assert untouched.ok, untouched.report

    # A failed commit: the requests are out, the intents are not durable, and the saga
    # records them again later, after the participants applied them.
    error = "statement_timeout" if chaos_store else "io_error"
    results = mutant.exhaustive(sagas=2, points=["store.in_transaction"], action=error)
    caught = [r for r in results if not r.ok]
    try:
        assert caught, "the checker missed a host that sends before it commits"
        rules = {v.rule for r in caught for v in r.report.violations}
        assert rules & {"write-ahead", "unknown-saga"}, rules

        # The saved schedule replays the catch on the same kind of store; the same schedule
        # passes with the real host.
        assert caught[0].saved is not None
        schedule = FaultSchedule.load(caught[0].saved)
        assert kind == schedule.store
        replayed = mutant.run(schedule, name="replay")
        assert not replayed.ok
        caught.append(replayed)
        if chaos_store:
            # A failing run's database is kept, named without credentials, and readable.
            assert replayed.store.startswith("postgresql://") and "@" not in replayed.store
            with contextlib.closing(
                open_store(_location(chaos_store, replayed), read_only=True)
            ) as kept:
                assert kept.last_seq() > 0
            # A runner given no server replays on the environment's.
            monkeypatch.setenv("UNDERSTUDY_TEST_POSTGRES_URL", chaos_store)
        real = ChaosRunner(DemoScenario(), tmp_path / "real", base=understudy_base)
        passed = real.run(schedule)
        assert passed.ok, passed.report
        assert kind == passed.schedule.store and passed.store.startswith(
            "postgresql://" if chaos_store else str(tmp_path)
        )
    finally:
        if chaos_store:
            for result in caught:
                drop_database(chaos_store, _location(chaos_store, result))


def test_schedules_record_their_store_and_draw_server_faults_only_for_postgres(
    tmp_path: Path,
) -> None:
    base = "multiprocTCPBase"
    sqlite = [random_schedule(seed, base=base, sagas=6, enable=0.8) for seed in range(40)]
    postgres = [
        random_schedule(seed, base=base, sagas=6, enable=0.8, store="postgres")
        for seed in range(40)
    ]
    restarting = [
        random_schedule(seed, base=base, sagas=6, store="postgres", restarts=True)
        for seed in range(40)
    ]
    assert all(s.store == "sqlite" and not s.restarts for s in sqlite)
    assert not {f.action for s in sqlite for f in s.faults} & set(SERVER_ACTIONS)
    assert set(SERVER_ACTIONS) <= {f.action for s in postgres for f in s.faults}
    assert not any(s.restarts for s in postgres)
    assert {r.phase for s in restarting for r in s.restarts} == {FAULTY, RECOVERY}
    # A seed's faults and workload do not depend on whether the server can be restarted.
    assert [(s.faults, s.workload_seed) for s in restarting] == [
        (s.faults, s.workload_seed)
        for s in (random_schedule(seed, base=base, sagas=6, store="postgres") for seed in range(40))
    ]
    # Saved and loaded with its store and restarts; a schedule from before stores is SQLite's.
    drawn = next(s for s in restarting if s.restarts)
    assert FaultSchedule.load(drawn.save(tmp_path / "s.json")) == drawn
    old = drawn.to_dict()
    del old["store"], old["restarts"]
    old["faults"] = [f for f in old["faults"] if f["action"] not in SERVER_ACTIONS]
    assert "sqlite" == FaultSchedule.from_dict(old).store
    with pytest.raises(ValueError, match="need a postgres store"):
        FaultSchedule((Fault("store.claim", "deadlock"),), store="sqlite")
    with pytest.raises(ValueError, match="need a postgres store"):
        FaultSchedule((), restarts=(ServerRestart(FAULTY, after_events=3),))
    # A runner that cannot restart the server refuses a schedule that restarts it.
    runner = ChaosRunner(DemoScenario(), tmp_path / "runs", store="postgresql://h/db")
    with pytest.raises(ValueError, match="restart_server"):
        runner.run(attrs_evolve(drawn, restarts=(ServerRestart(FAULTY, after_events=3),)))


def test_the_chaos_command_runs_a_campaign_and_prints_its_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        [
            *("chaos", "--runs", "2", "--sagas", "4", "--base", "simpleSystemBase"),
            *("--seed", "3", "--dir", str(tmp_path)),
        ]
    )
    out = capsys.readouterr().out
    assert 0 == status, out
    assert "run 2/2" in out
    assert "sagas run: 12 (" in out  # 2 runs of 4 sagas and 2 probes each
    assert "invariant violations: 0" in out
    assert "recovery time (heal to quiet): p50" in out
    assert [] == list(tmp_path.glob("seed3-run*")), "passing runs' data is removed"


def test_the_chaos_command_runs_a_campaign_on_postgres(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], postgres_server_url: str
) -> None:
    status = main(
        [
            *("chaos", "--runs", "2", "--sagas", "4", "--base", "simpleSystemBase"),
            *("--seed", "3", "--dir", str(tmp_path), "--store", postgres_server_url),
        ]
    )
    out = capsys.readouterr().out
    assert 0 == status, out
    assert f"saga store on PostgreSQL {redact(postgres_server_url)}" in out
    assert "sagas run: 12 (" in out and "invariant violations: 0" in out
    assert "understudy@" not in out  # never the user (nor a password)
    with psycopg.connect(postgres_server_url, autocommit=True) as admin:
        left = admin.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'understudy_chaos_seed3_run%'"
        ).fetchall()
    assert [] == left, "passing runs' databases are dropped"
    assert 2 == main(["chaos", "--restart-command", "true"])
    assert "--restart-command needs --store" in capsys.readouterr().err
    assert 2 == main(["chaos", "--store", "/tmp/sagas.db"])
    assert "postgresql:// URL" in capsys.readouterr().err


def test_the_chaos_command_refuses_a_scenario_it_cannot_load(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert 2 == main(["chaos", "--scenario", "no_such_module:scenario"])
    assert "cannot import scenario module 'no_such_module'" in capsys.readouterr().err
    assert 2 == main(["chaos", "--scenario", "demo.chaos"])
    assert "module:attribute" in capsys.readouterr().err


def test_the_plugin_fixtures_draw_a_schedule_for_the_base_and_run_it(
    chaos: Any, fault_schedule: FaultSchedule, saga_checker: Any, understudy_base: str
) -> None:
    assert understudy_base == fault_schedule.base
    assert saga_checker is check
    result = chaos(DemoScenario()).run(fault_schedule)
    assert result.report.statuses["completed"] >= 1


def test_a_saved_schedule_replays_with_the_policy_and_probes_it_ran_with(
    tmp_path: Path,
) -> None:
    """A replay repeats how the run was driven, not the replaying runner's settings."""
    policy = RestartPolicy(max_recovery_attempts=3)
    mutant = ChaosRunner(
        DemoScenario(),
        tmp_path / "saved",
        host_class=SendsBeforeCommit,
        policy=policy,
        probes=1,
        scenario_path="demo.chaos:scenario",
    )
    failed = next(
        r
        for r in mutant.exhaustive(sagas=2, points=["store.in_transaction"], action="io_error")
        if not r.ok
    )
    assert failed.saved is not None
    schedule = FaultSchedule.load(failed.saved)
    assert 3 == schedule.runner["policy"]["max_recovery_attempts"]
    assert 1 == schedule.runner["probes"]
    assert "demo.chaos:scenario" == schedule.runner["scenario"]
    again = ChaosRunner(DemoScenario(), tmp_path / "again", host_class=SendsBeforeCommit)
    replayed = again.run(schedule, name="replay")
    assert 3 == replayed.sagas  # 2 sagas and the 1 probe it was saved with, not the default 2
