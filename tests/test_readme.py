"""The README's examples run as written, saved as scripts."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)


def test_the_readme_example_runs_saved_as_a_script(tmp_path: Path) -> None:
    """As a user runs it: saved as example.py and run with python, its participants defined in
    the script itself (the in-process base, the default, takes them from ``__main__``)."""
    (tmp_path / "example.py").write_text(blocks()[0])
    done = subprocess.run(
        [sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "completed" == done.stdout.strip()


def test_the_readme_embedding_example_runs_beside_it(tmp_path: Path) -> None:
    """The second example, saved as embed.py beside example.py: understudy in the
    application's own in-process actor system, a saga started by the application's actor."""
    example, embed = blocks()
    (tmp_path / "example.py").write_text(example)
    (tmp_path / "embed.py").write_text(embed)
    done = subprocess.run(
        [sys.executable, "embed.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "order-18: completed" == done.stdout.strip()


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
