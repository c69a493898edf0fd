"""Long crash soaks, left out of the default run (``python -m pytest -m soak`` runs them)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_demo import ROOT, assert_all_checks_passed


@pytest.mark.soak
@pytest.mark.multiproc
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_demo_soak_with_many_host_kills(tmp_path: Path, seed: int) -> None:
    """3,000 orders with 12 saga host SIGKILLs spread over the run: every ledger check passes."""
    log = tmp_path / "demo.log"
    with log.open("w") as out:
        completed = subprocess.run(
            [
                sys.executable,
                "-m",
                "demo",
                "--dir",
                str(tmp_path / "data"),
                "--orders",
                "3000",
                "--kills",
                "12",
                "--seed",
                str(seed),
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=900,
            check=False,
        )
    output = log.read_text()
    assert 0 == completed.returncode, output
    assert_all_checks_passed(output)
    assert re.search(r"host kills: 12 \| host restarts observed: (1[2-9]|[2-9]\d)", output), output
