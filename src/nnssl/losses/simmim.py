"""SimMIM's reconstruction loss (Xie et al. 2022, "SimMIM: A Simple Framework for Masked Image Modeling").

Masked L1: ``L = sum(|xhat - x| * M) / sum(M)`` with ``M = 1`` on masked voxels (per channel), in fp32, so visible
voxels never enter the loss.
"""

from __future__ import annotations

import torch


def masked_l1(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum(|prediction - target| * mask) / sum(mask)`` in fp32; ``mask`` broadcasts over channels (0 if empty)."""
    pred = prediction.float()
    m = mask.to(torch.float32).expand_as(pred)
    return ((pred - target.float()).abs() * m).sum() / m.sum().clamp_min(1.0)
