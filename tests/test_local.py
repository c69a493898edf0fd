"""Local transactions (understudy.local): named steps against one database as one transaction,
on a real SQLite file and a real PostgreSQL server.

All or nothing (a failure at any step keeps no row of any step), later steps see earlier
results, a savepoint inside a transaction already open (a participant's ledger transaction,
through a real runtime on both actor system bases), a process killed with SIGKILL in the middle
leaves nothing and a rerun applies it whole, and docs/local.md's examples run as saved scripts.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import psycopg
import pytest
from conftest import FAST, start_runtime
from psycopg.pq import TransactionStatus

from understudy import (
    DefinitionError,
    Participant,
    Reject,
    SagaDefinition,
    Step,
    StepContext,
    action,
    compensation,
)
from understudy.local import Local, LocalStepFailed

ROOT = Path(__file__).resolve().parent.parent
DATABASES = ["sqlite", "postgres"]
STEPS = ("order", "stock", "payment")

# --- the shop: three steps in one database ----------------------------------------------------

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, qty INTEGER)",
    "CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, qty INTEGER)",
    "CREATE TABLE IF NOT EXISTS payments (order_id TEXT PRIMARY KEY, amount INTEGER)",
    "INSERT INTO stock VALUES ('A1', 10) ON CONFLICT DO NOTHING",
)
#: (orders, stock left, payments) of a shop where nothing was kept.
UNTOUCHED: tuple[list[tuple[Any, ...]], int, list[tuple[Any, ...]]] = ([], 10, [])


def execute(db: Any, statement: str, params: tuple[Any, ...] = ()) -> Any:
    """``statement``, written with ``?`` placeholders, on either kind of connection."""
    if not isinstance(db, sqlite3.Connection):
        statement = statement.replace("?", "%s")
    return db.execute(statement, params)


def create_schema(db: Any) -> None:
    for statement in SCHEMA:
        execute(db, statement)


def checkout(order_id: str, qty: int, fail_at: str | None = None, how: str = "raises") -> Local:
    """The seed's order as a local transaction: each step writes, then fails when it is
    ``fail_at`` (``how``: ``raises`` an exception, or runs a ``statement`` that fails), so the
    rollback undoes the failing step's own write too. Too little stock is a :class:`Reject`."""

    def fail_here(db: Any, name: str) -> None:
        if fail_at != name:
            return
        if how == "raises":
            raise RuntimeError(f"{name} failing on purpose")
        execute(db, "INSERT INTO nowhere VALUES (1)")

    def order(db: Any, done: Any) -> dict[str, Any]:
        execute(db, "INSERT INTO orders VALUES (?, ?)", (order_id, qty))
        fail_here(db, "order")
        return {"id": order_id, "qty": qty}

    def stock(db: Any, done: Any) -> int:
        execute(db, "UPDATE stock SET qty = qty - ? WHERE sku = 'A1'", (done["order"]["qty"],))
        fail_here(db, "stock")
        left = int(execute(db, "SELECT qty FROM stock WHERE sku = 'A1'").fetchone()[0])
        if left < 0:
            raise Reject(f"out of stock: {qty} asked, {left + qty} left")
        return left

    def payment(db: Any, done: Any) -> dict[str, Any]:
        amount = 10 * done["order"]["qty"]
        execute(db, "INSERT INTO payments VALUES (?, ?)", (done["order"]["id"], amount))
        fail_here(db, "payment")
        return {"amount": amount, "left": done["stock"]}

    return Local().step("order", order).step("stock", stock).step("payment", payment)


