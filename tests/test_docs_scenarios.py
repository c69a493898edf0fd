"""The scenario commands docs/testing.md lists (the demo's order as a workflow, with a child
saga, as choreography, with a step finished later) run as written, for one small run each."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from understudy.cli import main

DOC = Path(__file__).resolve().parent.parent / "docs" / "testing.md"


def commands() -> list[list[str]]:
    found = re.findall(r"^understudy (chaos --scenario \S+)", DOC.read_text(), re.MULTILINE)
    return [shlex.split(line) for line in found]


def test_the_page_lists_every_style() -> None:
    assert [c[2] for c in commands()] == [
        "demo.chaos:workflow",
        "demo.chaos:child",
        "demo.chaos:choreography",
        "demo.chaos_deferred:scenario",
    ]


@pytest.mark.parametrize("argv", commands(), ids=lambda argv: argv[2])
def test_each_scenario_command_runs_and_finds_no_violation(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = ["--runs", "1", "--sagas", "6", "--base", "simpleSystemBase", "--dir", str(tmp_path)]
    assert 0 == main([*argv, *small]), capsys.readouterr().out
    assert "invariant violations: 0" in capsys.readouterr().out
