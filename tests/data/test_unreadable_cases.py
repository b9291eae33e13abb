"""Damaged stored cases (issue 8, item 9): errors name the case, training skips it (bounded), verification finds it."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
import pytest

from nnssl.config import DataConfig, RunConfig, TrainConfig
from nnssl.data.case_store import CaseReadError, data_path, open_case, verify_case, write_case
from nnssl.data.loader import UnreadableCasesError, build_train_loader, build_val_loader
from nnssl.data.sampling import PatchSampler


def damage(path: Path, start: float = 0.9, stop: float = 0.97) -> None:
    """Overwrite bytes [start, stop) of a file (as fractions of its size) with 0xFF.

    On 40^3 cases this makes every read of the whole volume fail (measured for several seeds); damage elsewhere
    may decode silently into wrong values, which only the checksum of :func:`verify_case` catches (last test).
    The tests therefore read whole volumes (patch 40^3).
    """
    data = bytearray(path.read_bytes())
    a, b = int(len(data) * start), int(len(data) * stop)
    data[a:b] = b"\xff" * (b - a)
    path.write_bytes(bytes(data))


def _cases(root: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        data = rng.standard_normal((1, 40, 40, 40)).astype(np.float32)
        write_case(root / f"case{i}", data, {"unique_id": f"u{i}"})
        paths.append(root / f"case{i}.b2nd")
    return paths


def _cfg(fraction: float, num_workers: int = 0) -> RunConfig:
    return RunConfig(
        preset="test",
        method="MAE",
        architecture="ResEncTiny",
        train=TrainConfig(batch_size=4, patch_size=(40, 40, 40), val_iterations=2, seed=1),
        data=DataConfig(num_workers=num_workers, max_unreadable_fraction=fraction),
    )


def test_a_damaged_case_raises_an_error_naming_its_unique_id_and_file(tmp_path: Path) -> None:
    (path,) = _cases(tmp_path, 1)
    damage(path)
    sampler = PatchSampler([path], (40, 40, 40), DataConfig(rotation_p=0, scale_p=0), unique_ids=["sub-1_T1w"])
    with pytest.raises(CaseReadError, match=r"case sub-1_T1w \(.*case0\.b2nd\):? cannot be") as info:
        sampler.sample(0, np.random.default_rng(0))
    assert info.value.unique_id == "sub-1_T1w" and info.value.path.endswith("case0.b2nd")
    assert "nnssl_verify_dataset" in str(info.value)


def test_a_case_whose_file_cannot_be_opened_names_it_too(tmp_path: Path) -> None:
    (path,) = _cases(tmp_path, 1)
    path.write_bytes(path.read_bytes()[:100])  # truncated: blosc2 cannot read the frame
    with pytest.raises(CaseReadError, match=r"case u0 \(.*case0\.b2nd\): cannot open case0\.b2nd"):
        open_case(path)
    sampler = PatchSampler([path], (16, 16, 16), DataConfig(), unique_ids=["u0"])
    with pytest.raises(CaseReadError, match="case u0"):
        sampler.sample(0, np.random.default_rng(0))


def test_training_skips_a_damaged_case_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    paths = _cases(tmp_path, 6)
    clean = build_train_loader(paths, _cfg(0.5), None)
    reference = list(itertools.islice(clean.make_iter(0), 6))
    drawn = [uid for batch in reference for uid in batch["unique_id"]]
    assert "u2" in drawn, "the test needs the damaged case among the draws"
    damage(paths[2])
    loader = build_train_loader(paths, _cfg(0.5), None)
    with caplog.at_level(logging.WARNING, logger="nnssl.data.loader"):
        batches = list(itertools.islice(loader.make_iter(0), 6))
    assert all("u2" not in batch["unique_id"] for batch in batches)
    assert sum("case u2" in r.getMessage() and "case2.b2nd" in r.getMessage() for r in caplog.records) == 1
    # samples that did not draw the damaged case are unchanged (same keys, same crops)
    for before, after in zip(reference, batches):
        for j, uid in enumerate(before["unique_id"]):
            if uid != "u2":
                assert after["unique_id"][j] == uid
                np.testing.assert_array_equal(after["image"][j].numpy(), before["image"][j].numpy())
    val = build_val_loader(paths, _cfg(0.5), None)
    assert all("u2" not in batch["unique_id"] for batch in val())


def test_training_stops_when_more_than_the_allowed_fraction_is_damaged(tmp_path: Path) -> None:
    paths = _cases(tmp_path, 6)
    for path in paths[:2]:
        damage(path)
    loader = build_train_loader(paths, _cfg(0.2), None)  # 2 of 6 = 33% > 20%
    with pytest.raises(UnreadableCasesError, match=r"2 of 6 cases could not be read .*max_unreadable_fraction=0\.2"):
        list(itertools.islice(loader.make_iter(0), 20))
    tolerant = build_train_loader(paths, _cfg(0.4), None)
    assert len(list(itertools.islice(tolerant.make_iter(0), 5))) == 5


def test_worker_processes_report_the_bound_too(tmp_path: Path) -> None:
    paths = _cases(tmp_path, 3)
    damage(paths[0])
    damage(paths[1])
    loader = build_train_loader(paths, _cfg(0.1, num_workers=1), None)
    with pytest.raises(UnreadableCasesError, match="could not be read"):
        list(itertools.islice(loader.make_iter(0), 4))


def test_verify_case_finds_silent_corruption_through_the_checksum(tmp_path: Path) -> None:
    (path,) = _cases(tmp_path, 1)
    stem = tmp_path / "case0"
    assert verify_case(stem) == []
    data = bytearray(data_path(stem).read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    data_path(stem).write_bytes(bytes(data))
    problems = verify_case(stem)
    assert len(problems) == 1 and "checksum" in problems[0]
