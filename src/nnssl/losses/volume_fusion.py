"""Soft Dice + cross-entropy for VolumeFusion's per-voxel fusion classes (nnU-Net's ``DC_and_CE_loss`` settings).

With softmax probabilities ``p`` (B, K, *) and one-hot labels ``g``, per sample b and class k

    D_bk = (2 sum(p_bk g_bk) + s) / max(sum(p_bk) + sum(g_bk) + s, 1e-8),       s = ``smooth`` (1e-5)

(``batch_dice=False``, background included, nnU-Net's ``MemoryEfficientSoftDiceLoss``), and

    L = w_ce CE(logits, labels) + w_dice (1 - mean_bk D_bk).

nnU-Net adds ``-mean D``; the constant 1 here makes a perfect prediction score 0 and leaves every gradient as is.
A class absent from a sample contributes ``s / (sum(p_bk) + s)``: 1 when the prediction also avoids it. Computed in
fp32 (also under autocast).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice(probabilities: torch.Tensor, labels: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """(B, K) per-sample, per-class soft Dice of ``probabilities`` (B, K, *) against integer ``labels`` (B, *)."""
    k = probabilities.shape[1]
    onehot = F.one_hot(labels.long(), k).movedim(-1, 1).to(probabilities.dtype)
    dims = tuple(range(2, probabilities.ndim))
    intersection = (probabilities * onehot).sum(dims)
    denominator = probabilities.sum(dims) + onehot.sum(dims) + smooth
    return (2.0 * intersection + smooth) / denominator.clamp_min(1e-8)


def dice_ce_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    smooth: float = 1e-5,
    dice_weight: float = 1.0,
    ce_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(L, dice_term, ce_term)`` for ``logits`` (B, K, *) and ``labels`` (B, *) in 0..K-1 (see module docstring)."""
    if labels.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match logits {tuple(logits.shape)} without channels.")
    logits = logits.float()
    labels = labels.long()
    ce = F.cross_entropy(logits, labels)
    dice = 1.0 - soft_dice(torch.softmax(logits, dim=1), labels, smooth).mean()
    return ce_weight * ce + dice_weight * dice, dice, ce
