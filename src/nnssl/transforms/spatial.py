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

Interpolation (``scipy.ndimage.affine_transform``): order 1 (trilinear) is the default for images, as nnU-Net's
current augmentation (batchgeneratorsv2, trilinear ``grid_sample``) does; order 3 (upstream nnssl's cubic spline,
batchgenerators v1) costs several times more per sample; masks use order 0. On the CPU scipy's trilinear path
measured about 5x faster than torch's 3D ``grid_sample`` for a 160^3 patch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
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
    array decompresses only the chunks it touches.
    """
    shape = array.shape[1:]
    inner_lo = [max(0, int(a)) for a in lo]
    inner_hi = [min(int(s), int(b)) for s, b in zip(shape, hi)]
    out = np.zeros((array.shape[0], *[int(b) - int(a) for a, b in zip(lo, hi)]), dtype=array.dtype)
    if all(b > a for a, b in zip(inner_lo, inner_hi)):
        block = array[:, inner_lo[0] : inner_hi[0], inner_lo[1] : inner_hi[1], inner_lo[2] : inner_hi[2]]
        dst = tuple(slice(a - int(o), b - int(o)) for a, b, o in zip(inner_lo, inner_hi, lo))
        out[(slice(None), *dst)] = np.asarray(block)
    return out


def resample_patch(
    region: np.ndarray,
    region_lo: Sequence[int],
    centre: Sequence[float],
    patch_size: Sequence[int],
    params: SpatialParams,
    order: int,
) -> np.ndarray:
    """Resample a (C, ...) region read at ``region_lo`` into a (C, *patch_size) patch (zero outside).

    ``order`` 0 is nearest, 1 trilinear, 3 a cubic spline (scipy's ``affine_transform``).
    """
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


def mirror(array: np.ndarray, flips: Sequence[bool]) -> np.ndarray:
    """Flip the spatial axes of a (C, X, Y, Z) array where ``flips`` is True."""
    axes = tuple(i + 1 for i, f in enumerate(flips) if f)
    return np.ascontiguousarray(np.flip(array, axis=axes)) if axes else array
