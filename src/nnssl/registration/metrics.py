"""Quality of a deformation: the spread of the log Jacobian determinant and folding.

For the mapping ``phi(x) = x + u(x)`` on a voxel grid (``u`` in voxels, array-axis order), the Jacobian
``J = I + grad u`` is taken with central differences in the interior and one-sided ones at the border
(``numpy.gradient``); its determinant does not depend on the voxel spacing. Learn2Reg's conventions:

* ``SDlogJ = std(log(clip(det J, 1e-9, 1e9)))`` over the interior voxels (a one-voxel border is left out),
* folding fraction = share of interior voxels with ``det J <= 0`` (the map is not locally invertible there),

Dice of warped labels uses :func:`nnssl.evaluation.probes.dice_per_label`.
"""

from __future__ import annotations

import numpy as np
import torch


def jacobian_determinant(displacement: torch.Tensor | np.ndarray) -> np.ndarray:
    """(X, Y, Z) det(I + grad u) of a displacement (3, X, Y, Z) in voxels."""
    u = displacement.detach().cpu().double().numpy() if torch.is_tensor(displacement) else np.asarray(displacement)
    u = u.astype(np.float64, copy=False)
    if u.ndim != 4 or u.shape[0] != 3:
        raise ValueError(f"a displacement must be (3, X, Y, Z), got {u.shape}")
    grads = np.empty((3, 3) + u.shape[1:])
    for i in range(3):
        parts = np.gradient(u[i], axis=(0, 1, 2)) if min(u.shape[1:]) > 1 else [np.zeros(u.shape[1:])] * 3
        for j in range(3):
            grads[i, j] = parts[j] + (1.0 if i == j else 0.0)
    a, b, c = grads[0], grads[1], grads[2]
    return a[0] * (b[1] * c[2] - b[2] * c[1]) - a[1] * (b[0] * c[2] - b[2] * c[0]) + a[2] * (b[0] * c[1] - b[1] * c[0])


def _interior(volume: np.ndarray) -> np.ndarray:
    if min(volume.shape) <= 2:
        return volume
    return volume[1:-1, 1:-1, 1:-1]


def deformation_quality(displacement: torch.Tensor | np.ndarray) -> dict[str, float]:
    """``{"sdlogj", "folding_fraction", "positive_jacobian_fraction"}`` of a displacement (3, X, Y, Z)."""
    det = _interior(jacobian_determinant(displacement))
    log_det = np.log(np.clip(det, 1e-9, 1e9))
    return {
        "sdlogj": float(log_det.std()),
        "folding_fraction": float((det <= 0).mean()),
        "positive_jacobian_fraction": float((det > 0).mean()),
    }


__all__ = ["deformation_quality", "jacobian_determinant"]
