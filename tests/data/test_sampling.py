"""Crop-first sampler: reads exactly the patch unless a sample is rotated/scaled; anatomy-guided centres."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nnssl.config import DataConfig
from nnssl.data.sampling import PatchSampler, crop_bounds
from nnssl.transforms.spatial import SpatialParams, read_region, resample_patch, source_region

PATCH = (16, 16, 16)


class SpyArray:
    """A (C, X, Y, Z) numpy array that records every slicing call."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.reads: list[tuple[slice, ...]] = []

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def __getitem__(self, key: Any) -> np.ndarray:
        self.reads.append(key)
        return self.array[key]


@dataclass
class FakeCase:
    data: SpyArray
    masks: dict[str, SpyArray] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)


def _read_shape(key: tuple[slice, ...]) -> tuple[int, ...]:
    return tuple(s.stop - s.start for s in key[1:])


def _sampler(case: FakeCase, cfg: DataConfig, augment: bool = True, masks=("anatomy_mask",)) -> PatchSampler:
    return PatchSampler(["c0"], PATCH, cfg, augment=augment, open_fn=lambda _: case, masks=masks)


def _case(shape=(40, 36, 44), anatomy: np.ndarray | None = None) -> FakeCase:
    rng = np.random.default_rng(0)
    data = SpyArray(rng.standard_normal((1, *shape)).astype(np.float32))
    masks = {} if anatomy is None else {"anatomy": SpyArray(anatomy)}
    return FakeCase(data, masks, {"unique_id": "case0"})


def test_plain_samples_read_exactly_the_patch() -> None:
    case = _case()
    cfg = DataConfig(rotation_p=0.0, scale_p=0.0, mirror_axes=())
    sampler = _sampler(case, cfg)
    rng = np.random.default_rng(1)
    for _ in range(20):
        out = sampler.sample(0, rng)
        key = case.data.reads[-1]
        assert _read_shape(key) == PATCH
        start = tuple(s.start for s in key[1:])
        expected = case.data.array[:, start[0] : start[0] + 16, start[1] : start[1] + 16, start[2] : start[2] + 16]
        np.testing.assert_array_equal(out["image"], expected)
        assert out["image"].dtype == np.float32 and out["unique_id"] == "case0"
    assert len(case.data.reads) == 20


def test_rotated_or_scaled_samples_read_an_enlarged_region_and_return_the_patch() -> None:
    case = _case(shape=(64, 64, 64))
    cfg = DataConfig(rotation_p=0.5, scale_p=0.5, mirror_axes=(0, 1, 2))
    sampler = _sampler(case, cfg)
    rng = np.random.default_rng(3)
    seen_plain = seen_aug = 0
    for _ in range(40):
        state = rng.bit_generator.state
        drawn = sampler.draw_params(rng)
        corner = sampler.draw_corner(0, (64, 64, 64), rng)
        rng.bit_generator.state = state
        out = sampler.sample(0, rng)
        assert out["image"].shape == (1, *PATCH)
        key = case.data.reads[-1]
        lo, hi = source_region(corner + 7.5, PATCH, drawn)
        assert [(s.start, s.stop) for s in key[1:]] == [(max(0, a), min(64, b)) for a, b in zip(lo, hi)]
        read = _read_shape(key)
        if drawn.is_identity_map:
            seen_plain += 1
            assert read == PATCH
        else:
            seen_aug += 1
            if drawn.scale is None or drawn.scale >= 1:
                assert all(b - a > p for a, b, p in zip(lo, hi, PATCH))
            assert max(b - a for a, b in zip(lo, hi)) <= 48  # 1.4 * sqrt(3) * 15 + margins: no fixed worst case
    assert seen_plain >= 3 and seen_aug >= 3


