"""Consistent view alignment (CVA) losses: ROI alignment of two overlapping views and what compares them.

Vaish et al. 2025, "Consistent View Alignment Improves Foundation Models for 3D Medical Image Segmentation"
(arXiv 2509.13846), methods.md 1.5.

ROI alignment (:func:`roi_align`)
    Each view's dense feature map (B, C, D, H, W) is sampled on a regular grid covering its overlap box
    (given in the view's own relative [0, 1] coordinates, ordered by array axis ``(lo0, lo1, lo2, hi0, hi1,
    hi2)``) and pooled to ``grid`` cells per axis. Convention (edge-consistent, align_corners=False): the
    relative coordinate ``r`` is the position ``r * size`` measured from the first voxel's outer edge; the
    ``grid * oversample`` samples per axis sit at the centres of equal sub-cells of the box; trilinear
    ``grid_sample`` (border padding) reads them; ``avg_pool3d`` with kernel ``oversample`` gives the cells.
    So a cell's value is the average of the map over the cell's centre region, and two views whose boxes
    mark the same physical region give cell-by-cell the same physical positions.

    Axis order: for a 5-D input ``grid_sample`` reads ``grid[..., 0]`` as the coordinate along W (the *last*
    array axis), ``grid[..., 1]`` along H and ``grid[..., 2]`` along D. The reference implementation wrote
    the first array axis into ``grid[..., 0]`` (methods.md 1.7 item 2), which swaps D and W; here the
    components are stacked as (axis 2, axis 1, axis 0), pinned by the coordinate-volume test in
    ``tests/losses/test_alignment.py``.

Losses on the aligned cells (``P``: student, ``Q``: stop-gradient teacher of the partner view; both
L2-normalised over channels):

* cosine CVA (the challenge setting): ``L = 2 - 2 * mean_{k, g} <P_k(g), Q_k(g)>``;
* Gram: per view the cells x cells similarity matrices ``G_P = P P^T`` and ``G_Q = Q Q^T`` (P as a
  cells x channels matrix), ``L = mean((G_P - G_Q)^2)`` (DINOv3-style Gram anchoring; it aligns the
  structure of the cells' similarities instead of the features themselves);
* contrastive (C-CVA): the same-image-aware NT-Xent (:func:`nnssl.losses.contrastive.nt_xent`) over all
  (view, cell) embeddings, positive = the same cell of the partner view.

Reconstruction (:func:`masked_huber`): ``L = sum(huber_1(xhat - x) * M) / (sum(M) + eps)`` with ``M = 1``
on masked voxels (the nnssl mask convention), Huber delta 1 as CVA's stage-1 MAE.

All losses are computed in fp32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from nnssl.losses.contrastive import nt_xent


def _triple(value: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(value, int):
        return (value, value, value)
    out = tuple(int(v) for v in value)
    if len(out) != 3:
        raise ValueError(f"Expected an int or three ints, got {value!r}.")
    return out  # type: ignore[return-value]


def roi_sample_positions(boxes: torch.Tensor, samples: Sequence[int]) -> list[torch.Tensor]:
    """Per array axis ``a``: (B, samples[a]) relative sample positions at the sub-cell centres of each box."""
    boxes = boxes.to(torch.float32)
    positions = []
    for axis in range(3):
        n = int(samples[axis])
        lo, hi = boxes[:, axis : axis + 1], boxes[:, axis + 3 : axis + 4]
        frac = (torch.arange(n, device=boxes.device, dtype=torch.float32) + 0.5) / n
        positions.append(lo + (hi - lo) * frac)
    return positions


def roi_align(
    features: torch.Tensor,
    boxes: torch.Tensor,
    grid: int | Sequence[int] = 7,
    oversample: int = 2,
) -> torch.Tensor:
    """(B, C, g0, g1, g2) features of the boxes: (B, C, D, H, W) maps sampled over ``boxes`` (B, 6).

    ``boxes[b] = (lo0, lo1, lo2, hi0, hi1, hi2)`` in relative [0, 1] coordinates of view ``b``, ordered by
    array axis (0 = D, the first spatial axis). See the module docstring for the sampling convention.
    """
    if features.dim() != 5:
        raise ValueError(f"roi_align expects features of shape (B, C, D, H, W), got {tuple(features.shape)}.")
    if boxes.shape != (features.shape[0], 6):
        raise ValueError(f"roi_align expects boxes of shape ({features.shape[0]}, 6), got {tuple(boxes.shape)}.")
    cells = _triple(grid)
    samples = [c * oversample for c in cells]
    p0, p1, p2 = roi_sample_positions(boxes, samples)
    b = features.shape[0]
    # relative r in [0, 1] -> normalised u = 2r - 1 (align_corners=False: -1/+1 are the outer voxel edges)
    u0 = (2 * p0 - 1).view(b, -1, 1, 1).expand(b, *samples)
    u1 = (2 * p1 - 1).view(b, 1, -1, 1).expand(b, *samples)
    u2 = (2 * p2 - 1).view(b, 1, 1, -1).expand(b, *samples)
    sample_grid = torch.stack((u2, u1, u0), dim=-1)  # grid_sample: component 0 indexes W (axis 2), 2 indexes D
    sampled = F.grid_sample(features.float(), sample_grid, mode="bilinear", padding_mode="border", align_corners=False)
    return F.avg_pool3d(sampled, kernel_size=oversample) if oversample > 1 else sampled


def _cells(x: torch.Tensor) -> torch.Tensor:
    """(B, C, *grid) -> (B, cells, C), L2-normalised over channels, fp32."""
    return F.normalize(x.float().flatten(2).transpose(1, 2), dim=-1)


def cva_cosine_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``2 - 2 * mean <norm P, norm Q>`` over views and cells; inputs (B, C, *grid), teacher detached."""
    p, q = _cells(student), _cells(teacher.detach())
    return 2.0 - 2.0 * (p * q).sum(dim=-1).mean()


