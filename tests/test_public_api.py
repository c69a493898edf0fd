"""The public surface: what ``import understudy`` offers is deliberate, importable and
documented."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import understudy
from understudy import Understudy

ROOT = Path(__file__).resolve().parent.parent

#: Every name ``understudy`` exports. A change here is a change of the public API: document it
#: (README.md or docs/) and say so in the changelog of the release.
PUBLIC = [
    "COMPENSATED",
    "COMPLETED",
    "FAILED",
    "IN_PROCESS",
    "MULTIPROC_TCP",
    "MULTIPROC_UDP",
    "ActorSystemError",
    "Chain",
    "ChainNotFound",
    "CommandRecord",
    "CompletionRefused",
    "Coordinator",
    "CoordinatorGone",
    "CoordinatorReady",
    "CoordinatorTimeout",
    "CorruptRecord",
    "Debt",
    "DefinitionError",
    "EventContext",
    "HostsInfo",
    "Irreversible",
    "Later",
    "LeaseLost",
    "LedgerError",
    "Local",
    "LocalStepFailed",
    "Operator",
    "Participant",
    "ParticipantReady",
    "PayloadError",
    "QueryStatus",
    "Reactor",
    "RegisterParticipant",
    "Reject",
    "RestartPolicy",
    "RetryPolicy",
    "SagaAccepted",
    "SagaDefinition",
    "SagaEvent",
    "SagaFinished",
    "SagaNotFound",
    "SagaRecord",
    "SagaRejected",
    "SagaStatus",
    "ShardCountMismatch",
    "StartCoordinator",
    "StartRejected",
    "StartSaga",
    "Step",
    "StepContext",
    "StoreError",
    "StoreInUse",
    "StoreUnavailable",
    "Subscribe",
    "Subscribed",
    "Subscription",
    "Understudy",
    "UnderstudyError",
    "UnknownDefinition",
    "UnknownParticipant",
    "Unsubscribe",
    "VerbRefused",
    "WorkflowDefinition",
    "action",
    "compensation",
    "complete",
    "fail",
    "reacts",
    "reject",
]

#: What a runtime offers (methods and attributes): each is in docs/embedding.md's table.
RUNTIME = [
    "add_participant",
    "address",
    "base",
    "chain",
    "hosts",
    "operator",
    "private",
    "publish",
    "record",
    "resumed",
    "run",
    "run_async",
    "shutdown",
    "start",
    "status",
    "status_async",
    "submit",
    "subscribe",
    "subscribe_async",
    "submit_async",
    "submit_future",
    "wait",
]


def _docs() -> str:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return "\n".join(page.read_text() for page in pages)


def test_the_public_names_are_pinned() -> None:
    assert PUBLIC == understudy.__all__


def test_every_public_name_is_documented() -> None:
    docs = _docs()
    assert [] == [name for name in PUBLIC if not re.search(rf"\b{name}\b", docs)]


def test_the_runtime_offers_what_its_docs_list_and_no_more() -> None:
    """Public methods are pinned (the runtime's actor system handle is not among them: used
    from another thread than the bridge's it lost replies; ``private()`` replaces it)."""
    offered = sorted(name for name in dir(Understudy) if not name.startswith("_"))
    assert sorted(set(RUNTIME) - {"address", "base", "resumed"}) == offered  # set by start
    table = (ROOT / "docs" / "embedding.md").read_text()
    assert [] == [name for name in RUNTIME if f"us.{name}" not in table and name != "start"]


def test_every_name_in_all_exists_once() -> None:
    """``__all__`` has no duplicates and names only real attributes (ruff keeps it sorted)."""
    assert len(set(understudy.__all__)) == len(understudy.__all__)
    assert [] == [name for name in understudy.__all__ if not hasattr(understudy, name)]


def test_every_error_derives_from_the_one_base() -> None:
    """Every exported exception class is an UnderstudyError."""
    errors = [
        getattr(understudy, name)
        for name in understudy.__all__
        if isinstance(getattr(understudy, name), type)
        and issubclass(getattr(understudy, name), Exception)
        and name != "Reject"
    ]
    assert errors
    assert [] == [e for e in errors if not issubclass(e, understudy.UnderstudyError)]
    assert issubclass(understudy.CoordinatorTimeout, TimeoutError)


HANDLERS = """
from typing import Any

from understudy import Participant, StepContext, action, compensation


class Shop(Participant):
    @action("buy")
    def buy(self, step: StepContext, db: Any) -> dict[str, int]:
        return {"bought": 1}

    @compensation("return")
    def give_back(self, step: StepContext, db: Any) -> None:
        return None
"""


def test_a_type_checker_checks_handler_signatures(tmp_path: Path) -> None:
    """A handler takes the request's context and the connection: mypy accepts that shape and
    refuses a method of another (here one that forgot ``db``)."""
    (tmp_path / "good.py").write_text(HANDLERS)
    (tmp_path / "bad.py").write_text(HANDLERS.replace(", db: Any) -> None", ") -> None"))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--ignore-missing-imports",  # thespian and msgpack ship no type information
            "--cache-dir",
            str(tmp_path / "cache"),
            "good.py",
            "bad.py",
        ],
        cwd=tmp_path,
        env={**os.environ, "MYPYPATH": str(ROOT)},  # the checkout, installed or not
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert errors, done.stdout
    decorator = HANDLERS.splitlines().index('    @compensation("return")') + 1
    assert [f"bad.py:{decorator}"] == [line.split(": error:")[0] for line in errors], done.stdout
