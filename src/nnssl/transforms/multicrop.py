"""Multi-crop views for DINO: 2 global + L local crops of one sampled patch, each augmented on its own.

Caron et al. 2020 (SwAV multi-crop) / 2021 (DINO); 3D adaptation as methods.md 2.2. For every view
independently: draw a VOLUME fraction ``f ~ U(scale)`` (3DINO/FB style, not AIM's per-side fraction: a
per-side 0.5 is 0.125 of the volume), cut a crop of side ``round(P_d * f^(1/3))`` (same aspect as the
patch, at least 1 voxel) at a uniform random position (:func:`nnssl.transforms.views.random_crop_start`),
flip every axis with probability ``flip_p``, resize it trilinearly to ``global_size`` or ``local_size``
(``torch.nn.functional.interpolate``, ``align_corners=False``) and apply its own
:class:`nnssl.transforms.intensity.IntensityAugmentation` draw. Every view starts from a fresh copy of the
patch (:func:`nnssl.transforms.views.crop` copies), so no view shares state or memory with another.

Output per sample: ``{"global_views": (2, C, G, G, G), "local_views": (L, C, l, l, l)}`` float32 (the
loader's collation adds the batch axis in front). Random draws use numpy's global generator, which the
loader seeds per sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nnssl.transforms.intensity import IntensityAugmentation
from nnssl.transforms.views import crop, random_crop_start


def crop_size_for_volume_fraction(patch_shape: Sequence[int], fraction: float) -> tuple[int, int, int]:
    """Crop sides ``round(P_d * fraction^(1/3))`` (clipped to [1, P_d]): a crop of ~``fraction`` of the volume."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"A crop volume fraction must lie in (0, 1], got {fraction}.")
    side = fraction ** (1.0 / 3.0)
    return tuple(int(min(max(round(p * side), 1), p)) for p in patch_shape)  # type: ignore[return-value]


def resize(view: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Trilinear resize of a (C, X, Y, Z) array to ``size`` (a copy; identity sizes are copied as they are)."""
    size = tuple(int(s) for s in size)
    if tuple(view.shape[1:]) == size:
        return np.array(view, dtype=np.float32, copy=True)
    tensor = torch.from_numpy(np.ascontiguousarray(view, dtype=np.float32))[None]
    return F.interpolate(tensor, size=size, mode="trilinear", align_corners=False)[0].numpy()


@dataclass
class MultiCropTransform:
    """Per-sample DINO views (see the module docstring); ``scale`` ranges are volume fractions of the patch."""

    global_size: tuple[int, int, int] = (96, 96, 96)
    local_size: tuple[int, int, int] = (48, 48, 48)
    num_global: int = 2
    num_local: int = 8
    global_scale: tuple[float, float] = (0.5, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.3)
    flip_p: float = 0.5
    intensity: IntensityAugmentation = field(default_factory=IntensityAugmentation)

    def __post_init__(self) -> None:
        for name in ("global_scale", "local_scale"):
            low, high = getattr(self, name)
            if not 0.0 < low <= high <= 1.0:
                raise ValueError(f"{name} must satisfy 0 < low <= high <= 1 (volume fractions), got ({low}, {high}).")
        if self.num_global < 1 or self.num_local < 0:
            raise ValueError(f"Need >= 1 global and >= 0 local crops, got {self.num_global} and {self.num_local}.")

    def view(self, image: np.ndarray, scale: tuple[float, float], out_size: Sequence[int]) -> np.ndarray:
        """One augmented view of ``image`` (C, X, Y, Z): crop of a random volume fraction, flips, resize, intensity."""
        fraction = float(np.random.uniform(scale[0], scale[1]))
        size = crop_size_for_volume_fraction(image.shape[1:], fraction)
        view = crop(image, random_crop_start(image.shape[1:], size), size)
        flips = [axis + 1 for axis in range(3) if np.random.uniform() < self.flip_p]
        if flips:
            view = np.flip(view, axis=flips)
        return self.intensity(resize(view, out_size))

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        image = np.asarray(sample["image"], dtype=np.float32)
        globals_ = [self.view(image, self.global_scale, self.global_size) for _ in range(self.num_global)]
        out: dict[str, Any] = {"global_views": np.stack(globals_).astype(np.float32)}
        if self.num_local:
            locals_ = [self.view(image, self.local_scale, self.local_size) for _ in range(self.num_local)]
            out["local_views"] = np.stack(locals_).astype(np.float32)
        return out
