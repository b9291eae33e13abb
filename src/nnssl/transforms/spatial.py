"""Spatial augmentation that knows the region it needs: rotation, isotropic scaling and mirroring of a patch.

Upstream MAE (``SpatialTransform`` of batchgenerators) draws, per sample, a rotation of up to +-30 degrees about
every axis with probability 0.2 and an isotropic scale in (0.7, 1.4) with probability 0.2, and mirrors each axis
with probability 0.5. It does so by cropping a fixed, rotation-safe 257^3 region for every sample. Here the
parameters are drawn *before* reading (:func:`draw_spatial_params`), and :func:`source_region` gives the smallest
box of the volume that the transformed patch touches, so samples that are neither rotated nor scaled read exactly
the patch.

Coordinates: an output voxel ``o`` (0..p-1 per axis) is taken from the input coordinate
``x = c + A (o - (p - 1) / 2)`` with ``A = R * s`` (``R = Rz Ry Rx``) and ``c`` the patch centre in the volume.
``s > 1`` samples a larger region (the content shrinks), as batchgenerators does.

Interpolation: orders 0 (masks, nearest) and 1 (trilinear, the default for images, as nnU-Net's
batchgeneratorsv2) run through one ``torch.nn.functional.grid_sample`` call per array (float32, no prefilter):
on one CPU thread it measured 1.4x cheaper than ``scipy.ndimage.affine_transform`` and 1.7x cheaper than
``map_coordinates`` for a 160^3 patch of a rotated and scaled 249x283x255 region, with results equal to 4e-6
(``benchmarks/loader_throughput.py``). The same call runs on the training device when
``data.spatial_augmentation_device=cuda`` (:func:`resample_region_torch` with a CUDA tensor). Order 3 (upstream
nnssl's cubic spline, batchgenerators v1) uses scipy's ``affine_transform`` and costs several times more.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

SPLINE_MARGIN = 2  # voxels beyond the transformed corners that an order-3 spline reads


@dataclass(frozen=True)
class SpatialParams:
    """The spatial augmentation drawn for one sample."""

    angles: tuple[float, float, float] | None = None  # radians about axes 0, 1, 2; None = not rotated
    scale: float | None = None  # None = not scaled
    mirror: tuple[bool, bool, bool] = (False, False, False)

    @property
    def is_identity_map(self) -> bool:
        """Whether the patch is read unresampled (mirroring does not resample)."""
        return self.angles is None and self.scale is None

    def matrix(self) -> np.ndarray:
        """The 3x3 matrix ``A`` mapping centred output coordinates to input coordinates."""
        a = np.eye(3)
        if self.angles is not None:
            a = rotation_matrix(self.angles)
        if self.scale is not None:
            a = a * self.scale
        return a


def rotation_matrix(angles: Sequence[float]) -> np.ndarray:
    """``Rz @ Ry @ Rx`` for rotations (radians) about array axes 0, 1 and 2."""
    ax, ay, az = (float(a) for a in angles)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def draw_spatial_params(
    rng: np.random.Generator,
    rotation_p: float,
    rotation_max_degrees: float,
    scale_p: float,
    scale_range: Sequence[float],
    mirror_axes: Sequence[int],
) -> SpatialParams:
    """Draw rotation (p=``rotation_p``, uniform in +-max per axis), scale (p=``scale_p``) and mirroring (p=0.5)."""
    angles = None
    if rng.random() < rotation_p:
        limit = math.radians(rotation_max_degrees)
        angles = tuple(float(a) for a in rng.uniform(-limit, limit, size=3))
    scale = float(rng.uniform(scale_range[0], scale_range[1])) if rng.random() < scale_p else None
    flips = rng.random(3) < 0.5
    mirror = tuple(bool(flips[ax]) and ax in tuple(mirror_axes) for ax in range(3))
    return SpatialParams(angles=angles, scale=scale, mirror=mirror)


def source_region(
    centre: Sequence[float], patch_size: Sequence[int], params: SpatialParams
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Half-open box ``(lo, hi)`` of input voxels needed to produce the patch centred at ``centre``.

    Without rotation/scale this is exactly the patch. Otherwise it is the bounding box of the eight transformed
    patch corners plus :data:`SPLINE_MARGIN` voxels for the interpolation kernel.
    """
    p = np.asarray(patch_size, dtype=float)
    c = np.asarray(centre, dtype=float)
    half = (p - 1) / 2
    if params.is_identity_map:
        lo = np.round(c - half).astype(int)
        return tuple(int(v) for v in lo), tuple(int(v) for v in lo + p.astype(int))
    corners = np.array(np.meshgrid(*[[-h, h] for h in half], indexing="ij")).reshape(3, -1)
    mapped = params.matrix() @ corners + c[:, None]
    lo = np.floor(mapped.min(axis=1)).astype(int) - SPLINE_MARGIN
    hi = np.ceil(mapped.max(axis=1)).astype(int) + 1 + SPLINE_MARGIN
    return tuple(int(v) for v in lo), tuple(int(v) for v in hi)


