"""The shard marker that tells a restarted host which saga to blame for its predecessor's death."""

from __future__ import annotations

from pathlib import Path

import pytest

from understudy.supervisors.inflight import WIDTH, InFlight, ShardBusy


def reopen(marker: InFlight) -> InFlight:
    marker.close()
    return InFlight(marker.path)


def test_a_first_start_knows_nothing_and_blames_everyone(tmp_path: Path) -> None:
    """No marker file yet: every saga of the shard gets a recovery counted."""
    assert None is InFlight(str(tmp_path / "m")).blamed()


def test_a_death_while_handling_a_saga_blames_that_saga(tmp_path: Path) -> None:
    """The saga being handled when the process died is the one blamed."""
    marker = InFlight(str(tmp_path / "m"))
    marker.working_on("order-17")
    assert {"order-17"} == reopen(marker).blamed()


@pytest.mark.parametrize("state", ["idle", "committing"])
def test_a_death_between_inputs_blames_nobody(tmp_path: Path, state: str) -> None:
    """Died idle or while committing a batch: no saga is blamed."""
    marker = InFlight(str(tmp_path / "m"))
    marker.working_on("a-much-longer-saga-id-than-the-next-one")
    getattr(marker, state)()
    assert set() == reopen(marker).blamed()


def test_a_death_during_the_recovery_scan_blames_everyone(tmp_path: Path) -> None:
    """A scan that keeps dying counts against every saga, so the recovery cap bounds it."""
    marker = InFlight(str(tmp_path / "m"))
    marker.recovering()
    assert None is reopen(marker).blamed()


def test_every_record_has_the_same_width(tmp_path: Path) -> None:
    """Each state is one fixed-width write, so a kill cannot leave the tail of an older id."""
    marker = InFlight(str(tmp_path / "m"))
    marker.working_on("x" * 50)
    marker.working_on("y")
    marker.close()
    assert 2 * WIDTH == (tmp_path / "m").stat().st_size  # the state, the commit-death count
    assert {"y"} == InFlight(str(tmp_path / "m")).blamed()


def test_hosts_that_keep_dying_while_committing_blame_everyone(tmp_path: Path) -> None:
    """One death while committing blames nobody; a second in a row, with no commit succeeding
    in between, blames every saga of the shard so that the recovery cap ends the loop."""
    path = str(tmp_path / "m")
    InFlight(path).close()
    marker = InFlight(path)
    marker.committing()
    marker.close()  # died committing
    marker = InFlight(path)
    assert set() == marker.blamed()
    marker.committing()
    marker.close()  # died committing again
    marker = InFlight(path)
    assert marker.blamed() is None
    marker.committed()  # this one got a commit through
    marker.committing()
    marker.close()
    assert set() == InFlight(path).blamed()


def test_a_shard_held_by_a_live_host_is_refused(tmp_path: Path) -> None:
    """A second host on the same store and shard waits while the first holds the marker."""
    first = InFlight(str(tmp_path / "m"))
    with pytest.raises(ShardBusy):
        InFlight(str(tmp_path / "m"))
    first.close()
    InFlight(str(tmp_path / "m")).close()
