"""The public surface: what ``import understudy`` offers is deliberate and importable."""

from __future__ import annotations

import understudy


def test_every_name_in_all_exists_once() -> None:
    """``__all__`` has no duplicates and names only real attributes (ruff keeps it sorted)."""
    assert len(set(understudy.__all__)) == len(understudy.__all__)
    assert [] == [name for name in understudy.__all__ if not hasattr(understudy, name)]


def test_every_error_derives_from_the_one_base() -> None:
    """Every exported exception class is an UnderstudyError."""
    errors = [
        getattr(understudy, name)
        for name in understudy.__all__
        if isinstance(getattr(understudy, name), type)
        and issubclass(getattr(understudy, name), Exception)
        and name != "Reject"
    ]
    assert errors
    assert [] == [e for e in errors if not issubclass(e, understudy.UnderstudyError)]
    assert issubclass(understudy.CoordinatorTimeout, TimeoutError)
