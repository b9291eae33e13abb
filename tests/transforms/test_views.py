"""Crops and overlapping pairs: containment, exact overlap voxels, relative boxes, VoCo overlap tables."""

from __future__ import annotations

import numpy as np
import pytest

from nnssl.transforms.views import (
    crop,
    grid_starts,
    overlap_fraction_matrix,
    overlapping_pair,
    partner_start,
    random_crop_start,
)


def _coords(shape) -> np.ndarray:
    """(3, X, Y, Z) volume whose channels are the voxel's own coordinates."""
    return np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")).astype(np.float32)


def test_random_crop_inside_and_crop_copies() -> None:
    rng = np.random.default_rng(0)
    base = (40, 30, 20)
    vol = _coords(base)
    for _ in range(50):
        start = random_crop_start(base, (16, 16, 16), rng)
        assert all(0 <= s <= b - 16 for s, b in zip(start, base))
        out = crop(vol, start, (16, 16, 16))
        assert out.shape == (3, 16, 16, 16)
        assert out[:, 0, 0, 0].tolist() == list(start)
    out[:] = -1
    assert vol.min() == 0  # crop returned a copy
    with pytest.raises(ValueError, match="does not fit"):
        random_crop_start(base, (48, 16, 16), rng)


def test_overlapping_pair_asymmetric_fractions() -> None:
    rng = np.random.default_rng(1)
    base, size, fractions = (60, 52, 44), (32, 32, 24), (0.9, 0.6, 0.45)
    vol = _coords(base)
    lengths = [int(round(p * f)) for p, f in zip(size, fractions)]
    assert lengths == [29, 19, 11]
    starts = set()
    for _ in range(40):
        s1, s2, box1, box2 = overlapping_pair(base, size, fractions, rng)
        starts.add(s1)
        for d in range(3):
            assert s1[d] >= 0 and s2[d] + size[d] <= base[d]
            assert s2[d] - s1[d] == size[d] - lengths[d]  # crop 1 is the lower crop on every axis
        c1, c2 = crop(vol, s1, size), crop(vol, s2, size)
        # the boxes, mapped to voxels, select identical coordinates in both crops
        sl1 = tuple(slice(round(box1[d] * size[d]), round(box1[d + 3] * size[d])) for d in range(3))
        sl2 = tuple(slice(round(box2[d] * size[d]), round(box2[d + 3] * size[d])) for d in range(3))
        np.testing.assert_array_equal(c1[(slice(None), *sl1)], c2[(slice(None), *sl2)])
        assert c1[(slice(None), *sl1)].shape[1:] == tuple(lengths)
        assert box1[3:] == (1.0, 1.0, 1.0) and box2[:3] == (0.0, 0.0, 0.0)
        assert box2[3:] == pytest.approx([o / p for o, p in zip(lengths, size)])
    assert len(starts) > 10  # start1 is random, not pinned to 0


def test_overlapping_pair_refuses_a_too_small_base() -> None:
    with pytest.raises(ValueError, match=r"too small.*axes \[0\]"):
        overlapping_pair((40, 64, 64), (32, 32, 32), (0.5, 0.5, 0.5), np.random.default_rng(0))
    # exactly 2p - o fits, with a single possible position
    s1, s2, _, _ = overlapping_pair((48, 48, 48), (32, 32, 32), (0.5, 0.5, 0.5), np.random.default_rng(0))
    assert s1 == (0, 0, 0) and s2 == (16, 16, 16)


def test_partner_start_respects_the_maximum_shift() -> None:
    rng = np.random.default_rng(2)
    for _ in range(100):
        ref = random_crop_start((96, 96, 32), (32, 32, 32), rng)
        other = partner_start((96, 96, 32), ref, (32, 32, 32), (16, 16, 16), rng)
        assert all(abs(a - b) <= 16 for a, b in zip(ref, other))
        assert all(0 <= o <= 96 - 32 for o in other[:2]) and other[2] == 0


def test_overlap_fraction_matrix_rows_sum_to_one_on_a_tiling() -> None:
    rng = np.random.default_rng(3)
    region, size = (64, 64, 16), (16, 16, 16)
    bases = grid_starts(region, size)
    assert bases.shape == (16, 3)
    targets = np.array([random_crop_start(region, size, rng) for _ in range(20)])
    table = overlap_fraction_matrix(targets, bases, size)
    assert table.shape == (20, 16)
    np.testing.assert_allclose(table.sum(1), 1.0, rtol=1e-6)
    one_hot = overlap_fraction_matrix(bases[5:6], bases, size)
    assert one_hot[0, 5] == 1.0 and one_hot.sum() == 1.0
    half = overlap_fraction_matrix([[8, 0, 0]], bases, size)
    assert half[0, 0] == 0.5 and half[0, 4] == 0.5  # C order: tile 4 starts at (16, 0, 0)
    with pytest.raises(ValueError, match="whole number"):
        grid_starts((60, 64, 16), size)
