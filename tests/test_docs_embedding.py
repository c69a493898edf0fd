"""The example of docs/embedding.md runs as a user would run it: its files saved as they are
shown, each script run with ``python``, on the in-process base and on multiprocTCPBase."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from understudy.actors.system import free_port

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "embedding.md"
EXPECTED = ["order-0: completed", "order-1: compensated", "order-2: completed", "open"]


def files() -> dict[str, str]:
    """The doc's files: each python block preceded by ``<!-- file: NAME -->``."""
    found = re.findall(r"<!-- file: (\S+) -->\n```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    return dict(found)


def test_the_doc_shows_the_module_and_both_scripts() -> None:
    assert {"shop.py", "run_in_process.py", "run_tcp.py", "orders.py", "run_orders.py"} == set(
        files()
    )


def run(tmp_path: Path, *command: str) -> list[str]:
    """Save the doc's files in ``tmp_path`` and run ``python *command`` there."""
    for name, code in files().items():
        (tmp_path / name).write_text(code)
    env = dict(os.environ, SHOP_ADMIN_PORT=str(free_port()))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    # Generous: a multi-process start forks an admin and five actors on a busy machine.
    done = subprocess.run(
        [sys.executable, *command],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert 0 == done.returncode, done.stderr
    return done.stdout.splitlines()


@pytest.mark.parametrize("script", ["run_in_process.py", "run_tcp.py"])
def test_the_example_runs_as_saved(tmp_path: Path, script: str) -> None:
    assert EXPECTED == run(tmp_path, script)


@pytest.mark.parametrize("base", ["simpleSystemBase", "multiprocTCPBase"])
def test_the_actor_that_runs_the_coordinator_as_its_child_runs_as_saved(
    tmp_path: Path, base: str
) -> None:
    """Which order gets the stock is up to the saga hosts (two run side by side on
    multiprocTCPBase): one completes, the other is compensated."""
    lines = run(tmp_path, "run_orders.py", base)
    assert ["order-a", "order-b"] == sorted(line.split(":")[0] for line in lines)
    assert ["compensated", "completed"] == sorted(line.split(": ")[1] for line in lines)
    # The coordinator let go of the store when it stopped: another start takes it at once.
    assert 2 == len(run(tmp_path, "run_orders.py", base))
