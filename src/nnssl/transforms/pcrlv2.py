"""PCRLv2's views (Zhou et al. 2023, TPAMI; upstream nnssl ``PCLRv2Transform``; methods.md 4.10).

Per sampled patch (upstream: 180^3):

1. Two **global** boxes A and B: a size pair drawn uniformly from the pairs of ``global_crop_sizes`` whose best
   possible IoU (one box nested in the other on every axis) reaches ``min_iou``; a "big box" per axis of side
   ``s_A + s_B - ceil((V_A + V_B) iou / ((1 + iou) area_other))`` (upstream's bound, capped by the patch) at a random
   position; A and B uniformly inside it, B redrawn until ``IoU(A, B) >= min_iou``. After ``max_tries`` draws B is
   placed nested with A on every axis (centred on A, clipped to the patch), which reaches the pair's best IoU, so
   the constraint always holds.
2. ``num_locals`` **local** boxes, sizes drawn from ``local_crop_sizes``, uniformly inside the union box of A and B.
3. Every box becomes a view of ``global_size`` / ``local_size`` by ONE trilinear resampling of the patch
   (``affine_grid`` / ``grid_sample``, zeros outside): the box, rotated by ``U(-r, r)`` about each axis and scaled by
   ``1 / U(scale)`` (upstream's SpatialTransform after the resize), resized to the view size, then mirrored per axis
   with p 0.5. Without rotation, scale and mirror and with view size = box size it is the crop itself.
4. The restoration target is the spatially transformed global A **before** intensity augmentation; every view
   then gets its own intensity augmentation (Gaussian noise std ``U(noise_std)``, Gaussian blur ``U(blur_sigma)``,
   gamma ``U(gamma_range)``, each with p 1 as upstream's batchgenerators transforms), which returns a NEW array
   (:class:`nnssl.transforms.intensity.IntensityAugmentation`): upstream hands the same array to in-place noise/blur/
   gamma transforms, so its "clean" target is the augmented input and restoration degenerates to auto-encoding.

Boxes are ``(start, size)`` per array axis of the patch. Sample output: ``global_clean`` (C, *G), ``global_views``
(2, C, *G) (A then B, augmented), ``local_views`` (L, C, *l); the boxes under ``global_boxes`` (2, 2, 3) and
``local_boxes`` (L, 2, 3) (start, size).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from nnssl.transforms.intensity import IntensityAugmentation

Size3 = tuple[int, int, int]
Box = tuple[Size3, Size3]  # (start, size)


def parse_size(text: str) -> Size3:
    """``"128x128x96"`` -> (128, 128, 96); a single number is a cube."""
    parts = [int(p) for p in str(text).lower().replace(" ", "").split("x")]
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or any(p <= 0 for p in parts):
        raise ValueError(f"A crop size must be 'XxYxZ' (or one side) with positive sides, got {text!r}.")
    return tuple(parts)  # type: ignore[return-value]


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    overlap = [max(0, min(sa + na, sb + nb) - max(sa, sb)) for sa, na, sb, nb in zip(a[0], a[1], b[0], b[1])]
    inter = math.prod(overlap)
    return inter / (math.prod(a[1]) + math.prod(b[1]) - inter)


def best_iou(size_a: Size3, size_b: Size3) -> float:
    """The largest IoU two boxes of these sizes can reach (nested on every axis)."""
    inter = math.prod(min(a, b) for a, b in zip(size_a, size_b))
    return inter / (math.prod(size_a) + math.prod(size_b) - inter)


def feasible_pairs(sizes: Sequence[Size3], min_iou: float) -> list[tuple[Size3, Size3]]:
    """The size pairs (with repetition) whose best IoU reaches ``min_iou`` (upstream's filter)."""
    return [(a, b) for a, b in itertools.combinations_with_replacement(sizes, 2) if best_iou(a, b) >= min_iou]


def big_box(patch: Size3, size_a: Size3, size_b: Size3, min_iou: float) -> Box:
    """Upstream's region for drawing A and B: per axis the smallest intersection that still allows ``min_iou``
    when the other two axes overlap fully, ``side = s_A + s_B - that``, capped by the patch; random position."""
    volume = math.prod(size_a) + math.prod(size_b)
    full = [min(a, b) for a, b in zip(size_a, size_b)]
    sides = []
    for axis in range(3):
        area = math.prod(full[k] for k in range(3) if k != axis)
        needed = math.ceil(volume * min_iou / ((1.0 + min_iou) * area))
        side = size_a[axis] + size_b[axis] - needed
        sides.append(int(min(patch[axis], max(side, size_a[axis], size_b[axis]))))
    start = tuple(int(np.random.randint(0, p - s + 1)) for p, s in zip(patch, sides))
    return start, tuple(sides)  # type: ignore[return-value]


def random_inner(region: Box, size: Size3) -> Box:
    """A box of ``size`` at a uniformly random position inside ``region``."""
    start = tuple(int(o + np.random.randint(0, n - s + 1)) for o, n, s in zip(region[0], region[1], size))
    return start, tuple(size)  # type: ignore[return-value]


def nested_with(anchor: Box, size: Size3, patch: Size3) -> Box:
    """A box of ``size`` centred on ``anchor`` and clipped to the patch: nested with it on every axis."""
    start = tuple(
        int(min(max(a0 + (an - s) // 2, 0), p - s)) for a0, an, s, p in zip(anchor[0], anchor[1], size, patch)
    )
    return start, tuple(size)  # type: ignore[return-value]


def union_box(a: Box, b: Box) -> Box:
    lo = tuple(min(sa, sb) for sa, sb in zip(a[0], b[0]))
    hi = tuple(max(sa + na, sb + nb) for sa, na, sb, nb in zip(a[0], a[1], b[0], b[1]))
    return lo, tuple(h - low for low, h in zip(lo, hi))  # type: ignore[return-value]


def rotation_matrix(angles: Sequence[float]) -> np.ndarray:
    """``R_z R_y R_x`` for angles (rad) about array axes 0, 1, 2."""
    a, b, c = angles
    r_x = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    r_y = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    r_z = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return r_z @ r_y @ r_x


def box_view(
    patch: torch.Tensor, box: Box, out_size: Size3, rotation: np.ndarray | None = None, zoom: float = 1.0
) -> torch.Tensor:
    """(C, *out_size): the box of ``patch`` (C, X, Y, Z), rotated about its centre by ``rotation`` (3x3, array
    axes) and magnified by ``zoom``, resampled trilinearly (zeros outside the patch)."""
    dims = torch.tensor(patch.shape[1:], dtype=torch.float64)
    start, size = torch.tensor(box[0], dtype=torch.float64), torch.tensor(box[1], dtype=torch.float64)
    centre = 2.0 * (start + size / 2.0) / dims - 1.0
    linear = (
        torch.diag(1.0 / dims)
        @ torch.as_tensor(np.eye(3) if rotation is None else rotation, dtype=torch.float64)
        @ torch.diag(size)
        / zoom
    )
    # affine_grid's coordinates run (last, middle, first) array axis: reverse both sides
    theta = torch.cat([linear.flip(0).flip(1), centre.flip(0)[:, None]], dim=1)[None].float()
    grid = F.affine_grid(theta, [1, patch.shape[0], *out_size], align_corners=False)
    return F.grid_sample(patch[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]


@dataclass
class PCRLv2Views:
    """The per-sample transform (see the module docstring)."""

    global_crop_sizes: Sequence[Size3]
    global_size: Size3
    local_crop_sizes: Sequence[Size3]
    local_size: Size3
    num_locals: int = 6
    min_iou: float = 0.3
    rotation_deg: float = 10.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    mirror: bool = True
    intensity: IntensityAugmentation = field(default_factory=IntensityAugmentation)
    max_tries: int = 1000

    def __post_init__(self) -> None:
        self.pairs = feasible_pairs(self.global_crop_sizes, self.min_iou)
        if not self.pairs:
            raise ValueError(
                f"No pair of method.global_crop_sizes {list(self.global_crop_sizes)} can reach IoU {self.min_iou}."
            )

    def boxes(self, patch: Size3) -> tuple[Box, Box, list[Box]]:
        """``(A, B, locals)`` for a patch of spatial shape ``patch``."""
        size_a, size_b = self.pairs[int(np.random.randint(len(self.pairs)))]
        if np.random.uniform() < 0.5:
            size_a, size_b = size_b, size_a
        region = big_box(patch, size_a, size_b, self.min_iou)
        box_a = random_inner(region, size_a)
        for _ in range(self.max_tries):
            box_b = random_inner(region, size_b)
            if iou(box_a, box_b) >= self.min_iou:
                break
        else:
            box_b = nested_with(box_a, size_b, patch)
        union = union_box(box_a, box_b)
        local_sizes = [
            self.local_crop_sizes[int(np.random.randint(len(self.local_crop_sizes)))] for _ in range(self.num_locals)
        ]
        return box_a, box_b, [random_inner(union, s) for s in local_sizes]

    def spatial(self, patch: torch.Tensor, box: Box, out_size: Size3) -> np.ndarray:
        """One spatially transformed view (rotation, zoom, resize, mirror) as a new float32 array."""
        r = math.radians(self.rotation_deg)
        rotation = rotation_matrix(np.random.uniform(-r, r, size=3)) if r > 0 else None
        zoom = float(np.random.uniform(*self.scale_range))
        view = box_view(patch, box, out_size, rotation, zoom).numpy()
        if self.mirror:
            axes = [1 + a for a in range(3) if np.random.uniform() < 0.5]
            if axes:
                view = np.flip(view, axis=axes)
        return np.ascontiguousarray(view, dtype=np.float32)

    def __call__(self, sample: dict) -> dict:
        image = np.asarray(sample["image"], dtype=np.float32)
        patch = torch.from_numpy(np.ascontiguousarray(image))
        box_a, box_b, locals_ = self.boxes(tuple(int(s) for s in image.shape[1:]))
        clean_a = self.spatial(patch, box_a, self.global_size)
        views = [self.intensity(clean_a), self.intensity(self.spatial(patch, box_b, self.global_size))]
        local_views = [self.intensity(self.spatial(patch, box, self.local_size)) for box in locals_]
        return {
            "global_clean": clean_a,
            "global_views": np.stack(views),
            "local_views": np.stack(local_views),
            "global_boxes": np.array([box_a, box_b], dtype=np.int64),
            "local_boxes": np.array(locals_, dtype=np.int64),
        }