@pytest.fixture(params=DATABASES)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A shop database: a SQLite file, or a fresh database on the test PostgreSQL server."""
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return str(tmp_path / "shop.db")


def connect(where: str) -> Any:
    """A connection outside any transaction: each statement commits unless one is begun (as the
    participants' ledgers open theirs)."""
    if where.startswith("postgresql://"):
        return psycopg.connect(where, autocommit=True)
    return sqlite3.connect(where, isolation_level=None)


@pytest.fixture
def shop(database: str) -> str:
    """``database`` with the shop's tables, stock 10."""
    with closing(connect(database)) as db:
        create_schema(db)
    return database


def state(where: str) -> tuple[list[tuple[Any, ...]], int, list[tuple[Any, ...]]]:
    """(orders, stock left, payments), read through a connection of its own: what is committed."""
    with closing(connect(where)) as db:
        orders = [tuple(row) for row in execute(db, "SELECT id, qty FROM orders ORDER BY id")]
        left = int(execute(db, "SELECT qty FROM stock WHERE sku = 'A1'").fetchone()[0])
        payments = [
            tuple(row) for row in execute(db, "SELECT order_id, amount FROM payments ORDER BY 1")
        ]
    return orders, left, payments


def in_transaction(db: Any) -> bool:
    if isinstance(db, sqlite3.Connection):
        return db.in_transaction
    return bool(db.info.transaction_status != TransactionStatus.IDLE)


def checkout_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: this one's, with the checkout importable."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def run_python(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python *args`` run to its end (generous: a busy machine, an actor system to start)."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


# --- all or nothing ---------------------------------------------------------------------------


def test_every_step_runs_in_order_and_commits_with_the_others(shop: str) -> None:
    with closing(connect(shop)) as db:
        results = checkout("o-1", 2).run(db)
        assert not in_transaction(db)
    assert {"order": {"id": "o-1", "qty": 2}, "stock": 8, "payment": {"amount": 20, "left": 8}} == (
        results
    )
    assert list(STEPS) == list(results)
    assert ([("o-1", 2)], 8, [("o-1", 20)]) == state(shop)


@pytest.mark.parametrize("how", ["raises", "statement"])
@pytest.mark.parametrize("fail_at", STEPS)
def test_a_failure_at_any_step_keeps_no_row_of_any_step(shop: str, fail_at: str, how: str) -> None:
    """Whether the step raises or one of its statements fails; then the same transaction, run
    again on the same connection, applies whole."""
    with closing(connect(shop)) as db:
        with pytest.raises(LocalStepFailed) as failed:
            checkout("o-1", 2, fail_at, how).run(db)
        assert not in_transaction(db)
        assert UNTOUCHED == state(shop)
        checkout("o-1", 2).run(db)
    assert fail_at == failed.value.step
    position = STEPS.index(fail_at) + 1
    assert f"failed at step {fail_at!r} ({position} of 3)" in str(failed.value)
    cause = failed.value.__cause__
    if how == "raises":
        assert isinstance(cause, RuntimeError)
        assert f"RuntimeError: {fail_at} failing on purpose" in str(failed.value)
    else:
        assert isinstance(cause, sqlite3.OperationalError | psycopg.errors.UndefinedTable)
    assert ([("o-1", 2)], 8, [("o-1", 20)]) == state(shop)


def test_later_steps_see_the_earlier_results_and_cannot_change_them(shop: str) -> None:
    seen: list[dict[str, Any]] = []
    refused: list[bool] = []

    def look(db: Any, done: Any) -> int:
        seen.append(dict(done))
        try:
            done["forged"] = 1
        except TypeError:
            refused.append(True)
        return len(done)

    local = Local().step("first", lambda db, done: "one").step("second", look).step("third", look)
    with closing(connect(shop)) as db:
        assert {"first": "one", "second": 1, "third": 2} == local.run(db)
    assert [{"first": "one"}, {"first": "one", "second": 1}] == seen
    assert [True, True] == refused


def test_a_reject_rolls_back_and_goes_on_as_it_is(shop: str) -> None:
    """A participant records a Reject as a business refusal: it is not wrapped."""
    with closing(connect(shop)) as db, pytest.raises(Reject, match="out of stock: 11 asked"):
        checkout("o-1", 11).run(db)
    assert UNTOUCHED == state(shop)


class Interrupted(BaseException):
    """Stands in for KeyboardInterrupt or SystemExit."""


def test_a_base_exception_rolls_back_and_goes_on_as_it_is(shop: str) -> None:
    def interrupted(db: Any, done: Any) -> None:
        raise Interrupted

    local = Local().step("order", lambda db, done: checkout("o-1", 1).run(db))
    with closing(connect(shop)) as db:
        with pytest.raises(Interrupted):
            local.step("interrupted", interrupted).run(db)
        assert not in_transaction(db)
    assert UNTOUCHED == state(shop)


# --- the transaction it runs in ---------------------------------------------------------------


def test_inside_an_open_transaction_it_is_a_savepoint_and_leaves_the_commit_to_its_owner(
    shop: str,
) -> None:
    """As in a participant's handler: the connection is inside a transaction begun with an
    explicit BEGIN. A failed run undoes only its own writes and leaves the transaction open; a
    run that succeeds commits nothing by itself."""
    with closing(connect(shop)) as db:
        db.execute("BEGIN")
        execute(db, "INSERT INTO orders VALUES ('outer', 1)")
        with pytest.raises(LocalStepFailed):
            checkout("failed", 1, fail_at="payment").run(db)
        assert in_transaction(db)
        checkout("inner", 2).run(db)
        assert in_transaction(db)
        db.execute("ROLLBACK")  # the owner's decision: the local transaction goes with it
        assert UNTOUCHED == state(shop)

        db.execute("BEGIN")
        execute(db, "INSERT INTO orders VALUES ('outer', 1)")
        with pytest.raises(LocalStepFailed):
            checkout("failed", 1, fail_at="stock", how="statement").run(db)
        checkout("inner", 2).run(db)
        db.execute("COMMIT")
    assert ([("inner", 2), ("outer", 1)], 8, [("inner", 20)]) == state(shop)


def test_a_local_transaction_nests_in_a_step_of_another(shop: str) -> None:
    """A step may run a local transaction and go on when it fails: only the inner one's writes
    are undone."""

    def try_inner(db: Any, done: Any) -> str | None:
        try:
            checkout("inner", 1, fail_at="payment").run(db)
        except LocalStepFailed as failed:
            return failed.step
        return None

    first = Local().step(
        "first", lambda db, done: execute(db, "INSERT INTO orders VALUES ('first', 1)").rowcount
    )
    with closing(connect(shop)) as db:
        assert {"first": 1, "inner": "payment"} == first.step("inner", try_inner).run(db)
    assert ([("first", 1)], 10, []) == state(shop)


@pytest.mark.parametrize("statement", ["COMMIT", "ROLLBACK"])
def test_a_step_that_ends_the_transaction_itself_fails_the_run(shop: str, statement: str) -> None:
    """It cannot be undone any more, but it is not reported as a success: the error names the
    step and says what may have been committed."""
    local = (
        Local()
        .step("order", lambda db, done: execute(db, "INSERT INTO orders VALUES ('o-1', 1)"))
        .step("meddles", lambda db, done: db.execute(statement))
        .step("payment", lambda db, done: execute(db, "INSERT INTO payments VALUES ('o-1', 10)"))
    )
    with closing(connect(shop)) as db, pytest.raises(LocalStepFailed) as failed:
        local.run(db)
    assert "meddles" == failed.value.step
    assert failed.value.__cause__ is None
    assert "ended the transaction itself" in str(failed.value)
    assert "may be committed in part" in str(failed.value)
    kept = [("o-1", 1)] if statement == "COMMIT" else []
    assert (kept, 10, []) == state(shop)


@pytest.mark.parametrize("autocommit", [True, False])
def test_on_postgres_a_step_that_swallows_a_failed_statement_fails_the_run(
    postgres_url: str, autocommit: bool
) -> None:
    """PostgreSQL answers the COMMIT of an aborted transaction by rolling it back without an
    error: unchecked, the run would return results and keep nothing."""

    def swallows(db: Any, done: Any) -> str:
        with suppress(psycopg.errors.UndefinedTable):
            db.execute("INSERT INTO nowhere VALUES (1)")
        return "went on"

    with closing(connect(postgres_url)) as db:
        create_schema(db)
    with psycopg.connect(postgres_url, autocommit=autocommit) as db:
        with pytest.raises(LocalStepFailed, match="went on without raising") as failed:
            checkout("o-1", 1).step("swallows", swallows).run(db)
        assert not in_transaction(db)
    assert "swallows" == failed.value.step
    assert UNTOUCHED == state(postgres_url)


def test_sqlite_in_its_default_mode_commits_too(tmp_path: Path) -> None:
    """sqlite3's default isolation_level (it begins transactions itself before writes)."""
    path = str(tmp_path / "shop.db")
    with closing(connect(path)) as db:
        create_schema(db)
    with closing(sqlite3.connect(path)) as db:
        checkout("o-1", 1).run(db)
        assert not db.in_transaction
        with pytest.raises(LocalStepFailed):
            checkout("o-2", 1, fail_at="payment").run(db)
        assert not db.in_transaction
    assert ([("o-1", 1)], 9, [("o-1", 10)]) == state(path)


def test_psycopg_outside_autocommit_commits_too(postgres_url: str) -> None:
    with closing(connect(postgres_url)) as db:
        create_schema(db)
    with psycopg.connect(postgres_url) as db:
        checkout("o-1", 1).run(db)
        assert TransactionStatus.IDLE == db.info.transaction_status
        with pytest.raises(LocalStepFailed):
            checkout("o-2", 1, fail_at="stock", how="statement").run(db)
        assert TransactionStatus.IDLE == db.info.transaction_status
    assert ([("o-1", 1)], 9, [("o-1", 10)]) == state(postgres_url)


# --- bad input --------------------------------------------------------------------------------


def test_a_transaction_that_cannot_run_as_written_is_refused_when_built() -> None:
    def fn(db: Any, done: Any) -> None:
        return None

    with pytest.raises(DefinitionError, match=r"step 'a' .* is int 3, which is not callable"):
        Local().step("a", 3)  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="two steps named 'a'"):
        Local().step("a", fn).step("b", fn).step("a", fn)
    for name in ("", None, 7):
        with pytest.raises(DefinitionError, match="non-empty str name"):
            Local().step(name, fn)  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="no steps"):
        Local().run(sqlite3.connect(":memory:"))
    assert issubclass(DefinitionError, ValueError)


