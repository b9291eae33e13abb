"""Reconstruction losses for masked image modelling.

Masked MSE (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners"; nnssl's MAE on z-scored
intensities, Wald et al. 2025 OpenMind): ``L = sum((xhat - x)^2 * M) / sum(M)`` with ``M = 1`` on masked
voxels and 0 on visible ones, so only what the network could not see is scored. Computed in fp32.
"""

from __future__ import annotations

import torch


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum((prediction - target)^2 * mask) / sum(mask)`` in fp32; ``mask`` broadcasts over channels.

    The denominator counts masked voxels times channels; an all-zero mask gives 0 (not NaN).
    """
    pred = prediction.float()
    tgt = target.float()
    m = mask.to(torch.float32).expand_as(pred)
    return ((pred - tgt) ** 2 * m).sum() / m.sum().clamp_min(1.0)
