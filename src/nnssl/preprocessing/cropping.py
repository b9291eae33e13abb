"""Crop a case to the bounding box of its nonzero region.

Nonzero = any channel != 0, with holes filled (``scipy.ndimage.binary_fill_holes``) so that zero voxels enclosed
by the object (e.g. dark structures inside a skull-stripped brain) count as foreground. Masks are cropped with the
same box and keep their values (no -1 fill outside the nonzero region, unlike upstream; see upstream bug B9).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def nonzero_mask(data: np.ndarray) -> np.ndarray:
    """Boolean (X, Y, Z) mask of voxels where any channel of ``data`` (C, X, Y, Z) is nonzero, holes filled."""
    mask = np.any(data != 0, axis=0)
    return ndimage.binary_fill_holes(mask)


def bounding_box(mask: np.ndarray) -> list[list[int]] | None:
    """``[[lo, hi), ...]`` per axis of the True voxels of ``mask``; None if ``mask`` is empty."""
    if not mask.any():
        return None
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append([int(hits[0]), int(hits[-1]) + 1])
    return box


def crop_to_nonzero(
    data: np.ndarray, masks: dict[str, np.ndarray] | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, list[list[int]]]:
    """Crop ``data`` (C, X, Y, Z) and ``masks`` (1, X, Y, Z each) to the nonzero bounding box.

    Returns the cropped data, cropped masks, the cropped foreground mask (X, Y, Z) and the box. Raises
    ValueError when the image has no nonzero voxel (an empty image cannot be pre-trained on).
    """
    foreground = nonzero_mask(data)
    box = bounding_box(foreground)
    if box is None:
        raise ValueError("the image is empty: every voxel is 0, so there is no foreground to crop to")
    region = tuple(slice(lo, hi) for lo, hi in box)
    cropped = np.ascontiguousarray(data[(slice(None), *region)])
    cropped_masks = {k: np.ascontiguousarray(m[(slice(None), *region)]) for k, m in (masks or {}).items()}
    return cropped, cropped_masks, foreground[region], box