def test_the_builder_is_immutable() -> None:
    def fn(db: Any, done: Any) -> None:
        return None

    empty = Local()
    one = empty.step("a", fn)
    two = one.step("b", fn)
    assert ((), ("a",), ("a", "b")) == (empty.names, one.names, two.names)
    with pytest.raises(DefinitionError):
        one.step("a", fn)
    assert ("a",) == one.names
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        one._steps = ()  # type: ignore[misc]
    assert "Local('a', 'b')" == repr(two)


def test_a_database_of_another_kind_is_refused_naming_the_kinds_supported(
    tmp_path: Path, postgres_url: str
) -> None:
    local = Local().step("a", lambda db, done: None)
    supported = r"runs on a sqlite3\.Connection or a psycopg\.Connection \(psycopg 3\)"
    with pytest.raises(TypeError, match=supported + r", not on builtins\.str \(a path or URL"):
        local.run(str(tmp_path / "shop.db"))
    with pytest.raises(TypeError, match=supported + r", not on builtins\.object$"):
        local.run(object())

    async def asynchronous() -> None:
        async with await psycopg.AsyncConnection.connect(postgres_url) as db:
            with pytest.raises(TypeError, match=r"AsyncConnection \(run\(\) is synchronous"):
                local.run(db)

    asyncio.run(asynchronous())


