"""The one random-mask utility of masked image modelling: mask ratio (or counts) in, mask and keep indices out.

A patch is divided into **units** on a grid: cubes of ``unit_size``^3 voxels (voxel blocks on CNNs, methods.md 0.3;
tokens on transformers, whose unit is the patch-embedding size). Per sample exactly ``n_masked`` units are chosen
uniformly without replacement (``n_masked = floor(r * n_units)`` from a mask ratio ``r``, or a count per sample):
the ``n_masked`` units with the lowest draw of ``torch.rand(B, n_units)`` are masked. The result,
:class:`UnitMask`, gives every form a method or a backbone needs from the same draw:

* ``masked`` (B, n) bool, True = masked, units in C order of the grid (first axis slowest; the (w h d) token order
  of dna's Primus);
* :meth:`UnitMask.voxels`: (B, 1, X, Y, Z) float, 1 on masked voxels (the loss mask);
* :meth:`UnitMask.keep_indices`: (B, K) sorted indices of the visible units (token dropping).

:func:`draw_block_mask` draws the same counts as spatially clustered boxes (DINOv2/BEiT block masking).

Masks are drawn with torch's generator of the device (or an explicit ``generator``), so seeding torch (as the
engine does for validation) fixes them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def num_masked(n: int, ratio: float) -> int:
    """``floor(ratio * n)``, checked: the ratio must lie in [0, 1)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1); got {ratio}.")
    return int(math.floor(ratio * n + 1e-9))