def test_source_region_covers_the_rotated_patch_exactly() -> None:
    centre = np.array([50.0, 50.0, 50.0])
    assert source_region(centre - 7.5, PATCH, SpatialParams()) == ((35, 35, 35), (51, 51, 51))
    # 90 degrees about axis 0 swaps axes 1 and 2: a cube stays a cube of the same size (+ spline margin)
    lo, hi = source_region(centre, PATCH, SpatialParams(angles=(np.pi / 2, 0.0, 0.0)))
    assert [b - a for a, b in zip(lo, hi)] == [16 + 1 + 4] * 3
    # scale 2 doubles the extent of the corners (2 * 15 voxels) plus the spline margin
    lo, hi = source_region(centre, PATCH, SpatialParams(scale=2.0))
    assert [b - a for a, b in zip(lo, hi)] == [30 + 1 + 4] * 3


def test_identity_like_resampling_matches_the_plain_crop() -> None:
    case = _case(shape=(40, 40, 40))
    params = SpatialParams(scale=1.0)  # resampled with order 3 but mathematically the identity
    corner = np.array([10, 12, 8])
    centre = corner + 7.5
    lo, hi = source_region(centre, PATCH, params)
    out = resample_patch(read_region(case.data, lo, hi), lo, centre, PATCH, params, order=3)
    expected = case.data.array[:, 10:26, 12:28, 8:24]
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_small_volumes_are_zero_padded_to_the_patch() -> None:
    case = _case(shape=(10, 20, 16))
    sampler = _sampler(case, DataConfig(rotation_p=0.0, scale_p=0.0, mirror_axes=()))
    rng = np.random.default_rng(0)
    lo, hi = crop_bounds((10, 20, 16), PATCH)
    assert list(lo) == [-3, 0, 0] and list(hi) == [-3, 4, 0]
    for _ in range(5):
        out = sampler.sample(0, rng)
        assert out["image"].shape == (1, *PATCH)
        assert np.all(out["image"][:, :3] == 0) and np.all(out["image"][:, 13:] == 0)
        assert _read_shape(case.data.reads[-1])[0] == 10


def test_mirroring_flips_the_patch() -> None:
    case = _case()
    sampler = _sampler(case, DataConfig(rotation_p=0.0, scale_p=0.0, mirror_axes=(0, 1, 2)))
    rng = np.random.default_rng(2)
    flipped = 0
    for _ in range(10):
        state = rng.bit_generator.state
        params = sampler.draw_params(rng)
        rng.bit_generator.state = state
        out = sampler.sample(0, rng)
        key = case.data.reads[-1]
        raw = case.data.array[key]
        axes = tuple(i + 1 for i, f in enumerate(params.mirror) if f)
        np.testing.assert_array_equal(out["image"], np.flip(raw, axis=axes) if axes else raw)
        flipped += bool(axes)
    assert flipped > 0


def test_anatomy_guided_centres_lie_inside_the_anatomy() -> None:
    shape = (48, 48, 48)
    anatomy = np.zeros((1, *shape), dtype=np.int8)
    anatomy[:, 30:42, 4:14, 20:34] = 1  # off-centre blob; the rest (97%) is background
    case = _case(shape=shape, anatomy=anatomy)
    cfg = DataConfig(rotation_p=0.0, scale_p=0.0, mirror_axes=(), anatomy_crop_p=1.0)
    sampler = _sampler(case, cfg)
    rng = np.random.default_rng(0)
    centres_inside = 0
    for _ in range(30):
        out = sampler.sample(0, rng)
        assert out["anatomy_mask"].dtype == np.int8 and out["anatomy_mask"].shape == (1, *PATCH)
        key = case.data.reads[-1]
        start = np.array([s.start for s in key[1:]])
        assert np.all(start >= 0) and np.all(start + 16 <= 48)
        # the drawn anatomy voxel is the patch centre unless the box was clamped at a border
        centres_inside += int(out["anatomy_mask"][0, 8, 8, 8] == 1)
        assert out["anatomy_mask"].sum() > 0
    assert centres_inside == 30
    # the mask was read once (strided) for the candidate voxels, not per sample
    strided_reads = [k for k in case.masks["anatomy"].reads if k[1].step not in (None, 1)]
    assert len(strided_reads) == 1


