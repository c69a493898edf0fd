"""docs/events.md runs as written: its files saved as shown, each script run with ``python``
in an empty directory, printing what the doc shows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "events.md"


def blocks() -> list[tuple[str, str]]:
    return re.findall(r"```(\w+)\n(.*?)```", DOC.read_text(), re.DOTALL)


def test_the_events_doc_runs_as_written(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    ran = []
    for language, text in blocks():
        if language == "python":
            first, _, code = text.partition("\n")
            (tmp_path / first.removeprefix("# ").strip()).write_text(code)
            continue
        lines = text.splitlines()
        assert lines[0].startswith("$ python "), lines[0]
        done = subprocess.run(
            [sys.executable, *lines[0].split()[2:]],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == lines[1:], lines[0]
        ran.append((lines[0], done.stderr))
    assert [command for command, _ in ran] == [
        "$ python watch.py",
        "$ python watch_async.py",
        "$ python app_actor.py",
        "$ python logs.py",
        "$ python tracing.py",
    ]
    assert "understudy.saga INFO saga order-10 completed" in dict(ran)["$ python logs.py"]
