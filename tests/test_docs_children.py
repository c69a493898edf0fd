"""docs/children.md's example runs as a user runs it, saved as a script, and prints what the
page says it prints."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "children.md"


def test_the_example_prints_what_the_page_shows(tmp_path: Path) -> None:
    text = DOC.read_text()
    (example,) = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    shown = re.search(r"It prints:\n\n```\n(.*?)```", text, re.DOTALL)
    assert shown is not None
    script = tmp_path / "children.py"
    script.write_text(example)
    run = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == shown.group(1)
