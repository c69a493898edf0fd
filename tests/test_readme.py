"""The README's example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The saga example completes and prints its status, in a fresh directory."""
    (code,) = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    monkeypatch.chdir(tmp_path)
    # Participant classes are loaded by import path, so the example runs as a real module.
    module = types.ModuleType("readme_example")
    monkeypatch.setitem(sys.modules, "readme_example", module)
    exec(compile(code, str(README), "exec"), module.__dict__)
    assert "completed" == capsys.readouterr().out.strip()


def test_the_readme_example_runs_saved_as_a_script(tmp_path: Path) -> None:
    """As a user runs it: saved as example.py and run with python, its participants defined in
    the script itself (the in-process base, the default, takes them from ``__main__``)."""
    (code,) = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    (tmp_path / "example.py").write_text(code)
    done = subprocess.run(
        [sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "completed" == done.stdout.strip()


def test_a_script_class_on_a_multi_process_base_is_refused_with_the_fix(tmp_path: Path) -> None:
    """A multi-process base imports participants by name in other processes: a class of the
    script is refused before anything starts (the store's shards included), and the error
    says where to move it."""
    script = tmp_path / "script.py"
    script.write_text(
        "from understudy import Participant, SagaDefinition, Step, Understudy, action, "
        "compensation\n"
        "from understudy.errors import ActorSystemError\n"
        "class Shop(Participant):\n"
        "    @action('buy')\n"
        "    def buy(self, step, db):\n"
        "        return None\n"
        "    @compensation('return')\n"
        "    def give_back(self, step, db):\n"
        "        return None\n"
        "D = SagaDefinition('d', 1, [Step('s', 'shop', 'buy', 'return')])\n"
        "try:\n"
        "    Understudy.start('sagas.db', [D], [('shop', Shop, {'database': 'shop.db'})],\n"
        "                     base='multiprocTCPBase')\n"
        "except ActorSystemError as exc:\n"
        "    print(exc)\n"
        "with Understudy.start('sagas.db', [D], [('shop', Shop, {'database': 'shop.db'})]) as us:\n"
        "    print(us.run('s-1', 'd', {}).status)\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "Shop is defined in the script being run" in done.stdout
    assert "Move it into a module" in done.stdout
    # Nothing was taken by the refused start: the store is free for the next one, at once.
    assert done.stdout.strip().endswith("completed")