def test_empty_anatomy_mask_falls_back_to_uniform_crops() -> None:
    case = _case(shape=(32, 32, 32), anatomy=np.zeros((1, 32, 32, 32), dtype=np.int8))
    sampler = _sampler(case, DataConfig(rotation_p=0.0, scale_p=0.0, anatomy_crop_p=1.0))
    out = sampler.sample(0, np.random.default_rng(0))
    assert out["image"].shape == (1, *PATCH)


def test_real_blosc2_case(tmp_path: Path) -> None:
    from nnssl.data.case_store import write_case

    rng = np.random.default_rng(0)
    data = rng.standard_normal((1, 40, 34, 30)).astype(np.float32)
    anatomy = np.zeros((1, 40, 34, 30), dtype=np.int8)
    anatomy[:, 5:30, 5:30, 5:25] = 1
    write_case(tmp_path / "case", data, {"unique_id": "u1"}, {"anatomy": anatomy})
    cfg = DataConfig(rotation_p=0.5, scale_p=0.5, anatomy_crop_p=0.5)
    sampler = PatchSampler([tmp_path / "case.b2nd"], (32, 32, 32), cfg, masks=("anatomy_mask",))
    for i in range(6):
        out = sampler.sample(0, np.random.default_rng(i))
        assert out["image"].shape == (1, 32, 32, 32) and out["anatomy_mask"].shape == (1, 32, 32, 32)
        assert set(np.unique(out["anatomy_mask"])) <= {0, 1}
        assert out["unique_id"] == "u1"
    plain = PatchSampler([tmp_path / "case"], (16, 16, 16), DataConfig(rotation_p=0, scale_p=0, mirror_axes=()))
    out = plain.sample(0, np.random.default_rng(0))
    # a plain crop is a sub-array of the stored data
    hits = [
        (x, y, z)
        for x in range(25)
        for y in range(19)
        for z in range(15)
        if data[0, x, y, z] == out["image"][0, 0, 0, 0]
    ]
    (x, y, z) = hits[0]
    np.testing.assert_array_equal(out["image"][0], data[0, x : x + 16, y : y + 16, z : z + 16])


def test_sampler_rejects_empty_lists() -> None:
    with pytest.raises(ValueError, match="at least one case"):
        PatchSampler([], PATCH, DataConfig())


def test_samples_carry_only_requested_stored_masks_and_the_batch_fills_the_rest() -> None:
    """Masks travel only when the method asks for them and the case stores them; collation fills the gaps."""
    from nnssl.data.loader import BatchCollator

    shape = (40, 36, 44)
    with_mask = _case(shape=shape, anatomy=np.zeros((1, *shape), dtype=np.int8))
    without = _case(shape=shape)
    cfg = DataConfig(rotation_p=0.0, scale_p=0.0)
    rng = np.random.default_rng(0)
    assert set(_sampler(with_mask, cfg, masks=()).sample(0, rng)) == {"image", "unique_id"}
    a = _sampler(with_mask, cfg, masks=("anatomy_mask", "anonymization_mask")).sample(0, rng)
    b = _sampler(without, cfg, masks=("anatomy_mask", "anonymization_mask")).sample(0, rng)
    assert set(a) == {"image", "anatomy_mask", "unique_id"} and set(b) == {"image", "unique_id"}
    batch = BatchCollator(PATCH)([a, b])
    assert set(batch) == {"image", "anatomy_mask", "unique_id"}  # no sample stores an anonymization mask
    assert tuple(batch["anatomy_mask"].shape) == (2, 1, *PATCH) and batch["anatomy_mask"].dtype == torch.int8
    assert int(batch["anatomy_mask"][0].sum()) == 0 and bool((batch["anatomy_mask"][1] == 1).all())
    np.testing.assert_array_equal(batch["image"][0].numpy(), a["image"])
    assert batch["unique_id"] == ["case0", "case0"]
    with pytest.raises(ValueError, match="Unknown batch mask"):
        _sampler(without, cfg, masks=("brain_mask",))
