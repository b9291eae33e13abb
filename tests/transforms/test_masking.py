"""Mask generators: exact counts per sample, block structure, seeding by torch's generator."""

from __future__ import annotations

import pytest
import torch

from nnssl.transforms.masking import blocky_mask, num_masked, random_keep_indices, random_subset_mask


def test_blocky_mask_masks_exactly_floor_r_n_blocks_per_sample() -> None:
    mask = blocky_mask(5, (64, 48, 32), 16, 0.75)
    assert mask.shape == (5, 1, 64, 48, 32) and mask.dtype == torch.float32
    blocks = mask[:, 0, ::16, ::16, ::16]  # one voxel per block
    n_blocks = 4 * 3 * 2
    assert blocks.flatten(1).sum(1).tolist() == [float(int(0.75 * n_blocks))] * 5
    # every block is constant
    cubes = mask[:, 0].reshape(5, 4, 16, 3, 16, 2, 16)
    assert torch.all(cubes.amax(dim=(2, 4, 6)) == cubes.amin(dim=(2, 4, 6)))
    # samples differ
    assert not torch.equal(blocks[0], blocks[1]) or not torch.equal(blocks[1], blocks[2])


def test_counts_for_odd_sizes_and_ratios() -> None:
    assert num_masked(1000, 0.75) == 750 and num_masked(7, 0.5) == 3 and num_masked(8000, 0.75) == 6000
    m = random_subset_mask(3, 7, num_masked(7, 0.6))
    assert m.sum(1).tolist() == [4, 4, 4]
    with pytest.raises(ValueError, match="mask_ratio"):
        num_masked(10, 1.0)
    with pytest.raises(ValueError, match="block size"):
        blocky_mask(1, (40, 32, 32), 16, 0.75)


def test_keep_indices_count_sorted_unique() -> None:
    keep = random_keep_indices(4, 64, 0.75)
    assert keep.shape == (4, 16)
    for row in keep:
        assert torch.equal(row, row.sort().values) and len(set(row.tolist())) == 16
    assert random_keep_indices(2, 27, 0.75).shape == (2, 27 - 20)


def test_masks_follow_torch_seed() -> None:
    torch.manual_seed(7)
    a = blocky_mask(2, (32, 32, 32), 16, 0.75)
    k1 = random_keep_indices(2, 64, 0.75)
    torch.manual_seed(7)
    assert torch.equal(a, blocky_mask(2, (32, 32, 32), 16, 0.75))
    assert torch.equal(k1, random_keep_indices(2, 64, 0.75))
