"""Reconstruction losses for masked image modelling.

Masked MSE (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners"; nnssl's MAE on z-scored
intensities, Wald et al. 2025 OpenMind): ``L = sum((xhat - x)^2 * M) / sum(M)`` with ``M = 1`` on masked
voxels and 0 on visible ones, so only what the network could not see is scored. Computed in fp32.

Normalised targets (MAE's ``norm_pix_loss``, He et al. 2022 sec. 4.1): every mask unit (a ``u``^3 cube) of the
target is standardised on its own, ``x_hat = (x - mean_u(x)) / sqrt(var_u(x) + 1e-6)`` per channel
(:func:`per_unit_normalized`), so the loss weighs local structure rather than absolute intensity.
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


def per_unit_normalized(target: torch.Tensor, unit_size: int, eps: float = 1e-6) -> torch.Tensor:
    """(B, C, X, Y, Z) -> the same shape with every ``unit_size``^3 cube standardised per channel (fp32).

    ``(x - mean) / sqrt(var + eps)`` with the biased variance over the cube's voxels; sides must be multiples of
    ``unit_size``.
    """
    b, c, *sizes = target.shape
    if any(s % unit_size for s in sizes):
        raise ValueError(f"Target sides {sizes} are not multiples of the unit {unit_size}.")
    g = [s // unit_size for s in sizes]
    u = unit_size
    cubes = target.float().reshape(b, c, g[0], u, g[1], u, g[2], u)
    mean = cubes.mean(dim=(3, 5, 7), keepdim=True)
    var = cubes.var(dim=(3, 5, 7), unbiased=False, keepdim=True)
    return ((cubes - mean) / torch.sqrt(var + eps)).reshape(target.shape)