def test_the_error_keeps_its_step_when_pickled() -> None:
    """A multi-process actor system pickles what crosses processes."""
    import pickle

    error = pickle.loads(pickle.dumps(LocalStepFailed("failed at step 'x'", "x")))
    assert ("x", "failed at step 'x'") == (error.step, str(error))


# --- inside a participant, through a real runtime ---------------------------------------------

SHOP = SagaDefinition(
    "shop", 1, [Step("place", "shop", "place", "unplace", retry=FAST, compensation_retry=FAST)]
)


class LocalShop(Participant):
    """Places an order as a local transaction, inside the ledger's transaction. The payload
    steers it: ``fail_at`` and ``how`` as for :func:`checkout`, ``unencodable`` returns a
    result msgpack cannot encode."""

    def setup(self, db: Any, options: dict[str, Any]) -> None:
        create_schema(db)

    @action("place")
    def place(self, step: StepContext, db: Any) -> Any:
        payload = step.payload
        local = checkout(step.saga_id, payload["qty"], payload.get("fail_at"), payload["how"])
        if payload.get("unencodable"):
            local = local.step("when", lambda db, done: {"at": datetime.now(UTC)})
        return local.run(db)

    @compensation("unplace")
    def unplace(self, step: StepContext, db: Any) -> None:
        order = step.forward_result["order"]
        execute(db, "DELETE FROM orders WHERE id = ?", (order["id"],))
        execute(db, "UPDATE stock SET qty = qty + ? WHERE sku = 'A1'", (order["qty"],))
        execute(db, "DELETE FROM payments WHERE order_id = ?", (order["id"],))


