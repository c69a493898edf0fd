"""``understudy complete``: a step left waiting by its participant is finished from a shell,
by its handle, with a result, a refusal carrying data, or a failure; a second, different
completion is refused with status 1."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from test_deferred import definition, handle_of, participants

from understudy import Understudy
from understudy.cli import main

Start = Callable[..., Understudy]


def test_a_waiting_step_is_finished_from_the_command_line(
    start: Start, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    us = start([definition()], participants(tmp_path))
    db = str(tmp_path / "approvals.db")
    ok = us.submit_future("c-1", "approval", {})
    no = us.submit_future("c-2", "approval", {})
    assert 0 == main(["complete", db, handle_of(db, "c-1"), "--result", '{"by": "ops"}'])
    assert "recorded" in capsys.readouterr().out
    handle = handle_of(db, "c-2")
    assert 0 == main(["complete", db, handle, "--reject", "no budget", "--data", '{"code": 7}'])
    assert ok.result(60).results["approve"] == {"by": "ops"}
    refused = no.result(60)
    assert refused.status == "compensated"
    assert refused.failure == {"step": "approve", "reason": "no budget", "data": {"code": 7}}
    capsys.readouterr()
    # The same refusal again changes nothing; another outcome is refused, saying why.
    assert 0 == main(["complete", db, handle, "--reject", "no budget", "--data", '{"code": 7}'])
    assert 1 == main(["complete", db, handle, "--result", "1"])
    assert "rejected" in capsys.readouterr().err


def test_bad_input_is_a_usage_error_or_a_clear_refusal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "nothing.db")
    assert 2 == main(["complete", db, "ud1.x.y", "--result", "{not json"])
    assert "not JSON" in capsys.readouterr().err
    assert 2 == main(["complete", db, "ud1.x.y", "--data", "{}"])
    assert "--data goes with --reject" in capsys.readouterr().err
    assert 1 == main(["complete", db, "ud1.x.y"])
    assert "error" in capsys.readouterr().err
    assert not Path(db).exists()  # never created
