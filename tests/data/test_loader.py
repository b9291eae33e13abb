"""Training/validation loaders: reproducible per (seed, rank, epoch), independent of worker count."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from nnssl.config import DataConfig, RunConfig, TrainConfig
from nnssl.data.case_store import write_case
from nnssl.data.loader import build_train_loader, build_val_loader, per_rank_batch_size


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("cases")
    rng = np.random.default_rng(0)
    paths = []
    for i, shape in enumerate([(24, 28, 20), (30, 22, 26), (20, 20, 20)]):
        data = rng.standard_normal((1, *shape)).astype(np.float32)
        anatomy = (rng.random((1, *shape)) > 0.5).astype(np.int8)
        write_case(root / f"case{i}", data, {"unique_id": f"u{i}"}, {"anatomy": anatomy})
        paths.append(root / f"case{i}.b2nd")
    return paths


def _cfg(num_workers: int, batch: int = 2) -> RunConfig:
    return RunConfig(
        preset="test",
        method="MAE",
        architecture="ResEncTiny",
        train=TrainConfig(batch_size=batch, patch_size=(16, 16, 16), val_iterations=3, seed=3),
        data=DataConfig(num_workers=num_workers, rotation_p=0.5, scale_p=0.5, anatomy_crop_p=0.5),
    )


def _take(iterator, n: int = 3) -> list[dict]:
    return list(itertools.islice(iterator, n))


def _same(a: list[dict], b: list[dict]) -> bool:
    return all(torch.equal(x["image"], y["image"]) and x["unique_id"] == y["unique_id"] for x, y in zip(a, b))


def test_train_batches_are_reproducible_and_rank_specific(cases: list[Path]) -> None:
    loader0 = build_train_loader(cases, _cfg(0), None, masks=("anatomy_mask",))
    first = _take(loader0.make_iter(4))
    assert first[0]["image"].shape == (2, 1, 16, 16, 16) and first[0]["image"].dtype == torch.float32
    assert first[0]["anatomy_mask"].dtype == torch.int8
    assert _same(first, _take(loader0.make_iter(4)))  # same epoch again
    assert not _same(first, _take(loader0.make_iter(5)))  # next epoch differs
    workers = build_train_loader(cases, _cfg(2), None, masks=("anatomy_mask",))
    assert _same(first, _take(workers.make_iter(4)))  # worker count does not matter
    assert _same(_take(loader0.make_iter(6)), _take(workers.make_iter(6)))  # persistent workers see new epochs
    other_rank = build_train_loader(cases, _cfg(0), None, rank=1, world_size=2)
    assert not _same(_take(loader0.make_iter(4)), _take(other_rank.make_iter(4)))


def test_transform_randomness_is_seeded_and_isolated(cases: list[Path]) -> None:
    def noisy(sample: dict) -> dict:
        sample["noise"] = np.float32(np.random.rand() + random.random() + torch.rand(1).item())
        return sample

    loader = build_train_loader(cases, _cfg(0), noisy)
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    a = _take(loader.make_iter(1), 2)
    assert torch.equal(torch.rand(1), before)  # the caller's torch stream is untouched
    b = _take(loader.make_iter(1), 2)
    assert all(torch.equal(x["noise"], y["noise"]) for x, y in zip(a, b))
    assert not torch.equal(a[0]["noise"], a[1]["noise"])


def test_val_batches_are_fixed_and_finite(cases: list[Path]) -> None:
    make = build_val_loader(cases, _cfg(0), None)
    a, b = list(make()), list(make())
    assert len(a) == 3 and _same(a, b)
    assert [x["unique_id"] for x in a] == [["u0", "u1"], ["u2", "u0"], ["u1", "u2"]]


def test_per_rank_batch_size() -> None:
    assert [per_rank_batch_size(8, r, 3) for r in range(3)] == [3, 3, 2]
    assert [per_rank_batch_size(5, r, 4) for r in range(4)] == [2, 1, 1, 1]
    assert per_rank_batch_size(2, 0, 1) == 2
    with pytest.raises(ValueError, match="batch_size"):
        per_rank_batch_size(1, 0, 2)
