"""Random masks for masked image modelling, drawn on the device with torch's generator.

Blocky voxel mask (MAE on CNNs, SparK, SimMIM; methods.md 0.3): the patch is divided into cubes of side ``s``
and, per sample, exactly ``floor(r * n_cubes)`` cubes are chosen uniformly without replacement and masked.
Token dropping (MAE on Primus): per sample exactly ``n_keep = n_tokens - floor(r * n_tokens)`` tokens are kept.

Masks are drawn with torch's random generator of the device (or an explicit ``generator``), so seeding torch
(as the engine does for validation) fixes them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def num_masked(n: int, ratio: float) -> int:
    """``floor(ratio * n)``, checked: the ratio must lie in [0, 1)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1); got {ratio}.")
    return int(math.floor(ratio * n + 1e-9))


def block_grid(patch_size: Sequence[int], block_size: int) -> tuple[int, int, int]:
    """Number of cubes per axis; every patch side must be a multiple of ``block_size``."""
    if any(int(p) % block_size for p in patch_size):
        raise ValueError(
            f"Patch size {list(patch_size)} is not divisible by the mask block size {block_size}; "
            f"set method.block_size to a divisor of every side."
        )
    return tuple(int(p) // block_size for p in patch_size)  # type: ignore[return-value]


def random_subset_mask(
    batch_size: int,
    n: int,
    n_selected: int,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B, n) bool with exactly ``n_selected`` True entries per row, uniformly at random."""
    noise = torch.rand(batch_size, n, device=device, generator=generator)
    order = noise.argsort(dim=1)
    mask = torch.zeros(batch_size, n, dtype=torch.bool, device=noise.device)
    mask.scatter_(1, order[:, :n_selected], True)
    return mask


def blocky_mask(
    batch_size: int,
    patch_size: Sequence[int],
    block_size: int,
    mask_ratio: float,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B, 1, X, Y, Z) float mask, 1 on masked voxels: exactly ``floor(r * n_blocks)`` cubes per sample."""
    grid = block_grid(patch_size, block_size)
    n_blocks = grid[0] * grid[1] * grid[2]
    masked = random_subset_mask(batch_size, n_blocks, num_masked(n_blocks, mask_ratio), device, generator)
    mask = masked.view(batch_size, 1, *grid).to(torch.float32)
    for axis in (2, 3, 4):
        mask = mask.repeat_interleave(block_size, dim=axis)
    return mask


def random_keep_indices(
    batch_size: int,
    num_tokens: int,
    mask_ratio: float,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B, n_keep) sorted indices of kept tokens, ``n_keep = num_tokens - floor(r * num_tokens)`` per sample."""
    n_keep = num_tokens - num_masked(num_tokens, mask_ratio)
    noise = torch.rand(batch_size, num_tokens, device=device, generator=generator)
    return noise.argsort(dim=1)[:, :n_keep].sort(dim=1).values
