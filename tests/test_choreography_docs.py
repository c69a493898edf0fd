"""The example of docs/choreography.md runs as written: saved as a script and run, it prints
what the page says, and ``understudy show`` tells its compensated chain as the page shows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from understudy.cli import main

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "choreography.md"


def blocks(language: str = "") -> list[str]:
    """The page's fenced blocks of ``language`` ("": the plain ones), in order."""
    found = re.findall(r"^```(\w*)\n(.*?)^```$", DOC.read_text(), re.DOTALL | re.MULTILINE)
    return [body for lang, body in found if lang == language]


def test_the_example_runs_as_a_script_and_prints_what_the_page_says(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    [example] = blocks("python")
    (tmp_path / "shop.py").write_text(example)
    done = subprocess.run(
        [sys.executable, "shop.py"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert 0 == done.returncode, done.stderr
    printed = blocks()[0]  # the first plain block: what `python shop.py` prints
    assert printed == done.stdout
    assert 0 == main(["show", str(tmp_path / "sagas.db"), "order-2"])
    shown = capsys.readouterr().out.splitlines()
    page = blocks()[1].splitlines()
    # the same lines but for times and ids, which differ from run to run
    assert [_shape(line) for line in page] == [_shape(line) for line in shown]


def _shape(line: str) -> str:
    line = re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+\+00:00", "TIME", line)
    line = re.sub(r"\+[\d.]+ ms", "+MS", line)
    line = re.sub(r"\b[0-9a-f]{12}\b", "ID", line)
    return " ".join(line.split())
