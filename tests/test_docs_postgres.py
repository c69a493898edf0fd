"""The example of docs/postgres.md runs as written, with its saga store in PostgreSQL."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "postgres.md"


def test_the_postgres_store_example_runs(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    postgres_url: str,
) -> None:
    """The transfer saga completes, and the one past the balance compensates."""
    (code,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("UNDERSTUDY_STORE", postgres_url)
    # Participant classes are loaded by import path, so the example runs as a real module.
    module = types.ModuleType("docs_postgres_store_example")
    monkeypatch.setitem(sys.modules, "docs_postgres_store_example", module)
    exec(compile(code, str(DOC), "exec"), module.__dict__)
    assert ["completed", "compensated"] == capsys.readouterr().out.split()
