"""Image header record, the reading error, and the orientation arithmetic shared by both readers.

Conventions (the same for the SimpleITK and the nibabel reader):

* World coordinates are LPS, as in SimpleITK/ITK/DICOM. A direction matrix is 3x3 with column ``i`` the world
  direction of voxel index axis ``i`` (SimpleITK's ``GetDirection()`` read row-major).
* The *canonical orientation* is the one whose direction matrix is the identity in LPS, i.e. index axes x, y, z
  point to patient Left, Posterior, Superior (``sitk.DICOMOrient(img, "LPS")``).
* Canonical arrays use SimpleITK's ``GetArrayFromImage`` axis order (z, y, x); canonical spacing and shape are given
  in that same array-axis order.
* Orientation codes name the direction each index axis points to (nibabel's ``aff2axcodes`` convention):
  a RAS file has x pointing Right, y Anterior, z Superior.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
CANONICAL_ORIENTATION = "LPS"


class ImageReadError(RuntimeError):
    """An image file that cannot be read (or is not a single 3D volume); ``path`` and ``reason`` say why."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"Cannot read image '{self.path}': {reason}")

    def __reduce__(self) -> tuple:
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True)
class ImageHeader:
    """What the header of one image file says, without its voxels.

    ``spacing`` and ``shape`` are in canonical array-axis order (z, y, x of the LPS-canonical image, see the module
    docstring); ``shape`` is spatial only. ``direction`` (9 floats, row-major), ``origin`` and ``orientation`` describe
    the file as stored. ``reader`` is "SimpleITK" or "nibabel" (the fallback for files SimpleITK refuses).
    """

    path: str
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    num_channels: int
    dtype: str
    orientation: str
    direction: tuple[float, ...]
    origin: tuple[float, float, float]
    reader: str


def ras_affine(direction: Sequence[float], spacing: Sequence[float], origin: Sequence[float]) -> np.ndarray:
    """The 4x4 voxel-to-RAS affine (nibabel convention) of an LPS direction/spacing/origin triple."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ d @ np.diag(np.asarray(spacing, dtype=float))
    affine[:3, 3] = LPS_TO_RAS @ np.asarray(origin, dtype=float)
    return affine


def orientation_code(affine: np.ndarray) -> str:
    """Three-letter code of the direction each index axis points to, e.g. "RAS" or "LSA"."""
    from nibabel import orientations  # nibabel loads scipy: not at import (console scripts start fast)

    return "".join(orientations.aff2axcodes(affine))


def canonical_transform(affine: np.ndarray) -> np.ndarray:
    """nibabel orientation transform (rows: input axis -> [output axis, flip]) to the canonical LPS orientation.

    Uses the closest axis-aligned orientation, so oblique and slightly non-orthonormal affines map to their
    nearest permutation/flip.
    """
    from nibabel import orientations

    canonical = orientations.axcodes2ornt(tuple(CANONICAL_ORIENTATION))
    return orientations.ornt_transform(orientations.io_orientation(affine), canonical)


def to_canonical_order(values_xyz: Sequence[float], transform: np.ndarray) -> tuple:
    """Per-index-axis values of the file (x, y, z) rearranged to canonical array-axis order (z, y, x)."""
    out: list = [None, None, None]
    for axis in range(3):
        out[int(transform[axis, 0])] = values_xyz[axis]
    return tuple(reversed(out))
