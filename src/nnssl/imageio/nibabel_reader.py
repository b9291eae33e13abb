"""nibabel reader, the fallback for files SimpleITK refuses (non-orthonormal or otherwise odd affines).

The voxel-to-RAS affine is turned into the LPS direction/spacing/origin that SimpleITK would report
(direction = diag(-1, -1, 1) @ A / |A columns|, spacing = |A columns|), and the array is reoriented with nibabel's
orientation transforms (``io_orientation`` -> ``ornt_transform`` -> ``apply_orientation``) to the same canonical LPS
orientation and (z, y, x) axis order as the SimpleITK reader, so both readers give the same array for the same file.
A sheared affine maps to its closest axis-aligned orientation.
"""

from __future__ import annotations

from typing import Any

import nibabel as nib
import numpy as np
from nibabel import orientations
from nibabel.spatialimages import SpatialImage

from nnssl.imageio.header import (
    LPS_TO_RAS,
    ImageHeader,
    ImageReadError,
    canonical_transform,
    orientation_code,
    to_canonical_order,
)

READER_NAME = "nibabel"


def _load(path: str) -> tuple[SpatialImage, tuple[int, int, int], int]:
    """The lazily loaded image, its spatial shape and its number of channels."""
    image = nib.load(path)
    if not isinstance(image, SpatialImage) or image.affine is None:
        raise RuntimeError(f"nibabel opened it as {type(image).__name__}, which has no voxel-to-world affine")
    shape = tuple(int(s) for s in image.shape)
    if len(shape) == 3:
        return image, shape, 1
    if len(shape) == 4:
        if shape[3] != 1:
            raise ImageReadError(
                path,
                f"4D image with {shape[3]} volumes (shape {list(shape)}); nnssl pre-trains on single 3D volumes. "
                "Split the series into 3D files (one per volume) or remove it from pretrain_data.json.",
            )
        return image, shape[:3], 1
    if len(shape) == 5 and shape[3] == 1:
        return image, shape[:3], shape[4]
    raise ImageReadError(path, f"image of shape {list(shape)} is not a 3D volume (optionally with channels).")


def _geometry(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LPS direction (3x3), spacing and origin of a voxel-to-RAS affine."""
    spacing = nib.affines.voxel_sizes(affine)
    if np.any(spacing <= 0) or not np.all(np.isfinite(affine)):
        raise RuntimeError(f"degenerate affine {affine.tolist()}")
    direction = LPS_TO_RAS @ affine[:3, :3] / spacing
    origin = LPS_TO_RAS @ affine[:3, 3]
    return direction, spacing, origin


def read_header_nibabel(path: str) -> ImageHeader:
    """Header of ``path`` from nibabel without reading voxels."""
    image, shape, channels = _load(path)
    direction, spacing, origin = _geometry(image.affine)
    transform = canonical_transform(image.affine)
    return ImageHeader(
        path=path,
        spacing=tuple(float(s) for s in to_canonical_order(spacing, transform)),
        shape=tuple(int(s) for s in to_canonical_order(shape, transform)),
        num_channels=channels,
        dtype=image.get_data_dtype().newbyteorder("=").name,
        orientation=orientation_code(image.affine),
        direction=tuple(float(d) for d in direction.ravel()),
        origin=tuple(float(o) for o in origin),
        reader=READER_NAME,
    )


def read_canonical_nibabel(path: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Voxels of ``path`` as a (C, z, y, x) array in the file's dtype, reoriented to canonical LPS, and properties."""
    image, shape, channels = _load(path)
    direction, spacing, origin = _geometry(image.affine)
    transform = canonical_transform(image.affine)
    data = np.asanyarray(image.dataobj).reshape(*shape, channels)
    data = data.astype(data.dtype.newbyteorder("="), copy=False)
    data = orientations.apply_orientation(data, transform)
    array = np.ascontiguousarray(np.transpose(data, (3, 2, 1, 0)))
    canonical_affine = image.affine @ orientations.inv_ornt_aff(transform, shape)
    properties = {
        "spacing": [float(s) for s in to_canonical_order(spacing, transform)],
        "original_spacing": [float(s) for s in spacing],
        "original_direction": [float(d) for d in direction.ravel()],
        "original_origin": [float(o) for o in origin],
        "original_orientation": orientation_code(image.affine),
        "original_shape": list(shape),
        "canonical_origin": [float(o) for o in LPS_TO_RAS @ canonical_affine[:3, 3]],
        "reader": READER_NAME,
    }
    return array, properties