def ledger(where: str, saga_id: str) -> list[tuple[str, str]]:
    """(kind, outcome) of the participant's ledger rows for ``saga_id``, sorted."""
    with closing(connect(where)) as db:
        rows = execute(
            db, "SELECT kind, outcome FROM understudy_ledger WHERE saga_id = ?", (saga_id,)
        ).fetchall()
    return sorted((str(kind), str(outcome)) for kind, outcome in rows)


def test_inside_a_participant_a_failed_local_transaction_fails_the_step_and_keeps_nothing(
    tmp_path: Path, base: str, database: str
) -> None:
    """On both actor system bases, with the participant's database in SQLite and PostgreSQL: a
    local step that raises fails the saga step (retried, then compensated) and a Reject refuses
    it; either way nothing of the local transaction is kept, in the participant's database or its
    ledger. The one that succeeds commits with its ledger row, its results the step's result."""
    sagas = {
        "ok": {"qty": 2},
        "raises": {"qty": 1, "fail_at": "payment"},
        "statement": {"qty": 1, "fail_at": "stock", "how": "statement"},
        "refused": {"qty": 50},
        "unencodable": {"qty": 1, "unencodable": True},
    }
    participants = [("shop", LocalShop, {"database": database})]
    with start_runtime(tmp_path, [SHOP], participants, base=base) as us:
        futures = {
            saga_id: us.submit_future(saga_id, "shop", {"how": "raises", **payload})
            for saga_id, payload in sagas.items()
        }
        finished = {saga_id: future.result(120) for saga_id, future in futures.items()}
    statuses = {saga_id: outcome.status for saga_id, outcome in finished.items()}
    assert {
        "ok": "completed",
        "raises": "compensated",
        "statement": "compensated",
        "refused": "compensated",
        "unencodable": "compensated",
    } == statuses
    assert {"order": {"id": "ok", "qty": 2}, "stock": 8, "payment": {"amount": 20, "left": 8}} == (
        finished["ok"].results["place"]
    )
    reasons = {saga_id: outcome.reason or "" for saga_id, outcome in finished.items()}
    assert (
        "LocalStepFailed: local transaction failed at step 'payment' (3 of 3)" in reasons["raises"]
    )
    assert "payment failing on purpose" in reasons["raises"]
    assert "local transaction failed at step 'stock' (2 of 3)" in reasons["statement"]
    assert "out of stock: 50 asked" in reasons["refused"]
    assert "field 'when.at'" in reasons["unencodable"]

    assert ([("ok", 2)], 8, [("ok", 20)]) == state(database)
    assert [("do", "applied")] == ledger(database, "ok")
    assert [("do", "rejected"), ("undo", "noop")] == ledger(database, "refused")
    for saga_id in ("raises", "statement", "unencodable"):
        # Never applied: its compensation found nothing to undo (a tombstone for the forward).
        assert [("do", "tombstone"), ("undo", "noop")] == ledger(database, saga_id), saga_id


# --- a process killed in the middle -----------------------------------------------------------

#: Runs one local transaction on the database named by argv[1]; with argv[2] == "pause" it
#: prints "inside" in its last step, after the others wrote, and waits there to be killed.
CRASHING = """\
import os
import sqlite3
import sys

from understudy.local import Local

where, mode = sys.argv[1], sys.argv[2]
if where.startswith("postgresql://"):
    import psycopg

    db = psycopg.connect(where, autocommit=True)
    mark = "%s"
else:
    db = sqlite3.connect(where, isolation_level=None)
    # A page cache of a few pages: the bulk step's writes spill to the file (or its write-ahead
    # log) before the commit, so the kill finds the unfinished transaction on disk.
    db.execute("PRAGMA cache_size = 8")
    mark = "?"


def order(db, done):
    db.execute("INSERT INTO orders VALUES ('crash', 3)")
    return "crash"


def bulk(db, done):
    rows = [(f"{done['order']}-{i}", b"x" * 4000) for i in range(300)]
    db.cursor().executemany(f"INSERT INTO bulk VALUES ({mark}, {mark})", rows)
    return len(rows)


def wait(db, done):
    if mode == "pause":
        print("inside", flush=True)
        sys.stdin.read()  # the test kills this process here
        os._exit(3)  # the test went away without killing it: end without committing
    return None


print(Local().step("order", order).step("bulk", bulk).step("wait", wait).run(db))
"""


