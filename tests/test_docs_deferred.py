"""The examples of docs/deferred.md run as written: an approval finished from outside, and a
step nobody completes, whose late completion is refused."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "deferred.md"


def examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)


def run_example(code: str, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Participant classes are loaded by import path, so each example runs as a real module.
    module = types.ModuleType(name)
    monkeypatch.setitem(sys.modules, name, module)
    exec(compile(code, str(DOC), "exec"), module.__dict__)


def test_the_doc_has_two_examples() -> None:
    assert 2 == len(examples())


def test_the_approval_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    run_example(examples()[0], "docs_deferred_approval", monkeypatch)
    assert [
        "completed",
        "compensated",
        "completed compensated",
        "{'approved_by': 'alice'}",
    ] == capsys.readouterr().out.strip().splitlines()


def test_the_cancelled_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    run_example(examples()[1], "docs_deferred_cancelled", monkeypatch)
    assert ["forget: cancelled", "compensated", "cancelled"] == (
        capsys.readouterr().out.strip().splitlines()
    )
