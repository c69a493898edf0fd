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
    assert {"shop.py", "run_in_process.py", "run_tcp.py"} == set(files())


@pytest.mark.parametrize("script", ["run_in_process.py", "run_tcp.py"])
def test_the_example_runs_as_saved(tmp_path: Path, script: str) -> None:
    for name, code in files().items():
        (tmp_path / name).write_text(code)
    env = dict(os.environ, SHOP_ADMIN_PORT=str(free_port()))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    # Generous: a multi-process start forks an admin and five actors on a busy machine.
    done = subprocess.run(
        [sys.executable, script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert 0 == done.returncode, done.stderr
    assert EXPECTED == done.stdout.splitlines(), done.stderr
