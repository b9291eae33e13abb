"""Subject-level split: reproducible, sized as upstream, written once, DDP-safe."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from nnssl.data.splits import SPLIT_FILE, compute_split, load_or_create_split
from nnssl.serialization import load_json


def _subjects(n: int) -> list[str]:
    return [f"Col__ds1__sub-{i:04d}" for i in range(n)]


def test_split_sizes_and_reproducibility() -> None:
    subjects = _subjects(40)
    split = compute_split(subjects, min_val=5, seed=12345)
    assert len(split["val"]) == 5 and len(split["train"]) == 35
    assert set(split["train"]).isdisjoint(split["val"])
    assert set(split["train"]) | set(split["val"]) == set(subjects)
    # order of the input does not matter, the seed does
    assert compute_split(list(reversed(subjects)), 5, 12345) == split
    assert compute_split(subjects, 5, 1)["val"] != split["val"]
    # 1% once above the minimum, capped at 1000
    assert len(compute_split(_subjects(1200), 5)["val"]) == 12
    assert len(compute_split(_subjects(150_000), 5)["val"]) == 1000


def test_small_subject_counts(caplog: pytest.LogCaptureFixture) -> None:
    split = compute_split(_subjects(3), min_val=5)
    assert len(split["val"]) == 2 and len(split["train"]) == 1
    with caplog.at_level(logging.WARNING):
        single = compute_split(_subjects(1), min_val=5)
    assert single["train"] == single["val"] == _subjects(1)
    assert "validation" in caplog.text
    with pytest.raises(ValueError, match="empty"):
        compute_split([])


def test_written_once_and_ranks_agree(tmp_path: Path) -> None:
    subjects = _subjects(30)
    # a non-zero rank without a barrier computes the same split in memory and writes nothing
    other = load_or_create_split(tmp_path, subjects, rank=1)
    assert not (tmp_path / SPLIT_FILE).exists()
    first = load_or_create_split(tmp_path, subjects, rank=0)
    assert first == other == load_json(tmp_path / SPLIT_FILE)
    mtime = (tmp_path / SPLIT_FILE).stat().st_mtime_ns
    # a later call (even with more subjects) reuses the stored file unchanged
    again = load_or_create_split(tmp_path, _subjects(60), rank=0)
    assert again == first and (tmp_path / SPLIT_FILE).stat().st_mtime_ns == mtime
    assert not [p for p in tmp_path.iterdir() if "nnssl_tmp" in p.name]


def test_barrier_is_called_between_write_and_read(tmp_path: Path) -> None:
    calls: list[bool] = []

    def barrier() -> None:
        calls.append((tmp_path / SPLIT_FILE).exists())

    load_or_create_split(tmp_path, _subjects(10), rank=0, barrier=barrier)
    assert calls == [True]
