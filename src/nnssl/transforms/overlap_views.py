"""AlignedMAE (CVA) views: a sampled base patch -> two overlapping crops and the relative boxes of their overlap.

Vaish et al. 2025, "Consistent View Alignment Improves Foundation Models for 3D Medical Image Segmentation"
(arXiv 2509.13846), methods.md 1.2-1.3.

1. The sampler delivers the base patch (``train.patch_size``) with the *shared* spatial augmentation already
   applied (rotation/scale/mirroring of ``cfg.data``), so both views see the same geometry.
2. Total volumetric overlap ``t ~ U(t_min, t_max)`` (0.4, 0.8), split over the axes by a Dirichlet draw
   ``w ~ Dir(1, 1, 1)``: ``f_d = t^{w_d}``, hence ``prod_d f_d = t`` and ``f_d in [t, 1]``.
3. :func:`nnssl.transforms.views.overlapping_pair` places the crops (crop 1 lower on every axis,
   ``start2 = start1 + p - o`` with ``o_d = round(p_d f_d)``) and gives each crop's box of the overlap in its
   own [0, 1] coordinates, ordered by array axis ``(lo0, lo1, lo2, hi0, hi1, hi2)``.
   If the base patch is too small for the drawn overlap on some axis (``2 p - o > base``), ``(t, w)`` is
   drawn again; the reference instead fell back to two identical crops whose boxes still claimed a partial
   overlap (methods.md 1.7 item 3). :func:`min_base_size` gives the base that never needs a redraw
   (205 for 128^3 crops, 256 for 160^3, with t >= 0.4).
4. Each crop gets its own independent intensity augmentation
   (:class:`nnssl.transforms.intensity.IntensityAugmentation`).

Output: ``{"views": float32 (2, C, p0, p1, p2), "boxes": float32 (2, 6)}`` plus ``"clean"`` (the two crops
before intensity augmentation) when ``return_clean``. The method stacks the collated views as
``[view 1 of images 0..B-1 ; view 2 of images 0..B-1]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nnssl.transforms.intensity import IntensityAugmentation
from nnssl.transforms.views import crop, overlap_lengths, overlapping_pair

MAX_DRAWS = 1000


def sample_overlap_fractions(
    rng: np.random.Generator, t_range: tuple[float, float] = (0.4, 0.8)
) -> tuple[float, tuple[float, float, float]]:
    """``(t, f)``: ``t ~ U(t_range)``, ``f_d = t^{w_d}`` with ``w ~ Dir(1, 1, 1)`` (so ``prod f = t``)."""
    t = float(rng.uniform(*t_range))
    w = rng.dirichlet((1.0, 1.0, 1.0))
    return t, tuple(float(t**wd) for wd in w)  # type: ignore[return-value]


def min_base_size(crop_size: Sequence[int], t_min: float) -> tuple[int, int, int]:
    """Smallest base patch per axis that fits every overlap with ``t >= t_min``: ``2 p - round(p t_min)``."""
    return tuple(2 * int(p) - int(round(int(p) * t_min)) for p in crop_size)  # type: ignore[return-value]


def fits(base_shape: Sequence[int], crop_size: Sequence[int], fractions: Sequence[float]) -> bool:
    """Whether two crops overlapping by ``fractions`` fit into ``base_shape`` on every axis."""
    lengths = overlap_lengths(crop_size, fractions)
    return all(2 * int(p) - o <= int(b) for p, o, b in zip(crop_size, lengths, base_shape))


class OverlapViews:
    """Per-sample transform: base patch -> two overlapping, independently intensity-augmented crops + boxes.

    ``deterministic=True`` (validation) uses ``t`` = the middle of ``t_range`` split equally over the axes,
    centred crops and no intensity augmentation.
    """

    def __init__(
        self,
        crop_size: Sequence[int],
        t_range: tuple[float, float] = (0.4, 0.8),
        intensity: IntensityAugmentation | None = None,
        return_clean: bool = False,
        deterministic: bool = False,
    ) -> None:
        self.crop_size = tuple(int(p) for p in crop_size)
        if len(self.crop_size) != 3:
            raise ValueError(f"crop_size must have 3 entries, got {list(crop_size)}.")
        if not 0.0 < t_range[0] <= t_range[1] <= 1.0:
            raise ValueError(f"The overlap range must satisfy 0 < t_min <= t_max <= 1, got {list(t_range)}.")
        self.t_range = (float(t_range[0]), float(t_range[1]))
        self.intensity = intensity if intensity is not None else IntensityAugmentation()
        self.return_clean = return_clean
        self.deterministic = deterministic

    def draw(self, base_shape: Sequence[int], rng: np.random.Generator) -> tuple[float, tuple[float, float, float]]:
        """``(t, f)`` that fit ``base_shape``; redrawn until they do (error after :data:`MAX_DRAWS` tries)."""
        if self.deterministic:
            t = 0.5 * (self.t_range[0] + self.t_range[1])
            f = (t ** (1 / 3),) * 3
            if fits(base_shape, self.crop_size, f):
                return t, f  # type: ignore[return-value]
        else:
            for _ in range(MAX_DRAWS):
                t, f = sample_overlap_fractions(rng, self.t_range)
                if fits(base_shape, self.crop_size, f):
                    return t, f
        raise ValueError(
            f"The sampled patch {list(base_shape)} is too small for two {list(self.crop_size)} crops overlapping "
            f"by t in {list(self.t_range)}; set train.patch_size to at least "
            f"{list(min_base_size(self.crop_size, self.t_range[0]))} (2 * crop - round(crop * t_min))."
        )

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        image = np.asarray(sample["image"], dtype=np.float32)
        base = image.shape[1:]
        rng = np.random.default_rng(0 if self.deterministic else int(np.random.randint(2**31)))
        _, fractions = self.draw(base, rng)
        start1, start2, box1, box2 = overlapping_pair(base, self.crop_size, fractions, rng)
        if self.deterministic:  # centre the pair inside the base
            lengths = overlap_lengths(self.crop_size, fractions)
            start1 = tuple((b - (2 * p - o)) // 2 for b, p, o in zip(base, self.crop_size, lengths))
            start2 = tuple(s + p - o for s, p, o in zip(start1, self.crop_size, lengths))
        clean = [crop(image, start, self.crop_size) for start in (start1, start2)]
        views = clean if self.deterministic else [self.intensity(c) for c in clean]
        out = {
            "views": np.stack(views).astype(np.float32),
            "boxes": np.asarray([box1, box2], dtype=np.float32),
        }
        if self.return_clean:
            out["clean"] = np.stack(clean).astype(np.float32)
        return out