def cva_gram_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``mean((P P^T - Q Q^T)^2)`` with P, Q the per-view (cells x channels) normalised matrices."""
    p, q = _cells(student), _cells(teacher.detach())
    return ((p @ p.transpose(1, 2) - q @ q.transpose(1, 2)) ** 2).mean()


def cva_contrastive_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 0.5, gather: bool = True
) -> torch.Tensor:
    """C-CVA: same-image-aware NT-Xent over (view, cell) embeddings; positive = same cell, partner teacher.

    ``student``/``teacher`` are (2B, C, *grid) in the ``[view1 of images ; view2 of images]`` layout; the rows
    are reordered to ``[view1 (image, cell) ; view2 (image, cell)]`` so that a cell's other-view entries sit
    exactly half the rows away, the layout :func:`nnssl.losses.contrastive.nt_xent` expects.
    """
    n = student.shape[0]
    if n % 2:
        raise ValueError(f"C-CVA needs the [view1 ; view2] layout with an even number of views, got {n}.")
    u = _cells(student).reshape(-1, student.shape[1])
    v = _cells(teacher.detach()).reshape(-1, teacher.shape[1])
    return nt_xent(u, v, temperature, same_image_aware=True, gather=gather)[0]


def masked_huber(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``sum(huber_1(prediction - target) * mask) / (sum(mask) + eps)`` in fp32; ``mask`` = 1 on masked voxels.

    ``mask`` broadcasts over channels; visible voxels (mask 0) do not contribute; an all-zero mask gives 0.
    """
    pred, tgt = prediction.float(), target.float()
    m = mask.to(torch.float32).expand_as(pred)
    per_voxel = F.huber_loss(pred, tgt, reduction="none", delta=1.0)
    return (per_voxel * m).sum() / (m.sum() + eps)


def channel_std_ratio(features: torch.Tensor) -> float:
    """``cw_std``: mean over channels of the std (over rows) of L2-normalised features, times ``sqrt(C)``.

    ``features`` is (..., C). About 1 for well-spread embeddings, towards 0 when they collapse to one point.
    """
    z = F.normalize(features.detach().float().reshape(-1, features.shape[-1]), dim=-1)
    if z.shape[0] < 2:
        return float("nan")
    return float(z.std(dim=0).mean() * z.shape[-1] ** 0.5)
