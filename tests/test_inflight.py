"""The shard marker that tells a restarted host which saga to blame for its predecessor's death,
and how it combines with the batch the store blames."""

from __future__ import annotations

from pathlib import Path

from understudy.persistence.base import EVERYONE
from understudy.supervisors.inflight import WIDTH, InFlight
from understudy.supervisors.recovery import blamed_on


def successor(marker: InFlight) -> InFlight:
    """The next holder of the shard on this machine (the next lease epoch)."""
    marker.close()
    return InFlight(marker.path, marker.epoch + 1)


def test_a_first_start_here_knows_nothing_of_its_own(tmp_path: Path) -> None:
    """No marker file yet: the file blames nobody, and the store's blame decides."""
    assert set() == InFlight(str(tmp_path / "m"), 1).blamed()


def test_a_death_while_handling_a_saga_blames_that_saga(tmp_path: Path) -> None:
    """The saga being handled when the process died is the one blamed."""
    marker = InFlight(str(tmp_path / "m"), 1)
    marker.working_on("order-17")
    assert {"order-17"} == successor(marker).blamed()


def test_a_death_between_inputs_blames_nobody(tmp_path: Path) -> None:
    """Died idle: no saga is blamed by the file."""
    marker = InFlight(str(tmp_path / "m"), 1)
    marker.working_on("a-much-longer-saga-id-than-the-next-one")
    marker.idle()
    assert set() == successor(marker).blamed()


def test_a_death_during_the_recovery_scan_blames_everyone(tmp_path: Path) -> None:
    """A scan that keeps dying counts against every saga, so the recovery cap bounds it."""
    marker = InFlight(str(tmp_path / "m"), 1)
    marker.recovering()
    assert None is successor(marker).blamed()


def test_a_record_of_another_epoch_is_not_believed(tmp_path: Path) -> None:
    """A record written by a holder other than the direct predecessor (another machine held the
    shard in between) says nothing about the predecessor's death."""
    marker = InFlight(str(tmp_path / "m"), 1)
    marker.working_on("order-17")
    marker.close()
    assert set() == InFlight(str(tmp_path / "m"), 3).blamed()


def test_every_record_has_the_same_width(tmp_path: Path) -> None:
    """Each state is one fixed-width write, so a kill cannot leave the tail of an older id."""
    marker = InFlight(str(tmp_path / "m"), 1)
    marker.working_on("x" * 50)
    marker.working_on("y")
    assert WIDTH == (tmp_path / "m").stat().st_size
    assert {"y"} == successor(marker).blamed()


def test_blame_is_the_stored_batch_plus_the_input_the_file_names() -> None:
    """A death while committing blames the batch the store names, and the file's input too."""
    assert {"a", "b", "c"} == blamed_on(("a", "b"), {"c"})


def test_blame_is_everyone_when_either_source_knows_nothing_narrower() -> None:
    """The store's EVERYONE (a death while recovering, or a store from before blame was kept)
    and the file's recovery record each blame every saga of the shard."""
    assert None is blamed_on(EVERYONE, {"c"})
    assert None is blamed_on(("a",), None)


def test_a_clean_stop_and_an_idle_file_blame_nobody() -> None:
    """Released cleanly (or died between batches and inputs): nobody is blamed."""
    assert set() == blamed_on((), set())
