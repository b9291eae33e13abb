"""The one mask utility: exact counts per sample, unit structure, keep indices = complement, torch seeding."""

from __future__ import annotations

import pytest
import torch

from nnssl.transforms.masking import draw_unit_mask, num_masked


def test_exactly_floor_r_n_units_per_sample_and_constant_cubes() -> None:
    mask = draw_unit_mask(5, (4, 3, 2), 16, mask_ratio=0.75)
    assert mask.masked.shape == (5, 24) and mask.masked.dtype == torch.bool
    assert mask.masked.sum(1).tolist() == [int(0.75 * 24)] * 5
    voxels = mask.voxels()
    assert voxels.shape == (5, 1, 64, 48, 32) and voxels.dtype == torch.float32
    cubes = voxels[:, 0].reshape(5, 4, 16, 3, 16, 2, 16)
    assert torch.all(cubes.amax(dim=(2, 4, 6)) == cubes.amin(dim=(2, 4, 6)))  # every unit is constant
    # unit t of the (w h d) C order fills x[16w:16w+16, 16h:..., 16d:...]
    for t in range(24):
        w, h, d = t // 6, (t // 2) % 3, t % 2
        assert voxels[0, 0, 16 * w, 16 * h, 16 * d] == float(mask.masked[0, t])
    assert not torch.equal(mask.masked[0], mask.masked[1]) or not torch.equal(mask.masked[1], mask.masked[2])


def test_keep_indices_are_the_sorted_complement() -> None:
    mask = draw_unit_mask(4, (4, 4, 4), 8, mask_ratio=0.75)
    keep = mask.keep_indices()
    assert keep.shape == (4, 16)
    for row, masked in zip(keep, mask.masked):
        assert torch.equal(row, row.sort().values)
        assert set(row.tolist()) == set((~masked).nonzero().flatten().tolist())
    assert draw_unit_mask(2, (3, 3, 3), 8, mask_ratio=0.75).keep_indices().shape == (2, 27 - 20)


def test_counts_per_sample_ratio_checks_and_uneven_keep() -> None:
    assert num_masked(1000, 0.75) == 750 and num_masked(7, 0.5) == 3 and num_masked(8000, 0.75) == 6000
    mask = draw_unit_mask(3, (2, 2, 2), 4, counts=torch.tensor([0, 3, 8]))
    assert mask.masked.sum(1).tolist() == [0, 3, 8]
    with pytest.raises(ValueError, match="same number of visible units"):
        mask.keep_indices()
    with pytest.raises(ValueError, match="mask_ratio"):
        draw_unit_mask(1, (2, 2, 2), 4, mask_ratio=1.0)
    with pytest.raises(ValueError, match="exactly one"):
        draw_unit_mask(1, (2, 2, 2), 4)
    with pytest.raises(ValueError, match="counts"):
        draw_unit_mask(1, (2, 2, 2), 4, counts=torch.tensor([9]))


def test_masks_follow_torch_seed() -> None:
    torch.manual_seed(7)
    a = draw_unit_mask(2, (2, 2, 2), 16, mask_ratio=0.75).masked
    torch.manual_seed(7)
    assert torch.equal(a, draw_unit_mask(2, (2, 2, 2), 16, mask_ratio=0.75).masked)
    gen = torch.Generator().manual_seed(1)
    b = draw_unit_mask(2, (2, 2, 2), 16, mask_ratio=0.75, generator=gen).masked
    again = draw_unit_mask(2, (2, 2, 2), 16, mask_ratio=0.75, generator=torch.Generator().manual_seed(1)).masked
    assert torch.equal(b, again)
