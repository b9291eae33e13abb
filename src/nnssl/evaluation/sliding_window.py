"""Dense features of a whole volume from a frozen encoder, window by window (nnU-Net-style sliding window).

The volume (C, X, Y, Z) is padded at its end with zeros (the mean of z-scored data, as nnU-Net pads) to at least one
window and to a multiple of the coarsest chosen stride ``S``. Windows start on multiples of ``S`` (so every window's
maps fall exactly on the volume's feature grids), ``ceil((L - W) / (W (1 - overlap))) + 1`` per axis, evenly spread
from 0 to ``L - W``. Every chosen map is accumulated on its own grid with a Gaussian importance weight (sigma = 1/8 of
the window's map side, nnU-Net's ``compute_gaussian``; the window centre counts most, its border least) and divided
by the summed weights. Maps coarser than the finest chosen one are then trilinearly upsampled to it (cell-centred,
``align_corners=False``) and concatenated; the padding is cropped away: the result has ``ceil(L / s)`` cells per
axis for the finest chosen stride ``s`` (cell ``i`` centred on voxel ``(i + 0.5) s - 0.5``).

The global embedding is the mean over windows of each window's pooled features (every map's mean, concatenated:
:meth:`nnssl.backbones.Features.pooled`). Memory: one batch of windows on the device plus the accumulators of the
chosen maps on the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from nnssl.evaluation.encoder import FrozenEncoder
from nnssl.progress import show_progress


@dataclass
class VolumeFeatures:
    """``dense`` (C, fx, fy, fz) float32 on the grid of stride ``stride`` (voxels of the preprocessed image per
    cell), ``embedding`` (D,) the global embedding, ``stages`` the encoder maps that ``dense`` concatenates."""

    dense: torch.Tensor
    stride: int
    embedding: torch.Tensor
    stages: tuple[int, ...]


def window_starts(length: int, window: int, step_multiple: int, overlap: float) -> list[int]:
    """Start positions along one axis of length ``length`` (>= ``window``; ``length - window`` a multiple of
    ``step_multiple``): evenly spread, rounded to multiples of ``step_multiple``, first 0 and last ``length - window``.
    """
    if length <= window:
        return [0]
    step = max(1.0, window * (1.0 - overlap))
    count = int(math.ceil((length - window) / step)) + 1
    raw = np.linspace(0, length - window, count)
    starts = sorted({int(round(r / step_multiple)) * step_multiple for r in raw})
    return starts


def gaussian_weight(size: Sequence[int], sigma_scale: float = 1.0 / 8) -> torch.Tensor:
    """A separable Gaussian over a grid of ``size`` cells, peak 1 at the centre, floored at a tiny positive value."""
    axes = []
    for n in size:
        if n == 1:
            axes.append(torch.ones(1))
            continue
        centre = (n - 1) / 2.0
        sigma = max(n * sigma_scale, 1e-3)
        axes.append(torch.exp(-0.5 * ((torch.arange(n, dtype=torch.float32) - centre) / sigma) ** 2))
    weight = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    weight = weight / weight.max()
    return weight.clamp_min(1e-4)


@torch.no_grad()
def sliding_window_features(
    encoder: FrozenEncoder,
    volume: np.ndarray | torch.Tensor,
    stages: Sequence[int] | None = None,
    overlap: float = 0.5,
    window_batch: int = 2,
    gaussian: bool = True,
    progress: bool = False,
    desc: str = "windows",
) -> VolumeFeatures:
    """Features of ``volume`` (C, X, Y, Z) by sliding ``encoder.window`` over it; see the module docstring."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must lie in [0, 1), got {overlap}")
    if window_batch < 1:
        raise ValueError(f"window_batch must be >= 1, got {window_batch}")
    x = torch.as_tensor(np.asarray(volume, dtype=np.float32) if not torch.is_tensor(volume) else volume).float()
    if x.ndim != 4 or x.shape[0] != encoder.in_channels:
        raise ValueError(
            f"volume must be (C, X, Y, Z) with C = {encoder.in_channels} channels as pre-trained, got {tuple(x.shape)}"
        )
    chosen = tuple(encoder.default_stages() if not stages else (int(s) for s in stages))
    for s in chosen:
        if not 0 <= s < len(encoder.strides):
            raise ValueError(f"stage {s} does not exist: the encoder has stages 0..{len(encoder.strides) - 1}")
    window = encoder.window
    coarsest = max(encoder.strides[s] for s in chosen)
    shape = tuple(int(n) for n in x.shape[1:])
    padded = tuple(max(w, int(math.ceil(n / coarsest)) * coarsest) for n, w in zip(shape, window))
    if padded != shape:
        x = F.pad(x, [0, padded[2] - shape[2], 0, padded[1] - shape[1], 0, padded[0] - shape[0]])
    starts = [window_starts(n, w, coarsest, overlap) for n, w in zip(padded, window)]
    positions = [(a, b, c) for a in starts[0] for b in starts[1] for c in starts[2]]

    accumulators = {}
    weights = {}
    kernels = {}
    for s in chosen:
        stride = encoder.strides[s]
        grid = tuple(n // stride for n in padded)
        accumulators[s] = torch.zeros(encoder.channels[s], *grid)
        weights[s] = torch.zeros(1, *grid)
        size = tuple(w // stride for w in window)
        kernels[s] = gaussian_weight(size) if gaussian else torch.ones(size)
    pooled_sum = None
    from tqdm import tqdm

    bar = tqdm(total=len(positions), desc=desc, disable=not show_progress(progress), leave=False)
    try:
        for first in range(0, len(positions), window_batch):
            batch_positions = positions[first : first + window_batch]
            crops = torch.stack(
                [x[:, a : a + window[0], b : b + window[1], c : c + window[2]] for a, b, c in batch_positions]
            )
            maps = encoder.features(crops)
            pooled = encoder.pooled(maps).cpu().sum(0)
            pooled_sum = pooled if pooled_sum is None else pooled_sum + pooled
            for s in chosen:
                stride = encoder.strides[s]
                m = maps[s].cpu()
                kernel = kernels[s]
                for i, (a, b, c) in enumerate(batch_positions):
                    region = (
                        slice(a // stride, a // stride + kernel.shape[0]),
                        slice(b // stride, b // stride + kernel.shape[1]),
                        slice(c // stride, c // stride + kernel.shape[2]),
                    )
                    accumulators[s][(slice(None), *region)] += m[i] * kernel
                    weights[s][(slice(None), *region)] += kernel
            bar.update(len(batch_positions))
    finally:
        bar.close()
    finest = min(encoder.strides[s] for s in chosen)
    fine_grid = tuple(n // finest for n in padded)
    parts = []
    for s in chosen:
        averaged = accumulators[s] / weights[s]
        if tuple(averaged.shape[1:]) != fine_grid:
            averaged = F.interpolate(averaged[None], size=fine_grid, mode="trilinear", align_corners=False)[0]
        parts.append(averaged)
    dense = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
    keep = tuple(int(math.ceil(n / finest)) for n in shape)
    dense = dense[:, : keep[0], : keep[1], : keep[2]].contiguous()
    assert pooled_sum is not None
    return VolumeFeatures(dense=dense, stride=finest, embedding=pooled_sum / len(positions), stages=chosen)


__all__ = ["VolumeFeatures", "gaussian_weight", "sliding_window_features", "window_starts"]
