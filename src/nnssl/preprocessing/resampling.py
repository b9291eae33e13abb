"""Resampling of images and label masks to a target spacing, registered in :data:`RESAMPLERS`.

``new_shape = round(old_spacing / new_spacing * old_shape)`` (:func:`compute_new_shape`). Voxel centres are
mapped as in skimage's ``resize`` (``grid_mode=True``: output voxel i samples input coordinate
``(i + 0.5) * old/new - 0.5``), edges replicated. Spline resizing is linear and separable, so each axis is resized by
one small (new, old) matrix product in float32 (:func:`_interpolation_matrix`): no float64 copy of the volume.

Images use order 3. Masks never gain labels: every label is resampled as a one-hot channel (order 1 by default)
and the output takes the label with the largest value (argmax), so the result contains only the input's labels.

Anisotropic data (max/min spacing > 3, old or new, with exactly one low-resolution axis) is resampled in two
passes as upstream nnssl/nnU-Net do: in-plane with ``order``, then along the low-resolution axis with ``order_z``
(0 = nearest), which avoids ringing of cubic splines across thick slices.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage

from nnssl.registry import Registry

RESAMPLERS: Registry[Callable[..., np.ndarray]] = Registry("resampling function")
ANISO_THRESHOLD = 3.0


def compute_new_shape(
    old_shape: Sequence[int], old_spacing: Sequence[float], new_spacing: Sequence[float]
) -> list[int]:
    """``round(old_spacing / new_spacing * old_shape)`` per axis, at least 1."""
    return [max(1, int(round(float(o) * float(s) / float(n)))) for o, s, n in zip(old_shape, old_spacing, new_spacing)]


def _low_resolution_axis(spacing: Sequence[float]) -> int | None:
    """The single axis whose spacing is the largest when max/min > threshold; None otherwise."""
    spacing = np.asarray(spacing, dtype=float)
    if spacing.max() / spacing.min() <= ANISO_THRESHOLD:
        return None
    axes = np.flatnonzero(spacing == spacing.max())
    return int(axes[0]) if len(axes) == 1 else None


def separate_z_axis(
    current_spacing: Sequence[float], new_spacing: Sequence[float], force_separate_z: bool | None
) -> int | None:
    """The axis to resample separately, or None for one 3D pass (upstream's rule, ANISO_THRESHOLD = 3)."""
    if force_separate_z is not None:
        if not force_separate_z:
            return None
        return int(np.argmax(current_spacing))
    axis = _low_resolution_axis(current_spacing)
    if axis is None:
        axis = _low_resolution_axis(new_spacing)
    return axis


@functools.lru_cache(maxsize=64)
def _interpolation_matrix(old: int, new: int, order: int) -> np.ndarray:
    """The (new, old) float32 matrix of a 1D spline resize: column j = resize of the unit vector e_j.

    Spline resizing is linear and separable, so applying this matrix along each axis equals
    ``scipy.ndimage.zoom(x, order=order, mode="nearest", grid_mode=True)`` without its float64 copy of the volume.
    """
    eye = np.eye(old, dtype=np.float64)
    matrix = ndimage.zoom(eye, (new / old, 1.0), order=order, mode="nearest", grid_mode=True)
    if matrix.shape != (new, old):
        raise RuntimeError(f"interpolation matrix has shape {matrix.shape}, expected {(new, old)}")
    return matrix.astype(np.float32)


def _zoom(x: np.ndarray, new_shape: Sequence[int], order: int) -> np.ndarray:
    """Resize an array to ``new_shape`` with a spline of ``order``, one axis at a time in float32.

    Order 0 (nearest) keeps the input dtype; other orders return float32.
    """
    for axis, new in enumerate(int(s) for s in new_shape):
        old = x.shape[axis]
        if old == new:
            continue
        matrix = _interpolation_matrix(old, new, order)
        if order == 0:
            x = np.take(x, np.argmax(matrix, axis=1), axis=axis)
        else:
            moved = np.tensordot(matrix, x.astype(np.float32, copy=False), axes=([1], [axis]))
            x = np.moveaxis(moved, 0, axis)
    out = np.ascontiguousarray(x)
    return out if order == 0 else out.astype(np.float32, copy=False)


def _resample_channel(
    x: np.ndarray, new_shape: Sequence[int], order: int, order_z: int, axis: int | None
) -> np.ndarray:
    if axis is None:
        return _zoom(x, new_shape, order)
    in_plane = list(new_shape)
    in_plane[axis] = x.shape[axis]
    x = _zoom(x, in_plane, order)
    return _zoom(x, new_shape, order_z)


def _resample_labels(
    seg: np.ndarray, new_shape: Sequence[int], order: int, order_z: int, axis: int | None
) -> np.ndarray:
    labels = np.unique(seg)
    if len(labels) == 1:
        return np.full(new_shape, labels[0], dtype=seg.dtype)
    if order == 0 and (axis is None or order_z == 0):
        return _resample_channel(seg.astype(np.float32), new_shape, 0, 0, axis).astype(seg.dtype)
    best = np.full(new_shape, -np.inf, dtype=np.float32)
    out = np.zeros(new_shape, dtype=seg.dtype)
    for label in labels:
        prob = _resample_channel((seg == label).astype(np.float32), new_shape, order, order_z, axis)
        better = prob > best
        out[better] = label
        best[better] = prob[better]
    return out


@RESAMPLERS.register("resample_data_or_seg_to_shape")
def resample_data_or_seg_to_shape(
    data: np.ndarray,
    new_shape: Sequence[int],
    current_spacing: Sequence[float],
    new_spacing: Sequence[float],
    is_seg: bool = False,
    order: int = 3,
    order_z: int = 0,
    force_separate_z: bool | None = None,
) -> np.ndarray:
    """Resample ``data`` (C, X, Y, Z) to spatial ``new_shape``.

    Images (``is_seg=False``) return float32; label masks (``is_seg=True``) keep their dtype and their label set.
    """
    if data.ndim != 4:
        raise ValueError(f"expected (C, X, Y, Z) data, got shape {data.shape}")
    new_shape = [int(s) for s in new_shape]
    axis = separate_z_axis(current_spacing, new_spacing, force_separate_z)
    if is_seg:
        out = np.empty((data.shape[0], *new_shape), dtype=data.dtype)
        for c in range(data.shape[0]):
            out[c] = _resample_labels(data[c], new_shape, order, order_z, axis)
        return out
    out = np.empty((data.shape[0], *new_shape), dtype=np.float32)
    for c in range(data.shape[0]):
        out[c] = _resample_channel(data[c], new_shape, order, order_z, axis)
    return out