def read_region(array, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
    """``array[:, lo:hi]`` for a (C, X, Y, Z) array-like, zero-padded where the box leaves the volume.

    Only the part of the box inside the volume is sliced from ``array`` (one slicing call), so a lazy blosc2
    array decompresses only the chunks it touches; a box inside the volume is returned as decoded (no copy).
    """
    shape = array.shape[1:]
    inner_lo = [max(0, int(a)) for a in lo]
    inner_hi = [min(int(s), int(b)) for s, b in zip(shape, hi)]
    if inner_lo == [int(a) for a in lo] and inner_hi == [int(b) for b in hi]:
        return np.asarray(array[:, inner_lo[0] : inner_hi[0], inner_lo[1] : inner_hi[1], inner_lo[2] : inner_hi[2]])
    out = np.zeros((array.shape[0], *[int(b) - int(a) for a, b in zip(lo, hi)]), dtype=array.dtype)
    if all(b > a for a, b in zip(inner_lo, inner_hi)):
        block = array[:, inner_lo[0] : inner_hi[0], inner_lo[1] : inner_hi[1], inner_lo[2] : inner_hi[2]]
        dst = tuple(slice(a - int(o), b - int(o)) for a, b, o in zip(inner_lo, inner_hi, lo))
        out[(slice(None), *dst)] = np.asarray(block)
    return out


def affine_theta(
    region_shape: Sequence[int],
    region_lo: Sequence[int],
    centre: Sequence[float],
    patch_size: Sequence[int],
    params: SpatialParams,
    fold_mirror: bool = False,
) -> np.ndarray:
    """The (3, 4) ``theta`` of ``F.affine_grid(..., align_corners=True)`` for a region read at ``region_lo``.

    Output voxel ``o`` samples region coordinate ``x = A (o - h) + c - lo`` with ``h = (p - 1) / 2``. In the
    normalised coordinates of ``affine_grid`` (``u = o / h - 1`` for the output, ``g = x / s - 1`` with
    ``s = (S - 1) / 2`` for a region of size ``S``) this is ``g = diag(1/s) A diag(h) u + (c - lo) / s - 1``; the
    axes are reversed because ``grid_sample`` orders them (x, y, z) = (W, H, D). With ``fold_mirror`` the
    mirroring of ``params`` is folded in (a flipped output axis ``k`` negates column ``k`` of ``A``), so the
    resampled patch needs no separate flip.
    """
    matrix = params.matrix()
    if fold_mirror:
        matrix = matrix * np.where(params.mirror, -1.0, 1.0)[None, :]
    h = (np.asarray(patch_size, dtype=float) - 1) / 2
    s = np.maximum((np.asarray(region_shape, dtype=float) - 1) / 2, 0.5)
    linear = matrix * h[None, :] / s[:, None]
    offset = (np.asarray(centre, dtype=float) - np.asarray(region_lo, dtype=float)) / s - 1
    return np.concatenate([linear[::-1, ::-1], offset[::-1, None]], axis=1)


def resample_region_torch(
    region: torch.Tensor, theta: np.ndarray, patch_size: Sequence[int], nearest: bool
) -> torch.Tensor:
    """Resample a (C, *box) region into (C, *patch_size) with one ``grid_sample`` call (zeros outside).

    Trilinear, or nearest for masks (``nearest``); computed in float32 on ``region``'s device and returned in
    ``region``'s dtype.
    """
    grid = F.affine_grid(
        torch.as_tensor(theta, dtype=torch.float32, device=region.device)[None],
        [1, region.shape[0], *[int(p) for p in patch_size]],
        align_corners=True,
    )
    out = F.grid_sample(
        region[None].to(torch.float32),
        grid,
        mode="nearest" if nearest else "bilinear",
        padding_mode="zeros",
        align_corners=True,
    )[0]
    return out.to(region.dtype)


def resample_patch(
    region: np.ndarray,
    region_lo: Sequence[int],
    centre: Sequence[float],
    patch_size: Sequence[int],
    params: SpatialParams,
    order: int,
) -> np.ndarray:
    """Resample a (C, ...) region read at ``region_lo`` into a (C, *patch_size) patch (zero outside).

    ``order`` 0 is nearest and 1 trilinear (one torch ``grid_sample`` call on the CPU), 3 a cubic spline (scipy's
    ``affine_transform``). The result has the region's dtype.
    """
    if order in (0, 1):
        theta = affine_theta(region.shape[1:], region_lo, centre, patch_size, params)
        source = torch.from_numpy(np.ascontiguousarray(region))
        return resample_region_torch(source, theta, patch_size, nearest=order == 0).numpy()
    if order != 3:
        raise ValueError(f"Interpolation order {order} is not supported; use 0, 1 (trilinear) or 3 (cubic).")
    matrix = params.matrix()
    half = (np.asarray(patch_size, dtype=float) - 1) / 2
    offset = np.asarray(centre, dtype=float) - np.asarray(region_lo, dtype=float) - matrix @ half
    out = np.empty((region.shape[0], *patch_size), dtype=region.dtype)
    for ch in range(region.shape[0]):
        ndimage.affine_transform(
            region[ch],
            matrix,
            offset=offset,
            output_shape=tuple(patch_size),
            output=out[ch],
            order=order,
            mode="constant",
            cval=0.0,
        )
    return out


def mirror(array: np.ndarray, flips: Sequence[bool], copy: bool = True) -> np.ndarray:
    """Flip the spatial axes of a (C, X, Y, Z) array where ``flips`` is True.

    ``copy=False`` returns a view with negative strides (the copy is then left to whoever stacks the batch).
    """
    axes = tuple(i + 1 for i, f in enumerate(flips) if f)
    if not axes:
        return array
    flipped = np.flip(array, axis=axes)
    return np.ascontiguousarray(flipped) if copy else flipped
