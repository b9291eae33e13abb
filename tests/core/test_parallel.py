"""map_unordered: a worker that dies takes only its own task down, and the run never hangs."""

from __future__ import annotations

import os

from nnssl.parallel import CRASH_REASON, map_unordered


def _square_or_die(value: int) -> int:
    if value == 3:
        os._exit(1)  # what a segfault in a reader library looks like to the parent
    return value * value


def _crashed(value: int, reason: str) -> str:
    return f"crashed {value}: {reason}"


def test_a_dying_worker_loses_only_its_task() -> None:
    results = list(map_unordered(_square_or_die, list(range(7)), 2, _crashed))
    assert sorted(r for r in results if isinstance(r, int)) == [0, 1, 4, 16, 25, 36]
    assert [r for r in results if isinstance(r, str)] == [f"crashed 3: {CRASH_REASON}"]


def test_serial_path_gives_the_same_results() -> None:
    assert list(map_unordered(_square_or_die, [0, 1, 2], 1, _crashed)) == [0, 1, 4]
    assert sorted(map_unordered(_square_or_die, [0, 1, 2, 4], 2, _crashed)) == [0, 1, 4, 16]
