"""The examples of docs/participants.md run as written: a participant on PostgreSQL, and one
whose effect is an external API."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "participants.md"


def examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)


def run_example(code: str, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Participant classes are loaded by import path, so each example runs as a real module.
    module = types.ModuleType(name)
    monkeypatch.setitem(sys.modules, name, module)
    exec(compile(code, str(DOC), "exec"), module.__dict__)


def test_the_doc_has_two_examples() -> None:
    assert 2 == len(examples())


def test_the_postgres_example_runs(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    postgres_url: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("INVENTORY_DATABASE", postgres_url)
    run_example(examples()[0], "docs_postgres_example", monkeypatch)
    assert ["completed", "compensated"] == capsys.readouterr().out.split()


def test_the_external_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    run_example(examples()[1], "docs_external_example", monkeypatch)
    assert ["completed compensated", "1 0"] == capsys.readouterr().out.strip().splitlines()