def block_grid(patch_size: Sequence[int], block_size: int) -> tuple[int, int, int]:
    """Number of units per axis; every patch side must be a multiple of ``block_size``."""
    if any(int(p) % block_size for p in patch_size):
        raise ValueError(
            f"Patch size {list(patch_size)} is not divisible by the mask block size {block_size}; "
            f"set method.block_size to a divisor of every side."
        )
    return tuple(int(p) // block_size for p in patch_size)  # type: ignore[return-value]


@dataclass(frozen=True)
class UnitMask:
    """Masked units of a batch: ``masked`` (B, n) bool on ``grid`` (units of ``unit_size``^3 voxels)."""

    masked: torch.Tensor
    grid: tuple[int, int, int]
    unit_size: int

    @property
    def num_units(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    def voxels(self) -> torch.Tensor:
        """(B, 1, X, Y, Z) float32, 1 on the voxels of masked units (every unit fills its cube)."""
        b = self.masked.shape[0]
        mask = self.masked.view(b, 1, *self.grid).to(torch.float32)
        for axis in (2, 3, 4):
            mask = mask.repeat_interleave(self.unit_size, dim=axis)
        return mask

    def keep_indices(self) -> torch.Tensor:
        """(B, K) sorted indices of the visible units; every sample must keep the same number K."""
        keep = ~self.masked
        counts = keep.sum(dim=1)
        if counts.numel() and not bool((counts == counts[0]).all()):
            raise ValueError(f"keep_indices needs the same number of visible units per sample, got {counts.tolist()}.")
        k = int(counts[0]) if counts.numel() else 0
        # stable sort of (masked first = 0 visible) puts visible units last in index order
        order = torch.argsort(keep.to(torch.int8), dim=1, stable=True)
        return order[:, self.num_units - k :]


def draw_unit_mask(
    batch_size: int,
    grid: Sequence[int],
    unit_size: int,
    mask_ratio: float | None = None,
    counts: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> UnitMask:
    """Mask exactly ``floor(mask_ratio * n)`` units per sample (or ``counts[b]`` units of sample ``b``).

    Give either ``mask_ratio`` (in [0, 1)) or ``counts`` (a (B,) integer tensor, values in [0, n]).
    """
    grid = tuple(int(g) for g in grid)
    n = grid[0] * grid[1] * grid[2]
    if (mask_ratio is None) == (counts is None):
        raise ValueError("draw_unit_mask needs exactly one of mask_ratio and counts.")
    noise = torch.rand(batch_size, n, device=device, generator=generator)
    if counts is None:
        selected = torch.full((batch_size, 1), num_masked(n, float(mask_ratio)), device=noise.device)
    else:
        selected = counts.to(noise.device).long().reshape(batch_size, 1)
        if bool((selected < 0).any()) or bool((selected > n).any()):
            raise ValueError(f"Mask counts must lie in [0, {n}], got {selected.flatten().tolist()}.")
    ranks = noise.argsort(dim=1).argsort(dim=1)
    return UnitMask(masked=ranks < selected, grid=grid, unit_size=int(unit_size))  # type: ignore[arg-type]


def _draw_boxes(
    grid: tuple[int, int, int],
    target: int,
    min_units: int,
    max_units: int,
    log_aspect: tuple[float, float],
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One (W, H, D) bool mask of about ``target`` units made of random boxes (see :func:`draw_block_mask`)."""
    mask = torch.zeros(grid, dtype=torch.bool)
    count = 0

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=generator))

    def randint(high: int) -> int:  # in [0, high]
        return int(torch.randint(0, high + 1, (), generator=generator))

    while count < target:
        budget = min(target - count, max_units)
        added = 0
        for _ in range(10):  # DINOv2's MaskingGenerator: up to 10 tries per box
            volume = uniform(min(min_units, budget), budget)
            a1, a2 = uniform(*log_aspect), uniform(*log_aspect)
            side = volume ** (1.0 / 3.0)
            sides = [int(round(side * math.exp(e))) for e in (a1, a2, -(a1 + a2))]
            sides = [max(1, min(s, g)) for s, g in zip(sides, grid)]
            start = [randint(g - s) for s, g in zip(sides, grid)]
            box = tuple(slice(o, o + s) for o, s in zip(start, sides))
            new = sides[0] * sides[1] * sides[2] - int(mask[box].sum())
            if 0 < new <= budget:
                mask[box] = True
                added = new
                break
        if added == 0:
            break
        count += added
    return mask


def draw_block_mask(
    batch_size: int,
    grid: Sequence[int],
    unit_size: int,
    mask_ratio: float | None = None,
    counts: torch.Tensor | None = None,
    min_units: int = 4,
    max_units: int | None = None,
    aspect_range: tuple[float, float] = (0.3, 1 / 0.3),
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> UnitMask:
    """Block masks (BEiT, Bao et al. 2022; DINOv2's ``MaskingGenerator``, here in 3D) with exactly ``floor(r n)`` (or
    ``counts[b]``) masked units per sample.

    Per sample, boxes are placed until the target count ``k`` is reached: a box of volume ``v ~ U(min_units, k_left)``
    (``k_left`` = units still to mask, at most ``max_units``, default n/2 as DINOv2) with side ratios
    ``exp(a1) : exp(a2) : exp(-(a1 + a2))``, ``a1, a2 ~ U(log aspect_range)``, sides ``round(v^(1/3) exp(a))``
    clipped to the grid, at a uniform position; it is kept if it adds between 1 and ``k_left`` new units (10 tries,
    then stop). Units still missing are then added uniformly among the unmasked ones, so every sample has exactly
    ``k`` (placement never overshoots, so nothing is trimmed). Draws come from torch's CPU generator (or
    ``generator``): seeding torch fixes the masks.
    """
    grid = tuple(int(g) for g in grid)
    n = grid[0] * grid[1] * grid[2]
    if (mask_ratio is None) == (counts is None):
        raise ValueError("draw_block_mask needs exactly one of mask_ratio and counts.")
    if counts is None:
        targets = [num_masked(n, float(mask_ratio))] * batch_size
    else:
        targets = [int(c) for c in counts.reshape(-1).tolist()]
        if len(targets) != batch_size or any(c < 0 or c > n for c in targets):
            raise ValueError(f"Mask counts must be {batch_size} values in [0, {n}], got {targets}.")
    low, high = float(aspect_range[0]), float(aspect_range[1])
    if not 0 < low <= high:
        raise ValueError(f"aspect_range must satisfy 0 < low <= high, got {aspect_range}.")
    cap = max(1, n // 2) if max_units is None else int(max_units)
    rows = []
    for target in targets:
        mask = _draw_boxes(grid, target, int(min_units), cap, (math.log(low), math.log(high)), generator).reshape(-1)
        missing = target - int(mask.sum())
        if missing > 0:  # top up uniformly among the unmasked units
            free = (~mask).nonzero().reshape(-1)
            mask[free[torch.randperm(free.numel(), generator=generator)[:missing]]] = True
        rows.append(mask)
    masked = torch.stack(rows) if rows else torch.zeros(0, n, dtype=torch.bool)
    return UnitMask(masked=masked.to(device), grid=grid, unit_size=int(unit_size))  # type: ignore[arg-type]
