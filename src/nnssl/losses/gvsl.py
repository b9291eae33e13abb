"""GVSL's losses (He et al. 2023, "Geometric Visual Similarity Learning in 3D Medical Image Self-supervised
Pre-training", CVPR; methods.md 4.9): local normalised cross-correlation and the smoothness of a displacement.

Local NCC over windows of ``w^3`` voxels (VoxelMorph's form, as the GVSL code and upstream nnssl):

    cc(p) = cross(p)^2 / (var_I(p) var_J(p) + eps),   L_ncc = 1 - mean_p cc(p)

with ``cross = sum_W IJ - sum_W I sum_W J / n``, ``var_I = sum_W I^2 - (sum_W I)^2 / n`` over the ``n`` voxels of
the window that lie inside the volume. Both are computed in fp32 with autocast off: in fp16 the window sums of
squares overflow and the differences cancel (upstream: "NCC loss tends to get NANs with float16"). Departure: the
reference pads with zeros and divides by ``w^3`` at the border as well, so ``NCC(I, aI + b)`` is not perfect near
the border for ``b != 0``; here the border windows use only the voxels inside, and ``cc = 1`` wherever the window
has variance (``L_ncc(I, aI + b) = L_ncc(I, I)`` for ``a > 0``).

Smoothness of a displacement ``u`` (B, 3, X, Y, Z): ``L_smooth = (1/3) sum_axes mean((u[i+1] - u[i])^2)``, the
mean over every channel and position of the squared forward difference along each axis.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Added to ``var_I var_J`` (GVSL code, upstream).
NCC_EPS = 1e-5


def local_ncc(fixed: torch.Tensor, moving: torch.Tensor, window: int = 9, eps: float = NCC_EPS) -> torch.Tensor:
    """(B, C, X, Y, Z) map of the squared local correlation ``cc`` of ``fixed`` and ``moving``, in fp32."""
    if fixed.shape != moving.shape:
        raise ValueError(f"NCC needs two images of one shape, got {tuple(fixed.shape)} and {tuple(moving.shape)}.")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"The NCC window must be an odd number of voxels, got {window}.")
    with torch.autocast(device_type=fixed.device.type, enabled=False):
        # a constant shift per image leaves cc unchanged; removing the mean keeps the one-pass variance accurate
        i, j = (v.float() - v.float().mean(dim=(2, 3, 4), keepdim=True) for v in (fixed, moving))
        pad = window // 2

        def mean(x: torch.Tensor) -> torch.Tensor:  # mean over the voxels of the window inside the volume
            return F.avg_pool3d(x, window, stride=1, padding=pad, count_include_pad=False)

        ones = torch.ones_like(i[:1, :1])
        count = F.avg_pool3d(ones, window, stride=1, padding=pad, count_include_pad=True) * float(window**3)
        m_i, m_j = mean(i), mean(j)
        cross = count * (mean(i * j) - m_i * m_j)
        var_i = (count * (mean(i * i) - m_i * m_i)).clamp_min(0.0)
        var_j = (count * (mean(j * j) - m_j * m_j)).clamp_min(0.0)
        return cross * cross / (var_i * var_j + eps)


def ncc_loss(fixed: torch.Tensor, moving: torch.Tensor, window: int = 9, eps: float = NCC_EPS) -> torch.Tensor:
    """``1 - mean(cc)`` (see the module docstring); 0 for identical textured images, 1 when either is constant."""
    return 1.0 - local_ncc(fixed, moving, window, eps).mean()


def smoothness_loss(displacement: torch.Tensor) -> torch.Tensor:
    """``(1/3) sum_axes mean(forward difference^2)`` of a (B, 3, X, Y, Z) displacement, in fp32."""
    with torch.autocast(device_type=displacement.device.type, enabled=False):
        u = displacement.float()
        total = u.new_zeros(())
        for axis in (2, 3, 4):
            if u.shape[axis] > 1:
                total = total + torch.diff(u, dim=axis).pow(2).mean()
        return total / 3.0