def footprint(path: Path) -> int:
    """Bytes of a SQLite database on disk: its file and its write-ahead log."""
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def crash_rows(where: str) -> tuple[list[tuple[Any, ...]], int]:
    with closing(connect(where)) as db:
        orders = [tuple(row) for row in execute(db, "SELECT id, qty FROM orders")]
        bulk = int(execute(db, "SELECT count(*) FROM bulk").fetchone()[0])
    return orders, bulk


def idle_in_transaction(url: str) -> int:
    """How many client connections to the database of ``url`` are inside a transaction, idle."""
    dbname = urlsplit(url).path.lstrip("/")
    with closing(connect(url)) as db:
        row = db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
            "AND state = 'idle in transaction'",
            (dbname,),
        ).fetchone()
    return int(row[0])


@pytest.mark.parametrize("kind", ["sqlite-delete", "sqlite-wal", "postgres"])
def test_a_process_killed_in_the_middle_leaves_nothing_and_a_rerun_applies_it_whole(
    tmp_path: Path, request: pytest.FixtureRequest, kind: str
) -> None:
    """SIGKILL in the last step, after the others wrote: SQLite (rollback journal and WAL) rolls
    the transaction back when the file is opened next, PostgreSQL aborts it with its client."""
    script = tmp_path / "crashing.py"
    script.write_text(CRASHING)
    path = tmp_path / "crash.db"
    where = str(request.getfixturevalue("postgres_url")) if kind == "postgres" else str(path)
    with closing(connect(where)) as db:
        if kind != "postgres":
            db.execute(f"PRAGMA journal_mode = {kind.removeprefix('sqlite-')}")
        execute(db, "CREATE TABLE orders (id TEXT PRIMARY KEY, qty INTEGER)")
        execute(db, "CREATE TABLE bulk (id TEXT PRIMARY KEY, data BYTEA)")
    before = 0 if kind == "postgres" else footprint(path)
    env = checkout_env()

    child = subprocess.Popen(
        [sys.executable, str(script), where, "pause"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert "inside\n" == line, child.stderr.read() if child.stderr else ""
        # The kill must find the transaction's writes somewhere: on disk, or at the server.
        if kind == "postgres":
            assert 1 == idle_in_transaction(where)
        else:
            assert footprint(path) > before + 300 * 4000
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()  # a no-op once it is dead; ends it if an assert above failed
        child.communicate()
    assert -signal.SIGKILL == child.returncode

    assert ([], 0) == crash_rows(where)
    if kind != "postgres":
        with closing(connect(where)) as db:
            assert [("ok",)] == db.execute("PRAGMA integrity_check").fetchall()

    rerun = run_python(str(script), where, "through", cwd=tmp_path, env=env)
    assert 0 == rerun.returncode, rerun.stderr
    assert "{'order': 'crash', 'bulk': 300, 'wait': None}\n" == rerun.stdout
    assert ([("crash", 3)], 300) == crash_rows(where)


# --- the docs ---------------------------------------------------------------------------------


def test_every_example_of_the_local_doc_runs_as_saved(tmp_path: Path, postgres_url: str) -> None:
    """docs/local.md: each python block saved under the name in its first line, each console
    block's command run in that directory, printing what the block shows."""
    env = checkout_env(SHOP_DATABASE=postgres_url)
    ran = []
    blocks = re.findall(r"```(\w+)\n(.*?)```", (ROOT / "docs" / "local.md").read_text(), re.DOTALL)
    for language, text in blocks:
        if language == "python":
            first, _, code = text.partition("\n")
            (tmp_path / first.removeprefix("# ").strip()).write_text(code)
            continue
        assert "console" == language
        command, *expected = text.splitlines()
        assert command.startswith("$ python "), command
        done = run_python(*command.split()[2:], cwd=tmp_path, env=env)
        assert 0 == done.returncode, done.stderr
        assert expected == done.stdout.splitlines(), command
        ran.append(command)
    assert ["$ python checkout.py", "$ python transfer.py", "$ python shop.py"] == ran


def _anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the page's headings."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("doc", ["local.md", "patterns.md"])
def test_the_links_of_the_doc_lead_somewhere(doc: str) -> None:
    page = ROOT / "docs" / doc
    links = re.findall(r"\]\(([^)\s]+)\)", page.read_text())
    assert links
    broken = []
    for link in links:
        target, _, anchor = link.partition("#")
        linked = (page.parent / target).resolve() if target else page
        if not linked.exists() or (anchor and anchor not in _anchors(linked)):
            broken.append(link)
    assert [] == broken
