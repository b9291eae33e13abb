"""VoCo losses: overlap-proportion prediction and base-crop decorrelation.

Wu et al. 2024, "VoCo: A Simple-yet-Effective Volume Contrastive Learning Framework for 3D Medical Image
Analysis" (CVPR), eq. 3, 5, 7; upstream nnssl ``voco_loss.py`` (methods.md 4.5). For one image with target
crops t, base crops b, overlap proportions ``y_tb`` (rows sum to 1) and predicted similarities
``s_tb = ReLU(cos(e_t, e_b))`` in [0, 1]:

    L_pos = sum_{t,b} y_tb * -log(1 - |y_tb - s_tb| + 1e-6) / (sum_{t,b} y_tb + 1e-6)
    L_neg = sum_{t,b: y_tb = 0} s_tb^2 / (#{y_tb = 0} + 1e-6)
    L_reg = 2 / (N (N - 1)) * sum_{b < b'} ReLU(cos(e_b, e_b'))^q         (q = 1 upstream nnssl, 2 VoCo code)

Each term is averaged over the images of the batch; all in fp32.

What shows learning (the loss alone does not: a content-free constant similarity s_tb = c reaches a low L_pos + L_neg,
documentation/contrastive.md): :func:`position_hit_rate`, the fraction of targets whose most similar base crop is the
base they overlap most (chance 1/N for N bases), and :func:`overlap_correlation`, Pearson's r between predicted
similarities and true overlaps over all (t, b) pairs of a batch (0 for a constant prediction).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def relu_cosine(targets: torch.Tensor, bases: torch.Tensor) -> torch.Tensor:
    """(B, T, D) x (B, N, D) -> (B, T, N): ``ReLU(cos(e_t, e_b))`` in fp32."""
    t = F.normalize(targets.float(), dim=-1, eps=1e-6)
    b = F.normalize(bases.float(), dim=-1, eps=1e-6)
    return F.relu(torch.einsum("btd,bnd->btn", t, b))


def voco_prediction_losses(similarity: torch.Tensor, overlap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L_pos, L_neg)`` of (B, T, N) similarities against (B, T, N) overlap proportions, averaged over B."""
    if similarity.shape != overlap.shape:
        raise ValueError(f"similarity {tuple(similarity.shape)} and overlap {tuple(overlap.shape)} must match.")
    s, y = similarity.float(), overlap.float()
    pos = (y * -torch.log(1.0 - (y - s).abs() + 1e-6)).sum(dim=(1, 2)) / (y.sum(dim=(1, 2)) + 1e-6)
    negative = (y == 0).float()
    neg = (negative * s**2).sum(dim=(1, 2)) / (negative.sum(dim=(1, 2)) + 1e-6)
    return pos.mean(), neg.mean()


def voco_regularization(bases: torch.Tensor, power: int = 1) -> torch.Tensor:
    """``L_reg`` of (B, N, D) base embeddings: mean over pairs b < b' of ``ReLU(cos)^power``, averaged over B."""
    n = bases.shape[1]
    if n < 2:
        return bases.new_zeros((), dtype=torch.float32)
    e = F.normalize(bases.float(), dim=-1, eps=1e-6)
    cos = F.relu(torch.einsum("bnd,bmd->bnm", e, e)) ** power
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=bases.device), diagonal=1)
    return cos[:, upper].mean(dim=1).mean()


@torch.no_grad()
def position_hit_rate(similarity: torch.Tensor, overlap: torch.Tensor) -> float:
    """Fraction of targets whose highest similarity is at the base crop of highest overlap (``argmax_b``)."""
    return float((similarity.argmax(dim=-1) == overlap.argmax(dim=-1)).float().mean())


@torch.no_grad()
def overlap_correlation(similarity: torch.Tensor, overlap: torch.Tensor) -> float:
    """Pearson's r between all predicted similarities and true overlaps (0 when either is constant)."""
    s = similarity.float().flatten()
    y = overlap.float().flatten()
    s, y = s - s.mean(), y - y.mean()
    denominator = torch.sqrt((s * s).sum() * (y * y).sum())
    return float((s * y).sum() / denominator) if float(denominator) > 0 else 0.0
